//! `GET /metrics`: the gateway in Prometheus text format (`outpost_core::metrics`, the families
//! in docs/metrics.md). Behind the technician scope like `/api/v1/status`, which shows the same
//! facts (docs/security.md, "The local API": `/metrics`).
//!
//! This adapter gathers the facts (the telemetry snapshot; the store's totals, outbox and
//! registry in one read; the meter; the rollout's view; the wall time) and renders them on a
//! blocking thread. Scrapes are served one at a time, and a rendering younger than
//! [`FRESH_FOR`] is served again as it is: a flood of scrapes costs one store read and one
//! rendering per [`FRESH_FOR`], the rest is copying bytes out (and is bounded by the
//! listener's connection cap and request time-out).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use outpost_core::metrics::{self, Facts, MeterFacts, RolloutFacts, StoreFacts};
use tokio::sync::Mutex;

use super::{ApiError, ApiState, page};

/// How long a rendering is served again to the next scrapes.
pub const FRESH_FOR: Duration = Duration::from_millis(500);

/// The exposition format's content type (version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The last rendering, plain and (once asked for) gzipped.
#[derive(Debug)]
struct Rendered {
    at: Instant,
    plain: Bytes,
    gzip: Option<Bytes>,
}

/// The last rendering, shared by the API's requests (`ApiState::metrics`). Its lock also makes
/// scrapes wait for each other.
#[derive(Debug, Clone, Default)]
pub struct Scrapes(Arc<Mutex<Option<Rendered>>>);

pub(super) async fn metrics(State(state): State<ApiState>, request: HeaderMap) -> Response {
    let gzip = page::accepts_gzip(&request);
    let mut last = state.metrics.0.lock().await;
    if last.as_ref().is_none_or(|r| r.at.elapsed() >= FRESH_FOR) {
        match render(&state).await {
            Ok(plain) => {
                *last = Some(Rendered {
                    at: Instant::now(),
                    plain,
                    gzip: None,
                });
            }
            Err(e) => return e.into_response(),
        }
    }
    let rendered = last.as_mut().expect("rendered above");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        if rendered.gzip.is_none() {
            let plain = rendered.plain.clone();
            rendered.gzip = tokio::task::spawn_blocking(move || compress(&plain))
                .await
                .ok()
                .flatten();
        }
        if let Some(body) = &rendered.gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            return (headers, body.clone()).into_response();
        }
    }
    (headers, rendered.plain.clone()).into_response()
}

/// Level 1: a few milliseconds for a site of 256 nodes, a tenth of the bytes
/// (docs/BENCHMARKS.md, "/metrics").
fn compress(plain: &[u8]) -> Option<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(plain).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// The facts of this moment, rendered (on a blocking thread, with the store read).
async fn render(state: &ApiState) -> Result<Bytes, ApiError> {
    let now_ms = crate::io::wall_clock::unix_ms();
    let _ = state.clock.now();
    let clock = state.clock.status();
    let telemetry = state.telemetry.snapshot();
    let meter = MeterFacts {
        sent_bytes: state.meter.sent(),
        received_bytes: state.meter.received(),
        readings_acknowledged: state.meter.delivered(),
    };
    let rollout = state.ota.view().rollout.map(|r| RolloutFacts {
        state: r.state,
        updated: r.updated,
        total: r.total,
    });
    let offline_after = state.offline_after.clone();
    let uptime = state.started.elapsed();
    let text = super::read_store(state, move |r| {
        let totals = r.totals()?;
        let outbox = r.outbox()?;
        let store = StoreFacts {
            size_bytes: r.size_bytes(),
            node_readings: totals.readings_stored - totals.device_readings,
            device_readings: totals.device_readings,
            held_readings: r.held_readings()?,
            outbox_batches: outbox.batches,
            outbox_bytes: outbox.bytes,
            unsealed_readings: outbox.unsealed_readings,
            dropped_batches: outbox.dropped_batches,
            dropped_readings: outbox.dropped_readings,
            oldest_unsent_ms: outbox.oldest_unsent_ms,
        };
        let nodes = r.node_facts(now_ms, |port| offline_after.get(port).copied())?;
        Ok(metrics::render(&Facts {
            now_ms,
            version: env!("CARGO_PKG_VERSION"),
            uptime,
            clock_trusted: clock.trusted,
            clock_steps: clock.steps,
            telemetry: &telemetry,
            store,
            meter,
            nodes: &nodes,
            rollout,
        }))
    })
    .await?;
    Ok(Bytes::from(text))
}
