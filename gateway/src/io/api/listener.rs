//! The local API's serve loop: accepts TCP connections, serves HTTP/1 on them with hyper, and
//! carries out what `outpost_core::listener` decides.
//!
//! - Every new connection is put to [`Admission`] (the cap, with room kept for new clients by
//!   closing the least recently active idle connection of the address holding the most); a
//!   refused one gets a one-line 503 and is closed. Refusals and evictions are counted
//!   (`/api/v1/status` → `api`) and logged, at most one line per kind every 10 s.
//! - Time-outs, per connection: a request head must arrive within `api.header_timeout` of its
//!   first byte (slowloris); a connection with no request for `api.idle_timeout` is closed (one
//!   that never sends anything too); a request is answered 503 after `api.request_timeout`.
//! - `accept` errors never spin: out of descriptors (EMFILE/ENFILE), an idle connection is
//!   closed to free one (or, all busy, the loop waits 100 ms); each error is counted and logged.
//! - Before the router: the `Host:` check (421, `outpost_core::listener::host`), and the peer's
//!   address as axum's `ConnectInfo<SocketAddr>`.
//! - Shutdown: no new connections; idle ones close, requests in flight finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::io::telemetry::TelemetryHub;
use outpost_core::listener::admission::{Admission, Closed, ConnId, Decision, Limits};
use outpost_core::listener::host::AllowedHosts;
use outpost_core::telemetry::Event;

/// The serve loop's settings (`[api]`, the cap sized by [`size_cap`]).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub limits: Limits,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub allowed_hosts: AllowedHosts,
}

/// Largest request head and read buffer per connection: a connection costs at most this much
/// memory before its request reaches a handler.
const MAX_BUF: usize = 64 * 1024;

/// How long a request in flight at shutdown may take to finish (the unit's TimeoutStopSec is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One log line per kind of trouble at most this often; the lines in between are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (each API connection is a
/// descriptor) and returns the limit now in force. Logs both.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(message = "Cannot raise the open-file limit.", soft, hard, %error);
                    return soft;
                }
            }
            tracing::info!(
                message = "Open-file limit.",
                soft_at_start = soft,
                soft = hard.max(soft),
                hard
            );
            hard.max(soft)
        }
        Err(error) => {
            tracing::warn!(message = "Cannot read the open-file limit; assuming 1024.", %error);
            1024
        }
    }
}

/// The connection cap for `configured` connections when the process may hold `descriptors`
/// and needs `reserved` for the rest of the daemon; logged.
#[must_use]
pub fn size_cap(configured: usize, descriptors: u64, reserved: u64) -> Limits {
    let limits = Limits::sized(configured, descriptors, reserved);
    if limits.max_connections < configured {
        tracing::warn!(
            message = "API connections capped below api.max_connections by the open-file limit.",
            max_connections = limits.max_connections,
            configured,
            descriptors,
            reserved
        );
    } else {
        tracing::info!(
            message = "API connection cap.",
            max_connections = limits.max_connections,
            max_per_address = limits.max_per_peer,
            descriptors,
            reserved
        );
    }
    limits
}

/// Serves `router` on `listener` until `shutdown`; see the module documentation.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    telemetry: TelemetryHub,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        admission: Mutex::new(Admission::new(config.limits)),
        evict: Mutex::new(HashMap::new()),
        telemetry,
        config,
        logs: Mutex::new(Logs::default()),
    });
    shared.with_admission(|_| ());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => shared.admit(stream, peer, &router, &connections, &shutdown),
            Err(error) => shared.accept_failed(&error).await,
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

#[derive(Debug)]
struct Shared {
    admission: Mutex<Admission>,
    /// How to close each open connection from outside (evictions).
    evict: Mutex<HashMap<ConnId, CancellationToken>>,
    telemetry: TelemetryHub,
    config: ListenerConfig,
    logs: Mutex<Logs>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Changes the admission state and publishes its counters (under the same lock, so the
    /// status page never sees them go back).
    fn with_admission<T>(&self, f: impl FnOnce(&mut Admission) -> T) -> T {
        let mut admission = lock(&self.admission);
        let out = f(&mut admission);
        self.telemetry.record(Event::Api(admission.counters()));
        out
    }

    fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        router: &Router,
        connections: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let (decision, open) = self.with_admission(|a| (a.open(peer.ip()), a.open_count()));
        match decision {
            Decision::Refuse(why) => {
                self.log(Trouble::Refused, |suppressed| {
                    tracing::warn!(
                        message = "API connection refused.",
                        %peer,
                        why = why.as_str(),
                        open,
                        suppressed
                    );
                });
                refuse(&stream, why.as_str());
            }
            Decision::Admit { id, evict } => {
                let closer = CancellationToken::new();
                {
                    let mut handles = lock(&self.evict);
                    if let Some(victim) = evict.and_then(|v| handles.remove(&v)) {
                        victim.cancel();
                    }
                    handles.insert(id, closer.clone());
                }
                if evict.is_some() {
                    self.log(Trouble::Evicted, |suppressed| {
                        tracing::warn!(
                            message = "API connections full: an idle connection was closed for a new one.",
                            new_peer = %peer,
                            open,
                            suppressed
                        );
                    });
                }
                connections.spawn(connection(
                    Arc::clone(self),
                    id,
                    stream,
                    peer,
                    router.clone(),
                    closer,
                    shutdown.clone(),
                ));
            }
        }
    }

    async fn accept_failed(&self, error: &io::Error) {
        let out_of_descriptors = matches!(
            error.raw_os_error().map(nix::errno::Errno::from_raw),
            Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE)
        );
        let resources = out_of_descriptors
            || matches!(
                error.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(nix::errno::Errno::ENOBUFS | nix::errno::Errno::ENOMEM)
            );
        let (victim, open) = self.with_admission(|a| {
            a.accept_failed();
            let victim = if out_of_descriptors {
                a.evict_for_descriptor()
            } else {
                None
            };
            (victim, a.open_count())
        });
        self.log(Trouble::Accept, |suppressed| {
            tracing::warn!(
                message = "API accept failed.",
                %error,
                open,
                closing_an_idle_connection = victim.is_some(),
                suppressed
            );
        });
        if let Some(victim) = victim.and_then(|v| lock(&self.evict).remove(&v)) {
            victim.cancel();
            // Lets the closed connection's task drop its socket before the next accept.
            tokio::time::sleep(Duration::from_millis(2)).await;
        } else if resources {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn closed(&self, id: ConnId, peer: SocketAddr, how: Closed) {
        lock(&self.evict).remove(&id);
        self.with_admission(|a| a.closed(id, how));
        if how == Closed::HeaderTimeout {
            self.log(Trouble::HeaderTimeout, |suppressed| {
                tracing::warn!(
                    message = "API connection closed: its request head did not arrive in time (api.header_timeout).",
                    %peer,
                    suppressed
                );
            });
        }
    }

    fn log(&self, trouble: Trouble, line: impl FnOnce(u64)) {
        let suppressed = {
            let mut logs = lock(&self.logs);
            let slot = &mut logs.by_kind[trouble as usize];
            let now = Instant::now();
            if slot.last.is_some_and(|last| now < last + LOG_EVERY) {
                slot.suppressed += 1;
                return;
            }
            slot.last = Some(now);
            std::mem::take(&mut slot.suppressed)
        };
        line(suppressed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Trouble {
    Refused,
    Evicted,
    Accept,
    HeaderTimeout,
    Misdirected,
}

#[derive(Debug, Default)]
struct Logs {
    by_kind: [LogSlot; 5],
}

#[derive(Debug, Default)]
struct LogSlot {
    last: Option<Instant>,
    suppressed: u64,
}

/// A refused connection gets a short 503 if its socket takes it at once, and is closed.
fn refuse(stream: &TcpStream, why: &str) {
    let body = serde_json::json!({ "error": format!("too many connections: {why}; try again") })
        .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// One connection's life: hyper serves it while the time-outs, an eviction or shutdown may end
/// it first.
async fn connection(
    shared: Arc<Shared>,
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    closer: CancellationToken,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn({
        let (shared, activity) = (Arc::clone(&shared), Arc::clone(&activity));
        move |request| {
            handle(
                Arc::clone(&shared),
                id,
                peer,
                Arc::clone(&activity),
                router.clone(),
                request,
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head time-out is this loop's (from the head's first byte, not from idle).
    builder
        .header_read_timeout(Option::<Duration>::None)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let config = &shared.config;
    let mut draining = false;
    // Shutdown lets a request in flight finish, but not a stalled one (an upload whose client
    // stopped sending) for the whole request time-out: the service manager would kill us first.
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    let how = loop {
        let (deadline, _) = activity.deadline(config);
        tokio::select! {
            result = conn.as_mut() => break if result.is_ok() { Closed::Normally } else { Closed::Error },
            () = closer.cancelled() => break Closed::Normally,
            // A head began: its deadline is sooner than the idle one.
            () = activity.head_began.notified() => {}
            () = shutdown.cancelled(), if !draining => {
                if !activity.busy() {
                    break Closed::Normally;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
                drain_deadline.as_mut().reset(Instant::now() + SHUTDOWN_GRACE);
            }
            () = &mut drain_deadline, if draining => break Closed::Normally,
            () = tokio::time::sleep_until(deadline) => {
                // A request may have begun or ended since: look again before closing.
                if let (due, Some(how)) = activity.deadline(config) {
                    if due <= Instant::now() {
                        break how;
                    }
                }
            }
        }
    };
    shared.closed(id, peer, how);
}

/// One request: the `Host:` check, then the router, bounded by `api.request_timeout`.
async fn handle(
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    activity: Arc<Activity>,
    router: Router,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // An absolute-form target's authority wins over `Host:` (RFC 9112, 3.2.2).
    let host = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().to_owned()),
        None => request
            .headers()
            .get(header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    if let Err(why) = shared.config.allowed_hosts.check(host.as_deref()) {
        shared.with_admission(Admission::misdirected);
        shared.log(Trouble::Misdirected, |suppressed| {
            tracing::warn!(message = "API request refused: Host is not a name of this gateway.", %peer, %why, suppressed);
        });
        return Ok(error(StatusCode::MISDIRECTED_REQUEST, why.to_string()));
    }
    if !shared.with_admission(|a| a.request_started(id)) {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection closed to make room; send the request again".into(),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    let _finished = InFlight::start(Arc::clone(&shared), id, activity);
    request.extensions_mut().insert(ConnectInfo(peer));
    let request = request.map(Body::new);
    let limit = shared.config.request_timeout;
    match tokio::time::timeout(limit, router.oneshot(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(never)) => match never {},
        Err(_) => {
            shared.with_admission(Admission::request_timed_out);
            Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than api.request_timeout ({})",
                    humantime::format_duration(limit)
                ),
            ))
        }
    }
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    super::auth::refusal(status, None, message)
}

/// A request in flight on a connection, until its handler's answer is ready (or it is dropped).
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
    id: ConnId,
    activity: Arc<Activity>,
}

impl InFlight {
    fn start(shared: Arc<Shared>, id: ConnId, activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.first_byte.store(0, Ordering::SeqCst);
        InFlight {
            shared,
            id,
            activity,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.activity.now_ms();
        self.activity.idle_since.store(now, Ordering::SeqCst);
        self.activity.first_byte.store(0, Ordering::SeqCst);
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.with_admission(|a| a.request_finished(self.id));
    }
}

/// What a connection's time-outs are measured from.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    /// When the first byte of the next request head arrived (ms since `epoch`, plus 1; 0: not
    /// yet).
    first_byte: AtomicU64,
    /// When the last request was answered (ms since `epoch`; 0: opened, none yet).
    idle_since: AtomicU64,
    /// Wakes the connection's loop when `first_byte` is set.
    head_began: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            first_byte: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_began: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// When this connection is next due a look, and what it is closed for if still so then.
    fn deadline(&self, config: &ListenerConfig) -> (Instant, Option<Closed>) {
        if self.busy() {
            return (Instant::now() + config.idle_timeout, None);
        }
        let at = |ms: u64, after: Duration| self.epoch + Duration::from_millis(ms) + after;
        match self.first_byte.load(Ordering::SeqCst) {
            0 => (
                at(self.idle_since.load(Ordering::SeqCst), config.idle_timeout),
                Some(Closed::IdleTimeout),
            ),
            first => (
                at(first - 1, config.header_timeout),
                Some(Closed::HeaderTimeout),
            ),
        }
    }
}

/// The TCP stream, noting when a request head begins to arrive.
#[derive(Debug)]
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let activity = &self.activity;
            if !activity.busy() && activity.first_byte.load(Ordering::SeqCst) == 0 {
                activity
                    .first_byte
                    .store(activity.now_ms() + 1, Ordering::SeqCst);
                activity.head_began.notify_one();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
