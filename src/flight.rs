//! Arrow Flight SQL on its own port (`serve --flight-listen ADDR`), for ADBC, JDBC and BI
//! tools: the same sessions, sandbox and limits as `POST $sql`.
//!
//! Owns: the Flight SQL statement flow — `GetFlightInfo(CommandStatementQuery)` plans the
//! query (so errors come back before any data) and answers with one endpoint whose ticket
//! carries the SQL; `DoGet` runs it and streams Arrow batches — plus prepared statements
//! (the handle is the SQL text; parameters are not supported) and `GetSqlInfo`. Errors map
//! to gRPC statuses by the one table of `crate::error` (invalid SQL `InvalidArgument`,
//! refused statements `PermissionDenied`, over the limits `DeadlineExceeded` /
//! `ResourceExhausted`).
//! Must not: plan or sandbox SQL itself (that is `fhirlake_query::catalog`).

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetSqlInfo, CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::api::AppState;

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "fhirlake");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.build().expect("static SQL info")
});

/// The Flight SQL service over the API's state.
#[derive(Clone)]
pub struct FlightSql {
    state: Arc<AppState>,
}

impl FlightSql {
    /// A gRPC service to add to a tonic server.
    pub fn service(state: Arc<AppState>) -> FlightServiceServer<FlightSql> {
        FlightServiceServer::new(FlightSql { state })
    }

    /// Plans a statement through the service layer (the operation every SQL front end
    /// makes).
    /// Every call is authenticated by its own `authorization` metadata (a bearer token)
    /// and planned under the caller's access: a ticket names a statement, not a right, so
    /// replaying another caller's ticket reads only what the replaying caller may read.
    async fn plan(&self, metadata: &MetadataMap, sql: &str) -> Result<datafusion::prelude::DataFrame, Status> {
        let route = crate::service::Route {
            interaction: crate::service::Interaction::Sql,
            resource_type: None,
            id: None,
            version: None,
        };
        let mut op = crate::service::Operation::new(route, "");
        op.body = bytes::Bytes::copy_from_slice(sql.as_bytes());
        op.caller.channel = "flight";
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        op.caller.identity = self.state.auth.identify(authorization, self.state.model).await.map_err(api_status)?;
        let shared = &self.state.auth.settings.patient_shared_types;
        op.access = crate::auth::authorize(&op.caller.identity, op.interaction, None, shared).map_err(api_status)?;
        crate::service::sql::plan(&self.state, &op, sql, None).await.map_err(api_status)
    }

    fn info(
        &self,
        schema: &arrow::datatypes::Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor))
    }

    async fn run(
        &self,
        metadata: &MetadataMap,
        sql: &str,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let df = self.plan(metadata, sql).await?;
        let df = df.limit(0, Some(self.state.config.sql.sql_max_rows)).map_err(|e| query_status(e.into()))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let deadline = tokio::time::Instant::now() + self.state.config.sql.limits().timeout;
        let stream = df.execute_stream().await.map_err(|e| query_status(e.into()))?;
        // Past the deadline the stream ends with an error (dropping it cancels the query).
        let batches = futures::stream::unfold(Some(stream), move |s| async move {
            let mut s = s?;
            match tokio::time::timeout_at(deadline, s.next()).await {
                Err(_) => Some((
                    Err(arrow_flight::error::FlightError::ExternalError("the query ran past its time limit".into())),
                    None,
                )),
                Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
                Ok(Some(Err(e))) => Some((Err(arrow_flight::error::FlightError::ExternalError(Box::new(e))), None)),
                Ok(None) => None,
            }
        });
        let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }
}

fn query_status(e: fhirlake_query::Error) -> Status {
    crate::error::ApiError::from(e).grpc_status()
}

fn api_status(e: crate::error::ApiError) -> Status {
    e.grpc_status()
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        // Every call carries its own bearer token (`authorization` metadata): the
        // handshake grants nothing and is empty.
        let out =
            futures::stream::once(async { Ok(HandshakeResponse { protocol_version: 0, payload: vec![].into() }) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self.plan(request.metadata(), &query.query).await?;
        let schema = df.schema().as_arrow().clone();
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        Ok(Response::new(self.info(&schema, ticket.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("the ticket is not a statement of this server"))?;
        self.run(request.metadata(), sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let df = self.plan(request.metadata(), &query.query).await?;
        let schema = df.schema().as_arrow().clone();
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &Default::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = std::str::from_utf8(&cmd.prepared_statement_handle)
            .map_err(|_| Status::invalid_argument("unknown prepared statement"))?;
        let df = self.plan(request.metadata(), sql).await?;
        let schema = df.schema().as_arrow().clone();
        Ok(Response::new(self.info(&schema, cmd.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = std::str::from_utf8(&cmd.prepared_statement_handle)
            .map_err(|_| Status::invalid_argument("unknown prepared statement"))?;
        self.run(request.metadata(), sql).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        Ok(Response::new(self.info(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        let batch = builder.build();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
