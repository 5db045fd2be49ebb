//! `fhirlake serve`: take the write lease, recover, listen (HTTP, and Flight SQL when asked);
//! drain on SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use fhirlake_ingest::{StorageRoot, Writer};

use super::{CliResult, DataArgs};
use crate::api::{AppState, app};
use crate::config::ApiConfig;

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "FHIRLAKE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Path prefix of the FHIR API.
    #[arg(long, env = "FHIRLAKE_BASE_PATH", default_value = "/fhir")]
    base_path: String,
    /// Public base URL used in Location headers, fullUrl and links (default:
    /// http://<listen address><base path>).
    #[arg(long, env = "FHIRLAKE_PUBLIC_URL")]
    public_url: Option<String>,
    #[command(flatten)]
    limits: crate::config::RequestLimits,
    #[command(flatten)]
    search: crate::config::SearchSettings,
    #[command(flatten)]
    sql: crate::config::SqlSettings,
    #[command(flatten)]
    writes: crate::config::WriteSettings,
    #[command(flatten)]
    auth: crate::auth::AuthSettings,
    /// Background compaction: check the tables this often, e.g. 60s (0s: off).
    #[arg(long, env = "FHIRLAKE_COMPACT_EVERY", default_value = "60s", value_parser = crate::config::parse_duration)]
    compact_every: std::time::Duration,
    /// The same in seconds (earlier releases' flag; overrides `--compact-every`).
    #[arg(long, env = "FHIRLAKE_COMPACT_EVERY_SECS", hide = true)]
    compact_every_secs: Option<u64>,
    #[command(flatten)]
    compaction: super::compact::CompactTuning,
    /// Also serve Arrow Flight SQL (gRPC) on this address, e.g. 127.0.0.1:50051 (port 0
    /// picks a free port; the bound address is printed). Off when not given.
    #[arg(long, env = "FHIRLAKE_FLIGHT_LISTEN")]
    flight_listen: Option<String>,
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(a: ServeArgs) -> CliResult<ExitCode> {
    let listener =
        tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    let addr = listener.local_addr()?;
    check_auth(&a, addr)?;
    // While the writer recovers the root, the port answers /health `starting` (503).
    let listener = listener.into_std()?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let early = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let early = tokio::spawn(async move {
        axum::serve(early, crate::api::starting_router())
            .with_graceful_shutdown(async move {
                let _ = started_rx.await;
            })
            .await
    });
    let root = StorageRoot::open(&a.data.data)?;
    let options = a.writes.writer_options("fhirlake serve");
    let started = Writer::start(root.clone(), options).await;
    let _ = started_tx.send(());
    early.await.map_err(|e| format!("start-up server: {e}"))??;
    let (writer, task) = started?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let base_path = format!("/{}", a.base_path.trim_matches('/'));
    let public_url =
        a.public_url.clone().unwrap_or_else(|| format!("http://{addr}{}", base_path.trim_end_matches('/')));
    let auth = crate::auth::Auth::start(a.auth.clone(), public_url.trim_end_matches('/').to_string()).await?;
    let config = ApiConfig {
        base_path: base_path.clone(),
        public_url: public_url.clone(),
        limits: a.limits,
        search: a.search,
        sql: a.sql,
    };
    let enabled = auth.enabled();
    let state = Arc::new(AppState::new(writer, config, fhirlake_schemas::Model::r4()?).with_auth(auth));
    crate::outln!("fhirlake listening on http://{addr} (FHIR base {public_url}, data {})", root.url());
    if !enabled {
        tracing::warn!(
            "authentication is OFF (--auth none): anyone who can reach {addr} can read and write all data; \
             for local development only"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flight = match &a.flight_listen {
        Some(listen) => {
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} for Flight SQL: {e}"))?;
            let faddr = l.local_addr()?;
            crate::outln!("fhirlake Flight SQL listening on grpc://{faddr}");
            let mut stop = stop_rx.clone();
            let svc = crate::flight::FlightSql::service(state.clone());
            Some(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(tokio_stream_of(l), async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }))
        }
        None => None,
    };
    let every = a.compact_every_secs.map_or(a.compact_every, std::time::Duration::from_secs);
    let compactor = (!every.is_zero()).then(|| {
        let opts = a.compaction.options(false);
        let retention = a.compaction.retention();
        tokio::spawn(background_compaction(state.writer.clone(), opts, every, retention, stop_rx.clone()))
    });
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(
        app(state),
    );
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await?;
    if let Some(f) = flight {
        f.await.map_err(|e| format!("Flight SQL server: {e}"))?.map_err(|e| format!("Flight SQL server: {e}"))?;
    }
    if let Some(c) = compactor {
        let _ = c.await;
    }
    tracing::info!("stopped accepting; committing in-flight writes");
    task.shutdown().await?;
    tracing::info!("shut down cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Refuses what would expose data: no authentication off loopback, or tokens whose
/// audience would be the bound address rather than the URL clients use.
fn check_auth(a: &ServeArgs, addr: std::net::SocketAddr) -> CliResult<()> {
    use crate::auth::AuthMode;
    let loopback = addr.ip().is_loopback();
    match a.auth.auth {
        None | Some(AuthMode::None) if !loopback => Err(format!(
            "refusing to serve {addr} without authentication: anyone reaching it could read and write all data. \
             Use --auth smart --issuer URL --jwks FILE_OR_URL --public-url URL (fhirlake auth keygen makes a \
             development key), or listen on 127.0.0.1"
        )
        .into()),
        Some(AuthMode::Smart) if !loopback && a.public_url.is_none() && a.auth.audience.is_none() => Err(format!(
            "--auth smart on {addr} needs --public-url (or --audience): tokens must name the URL clients use, not \
             the bound address"
        )
        .into()),
        _ => Ok(()),
    }
}

/// Compacts the tables every `every` (and vacuums at most hourly) until `stop`; holds a
/// writer handle only while it runs.
async fn background_compaction(
    writer: fhirlake_ingest::Writer,
    options: fhirlake_ingest::compact::CompactOptions,
    every: std::time::Duration,
    retention: chrono::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_vacuum = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let mut log = |r: &fhirlake_ingest::compact::TableReport| {
            if r.rows > 0 {
                tracing::info!("compaction: {}", super::compact::describe(r));
            }
        };
        if let Err(e) = writer.compact(options, &mut log).await {
            tracing::warn!(error = %e, "background compaction failed; it is retried at the next interval");
        }
        if last_vacuum.elapsed() >= std::time::Duration::from_secs(3600) {
            last_vacuum = std::time::Instant::now();
            match writer.vacuum(retention).await {
                Ok(n) if n > 0 => tracing::info!(files = n, "vacuum deleted unreferenced files"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "vacuum failed; it is retried in an hour"),
            }
        }
    }
}

/// Accepted connections of `l` as the stream tonic serves.
fn tokio_stream_of(l: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
