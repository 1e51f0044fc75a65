//! The cloud's side end to end: `outpost-ingest` replicas on a real Mosquitto (TLS, client
//! certificates, ACL, MQTT 5 shared subscription) and a private PostgreSQL cluster, fed by real
//! gateways with simulated nodes.
//!
//! - Four gateways, two replicas in one group: every reading of every node lands in PostgreSQL
//!   exactly once, through a replica killed with SIGKILL mid-stream and restarted, and a broker
//!   restart; both replicas took a share; every gateway's outbox drains (acknowledged after
//!   commit); the batches the broker carried decode the same in Python as in Rust.
//! - A corrupted batch, and one naming another gateway, go to the dead-letter table, are counted
//!   on /metrics (which promtool accepts) and never acknowledged; the gateway's acknowledgement
//!   stops before the gap until the real batch comes.
//! - Pull mode: the ingest polls a gateway's API, stores everything, and the outbox drains.
//! - TLS to the database: with `[database.tls]` every connection of a replica is TLS and logs in
//!   by the replica's own certificate; a server its CA did not sign is refused, by name.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use outpost_batch::{BatchBuilder, GatewayId, Value};
use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::cloud::{ACL, Ingest, mqtt_sources};
use outpost_e2e::postgres::{Postgres, TLS_CLIENT_ROLE};
use outpost_e2e::{CloudReading, NodeSpec, Site, promtool_check, wait_for};
use rumqttc::QoS;

/// The `[uplink]` config of a gateway whose certificate is for `identity`.
fn gateway_uplink(broker: &Broker, pki: &Pki, identity: &str) -> Result<String> {
    let files = pki.client(identity)?;
    Ok(format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\nresend_after = \"10s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    ))
}

/// Waits until the gateway has sealed every reading and the cloud acknowledged every batch.
fn wait_for_drained(site: &Site, timeout: Duration) -> Result<()> {
    wait_for(
        timeout,
        &format!("gateway {}'s outbox to drain", site.gateway_id),
        || {
            let status = site.get("/api/v1/status").ok()?;
            let outbox = &status["outbox"];
            (outbox["batches"] == 0 && outbox["unsealed_readings"] == 0).then_some(())
        },
    )
}

/// Every reading of `gateway` in PostgreSQL, as the cloud decodes it ([`CloudReading`]), sorted.
fn stored_readings(pg: &Postgres, gateway: &str) -> Result<Vec<CloudReading>> {
    let text = pg.psql(
        "outpost",
        &format!(
            "SELECT source, channel, (extract(epoch FROM ts) * 1000)::bigint, raw, exp, value \
             FROM readings_named WHERE gateway = '{gateway}'"
        ),
    )?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 6, "psql row {line:?}");
        let value = if f[3].is_empty() {
            format!("{:x}", f[5].parse::<f64>()?.to_bits())
        } else {
            format!("{}e{}", f[3], f[4])
        };
        out.push((f[0].to_owned(), f[1].to_owned(), f[2].parse()?, value));
    }
    out.sort();
    Ok(out)
}

/// Every node's `seq` values in PostgreSQL, by (gateway, node uid), in time order.
fn stored_seqs(pg: &Postgres) -> Result<BTreeMap<(String, String), Vec<i64>>> {
    let text = pg.psql(
        "outpost",
        "SELECT gateway, source, coalesce(raw, value::bigint) FROM readings_named \
         WHERE channel = 'seq' ORDER BY gateway, source, ts",
    )?;
    let mut out: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('|');
        let (Some(g), Some(s), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        out.entry((g.into(), s.into()))
            .or_default()
            .push(v.parse()?);
    }
    Ok(out)
}

/// Every reading of `site`'s store is in PostgreSQL once, and nothing else of its nodes is.
fn assert_site_stored_exactly_once(site: &Site, pg: &Postgres) -> Result<usize> {
    let in_db = stored_seqs(pg)?;
    let mut total = 0;
    for (uid, mut at_gateway) in site.stored_seqs()? {
        let mut in_pg = in_db
            .get(&(site.gateway_id.clone(), uid.clone()))
            .cloned()
            .unwrap_or_default();
        at_gateway.sort_unstable();
        in_pg.sort_unstable();
        ensure!(
            !at_gateway.is_empty() && in_pg == at_gateway,
            "gateway {}, node {uid}: the gateway stored {} samples (seq {:?}..{:?}), PostgreSQL has {} ({:?}..{:?})",
            site.gateway_id,
            at_gateway.len(),
            at_gateway.first(),
            at_gateway.last(),
            in_pg.len(),
            in_pg.first(),
            in_pg.last()
        );
        let expected: Vec<i64> = (1..=in_pg.len() as i64).collect();
        ensure!(in_pg == expected, "node {uid}: seq not 1..={}", in_pg.len());
        total += in_pg.len();
    }
    // Every reading of every channel, not only seq: PostgreSQL holds exactly what the gateway
    // sealed (a multiset: two samples may share a time when a node's readings arrive late).
    let sealed = outpost_e2e::sealed_readings(&site.store_path())?;
    let in_pg = stored_readings(pg, &site.gateway_id)?;
    ensure!(
        in_pg == sealed,
        "gateway {}: PostgreSQL holds {} readings, the gateway sealed {}; first difference: {:?}",
        site.gateway_id,
        in_pg.len(),
        sealed.len(),
        in_pg.iter().zip(&sealed).find(|(p, s)| p != s)
    );
    // Every batch of the gateway stored once, 1..=n, and acknowledged up to n.
    let row = pg.psql(
        "outpost",
        &format!(
            "SELECT count(*), min(b.seq), max(b.seq), max(g.acked_upto) FROM batches b \
             JOIN gateways g ON g.id = b.gateway_id WHERE g.name = '{}'",
            site.gateway_id
        ),
    )?;
    let f: Vec<i64> = row.split('|').map(|v| v.parse().unwrap_or(-1)).collect();
    ensure!(
        f[0] == f[2] && f[1] == 1 && f[3] == f[2],
        "gateway {}: batches (count, min, max, acked) = {f:?}",
        site.gateway_id
    );
    Ok(total)
}

#[test]
fn four_gateways_two_replicas_every_reading_once_through_a_replica_kill_and_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let mut broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let pg = Postgres::start(&["fsync=off"]).unwrap();
    // The test's tap: every batch the broker carries, for the Python decoder's check.
    let tap = Cloud::connect(&broker, &pki).unwrap();
    let sources = mqtt_sources(&broker, &pki).unwrap();
    let mut a = Ingest::new(dir.path(), "ingest-a", &pg, &sources).unwrap();
    let mut b = Ingest::new(dir.path(), "ingest-b", &pg, &sources).unwrap();
    a.start().unwrap();
    b.start().unwrap();

    let mut sites = Vec::new();
    for g in 0..4 {
        let id = format!("gw-{g}");
        let specs = (0..2)
            .map(|n| NodeSpec {
                rate_hz: 20.0,
                ..NodeSpec::new(g * 2 + n)
            })
            .collect();
        let uplink = gateway_uplink(&broker, &pki, &id).unwrap();
        let mut site = Site::with_gateway_id(specs, &id, &uplink).unwrap();
        site.start_gateway().unwrap();
        sites.push(site);
    }
    let batches_of = |pg: &Postgres| -> i64 {
        pg.psql("outpost", "SELECT count(*) FROM batches")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    wait_for(
        Duration::from_secs(60),
        "batches of all four gateways in PostgreSQL",
        || {
            let n: i64 = pg
                .psql("outpost", "SELECT count(DISTINCT gateway_id) FROM batches")
                .ok()?
                .parse()
                .ok()?;
            (n == 4).then_some(())
        },
    )
    .with_context(|| a.log_text())
    .unwrap();

    // A replica killed mid-stream, restarted after a few seconds.
    std::thread::sleep(Duration::from_secs(4));
    a.kill_hard();
    let at_kill = batches_of(&pg);
    std::thread::sleep(Duration::from_secs(4));
    a.start().unwrap();
    wait_for(Duration::from_secs(60), "batches after the kill", || {
        (batches_of(&pg) > at_kill + 20).then_some(())
    })
    .unwrap();

    // The broker restarted (its persistence keeps every session).
    broker.restart().unwrap();
    let at_restart = batches_of(&pg);
    wait_for(
        Duration::from_secs(90),
        "batches after the broker's restart",
        || (batches_of(&pg) > at_restart + 20).then_some(()),
    )
    .with_context(|| format!("{}\n{}", a.log_text(), b.log_text()))
    .unwrap();

    // The nodes stop; every gateway's outbox must drain: all stored, all acknowledged.
    for site in &mut sites {
        for node in &mut site.nodes {
            drop(node.take());
        }
    }
    for site in &sites {
        wait_for_drained(site, Duration::from_secs(120))
            .with_context(|| format!("{}\n{}", a.log_text(), b.log_text()))
            .unwrap();
    }
    let mut total = 0;
    for site in &sites {
        total += assert_site_stored_exactly_once(site, &pg).unwrap();
    }
    assert!(total > 4 * 2 * 200, "only {total} samples");
    // Both replicas took a share of the batches.
    for replica in ["ingest-a", "ingest-b"] {
        let n: i64 = pg
            .psql(
                "outpost",
                &format!("SELECT count(*) FROM batches WHERE replica = '{replica}'"),
            )
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0, "{replica} stored no batch");
    }
    let text = b.metrics().unwrap();
    promtool_check(&text).unwrap();
    assert!(
        b.counter("outpost_ingest_gateway_pending_batches{gateway=\"gw-0\"}")
            .unwrap()
            == 0.0,
        "{text}"
    );

    // The Python package decodes the batches the broker carried as the Rust decoder does.
    let mut carried: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    for m in tap.messages() {
        if m.topic.ends_with("/batch") {
            let seq = outpost_batch::read_header(&m.payload).unwrap().seq;
            carried.entry((m.topic.clone(), seq)).or_insert(m.payload);
        }
    }
    let batches: Vec<Vec<u8>> = carried.into_values().collect();
    assert!(batches.len() > 40, "{} batches tapped", batches.len());
    outpost_e2e::python::assert_python_decodes_like_rust(&batches).unwrap();
}

/// A valid batch of gateway `gateway` with three readings.
fn batch(gateway: &str, seq: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(GatewayId::new(gateway).unwrap(), seq);
    let ts = 1_796_169_600_000 + seq as i64 * 1000;
    b.push(
        "node-1",
        "temperature",
        ts,
        Value::decimal(2150 + seq as i64, -2),
    )
    .unwrap();
    b.push("node-1", "seq", ts, Value::integer(seq as i64))
        .unwrap();
    b.push("node-1", "pressure", ts, Value::float(1013.25))
        .unwrap();
    b.seal(None).unwrap()
}

#[test]
fn a_corrupted_batch_is_dead_lettered_counted_and_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let pg = Postgres::start(&["fsync=off"]).unwrap();
    let sources = mqtt_sources(&broker, &pki).unwrap();
    let mut ingest = Ingest::new(dir.path(), "ingest-a", &pg, &sources).unwrap();
    ingest.start().unwrap();
    // The "cloud" identity may publish on any gateway's topics: it plays gateway gw-x here.
    let gw = Cloud::connect(&broker, &pki).unwrap();
    gw.subscribe("outpost/gw-x/ack").unwrap();
    let acks = |gw: &Cloud| -> Vec<u64> {
        gw.messages()
            .iter()
            .filter(|m| m.topic == "outpost/gw-x/ack")
            .map(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["upto"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let publish = |bytes: Vec<u8>| {
        gw.publish("outpost/gw-x/batch", bytes, QoS::AtLeastOnce, false)
            .unwrap();
    };
    let count = |sql: &str| -> i64 { pg.psql("outpost", sql).unwrap().parse().unwrap() };

    publish(batch("gw-x", 1));
    wait_for(Duration::from_secs(20), "the ack of batch 1", || {
        acks(&gw).contains(&1).then_some(())
    })
    .with_context(|| ingest.log_text())
    .unwrap();

    // Batch 2 corrupted on the way (one bit), then a batch that names another gateway.
    let good_2 = batch("gw-x", 2);
    let mut bad_2 = good_2.clone();
    let at = bad_2.len() - 10;
    bad_2[at] ^= 0x04;
    publish(bad_2.clone());
    publish(batch("gw-y", 9));
    publish(batch("gw-x", 3));
    wait_for(
        Duration::from_secs(20),
        "two dead letters and batch 3 stored",
        || {
            (count("SELECT count(*) FROM dead_letters") == 2
                && count("SELECT count(*) FROM batches") == 2)
                .then_some(())
        },
    )
    .with_context(|| ingest.log_text())
    .unwrap();
    let reasons = pg
        .psql(
            "outpost",
            "SELECT gateway, coalesce(seq, -1), reason FROM dead_letters ORDER BY id",
        )
        .unwrap();
    assert!(reasons.contains("gw-x|2|checksum mismatch"), "{reasons}");
    assert!(reasons.contains("names gateway \"gw-y\""), "{reasons}");
    // The same corrupted bytes again: counted on the same row.
    publish(bad_2.clone());
    wait_for(Duration::from_secs(20), "the second copy counted", || {
        (count("SELECT sum(times_seen) FROM dead_letters") == 3).then_some(())
    })
    .unwrap();
    // Batch 3 is stored, but the acknowledgement stays before the gap.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        acks(&gw).into_iter().max(),
        Some(1),
        "acknowledged past a dead letter"
    );
    assert_eq!(
        count("SELECT acked_upto FROM gateways WHERE name = 'gw-x'"),
        1
    );

    let text = ingest.metrics().unwrap();
    promtool_check(&text).unwrap();
    assert!(text.contains("reason=\"undecodable\"} 2"), "{text}");
    assert!(text.contains("reason=\"wrong_gateway\"} 1"), "{text}");
    assert!(text.contains("outpost_ingest_dead_letters 2"), "{text}");
    assert!(
        text.contains("outpost_ingest_gateway_pending_batches{gateway=\"gw-x\"} 2"),
        "{text}"
    );

    // The real batch 2 arrives (the gateway's resend): the gap closes, 3 is acknowledged.
    publish(good_2);
    wait_for(Duration::from_secs(20), "the ack of batch 3", || {
        acks(&gw).contains(&3).then_some(())
    })
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM readings"), 9);
}

#[test]
fn pull_mode_stores_every_reading_and_drains_the_gateway() {
    const TOKEN: &str = "e2e-ingest-pull-token-0123456789";
    let pg = Postgres::start(&["fsync=off"]).unwrap();
    let specs = (0..2)
        .map(|n| NodeSpec {
            rate_hz: 50.0,
            samples: Some(300),
            ..NodeSpec::new(n)
        })
        .collect();
    let mut site = Site::with_config(
        specs,
        &format!("[uplink]\nbatch_interval = \"1s\"\n\n[uplink.pull]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    site.start_gateway().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        "[pull]\ninterval = \"1s\"\n\n[[pull.gateway]]\nid = \"e2e-site\"\nurl = \"http://{}\"\ntoken = \"{TOKEN}\"\n",
        site.api
    );
    let mut ingest = Ingest::new(dir.path(), "ingest-pull", &pg, &sources).unwrap();
    ingest.start().unwrap();
    site.wait_for_samples(300, Duration::from_secs(60)).unwrap();
    wait_for_drained(&site, Duration::from_secs(60))
        .with_context(|| ingest.log_text())
        .unwrap();
    assert_eq!(assert_site_stored_exactly_once(&site, &pg).unwrap(), 600);
}

#[test]
fn the_shipped_alert_rules_load_and_fire_as_their_unit_tests_say() {
    let config = outpost_e2e::workspace_dir().join("config/cloud");
    for args in [
        ["check", "rules", "ingest-alerts.yml"],
        ["test", "rules", "ingest-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&config)
            .output()
            .expect("promtool (Debian package prometheus, installed by scripts/test.sh)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_config_error_names_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.toml");
    std::fs::write(
        &path,
        "replica = \"r\"\n\n[database]\nurl = \"host=127.0.0.1\"\nconections = 4\n",
    )
    .unwrap();
    let out = std::process::Command::new(outpost_e2e::bin("outpost-ingest"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:5: unknown field `conections`", path.display())),
        "{err}"
    );
}

#[test]
fn a_replica_stopped_with_sigterm_leaves_the_group_and_the_other_takes_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let pg = Postgres::start(&["fsync=off"]).unwrap();
    let sources = mqtt_sources(&broker, &pki).unwrap();
    let mut a = Ingest::new(dir.path(), "ingest-a", &pg, &sources).unwrap();
    let mut b = Ingest::new(dir.path(), "ingest-b", &pg, &sources).unwrap();
    a.start().unwrap();
    b.start().unwrap();
    // Scaled down: b is stopped as an orchestrator stops it, and never comes back. Its session
    // stays on the broker (session expiry 1 h); had it stayed in the group, the broker would
    // queue half the batches there.
    b.stop().unwrap();
    let gw = Cloud::connect(&broker, &pki).unwrap();
    gw.subscribe("outpost/gw-x/ack").unwrap();
    for seq in 1..=20 {
        gw.publish(
            "outpost/gw-x/batch",
            batch("gw-x", seq),
            QoS::AtLeastOnce,
            false,
        )
        .unwrap();
    }
    wait_for(
        Duration::from_secs(30),
        "all 20 batches stored by ingest-a",
        || {
            let n: i64 = pg
                .psql(
                    "outpost",
                    "SELECT count(*) FROM batches WHERE replica = 'ingest-a'",
                )
                .ok()?
                .parse()
                .ok()?;
            (n == 20).then_some(())
        },
    )
    .with_context(|| format!("{}\n{}", a.log_text(), b.log_text()))
    .unwrap();
    wait_for(Duration::from_secs(20), "the ack of batch 20", || {
        gw.messages()
            .iter()
            .any(|m| m.topic == "outpost/gw-x/ack" && m.payload == br#"{"upto":20}"#)
            .then_some(())
    })
    .unwrap();
}

#[test]
fn the_database_link_is_tls_with_the_replicas_own_certificate_and_an_untrusted_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    // TCP clients of this cluster: TLS only, logged in by a certificate whose CN is the role.
    let pg = Postgres::start_with_tls(&["fsync=off"], &pki).unwrap();
    let identity = pki.client(TLS_CLIENT_ROLE).unwrap();
    let database_tls = |ca: &std::path::Path| {
        format!(
            "\n[database.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            identity.cert.display(),
            identity.key.display()
        )
    };
    let mqtt = mqtt_sources(&broker, &pki).unwrap();
    let mut ingest = Ingest::new(
        dir.path(),
        "ingest-tls",
        &pg,
        &(mqtt.clone() + &database_tls(&pki.ca_path())),
    )
    .unwrap();
    ingest.start().unwrap();

    let gw = Cloud::connect(&broker, &pki).unwrap();
    gw.subscribe("outpost/gw-t/ack").unwrap();
    gw.publish(
        "outpost/gw-t/batch",
        batch("gw-t", 1),
        QoS::AtLeastOnce,
        false,
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "the ack of batch 1", || {
        gw.messages()
            .iter()
            .any(|m| {
                m.topic == "outpost/gw-t/ack"
                    && serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["upto"] == 1
            })
            .then_some(())
    })
    .with_context(|| ingest.log_text())
    .unwrap();
    assert_eq!(
        pg.psql("outpost", "SELECT count(*) FROM readings").unwrap(),
        "3"
    );
    // Every connection the replica holds is TLS, with its certificate.
    let links = pg
        .psql(
            "outpost",
            &format!(
                "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.usename = '{TLS_CLIENT_ROLE}'"
            ),
        )
        .unwrap();
    assert!(!links.is_empty(), "no connection of the replica seen");
    for link in links.lines() {
        assert_eq!(link, format!("t|/CN={TLS_CLIENT_ROLE}"), "{links}");
    }
    ingest.stop().unwrap();

    // The same replica trusting another CA: the server is refused, and the error says why.
    let other = Pki::new(&dir.path().join("other-ca")).unwrap();
    let mut impostor_trust = Ingest::new(
        dir.path(),
        "ingest-other-ca",
        &pg,
        &(mqtt.clone() + &database_tls(&other.ca_path())),
    )
    .unwrap();
    let migrate = |ingest: &Ingest| {
        std::process::Command::new(outpost_e2e::bin("outpost-ingest"))
            .arg("migrate")
            .arg("--config")
            .arg(&ingest.config)
            .output()
            .unwrap()
    };
    let out = migrate(&impostor_trust);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        // (Both test CAs have the same name: rustls finds the issuer by name, and its signature
        // does not verify.)
        err.contains("cannot connect to the database") && err.contains("invalid peer certificate"),
        "{err}"
    );
    // And without [database.tls] at all, this server turns the plain connection away.
    impostor_trust = Ingest::new(dir.path(), "ingest-plain", &pg, &mqtt).unwrap();
    let out = migrate(&impostor_trust);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no encryption"), "{err}");
}
