//! Workers: each owns one database connection and takes batches from the shared queue, checks
//! and stores them, and answers with what became of each. A database that is away is waited for
//! (the batch is kept, not acknowledged); an error the batch itself causes dead-letters it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use outpost_batch::{Dictionaries, Dictionary};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::core::check::{self, Rejection};
use crate::core::partition::Window;
use crate::db::{self, Partitions, Store, Stored};
use crate::metrics::Counters;

/// A batch to store, from the gateway whose topic (or pull API) it came from.
#[derive(Debug)]
pub struct Job {
    pub gateway: String,
    pub bytes: Bytes,
    pub reply: oneshot::Sender<Outcome>,
}

/// What became of a batch; only `Stored` and `Duplicate` may lead to an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In the database (now or before); every batch of the gateway up to `acked_upto` is.
    Stored { acked_upto: u64 },
    /// Kept in the dead-letter table; the gateway is not acknowledged.
    DeadLettered,
    /// The worker stopped before the batch was stored (the process is stopping).
    Abandoned,
}

/// What the workers share.
#[derive(Debug)]
pub struct Shared {
    pub database: db::Connector,
    pub replica: String,
    pub window: Window,
    pub counters: Arc<Counters>,
    pub partitions: Arc<Partitions>,
    pub dictionaries: RwLock<Arc<Dictionaries>>,
    pub dictionary_dir: Option<PathBuf>,
}

impl Shared {
    /// Reads the dictionary folder again (after a batch named one it did not hold).
    fn reload_dictionaries(&self) {
        let Some(dir) = &self.dictionary_dir else {
            return;
        };
        match load_dictionaries(dir) {
            Ok(all) => *self.dictionaries.write().expect("poisoned") = Arc::new(all),
            Err(e) => tracing::warn!(message = "Dictionaries could not be read.", error = %e),
        }
    }
}

/// Every dictionary file in `dir` (any name; each file holds one dictionary).
pub fn load_dictionaries(dir: &std::path::Path) -> anyhow::Result<Dictionaries> {
    let mut all = Dictionaries::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        match Dictionary::from_bytes(std::fs::read(&path)?) {
            Ok(d) => {
                if let Err(e) = all.insert(d) {
                    tracing::warn!(message = "Dictionary ignored.", path = %path.display(), error = %e);
                }
            }
            Err(e) => {
                tracing::warn!(message = "Not a dictionary; ignored.", path = %path.display(), error = %e);
            }
        }
    }
    Ok(all)
}

/// Runs one worker until the queue closes.
pub async fn run(shared: Arc<Shared>, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut store: Option<Store> = None;
    loop {
        let job = queue.lock().await.recv().await;
        let Some(job) = job else {
            return;
        };
        let outcome = handle(&shared, &mut store, &job).await;
        let _ = job.reply.send(outcome);
    }
}

async fn handle(shared: &Shared, store: &mut Option<Store>, job: &Job) -> Outcome {
    let checked = match checked(shared, job).await {
        Ok(checked) => Some(checked),
        Err(rejection) => {
            tracing::error!(
                message = "Batch dead-lettered: it failed its checks and will not be acknowledged.",
                gateway = %job.gateway,
                reason = %rejection
            );
            shared.counters.dead_letter(rejection.label());
            return dead_letter(shared, store, job, &rejection).await;
        }
    };
    let checked = checked.expect("checked above");
    let mut wait = Duration::from_millis(200);
    loop {
        let Some(s) = connected(shared, store).await else {
            return Outcome::Abandoned;
        };
        let started = Instant::now();
        match s.store(&checked, job.bytes.len()).await {
            Ok(Stored::New {
                acked_upto,
                readings,
            }) => {
                let c = &shared.counters;
                c.batches_stored.fetch_add(1, Ordering::Relaxed);
                c.readings_stored.fetch_add(readings, Ordering::Relaxed);
                c.store_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                return Outcome::Stored { acked_upto };
            }
            Ok(Stored::Duplicate { acked_upto }) => {
                shared
                    .counters
                    .batches_duplicate
                    .fetch_add(1, Ordering::Relaxed);
                return Outcome::Stored { acked_upto };
            }
            Err(e) if db::is_transient(&e) => {
                shared.counters.database_error();
                tracing::warn!(
                    message = "Database error; the batch is kept and tried again.",
                    gateway = %job.gateway,
                    seq = checked.header.seq,
                    error = %db::describe(&e)
                );
                if s.is_closed() {
                    *store = None;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                shared.counters.database_error();
                tracing::error!(
                    message = "The database refused the batch; dead-lettered.",
                    gateway = %job.gateway,
                    seq = checked.header.seq,
                    error = %db::describe(&e)
                );
                let rejection = Rejection::DatabaseRefused(db::describe(&e));
                shared.counters.dead_letter(rejection.label());
                return dead_letter(shared, store, job, &rejection).await;
            }
        }
    }
}

/// The batch checked off the runtime's threads (a large batch decodes for milliseconds).
async fn checked(shared: &Shared, job: &Job) -> Result<check::Checked, Rejection> {
    let run = |dictionaries: Arc<Dictionaries>| {
        let gateway = job.gateway.clone();
        let bytes = job.bytes.clone();
        tokio::task::spawn_blocking(move || check::check(&gateway, &bytes, &dictionaries))
    };
    let dictionaries = shared.dictionaries.read().expect("poisoned").clone();
    let result = run(dictionaries).await.expect("the check does not panic");
    match result {
        Err(Rejection::Undecodable(outpost_batch::DecodeError::UnknownDictionary { .. }))
            if shared.dictionary_dir.is_some() =>
        {
            shared.reload_dictionaries();
            let dictionaries = shared.dictionaries.read().expect("poisoned").clone();
            run(dictionaries).await.expect("the check does not panic")
        }
        other => other,
    }
}

async fn dead_letter(
    shared: &Shared,
    store: &mut Option<Store>,
    job: &Job,
    rejection: &Rejection,
) -> Outcome {
    let mut wait = Duration::from_millis(200);
    loop {
        let Some(s) = connected(shared, store).await else {
            return Outcome::Abandoned;
        };
        match s.dead_letter(&job.gateway, &job.bytes, rejection).await {
            Ok(()) => return Outcome::DeadLettered,
            Err(e) => {
                shared.counters.database_error();
                tracing::warn!(message = "Dead letter not written yet.", error = %db::describe(&e));
                if s.is_closed() {
                    *store = None;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The worker's connection, made (again) when needed; waits while the database is away.
async fn connected<'a>(shared: &Shared, store: &'a mut Option<Store>) -> Option<&'a mut Store> {
    let mut wait = Duration::from_millis(200);
    while store.as_ref().is_none_or(Store::is_closed) {
        match shared.database.connect().await {
            Ok(client) => {
                *store = Some(Store::new(
                    client,
                    &shared.replica,
                    shared.window,
                    shared.partitions.clone(),
                ));
            }
            Err(e) => {
                shared.counters.database_error();
                tracing::warn!(message = "Database unreachable; waiting.", error = %db::describe(&e));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
    store.as_mut()
}
