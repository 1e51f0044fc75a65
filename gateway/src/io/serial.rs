//! Serial adapter: moves bytes between one port and its [`PortSession`], and the session's
//! actions to the store writer. Reopens a port that went away (USB unplug) with backoff.

use std::time::{Duration, Instant};

use outpost_proto::Millis;
use outpost_proto::frame::{MAX_BULK_FRAME_LEN, MAX_FRAME_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use crate::io::node_requests::{PortRequest, PortRequests};
use crate::io::ota::{PortCommand, PortEnds, PortReport};
use crate::io::store::writer::{StoreCommand, StoreReply};
use crate::io::telemetry::TelemetryHub;
use crate::io::wall_clock::{self, WallClock};
use outpost_core::config::SerialPort;
use outpost_core::link::{Action, LinkSecrets, PortSession};
use outpost_core::ota::Pacer;
use outpost_core::telemetry::{AlertKey, AlertKind, Event};

/// Longest a write to a port may block before the frame is dropped (a wedged USB device).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often a quiet port still reports (so the `newcomers_refused` alert resolves in time).
const TICK: Duration = Duration::from_secs(5);

/// Runs one port until `shutdown`. `ota`: the rollout task's ends for this port; `requests`:
/// requests to the port's node (`io::node_requests`).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    index: usize,
    config: SerialPort,
    secrets: LinkSecrets,
    store: mpsc::Sender<StoreCommand>,
    clock: WallClock,
    telemetry: TelemetryHub,
    mut ota: Option<PortEnds>,
    shutdown: CancellationToken,
    mut requests: Option<PortRequests>,
) {
    let path = config.path.display().to_string();
    let started = Instant::now();
    let now = move || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut session = PortSession::with_limits(path.clone(), config.limits, secrets, now());
    let refusing_key = AlertKey {
        kind: AlertKind::NewcomersRefused,
        subject: Some(path.clone()),
    };
    let mut refusing = false;
    let mut tick = tokio::time::interval(TICK);
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    let mut backoff = FIRST_BACKOFF;
    // Requests handed to the session, by token, until it answers them.
    let mut waiting: HashMap<u64, PortRequest> = HashMap::new();
    let mut next_token: u64 = 0;

    loop {
        let opened = tokio_serial::new(&path, config.baud)
            .timeout(Duration::from_secs(1))
            .open_native_async();
        let mut port = match opened {
            Ok(port) => port,
            Err(error) => {
                let message = error.to_string();
                let first = telemetry.with(|t| {
                    t.port(index)
                        .is_none_or(|p| p.last_error.as_deref() != Some(&message))
                });
                if first {
                    tracing::warn!(message = "Cannot open serial port; retrying with backoff.", port = %path, %error);
                }
                telemetry.record(Event::PortDown {
                    index,
                    error: message,
                });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.reopen_backoff_max);
                continue;
            }
        };
        tracing::info!(message = "Serial port open.", port = %path, baud = config.baud);
        backoff = FIRST_BACKOFF;
        session.handle_port_reset();
        telemetry.record(Event::PortOpened { index });

        let mut buf = [0u8; 1024];
        let mut frame = [0u8; MAX_FRAME_LEN];
        let mut bulk = Box::new([0u8; MAX_BULK_FRAME_LEN]);
        let closed_by = loop {
            let timer = session
                .poll_timeout()
                .map(|at| Duration::from_millis(at.saturating_since(now())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                read = port.read(&mut buf) => match read {
                    Ok(0) => break "end of file".to_owned(),
                    // The session stamps samples on the monotonic axis (CLOCK_BOOTTIME);
                    // `command_for` turns them into wall time through the clock's judge.
                    Ok(n) => session.handle_bytes(now(), wall_clock::boottime_ms(), &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                    Err(e) => break e.to_string(),
                },
                Some(reply) = reply_rx.recv() => handle_reply(&mut session, reply, index, ota.as_ref(), requests.as_ref()),
                Some(command) = async { ota.as_mut().expect("guarded").commands.recv().await }, if ota.is_some() => {
                    handle_ota_command(&mut session, command, now(), config.baud);
                }
                Some(request) = async { requests.as_mut().expect("guarded").requests.recv().await }, if requests.is_some() => {
                    next_token += 1;
                    session.handle_request(now(), next_token, request.uid, request.request, request.timeout);
                    waiting.insert(next_token, request);
                }
                () = tokio::time::sleep(timer.unwrap_or(TICK)), if timer.is_some() => session.handle_timeout(now()),
                _ = tick.tick() => {}
            }
            // Carry out what the session asked for.
            while let Some(action) = session.poll_action() {
                let action = match action {
                    Action::Answer { token, result } => {
                        answer(&mut waiting, token, result);
                        continue;
                    }
                    action => action,
                };
                let Some(command) = command_for(action, &path, &reply_tx, &clock, ota.as_ref())
                else {
                    continue;
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    sent = store.send(command) => if sent.is_err() { return },
                }
            }
            let mut failed = None;
            // Control frames (ACK, NACK, OTA controls) first; then at most one bulk frame (an
            // OFFER or a chunk), as the transfer's pacer allows, so an ACK never waits behind
            // more than one chunk.
            while let Some(n) = session.poll_transmit(&mut frame) {
                if let Err(e) = write_frame(&mut port, &frame[..n], &path).await {
                    failed = Some(e);
                }
            }
            if failed.is_none()
                && let Some(n) = session.poll_bulk(now(), &mut bulk)
                && let Err(e) = write_frame(&mut port, &bulk[..n], &path).await
            {
                failed = Some(e);
            }
            // Transfer events from the frames just polled.
            while let Some(action) = session.poll_action() {
                if let Action::Answer { token, result } = action {
                    answer(&mut waiting, token, result);
                } else if let Some(command) =
                    command_for(action, &path, &reply_tx, &clock, ota.as_ref())
                {
                    let _ = store.try_send(command);
                }
            }
            telemetry.record(Event::PortCounted {
                index,
                counters: session.counters(),
                node_id: session.node_id(),
            });
            // The alert follows the session's view: raised while newcomers are refused.
            let now_refusing = session.refusing_newcomers(now());
            if now_refusing != refusing {
                refusing = now_refusing;
                let at_ms = crate::io::wall_clock::unix_ms();
                telemetry.record(if refusing {
                    Event::Raise {
                        at_ms,
                        key: refusing_key.clone(),
                        message: format!(
                            "{path}: enrolments of new node uids refused (newcomer budget or store.max_nodes spent); {} so far",
                            session.counters().newcomers_refused
                        ),
                    }
                } else {
                    Event::Resolve {
                        at_ms,
                        key: refusing_key.clone(),
                    }
                });
            }
            if let Some(error) = failed {
                break error;
            }
        };
        if let (Some(ota), Some(uid)) = (&ota, session.node_uid()) {
            let _ = ota.reports.send(PortReport::NodeDown { uid });
        }
        if let Some(requests) = &requests {
            requests.directory.port_closed(index);
        }
        // The session's node is gone with the port: its requests fail now, not at their timeout.
        session.handle_port_reset();
        while let Some(action) = session.poll_action() {
            if let Action::Answer { token, result } = action {
                answer(&mut waiting, token, result);
            }
        }
        tracing::warn!(message = "Serial port lost; reopening.", port = %path, reason = %closed_by);
        telemetry.record(Event::PortDown {
            index,
            error: closed_by,
        });
        drop(port);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(FIRST_BACKOFF) => {}
        }
    }
}

async fn write_frame(
    port: &mut tokio_serial::SerialStream,
    frame: &[u8],
    path: &str,
) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            tracing::warn!(message = "Serial write timed out; frame dropped.", port = %path);
            Ok(())
        }
    }
}

/// The rollout task's request for this port's transfer.
fn handle_ota_command(session: &mut PortSession, command: PortCommand, now: Millis, baud: u32) {
    let result = match command {
        PortCommand::Start {
            uid,
            image,
            chunk,
            share,
        } => {
            session.start_transfer(now, uid, image, chunk, Pacer::new(baud, share));
            Ok(())
        }
        PortCommand::Install {
            uid,
            confirm_within_s,
        } => session.with_transfer(uid, |t| t.install(confirm_within_s)),
        PortCommand::Abort { uid } => session.with_transfer(uid, |t| t.abort()),
        PortCommand::Finalize { uid } => session.with_transfer(uid, |t| t.finalize()),
    };
    if let Err(error) = result {
        tracing::debug!(message = "Firmware transfer request not taken.", port = %session.port(),
            error = error.map_or_else(|| "no transfer for the node".to_owned(), |e| e.to_string()));
    }
}

/// The store's work for an action; actions that are the rollout task's go there instead
/// (`None`).
fn command_for(
    action: Action,
    port: &str,
    reply: &mpsc::UnboundedSender<StoreReply>,
    clock: &WallClock,
    ota: Option<&PortEnds>,
) -> Option<StoreCommand> {
    let stamp = clock.now();
    let now_ms = stamp.wall_ms;
    let report = |r: PortReport| {
        if let Some(ota) = ota {
            let _ = ota.reports.send(r);
        }
    };
    Some(match action {
        Action::Register {
            hello,
            public_key,
            newcomer_allowed,
        } => StoreCommand::Register {
            port: port.to_owned(),
            hello,
            public_key,
            newcomer_allowed,
            now_ms,
            reply: reply.clone(),
        },
        Action::Ingest {
            node_id,
            boot_id,
            mut samples,
        } => StoreCommand::Ingest {
            node_id,
            boot_id,
            samples: {
                // From the monotonic axis to wall time: exact if the clock is trusted now, else
                // held with its monotonic time (basis) for the store to re-stamp.
                for sample in &mut samples {
                    sample.ts_ms = stamp.wall_at(sample.ts_ms);
                }
                samples
            },
            basis: stamp.basis,
            now_ms,
            reply: reply.clone(),
        },
        Action::Health {
            node_id,
            uid,
            boot_id,
            health,
        } => {
            report(PortReport::Health {
                uid,
                boot_id,
                reset_reason: health.reset_reason,
            });
            StoreCommand::Health {
                node_id,
                boot_id,
                health,
                now_ms,
            }
        }
        Action::LinkErrors { node_id, count } => StoreCommand::LinkErrors { node_id, count },
        Action::Anomalies {
            node_id,
            ages_clamped,
            gaps_refused,
            auth_failed,
            replayed,
        } => StoreCommand::Anomalies {
            node_id,
            ages_clamped,
            gaps_refused,
            auth_failed,
            replayed,
        },
        Action::ProofFailed { uid } => StoreCommand::ProofFailed { uid },
        Action::OtaStatus {
            uid,
            boot_id,
            status,
        } => {
            report(PortReport::Status {
                uid,
                boot_id,
                status,
            });
            return None;
        }
        Action::Transfer { uid, event } => {
            report(PortReport::Transfer { uid, event });
            return None;
        }
        // Answers go to their callers, never to the store (the loop takes them first).
        Action::Answer { .. } => return None,
    })
}

/// The session's outcome for request `token`, to its caller (who may have stopped waiting).
fn answer(
    waiting: &mut HashMap<u64, PortRequest>,
    token: u64,
    result: Result<
        outpost_core::node_request::NodeAnswer,
        outpost_core::node_request::NodeRequestError,
    >,
) {
    if let Some(request) = waiting.remove(&token) {
        let _ = request.reply.send(result);
    }
}

fn handle_reply(
    session: &mut PortSession,
    reply: StoreReply,
    index: usize,
    ota: Option<&PortEnds>,
    requests: Option<&PortRequests>,
) {
    match reply {
        StoreReply::Registered { hello, result } => match result {
            Ok(Ok(registered)) => {
                tracing::info!(message = "Node accepted.", port = %session.port(), uid = %outpost_core::hex::encode(&hello.uid),
                    fw = %hello.fw, boot_id = hello.boot_id, resumes_after = registered.ack_upto, newcomer = registered.newcomer);
                let previous = session.node_uid();
                session.handle_registered(&hello, Ok(registered));
                if let Some(requests) = requests
                    && session.node_uid() == Some(hello.uid)
                {
                    requests.directory.attached(index, hello.uid);
                }
                if let Some(ota) = ota {
                    if let Some(previous) = previous.filter(|p| *p != hello.uid) {
                        let _ = ota.reports.send(PortReport::NodeDown { uid: previous });
                    }
                    let _ = ota.reports.send(PortReport::NodeUp {
                        port: index,
                        uid: hello.uid,
                        boot_id: hello.boot_id,
                        fw: hello.fw,
                        hw_rev: hello.hw_rev,
                    });
                }
            }
            // Logged by the session, rate-limited: a flood of refusals must not flood the log.
            Ok(Err(refusal)) => session.handle_registered(&hello, Err(refusal)),
            Err(_) => session.handle_register_failed(),
        },
        StoreReply::Committed {
            node_id,
            boot_id,
            result,
        } => match result {
            Ok(ingested) if ingested.revoked => session.handle_revoked(node_id),
            Ok(ingested) => {
                if ingested.lost > 0 {
                    tracing::warn!(message = "Node reported lost samples (its buffer overflowed).",
                        port = %session.port(), node_id, lost = ingested.lost);
                }
                session.handle_committed(node_id, boot_id, ingested.upto, ingested.duplicates);
            }
            Err(_) => session.handle_commit_failed(node_id, boot_id),
        },
    }
}
