//! The technician's login and actions on the local API.
//!
//! `outpost technician set-password` stores an Argon2id hash (PHC string) in
//! `{data_dir}/technician.argon2`, never the password. `POST /api/v1/login` checks a password
//! against it (on a blocking thread: Argon2id is slow on purpose) and answers with a session
//! cookie (`HttpOnly; SameSite=Strict; Path=/`, `Secure` when the API is served over TLS) and
//! the session's first CSRF token. Every action (`POST /api/v1/actions/…`) must carry the
//! session cookie, the current token in `X-CSRF-Token`, a JSON content type and, when the
//! browser sends one, an `Origin` of the gateway itself; the answer carries the next token.
//! Wrong passwords are throttled per client (`outpost_core::auth::Throttle`: five, then one
//! every 12 s) and each is logged with the client's address.
//!
//! The session rules are `outpost_core::technician::Sessions`; this adapter draws the random
//! ids and tokens and passes the time in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_core::Millis;
use outpost_core::auth::{Admission, Throttle, ThrottleEvent, ThrottlePolicy};
use outpost_core::technician::{Secret, SessionPolicy, Sessions};
use serde::Deserialize;

use super::ApiState;
use super::auth::refusal;

/// The hash's file in the data directory.
pub const PASSWORD_FILE: &str = "technician.argon2";
/// The session cookie's name.
const COOKIE: &str = "outpost_session";
/// The header an action's CSRF token travels in, and the next one comes back in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The shortest password `set-password` takes.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Five wrong passwords per client, then one every 12 s (five a minute); 30 for the gateway,
/// then one a second.
const LOGIN_THROTTLE: ThrottlePolicy = ThrottlePolicy {
    peer_burst: 5,
    peer_refill_ms: 12_000,
    global_burst: 30,
    global_refill_ms: 1_000,
    max_peers: 1024,
};

#[derive(Debug, Clone)]
pub struct TechnicianGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    password_file: PathBuf,
    sessions: Mutex<Sessions>,
    throttle: Mutex<Throttle>,
    epoch: Instant,
    /// Whether the API is served over TLS (the cookie is then `Secure`).
    tls: bool,
}

impl TechnicianGate {
    #[must_use]
    pub fn new(data_dir: &Path, tls: bool) -> TechnicianGate {
        TechnicianGate {
            inner: Arc::new(Inner {
                password_file: data_dir.join(PASSWORD_FILE),
                sessions: Mutex::new(Sessions::new(SessionPolicy::default())),
                throttle: Mutex::new(Throttle::new(LOGIN_THROTTLE, Millis::ZERO)),
                epoch: Instant::now(),
                tls,
            }),
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.inner
            .throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the throttle's episode starts and ends (one line each, however many refusals), so
    /// its event queue never grows.
    fn log_throttle_events(&self) {
        let mut throttle = self.throttle();
        while let Some(event) = throttle.poll_event() {
            match event {
                ThrottleEvent::Started { peer } => tracing::warn!(
                    message = "Technician logins throttled: too many wrong passwords.",
                    peer = peer
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "all clients".into())
                ),
                ThrottleEvent::Ended { failures, refused } => tracing::info!(
                    message = "Technician login throttle over.",
                    failures,
                    refused
                ),
            }
        }
    }

    fn cookie(&self, id: &Secret) -> HeaderValue {
        let secure = if self.inner.tls { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
            outpost_core::hex::encode(id)
        ))
        .expect("hex is a valid header value")
    }
}

/// 32 bytes from the kernel's random source: session ids and CSRF tokens must not be guessable.
fn random_secret() -> Secret {
    use rand::TryRngCore as _;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .expect("the kernel's random source is readable");
    secret
}

/// The session id in the request's cookie, if it has one that parses.
fn session_id(headers: &HeaderMap) -> Option<Secret> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| outpost_core::hex::decode::<32>(value))
}

/// Stores `password`'s Argon2id hash in `data_dir`, readable by its owner only, atomically.
pub fn set_password(data_dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD_LEN,
        "the technician password must have at least {MIN_PASSWORD_LEN} characters"
    );
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?
        .to_string();
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(PASSWORD_FILE);
    let temporary = data_dir.join(format!(".{PASSWORD_FILE}.new"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(hash.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

fn verify(password_file: &Path, password: &str) -> Result<bool, String> {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let text = match std::fs::read_to_string(password_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                "no technician password is set: run `outpost technician set-password` on the gateway"
                    .into(),
            );
        }
        Err(e) => return Err(format!("cannot read {}: {e}", password_file.display())),
    };
    let hash = PasswordHash::new(text.trim())
        .map_err(|e| format!("{} is not an Argon2 hash: {e}", password_file.display()))?;
    Ok(argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

#[derive(Debug, Deserialize)]
pub(super) struct Login {
    password: String,
}

/// `POST /api/v1/login` `{"password": …}` → a session cookie and `{"csrf": …}`.
pub(super) async fn login(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let gate = state.technician.clone();
    let now = gate.now();
    if let Admission::Throttled { retry_after_ms } = gate.throttle().handle_request(now, peer.ip())
    {
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            Some(retry_after_ms.div_ceil(1000)),
            "too many wrong passwords from this client; wait before trying again".into(),
        );
    }
    let Ok(Json(Login { password })) = body else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "expected {\"password\": \"…\"} as JSON".into(),
        );
    };
    let file = gate.inner.password_file.clone();
    let verified = tokio::task::spawn_blocking(move || verify(&file, &password))
        .await
        .unwrap_or_else(|_| Err("the password check failed".into()));
    match verified {
        Ok(true) => {
            let id = random_secret();
            let csrf = random_secret();
            gate.sessions().handle_login(gate.now(), id, csrf);
            tracing::info!(message = "Technician logged in.", peer = %peer.ip());
            let mut response = Json(serde_json::json!({
                "csrf": outpost_core::hex::encode(&csrf),
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, gate.cookie(&id));
            response
        }
        Ok(false) => {
            gate.throttle().handle_failure(gate.now(), peer.ip());
            gate.log_throttle_events();
            tracing::warn!(message = "Technician login refused: wrong password.", peer = %peer.ip());
            refusal(StatusCode::UNAUTHORIZED, None, "wrong password".into())
        }
        Err(why) => {
            tracing::warn!(message = "Technician login impossible.", peer = %peer.ip(), reason = %why);
            refusal(StatusCode::SERVICE_UNAVAILABLE, None, why)
        }
    }
}

/// `POST /api/v1/logout`: ends the session in the cookie.
pub(super) async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        state.technician.sessions().handle_logout(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("outpost_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// `GET /api/v1/session`: whether this browser is logged in, and the session's current CSRF
/// token (a reloaded page lost it). Readable only by the gateway's own pages: the cookie is
/// `SameSite=Strict` and the API sends no CORS headers.
pub(super) async fn session(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let gate = &state.technician;
    let csrf = session_id(&headers).and_then(|id| gate.sessions().csrf(gate.now(), &id));
    Json(serde_json::json!({
        "logged_in": csrf.is_some(),
        "csrf": csrf.map(|t| outpost_core::hex::encode(&t)),
    }))
    .into_response()
}

/// Whether `origin` (an `Origin` header) names the host the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// The layer in front of every action: session, CSRF token, content type, origin. On success
/// the response carries the session's next token in `X-CSRF-Token`.
pub(super) async fn require_session(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let forbidden = |why: String| {
        tracing::warn!(message = "Technician action refused.", peer = %peer.ip(), reason = %why);
        refusal(StatusCode::FORBIDDEN, None, why)
    };
    // A cross-site form or script: browsers send `Origin` on every POST.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin.to_str().is_ok_and(|o| same_origin(o, host)) {
            return forbidden(format!(
                "a request from another site ({}) may not act on this gateway",
                origin.to_str().unwrap_or("?")
            ));
        }
    }
    // A plain HTML form cannot send JSON.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return forbidden("an action must be sent as application/json".into());
    }
    let gate = state.technician.clone();
    let id = session_id(headers);
    let token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(outpost_core::hex::decode::<32>);
    let carried = headers.contains_key(CSRF_HEADER);
    let next_token = random_secret();
    let checked = gate.sessions().handle_action(
        gate.now(),
        id.as_ref(),
        token
            .as_ref()
            .map(<[u8; 32]>::as_slice)
            .or(carried.then_some(&[][..])),
        next_token,
    );
    if let Err(refused) = checked {
        return forbidden(refused.to_string());
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        CSRF_HEADER,
        HeaderValue::from_str(&outpost_core::hex::encode(&next_token))
            .expect("hex is a valid header value"),
    );
    response
}

/// `POST /api/v1/actions/send-now`: seal what waits and let the uplink send it.
pub(super) async fn send_now(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let (reply, taken) = tokio::sync::oneshot::channel();
    let sent = state
        .store_tx
        .send(crate::io::store::writer::StoreCommand::SealNow { reply })
        .await;
    if sent.is_err() || taken.await.is_err() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the store is shutting down".into(),
        );
    }
    tracing::info!(message = "Technician asked to send now: sealing what waits.", peer = %peer.ip());
    Json(serde_json::json!({ "sealing": true })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Silence {
    kind: outpost_core::telemetry::AlertKind,
    #[serde(default)]
    subject: Option<String>,
    /// How long; one hour unless said, a day at most.
    #[serde(default = "default_silence_minutes")]
    minutes: u32,
}

fn default_silence_minutes() -> u32 {
    60
}

/// `POST /api/v1/actions/silence` `{"kind", "subject", "minutes"}`: the firing alert stops
/// pressing on the page and the verdict until then. It still fires, and the cloud still has it.
pub(super) async fn silence(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Silence>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "expected {\"kind\": ALERT_KIND, \"subject\": …, \"minutes\": 1..1440}".into(),
        );
    };
    if !(1..=1440).contains(&request.minutes) {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "`minutes` must be between 1 and 1440 (a day)".into(),
        );
    }
    let key = outpost_core::telemetry::AlertKey {
        kind: request.kind,
        subject: request.subject,
    };
    let until_ms =
        crate::io::wall_clock::unix_ms().saturating_add(i64::from(request.minutes) * 60_000);
    let firing = state.telemetry.with(|t| {
        t.alerts()
            .firing()
            .iter()
            .any(|a| a.kind == key.kind && a.subject == key.subject)
    });
    if !firing {
        return refusal(
            StatusCode::NOT_FOUND,
            None,
            format!("no firing alert {} {:?}", key.kind.as_str(), key.subject),
        );
    }
    tracing::info!(
        message = "Technician silenced an alert.",
        peer = %peer.ip(),
        kind = key.kind.as_str(),
        subject = key.subject.as_deref().unwrap_or(""),
        minutes = request.minutes
    );
    state
        .telemetry
        .record(outpost_core::telemetry::Event::Silence { key, until_ms });
    Json(serde_json::json!({ "silenced_until_ms": until_ms })).into_response()
}

/// Sends the writer a command that answers on `reply`, and waits for its answer: the value, or
/// the response that tells the technician why not (503: the store failed or is shutting down).
async fn ask_store<T>(
    state: &ApiState,
    command: impl FnOnce(
        tokio::sync::oneshot::Sender<Result<T, std::sync::Arc<crate::io::store::StoreError>>>,
    ) -> crate::io::store::writer::StoreCommand,
) -> Result<T, Response> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = state.store_tx.send(command(reply)).await;
    match (sent, answer.await) {
        (Ok(()), Ok(Ok(value))) => Ok(value),
        (_, Ok(Err(e))) => Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            e.to_string(),
        )),
        _ => Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the store is shutting down".into(),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct EnrollWindow {
    /// How long the window stays open; 0 closes it.
    minutes: u32,
}

/// `POST /api/v1/actions/enroll-window` `{"minutes": 0..=1440}`: nodes never enrolled may join
/// until then (policy `window`); it closes by itself. 0 closes it now.
pub(super) async fn enroll_window(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<EnrollWindow>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "expected {\"minutes\": 0..1440}".into(),
        );
    };
    if request.minutes > 1440 {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "`minutes` must be between 0 (close) and 1440 (a day)".into(),
        );
    }
    use crate::io::commands::{WindowError, set_enrollment_window};
    let until_ms = match set_enrollment_window(
        &state.store_tx,
        state.enrollment_policy,
        request.minutes,
    )
    .await
    {
        Ok(until_ms) => until_ms,
        Err(why @ WindowError::NotWindowPolicy(_)) => {
            return refusal(StatusCode::CONFLICT, None, why.to_string());
        }
        Err(why) => return refusal(StatusCode::SERVICE_UNAVAILABLE, None, why.to_string()),
    };
    tracing::info!(message = "Technician set the enrollment window.", peer = %peer.ip(), minutes = request.minutes, until_ms);
    Json(serde_json::json!({ "window_until_ms": until_ms })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Revoke {
    uid: String,
}

/// `POST /api/v1/actions/revoke` `{"uid"}`: the node is kept out for good: its session ends at
/// its next commit, its next HELLO is refused, across restarts.
pub(super) async fn revoke(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Revoke>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let uid = match body {
        Ok(Json(request))
            if request.uid.len() == 16
                && request
                    .uid
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            request.uid
        }
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                None,
                "expected {\"uid\": 16 lower-case hex digits}".into(),
            );
        }
    };
    let asked = ask_store(&state, |reply| {
        crate::io::store::writer::StoreCommand::Revoke {
            uid: uid.clone(),
            now_ms: crate::io::wall_clock::unix_ms(),
            reply,
        }
    });
    match asked.await {
        Ok(true) => {}
        Ok(false) => return refusal(StatusCode::NOT_FOUND, None, format!("no node {uid}")),
        Err(refused) => return refused,
    }
    tracing::warn!(message = "Technician revoked a node.", peer = %peer.ip(), uid = %uid);
    Json(serde_json::json!({ "revoked": uid })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct ModbusWrite {
    device: String,
    point: String,
    value: serde_json::Value,
}

/// A JSON value as a Modbus value: `true`/`false`, an integer, a decimal (exactly, as its
/// shortest text reads), or text. The point's type and range are checked by the encoder.
fn modbus_value(value: &serde_json::Value) -> Option<outpost_core::modbus::value::Value> {
    use outpost_core::modbus::value::{Value, shortest_decimal};
    Some(match value {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::String(text) => Value::Text(text.clone()),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::Uint(u)
            } else {
                let f = n.as_f64()?;
                match shortest_decimal(f).and_then(|(m, e)| Some((m, i8::try_from(e).ok()?))) {
                    Some((mantissa, exp)) => Value::Decimal { mantissa, exp },
                    None => Value::Float(f),
                }
            }
        }
        _ => return None,
    })
}

/// `POST /api/v1/actions/modbus-write` `{"device", "point", "value"}`: written through the
/// device's own polling task (never between a poll's requests), only to a point its map declares
/// `writable`, after the point's type and range checks.
pub(super) async fn modbus_write(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ModbusWrite>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use crate::io::modbus::poller::WriteFailure;
    let Ok(Json(request)) = body else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "expected {\"device\": …, \"point\": …, \"value\": …}".into(),
        );
    };
    let Some(value) = modbus_value(&request.value) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            None,
            "`value` must be a number, true/false or text".into(),
        );
    };
    let result = state
        .modbus
        .write(&request.device, &request.point, value)
        .await;
    match result {
        Ok(()) => {
            tracing::info!(
                message = "Technician wrote a Modbus point.",
                peer = %peer.ip(),
                device = %request.device,
                point = %request.point,
                value = %request.value
            );
            Json(serde_json::json!({ "written": true })).into_response()
        }
        Err(failure) => {
            let status = match &failure {
                WriteFailure::UnknownDevice(_) | WriteFailure::UnknownPoint { .. } => {
                    StatusCode::NOT_FOUND
                }
                WriteFailure::Write(_) => StatusCode::BAD_REQUEST,
                WriteFailure::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                WriteFailure::Exception(_) | WriteFailure::Request(_) => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!(
                message = "Technician's Modbus write not done.",
                peer = %peer.ip(),
                device = %request.device,
                point = %request.point,
                error = %failure
            );
            refusal(status, None, failure.to_string())
        }
    }
}

/// `GET /api/v1/diagnostics`: builds a diagnostics bundle now and returns it as a download
/// (`application/zstd`, a ustar archive inside; every secret of the configuration redacted).
/// The technician token when one is set (the scope's layer checked it); without one, a
/// logged-in session: the other read endpoints are open on such a site, the bundle is not.
/// One is built at a time: 429 while another is.
pub(super) async fn diagnostics(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    use crate::io::diagnostics::{DiagnosticsError, Inputs};
    let gate = &state.technician;
    let logged_in = session_id(&headers)
        .and_then(|id| gate.sessions().csrf(gate.now(), &id))
        .is_some();
    if !state.auth.has_token(outpost_core::auth::Scope::Technician) && !logged_in {
        return refusal(
            StatusCode::UNAUTHORIZED,
            None,
            "log in on the status page first: a diagnostics bundle is not handed to anyone on \
             the network"
                .into(),
        );
    }
    let inputs = Inputs {
        journal_lines: outpost_core::command::remedy::DEFAULT_JOURNAL_LINES,
        pull_nodes: true,
    };
    match state.diagnostics.build(inputs).await {
        Ok(bundle) => {
            tracing::info!(
                message = "Diagnostics bundle downloaded.",
                peer = %peer.ip(),
                size = bundle.bytes.len(),
                sha256 = %bundle.sha256_hex()
            );
            let disposition = format!("attachment; filename=\"{}\"", bundle.file_name);
            let mut response = bundle.bytes.clone().into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zstd"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            if let Ok(value) = HeaderValue::from_str(&bundle.sha256_hex()) {
                headers.insert("x-outpost-sha256", value);
            }
            response
        }
        Err(DiagnosticsError::Busy) => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            Some(5),
            "a diagnostics bundle is being built already; try again in a few seconds".into(),
        ),
        Err(error) => refusal(StatusCode::SERVICE_UNAVAILABLE, None, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_exact_modbus_values() {
        use outpost_core::modbus::value::Value;
        let v = |text: &str| modbus_value(&serde_json::from_str(text).unwrap());
        assert_eq!(v("true"), Some(Value::Bool(true)));
        assert_eq!(v("-3"), Some(Value::Int(-3)));
        assert_eq!(v("18446744073709551615"), Some(Value::Uint(u64::MAX)));
        assert_eq!(
            v("44.9"),
            Some(Value::Decimal {
                mantissa: 449,
                exp: -1
            })
        );
        assert_eq!(v("\"on\""), Some(Value::Text("on".into())));
        assert_eq!(v("null"), None);
        assert_eq!(v("[1]"), None);
    }

    #[test]
    fn only_the_gateways_own_origin_may_act() {
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(same_origin("https://GW.local", Some("gw.local")));
        assert!(!same_origin(
            "http://127.0.0.1:9999",
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin("http://evil.example", Some("gw.local")));
        assert!(!same_origin("null", Some("gw.local")));
        assert!(!same_origin("http://gw.local", None));
    }

    #[test]
    fn the_password_is_stored_as_an_argon2id_hash_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        assert!(set_password(dir.path(), "short").is_err());
        let path = set_password(dir.path(), "correct horse battery").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("$argon2id$"), "{text}");
        assert!(!text.contains("correct horse"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(verify(&path, "correct horse battery"), Ok(true));
        assert_eq!(verify(&path, "correct horse batterY"), Ok(false));
        assert!(
            verify(&dir.path().join("none"), "x")
                .unwrap_err()
                .contains("set-password")
        );
    }
}
