//! End-to-end: remote diagnostics and remediation through a real Mosquitto with TLS and an ACL
//! written as docs/commands.md says, against a real gateway with a simulated node on a pty and
//! a Modbus RTU device on another. The `diagnostics` command is refused unless signed, fresh and
//! new (`outpost-sign` itself refuses bad arguments; the core's tests cover their refusals); a
//! good one uploads its bundle in parts that reassemble to the SHA-256 its result names, holding
//! the node's reset history and none of the site's secrets; the page's download is the same
//! kind of bundle. `node-reboot mode=hard` says clearly that this machine has no GPIO;
//! declared Modbus points are read and written; `gateway-restart` exits with the status the
//! service manager restarts on.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::modbus_peer::{Bank, PeerConfig, RtuPeer};
use outpost_e2e::operator::{self, audit, keygen};
use outpost_e2e::{NodeSpec, Site, bin, http, wait_for};
use serde_json::Value;
use sha2::Digest as _;

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id
const MINUTE: Duration = Duration::from_secs(60);
const TECHNICIAN_TOKEN: &str = "Tq7vR2mXk9LpW4sZ8nB3cF6hJ1dG5yUe";
const PULL_TOKEN: &str = "pUl1-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const UPLOAD_TOKEN: &str = "Up10adT0ken+V3ryS3cret/Value==";
const PASSWORD: &str = "correct-horse-battery-staple-42";

/// The ACL docs/commands.md gives a site: each gateway its own topics, commands read, results
/// and their parts written; the cloud everything.
const ACL: &str = "pattern readwrite outpost/%u/status\n\
                   pattern write outpost/%u/batch\n\
                   pattern write outpost/%u/alerts\n\
                   pattern write outpost/%u/health\n\
                   pattern write outpost/%u/ota\n\
                   pattern read outpost/%u/ack\n\
                   pattern read outpost/%u/cmd/+\n\
                   pattern write outpost/%u/cmd/result/#\n\
                   \n\
                   user cloud\n\
                   topic readwrite outpost/#\n";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sign(key: &Path, request: &str, valid_for: &str, args: &[&str]) -> Vec<u8> {
    operator::sign(key, GATEWAY, request, valid_for, args)
}

/// Publishes `command` on the `verb` topic and waits for its `n`th result.
fn send(cloud: &Cloud, verb: &str, command: &[u8], request: &str, n: usize) -> Value {
    operator::send(cloud, GATEWAY, verb, command, request, n)
}

fn messages_on(cloud: &Cloud, topic: &str) -> Vec<Vec<u8>> {
    cloud
        .messages()
        .into_iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.payload.to_vec())
        .collect()
}

/// `bundle` (tar in zstd) opened with the standard tools into `dir`: file name → text.
fn open_bundle(bundle: &[u8], dir: &Path) -> BTreeMap<String, String> {
    std::fs::create_dir_all(dir).unwrap();
    let archive = dir.join("bundle.tar.zst");
    std::fs::write(&archive, bundle).unwrap();
    run(Command::new("zstd")
        .args(["-d", "-q", "-f"])
        .arg(&archive)
        .arg("-o")
        .arg(dir.join("bundle.tar")));
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(dir.join("bundle.tar"))
        .arg("-C")
        .arg(&files));
    std::fs::read_dir(&files)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Asserts no file of the bundle holds any of `secrets` (each a piece of key material or a
/// token), and that it holds the node's reset history.
fn assert_clean_and_complete(files: &BTreeMap<String, String>, secrets: &[String], uid: &str) {
    for name in [
        "README.txt",
        "versions.json",
        "config.toml",
        "redactions.json",
        "journal.txt",
        "store.json",
        "nodes.json",
        "node_resets.json",
        "node_firmware.json",
        "node_side.json",
        "alerts.json",
        "command_audit.json",
    ] {
        assert!(
            files.contains_key(name),
            "{name} missing: {:?}",
            files.keys()
        );
    }
    for (name, text) in files {
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} holds a secret ({}…)",
                &secret[..8]
            );
        }
    }
    let resets: Vec<Value> = serde_json::from_str(&files["node_resets.json"]).unwrap();
    assert!(
        resets
            .iter()
            .any(|r| r["uid"] == uid && r["reason"].is_string() && r["fw_version"] == "0.1.0"),
        "{resets:?}"
    );
    let nodes: Vec<Value> = serde_json::from_str(&files["nodes.json"]).unwrap();
    assert!(nodes.iter().any(|n| n["uid"] == uid), "{nodes:?}");
    // The node's own history, pulled over its link: its flash's reset records and its log ring.
    let pulled: Vec<Value> = serde_json::from_str(&files["node_side.json"]).unwrap();
    let node = pulled
        .iter()
        .find(|p| p["uid"] == uid)
        .unwrap_or_else(|| panic!("{uid} not pulled: {pulled:?}"));
    assert!(node["error"].is_null(), "{node}");
    assert!(
        node["resets"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r[0]["firmware"] == "0.1.0"),
        "{node}"
    );
    assert!(
        node["log"].as_array().is_some_and(|l| !l.is_empty()),
        "{node}"
    );
    // The configuration is there, its secrets replaced and listed by key.
    let config = &files["config.toml"];
    assert!(config.contains("[redacted]"), "{config}");
    assert!(config.contains("run_pin = 17"), "{config}");
    let redactions: Value = serde_json::from_str(&files["redactions.json"]).unwrap();
    let keys: Vec<&str> = redactions["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    for key in [
        "api.technician_token",
        "api.upload_token",
        "uplink.pull.token",
    ] {
        assert!(
            keys.contains(&key),
            "{key} not listed as redacted: {keys:?}"
        );
    }
}

/// The secret part of a key file: an Outpost key's `secret` value, or a PEM key's body lines.
fn key_material(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    if text.contains("-----BEGIN") {
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect();
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("secret "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn diagnostics_and_remediation_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    cloud
        .subscribe(&format!("outpost/{GATEWAY}/cmd/result/#"))
        .unwrap();
    let keys = dir.path().join("keys");
    let operator = keygen(&keys, "operator");
    let firmware = keygen(&keys, "firmware");
    let stranger = keygen(&dir.path().join("stranger"), "operator");
    let tls = pki.client(GATEWAY).unwrap();

    // A Modbus device on an RTU line: a reading and a setpoint declared writable.
    let map = dir.path().join("controller.toml");
    std::fs::write(
        &map,
        "[[point]]\nname = \"temperature\"\ntable = \"input\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\nunit = \"°C\"\n\
         [[point]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = 10\ntype = \"u16\"\nscale = 0.1\nunit = \"°C\"\nwritable = true\n\
         [[point]]\nname = \"mode\"\ntable = \"holding\"\naddress = 11\ntype = \"u16\"\n",
    )
    .unwrap();
    let mut bank = Bank::default();
    bank.input.insert(0, 215); // 21.5 °C
    bank.holding.extend([(10, 200), (11, 1)]);
    let peer = RtuPeer::start(PeerConfig {
        units: BTreeMap::from([(1u8, bank)]),
        ..PeerConfig::default()
    })
    .unwrap();

    let config = format!(
        "[uplink]\nbatch_interval = \"1s\"\nmonthly_budget_bytes = 1000000000\n\n\
         [uplink.pull]\ntoken = \"{PULL_TOKEN}\"\n\n\
         [uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n\n\
         [commands]\noperator_keys = [\"{}\"]\nmax_lifetime = \"10m\"\n\n\
         [[modbus.bus]]\npath = \"{}\"\nbaud = 19200\n\n\
         [[modbus.device]]\nname = \"boiler\"\nmap = \"{}\"\ntransport = \"rtu\"\nbus = \"{}\"\npoll_interval = \"300ms\"\n",
        broker.port(),
        tls.ca.display(),
        tls.cert.display(),
        tls.key.display(),
        keys.join("operator.pub").display(),
        peer.path().display(),
        map.display(),
        peer.path().display(),
    );
    let specs = vec![NodeSpec {
        rate_hz: 10.0,
        sim_args: vec!["--health-interval".into(), "1".into()],
        port_config: "run_pin = 17\n".into(),
        ..NodeSpec::new(0)
    }];
    let mut site = Site::with_config(specs, &config).unwrap();
    // The API's tokens in a drop-in, as a site's provisioning would add them.
    let dropins = site.dir.path().join("outpost.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("50-api.toml"),
        format!(
            "[api]\ntechnician_token = \"{TECHNICIAN_TOKEN}\"\nupload_token = \"{UPLOAD_TOKEN}\"\n"
        ),
    )
    .unwrap();
    site.bearer = Some(TECHNICIAN_TOKEN.into());
    let uid = site.specs[0].uid.clone();
    // The technician's password, set as an installer does (its hash goes to the data dir).
    let mut set = Command::new(bin("outpost"))
        .args(["technician", "set-password", "--config"])
        .arg(site.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let set = set.wait_with_output().unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let password_hash =
        std::fs::read_to_string(site.dir.path().join("data/technician.argon2")).unwrap();

    site.start_gateway().unwrap();
    wait_for(MINUTE, "the command topic granted", || {
        (site.get("/api/v1/status").ok()?["uplink"]["commands"] == "subscribed").then_some(())
    })
    .unwrap();
    wait_for(MINUTE, "the node's boot in its reset history", || {
        let conn = rusqlite::Connection::open(site.store_path()).ok()?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM node_resets WHERE uid = ?1",
                [&uid],
                |r| r.get(0),
            )
            .ok()?;
        (n > 0).then_some(())
    })
    .unwrap();

    // Every secret of this site: key material, tokens, the password and its hash.
    let mut secrets: Vec<String> = [
        TECHNICIAN_TOKEN,
        PULL_TOKEN,
        UPLOAD_TOKEN,
        PASSWORD,
        password_hash.trim(),
    ]
    .map(str::to_owned)
    .to_vec();
    for key in [
        operator.clone(),
        firmware.clone(),
        stranger.clone(),
        tls.key.clone(),
        site.dir.path().join("data/node-link.key"),
    ] {
        if key.exists() {
            let material = key_material(&key);
            assert!(
                !material.is_empty(),
                "{} has no key material?",
                key.display()
            );
            secrets.extend(material);
        }
    }

    // Refused, each for its reason, and audited: unsigned, expired, wrongly signed.
    let good = sign(&operator, "r-diag", "5m", &["diagnostics", "lines=200"]);
    let unsigned: String = String::from_utf8(good.clone())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("signed-by") && !l.starts_with("signature"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("request r-diag", "request r-diag-unsigned");
    let reason = |v: Value| v["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        reason(send(
            &cloud,
            "diagnostics",
            unsigned.as_bytes(),
            "r-diag-unsigned",
            1
        )),
        "unsigned"
    );
    let theirs = sign(&stranger, "r-diag-stranger", "5m", &["diagnostics"]);
    assert_eq!(
        reason(send(&cloud, "diagnostics", &theirs, "r-diag-stranger", 1)),
        "unknown-key"
    );
    let tampered = String::from_utf8(sign(
        &operator,
        "r-diag-tampered",
        "5m",
        &["diagnostics", "upload=no"],
    ))
    .unwrap()
    .replace("arg upload no", "arg upload force");
    assert_eq!(
        reason(send(
            &cloud,
            "diagnostics",
            tampered.as_bytes(),
            "r-diag-tampered",
            1
        )),
        "bad-signature"
    );
    let stale = sign(&operator, "r-diag-stale", "1s", &["diagnostics"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        reason(send(&cloud, "diagnostics", &stale, "r-diag-stale", 1)),
        "expired"
    );
    // None of them built or sent anything.
    assert!(
        cloud.messages().iter().all(|m| !m.topic.contains("/part/")),
        "a refused command sent parts"
    );

    // The good one: its result names the bundle; its parts reassemble to that SHA-256.
    let done = send(&cloud, "diagnostics", &good, "r-diag", 1);
    assert_eq!(done["outcome"], "ok", "{done}");
    assert_eq!(done["result"]["delivery"], "uploaded", "{done}");
    let count = done["result"]["parts"].as_u64().unwrap() as usize;
    let size = done["result"]["size"].as_u64().unwrap() as usize;
    assert!(count >= 1 && size > 0, "{done}");
    let mut bundle = Vec::new();
    for n in 0..count {
        let topic = format!("outpost/{GATEWAY}/cmd/result/r-diag/part/{n}");
        let payload = wait_for(MINUTE, &topic, || messages_on(&cloud, &topic).pop()).unwrap();
        assert!(payload.len() <= 64 * 1024);
        let (index, of, last, bytes) =
            outpost_core::diagnostics::read_part(&payload).expect("a part's header");
        assert_eq!((index, of, last), (n, count, n + 1 == count));
        bundle.extend_from_slice(bytes);
    }
    assert_eq!(bundle.len(), size);
    assert_eq!(
        outpost_core::hex::encode(&sha2::Sha256::digest(&bundle)),
        done["result"]["sha256"].as_str().unwrap()
    );
    let files = open_bundle(&bundle, &dir.path().join("uploaded"));
    assert_clean_and_complete(&files, &secrets, &uid);
    let audit_in_bundle: Vec<Value> = serde_json::from_str(&files["command_audit.json"]).unwrap();
    assert!(
        audit_in_bundle
            .iter()
            .any(|e| e["request"] == "r-diag-unsigned"),
        "the audit tail in the bundle"
    );

    // Replayed: refused, nothing built again.
    let replay = send(&cloud, "diagnostics", &good, "r-diag", 2);
    assert_eq!(replay["reason"], "replayed", "{replay}");

    // The page's download: technician scope, the same kind of bundle.
    let (status, _) = http(site.api, "GET", "/api/v1/diagnostics", None, None).unwrap();
    assert_eq!(status, 401);
    let (status, download) = http(
        site.api,
        "GET",
        "/api/v1/diagnostics",
        Some(TECHNICIAN_TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&download));
    let files = open_bundle(&download, &dir.path().join("downloaded"));
    assert_clean_and_complete(&files, &secrets, &uid);

    // upload=no: built, not sent; the page has it.
    let kept = sign(
        &operator,
        "r-diag-kept",
        "5m",
        &["diagnostics", "upload=no"],
    );
    let kept = send(&cloud, "diagnostics", &kept, "r-diag-kept", 1);
    assert_eq!(kept["outcome"], "ok", "{kept}");
    assert_eq!(kept["result"]["delivery"], "page");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        cloud
            .messages()
            .iter()
            .all(|m| !m.topic.contains("r-diag-kept/part/")),
        "upload=no sent parts"
    );

    // A hard reboot on a machine without the Pi's GPIO says so; a soft one goes over the link.
    let hard = sign(
        &operator,
        "r-reboot-hard",
        "5m",
        &["node-reboot", &format!("node={uid}"), "mode=hard"],
    );
    let hard = send(&cloud, "node-reboot", &hard, "r-reboot-hard", 1);
    assert_eq!(hard["outcome"], "failed", "{hard}");
    assert!(
        hard["detail"]
            .as_str()
            .unwrap()
            .starts_with("hard reboot not available on this machine: "),
        "{hard}"
    );
    let soft = sign(
        &operator,
        "r-reboot-soft",
        "5m",
        &["node-reboot", &format!("node={uid}"), "mode=soft"],
    );
    let soft = send(&cloud, "node-reboot", &soft, "r-reboot-soft", 1);
    assert_eq!(soft["outcome"], "ok", "{soft}");
    // The node comes back from its own reset; node-health then shows why it reset.
    let mut attempt = 0;
    let health = wait_for(MINUTE, "node-health after the soft reboot", || {
        attempt += 1;
        let request = format!("r-health-{attempt}");
        let command = sign(
            &operator,
            &request,
            "5m",
            &["node-health", &format!("node={uid}")],
        );
        let answer = send(&cloud, "node-health", &command, &request, 1);
        (answer["outcome"] == "ok" && answer["result"]["registry"]["reset_reason"] == "software")
            .then_some(answer)
            .or_else(|| {
                std::thread::sleep(Duration::from_secs(1));
                None
            })
    })
    .unwrap();
    assert_eq!(health["result"]["health_sent"], true, "{health}");
    let nobody = sign(
        &operator,
        "r-reboot-nobody",
        "5m",
        &["node-reboot", "node=00000000000000ff", "mode=hard"],
    );
    let nobody = send(&cloud, "node-reboot", &nobody, "r-reboot-nobody", 1);
    assert!(
        nobody["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown-node"),
        "{nobody}"
    );

    // Modbus: a declared point read from the latest poll; a writable one written to the device;
    // one not declared writable, or not declared at all, refused by name.
    wait_for(MINUTE, "the boiler polled", || {
        let devices = site.get("/api/v1/modbus").ok()?;
        (devices[0]["values"]["temperature"]["value"].as_f64()? == 21.5).then_some(())
    })
    .unwrap();
    let read = sign(
        &operator,
        "r-read",
        "5m",
        &["modbus-read", "device=boiler", "point=temperature"],
    );
    let read = send(&cloud, "modbus-read", &read, "r-read", 1);
    assert_eq!(read["outcome"], "ok", "{read}");
    assert_eq!(read["result"]["value"], 21.5, "{read}");
    assert_eq!(read["result"]["unit"], "°C");
    let write = sign(
        &operator,
        "r-write",
        "5m",
        &[
            "modbus-write",
            "device=boiler",
            "point=setpoint",
            "value=22.5",
        ],
    );
    let write = send(&cloud, "modbus-write", &write, "r-write", 1);
    assert_eq!(write["outcome"], "ok", "{write}");
    assert_eq!(peer.bus().unit(1).holding[&10], 225);
    let not_writable = sign(
        &operator,
        "r-write-mode",
        "5m",
        &["modbus-write", "device=boiler", "point=mode", "value=3"],
    );
    let not_writable = send(&cloud, "modbus-write", &not_writable, "r-write-mode", 1);
    assert_eq!(not_writable["outcome"], "failed", "{not_writable}");
    assert!(
        not_writable["detail"]
            .as_str()
            .unwrap()
            .contains("not writable"),
        "{not_writable}"
    );
    assert_eq!(peer.bus().unit(1).holding[&11], 1, "the device untouched");
    let undeclared = sign(
        &operator,
        "r-read-nothing",
        "5m",
        &["modbus-read", "device=boiler", "point=pressure"],
    );
    let undeclared = send(&cloud, "modbus-read", &undeclared, "r-read-nothing", 1);
    assert!(
        undeclared["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown-point"),
        "{undeclared}"
    );

    // Every one of them is in the audit log, with how it ended.
    let log = audit(&site);
    let outcome = |request: &str| -> Vec<String> {
        log.iter()
            .filter(|e| e["request"] == request)
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect()
    };
    for (request, expected) in [
        ("r-diag-unsigned", vec!["refused"]),
        ("r-diag-stranger", vec!["refused"]),
        ("r-diag-tampered", vec!["refused"]),
        ("r-diag-stale", vec!["refused"]),
        ("r-diag", vec!["refused", "ok"]),
        ("r-diag-kept", vec!["ok"]),
        ("r-reboot-hard", vec!["failed"]),
        ("r-reboot-soft", vec!["ok"]),
        ("r-read", vec!["ok"]),
        ("r-write", vec!["ok"]),
        ("r-write-mode", vec!["failed"]),
    ] {
        assert_eq!(outcome(request), expected, "{request}: {log:?}");
    }

    // gateway-restart: answered, then the daemon stops cleanly with the status systemd
    // restarts on (RestartForceExitStatus=75); started again, as the unit would, it runs on.
    let restart = sign(&operator, "r-restart", "5m", &["gateway-restart"]);
    let restarted = send(&cloud, "gateway-restart", &restart, "r-restart", 1);
    assert_eq!(restarted["outcome"], "ok", "{restarted}");
    let status = wait_for(MINUTE, "the gateway to exit", || {
        site.gateway.as_mut()?.try_wait()
    })
    .unwrap();
    assert_eq!(status.code(), Some(75), "{status:?}");
    site.start_gateway().unwrap();
    wait_for(MINUTE, "the command topic granted again", || {
        (site.get("/api/v1/status").ok()?["uplink"]["commands"] == "subscribed").then_some(())
    })
    .unwrap();
    let log = audit(&site);
    let entry = log.iter().find(|e| e["request"] == "r-restart").unwrap();
    assert_eq!(entry["outcome"], "ok", "{entry}");
    // The restarted gateway takes commands again.
    let after = sign(
        &operator,
        "r-read-after",
        "5m",
        &["modbus-read", "device=boiler", "point=setpoint"],
    );
    wait_for(MINUTE, "the boiler polled again", || {
        let devices = site.get("/api/v1/modbus").ok()?;
        devices[0]["values"]["setpoint"]["value"].as_f64()
    })
    .unwrap();
    let after = send(&cloud, "modbus-read", &after, "r-read-after", 1);
    assert_eq!(after["result"]["value"], 22.5, "{after}");
    drop(peer);
}

#[test]
fn a_bundle_over_the_data_budget_stays_on_the_page_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start_with_acl(&dir.path().join("broker"), &pki, ACL).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    cloud
        .subscribe(&format!("outpost/{GATEWAY}/cmd/result/#"))
        .unwrap();
    let keys = dir.path().join("keys");
    let operator = keygen(&keys, "operator");
    let tls = pki.client(GATEWAY).unwrap();
    // A month of 1000 bytes: any bundle (a few KiB) would pass it.
    let config = format!(
        "[uplink]\nbatch_interval = \"1s\"\nmonthly_budget_bytes = 1000\n\n\
         [uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n\n\
         [commands]\noperator_keys = [\"{}\"]\nmax_lifetime = \"10m\"\n",
        broker.port(),
        tls.ca.display(),
        tls.cert.display(),
        tls.key.display(),
        keys.join("operator.pub").display(),
    );
    let mut site = Site::with_config(Vec::new(), &config).unwrap();
    site.start_gateway().unwrap();
    wait_for(MINUTE, "the command topic granted", || {
        (site.get("/api/v1/status").ok()?["uplink"]["commands"] == "subscribed").then_some(())
    })
    .unwrap();

    let auto = sign(&operator, "r-budget", "5m", &["diagnostics"]);
    let auto = send(&cloud, "diagnostics", &auto, "r-budget", 1);
    assert_eq!(auto["outcome"], "failed", "{auto}");
    assert!(
        auto["detail"]
            .as_str()
            .unwrap()
            .starts_with("over the data budget; download it from the page"),
        "{auto}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        cloud.messages().iter().all(|m| !m.topic.contains("/part/")),
        "a bundle over the budget was sent"
    );
    // This site has no technician token, so its read endpoints are open to the LAN; the bundle
    // is not: the page's download needs a logged-in session.
    assert_eq!(site.get("/api/v1/status").unwrap()["gateway_id"], GATEWAY);
    let (status, body) = http(site.api, "GET", "/api/v1/diagnostics", None, None).unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let forced = sign(
        &operator,
        "r-budget-forced",
        "5m",
        &["diagnostics", "upload=force"],
    );
    let forced = send(&cloud, "diagnostics", &forced, "r-budget-forced", 1);
    assert_eq!(forced["outcome"], "ok", "{forced}");
    assert_eq!(forced["result"]["delivery"], "uploaded");
    let topic = format!("outpost/{GATEWAY}/cmd/result/r-budget-forced/part/0");
    let part = wait_for(MINUTE, &topic, || messages_on(&cloud, &topic).pop()).unwrap();
    let (_, count, _, _) = outpost_core::diagnostics::read_part(&part).unwrap();
    let mut bundle = Vec::new();
    for n in 0..count {
        let topic = format!("outpost/{GATEWAY}/cmd/result/r-budget-forced/part/{n}");
        let part = wait_for(MINUTE, &topic, || messages_on(&cloud, &topic).pop()).unwrap();
        bundle.extend_from_slice(outpost_core::diagnostics::read_part(&part).unwrap().3);
    }
    assert_eq!(
        outpost_core::hex::encode(&sha2::Sha256::digest(&bundle)),
        forced["result"]["sha256"].as_str().unwrap()
    );
    let log = audit(&site);
    let outcome = |request: &str| {
        log.iter()
            .find(|e| e["request"] == request)
            .map(|e| e["outcome"].clone())
    };
    assert_eq!(outcome("r-budget"), Some("failed".into()));
    assert_eq!(outcome("r-budget-forced"), Some("ok".into()));
}
