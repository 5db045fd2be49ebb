//! Streaming a query result as an HTTP body (`$run`, `$sql`).
//!
//! Owns: awaiting the first batch before the status line (so an error before any row is a
//! proper 4xx/5xx OperationOutcome), then encoding batch by batch with constant memory
//! (parquet excepted: its footer needs the whole file), and ending the body with an error —
//! a chunked body without its terminator, which clients report — when the query fails or
//! passes its deadline mid-stream, never a silently short success.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use fhirlake_query::views::output::{Encoder, Format};
use futures::StreamExt;
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};

/// What to put in the response besides the rows.
pub struct StreamOptions {
    pub format: Format,
    /// Stop with an error after this instant.
    pub deadline: Option<Instant>,
    /// One extra response header.
    pub header: Option<(&'static str, String)>,
}

/// Responds with the batches of `stream` encoded by `enc`. `early` maps an error raised
/// before the first row.
pub async fn respond(
    mut stream: SendableRecordBatchStream,
    mut enc: Encoder,
    options: StreamOptions,
    early: impl Fn(DataFusionError) -> ApiError,
) -> ApiResult<Response> {
    let deadline = options.deadline;
    let first = match deadline {
        Some(d) => tokio::time::timeout_at(d, stream.next()).await.map_err(|_| ()),
        None => Ok(stream.next().await),
    };
    let first = match first {
        Err(()) => return Err(ApiError::Timeout("the query ran past its time limit and was cancelled".into())),
        Ok(Some(Err(e))) => return Err(early(e)),
        Ok(Some(Ok(b))) => Some(b),
        Ok(None) => None,
    };
    let mut head = enc.begin();
    if let Some(b) = &first {
        head.extend(enc.batch(b)?);
    }
    enum State {
        Rows(SendableRecordBatchStream, Box<Encoder>),
        Done,
    }
    let rest = futures::stream::unfold(State::Rows(stream, Box::new(enc)), move |state| async move {
        let State::Rows(mut stream, mut enc) = state else { return None };
        let item = match deadline {
            Some(d) => tokio::time::timeout_at(d, stream.next()).await.map_err(|_| ()),
            None => Ok(stream.next().await),
        };
        match item {
            Err(()) => Some((Err(std::io::Error::other("the query ran past its time limit")), State::Done)),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), State::Done)),
            Ok(Some(Ok(b))) => match enc.batch(&b) {
                Ok(bytes) => Some((Ok(Bytes::from(bytes)), State::Rows(stream, enc))),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), State::Done)),
            },
            Ok(None) => {
                Some((enc.finish().map(Bytes::from).map_err(|e| std::io::Error::other(e.to_string())), State::Done))
            }
        }
    });
    // Fused: a body may be polled again after its end (the gzip layer does), and a
    // finished `unfold` must not be.
    let body = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(head)) }).chain(rest).fuse();
    let mut r = (StatusCode::OK, Body::from_stream(body)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(options.format.media_type()));
    if let Some((name, value)) = options.header
        && let Ok(v) = HeaderValue::from_str(&value.replace(['\r', '\n'], " "))
    {
        r.headers_mut().insert(name, v);
    }
    Ok(r)
}
