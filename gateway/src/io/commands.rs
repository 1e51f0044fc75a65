//! Remote commands: the adapter around `outpost_core::command`.
//!
//! The uplink hands over what arrives on `outpost/{id}/cmd/{verb}` ([`Incoming`]); this task
//! checks it with the core (signature, addressee, verb, validity), claims its nonce in the store's
//! audit log (a nonce claimed before is a replay), carries the verb out, records how it ended and
//! gives the uplink the result to publish on `outpost/{id}/cmd/result/{request}`. Every command
//! that arrives is audited and logged, obeyed or not. Commands run one at a time, in arrival
//! order.
//!
//! Answers to commands that did not verify are rate-limited (`RefusalAnswers`): publishing on the
//! command topic must not let anyone without an operator key make the gateway talk at will.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_core::command::{self, Expect, Outcome, Refusal, RefusalAnswers, Verb, Verified};
use outpost_core::config::CommandsConfig;
use outpost_core::link::EnrollmentPolicy;
use tokio::sync::{mpsc, oneshot};

use crate::io::store::StoreError;
use crate::io::store::writer::{AuditOp, StoreCommand};
use crate::io::wall_clock::{self, WallClock};

/// A message on the command topic, as the uplink received it.
#[derive(Debug)]
pub struct Incoming {
    /// The topic's last level.
    pub verb: String,
    pub payload: Vec<u8>,
}

/// Commands waiting for the task; more are dropped by the uplink (and the sender may retry: a
/// dropped command was never claimed).
pub const INCOMING_QUEUE: usize = 16;

/// What the command task needs from the daemon.
#[derive(Debug, Clone)]
pub struct Desk {
    pub gateway_id: String,
    pub config: CommandsConfig,
    pub store_tx: mpsc::Sender<StoreCommand>,
    pub clock: WallClock,
    pub enrollment_policy: EnrollmentPolicy,
    /// Node firmware rollouts (`rollout-start`, `rollout-halt`).
    pub ota: crate::io::ota::OtaHandle,
    /// The node firmware library (`firmware-add`).
    pub firmware: crate::io::api::FirmwareLibrary,
    /// The diagnostics and remediation verbs' tools.
    pub remedy: crate::io::remedy::Remedy,
}

/// The command topic's verb that carries a firmware bundle (the image's manifest, then its
/// bytes) instead of an operator-signed command: the bundle is signed by the fleet's firmware
/// key, and that signature alone decides whether the library takes it.
pub const FIRMWARE_VERB: &str = "firmware-add";

/// The two ends the uplink holds.
#[derive(Debug)]
pub struct CommandLink {
    pub incoming: mpsc::Sender<Incoming>,
    /// Commands the uplink dropped because [`INCOMING_QUEUE`] were waiting: the task audits
    /// their number (a flood must not hide from the log by its size).
    pub dropped: Arc<AtomicU64>,
    /// Results to publish: `(request, payload)`.
    pub results: mpsc::Receiver<(String, Vec<u8>)>,
}

/// Starts the command task; the uplink gets the [`CommandLink`]. The task ends when the uplink
/// drops its end.
pub fn spawn(desk: Desk) -> (CommandLink, tokio::task::JoinHandle<()>) {
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let (results_tx, results_rx) = mpsc::channel(INCOMING_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run(desk, incoming_rx, results_tx, Arc::clone(&dropped)));
    (
        CommandLink {
            incoming: incoming_tx,
            dropped,
            results: results_rx,
        },
        task,
    )
}

async fn run(
    desk: Desk,
    mut incoming: mpsc::Receiver<Incoming>,
    results: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
) {
    let started = std::time::Instant::now();
    let mono_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match audit(
        &desk.store_tx,
        AuditOp::InterruptRunning {
            now_ms: wall_clock::unix_ms(),
        },
    )
    .await
    {
        Ok(_) => {}
        Err(error) => tracing::warn!(message = "Cannot update the command audit log.", %error),
    }
    let mut answers = RefusalAnswers::new(mono_ms());
    while let Some(message) = incoming.recv().await {
        audit_dropped(&desk, &dropped).await;
        if message.verb == FIRMWARE_VERB {
            let answer = take_firmware(&desk, message.payload).await;
            if results.send(answer).await.is_err() {
                break; // the uplink stopped
            }
            continue;
        }
        let verb = printable(&message.verb);
        let received_ms = wall_clock::unix_ms();
        let now = desk.clock.now();
        let expect = Expect {
            gateway: &desk.gateway_id,
            topic_verb: &message.verb,
            keys: &desk.config.operator_keys,
            now: now.trusted().then_some(now.wall_ms.div_euclid(1000)),
            policy: desk.config.policy,
        };
        let answer = match command::check(&message.payload, &expect) {
            Err(refusal) => {
                let request = command::claimed_request(&message.payload);
                refuse(
                    &desk,
                    received_ms,
                    &verb,
                    request.as_deref(),
                    None,
                    &refusal,
                )
                .await;
                request.filter(|_| answers.allow(mono_ms())).map(|request| {
                    let payload = command::result_payload(
                        &request,
                        &verb,
                        &Outcome::Refused(refusal),
                        received_ms,
                    );
                    (request, payload)
                })
            }
            Ok(verified) => {
                let (answer, then) = obey(&desk, received_ms, verified, &results).await;
                if results.send(answer).await.is_err() {
                    break; // the uplink stopped
                }
                if then == Then::Restart {
                    desk.remedy.restart_after_answer(&results).await;
                }
                continue;
            }
        };
        if let Some(answer) = answer
            && results.send(answer).await.is_err()
        {
            break; // the uplink stopped
        }
    }
}

/// Audits the commands the uplink dropped since the last look, as one entry.
async fn audit_dropped(desk: &Desk, dropped: &AtomicU64) {
    let count = dropped.swap(0, Ordering::Relaxed);
    if count == 0 {
        return;
    }
    let detail = format!(
        "{count} commands dropped unread: more arrived at once than the gateway queues ({INCOMING_QUEUE})"
    );
    tracing::warn!(message = "Remote commands dropped unread.", count);
    let op = AuditOp::Dropped {
        received_ms: wall_clock::unix_ms(),
        detail,
    };
    if let Err(error) = audit(&desk.store_tx, op).await {
        tracing::warn!(message = "Cannot record dropped commands in the audit log.", %error);
    }
}

/// What the task does once a command's result is handed to the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Continue,
    /// `gateway-restart` succeeded: stop the daemon once the result is on its way.
    Restart,
}

/// Claims a verified command, runs it and records how it ended: its result message, and what
/// to do once it is handed over. A verb that publishes more than its result (a bundle's parts)
/// sends it on `results` first.
async fn obey(
    desk: &Desk,
    received_ms: i64,
    verified: Verified,
    results: &mpsc::Sender<(String, Vec<u8>)>,
) -> ((String, Vec<u8>), Then) {
    let request = verified.command.request.clone();
    let verb = verified.command.verb.name();
    let key = verified.key.to_string();
    let claim = AuditOp::Claim {
        received_ms,
        verified: Box::new(verified.clone()),
    };
    let outcome = match audit(&desk.store_tx, claim).await {
        Ok(None) => {
            refuse(
                desk,
                received_ms,
                verb,
                Some(&request),
                Some(&key),
                &Refusal::Replayed,
            )
            .await;
            Outcome::Refused(Refusal::Replayed)
        }
        Err(error) => Outcome::Failed(format!(
            "cannot record the command in the audit log, so it was not run: {error}"
        )),
        Ok(Some(id)) => {
            tracing::info!(
                message = "Running a remote command.",
                verb,
                request,
                key,
                expires = verified.command.expires
            );
            let outcome = carry_out(desk, &request, &verified.command.verb, results).await;
            let finish = AuditOp::Finish {
                id,
                outcome: outcome.as_str(),
                detail: outcome.detail(),
                now_ms: wall_clock::unix_ms(),
            };
            if let Err(error) = audit(&desk.store_tx, finish).await {
                tracing::warn!(message = "Cannot record a command's outcome in the audit log.", request, %error);
            }
            outcome
        }
    };
    match &outcome {
        Outcome::Done(_) => tracing::info!(message = "Remote command done.", verb, request, key),
        Outcome::Refused(why) => {
            tracing::warn!(message = "Remote command refused.", verb, request, key, reason = %why);
        }
        Outcome::Failed(why) => {
            tracing::warn!(message = "Remote command failed.", verb, request, key, reason = %why);
        }
    }
    let then = match (&verified.command.verb, &outcome) {
        (Verb::GatewayRestart, Outcome::Done(_)) => Then::Restart,
        _ => Then::Continue,
    };
    let payload = command::result_payload(&request, verb, &outcome, wall_clock::unix_ms());
    ((request, payload), then)
}

/// A firmware bundle from the cloud into the library, checked as an upload from the local API is;
/// its result goes to `cmd/result/firmware-{the first 16 hex digits of the bundle's SHA-256}`.
async fn take_firmware(desk: &Desk, bundle: Vec<u8>) -> (String, Vec<u8>) {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&bundle);
    let request = format!("firmware-{}", outpost_core::hex::encode(&digest[..8]));
    let library = desk.firmware.clone();
    let added = tokio::task::spawn_blocking(move || {
        if bundle.len() > crate::io::api::ota::MAX_BUNDLE_BYTES {
            return Err(format!(
                "too-large: {} bytes, more than a manifest and a slot-sized image",
                bundle.len()
            ));
        }
        let expect = outpost_core::firmware::Expect {
            keys: &library.keys,
            hw_rev: None,
            floor: None,
            now_unix_ms: wall_clock::unix_ms(),
        };
        crate::io::firmware::add_bundle(&library.dir, &bundle, &expect, library.cap)
            .map_err(|e| format!("{}: {e}", e.kind()))
    })
    .await;
    let outcome = match added {
        Ok(Ok(f)) => {
            tracing::info!(message = "Firmware image added to the library from the cloud.", file = %f.file, version = %f.version, hw_rev = f.hw_rev);
            Outcome::Done(serde_json::json!({
                "file": f.file,
                "version": f.version.to_string(),
                "hw_rev": f.hw_rev,
                "size": f.size,
                "sha256": outpost_core::hex::encode(&f.sha256),
            }))
        }
        Ok(Err(why)) => {
            tracing::warn!(message = "Firmware image from the cloud refused.", request, reason = %why);
            Outcome::Failed(why)
        }
        Err(_) => Outcome::Failed("the check stopped".into()),
    };
    let payload = command::result_payload(&request, FIRMWARE_VERB, &outcome, wall_clock::unix_ms());
    (request, payload)
}

/// Does what a verified, claimed command asks.
async fn carry_out(
    desk: &Desk,
    request: &str,
    verb: &Verb,
    results: &mpsc::Sender<(String, Vec<u8>)>,
) -> Outcome {
    let rollout =
        |result: Result<outpost_core::rollout::RolloutStatus, crate::io::ota::Refused>| {
            match result {
                Ok(status) => Outcome::Done(serde_json::json!({
                    "rollout": status.id,
                    "state": status.state,
                    "stage": status.stage,
                    "version": status.version,
                    "halt_reason": status.halt_reason,
                })),
                // The same names the local API answers with (`below-floor`, `busy`, …).
                Err(refused) => Outcome::Failed(format!("{}: {}", refused.kind, refused.error)),
            }
        };
    match verb {
        Verb::EnrollWindow { minutes } => {
            match set_enrollment_window(&desk.store_tx, desk.enrollment_policy, *minutes).await {
                Ok(until_ms) => Outcome::Done(serde_json::json!({ "window_until_ms": until_ms })),
                Err(why) => Outcome::Failed(why.to_string()),
            }
        }
        Verb::RolloutStart(plan) => {
            let spec = crate::io::ota::StartSpec {
                artifact: plan.artifact.clone(),
                canary: plan.canary.map(|n| n as usize),
                waves: plan.waves.clone(),
                soak: plan.soak.clone(),
                confirm_within: plan.confirm_within.clone(),
                node: plan.node.clone(),
            };
            rollout(
                desk.ota
                    .start(spec, format!("remote command {request}"))
                    .await,
            )
        }
        Verb::RolloutHalt { rollback } => rollout(desk.ota.halt(*rollback).await),
        Verb::Diagnostics(args) => desk.remedy.diagnostics(request, *args, results).await,
        Verb::NodeReboot(reboot) => desk.remedy.node_reboot(reboot).await,
        Verb::NodeHealth { node } => desk.remedy.node_health(node).await,
        Verb::GatewayRestart => desk.remedy.gateway_restart(),
        Verb::ModbusRead(target) => desk.remedy.modbus_read(target),
        Verb::ModbusWrite(write) => desk.remedy.modbus_write(write).await,
    }
}

/// Why an enrollment window was not set.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("the enrollment policy is `{0}`: a window only matters under `window`")]
    NotWindowPolicy(&'static str),
    #[error("{0}")]
    Store(Arc<StoreError>),
    #[error("the store is shutting down")]
    StoreGone,
}

/// Opens the enrollment window for `minutes` from now (0 closes it): when it ends, Unix ms (0
/// when closed). The technician's page and the remote command both come here.
pub async fn set_enrollment_window(
    store_tx: &mpsc::Sender<StoreCommand>,
    policy: EnrollmentPolicy,
    minutes: u32,
) -> Result<i64, WindowError> {
    if policy != EnrollmentPolicy::Window {
        return Err(WindowError::NotWindowPolicy(policy.as_str()));
    }
    let until_ms = if minutes == 0 {
        0
    } else {
        wall_clock::unix_ms().saturating_add(i64::from(minutes) * 60_000)
    };
    let (reply, answer) = oneshot::channel();
    store_tx
        .send(StoreCommand::EnrollmentWindow { until_ms, reply })
        .await
        .map_err(|_| WindowError::StoreGone)?;
    match answer.await {
        Ok(Ok(())) => Ok(until_ms),
        Ok(Err(error)) => Err(WindowError::Store(error)),
        Err(_) => Err(WindowError::StoreGone),
    }
}

/// Logs and audits a command that is not obeyed.
async fn refuse(
    desk: &Desk,
    received_ms: i64,
    verb: &str,
    request: Option<&str>,
    key: Option<&str>,
    refusal: &Refusal,
) {
    tracing::warn!(
        message = "Remote command refused.",
        verb,
        request = request.unwrap_or(""),
        reason = refusal.as_str(),
        detail = %refusal
    );
    let op = AuditOp::Refused {
        received_ms,
        verb: verb.to_owned(),
        request: request.map(str::to_owned),
        key_id: key.map(str::to_owned),
        detail: format!("{}: {refusal}", refusal.as_str()),
    };
    if let Err(error) = audit(&desk.store_tx, op).await {
        tracing::warn!(message = "Cannot record a refused command in the audit log.", %error);
    }
}

async fn audit(store_tx: &mpsc::Sender<StoreCommand>, op: AuditOp) -> Result<Option<i64>, String> {
    let (reply, answer) = oneshot::channel();
    let gone = || "the store is shutting down".to_owned();
    store_tx
        .send(StoreCommand::Audit { op, reply })
        .await
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?.map_err(|e| e.to_string())
}

/// A topic level as the log may show it: printable ASCII, at most 32 characters.
fn printable(verb: &str) -> String {
    let clean: String = verb
        .chars()
        .take(32)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if clean.is_empty() { "?".into() } else { clean }
}
