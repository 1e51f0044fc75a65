//! The technician's status page: `/` and its two assets, embedded in the binary (no CDN, no
//! build step), and `/api/v1/overview`, the one JSON document the page polls.
//!
//! The page is static; everything it shows comes from the overview, which gathers the
//! telemetry snapshot, the store's outbox, registry and usage ledger, the disk and the clock
//! into one answer, with the verdict and node states decided by `outpost_core::site`. One
//! request per refresh, a few small SQLite reads: a page left open for a day costs the gateway
//! next to nothing (docs/BENCHMARKS.md).

use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_core::budget::Date;
use outpost_core::site::{self, NodeState, SiteFacts, UplinkFacts, Verdict};
use outpost_core::telemetry::{Alert, AlertKind, CostStatus, DeviceStatus, StoreStatus};
use serde::Serialize;

use super::{ApiError, ApiState, read_store};
use crate::io::store::outbox::OutboxTotals;
use crate::io::store::{NODES_PAGE_MAX, NodeRow};

/// One embedded asset, compressed once on first use.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../../web/index.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../../../web/app.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("../../../web/app.css"),
};

/// What every page response says about where it may run: only its own script and style, no
/// frames (clickjacking), no referrer leaving the site.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Prepared {
    /// Shared, not copied, by every response.
    gzip: bytes::Bytes,
    etag: HeaderValue,
}

fn prepare(asset: &Asset, cell: &'static OnceLock<Prepared>) -> &'static Prepared {
    cell.get_or_init(|| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(asset.body.as_bytes())
            .expect("writing to a Vec cannot fail");
        let gzip = encoder.finish().expect("writing to a Vec cannot fail");
        let digest = <sha2::Sha256 as sha2::Digest>::digest(asset.body.as_bytes());
        let etag = format!("\"{}\"", outpost_core::hex::encode(&digest[..8]));
        Prepared {
            gzip: bytes::Bytes::from(gzip),
            etag: HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        }
    })
}

fn serve_asset(asset: &Asset, cell: &'static OnceLock<Prepared>, request: &HeaderMap) -> Response {
    let prepared = prepare(asset, cell);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Revalidated at each load (a gateway update changes the page), answered 304 when unchanged.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, prepared.etag.clone());
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    security_headers(&mut headers);
    if request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag == prepared.etag)
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    if accepts_gzip(request) {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (headers, prepared.gzip.clone()).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

pub(super) async fn index(request: HeaderMap) -> Response {
    static CELL: OnceLock<Prepared> = OnceLock::new();
    serve_asset(&INDEX, &CELL, &request)
}

pub(super) async fn script(request: HeaderMap) -> Response {
    static CELL: OnceLock<Prepared> = OnceLock::new();
    serve_asset(&SCRIPT, &CELL, &request)
}

pub(super) async fn style(request: HeaderMap) -> Response {
    static CELL: OnceLock<Prepared> = OnceLock::new();
    serve_asset(&STYLE, &CELL, &request)
}

/// Days of traffic the page's chart shows.
const CHART_DAYS: u32 = 31;

/// `GET /api/v1/overview`: everything the page shows, in one answer.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The gateway's wall clock (Unix ms): the page measures every age against it, not against
    /// the clock of the phone it runs on.
    now_ms: i64,
    gateway: GatewayView,
    verdict: Verdict,
    store: StoreView,
    uplink: UplinkView,
    cost: CostStatus,
    /// Uplink bytes per UTC day, oldest first, the last 31 days (days without traffic absent).
    daily_bytes: Vec<DayBytes>,
    nodes: Vec<NodeView>,
    /// Nodes in the registry; more than `nodes` holds when the registry outgrew one page.
    node_count: u64,
    devices: Vec<DeviceStatus>,
    /// Firing alerts, newest first.
    alerts: Vec<Alert>,
    /// Fleet rule alerts whose condition holds, not yet for their `for` (docs/alerts.md).
    pending_alerts: Vec<Alert>,
    /// The enrollment policy, its window, and the nodes waiting for enrollment.
    enrollment: super::Enrollment,
    /// The newest remote commands (`docs/commands.md`), newest first.
    commands: Vec<crate::io::store::audit::AuditEntry>,
    /// Node firmware: the rollout in progress (or the last one this run) and each node's
    /// transfer, as `GET /api/v1/rollout` answers (in memory: no store read).
    ota: crate::io::ota::OtaView,
    /// The gateway's own health (the "Gateway health" panel; docs/health.md).
    health: Option<outpost_core::health::HealthReport>,
}

#[derive(Debug, Serialize)]
struct GatewayView {
    id: String,
    version: &'static str,
    uptime_s: u64,
    update: Option<crate::io::update::report::UpdateReport>,
    clock_trusted: bool,
}

#[derive(Debug, Serialize)]
struct StoreView {
    size_bytes: u64,
    disk_free_bytes: Option<u64>,
    readings_stored: u64,
    #[serde(flatten)]
    writer: StoreStatus,
}

#[derive(Debug, Serialize)]
struct UplinkView {
    /// An MQTT uplink is configured (otherwise the cloud pulls, or nothing leaves).
    mqtt: bool,
    connected: bool,
    since_ms: Option<i64>,
    protocol: Option<&'static str>,
    refused: Option<String>,
    last_error: Option<String>,
    /// The gateway's identity by claim and its renewal (`[uplink.mqtt.provisioning]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    provisioning: Option<outpost_core::telemetry::ProvisioningBoard>,
    #[serde(flatten)]
    outbox: OutboxTotals,
}

#[derive(Debug, Serialize)]
struct DayBytes {
    day: String,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct NodeView {
    #[serde(flatten)]
    row: NodeRow,
    state: NodeState,
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
// The counts are u64 on the 64-bit targets, narrower on some 32-bit ones.
#[allow(clippy::useless_conversion)]
fn disk_free(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Compressed when the client takes gzip and the answer is worth it: with 64 nodes the overview
/// is ~33 KB of JSON, every 2 s, to a phone on the site's Wi-Fi; level 1 costs well under a
/// millisecond and takes it to a fraction (docs/BENCHMARKS.md).
pub(super) async fn overview(State(state): State<ApiState>, request: HeaderMap) -> Response {
    match build_overview(&state).await {
        Ok(overview) => json_maybe_gzipped(&overview, &request),
        Err(e) => e.into_response(),
    }
}

fn json_maybe_gzipped<T: Serialize>(value: &T, request: &HeaderMap) -> Response {
    let Ok(body) = serde_json::to_vec(value) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if body.len() >= 1024 && accepts_gzip(request) {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        if encoder.write_all(&body).is_ok()
            && let Ok(gzip) = encoder.finish()
        {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            return (headers, gzip).into_response();
        }
    }
    (headers, body).into_response()
}

pub(super) fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// Remote commands the page shows.
const COMMANDS_SHOWN: u32 = 10;

async fn build_overview(state: &ApiState) -> Result<Overview, ApiError> {
    let now_ms = crate::io::wall_clock::unix_ms();
    let today = Date::from_unix_ms(now_ms).key();
    let (totals, size_bytes, outbox, page, daily, (enrollment, commands)) =
        read_store(state, move |r| {
            Ok((
                r.totals()?,
                r.size_bytes(),
                r.outbox()?,
                r.node_page(None, NODES_PAGE_MAX)?,
                r.daily_usage(&today, CHART_DAYS)?,
                (r.enrollment()?, r.command_audit(COMMANDS_SHOWN)?),
            ))
        })
        .await?;
    let enrollment = super::enrollment_view(state, enrollment, now_ms);
    let store_dir = state
        .readers
        .path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let disk_free_bytes = tokio::task::spawn_blocking(move || disk_free(&store_dir))
        .await
        .ok()
        .flatten();
    let snapshot = state.telemetry.snapshot();
    let clock_trusted = state.clock.status().trusted;

    let nodes: Vec<NodeView> = page
        .nodes
        .into_iter()
        .map(|row| {
            let offline_after = row
                .port
                .as_deref()
                .and_then(|port| state.offline_after.get(port).copied())
                .unwrap_or(site::DEFAULT_OFFLINE_AFTER);
            let state = site::node_state(row.enrolled, row.last_seen_ms, now_ms, offline_after);
            NodeView { row, state }
        })
        .collect();
    let count = |s| nodes.iter().filter(|n| n.state == s).count();
    let summary = snapshot.modbus_summary();
    let uplink = snapshot.uplink.as_ref().map(|u| UplinkFacts {
        connected: u.session.connected,
        since_ms: u.since_ms,
        refused: u.session.refused.clone(),
        last_error: u.session.last_error.clone(),
        ever_connected: u.session.connects > 0,
    });
    let facts = SiteFacts {
        now_ms,
        store_error: snapshot.store.error.clone(),
        disk_free_bytes,
        uplink,
        outbox_batches: outbox.batches,
        outbox_bytes: outbox.bytes,
        oldest_unsent_ms: outbox.oldest_unsent_ms,
        nodes: nodes.len(),
        nodes_offline: count(NodeState::Offline),
        nodes_never_accepted: count(NodeState::NeverAccepted),
        devices: summary.devices,
        devices_offline: summary.offline,
        over_budget: snapshot.cost.over_budget,
        projected_month_bytes: snapshot.cost.projected_month,
        budget_bytes: snapshot.cost.budget,
        clock_trusted,
        // The store's own alert is the verdict's first line already; a silenced one waits.
        other_alerts: snapshot
            .alerts
            .iter()
            .filter(|a| a.kind != AlertKind::StoreFailing && !a.silenced(now_ms))
            .count(),
    };
    let verdict = site::verdict(&facts);
    let board = snapshot.uplink.as_ref();
    Ok(Overview {
        now_ms,
        gateway: GatewayView {
            id: state.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: state.started.elapsed().as_secs(),
            update: crate::io::update::last_report(&state.update_state),
            clock_trusted,
        },
        verdict,
        store: StoreView {
            size_bytes,
            disk_free_bytes,
            readings_stored: totals.readings_stored,
            writer: snapshot.store,
        },
        uplink: UplinkView {
            mqtt: board.is_some(),
            connected: board.is_some_and(|b| b.session.connected),
            since_ms: board.and_then(|b| b.since_ms),
            protocol: board.and_then(|b| b.protocol),
            refused: board.and_then(|b| b.session.refused.clone()),
            last_error: board.and_then(|b| b.session.last_error.clone()),
            provisioning: snapshot.provisioning.clone(),
            outbox,
        },
        cost: snapshot.cost,
        daily_bytes: daily
            .into_iter()
            .map(|(day, bytes)| DayBytes { day, bytes })
            .collect(),
        nodes,
        node_count: totals.nodes,
        devices: snapshot.modbus,
        alerts: snapshot.alerts,
        pending_alerts: snapshot.pending_alerts,
        enrollment,
        commands,
        ota: state.ota.view(),
        health: snapshot.health,
    })
}

/// How long each port's node may stay silent (`[[serial]] offline_after`), by port path as the
/// registry records it.
#[derive(Debug, Clone, Default)]
pub struct OfflineAfter(std::sync::Arc<std::collections::HashMap<String, Duration>>);

impl OfflineAfter {
    #[must_use]
    pub fn new(ports: &[outpost_core::config::SerialPort]) -> OfflineAfter {
        OfflineAfter(std::sync::Arc::new(
            ports
                .iter()
                .map(|p| (p.path.display().to_string(), p.offline_after))
                .collect(),
        ))
    }

    pub(crate) fn get(&self, port: &str) -> Option<&Duration> {
        self.0.get(port)
    }
}
