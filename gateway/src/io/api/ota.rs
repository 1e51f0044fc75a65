//! Node firmware over the local API: the library (`GET`, `POST` a bundle) and rollouts (start,
//! halt, status). The same handlers serve two doors: the technician token (scripts, the
//! `outpost rollout` CLI) and the page's login session with its CSRF token (`/api/v1/actions/…`).
//!
//! Every refusal comes before a byte goes to a node, as `{"error", "kind"}`: the image is not
//! signed by a fleet key (`bad-signature`), is damaged or truncated (`damaged`), expired, for
//! another board (`wrong-hardware`), below a node's floor (`below-floor`), …

use std::path::PathBuf;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_core::firmware::{Expect, MAX_IMAGE_BYTES};
use outpost_core::update::signing::{MAX_MANIFEST_BYTES, PublicKey};
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::io::firmware::AddError;
use crate::io::ota::{Refused, StartSpec};

/// The largest bundle taken: a manifest and a slot-sized image.
pub const MAX_BUNDLE_BYTES: usize = MAX_MANIFEST_BYTES + MAX_IMAGE_BYTES as usize;

/// Where the library is and what it holds images to.
#[derive(Debug, Clone)]
pub struct FirmwareLibrary {
    pub dir: PathBuf,
    pub keys: Vec<PublicKey>,
    pub cap: u64,
}

#[derive(Debug, Serialize)]
struct LibraryEntry {
    file: String,
    version: Option<String>,
    hw_rev: Option<u8>,
    size: Option<u64>,
    sha256: Option<String>,
    floor: Option<String>,
    expires_unix_s: Option<u64>,
    /// Why the image would be refused now (expired since, changed on disk), if it would.
    refused: Option<String>,
}

fn refused(status: StatusCode, r: &Refused) -> Response {
    (status, Json(r)).into_response()
}

fn status_for(kind: &str) -> StatusCode {
    match kind {
        "busy" | "no-rollout" => StatusCode::CONFLICT,
        "unavailable" | "store" => StatusCode::SERVICE_UNAVAILABLE,
        "unknown-artifact" | "unknown-node" | "no-nodes" => StatusCode::NOT_FOUND,
        "bad-request" => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// `GET /api/v1/firmware`: the library, each image checked again now.
pub(super) async fn library(State(state): State<ApiState>) -> Response {
    let library = state.firmware.clone();
    let entries = tokio::task::spawn_blocking(move || {
        crate::io::firmware::list(
            &library.dir,
            &library.keys,
            crate::io::wall_clock::unix_ms(),
        )
    })
    .await
    .unwrap_or_default();
    let entries: Vec<LibraryEntry> = entries
        .into_iter()
        .map(|e| match e.checked {
            Ok(f) => LibraryEntry {
                file: e.file,
                version: Some(f.version.to_string()),
                hw_rev: Some(f.hw_rev),
                size: Some(f.size),
                sha256: Some(outpost_core::hex::encode(&f.sha256)),
                floor: Some(f.floor.to_string()),
                expires_unix_s: Some(f.expires_unix_s),
                refused: None,
            },
            Err(why) => LibraryEntry {
                file: e.file,
                version: None,
                hw_rev: None,
                size: None,
                sha256: None,
                floor: None,
                expires_unix_s: None,
                refused: Some(why),
            },
        })
        .collect();
    Json(entries).into_response()
}

/// `POST /api/v1/firmware`: a bundle (the image's manifest, then the image) into the library.
pub(super) async fn upload(State(state): State<ApiState>, body: Bytes) -> Response {
    if body.len() > MAX_BUNDLE_BYTES {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &Refused {
                kind: "too-large",
                error: format!(
                    "{} bytes, more than a manifest and a slot-sized image ({MAX_BUNDLE_BYTES})",
                    body.len()
                ),
            },
        );
    }
    let library = state.firmware.clone();
    let added = tokio::task::spawn_blocking(move || {
        let expect = Expect {
            keys: &library.keys,
            hw_rev: None,
            floor: None,
            now_unix_ms: crate::io::wall_clock::unix_ms(),
        };
        crate::io::firmware::add_bundle(&library.dir, &body, &expect, library.cap)
    })
    .await;
    match added {
        Ok(Ok(f)) => {
            tracing::info!(message = "Firmware image added to the library.", file = %f.file, version = %f.version, hw_rev = f.hw_rev);
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "file": f.file,
                    "version": f.version.to_string(),
                    "hw_rev": f.hw_rev,
                    "size": f.size,
                    "sha256": outpost_core::hex::encode(&f.sha256),
                })),
            )
                .into_response()
        }
        Ok(Err(error)) => {
            let kind = error.kind();
            let status = match &error {
                AddError::Refused(_) | AddError::Manifest { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                AddError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
                AddError::Exists(_) => StatusCode::CONFLICT,
                AddError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(message = "Firmware image refused.", kind, %error);
            refused(
                status,
                &Refused {
                    kind,
                    error: error.to_string(),
                },
            )
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /api/v1/rollout`: the rollout in progress (or the last one), and the nodes that take
/// updates.
pub(super) async fn status(State(state): State<ApiState>) -> Response {
    Json(state.ota.view()).into_response()
}

/// `POST /api/v1/rollout`: starts a rollout (`StartSpec` as JSON).
pub(super) async fn start(
    State(state): State<ApiState>,
    body: Result<Json<StartSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                &Refused {
                    kind: "bad-request",
                    error: format!(
                        "expected {{\"artifact\", \"canary\"?, \"waves\"?, \"soak\"?, \"confirm_within\"?, \"node\"?}}: {e}"
                    ),
                },
            );
        }
    };
    match state.ota.start(spec, "local API".into()).await {
        Ok(status) => (StatusCode::CREATED, Json(status)).into_response(),
        Err(r) => refused(status_for(r.kind), &r),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Halt {
    #[serde(default)]
    rollback: bool,
}

/// `POST /api/v1/rollout/halt` `{"rollback": bool}`.
pub(super) async fn halt(State(state): State<ApiState>, body: Option<Json<Halt>>) -> Response {
    let rollback = body.is_some_and(|Json(h)| h.rollback);
    match state.ota.halt(rollback).await {
        Ok(status) => Json(status).into_response(),
        Err(r) => refused(status_for(r.kind), &r),
    }
}
