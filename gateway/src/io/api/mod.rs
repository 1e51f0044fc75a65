//! The local HTTP API: `/api/v1/status`, `/api/v1/nodes` and `/api/v1/modbus` for site
//! technicians and tools, `/metrics` for Prometheus (`metrics`), and
//! the HTTP pull of sealed batches for a cloud that pulls (`/api/v1/batches…`, bearer token).
//!
//! Each group of endpoints has its own token scope (`auth`): pull, upload (`upload`: update
//! artifacts into the spool), technician (the read endpoints, open when no token is set).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use outpost_core::auth::{AuthCounters, Scope};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub mod listener;
pub mod ota;

use crate::io::telemetry::TelemetryHub;
use crate::io::uplink::meter::Meter;
use outpost_core::telemetry::{
    Alert, AlertKey, AlertKind, CostStatus, DeviceStatus, Event, ModbusSummary, PortStatus,
    StoreStatus as StoreCondition, UplinkBoard,
};
use tokio::sync::{mpsc, oneshot};

use crate::io::store::outbox::{BatchInfo, OutboxTotals};
use crate::io::store::writer::{AckReply, StoreCommand};
use crate::io::store::{NODES_PAGE, NodePage, Reader, Readers, StoreError};

pub mod auth;
pub mod metrics;
pub mod page;
pub mod technician;
pub mod upload;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub gateway_id: String,
    pub started: Instant,
    /// Read connections to the store, reused across requests.
    pub readers: Readers,
    /// Status, counters and alerts of every part of the daemon.
    pub telemetry: TelemetryHub,
    /// The tokens of each scope and the failed-authentication throttle.
    pub auth: auth::AuthGate,
    pub store_tx: mpsc::Sender<StoreCommand>,
    /// Pulled batch bytes count against the same data budget as pushed ones.
    pub meter: Arc<Meter>,
    /// The newest batch whose bytes a pull client fetched (from the outbox's acknowledgement
    /// point at start): an acknowledgement beyond it covers batches the cloud cannot have.
    pub served_upto: Arc<AtomicU64>,
    /// Where trained dictionaries live (`GET /api/v1/dictionaries/{id}`).
    pub dictionaries: PathBuf,
    /// Where uploaded update artifacts go (`PUT /api/v1/updates/{file}`).
    pub updates: PathBuf,
    /// Uploads received at once ([`upload::slots`]).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Where the root update agent leaves its report.
    pub update_state: PathBuf,
    /// The wall clock's judge: whether readings get their wall time now.
    pub clock: crate::io::wall_clock::WallClock,
    /// How long each port's node may be silent before the page calls it offline.
    pub offline_after: page::OfflineAfter,
    /// The technician's password, sessions and login throttle.
    pub technician: technician::TechnicianGate,
    /// Writes to declared writable Modbus points, through each device's polling task.
    pub modbus: crate::io::modbus::poller::ModbusWriter,
    /// `[enrollment]`: the policy, and how many nodes the manifests list.
    pub enrollment_policy: outpost_core::link::EnrollmentPolicy,
    pub enrollment_listed: usize,
    /// Node firmware rollouts (`io::ota`).
    pub ota: crate::io::ota::OtaHandle,
    /// The firmware library and what it holds images to.
    pub firmware: FirmwareLibrary,
    /// Requests to nodes over their links (`io::node_requests`): reboot, HEALTH now, reset
    /// history, log.
    pub node_requests: crate::io::node_requests::NodeRequests,
    /// `/metrics`: the last rendering, served again to scrapes within `metrics::FRESH_FOR`.
    pub metrics: metrics::Scrapes,
    /// Diagnostics bundles (`GET /api/v1/diagnostics`).
    pub diagnostics: crate::io::diagnostics::Builder,
}

pub use ota::FirmwareLibrary;

#[derive(Debug, Serialize)]
struct Status {
    gateway_id: String,
    version: &'static str,
    uptime_s: u64,
    node_count: u64,
    readings_stored: u64,
    store: StoreStatus,
    outbox: OutboxTotals,
    uplink: Option<UplinkBoard>,
    /// The gateway's identity by claim: state, last error, attempts, next attempt, expiry
    /// (absent without `[uplink.mqtt.provisioning]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    provisioning: Option<outpost_core::telemetry::ProvisioningBoard>,
    cost: CostStatus,
    ports: Vec<PortStatus>,
    modbus: ModbusSummary,
    /// Connections to this API: open, cap, refused, evicted, time-outs, wrong `Host:`.
    api: outpost_core::listener::admission::ConnCounters,
    /// The last self-update attempt, as the root update agent reported it.
    update: Option<crate::io::update::report::UpdateReport>,
    /// Failed and throttled authentications.
    auth: AuthCounters,
    /// Whether the wall clock stamps readings now, and the readings held until it does.
    clock: ClockBoard,
    /// The gateway's own health, as on `outpost/{id}/health` (docs/health.md); `null` until
    /// the first sample.
    health: Option<outpost_core::health::HealthReport>,
}

#[derive(Debug, Serialize)]
struct ClockBoard {
    #[serde(flatten)]
    status: outpost_core::clock::ClockStatus,
    /// Readings stored with their monotonic time, waiting for a trusted clock.
    held_readings: u64,
}

#[derive(Debug, Serialize)]
struct StoreStatus {
    path: PathBuf,
    size_bytes: u64,
    #[serde(flatten)]
    condition: StoreCondition,
    /// Firing alerts, newest first (of the whole gateway, shown here since the first alerts
    /// were the store's).
    alerts: Vec<Alert>,
}

/// An error as the API answers it: a status and a JSON message, never a bare 500.
struct ApiError(StatusCode, String);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        auth::refusal(self.0, None, self.1)
    }
}

async fn read_store<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    state.readers.read(f).await.map_err(ApiError::from)
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let (totals, size_bytes, outbox, held) = read_store(&state, |r| {
        Ok((r.totals()?, r.size_bytes(), r.outbox()?, r.held_readings()?))
    })
    .await?;
    let _ = state.clock.now();
    let snapshot = state.telemetry.snapshot();
    let modbus = snapshot.modbus_summary();
    Ok(Json(Status {
        gateway_id: state.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        node_count: totals.nodes,
        readings_stored: totals.readings_stored,
        store: StoreStatus {
            path: state.readers.path().to_owned(),
            size_bytes,
            condition: snapshot.store,
            alerts: snapshot.alerts,
        },
        outbox,
        uplink: snapshot.uplink,
        provisioning: snapshot.provisioning,
        cost: snapshot.cost,
        ports: snapshot.ports,
        modbus,
        api: snapshot.api,
        update: crate::io::update::last_report(&state.update_state),
        auth: snapshot.auth,
        clock: ClockBoard {
            status: state.clock.status(),
            held_readings: held,
        },
        health: snapshot.health,
    }))
}

/// `GET /api/v1/nodes?limit=N&after=UID`: one page of the registry in uid order, and the
/// cursor of the next (`next`, absent on the last page).
#[derive(Debug, serde::Deserialize)]
struct NodeQuery {
    after: Option<String>,
    #[serde(default = "default_node_limit")]
    limit: usize,
}

fn default_node_limit() -> usize {
    NODES_PAGE
}

async fn nodes(
    State(state): State<ApiState>,
    Query(query): Query<NodeQuery>,
) -> Result<Json<NodePage>, ApiError> {
    // A uid is 16 hex digits; a longer cursor is no uid and would only cost a bigger query.
    if query.after.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`after` must be a node uid".into(),
        ));
    }
    let page = read_store(&state, move |r| {
        r.node_page(query.after.as_deref(), query.limit)
    })
    .await?;
    Ok(Json(page))
}

#[derive(Debug, Serialize)]
pub(super) struct Enrollment {
    policy: outpost_core::link::EnrollmentPolicy,
    /// Newcomers are taken now (`open`, or `window` with a window open until `window_until_ms`).
    enrolling: bool,
    window_until_ms: Option<i64>,
    /// Nodes the verified manifests list (`allowlist`).
    listed: usize,
    /// Nodes that proved a key and wait for enrollment, most recently seen first.
    waiting: Vec<crate::io::store::WaitingNode>,
}

/// `GET /api/v1/enrollment`: the policy, the window, and who waits for enrollment.
async fn enrollment(State(state): State<ApiState>) -> Result<Json<Enrollment>, ApiError> {
    let current = read_store(&state, |r| r.enrollment()).await?;
    Ok(Json(enrollment_view(
        &state,
        current,
        crate::io::wall_clock::unix_ms(),
    )))
}

/// `GET /api/v1/audit`: the newest remote commands (at most 100), newest first, obeyed or not.
async fn audit(
    State(state): State<ApiState>,
) -> Result<Json<Vec<crate::io::store::audit::AuditEntry>>, ApiError> {
    Ok(Json(read_store(&state, |r| r.command_audit(100)).await?))
}

pub(super) fn enrollment_view(
    state: &ApiState,
    current: crate::io::store::EnrollmentState,
    now: i64,
) -> Enrollment {
    use outpost_core::link::EnrollmentPolicy;
    let window_open = current.window_until_ms.is_some_and(|until| now < until);
    Enrollment {
        policy: state.enrollment_policy,
        enrolling: match state.enrollment_policy {
            EnrollmentPolicy::Open => true,
            EnrollmentPolicy::Window => window_open,
            EnrollmentPolicy::Allowlist | EnrollmentPolicy::Closed => false,
        },
        window_until_ms: current.window_until_ms,
        listed: state.enrollment_listed,
        waiting: current.waiting,
    }
}

/// `GET /api/v1/modbus`: every configured device, in config order.
async fn modbus_devices(State(state): State<ApiState>) -> Json<Vec<DeviceStatus>> {
    Json(state.telemetry.with(|t| t.devices().to_vec()))
}

/// Batch sequence numbers are SQLite integers: anything beyond `i64::MAX` is the client's error,
/// not the store's.
fn check_seq(name: &str, value: u64) -> Result<(), ApiError> {
    if i64::try_from(value).is_ok() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{name} {value} is beyond any batch sequence number"),
        ))
    }
}

#[derive(Debug, serde::Deserialize)]
struct BatchQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u64,
}

fn default_limit() -> u64 {
    100
}

#[derive(Debug, Serialize)]
struct BatchIndex {
    batches: Vec<BatchInfo>,
    acked_upto: u64,
}

async fn batch_index(
    State(state): State<ApiState>,
    Query(query): Query<BatchQuery>,
) -> Result<Json<BatchIndex>, ApiError> {
    check_seq("after", query.after)?;
    let limit = query.limit.clamp(1, 1000);
    let (batches, outbox) = read_store(&state, move |r| {
        Ok((r.batches_after(query.after, limit)?, r.outbox()?))
    })
    .await?;
    Ok(Json(BatchIndex {
        batches,
        acked_upto: outbox.acked_upto,
    }))
}

async fn batch_bytes(
    State(state): State<ApiState>,
    Path(seq): Path<u64>,
) -> Result<Response, ApiError> {
    check_seq("batch", seq)?;
    match read_store(&state, move |r| r.batch_bytes(seq)).await? {
        Some(bytes) => {
            state.meter.add_sent(bytes.len() as u64);
            state.served_upto.fetch_max(seq, Ordering::Relaxed);
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no batch {seq} (never sealed, or acknowledged and deleted)"),
        )),
    }
}

async fn dictionary_bytes(
    State(state): State<ApiState>,
    Path(id): Path<u32>,
) -> Result<Response, ApiError> {
    let dir = state.dictionaries.clone();
    match tokio::task::spawn_blocking(move || crate::io::dictionaries::load(&dir, id)).await {
        Ok(Ok(dictionary)) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            dictionary.as_bytes().to_vec(),
        )
            .into_response()),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dictionary {id}"),
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
struct AckBody {
    upto: u64,
}

async fn batch_ack(
    State(state): State<ApiState>,
    body: Result<Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(AckBody { upto }) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"upto\": SEQ}}: {e}"),
        )
    })?;
    check_seq("upto", upto)?;
    let served = state.served_upto.load(Ordering::Relaxed);
    if upto > served {
        // Refused, counted (the alert's count) and raised; the batches stay.
        let message = format!(
            "an acknowledgement on POST /api/v1/batches/ack covered batch {upto}, but pull clients \
             were served batches up to {served} only: refused, nothing deleted"
        );
        tracing::warn!(
            message =
                "Pull acknowledgement refused: it covers batches never served; nothing deleted.",
            upto,
            served
        );
        state.telemetry.record(Event::Raise {
            at_ms: crate::io::wall_clock::unix_ms(),
            key: AlertKey {
                kind: AlertKind::AckRefused,
                subject: Some("pull".into()),
            },
            message,
        });
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "batch {upto} was never served (served up to {served}): fetch it before acknowledging it"
            ),
        ));
    }
    let (reply, answer) = oneshot::channel();
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is shutting down".into(),
        )
    };
    state
        .store_tx
        .send(StoreCommand::AckBatches { upto, reply })
        .await
        .map_err(|_| unavailable())?;
    match answer.await.map_err(|_| unavailable())? {
        AckReply::Acked(acked) => {
            state.meter.add_delivered(acked.readings);
            Ok(Json(acked).into_response())
        }
        AckReply::Refused(why) => Err(ApiError(StatusCode::CONFLICT, why.to_string())),
        AckReply::Failed(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

pub fn router(state: ApiState) -> Router {
    // Each scope's layer checks its token before the handler reads anything of the request.
    let scope = |scope| from_fn_with_state((state.auth.clone(), scope), auth::require);
    let technician = Router::new()
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/modbus", get(modbus_devices))
        .route("/api/v1/enrollment", get(enrollment))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/diagnostics", get(technician::diagnostics))
        .route("/api/v1/overview", get(page::overview))
        .route(
            "/api/v1/firmware",
            get(ota::library)
                .post(ota::upload)
                .layer(axum::extract::DefaultBodyLimit::max(ota::MAX_BUNDLE_BYTES)),
        )
        .route("/api/v1/rollout", get(ota::status).post(ota::start))
        .route("/api/v1/rollout/halt", post(ota::halt))
        .route_layer(scope(Scope::Technician));
    // The page itself holds no data: what it shows comes from the overview, behind the scope.
    let page = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::style));
    let pull = Router::new()
        .route("/api/v1/batches", get(batch_index))
        .route("/api/v1/batches/ack", post(batch_ack))
        .route("/api/v1/batches/{seq}", get(batch_bytes))
        .route("/api/v1/dictionaries/{id}", get(dictionary_bytes))
        .route_layer(scope(Scope::Pull));
    let upload = Router::new()
        .route("/api/v1/updates/{file}", put(upload::upload_artifact))
        .route_layer(scope(Scope::Upload));
    // Login is open (it is how one gets in); every action needs a session and its CSRF token.
    let login = Router::new()
        .route("/api/v1/login", post(technician::login))
        .route("/api/v1/logout", post(technician::logout))
        .route("/api/v1/session", get(technician::session));
    let actions = Router::new()
        .route("/api/v1/actions/send-now", post(technician::send_now))
        .route("/api/v1/actions/silence", post(technician::silence))
        .route(
            "/api/v1/actions/modbus-write",
            post(technician::modbus_write),
        )
        .route(
            "/api/v1/actions/enroll-window",
            post(technician::enroll_window),
        )
        .route("/api/v1/actions/revoke", post(technician::revoke))
        .route(
            "/api/v1/actions/firmware",
            post(ota::upload).layer(axum::extract::DefaultBodyLimit::max(ota::MAX_BUNDLE_BYTES)),
        )
        .route("/api/v1/actions/rollout", post(ota::start))
        .route("/api/v1/actions/rollout-halt", post(ota::halt))
        .route_layer(from_fn_with_state(
            state.clone(),
            technician::require_session,
        ));
    technician
        .merge(page)
        .merge(login)
        .merge(actions)
        .merge(pull)
        .merge(upload)
        .with_state(state)
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address once listening.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves the API on `listener` until `shutdown` (in-flight requests finish): the connection
/// cap, time-outs and `Host:` check of [`listener`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    config: listener::ListenerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let telemetry = state.telemetry.clone();
    listener::serve(listener, router(state), config, telemetry, shutdown).await
}
