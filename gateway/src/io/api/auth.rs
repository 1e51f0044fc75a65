//! Bearer tokens by scope, and the failed-authentication throttle, as an axum layer.
//!
//! Every route that needs a token gets [`require`] with its [`Scope`] (see `router`): the layer
//! runs before the handler reads anything of the request body. It answers 404 when the scope
//! has no token configured (the read endpoints stay open instead), 429 with `Retry-After`
//! when the peer or the gateway is throttled (the token is not even compared), 401 for a wrong
//! or missing token. The policy is `outpost_core::auth::Throttle`; this adapter passes the time
//! and the peer's address (`ConnectInfo`) in, compares tokens in constant time, and carries out
//! the throttle's events: the `auth_failures` alert while a throttle is active, one log line
//! when an episode starts and one when it ends (never one per request), the counters on the
//! status page.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_core::Millis;
use outpost_core::auth::{Admission, Scope, Throttle, ThrottleEvent, ThrottlePolicy};
use outpost_core::telemetry::{AlertKey, AlertKind, Event};

use crate::io::telemetry::TelemetryHub;

/// The configured token of each scope (`None`: pull and uploads off, the read endpoints open).
#[derive(Clone, Default)]
pub struct Tokens {
    pub pull: Option<String>,
    pub upload: Option<String>,
    pub technician: Option<String>,
}

impl std::fmt::Debug for Tokens {
    /// Says which tokens are set, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<String>| if t.is_some() { "set" } else { "none" };
        f.debug_struct("Tokens")
            .field("pull", &set(&self.pull))
            .field("upload", &set(&self.upload))
            .field("technician", &set(&self.technician))
            .finish()
    }
}

/// The tokens and the throttle, shared by every request.
#[derive(Debug, Clone)]
pub struct AuthGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tokens: Tokens,
    throttle: Mutex<Throttle>,
    telemetry: TelemetryHub,
    /// The throttle's clock starts here.
    epoch: Instant,
}

impl AuthGate {
    #[must_use]
    pub fn new(tokens: Tokens, telemetry: TelemetryHub) -> AuthGate {
        AuthGate {
            inner: Arc::new(Inner {
                tokens,
                throttle: Mutex::new(Throttle::new(ThrottlePolicy::default(), Millis::ZERO)),
                telemetry,
                epoch: Instant::now(),
            }),
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether `scope` is closed by a token (the technician scope is open without one).
    #[must_use]
    pub fn has_token(&self, scope: Scope) -> bool {
        self.token(scope).is_some()
    }

    fn token(&self, scope: Scope) -> Option<&str> {
        let t = &self.inner.tokens;
        match scope {
            Scope::Pull => t.pull.as_deref(),
            Scope::Upload => t.upload.as_deref(),
            Scope::Technician => t.technician.as_deref(),
        }
    }

    /// Whether a request from `peer` with `headers` may use `scope`'s endpoints; the refusal
    /// otherwise.
    pub fn check(
        &self,
        scope: Scope,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let Some(expected) = self.token(scope) else {
            return match scope {
                Scope::Technician => Ok(()),
                Scope::Pull => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    None,
                    "HTTP pull is not enabled (uplink.pull.token)".into(),
                )),
                Scope::Upload => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    None,
                    "uploads of update artifacts are off (api.upload_token_file or \
                     api.upload_token)"
                        .into(),
                )),
            };
        };
        let now = self.now();
        let mut throttle = self
            .inner
            .throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Admission::Throttled { retry_after_ms } = throttle.handle_request(now, peer.ip()) {
            self.carry_out(&mut throttle);
            let secs = retry_after_ms.div_ceil(1000).max(1);
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                Some(secs),
                format!("too many failed authentications: try again in {secs} s"),
            ));
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return Ok(());
        }
        throttle.handle_failure(now, peer.ip());
        self.carry_out(&mut throttle);
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            None,
            format!(
                "missing or wrong bearer token (this endpoint takes the {} token)",
                scope.as_str()
            ),
        ))
    }

    /// Publishes the counters and carries out the throttle's events.
    fn carry_out(&self, throttle: &mut Throttle) {
        let telemetry = &self.inner.telemetry;
        telemetry.record(Event::Auth(throttle.counters()));
        let key = AlertKey::gateway(AlertKind::AuthFailures);
        while let Some(event) = throttle.poll_event() {
            let at_ms = crate::io::wall_clock::unix_ms();
            match event {
                ThrottleEvent::Started { peer } => {
                    let who = peer.map_or_else(|| "many peers".to_owned(), |ip| ip.to_string());
                    tracing::warn!(
                        message = "Failed authentications beyond the allowance: requests are refused (429) for a while.",
                        from = %who
                    );
                    telemetry.record(Event::Raise {
                        at_ms,
                        key: key.clone(),
                        message: format!(
                            "failed authentications on the local API from {who}: requests are \
                             throttled (429) until the allowance comes back"
                        ),
                    });
                    self.spawn_resolver();
                }
                ThrottleEvent::Ended { failures, refused } => {
                    tracing::info!(message = "Authentication throttle over.", failures, refused);
                    telemetry.record(Event::Resolve {
                        at_ms,
                        key: key.clone(),
                    });
                }
            }
        }
    }

    /// Ends the episode (and resolves the alert) when its time is up, even if no request comes.
    fn spawn_resolver(&self) {
        let gate = self.clone();
        tokio::spawn(async move {
            loop {
                let until = gate
                    .inner
                    .throttle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .poll_timeout();
                let Some(until) = until else { break };
                let wait = until.saturating_since(gate.now());
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                let mut throttle = gate
                    .inner
                    .throttle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                throttle.handle_timeout(gate.now());
                gate.carry_out(&mut throttle);
            }
        });
    }
}

/// The layer: `route_layer(from_fn_with_state((gate, scope), require))`.
pub async fn require(
    State((gate, scope)): State<(AuthGate, Scope)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match gate.check(scope, peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// A refusal as the API answers it: a status, a JSON message, `WWW-Authenticate` on 401 and
/// `Retry-After` (seconds) when given.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    retry_after_s: Option<u64>,
    message: String,
}

impl Refusal {
    #[must_use]
    pub fn new(status: StatusCode, retry_after_s: Option<u64>, message: String) -> Refusal {
        Refusal {
            status,
            retry_after_s,
            message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// [`Refusal`] as a response.
#[must_use]
pub fn refusal(status: StatusCode, retry_after_s: Option<u64>, message: String) -> Response {
    Refusal::new(status, retry_after_s, message).into_response()
}

/// Compares in constant time (`subtle`), so response timing does not reveal how much of a
/// guessed token was right. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}
