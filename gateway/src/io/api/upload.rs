//! `PUT /api/v1/updates/{file}`: a signed update artifact into the spool, the .deb first, then
//! its .sig (which starts the root agent). The `upload` token is checked by the route's layer
//! (`auth::require`) before this handler runs; the agent trusts only the signature.
//!
//! Nothing of the body is read until the request has passed every check that needs no body: the
//! token (401/429, in the layer), the file name (400), a `Content-Length` (411 without one:
//! `curl --data-binary @file` and `curl -T file` send it; a chunked body is refused rather than
//! counted as it comes), its size (413 beyond `MAX_ARTIFACT_BYTES`) and a free upload slot
//! (503 with `Retry-After` beyond [`MAX_CONCURRENT_UPLOADS`]). The body then goes chunk by chunk
//! to a hidden temporary file in the spool (`update::incoming::Incoming`), through a short
//! channel to a blocking writer, so memory holds a few chunks per upload whatever the size. A
//! cut-off upload (the client went away, the handler was dropped) leaves nothing behind.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, mpsc};

use super::ApiState;
use super::auth::refusal;
use crate::io::update::incoming::{self as updates, Incoming, SpoolError};

/// Uploads received at once; more wait for a slot (503, `Retry-After`).
pub const MAX_CONCURRENT_UPLOADS: usize = 2;

/// Seconds a client is told to wait for a slot.
const BUSY_RETRY_AFTER_S: u64 = 10;

/// Chunks queued between the body and the writer (a chunk is at most a socket read).
const QUEUED_CHUNKS: usize = 4;

/// The upload slots, shared by every request.
#[must_use]
pub fn slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS))
}

pub(super) async fn upload_artifact(
    State(state): State<ApiState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let refuse = |status, message: String| refusal(status, None, message);
    if let Err(e) = updates::check_name(&file) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let Some(length) = headers.get(header::CONTENT_LENGTH) else {
        return refuse(
            StatusCode::LENGTH_REQUIRED,
            "an artifact upload needs a Content-Length (curl --data-binary @FILE)".into(),
        );
    };
    let Some(expected) = length.to_str().ok().and_then(|v| v.parse::<u64>().ok()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Content-Length is not a number".into(),
        );
    };
    let limit = updates::MAX_ARTIFACT_BYTES as u64;
    if expected > limit {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an artifact is at most {limit} bytes; this one announces {expected}"),
        );
    }
    let Ok(slot) = state.upload_slots.clone().try_acquire_owned() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(BUSY_RETRY_AFTER_S),
            format!("{MAX_CONCURRENT_UPLOADS} uploads are already being received: try again later"),
        );
    };

    // The writer owns the temporary file: whatever ends the upload early (a body error, this
    // future dropped because the client went away), it sees the channel close short of
    // `expected` bytes, and `Incoming` removes the file.
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    let dir = state.updates.clone();
    let name = file.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut incoming = Incoming::create(&dir, &name, expected)?;
        while let Some(chunk) = chunks_rx.blocking_recv() {
            incoming.write(&chunk)?;
        }
        incoming.finish()
    });
    let mut body_error = None;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        match frame {
            Ok(frame) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                if chunks_tx.send(chunk).await.is_err() {
                    break; // the writer stopped: its error says why
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    drop(chunks_tx);
    let stored = match writer.await {
        Ok(result) => result,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match stored {
        Ok(stored) => {
            tracing::info!(message = "Update artifact received.", file = %stored.display(), bytes = expected);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "stored": stored, "bytes": expected })),
            )
                .into_response()
        }
        Err(e @ SpoolError::TooLarge { .. }) => {
            refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e @ (SpoolError::BadName(_) | SpoolError::Short { .. })) => {
            let why = body_error.map_or_else(|| e.to_string(), |b| format!("{e}: {b}"));
            refuse(StatusCode::BAD_REQUEST, why)
        }
        Err(e @ SpoolError::Io(_)) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
