//! End-to-end: the cloud pulls sealed batches over HTTP from a running gateway, decodes them with
//! `outpost-batch`, and acknowledges them.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use outpost_e2e::{NodeSpec, Site, assert_contiguous, bin, http, wait_for};

const TOKEN: &str = "e2e-pull-token-0123456789";

fn pull_config(extra: &str) -> String {
    format!("[uplink]\nbatch_interval = \"1s\"\n{extra}\n[uplink.pull]\ntoken = \"{TOKEN}\"\n")
}

fn index(site: &Site, after: u64) -> serde_json::Value {
    let (status, body) = http(
        site.api,
        "GET",
        &format!("/api/v1/batches?after={after}"),
        Some(TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn fetch(site: &Site, seq: u64) -> Vec<u8> {
    let (status, body) = http(
        site.api,
        "GET",
        &format!("/api/v1/batches/{seq}"),
        Some(TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(
        status,
        200,
        "batch {seq}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

fn ack(site: &Site, upto: u64) -> (u16, serde_json::Value) {
    let (status, body) = http(
        site.api,
        "POST",
        "/api/v1/batches/ack",
        Some(TOKEN),
        Some(&format!("{{\"upto\": {upto}}}")),
    )
    .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[test]
fn the_cloud_pulls_every_reading_in_order_and_acknowledges_it() {
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            samples: Some(300),
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &pull_config("")).unwrap();
    site.start_gateway().unwrap();

    // The cloud's side: readings by source, in batch order.
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut readings = 0usize;
    let mut acked = 0u64;
    let mut batch_seqs = Vec::new();
    wait_for(Duration::from_secs(90), "every reading pulled", || {
        for info in index(&site, acked)["batches"].as_array().unwrap().clone() {
            let seq = info["seq"].as_u64().unwrap();
            let bytes = fetch(&site, seq);
            assert_eq!(bytes.len() as u64, info["size_bytes"].as_u64().unwrap());
            let batch =
                outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::default()).unwrap();
            assert_eq!(batch.header().seq, seq);
            assert_eq!(batch.header().gateway_id.as_str(), "e2e-site");
            assert_eq!(
                batch.readings().count() as u64,
                info["reading_count"].as_u64().unwrap()
            );
            readings += batch.readings().count();
            for r in batch.readings().filter(|r| r.channel == "seq") {
                seqs.entry(r.source.to_owned())
                    .or_default()
                    .push(r.value.as_f64() as i64);
            }
            let (status, body) = ack(&site, seq);
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["acked_upto"], seq);
            acked = seq;
            batch_seqs.push(seq);
        }
        (seqs.len() == 2 && seqs.values().all(|s| s.len() >= 300)).then_some(())
    })
    .unwrap();

    for (source, s) in &seqs {
        assert_contiguous(source, s, 300);
        assert_eq!(s.len(), 300, "{source}: duplicates across batches");
    }
    assert_eq!(readings, 2 * 300 * 4);
    assert!(
        batch_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "batch sequence has no gap: {batch_seqs:?}"
    );
    // Acknowledged batches are gone from the gateway.
    let (status, _) = http(
        site.api,
        "GET",
        &format!("/api/v1/batches/{}", batch_seqs[0]),
        Some(TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["outbox"]["acked_upto"], acked);
    assert_eq!(status["outbox"]["batches"], 0);
}

/// A site with one node at 20 Hz sending 60 samples and HTTP pull on, once a batch is sealed;
/// the oldest batch in the outbox.
fn one_node_with_a_sealed_batch() -> (Site, u64) {
    let specs = vec![NodeSpec {
        rate_hz: 20.0,
        samples: Some(60),
        ..NodeSpec::new(0)
    }];
    let mut site = Site::with_config(specs, &pull_config("")).unwrap();
    site.start_gateway().unwrap();
    let oldest = wait_for(Duration::from_secs(30), "a sealed batch", || {
        index(&site, 0)["batches"]
            .as_array()
            .unwrap()
            .first()
            .map(|b| b["seq"].as_u64().unwrap())
    })
    .unwrap();
    (site, oldest)
}

#[test]
fn batches_are_resent_byte_identical_and_only_to_the_token_holder() {
    let (site, first) = one_node_with_a_sealed_batch();
    assert_eq!(fetch(&site, first), fetch(&site, first));

    assert_eq!(
        http(site.api, "GET", "/api/v1/batches", None, None)
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        http(
            site.api,
            "GET",
            "/api/v1/batches",
            Some("e2e-pull-token-0123456788"),
            None
        )
        .unwrap()
        .0,
        401
    );
    assert_eq!(
        http(
            site.api,
            "GET",
            &format!("/api/v1/batches/{first}"),
            Some("nope"),
            None
        )
        .unwrap()
        .0,
        401
    );
    assert_eq!(
        http(
            site.api,
            "POST",
            "/api/v1/batches/ack",
            None,
            Some("{\"upto\": 1}")
        )
        .unwrap()
        .0,
        401
    );
    // The cloud cannot acknowledge what was never sealed, and a malformed body is refused.
    let (status, body) = ack(&site, 1_000_000);
    assert_eq!(status, 409, "{body}");
    let (status, _) = http(
        site.api,
        "POST",
        "/api/v1/batches/ack",
        Some(TOKEN),
        Some("{\"up\": 1}"),
    )
    .unwrap();
    assert_eq!(status, 400);
    // Nothing was deleted by the refused requests.
    assert!(!fetch(&site, first).is_empty());
}

#[test]
fn an_ack_for_batches_never_served_is_refused_alerted_and_deletes_nothing() {
    let (site, sealed) = one_node_with_a_sealed_batch();
    // Sealed, listed in the index, but never fetched: the cloud cannot have it.
    let (status, body) = ack(&site, sealed);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("never served"),
        "{body}"
    );
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["outbox"]["acked_upto"], 0, "nothing acknowledged");
    assert!(status["outbox"]["batches"].as_u64().unwrap() >= 1);
    let alerts = status["store"]["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "ack_refused" && a["subject"] == "pull"),
        "{alerts:?}"
    );
    // Fetched, the same acknowledgement goes through.
    fetch(&site, sealed);
    let (status, body) = ack(&site, sealed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acked_upto"], sealed);
    // A sequence number beyond what SQLite holds is the client's error, not the store's.
    for path in [
        "/api/v1/batches?after=9223372036854775808",
        "/api/v1/batches/18446744073709551615",
    ] {
        let (status, body) = http(site.api, "GET", path, Some(TOKEN), None).unwrap();
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn a_full_buffer_drops_the_oldest_batches_counts_them_and_raises_an_alert() {
    let specs = (0..3)
        .map(|i| NodeSpec {
            rate_hz: 150.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let extra = pull_config("max_batch_readings = 100\n") + "\n[buffer]\nmax_bytes = 65536\n";
    let mut site = Site::with_config(specs, &extra).unwrap();
    site.start_gateway().unwrap();
    let status = wait_for(
        Duration::from_secs(90),
        "batches dropped for the buffer bound",
        || {
            let status = site.get("/api/v1/status").ok()?;
            (status["outbox"]["dropped_batches"].as_u64()? > 0).then_some(status)
        },
    )
    .unwrap();
    let outbox = &status["outbox"];
    assert!(outbox["bytes"].as_u64().unwrap() <= 65536, "{outbox}");
    assert!(
        outbox["oldest_seq"].as_u64().unwrap() > 1,
        "the oldest went first: {outbox}"
    );
    let alerts = status["store"]["alerts"].as_array().unwrap();
    assert!(
        alerts.iter().any(|a| a["kind"] == "buffer_full"),
        "{alerts:?}"
    );
    // The newest data is kept: the newest sealed batch is still there to pull.
    let newest = outbox["newest_seq"].as_u64().unwrap();
    assert!(!fetch(&site, newest).is_empty());
}

#[test]
fn batch_decode_prints_the_readings_and_rejects_damaged_batches() {
    let specs = vec![NodeSpec {
        rate_hz: 20.0,
        samples: Some(40),
        ..NodeSpec::new(0)
    }];
    let mut site = Site::with_config(specs, &pull_config("")).unwrap();
    site.start_gateway().unwrap();
    let info = wait_for(Duration::from_secs(30), "a sealed batch", || {
        index(&site, 0)["batches"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    })
    .unwrap();
    let bytes = fetch(&site, info["seq"].as_u64().unwrap());
    let file = site.dir.path().join("batch.bin");
    std::fs::write(&file, &bytes).unwrap();

    let out = Command::new(bin("outpost"))
        .args(["batch", "decode"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["seq"], info["seq"]);
    let readings: Vec<serde_json::Value> =
        lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        readings.len() as u64,
        info["reading_count"].as_u64().unwrap()
    );
    let first = &readings[0];
    assert_eq!(first["source"], site.specs[0].uid);
    assert!(first["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(
        ["temperature", "humidity", "pressure", "seq"]
            .contains(&first["channel"].as_str().unwrap())
    );

    // Truncated, and one bit flipped: a clear error, never a panic or wrong readings.
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(bin("outpost"))
        .args(["batch", "decode"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a valid Outpost batch"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    std::fs::write(&file, &flipped).unwrap();
    let out = Command::new(bin("outpost"))
        .args(["batch", "decode", "-"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid Outpost batch"));
}

#[test]
fn a_dictionary_trained_on_site_history_seals_new_batches_and_the_cloud_can_fetch_it() {
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &pull_config("")).unwrap();
    site.start_gateway().unwrap();
    site.wait_for_samples(600, Duration::from_secs(60)).unwrap(); // 12 s of history
    let out = Command::new(bin("outpost"))
        .args(["dict", "train", "--windows", "50", "--config"])
        .arg(site.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let id: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();

    // From the next start, batches are sealed with it.
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    site.start_gateway().unwrap();
    let info = wait_for(
        Duration::from_secs(30),
        "a batch sealed with the dictionary",
        || {
            let index = index(&site, 0);
            index["batches"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["dictionary_id"] == id)
                .cloned()
        },
    )
    .unwrap();
    let bytes = fetch(&site, info["seq"].as_u64().unwrap());
    assert!(matches!(
        outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::new()),
        Err(outpost_batch::DecodeError::UnknownDictionary { .. })
    ));
    let (status, dictionary) = http(
        site.api,
        "GET",
        &format!("/api/v1/dictionaries/{id}"),
        Some(TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let dictionary = outpost_batch::Dictionary::from_bytes(dictionary).unwrap();
    let batch =
        outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::from(dictionary)).unwrap();
    assert_eq!(
        batch.readings().count() as u64,
        info["reading_count"].as_u64().unwrap()
    );

    let file = site.dir.path().join("batch.bin");
    std::fs::write(&file, &bytes).unwrap();
    let dict_file = site
        .dir
        .path()
        .join(format!("data/dictionaries/{id}.zdict"));
    let out = Command::new(bin("outpost"))
        .args(["batch", "decode"])
        .arg(&file)
        .arg("--dictionary")
        .arg(&dict_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_month_projected_over_budget_stretches_the_batch_interval() {
    let specs = vec![NodeSpec {
        rate_hz: 50.0,
        ..NodeSpec::new(0)
    }];
    let extra = "[uplink]\nbatch_interval = \"1s\"\nmax_batch_interval = \"7s\"\nmonthly_budget_bytes = 500\n".to_owned()
        + &format!("\n[uplink.pull]\ntoken = \"{TOKEN}\"\n");
    let mut site = Site::with_config(specs, &extra).unwrap();
    site.start_gateway().unwrap();
    assert_eq!(
        site.get("/api/v1/status").unwrap()["store"]["batch_interval_s"],
        1
    );
    // The cloud pulls (and so spends budget) until the gateway stretches its batches.
    let mut acked = 0;
    let status = wait_for(
        Duration::from_secs(120),
        "the batch interval to stretch",
        || {
            for info in index(&site, acked)["batches"].as_array().unwrap().clone() {
                let seq = info["seq"].as_u64().unwrap();
                fetch(&site, seq);
                ack(&site, seq);
                acked = seq;
            }
            let status = site.get("/api/v1/status").ok()?;
            (status["store"]["batch_interval_s"] == 7).then_some(status)
        },
    )
    .unwrap();
    let cost = &status["cost"];
    assert_eq!(cost["over_budget"], true, "{cost}");
    assert!(
        cost["projected_month"].as_u64().unwrap() > 500 * 7,
        "{cost}"
    );
    assert!(cost["bytes_today"].as_u64().unwrap() > 0, "{cost}");
    assert!(cost["bytes_per_reading"].as_f64().unwrap() > 0.0, "{cost}");
}

#[test]
fn signed_update_artifacts_are_uploaded_into_the_spool_with_the_upload_token_only() {
    const TOKEN: &str = "e2e-upload-token-0123456789";
    let mut site = Site::with_config(Vec::new(), &pull_config("")).unwrap();
    // The upload token, in a drop-in as a site provisions it; the pull token does not upload.
    let dropins = site.dir.path().join("outpost.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("50-upload.toml"),
        format!("[api]\nupload_token = \"{TOKEN}\"\n"),
    )
    .unwrap();
    site.start_gateway().unwrap();
    let incoming = site.dir.path().join("data/updates/incoming");

    let put = |path: &str, token: Option<&str>, body: &str| {
        http(site.api, "PUT", path, token, Some(body)).unwrap().0
    };
    assert_eq!(
        put("/api/v1/updates/outpost_9.9.9_amd64.deb", None, "x"),
        401
    );
    assert_eq!(
        put(
            "/api/v1/updates/outpost_9.9.9_amd64.deb",
            Some(crate::TOKEN),
            "x"
        ),
        401,
        "the pull token does not upload"
    );
    assert_eq!(put("/api/v1/updates/..%2Fevil.deb", Some(TOKEN), "x"), 400);
    assert_eq!(put("/api/v1/updates/run.sh", Some(TOKEN), "x"), 400);
    assert!(!incoming.exists() || std::fs::read_dir(&incoming).unwrap().count() == 0);

    assert_eq!(
        put(
            "/api/v1/updates/outpost_9.9.9_amd64.deb",
            Some(TOKEN),
            "package"
        ),
        201
    );
    assert_eq!(
        put(
            "/api/v1/updates/outpost_9.9.9_amd64.deb.sig",
            Some(TOKEN),
            "manifest"
        ),
        201
    );
    let mut names: Vec<String> = std::fs::read_dir(&incoming)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outpost_9.9.9_amd64.deb", "outpost_9.9.9_amd64.deb.sig"]
    );
    assert_eq!(
        std::fs::read(incoming.join("outpost_9.9.9_amd64.deb")).unwrap(),
        b"package"
    );
}
