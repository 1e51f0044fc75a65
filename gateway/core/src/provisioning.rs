//! Gateway identity by claim: the AWS IoT fleet-provisioning exchange ("create certificate from
//! CSR", then "register thing" through a provisioning template), as an IO-free state machine.
//!
//! A gateway leaves the factory with a claim certificate shared by a batch of units. On its
//! first start it makes its own key (the adapter does, and keeps it), and one [`Provisioner`]
//! runs the exchange over a connection made with the claim:
//!
//! ```text
//!  Waiting ──time──► Connecting ──connected──► Subscribing ──4 SUBACKs──► AwaitingCertificate
//!     ▲                  │                          │   (publish the CSR)        │ accepted, the
//!     │                  │                          │                            │ certificate is
//!     │  failed: back-off│ lost / refused / no answer in time / rejected         │ for our key
//!     └──────────────────┴──────────────────────────┴──────────────┐            ▼
//!                                                                   │ AwaitingRegistration
//!                                                                   │  (publish the ownership
//!                                                                   │   token and parameters)
//!                                                                   │            │ accepted
//!   Done ◄──stored── Storing ◄───────────────────────────────────────┴────────────┘
//! ```
//!
//! Topics, subscribed before anything is published, so no answer can be missed:
//! - `$aws/certificates/create-from-csr/json` ← `{"certificateSigningRequest": PEM}`;
//!   `…/accepted` → `certificatePem`, `certificateId`, `certificateOwnershipToken`; `…/rejected`;
//! - `$aws/provisioning-templates/{template}/provision/json` ←
//!   `{"certificateOwnershipToken": …, "parameters": {"SerialNumber": …}}`; `…/accepted` →
//!   `thingName`, `deviceConfiguration`; `…/rejected`.
//!
//! Rejections carry `{"statusCode", "errorCode", "errorMessage"}`; each failure (a rejection, a
//! refused connection or subscription, a malformed answer, a certificate the adapter could not
//! store, no answer within [`ProvisioningSettings::response_timeout`]) ends the
//! attempt with a reason that says what to fix, and the next attempt waits an exponential,
//! jittered, capped back-off ([`crate::uplink::Backoff`] with [`RetryPolicy`]).
//!
//! Invariants:
//! 1. **Only a certificate for the gateway's own key is ever stored.** An accepted answer whose
//!    certificate holds another public key (another gateway's answer on a broker that shares the
//!    response topics, or a confused cloud) is ignored and counted; the exchange goes on waiting.
//! 2. **Nothing is published before all four subscriptions are granted**, and the registration
//!    is published only with the ownership token of a certificate that passed (1).
//! 3. **Retries are bounded**: every wait lies between half of [`RetryPolicy::first`] and
//!    [`RetryPolicy::max`]; there is no path that waits longer or spins.
//! 4. The private key never enters this module: it holds the public key and the CSR only.
//!
//! The same exchange renews a gateway's certificate ([`Purpose::Renewal`]), made over a
//! connection with the gateway's own identity; the adapter decides when ([`renewal_due_at`]).

use std::time::Duration;

use outpost_proto::Millis;
use serde::Serialize;

use crate::uplink::backoff::{Backoff, BackoffPolicy};

/// The fleet-provisioning topics for `template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub create: String,
    pub create_accepted: String,
    pub create_rejected: String,
    pub provision: String,
    pub provision_accepted: String,
    pub provision_rejected: String,
}

impl Topics {
    #[must_use]
    pub fn new(template: &str) -> Topics {
        let create = "$aws/certificates/create-from-csr/json".to_owned();
        let provision = format!("$aws/provisioning-templates/{template}/provision/json");
        Topics {
            create_accepted: format!("{create}/accepted"),
            create_rejected: format!("{create}/rejected"),
            provision_accepted: format!("{provision}/accepted"),
            provision_rejected: format!("{provision}/rejected"),
            create,
            provision,
        }
    }

    /// The four answer topics, in the order they are subscribed.
    #[must_use]
    pub fn answers(&self) -> [&str; 4] {
        [
            &self.create_accepted,
            &self.create_rejected,
            &self.provision_accepted,
            &self.provision_rejected,
        ]
    }
}

/// A provisioning template name: it becomes a topic level.
///
/// # Errors
/// Why the name cannot be one (empty, too long, or a character AWS does not allow).
pub fn check_template_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if name.is_empty() || name.len() > 36 {
        Err("must be 1 to 36 characters (AWS's limit for a template name)".into())
    } else if !name.chars().all(ok) {
        Err(format!(
            "`{name}` may only hold letters, digits, '-' and '_'"
        ))
    } else {
        Ok(())
    }
}

/// Why this exchange runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// No own certificate yet: connect with the claim certificate.
    Claim,
    /// The own certificate nears its expiry: connect with it and get a new one.
    Renewal,
}

impl Purpose {
    fn credential(self) -> &'static str {
        match self {
            Purpose::Claim => "claim certificate",
            Purpose::Renewal => "gateway's own certificate",
        }
    }
}

/// The back-off between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure, before jitter (which halves it at most).
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(5),
            max: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    fn backoff_policy(self) -> BackoffPolicy {
        // No "recent outage" phase: plain doubling from `first`, capped at `max`.
        BackoffPolicy {
            first: self.first,
            recent_cap: self.max,
            recent: Duration::ZERO,
            max: self.max,
        }
    }
}

/// What the exchange needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningSettings {
    /// The provisioning template's name.
    pub template: String,
    /// The template's `SerialNumber` parameter.
    pub serial_number: String,
    /// How long each answer (CONNACK, SUBACKs, accepted/rejected) may take.
    pub response_timeout: Duration,
    pub retry: RetryPolicy,
}

/// Work for the adapter, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect to the broker with the purpose's credential (claim or own certificate).
    Connect,
    /// Subscribe (QoS 1) to this topic; answer with [`Provisioner::handle_subscribed`].
    Subscribe(String),
    /// Publish (QoS 1, not retained).
    Publish { topic: String, payload: Vec<u8> },
    /// Write the certificate next to the key, atomically; answer with
    /// [`Provisioner::handle_stored`].
    StoreCertificate(Box<Issued>),
    /// Close the connection (cleanly if it is up).
    Disconnect,
}

/// A certificate issued for the gateway's key, and what the template said of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// PEM, as the cloud sent it.
    pub certificate_pem: String,
    pub certificate_id: String,
    /// The thing the template registered (AWS: the gateway's name in the cloud).
    pub thing_name: Option<String>,
    /// The template's `deviceConfiguration`, as the cloud sent it (an object of strings).
    pub device_configuration: serde_json::Value,
    /// The certificate's expiry, Unix seconds.
    pub not_after_unix_s: i64,
}

/// Things worth a journal line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Attempt `attempt` starts (connecting).
    Attempt { attempt: u32 },
    /// The CSR was published.
    CsrSent,
    /// An accepted certificate held another public key: ignored.
    ForeignCertificate { certificate_id: String },
    /// The attempt failed: why (with what to fix), and when the next one starts.
    Failed {
        attempt: u32,
        reason: String,
        retry_in: Duration,
    },
    /// The certificate is stored: the gateway has its identity.
    Provisioned {
        certificate_id: String,
        thing_name: Option<String>,
    },
}

/// Where the exchange stands, for the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Waiting,
    Connecting,
    Subscribing,
    AwaitingCertificate,
    AwaitingRegistration,
    Storing,
    Done,
}

/// The exchange as `/api/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisioningStatus {
    pub purpose: Purpose,
    pub state: State,
    /// Attempts started.
    pub attempts: u32,
    /// Why the last attempt failed, and what to fix.
    pub last_error: Option<String>,
    /// Accepted certificates for another key, ignored.
    pub foreign_certificates: u64,
    /// When the next attempt starts (the adapter's monotonic ms), while waiting after a failure.
    #[serde(skip)]
    pub next_attempt_at: Option<Millis>,
    pub certificate_id: Option<String>,
    pub thing_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Waiting {
        until: Millis,
    },
    Connecting {
        deadline: Millis,
    },
    Subscribing {
        deadline: Millis,
        pending: u8,
    },
    AwaitingCertificate {
        deadline: Millis,
    },
    AwaitingRegistration {
        deadline: Millis,
        issued: Box<Issued>,
    },
    Storing,
    Done,
}

/// One gateway's provisioning exchange. See the module documentation.
#[derive(Debug)]
pub struct Provisioner {
    settings: ProvisioningSettings,
    topics: Topics,
    purpose: Purpose,
    /// The gateway's public key, as the certificate's subjectPublicKey bits.
    own_public_key: Vec<u8>,
    csr_pem: String,
    phase: Phase,
    backoff: Backoff,
    actions: std::collections::VecDeque<Action>,
    events: std::collections::VecDeque<Event>,
    status: ProvisioningStatus,
}

/// A rejection's body.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    status_code: Option<u16>,
    error_code: Option<String>,
    error_message: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateAnswer {
    certificate_pem: String,
    certificate_id: String,
    certificate_ownership_token: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationAnswer {
    thing_name: Option<String>,
    #[serde(default)]
    device_configuration: serde_json::Value,
}

impl Provisioner {
    /// An exchange for the key whose public part is `own_public_key` (the subjectPublicKey bits,
    /// as in the certificate), with the CSR `csr_pem` made with that key. The first attempt
    /// starts at once (the first [`Provisioner::poll_action`] is [`Action::Connect`]).
    #[must_use]
    pub fn new(
        settings: ProvisioningSettings,
        purpose: Purpose,
        own_public_key: Vec<u8>,
        csr_pem: String,
        jitter_seed: u64,
        now: Millis,
    ) -> Provisioner {
        let backoff = Backoff::new(settings.retry.backoff_policy(), jitter_seed);
        let mut provisioner = Provisioner {
            topics: Topics::new(&settings.template),
            settings,
            purpose,
            own_public_key,
            csr_pem,
            phase: Phase::Waiting { until: now },
            backoff,
            actions: std::collections::VecDeque::new(),
            events: std::collections::VecDeque::new(),
            status: ProvisioningStatus {
                purpose,
                state: State::Waiting,
                attempts: 0,
                last_error: None,
                foreign_certificates: 0,
                next_attempt_at: None,
                certificate_id: None,
                thing_name: None,
            },
        };
        provisioner.handle_timeout(now);
        provisioner
    }

    #[must_use]
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    #[must_use]
    pub fn status(&self) -> &ProvisioningStatus {
        &self.status
    }

    #[must_use]
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Provisioner::handle_timeout`] must be called next, if at all.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        match &self.phase {
            Phase::Waiting { until } => Some(*until),
            Phase::Connecting { deadline }
            | Phase::Subscribing { deadline, .. }
            | Phase::AwaitingCertificate { deadline }
            | Phase::AwaitingRegistration { deadline, .. } => Some(*deadline),
            Phase::Storing | Phase::Done => None,
        }
    }

    /// Time passed: an attempt starts, or an answer did not come in time.
    pub fn handle_timeout(&mut self, now: Millis) {
        let what = match &self.phase {
            Phase::Waiting { until } if now >= *until => {
                self.status.attempts = self.status.attempts.saturating_add(1);
                self.status.next_attempt_at = None;
                self.set_phase(Phase::Connecting {
                    deadline: self.deadline(now),
                });
                self.actions.push_back(Action::Connect);
                self.events.push_back(Event::Attempt {
                    attempt: self.status.attempts,
                });
                return;
            }
            Phase::Connecting { deadline } if now >= *deadline => {
                ("the broker did not accept the connection", "")
            }
            Phase::Subscribing { deadline, .. } if now >= *deadline => {
                ("the broker did not answer the subscriptions", "")
            }
            Phase::AwaitingCertificate { deadline } if now >= *deadline => (
                "no answer to the certificate signing request",
                ": is a provisioning service (AWS IoT fleet provisioning, or the site's \
                 responder) serving this broker, and may the credential use its topics?",
            ),
            Phase::AwaitingRegistration { deadline, .. } if now >= *deadline => (
                "no answer from the provisioning template",
                ": does the template exist, and is the provisioning service running?",
            ),
            _ => return,
        };
        let (what, hint) = what;
        let reason = format!(
            "{what} within {}s{hint}",
            self.settings.response_timeout.as_secs()
        );
        self.fail(now, reason);
    }

    /// The broker accepted the connection.
    pub fn handle_connected(&mut self, now: Millis) {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        for topic in self.topics.answers() {
            self.actions.push_back(Action::Subscribe(topic.to_owned()));
        }
        self.set_phase(Phase::Subscribing {
            deadline: self.deadline(now),
            pending: 4,
        });
    }

    /// A SUBACK came back; `granted` is false if the broker refused the subscription.
    pub fn handle_subscribed(&mut self, now: Millis, granted: bool) {
        let Phase::Subscribing { deadline, pending } = self.phase else {
            return;
        };
        if !granted {
            let reason = format!(
                "the broker refused to subscribe the {} to the provisioning answers: the \
                 broker's policy or ACL must let it subscribe to {} and {}",
                self.purpose.credential(),
                "$aws/certificates/create-from-csr/json/{accepted,rejected}",
                format_args!(
                    "$aws/provisioning-templates/{}/provision/json/{{accepted,rejected}}",
                    self.settings.template
                )
            );
            self.fail(now, reason);
            return;
        }
        if pending > 1 {
            self.phase = Phase::Subscribing {
                deadline,
                pending: pending - 1,
            };
            return;
        }
        let payload = serde_json::json!({ "certificateSigningRequest": self.csr_pem });
        self.actions.push_back(Action::Publish {
            topic: self.topics.create.clone(),
            payload: payload.to_string().into_bytes(),
        });
        self.events.push_back(Event::CsrSent);
        self.set_phase(Phase::AwaitingCertificate {
            deadline: self.deadline(now),
        });
    }

    /// A message arrived on `topic`.
    pub fn handle_message(&mut self, now: Millis, topic: &str, payload: &[u8]) {
        match &self.phase {
            Phase::AwaitingCertificate { .. } if topic == self.topics.create_accepted => {
                self.certificate_accepted(now, payload);
            }
            Phase::AwaitingCertificate { .. } if topic == self.topics.create_rejected => {
                let reason = rejection(
                    "certificate signing request",
                    payload,
                    &self.settings.template,
                    self.purpose,
                );
                self.fail(now, reason);
            }
            Phase::AwaitingRegistration { .. } if topic == self.topics.provision_accepted => {
                self.registration_accepted(now, payload);
            }
            Phase::AwaitingRegistration { .. } if topic == self.topics.provision_rejected => {
                let reason = rejection(
                    "provisioning template",
                    payload,
                    &self.settings.template,
                    self.purpose,
                );
                self.fail(now, reason);
            }
            // Late or foreign answers (another gateway's, on a broker that shares the topics).
            _ => {}
        }
    }

    fn certificate_accepted(&mut self, now: Millis, payload: &[u8]) {
        let answer: CertificateAnswer = match serde_json::from_slice(payload) {
            Ok(answer) => answer,
            Err(e) => {
                let reason = format!(
                    "the certificate answer is not {{certificatePem, certificateId, \
                     certificateOwnershipToken}}: {e}"
                );
                self.fail(now, reason);
                return;
            }
        };
        let info = match CertificateInfo::from_pem(&answer.certificate_pem) {
            Ok(info) => info,
            Err(e) => {
                self.fail(now, format!("the issued certificate is unreadable: {e}"));
                return;
            }
        };
        if info.public_key != self.own_public_key {
            // Not ours: another gateway's answer. Keep waiting for ours.
            self.status.foreign_certificates += 1;
            self.events.push_back(Event::ForeignCertificate {
                certificate_id: answer.certificate_id,
            });
            return;
        }
        let payload = serde_json::json!({
            "certificateOwnershipToken": answer.certificate_ownership_token,
            "parameters": { "SerialNumber": self.settings.serial_number },
        });
        self.actions.push_back(Action::Publish {
            topic: self.topics.provision.clone(),
            payload: payload.to_string().into_bytes(),
        });
        let issued = Issued {
            certificate_pem: answer.certificate_pem,
            certificate_id: answer.certificate_id,
            thing_name: None,
            device_configuration: serde_json::Value::Null,
            not_after_unix_s: info.not_after_unix_s,
        };
        self.set_phase(Phase::AwaitingRegistration {
            deadline: self.deadline(now),
            issued: Box::new(issued),
        });
    }

    fn registration_accepted(&mut self, now: Millis, payload: &[u8]) {
        let answer: RegistrationAnswer = match serde_json::from_slice(payload) {
            Ok(answer) => answer,
            Err(e) => {
                let reason =
                    format!("the template's answer is not {{thingName, deviceConfiguration}}: {e}");
                self.fail(now, reason);
                return;
            }
        };
        if let Some(name) = &answer.thing_name
            && let Err(why) = crate::config::check_identifier(name)
        {
            let reason = format!(
                "the template named this gateway `{name}`, which cannot be a gateway id ({why}): \
                 change the template's ThingName"
            );
            self.fail(now, reason);
            return;
        }
        let Phase::AwaitingRegistration { issued, .. } =
            std::mem::replace(&mut self.phase, Phase::Storing)
        else {
            return;
        };
        let mut issued = issued;
        issued.thing_name = answer.thing_name;
        issued.device_configuration = answer.device_configuration;
        self.status.state = State::Storing;
        self.actions.push_back(Action::StoreCertificate(issued));
    }

    /// The adapter stored the certificate (or could not).
    pub fn handle_stored(&mut self, now: Millis, result: Result<&Issued, String>) {
        if self.phase != Phase::Storing {
            return;
        }
        match result {
            Ok(issued) => {
                self.backoff.succeeded();
                self.status.last_error = None;
                self.status.certificate_id = Some(issued.certificate_id.clone());
                self.status.thing_name.clone_from(&issued.thing_name);
                self.set_phase(Phase::Done);
                self.actions.push_back(Action::Disconnect);
                self.events.push_back(Event::Provisioned {
                    certificate_id: issued.certificate_id.clone(),
                    thing_name: issued.thing_name.clone(),
                });
            }
            Err(why) => {
                self.fail(now, format!("cannot store the issued certificate: {why}"));
            }
        }
    }

    /// The connection failed or ended; `reason` says how (a TLS refusal names the certificate).
    pub fn handle_connection_lost(&mut self, now: Millis, reason: &str) {
        match self.phase {
            Phase::Connecting { .. } => {
                let reason = format!(
                    "cannot connect with the {}: {reason}",
                    self.purpose.credential()
                );
                self.fail(now, reason);
            }
            Phase::Subscribing { .. }
            | Phase::AwaitingCertificate { .. }
            | Phase::AwaitingRegistration { .. } => {
                let reason = format!(
                    "the broker closed the connection during provisioning ({reason}): its \
                     policy or ACL may not let the {} use the provisioning topics",
                    self.purpose.credential()
                );
                self.fail(now, reason);
            }
            // Storing needs no connection; waiting and done have none.
            Phase::Waiting { .. } | Phase::Storing | Phase::Done => {}
        }
    }

    fn fail(&mut self, now: Millis, reason: String) {
        let retry_in = self.backoff.failed(now);
        let until = now + retry_in;
        self.actions.push_back(Action::Disconnect);
        self.events.push_back(Event::Failed {
            attempt: self.status.attempts,
            reason: reason.clone(),
            retry_in,
        });
        self.status.last_error = Some(reason);
        self.status.next_attempt_at = Some(until);
        self.set_phase(Phase::Waiting { until });
    }

    fn deadline(&self, now: Millis) -> Millis {
        now + self.settings.response_timeout
    }

    fn set_phase(&mut self, phase: Phase) {
        self.status.state = match &phase {
            Phase::Waiting { .. } => State::Waiting,
            Phase::Connecting { .. } => State::Connecting,
            Phase::Subscribing { .. } => State::Subscribing,
            Phase::AwaitingCertificate { .. } => State::AwaitingCertificate,
            Phase::AwaitingRegistration { .. } => State::AwaitingRegistration,
            Phase::Storing => State::Storing,
            Phase::Done => State::Done,
        };
        self.phase = phase;
    }
}

/// A rejection, as the operator reads it: the cloud's words, then what to fix.
fn rejection(what: &str, payload: &[u8], template: &str, purpose: Purpose) -> String {
    let Ok(r) = serde_json::from_slice::<Rejection>(payload) else {
        return format!(
            "the {what} was rejected with an unreadable answer ({} bytes)",
            payload.len()
        );
    };
    let code = r.status_code.map_or_else(|| "?".into(), |c| c.to_string());
    let error_code = r.error_code.as_deref().unwrap_or("no error code");
    let message: String = r
        .error_message
        .as_deref()
        .unwrap_or("no message")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    let hint = match (r.status_code, what) {
        (Some(401 | 403), _) => format!(
            "the {} may not do this: check its policy (it must allow the provisioning topics \
             and template `{template}`) and that it is active",
            purpose.credential()
        ),
        (Some(404), _) => format!(
            "no template `{template}`: check uplink.mqtt.provisioning.template and that the \
             template exists and is enabled"
        ),
        (Some(400), "certificate signing request") => {
            "the CSR was refused: the certificate authority may not accept its key type or \
             subject"
                .into()
        }
        (Some(400), _) => format!(
            "the template `{template}` refused its parameters: check \
             uplink.mqtt.provisioning.serial_number and the template's parameters (and its \
             pre-provisioning hook, if any)"
        ),
        (Some(429 | 500..=599), _) => "the cloud is busy or failing; retrying".into(),
        _ => "see the cloud's message".into(),
    };
    format!("the {what} was rejected ({code} {error_code}: {message}): {hint}")
}

/// What the gateway shows of a certificate (`outpost identity show`), and what provisioning
/// checks of an issued one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    pub serial: String,
    pub not_before_unix_s: i64,
    pub not_after_unix_s: i64,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub sha256_fingerprint: String,
    /// The subjectPublicKey bits.
    pub public_key: Vec<u8>,
}

impl CertificateInfo {
    /// The first certificate in `pem`.
    ///
    /// # Errors
    /// Why it is not a PEM X.509 certificate.
    pub fn from_pem(pem: &str) -> Result<CertificateInfo, String> {
        use sha2::Digest as _;
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!("PEM holds a {}, not a CERTIFICATE", pem.label));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name,
            serial: cert.raw_serial_as_string(),
            not_before_unix_s: cert.validity().not_before.timestamp(),
            not_after_unix_s: cert.validity().not_after.timestamp(),
            sha256_fingerprint: crate::hex::encode(&sha2::Sha256::digest(&pem.contents)),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// When a certificate expiring at `not_after_unix_s` is to be renewed: `window` before, but
/// never before half its life has passed (a short-lived certificate is not renewed at once and
/// forever).
#[must_use]
pub fn renewal_due_at(not_before_unix_s: i64, not_after_unix_s: i64, window: Duration) -> i64 {
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let half_life = not_before_unix_s + (not_after_unix_s - not_before_unix_s) / 2;
    not_after_unix_s.saturating_sub(window).max(half_life)
}

#[cfg(test)]
mod tests;
