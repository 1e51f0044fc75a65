//! PostgreSQL: the schema's migrations, storing a checked batch exactly once, the shared
//! acknowledgement point, dead letters, partitions and retention.
//!
//! Storing a batch is one transaction: its `batches` row (a redelivered batch finds it there and
//! stops), its readings by binary `COPY`, then the gateway's row locked and its acknowledgement
//! point moved over every batch committed since. The lock is taken before the `batches` rows are
//! read, under READ COMMITTED, so whichever of two replicas committing neighbouring batches
//! comes second sees the first's row: the point never stops short for good.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config;

use crate::core::check::{Checked, Rejection, SeriesKey};
use crate::core::partition::{self, Window};
use crate::core::prefix;

/// The migrations, in order; each runs once, in a transaction, recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "schema", include_str!("../migrations/0001_schema.sql"))];

/// Advisory lock keys: one migrator at a time, one partition maker, one retention pass.
const MIGRATION_LOCK: i64 = 0x6f75_7470_0001;
const PARTITION_LOCK: i64 = 0x6f75_7470_0002;
const RETENTION_LOCK: i64 = 0x6f75_7470_0003;

/// How this replica reaches PostgreSQL: the connection settings and, with `[database.tls]`,
/// TLS that checks the server against the configured CA (and presents this replica's
/// certificate when it has one). Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("hosts", &self.config.get_hosts())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The connector of `[database]`; its files are read now, so a missing CA is an error at
    /// start, not at the first connection.
    pub fn new(database: &config::Database) -> anyhow::Result<Connector> {
        let config = database
            .postgres_config()
            .map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
        let tls = match &database.tls {
            Some(tls) => Some(MakeRustlsConnect::new(
                crate::tls::client_config(&tls.ca_file, tls.identity()).context("database.tls")?,
            )),
            None => None,
        };
        Ok(Connector { config, tls })
    }

    /// Connects and drives the connection on the runtime; its end is logged.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(drive(connection));
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(client)
    }

    /// [`Connector::connect`] for a command's first connection: a failure is the command's
    /// error, said in full (a TLS refusal names the certificate problem).
    pub async fn connect_at_start(&self) -> anyhow::Result<Client> {
        self.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database (database.url): {}",
                describe(&e)
            )
        })
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(message = "Database connection ended.", error = %e);
    }
}

/// Brings the schema up to date; safe to run from every replica at once.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: HashSet<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now; the gateway's acknowledgement point after the commit.
    New { acked_upto: u64, readings: u64 },
    /// Stored before (a redelivery or a resend): nothing written.
    Duplicate { acked_upto: u64 },
}

/// Partitions made (or found unmakeable) by any worker of this process.
#[derive(Debug, Default)]
pub struct Partitions {
    days: Mutex<HashSet<i64>>,
}

/// One worker's connection with its caches.
#[derive(Debug)]
pub struct Store {
    client: Client,
    replica: String,
    window: Window,
    partitions: Arc<Partitions>,
    gateways: HashMap<String, i32>,
    series: HashMap<(i32, SeriesKey), i32>,
}

impl Store {
    #[must_use]
    pub fn new(
        client: Client,
        replica: &str,
        window: Window,
        partitions: Arc<Partitions>,
    ) -> Store {
        Store {
            client,
            replica: replica.to_owned(),
            window,
            partitions,
            gateways: HashMap::new(),
            series: HashMap::new(),
        }
    }

    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Stores a checked batch exactly once; see the module's description.
    pub async fn store(
        &mut self,
        checked: &Checked,
        bytes: usize,
    ) -> Result<Stored, tokio_postgres::Error> {
        let header = &checked.header;
        let gateway = self.gateway_id(header.gateway_id.as_str()).await?;
        let series = self.series_ids(gateway, &checked.series).await?;
        self.ensure_partitions(header.first_ts_ms, header.last_ts_ms)
            .await?;
        let seq = header.seq as i64; // checked: 1..=i64::MAX
        let tx = self.client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO batches (gateway_id, seq, first_ts, last_ts, readings, bytes,
                     unsynchronised, dictionary_id, replica)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT DO NOTHING",
                &[
                    &gateway,
                    &seq,
                    &time_of(header.first_ts_ms),
                    &time_of(header.last_ts_ms),
                    &(header.reading_count as i32),
                    &(bytes as i32),
                    &header.unsynchronised,
                    &header.dictionary_id.map(|d| i64::from(d.get())),
                    &self.replica,
                ],
            )
            .await?;
        if inserted == 0 {
            drop(tx);
            return Ok(Stored::Duplicate {
                acked_upto: self.acked_upto(gateway).await?,
            });
        }
        let sink = tx
            .copy_in("COPY readings (series_id, ts, value, raw) FROM STDIN (FORMAT binary)")
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::INT4, Type::TIMESTAMPTZ, Type::FLOAT8, Type::INT8],
        );
        let mut writer = std::pin::pin!(writer);
        for row in &checked.rows {
            writer
                .as_mut()
                .write(&[
                    &series[row.series as usize],
                    &time_of(row.ts_ms),
                    &row.value,
                    &row.raw,
                ])
                .await?;
        }
        writer.finish().await?;
        // The gateway's row first, then the batches committed since: see the module's note.
        let acked: i64 = tx
            .query_one(
                "SELECT acked_upto FROM gateways WHERE id = $1 FOR UPDATE",
                &[&gateway],
            )
            .await?
            .get(0);
        let acked_upto = advance(&tx, gateway, acked as u64).await?;
        tx.execute(
            "UPDATE gateways SET acked_upto = $2, newest_seq = greatest(newest_seq, $3),
                 last_batch_at = now(),
                 newest_reading_at = greatest(newest_reading_at, $4)
             WHERE id = $1",
            &[
                &gateway,
                &(acked_upto as i64),
                &seq,
                &time_of(header.last_ts_ms),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Stored::New {
            acked_upto,
            readings: checked.rows.len() as u64,
        })
    }

    /// Keeps a rejected batch aside (once per distinct content; later copies are counted).
    pub async fn dead_letter(
        &mut self,
        gateway: &str,
        bytes: &[u8],
        rejection: &Rejection,
    ) -> Result<(), tokio_postgres::Error> {
        let digest = Sha256::digest(bytes).to_vec();
        let seq = crate::core::check::claimed_seq(bytes).and_then(|s| i64::try_from(s).ok());
        self.client
            .execute(
                "INSERT INTO dead_letters (digest, gateway, seq, reason, bytes, replica)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (digest) DO UPDATE
                 SET times_seen = dead_letters.times_seen + 1, last_seen = now()",
                &[
                    &digest,
                    &gateway,
                    &seq,
                    &rejection.to_string(),
                    &bytes,
                    &self.replica,
                ],
            )
            .await?;
        Ok(())
    }

    async fn acked_upto(&self, gateway: i32) -> Result<u64, tokio_postgres::Error> {
        let acked: i64 = self
            .client
            .query_one("SELECT acked_upto FROM gateways WHERE id = $1", &[&gateway])
            .await?
            .get(0);
        Ok(acked as u64)
    }

    async fn gateway_id(&mut self, name: &str) -> Result<i32, tokio_postgres::Error> {
        if let Some(id) = self.gateways.get(name) {
            return Ok(*id);
        }
        let id = gateway_row(&self.client, name).await?;
        self.gateways.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The ids of a batch's series, made where new. Outside the batch's transaction: a series
    /// row is harmless if its batch then fails, and the cache never holds a rolled-back id.
    async fn series_ids(
        &mut self,
        gateway: i32,
        keys: &[SeriesKey],
    ) -> Result<Vec<i32>, tokio_postgres::Error> {
        let mut ids = Vec::with_capacity(keys.len());
        for key in keys {
            let cache_key = (gateway, key.clone());
            if let Some(id) = self.series.get(&cache_key) {
                ids.push(*id);
                continue;
            }
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &gateway,
                &key.source,
                &key.channel,
                &key.kind.name(),
                &key.kind.exp(),
            ];
            let row = match self
                .client
                .query_opt(
                    "INSERT INTO series (gateway_id, source, channel, kind, exp)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
                    &params,
                )
                .await?
            {
                Some(row) => row,
                None => {
                    self.client
                        .query_one(
                            "SELECT id FROM series WHERE gateway_id = $1 AND source = $2
                             AND channel = $3 AND kind = $4 AND exp = $5",
                            &params,
                        )
                        .await?
                }
            };
            let id: i32 = row.get(0);
            self.series.insert(cache_key, id);
            ids.push(id);
        }
        Ok(ids)
    }

    /// Makes the daily partitions a batch needs, once per day per process. A day whose rows
    /// already sit in the default partition (it was outside the window when they came) cannot
    /// get its own: its rows keep going to the default one, which is logged once.
    async fn ensure_partitions(
        &mut self,
        first_ts_ms: i64,
        last_ts_ms: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let days = self.window.days_for(first_ts_ms, last_ts_ms, now_ms());
        for day in days {
            if self
                .partitions
                .days
                .lock()
                .expect("poisoned")
                .contains(&day)
            {
                continue;
            }
            let (Some(name), Some(from), Some(to)) = (
                partition::partition_name(day),
                partition::iso_date(day),
                partition::iso_date(day + 1),
            ) else {
                continue;
            };
            let tx = self.client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
                .await?;
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await?
                .get(0);
            if !exists {
                let made = tx
                    .batch_execute(&format!(
                        "CREATE TABLE {name} PARTITION OF readings
                         FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
                    ))
                    .await;
                if let Err(e) = made {
                    if e.code().is_none() {
                        return Err(e); // the connection, not the statement
                    }
                    tracing::warn!(
                        message = "A day's partition could not be made; its readings go to the default partition.",
                        partition = %name,
                        error = %e
                    );
                    drop(tx);
                    self.partitions.days.lock().expect("poisoned").insert(day);
                    continue;
                }
                tracing::info!(message = "Partition made.", partition = %name);
            }
            tx.commit().await?;
            self.partitions.days.lock().expect("poisoned").insert(day);
        }
        Ok(())
    }
}

/// The gateway's row id, made on its first batch.
async fn gateway_row(client: &Client, name: &str) -> Result<i32, tokio_postgres::Error> {
    if let Some(row) = client
        .query_opt(
            "INSERT INTO gateways (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&name],
        )
        .await?
    {
        return Ok(row.get(0));
    }
    Ok(client
        .query_one("SELECT id FROM gateways WHERE name = $1", &[&name])
        .await?
        .get(0))
}

/// Moves a gateway's acknowledgement point over the batches committed after `acked`.
async fn advance(
    tx: &tokio_postgres::Transaction<'_>,
    gateway: i32,
    acked: u64,
) -> Result<u64, tokio_postgres::Error> {
    let mut upto = acked;
    loop {
        let rows = tx
            .query(
                "SELECT seq FROM batches WHERE gateway_id = $1 AND seq > $2 ORDER BY seq LIMIT 1024",
                &[&gateway, &(upto as i64)],
            )
            .await?;
        let seqs: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let next = prefix::advance(upto, seqs.iter().copied());
        if next == upto || seqs.len() < 1024 || next != *seqs.last().unwrap_or(&0) {
            return Ok(next);
        }
        upto = next;
    }
}

/// Declares a gateway's batches up to `upto` lost, so its acknowledgement may pass them (a
/// gateway that dropped batches from a full buffer, or one first seen mid-sequence). Returns the
/// new acknowledgement point.
pub async fn skip(
    client: &mut Client,
    gateway: &str,
    upto: u64,
    reason: &str,
) -> Result<u64, tokio_postgres::Error> {
    let id = gateway_row(client, gateway).await?;
    let tx = client.transaction().await?;
    let acked: i64 = tx
        .query_one(
            "SELECT acked_upto FROM gateways WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .get(0);
    let acked = acked as u64;
    if upto > acked {
        tx.execute(
            "INSERT INTO skipped (gateway_id, from_seq, upto_seq, reason) VALUES ($1, $2, $3, $4)",
            &[&id, &(acked as i64 + 1), &(upto as i64), &reason],
        )
        .await?;
    }
    let new = advance(&tx, id, acked.max(upto)).await?;
    tx.execute(
        "UPDATE gateways SET acked_upto = $2 WHERE id = $1",
        &[&id, &(new as i64)],
    )
    .await?;
    tx.commit().await?;
    Ok(new)
}

/// Drops the daily partitions past retention and deletes the default partition's expired rows.
/// One replica at a time (the others skip); returns the partitions dropped.
pub async fn enforce_retention(
    client: &Client,
    window: Window,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let Some(cutoff) = window.cutoff_ms(now_ms()) else {
        return Ok(Vec::new());
    };
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(Vec::new());
    }
    let result = async {
        let names: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'readings'::regclass",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = Vec::new();
        for name in names {
            let Some(day) = partition::day_of_partition(&name) else {
                continue;
            };
            if window.is_expired(day, now_ms()) {
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
                dropped.push(name);
            }
        }
        client
            .execute(
                "DELETE FROM readings_default WHERE ts < $1",
                &[&time_of(cutoff)],
            )
            .await?;
        Ok(dropped)
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
        .await?;
    result
}

/// One gateway's figures for `/metrics`.
#[derive(Debug, Clone)]
pub struct GatewayFigures {
    pub name: String,
    pub acked_upto: u64,
    pub newest_seq: u64,
    /// Seconds since its newest stored reading was taken.
    pub reading_age_s: Option<f64>,
}

/// Every gateway's figures and the dead-letter count.
pub async fn figures(client: &Client) -> Result<(Vec<GatewayFigures>, u64), tokio_postgres::Error> {
    let gateways = client
        .query(
            "SELECT name, acked_upto, newest_seq,
                    extract(epoch FROM now() - newest_reading_at)::float8
             FROM gateways ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| GatewayFigures {
            name: r.get(0),
            acked_upto: r.get::<_, i64>(1) as u64,
            newest_seq: r.get::<_, i64>(2) as u64,
            reading_age_s: r.get(3),
        })
        .collect();
    let dead: i64 = client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get(0);
    Ok((gateways, dead as u64))
}

/// An error as an operator needs it: the server's SQLSTATE, message and detail, or the IO cause.
#[must_use]
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text += &format!(": {detail}");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Whether an error is worth retrying the batch for (the connection, resources, a deadlock, an
/// operator's shutdown), as opposed to one the batch itself causes.
#[must_use]
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        return true; // IO, a closed connection
    };
    matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58")
}

fn time_of(ts_ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ts_ms.unsigned_abs());
    if ts_ms >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
