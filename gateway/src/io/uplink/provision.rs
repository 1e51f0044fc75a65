//! Identity by claim and renewal: the adapter around `outpost_core::provisioning::Provisioner`,
//! and the uplink's supervisor ([`run`]).
//!
//! The exchange goes over the same plumbing as the uplink: Outpost's own TLS link
//! ([`super::link`], metered) in a directory of its own, and rumqttc (MQTT 3.1.1, clean
//! session, no Last Will) through [`super::client`]. This adapter only moves bytes: the core
//! says when to connect, what to subscribe and publish, and what to store; the files are
//! [`super::identity`]'s.
//!
//! [`run`] is what topology spawns for the MQTT uplink when the gateway may obtain its identity:
//!
//! 1. No certificate of its own: make (or reuse) the key, run the exchange with the claim
//!    certificate until the certificate is stored (retrying with back-off; never giving up
//!    silently), then go on. With its own certificate, the claim is never used again.
//! 2. Run the uplink (`super::mqtt::run`) with the own certificate, and beside it wait until
//!    renewal is due (`outpost_core::provisioning::renewal_due_at`, by the wall clock); then run
//!    the exchange again over a second connection with the own certificate. Once the new
//!    certificate is stored, the uplink is stopped cleanly and started again with it: batches
//!    stay in the outbox meanwhile, and the new session resends what was not acknowledged.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::config::{MqttConfig, ProvisioningConfig};
use outpost_core::provisioning::{
    Action, CertificateInfo, Event, Issued, Provisioner, ProvisioningSettings, Purpose,
    RetryPolicy, renewal_due_at,
};
use outpost_core::telemetry::{Event as TelemetryEvent, IdentityState, ProvisioningBoard};
use outpost_core::uplink::protocol::{MqttVersion, TopicRef};
use outpost_proto::Millis;
use tokio_util::sync::CancellationToken;

use super::client::{self, ClientSettings, Connection, Failure, Wire};
use super::identity::{self, IdentityFiles};
use super::link::{self as tls_link, LinkReport, TlsLink};
use super::meter::Meter;
use super::mqtt::{self as uplink_mqtt, UplinkIo};
use crate::io::telemetry::TelemetryHub;

/// How long a finished exchange waits for its DISCONNECT to go out.
const GOODBYE: Duration = Duration::from_secs(2);
/// The longest sleep before the renewal time is looked at again (the wall clock may step).
const RENEWAL_RECHECK: Duration = Duration::from_secs(3600);

/// What an exchange needs besides the core's settings.
struct Exchange<'a> {
    mqtt: &'a MqttConfig,
    provisioning: &'a ProvisioningConfig,
    purpose: Purpose,
    /// The credential to connect with: the claim's or the own certificate's.
    tls: Arc<rustls::ClientConfig>,
    client_id: String,
    /// The CSR's subject CN: the gateway's id (a template may name the thing after it).
    common_name: String,
    run_dir: PathBuf,
    meter: Arc<Meter>,
    telemetry: &'a TelemetryHub,
    files: &'a IdentityFiles,
    /// The board's state while this exchange runs.
    board_state: IdentityState,
    /// Shown on the board meanwhile (renewal: the current certificate).
    current: Option<CertificateInfo>,
}

type PollFuture = Pin<Box<dyn Future<Output = (Connection, Result<Wire, Failure>)> + Send>>;

fn poll_once(mut connection: Connection) -> PollFuture {
    Box::pin(async move {
        let event = connection.poll().await;
        (connection, event)
    })
}

impl Exchange<'_> {
    /// Runs the exchange until the certificate is stored (`Some`) or `stop` (`None`).
    async fn run(&self, key: &rcgen::KeyPair, stop: &CancellationToken) -> Option<Issued> {
        let csr = match identity::csr(key, &self.common_name) {
            Ok(csr) => csr,
            Err(error) => {
                tracing::error!(message = "Cannot make a certificate signing request; provisioning off.", %error);
                show_error(self.telemetry, self.board_state, error.to_string());
                return None;
            }
        };
        let link = match TlsLink::bind(&self.run_dir) {
            Ok(link) => link,
            Err(error) => {
                tracing::error!(message = "Cannot create the provisioning socket; provisioning off.", dir = %self.run_dir.display(), %error);
                let why = format!(
                    "cannot create the provisioning socket in {}: {error}",
                    self.run_dir.display()
                );
                show_error(self.telemetry, self.board_state, why);
                return None;
            }
        };
        let settings = ClientSettings {
            client_id: self.client_id.clone(),
            socket: link.socket_path().to_string_lossy().into_owned(),
            keepalive: self.mqtt.keepalive,
            will_topic: None,
            clean_session: true,
            session_expiry: Duration::ZERO,
        };
        let report = Arc::new(LinkReport::default());
        let link_stop = CancellationToken::new();
        let link_task = tokio::spawn(link.run(
            self.mqtt.host.clone(),
            self.mqtt.port,
            Arc::clone(&self.tls),
            Arc::clone(&self.meter),
            Arc::clone(&report),
            link_stop.clone(),
        ));

        let started = Instant::now();
        let now = move || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let at = |t: Millis| tokio::time::Instant::from_std(started + Duration::from_millis(t.0));
        let core_settings = ProvisioningSettings {
            template: self.provisioning.template.clone(),
            serial_number: self.provisioning.serial_number.clone(),
            response_timeout: self.provisioning.response_timeout,
            retry: RetryPolicy {
                first: RetryPolicy::default().first,
                max: self.provisioning.retry_max,
            },
        };
        let mut exchange = Provisioner::new(
            core_settings,
            self.purpose,
            identity::public_key(key),
            csr,
            jitter_seed(),
            now(),
        );
        let mut client: Option<client::Client> = None;
        let mut polling: Option<PollFuture> = None;
        let mut issued_out: Option<Issued> = None;

        loop {
            while let Some(action) = exchange.poll_action() {
                match action {
                    Action::Connect => {
                        let (new_client, connection) = client::new(MqttVersion::V311, &settings);
                        client = Some(new_client);
                        polling = Some(poll_once(connection));
                    }
                    Action::Subscribe(topic) => {
                        if let Some(client) = &client {
                            // A full queue leaves the SUBACK missing: the attempt times out.
                            let _ = client.try_subscribe(&topic, true);
                        }
                    }
                    Action::Publish { topic, payload } => {
                        if let Some(client) = &client {
                            let _ = client.try_publish(&topic, TopicRef::Name, false, payload);
                        }
                    }
                    Action::StoreCertificate(issued) => {
                        let result = self.files.store(&issued).map_err(|e| e.to_string());
                        exchange.handle_stored(
                            now(),
                            result.as_ref().map(|()| &*issued).map_err(Clone::clone),
                        );
                        if result.is_ok() {
                            issued_out = Some(*issued);
                        }
                    }
                    Action::Disconnect => {
                        if let (Some(client), Some(poll)) = (client.take(), polling.take()) {
                            if exchange.is_done() {
                                goodbye(&client, poll).await;
                            }
                        }
                        polling = None;
                    }
                }
            }
            while let Some(event) = exchange.poll_event() {
                self.log(&event, &exchange);
            }
            self.show(&exchange, started);
            if exchange.is_done() {
                break;
            }
            let timeout = exchange.poll_timeout();
            tokio::select! {
                () = stop.cancelled() => break,
                (connection, event) = async { polling.as_mut().expect("guarded").await }, if polling.is_some() => {
                    match event {
                        Ok(Wire::ConnAck { .. }) => {
                            exchange.handle_connected(now());
                            polling = Some(poll_once(connection));
                        }
                        Ok(Wire::SubAck { refused }) => {
                            exchange.handle_subscribed(now(), !refused);
                            polling = Some(poll_once(connection));
                        }
                        Ok(Wire::Publish { topic, payload, .. }) => {
                            let topic = String::from_utf8_lossy(&topic);
                            exchange.handle_message(now(), &topic, &payload);
                            polling = Some(poll_once(connection));
                        }
                        Ok(_) => polling = Some(poll_once(connection)),
                        Err(failure) => {
                            // Not polled again: rumqttc would reconnect by itself. The core
                            // says when to try again.
                            polling = None;
                            client = None;
                            let reason = report.take_error().unwrap_or(failure.message);
                            exchange.handle_connection_lost(now(), &reason);
                        }
                    }
                }
                () = tokio::time::sleep_until(at(timeout.unwrap_or(Millis::ZERO))), if timeout.is_some() => {
                    exchange.handle_timeout(now());
                }
            }
        }
        drop(polling);
        drop(client);
        link_stop.cancel();
        let _ = tokio::time::timeout(GOODBYE, link_task).await;
        issued_out
    }

    fn log(&self, event: &Event, exchange: &Provisioner) {
        let purpose = match self.purpose {
            Purpose::Claim => "claim",
            Purpose::Renewal => "renewal",
        };
        match event {
            Event::Attempt { attempt } => {
                tracing::info!(message = "Provisioning: connecting.", purpose, attempt, template = %self.provisioning.template);
            }
            Event::CsrSent => tracing::debug!(
                message = "Provisioning: certificate signing request sent.",
                purpose
            ),
            Event::ForeignCertificate { certificate_id } => tracing::warn!(
                message = "Provisioning: ignored a certificate issued for another key (another gateway's answer).",
                purpose,
                %certificate_id,
                ignored = exchange.status().foreign_certificates
            ),
            Event::Failed {
                attempt,
                reason,
                retry_in,
            } => tracing::warn!(
                message = "Provisioning failed; retrying.",
                purpose,
                attempt,
                %reason,
                retry_in = ?retry_in
            ),
            Event::Provisioned {
                certificate_id,
                thing_name,
            } => tracing::info!(
                message = "Provisioning: the gateway's own certificate is stored.",
                purpose,
                %certificate_id,
                thing_name = thing_name.as_deref().unwrap_or("-"),
                cert = %self.files.cert.display()
            ),
        }
    }

    fn show(&self, exchange: &Provisioner, started: Instant) {
        let status = exchange.status();
        let next_attempt_unix_ms = status.next_attempt_at.map(|at| {
            let wait = at.saturating_since(Millis(
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ));
            crate::io::wall_clock::unix_ms() + i64::try_from(wait).unwrap_or(i64::MAX / 2)
        });
        let state = if exchange.is_done() {
            IdentityState::Provisioned
        } else {
            self.board_state
        };
        self.telemetry
            .record(TelemetryEvent::Provisioning(ProvisioningBoard {
                state,
                exchange: (!exchange.is_done()).then_some(status.state),
                attempts: status.attempts,
                last_error: status.last_error.clone(),
                next_attempt_unix_ms,
                foreign_certificates: status.foreign_certificates,
                thing_name: status.thing_name.clone(),
                not_after_unix_s: self.current.as_ref().map(|c| c.not_after_unix_s),
                renew_at_unix_s: None,
            }));
    }
}

/// Sends DISCONNECT and drives the connection until it is out (or a short while passed).
async fn goodbye(client: &client::Client, mut poll: PollFuture) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(GOODBYE, async move {
        loop {
            match poll.await {
                (_, Ok(Wire::OutgoingDisconnect) | Err(_)) => return,
                (connection, Ok(_)) => poll = poll_once(connection),
            }
        }
    })
    .await;
}

fn jitter_seed() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// The MQTT uplink with an identity obtained by claim and renewed before expiry (see the module
/// documentation). Returns at `shutdown`, after the uplink said goodbye.
pub async fn run(
    mqtt: MqttConfig,
    configured_id: String,
    data_dir: PathBuf,
    mut io: UplinkIo,
    shutdown: CancellationToken,
) {
    let Some(provisioning) = mqtt.provisioning.clone() else {
        return;
    };
    let files = IdentityFiles::new(&mqtt, &data_dir);
    let run_dir = data_dir.join("run");
    let mut claim_ignored_said = false;
    loop {
        if files.has_certificate() {
            if !claim_ignored_said {
                claim_ignored_said = true;
                tracing::info!(
                    message = "The gateway has its own certificate; the claim certificate is not used (it may be removed).",
                    cert = %files.cert.display(),
                    claim = %provisioning.claim_cert_file.display()
                );
            }
        } else {
            let Some(()) = claim(
                &mqtt,
                &provisioning,
                &files,
                &run_dir,
                &io,
                &configured_id,
                &shutdown,
            )
            .await
            else {
                return;
            };
            claim_ignored_said = true;
            tracing::info!(
                message = "Provisioned: from now on the gateway uses its own certificate and never the claim (it may be removed).",
                cert = %files.cert.display(),
                claim = %provisioning.claim_cert_file.display()
            );
        }

        let current = match files.certificate() {
            Ok(info) => info,
            Err(error) => {
                tracing::error!(message = "The gateway's certificate is unreadable; uplink off.", %error);
                show_error(&io.telemetry, IdentityState::Provisioned, error);
                return;
            }
        };
        let tls = match tls_link::client_config(&mqtt.ca_file, &files.cert, &files.key) {
            Ok(tls) => Arc::new(tls),
            Err(error) => {
                tracing::error!(message = "Cannot set up TLS with the gateway's own certificate; uplink off.", %error);
                show_error(&io.telemetry, IdentityState::Provisioned, error.to_string());
                return;
            }
        };
        let record = files.record();
        let gateway_id = record
            .as_ref()
            .and_then(|r| r.thing_name.clone())
            .unwrap_or_else(|| configured_id.clone());
        if gateway_id != configured_id {
            tracing::info!(
                message = "The uplink uses the thing name provisioning gave this gateway.",
                thing_name = %gateway_id,
                configured = %configured_id
            );
        }
        let renew_at = renewal_due_at(
            current.not_before_unix_s,
            current.not_after_unix_s,
            provisioning.renew_before,
        );
        io.telemetry
            .record(TelemetryEvent::Provisioning(ProvisioningBoard {
                state: IdentityState::Provisioned,
                exchange: None,
                attempts: 0,
                last_error: None,
                next_attempt_unix_ms: None,
                foreign_certificates: 0,
                thing_name: record.and_then(|r| r.thing_name),
                not_after_unix_s: Some(current.not_after_unix_s),
                renew_at_unix_s: Some(renew_at),
            }));

        let uplink_stop = shutdown.child_token();
        let telemetry = io.telemetry.clone();
        let meter = Arc::clone(&io.meter);
        let renewed = {
            let uplink = uplink_mqtt::run(
                mqtt.clone(),
                Arc::clone(&tls),
                gateway_id.clone(),
                run_dir.clone(),
                &mut io,
                uplink_stop.clone(),
            );
            tokio::pin!(uplink);
            let renewal = renew(
                Shared {
                    mqtt: &mqtt,
                    provisioning: &provisioning,
                    files: &files,
                    run_dir: &run_dir,
                    telemetry: &telemetry,
                    meter: Arc::clone(&meter),
                },
                Arc::clone(&tls),
                &gateway_id,
                renew_at,
                current.clone(),
                &shutdown,
            );
            tokio::select! {
                () = &mut uplink => false,
                renewed = renewal, if !shutdown.is_cancelled() => {
                    if renewed {
                        tracing::info!(message = "Certificate renewed; the uplink reconnects with it.");
                        uplink_stop.cancel();
                    }
                    uplink.await;
                    renewed
                }
            }
        };
        if !renewed || shutdown.is_cancelled() {
            return;
        }
    }
}

fn show_error(telemetry: &TelemetryHub, state: IdentityState, error: String) {
    telemetry.record(TelemetryEvent::Provisioning(ProvisioningBoard {
        state,
        exchange: None,
        attempts: 0,
        last_error: Some(error),
        next_attempt_unix_ms: None,
        foreign_certificates: 0,
        thing_name: None,
        not_after_unix_s: None,
        renew_at_unix_s: None,
    }));
}

/// The claim exchange; `None` at shutdown (or if it cannot run at all).
async fn claim(
    mqtt: &MqttConfig,
    provisioning: &ProvisioningConfig,
    files: &IdentityFiles,
    run_dir: &Path,
    io: &UplinkIo,
    gateway_id: &str,
    shutdown: &CancellationToken,
) -> Option<()> {
    tracing::info!(
        message = "No certificate of its own yet; provisioning with the claim certificate.",
        cert = %files.cert.display(),
        claim = %provisioning.claim_cert_file.display(),
        template = %provisioning.template
    );
    let fail = |error: String| {
        tracing::error!(message = "Cannot provision the gateway; uplink off.", %error);
        show_error(&io.telemetry, IdentityState::Claiming, error);
        None
    };
    let key = match files.load_or_make_key() {
        Ok(key) => key,
        Err(error) => return fail(error.to_string()),
    };
    let tls = match tls_link::client_config(
        &mqtt.ca_file,
        &provisioning.claim_cert_file,
        &provisioning.claim_key_file,
    ) {
        Ok(tls) => Arc::new(tls),
        Err(error) => return fail(format!("claim certificate: {error}")),
    };
    let exchange = Exchange {
        mqtt,
        provisioning,
        purpose: Purpose::Claim,
        tls,
        client_id: format!("outpost-{gateway_id}"),
        common_name: gateway_id.to_owned(),
        run_dir: run_dir.join("provisioning"),
        meter: Arc::clone(&io.meter),
        telemetry: &io.telemetry,
        files,
        board_state: IdentityState::Claiming,
        current: None,
    };
    exchange.run(&key, shutdown).await.map(|_| ())
}

/// Waits until renewal is due, then renews; true once a new certificate is stored, false at
/// shutdown.
async fn renew(
    shared: Shared<'_>,
    tls: Arc<rustls::ClientConfig>,
    gateway_id: &str,
    renew_at_unix_s: i64,
    current: CertificateInfo,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let now_s = crate::io::wall_clock::unix_ms() / 1000;
        if now_s >= renew_at_unix_s {
            break;
        }
        let wait = Duration::from_secs(u64::try_from(renew_at_unix_s - now_s).unwrap_or(0))
            .min(RENEWAL_RECHECK);
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!(
        message = "The gateway's certificate nears its expiry; renewing it.",
        not_after_unix_s = current.not_after_unix_s,
        renew_before = ?shared.provisioning.renew_before
    );
    let key = match shared.files.load_or_make_key() {
        Ok(key) => key,
        Err(error) => {
            tracing::error!(message = "Cannot read the gateway's key; no renewal.", %error);
            show_error(
                shared.telemetry,
                IdentityState::Provisioned,
                error.to_string(),
            );
            shutdown.cancelled().await;
            return false;
        }
    };
    let exchange = Exchange {
        mqtt: shared.mqtt,
        provisioning: shared.provisioning,
        purpose: Purpose::Renewal,
        tls,
        client_id: format!("outpost-{gateway_id}-renewal"),
        // The same subject again: the broker's identity (and the thing) stay the same.
        common_name: current
            .common_name
            .clone()
            .unwrap_or_else(|| gateway_id.to_owned()),
        run_dir: shared.run_dir.join("renewal"),
        meter: Arc::clone(&shared.meter),
        telemetry: shared.telemetry,
        files: shared.files,
        board_state: IdentityState::Renewing,
        current: Some(current),
    };
    exchange.run(&key, shutdown).await.is_some()
}

/// What the claim and the renewal share with the supervisor.
#[derive(Clone)]
struct Shared<'a> {
    mqtt: &'a MqttConfig,
    provisioning: &'a ProvisioningConfig,
    files: &'a IdentityFiles,
    run_dir: &'a Path,
    telemetry: &'a TelemetryHub,
    meter: Arc<Meter>,
}
