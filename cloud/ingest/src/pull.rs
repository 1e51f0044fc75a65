//! Pull mode: the ingest polls each configured gateway's local API (`GET /api/v1/batches`,
//! `GET /api/v1/batches/{seq}`), stores what it fetched, then acknowledges
//! (`POST /api/v1/batches/ack`) the gateway's committed prefix, never beyond the batches it fetched
//! (the gateway refuses an acknowledgement of a batch it never served). A replica polls the
//! gateways of its own config: split a fleet between replicas by giving each its own list.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::PullGateway;
use crate::metrics::Counters;
use crate::worker::{Job, Outcome};

/// Batches asked for per index request.
const PAGE: u64 = 100;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Http = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Deserialize)]
struct Index {
    batches: Vec<IndexEntry>,
    acked_upto: u64,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    seq: u64,
}

/// Where the polling of one gateway stands.
#[derive(Debug, Default)]
struct Cursor {
    /// The newest batch fetched (the next index starts after it).
    fetched: u64,
    /// The newest acknowledgement the gateway took.
    acked: u64,
}

/// Polls one gateway every `interval` until `stop`.
pub async fn run(
    gateway: PullGateway,
    interval: Duration,
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut cursor = Cursor::default();
    loop {
        loop {
            match round(&http, &gateway, &jobs, &mut cursor).await {
                Ok(true) => continue, // a full page: more are waiting
                Ok(false) => break,
                Err(e) => {
                    counters.pull_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(message = "Pull from a gateway failed; trying again later.", gateway = %gateway.id, error = %e);
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One page: index, fetch and store each batch, acknowledge. `Ok(true)` when the page was full.
async fn round(
    http: &Http,
    gateway: &PullGateway,
    jobs: &mpsc::Sender<Job>,
    cursor: &mut Cursor,
) -> anyhow::Result<bool> {
    let after = cursor.fetched.max(cursor.acked);
    let body = get(
        http,
        gateway,
        &format!("/api/v1/batches?after={after}&limit={PAGE}"),
    )
    .await?;
    let index: Index = serde_json::from_slice(&body).context("the batch index is not JSON")?;
    cursor.acked = cursor.acked.max(index.acked_upto);
    let mut committed = 0;
    for entry in &index.batches {
        let bytes = match get(http, gateway, &format!("/api/v1/batches/{}", entry.seq)).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // Acknowledged meanwhile (by another path), or the gateway is going away.
                tracing::debug!(message = "Batch not fetched.", seq = entry.seq, error = %e);
                break;
            }
        };
        let (reply, outcome) = oneshot::channel();
        jobs.send(Job {
            gateway: gateway.id.clone(),
            bytes,
            reply,
        })
        .await
        .context("the workers stopped")?;
        cursor.fetched = cursor.fetched.max(entry.seq);
        if let Ok(Outcome::Stored { acked_upto }) = outcome.await {
            committed = committed.max(acked_upto);
        }
    }
    let upto = committed.min(cursor.fetched);
    if upto > cursor.acked {
        post_ack(http, gateway, upto).await?;
        cursor.acked = upto;
    }
    Ok(index.batches.len() as u64 >= PAGE)
}

async fn get(http: &Http, gateway: &PullGateway, path: &str) -> anyhow::Result<Bytes> {
    send(http, gateway, Method::GET, path, Bytes::new()).await
}

async fn post_ack(http: &Http, gateway: &PullGateway, upto: u64) -> anyhow::Result<()> {
    let body = Bytes::from(crate::core::topic::ack_payload(upto));
    send(http, gateway, Method::POST, "/api/v1/batches/ack", body).await?;
    Ok(())
}

async fn send(
    http: &Http,
    gateway: &PullGateway,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Bytes> {
    let uri = format!("{}{path}", gateway.url.trim_end_matches('/'));
    let request = Request::builder()
        .method(method)
        .uri(&uri)
        .header("authorization", format!("Bearer {}", gateway.token))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, http.request(request))
        .await
        .with_context(|| format!("{uri}: no answer"))??;
    let status = response.status();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await
        .with_context(|| format!("{uri}: body timed out"))??
        .to_bytes();
    if status != StatusCode::OK {
        bail!("{uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}
