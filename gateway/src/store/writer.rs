//! The writer task: the one owner of the store's write connection.
//!
//! Port tasks send [`StoreCommand`]s; the writer collects what arrives within `commit_interval`
//! of the first (or up to `max_commit_readings`), applies it in one transaction on a blocking
//! thread, and only then answers. One fsync covers every node's samples of that window.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::{Health, Hello};
use tokio::sync::mpsc;

use super::{Enrolment, Ingested, Registered, Sample, Store, StoreError};

/// Work for the store.
#[derive(Debug)]
pub enum StoreCommand {
    Register {
        port: String,
        hello: Hello,
        public_key: [u8; 32],
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    Ingest {
        node_id: i64,
        boot_id: u32,
        samples: Vec<Sample>,
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    Health {
        node_id: i64,
        health: Health,
        now_ms: i64,
    },
    LinkErrors {
        node_id: i64,
        count: u32,
    },
}

/// The store's answer to a port task.
#[derive(Debug)]
pub enum StoreReply {
    /// `Ok(None)`: the node's key differs from the pinned one; it is refused.
    Registered {
        hello: Hello,
        result: Result<Option<Registered>, Arc<StoreError>>,
    },
    Committed {
        node_id: i64,
        boot_id: u32,
        result: Result<Ingested, Arc<StoreError>>,
    },
}

/// The store's condition, for the status page.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StoreCondition {
    pub commits: u64,
    pub failed_commits: u64,
    /// The last failure, cleared by the next successful commit.
    pub error: Option<String>,
}

/// Runs until every sender is dropped.
pub async fn run(
    store: Store,
    mut commands: mpsc::Receiver<StoreCommand>,
    commit_interval: Duration,
    max_commit_readings: usize,
    condition: Arc<Mutex<StoreCondition>>,
) -> Store {
    let mut store = store;
    while let Some(first) = commands.recv().await {
        let mut batch = vec![first];
        let mut readings = readings_in(&batch[0]);
        let window = tokio::time::sleep(commit_interval);
        tokio::pin!(window);
        while readings < max_commit_readings {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        readings += readings_in(&command);
                        batch.push(command);
                    }
                    None => break,
                },
                () = &mut window => break,
            }
        }
        let (returned, replies, result) = tokio::task::spawn_blocking(move || {
            let mut replies = Vec::new();
            let result = apply(&mut store, &batch, &mut replies);
            (store, (batch, replies), result)
        })
        .await
        .expect("store writer thread panicked");
        store = returned;
        let (batch, outcomes) = replies;
        answer(batch, outcomes, result, &condition);
    }
    store
}

fn readings_in(command: &StoreCommand) -> usize {
    match command {
        StoreCommand::Ingest { samples, .. } => samples.iter().map(|s| s.readings.len()).sum(),
        _ => 1,
    }
}

/// What one command produced inside the transaction.
#[derive(Debug)]
enum Outcome {
    Registered(Option<Registered>),
    Ingested(Ingested),
    None,
}

fn apply(
    store: &mut Store,
    batch: &[StoreCommand],
    outcomes: &mut Vec<Outcome>,
) -> Result<(), StoreError> {
    store.transaction(|tx| {
        outcomes.clear();
        for command in batch {
            let outcome = match command {
                StoreCommand::Register {
                    port,
                    hello,
                    public_key,
                    now_ms,
                    ..
                } => {
                    let registered = tx.register(*now_ms, port, hello)?;
                    match tx.enroll(registered.node_id, public_key)? {
                        Enrolment::KeyMismatch => Outcome::Registered(None),
                        Enrolment::Pinned | Enrolment::Known => {
                            Outcome::Registered(Some(registered))
                        }
                    }
                }
                StoreCommand::Ingest {
                    node_id,
                    boot_id,
                    samples,
                    now_ms,
                    ..
                } => Outcome::Ingested(tx.ingest(*node_id, *boot_id, samples, *now_ms)?),
                StoreCommand::Health {
                    node_id,
                    health,
                    now_ms,
                } => {
                    tx.health(*node_id, *now_ms, health)?;
                    Outcome::None
                }
                StoreCommand::LinkErrors { node_id, count } => {
                    tx.link_errors(*node_id, *count)?;
                    Outcome::None
                }
            };
            outcomes.push(outcome);
        }
        Ok(())
    })
}

fn answer(
    batch: Vec<StoreCommand>,
    outcomes: Vec<Outcome>,
    result: Result<(), StoreError>,
    condition: &Mutex<StoreCondition>,
) {
    let failure = result.err().map(Arc::new);
    {
        let mut c = condition
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &failure {
            None => {
                c.commits += 1;
                if c.error.take().is_some() {
                    tracing::info!(message = "Store writable again.");
                }
            }
            Some(error) => {
                c.failed_commits += 1;
                if c.error.as_deref() != Some(&error.to_string()) {
                    tracing::error!(message = "Store commit failed; nothing acknowledged, nodes keep their samples.", %error);
                }
                c.error = Some(error.to_string());
            }
        }
    }
    let mut outcomes = outcomes.into_iter();
    for command in batch {
        let outcome = outcomes.next();
        // A dropped receiver means the port task ended; nothing to tell it.
        match command {
            StoreCommand::Register { hello, reply, .. } => {
                let result = match (&failure, outcome) {
                    (Some(e), _) => Err(Arc::clone(e)),
                    (None, Some(Outcome::Registered(r))) => Ok(r),
                    (None, _) => unreachable!("every command has an outcome after a commit"),
                };
                let _ = reply.send(StoreReply::Registered { hello, result });
            }
            StoreCommand::Ingest {
                node_id,
                boot_id,
                reply,
                ..
            } => {
                let result = match (&failure, outcome) {
                    (Some(e), _) => Err(Arc::clone(e)),
                    (None, Some(Outcome::Ingested(i))) => Ok(i),
                    (None, _) => unreachable!("every command has an outcome after a commit"),
                };
                let _ = reply.send(StoreReply::Committed {
                    node_id,
                    boot_id,
                    result,
                });
            }
            StoreCommand::Health { .. } | StoreCommand::LinkErrors { .. } => {}
        }
    }
}
