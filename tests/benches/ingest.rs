//! The cloud ingest's throughput: readings per second into PostgreSQL through Mosquitto for one
//! `outpost-ingest` replica and for two sharing a subscription, and a naive insert-per-reading
//! client against the same server in the same run; CPU seconds per million readings of the
//! ingest and of PostgreSQL.
//!
//! ```text
//! cargo bench -p outpost-e2e --bench ingest [-- --readings 2000000 --naive 40000]
//! ```
//!
//! The batches are sealed up front like a fleet's: 20 gateways, each batch 10 nodes × 5 channels
//! × 100 one-second samples (5,000 readings; decimals with a random walk, as the simulator's),
//! published by one client at QoS 1 as fast as the broker takes them. The clock runs from the
//! first publish to the moment every batch's row is in PostgreSQL (polled every 100 ms). The
//! server runs with its defaults (fsync and synchronous commit on), its own cluster on loopback.
//! The naive client is `psql` sending one `INSERT` per reading, each its own transaction, into a
//! table with the same index: what a first ingest written by hand does.

use std::time::{Duration, Instant};

use outpost_batch::{BatchBuilder, GatewayId, Value};
use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::cloud::{ACL, Ingest, mqtt_sources};
use outpost_e2e::postgres::Postgres;
use outpost_e2e::{cpu_seconds, wait_for};
use rumqttc::QoS;

const GATEWAYS: usize = 20;
const NODES: usize = 10;
const CHANNELS: [&str; 5] = ["temperature", "humidity", "pressure", "vbat", "seq"];
const SAMPLES: usize = 100;
const PER_BATCH: usize = NODES * CHANNELS.len() * SAMPLES;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (topic, bytes) of every batch, gateways interleaved as a fleet's arrive.
fn fleet_batches(readings: usize) -> Vec<(String, Vec<u8>)> {
    let per_gateway = readings.div_ceil(PER_BATCH * GATEWAYS);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start_ms = 1_796_169_600_000i64;
    let mut out = Vec::new();
    let mut walk = vec![2150i64; GATEWAYS * NODES * CHANNELS.len()];
    for seq in 1..=per_gateway as u64 {
        for g in 0..GATEWAYS {
            let id = format!("gw-{g:02}");
            let mut b = BatchBuilder::new(GatewayId::new(&id).unwrap(), seq);
            for n in 0..NODES {
                for s in 0..SAMPLES {
                    let ts = start_ms + ((seq - 1) as i64 * SAMPLES as i64 + s as i64) * 1000;
                    for (c, channel) in CHANNELS.iter().enumerate() {
                        let value = if *channel == "seq" {
                            Value::integer(((seq - 1) as usize * SAMPLES + s + 1) as i64)
                        } else {
                            let w = &mut walk[(g * NODES + n) * CHANNELS.len() + c];
                            *w += (next() % 7) as i64 - 3;
                            Value::decimal(*w, -2)
                        };
                        b.push(&format!("node-{n:02}"), channel, ts, value).unwrap();
                    }
                }
            }
            out.push((format!("outpost/{id}/batch"), b.seal(None).unwrap()));
        }
    }
    out
}

fn count(pg: &Postgres, sql: &str) -> i64 {
    pg.psql("outpost", sql).unwrap().parse().unwrap()
}

/// Replicas in one group take every batch; returns (seconds, ingest CPU s, PostgreSQL CPU s).
fn run_replicas(
    replicas: usize,
    batches: &[(String, Vec<u8>)],
    pg: &Postgres,
    broker: &Broker,
    pki: &Pki,
    dir: &std::path::Path,
) -> (f64, f64, f64) {
    pg.psql("postgres", "DROP DATABASE IF EXISTS outpost WITH (FORCE)")
        .unwrap();
    pg.psql("postgres", "CREATE DATABASE outpost").unwrap();
    let sources = mqtt_sources(broker, pki).unwrap() + "receive_maximum = 64\n";
    let sources = sources.replace("receive_maximum = 16\n", "");
    let mut ingests: Vec<Ingest> = (0..replicas)
        .map(|r| Ingest::new(dir, &format!("bench-{replicas}-{r}"), pg, &sources).unwrap())
        .collect();
    for ingest in &mut ingests {
        ingest.start().unwrap();
        wait_for(
            Duration::from_secs(20),
            "the replica's subscription",
            || {
                (ingest
                    .counter("outpost_ingest_broker_connections_total")
                    .ok()?
                    >= 1.0)
                    .then_some(())
            },
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(1)); // the SUBACKs
    let publisher = Cloud::connect(broker, pki).unwrap();
    let cpu = |ingests: &[Ingest]| -> f64 {
        ingests
            .iter()
            .filter_map(Ingest::pid)
            .map(cpu_seconds)
            .sum()
    };
    let (ingest_cpu0, pg_cpu0) = (cpu(&ingests), pg.cpu_seconds());
    let started = Instant::now();
    for (topic, bytes) in batches {
        publisher
            .publish(topic, bytes.clone(), QoS::AtLeastOnce, false)
            .unwrap();
    }
    let total = batches.len() as i64;
    wait_for(
        Duration::from_secs(1800),
        "every batch in PostgreSQL",
        || (count(pg, "SELECT count(*) FROM batches") == total).then_some(()),
    )
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let rows = count(pg, "SELECT count(*) FROM readings");
    let disk = count(
        pg,
        "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits \
         WHERE inhparent = 'readings'::regclass",
    );
    println!(
        "  {rows} rows, {disk} bytes on disk with the index: {:.1} bytes per reading",
        disk as f64 / rows as f64
    );
    let figures = (
        seconds,
        cpu(&ingests) - ingest_cpu0,
        pg.cpu_seconds() - pg_cpu0,
    );
    let per_replica: Vec<i64> = ingests
        .iter()
        .map(|i| {
            count(
                pg,
                &format!("SELECT count(*) FROM batches WHERE replica = '{}'", i.name),
            )
        })
        .collect();
    println!("  batches per replica: {per_replica:?}");
    let _ = publisher.disconnect();
    // Stopped as an orchestrator stops them: they leave the group (a replica gone without
    // leaving keeps its share of the next run's batches in its session).
    for ingest in &mut ingests {
        ingest.stop().unwrap();
    }
    figures
}

fn main() {
    let readings = arg("--readings", 2_000_000);
    let naive = arg("--naive", 40_000);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let pg = Postgres::start(&[]).unwrap();
    let batches = fleet_batches(readings);
    let total_readings = batches.len() * PER_BATCH;
    let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
    println!(
        "{} batches of {PER_BATCH} readings ({total_readings} readings, {:.2} bytes per reading sealed)",
        batches.len(),
        bytes as f64 / total_readings as f64
    );
    for replicas in [1, 2] {
        let (s, ingest_cpu, pg_cpu) =
            run_replicas(replicas, &batches, &pg, &broker, &pki, dir.path());
        let millions = total_readings as f64 / 1e6;
        println!(
            "figure: {replicas} replica(s): {total_readings} readings in {s:.1} s = {:.0} readings/s; \
             CPU per million readings: ingest {:.2} s, PostgreSQL {:.2} s",
            total_readings as f64 / s,
            ingest_cpu / millions,
            pg_cpu / millions
        );
    }

    // The naive client: one INSERT per reading, each committed on its own.
    pg.psql(
        "outpost",
        "CREATE TABLE naive (gateway text, source text, channel text, ts timestamptz, value float8);
         CREATE INDEX ON naive (gateway, source, channel, ts);",
    )
    .unwrap();
    let mut sql = String::with_capacity(naive * 120);
    for i in 0..naive {
        sql += &format!(
            "INSERT INTO naive VALUES ('gw-00', 'node-{:02}', '{}', to_timestamp({}), {});\n",
            i % NODES,
            CHANNELS[i % CHANNELS.len()],
            1_796_169_600 + i / (NODES * CHANNELS.len()),
            21.5 + (i % 7) as f64 * 0.01
        );
    }
    let file = dir.path().join("naive.sql");
    std::fs::write(&file, sql).unwrap();
    let pg_cpu0 = pg.cpu_seconds();
    let started = Instant::now();
    let status = std::process::Command::new(outpost_e2e::postgres::bin_dir().unwrap().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "outpost",
            "-q",
            "-X",
            "-f",
        ])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let s = started.elapsed().as_secs_f64();
    assert_eq!(count(&pg, "SELECT count(*) FROM naive"), naive as i64);
    println!(
        "figure: naive insert-per-reading: {naive} readings in {s:.1} s = {:.0} readings/s; \
         CPU per million readings: PostgreSQL {:.2} s",
        naive as f64 / s,
        (pg.cpu_seconds() - pg_cpu0) / (naive as f64 / 1e6)
    );
}
