//! End-to-end: the enrollment policy with the real daemon and simulated nodes on ptys. A node
//! outside the policy waits (listed, never silently ignored); a window lets it in; a manifest
//! signed by the manufacturer lets in exactly the nodes it lists; a revoked node stays out across
//! a restart while the others keep their contiguous `seq`.

use std::process::Command;
use std::time::Duration;

use outpost_e2e::{NodeSpec, Site, assert_contiguous, bin, wait_for};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

fn seqs(site: &Site, uid: &str) -> Vec<i64> {
    site.stored_seqs()
        .unwrap()
        .into_iter()
        .find(|(u, _)| u == uid)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

fn enrollment(site: &Site) -> Value {
    site.get("/api/v1/enrollment").unwrap()
}

fn waiting_uids(site: &Site) -> Vec<String> {
    let mut uids: Vec<String> = enrollment(site)["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["uid"].as_str().unwrap().to_owned())
        .collect();
    uids.sort();
    uids
}

/// `outpost nodes …` against the site's config, as an installer runs it; its stdout.
fn nodes_cli(site: &Site, args: &[&str]) -> String {
    let out = Command::new(bin("outpost"))
        .arg("nodes")
        .args(args)
        .arg("--config")
        .arg(site.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "outpost nodes {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn specs(n: usize) -> Vec<NodeSpec> {
    (0..n)
        .map(|i| NodeSpec {
            rate_hz: 20.0,
            ..NodeSpec::new(i)
        })
        .collect()
}

#[test]
fn outside_the_window_a_node_waits_inside_it_enrols_and_a_revoked_one_stays_out_after_a_restart() {
    let mut site = Site::with_config(specs(2), "[enrollment]\npolicy = \"window\"\n").unwrap();
    let (a, b) = (site.specs[0].uid.clone(), site.specs[1].uid.clone());
    site.start_gateway().unwrap();

    // No window: both prove their keys and wait, listed with their uid; nothing is stored.
    wait_for(MINUTE, "both nodes listed as waiting", || {
        (waiting_uids(&site) == [a.clone(), b.clone()]).then_some(())
    })
    .unwrap();
    let state = enrollment(&site);
    assert_eq!(state["policy"], "window");
    assert_eq!(state["enrolling"], false);
    assert!(
        state["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["reason"] == "not_enrolling"),
        "{state}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(site.stored_seqs().unwrap().is_empty(), "no row, no reading");
    let status = site.get("/api/v1/status").unwrap();
    assert!(
        status["ports"][0]["waiting_for_enrollment"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );

    // A window: both join at their next HELLO, and leave the waiting list.
    let said = nodes_cli(&site, &["enroll", "--window", "10m"]);
    assert!(said.contains("enrollment window open"), "{said}");
    wait_for(MINUTE, "both nodes' samples", || {
        (seqs(&site, &a).len() >= 40 && seqs(&site, &b).len() >= 40).then_some(())
    })
    .unwrap();
    assert!(waiting_uids(&site).is_empty());
    assert_eq!(enrollment(&site)["enrolling"], true);
    // Closed again: enrolled nodes are not held back by it.
    nodes_cli(&site, &["enroll", "--window", "0s"]);
    let at_close = seqs(&site, &b).len();
    wait_for(MINUTE, "samples after the window closed", || {
        (seqs(&site, &b).len() >= at_close + 20).then_some(())
    })
    .unwrap();

    // Revoke A: its session ends, its samples stop; B goes on.
    nodes_cli(&site, &["revoke", &a]);
    wait_for(MINUTE, "A's session closed", || {
        (site.get("/api/v1/status").ok()?["ports"][0]["revoked"] == 1).then_some(())
    })
    .unwrap();
    let a_at_revoke = seqs(&site, &a).len();
    let b_at_revoke = seqs(&site, &b).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        seqs(&site, &a).len(),
        a_at_revoke,
        "a revoked node's samples are refused"
    );
    assert!(seqs(&site, &b).len() > b_at_revoke);

    // A gateway restart (the nodes keep running): A stays out, B resumes without gap.
    site.restart_gateway().unwrap();
    let b_at_restart = seqs(&site, &b).len();
    wait_for(MINUTE, "B's samples after the restart", || {
        (seqs(&site, &b).len() >= b_at_restart + 40).then_some(())
    })
    .unwrap();
    wait_for(MINUTE, "A refused after the restart", || {
        (site.get("/api/v1/status").ok()?["ports"][0]["refused"].as_u64()? >= 1).then_some(())
    })
    .unwrap();
    assert_eq!(
        seqs(&site, &a).len(),
        a_at_revoke,
        "A stays out across the restart"
    );
    assert_contiguous(&b, &seqs(&site, &b), b_at_restart + 40);
    assert_contiguous(&a, &seqs(&site, &a), a_at_revoke);
    let nodes = site.get("/api/v1/nodes").unwrap();
    let row = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["uid"] == a.as_str())
        .unwrap()
        .clone();
    assert!(row["revoked_ms"].is_i64(), "{row}");
}

#[test]
fn under_an_allowlist_only_the_nodes_a_signed_manifest_lists_with_their_key_enrol() {
    let specs = specs(3);
    let key_of = |i: usize| {
        let mut config =
            outpost_node::sim::SimConfig::new(outpost_node::sim::parse_uid(&specs[i].uid).unwrap());
        config.seed = i as u64; // as the harness starts node i
        config.signing_key().verifying_key().to_bytes()
    };
    // The manufacturing line lists node 0 as it is, and node 1 with another key (a board whose
    // key is not the one the line recorded); node 2 is not listed at all. Signed with the
    // factory's tool.
    let factory = tempfile::tempdir().unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(bin("outpost-sign"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "keygen".as_ref(),
        "--role".as_ref(),
        "manufacturer".as_ref(),
        "--out".as_ref(),
        factory.path().as_os_str(),
    ]);
    let list = factory.path().join("nodes.txt");
    std::fs::write(
        &list,
        format!(
            "# uid hw lot key\n{} 1 L2026-12 {}\n{} 1 L2026-12 {}\n",
            specs[0].uid,
            outpost_core::hex::encode(&key_of(0)),
            specs[1].uid,
            outpost_core::hex::encode(&[0x11; 32]),
        ),
    )
    .unwrap();
    let manifest_path = factory.path().join("nodes.manifest");
    run(&[
        "node-manifest".as_ref(),
        "--key".as_ref(),
        factory.path().join("manufacturer.key").as_os_str(),
        "--out".as_ref(),
        manifest_path.as_os_str(),
        list.as_os_str(),
    ]);
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let manufacturer_pub =
        std::fs::read_to_string(factory.path().join("manufacturer.pub")).unwrap();
    let mut site = Site::with_config(specs.clone(), "").unwrap();
    std::fs::write(site.dir.path().join("nodes.manifest"), &manifest).unwrap();
    std::fs::write(site.dir.path().join("manufacturer.pub"), manufacturer_pub).unwrap();
    site.extra_config = format!(
        "[enrollment]\npolicy = \"allowlist\"\nmanufacturer_keys = [\"{0}/manufacturer.pub\"]\nmanifests = [\"{0}/nodes.manifest\"]\n",
        site.dir.path().display()
    );
    let text = std::fs::read_to_string(site.config_path()).unwrap();
    let text = text.replace("[enrollment]\npolicy = \"open\"\n", "");
    std::fs::write(site.config_path(), format!("{text}\n{}", site.extra_config)).unwrap();
    site.start_gateway().unwrap();

    wait_for(MINUTE, "the listed node's samples", || {
        (seqs(&site, &specs[0].uid).len() >= 20).then_some(())
    })
    .unwrap();
    wait_for(MINUTE, "the other two waiting", || {
        (waiting_uids(&site) == [specs[1].uid.clone(), specs[2].uid.clone()]).then_some(())
    })
    .unwrap();
    let state = enrollment(&site);
    assert_eq!(state["policy"], "allowlist");
    assert_eq!(state["listed"], 2);
    assert!(
        state["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["reason"] == "not_listed"),
        "{state}"
    );
    assert!(seqs(&site, &specs[1].uid).is_empty());
    assert!(seqs(&site, &specs[2].uid).is_empty());

    // A manifest changed after signing (node 2 added by hand) is refused at start, by name.
    let forged = manifest.replacen(
        "signed-by",
        &format!(
            "node {} hw 1 lot L2026-12 key {}\nsigned-by",
            specs[2].uid,
            outpost_core::hex::encode(&key_of(2))
        ),
        1,
    );
    std::fs::write(site.dir.path().join("nodes.manifest"), forged).unwrap();
    let out = Command::new(bin("outpost"))
        .args(["check", "--config"])
        .arg(site.config_path())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("enrollment.manifests") && said.contains("signature"),
        "{said}"
    );
}

#[test]
fn the_gateways_node_link_key_is_0600_and_never_in_a_log_the_api_or_the_page() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut site = Site::new(specs(1)).unwrap();
    let log = site.dir.path().join("gateway.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run")
        .arg("--config")
        .arg(site.config_path())
        // Everything the daemon can say, debug lines with their structs included.
        .env("RUST_LOG", "trace")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    site.gateway = Some(outpost_e2e::Proc::spawn("gateway", &mut cmd).unwrap());
    wait_for(MINUTE, "the gateway's API", || {
        site.get("/api/v1/status").ok()
    })
    .unwrap();
    let uid = site.specs[0].uid.clone();
    wait_for(MINUTE, "the node's readings", || {
        (seqs(&site, &uid).len() >= 20).then_some(())
    })
    .unwrap();

    let key_path = site.dir.path().join("data/node-link.key");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "node-link.key is mode {mode:o}");
    let text = std::fs::read_to_string(&key_path).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret "))
        .expect("a secret line")
        .to_owned();
    assert_eq!(secret.len(), 64);
    let secret_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    // The key as text in any case, and as the bytes it is (a log line with a byte array).
    let needles = [
        secret.clone(),
        secret.to_ascii_uppercase(),
        format!("{:?}", secret_bytes),
    ];

    let mut outputs = Vec::new();
    for path in [
        "/api/v1/status",
        "/api/v1/nodes",
        "/api/v1/enrollment",
        "/api/v1/overview",
        "/",
        "/app.js",
    ] {
        let (status, body) = outpost_e2e::http(site.api, "GET", path, None, None).unwrap();
        assert_eq!(status, 200, "{path}");
        outputs.push((path.to_owned(), String::from_utf8_lossy(&body).into_owned()));
    }
    let check = Command::new(bin("outpost"))
        .args(["check", "--config"])
        .arg(site.config_path())
        .output()
        .unwrap();
    let identity = Command::new(bin("outpost"))
        .args(["identity", "show", "--config"])
        .arg(site.config_path())
        .output()
        .unwrap();
    let identity = String::from_utf8_lossy(&identity.stdout).into_owned();
    assert!(
        identity.contains("node-link key: "),
        "identity show prints the public half: {identity}"
    );
    outputs.push(("outpost identity show".into(), identity));
    outputs.push((
        "outpost check".into(),
        String::from_utf8_lossy(&check.stdout).into_owned()
            + &String::from_utf8_lossy(&check.stderr),
    ));
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20))
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("node-link key"), "the log is the daemon's");
    outputs.push(("the daemon's log (trace)".into(), logged));
    for (name, output) in &outputs {
        for needle in &needles {
            assert!(
                !output.contains(needle.as_str()),
                "the node-link key appears in {name}"
            );
        }
    }
}
