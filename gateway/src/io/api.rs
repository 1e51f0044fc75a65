//! The local HTTP API for site technicians and tools: `/api/v1/status`, `/api/v1/nodes`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::io::serial::{PortBoard, PortStatus};
use crate::store::writer::StoreCondition;
use crate::store::{NodeRow, Reader, StoreError};

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub gateway_id: String,
    pub started: Instant,
    pub store_path: PathBuf,
    pub store_condition: Arc<Mutex<StoreCondition>>,
    pub ports: PortBoard,
}

#[derive(Debug, Serialize)]
struct Status {
    gateway_id: String,
    version: &'static str,
    uptime_s: u64,
    node_count: u64,
    readings_stored: u64,
    store: StoreStatus,
    ports: Vec<PortStatus>,
}

#[derive(Debug, Serialize)]
struct StoreStatus {
    path: PathBuf,
    size_bytes: u64,
    #[serde(flatten)]
    condition: StoreCondition,
}

/// An error as the API answers it: JSON with a message, never a bare 500.
struct ApiError(StoreError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.0.to_string() }));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn read_store<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = state.store_path.clone();
    tokio::task::spawn_blocking(move || f(&Reader::open(&path)?))
        .await
        .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("reader panicked: {e}"))))
        .map_err(ApiError)
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let (totals, size_bytes) = read_store(&state, |r| Ok((r.totals()?, r.size_bytes()))).await?;
    let condition = state
        .store_condition
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let ports = state.ports.lock().map(|p| p.clone()).unwrap_or_default();
    Ok(Json(Status {
        gateway_id: state.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        node_count: totals.nodes,
        readings_stored: totals.readings_stored,
        store: StoreStatus {
            path: state.store_path.clone(),
            size_bytes,
            condition,
        },
        ports,
    }))
}

async fn nodes(State(state): State<ApiState>) -> Result<Json<Vec<NodeRow>>, ApiError> {
    Ok(Json(read_store(&state, Reader::nodes).await?))
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/nodes", get(nodes))
        .with_state(state)
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address once listening.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
