//! Node firmware updates end to end: the real gateway (`outpost run`), simulated nodes on ptys
//! that boot from flash files through embassy-boot's bootloader (`outpost-node-sim --flash`),
//! images made and signed with the shipped tools, rollouts driven by `outpost rollout` and the
//! local API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use outpost_e2e::{NodeSpec, Site, bin, run_ok, wait_for};
use serde_json::Value;

const TOKEN: &str = "ota-technician-token-0123456789";
/// Nodes and ports run at 921,600 baud: an image in about a second.
const BAUD: &str = "921600";

/// The fleet's firmware key and the images made with it.
struct Fleet {
    dir: PathBuf,
}

impl Fleet {
    fn new(dir: &Path) -> Result<Fleet> {
        let dir = dir.join("fleet");
        std::fs::create_dir_all(&dir)?;
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "keygen", "--out"])
                .arg(dir.join("keys")),
        )?;
        Ok(Fleet { dir })
    }

    fn public_key(&self) -> PathBuf {
        self.dir.join("keys/firmware.pub")
    }

    /// A simulator image of `version` (`flags`: `--never-confirms`, `--crash-loop`), signed for
    /// hardware revision `hw_rev` by `key` (the fleet's unless given).
    fn image(
        &self,
        version: &str,
        flags: &[&str],
        hw_rev: u8,
        key: Option<&Path>,
    ) -> Result<PathBuf> {
        let name = format!("node-{version}{}.bin", flags.concat().replace("--", "-"));
        let path = self.dir.join(name);
        run_ok(
            Command::new(bin("outpost-node-sim"))
                .args(["make-image", "--version", version, "--size", "48K"])
                .args(flags)
                .arg(&path),
        )?;
        let own = self.dir.join("keys/firmware.key");
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "sign", "--key"])
                .arg(key.unwrap_or(&own))
                .args(["--version", version, "--hw-rev", &hw_rev.to_string()])
                .arg(&path),
        )?;
        Ok(path)
    }

    /// A normal image of `version` and `size` (e.g. `128K`) for hardware revision 1.
    fn image_sized(&self, version: &str, size: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("node-{version}-{size}.bin"));
        run_ok(
            Command::new(bin("outpost-node-sim"))
                .args(["make-image", "--version", version, "--size", size])
                .arg(&path),
        )?;
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "sign", "--key"])
                .arg(self.dir.join("keys/firmware.key"))
                .args(["--version", version, "--hw-rev", "1"])
                .arg(&path),
        )?;
        Ok(path)
    }

    /// A node's flash as it leaves the factory, with `image` in its ACTIVE slot.
    fn flash(&self, image: &Path, node: usize) -> Result<PathBuf> {
        let path = self.dir.join(format!("flash{node}.bin"));
        let _ = std::fs::remove_file(&path);
        run_ok(
            Command::new(bin("outpost-node-sim"))
                .arg("make-flash")
                .arg("--image")
                .arg(image)
                .arg(&path),
        )?;
        Ok(path)
    }
}

/// A site of `n` nodes on factory image `factory`, taking updates signed by the fleet's key.
fn site(fleet: &Fleet, factory: &Path, n: usize, dir: &Path) -> Result<Site> {
    site_with(fleet, factory, n, dir, "")
}

/// [`site`], with `more` configuration.
fn site_with(fleet: &Fleet, factory: &Path, n: usize, dir: &Path, more: &str) -> Result<Site> {
    let mut specs = Vec::new();
    for i in 0..n {
        let mut spec = NodeSpec::new(i);
        spec.rate_hz = 20.0;
        spec.sim_args = vec![
            "--flash".into(),
            fleet.flash(factory, i)?.display().to_string(),
            "--fleet-key".into(),
            fleet.public_key().display().to_string(),
            "--baud".into(),
            BAUD.into(),
        ];
        spec.port_config = format!("baud = {BAUD}");
        specs.push(spec);
    }
    let _ = dir;
    let extra = format!(
        "[ota]\nfirmware_keys = [\"{}\"]\n\n{more}",
        fleet.public_key().display()
    );
    let mut site = Site::with_config(specs, &extra)?;
    site.set_technician_token(TOKEN)?;
    Ok(site)
}

/// `outpost <subcommand...> --config <site> <rest...>`: `args` up to the first flag name the
/// subcommand; the caller appends the rest, the last being a flag's value.
fn outpost(site: &Site, args: &[&str]) -> Command {
    let split = args
        .iter()
        .position(|a| a.starts_with("--"))
        .unwrap_or(args.len());
    let mut cmd = Command::new(bin("outpost"));
    cmd.args(&args[..split])
        .arg("--config")
        .arg(site.config_path())
        .args(&args[split..]);
    cmd
}

fn rollout(site: &Site) -> Result<Value> {
    site.get("/api/v1/rollout")
}

/// Waits until every node has said it takes updates (its OTA_STATUS).
fn wait_for_nodes(site: &Site, n: usize) -> Result<()> {
    wait_for(Duration::from_secs(30), "every node's OTA status", || {
        let view = rollout(site).ok()?;
        (view["nodes"].as_array()?.len() == n).then_some(())
    })
}

/// The node's firmware version and reset reason as the gateway's registry holds them.
fn node_row(site: &Site, uid: &str) -> Result<(String, Option<String>)> {
    let conn = rusqlite::Connection::open_with_flags(
        site.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT fw_version, reset_reason FROM nodes WHERE uid = ?1",
        [uid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

#[test]
fn a_good_image_goes_canary_then_waves_and_every_node_confirms_on_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image("1.0.0", &[], 1, None)?;
    let next = fleet.image("1.1.0", &[], 1, None)?;
    let mut site = site(&fleet, &factory, 4, tmp.path())?;
    // The factory image too: the one each node would be rolled back to.
    run_ok(outpost(&site, &["firmware", "add"]).arg(&factory))?;
    site.start_gateway()?;
    wait_for_nodes(&site, 4)?;
    site.wait_for_samples(20, Duration::from_secs(30))?;

    // The CLI adds the image to the library, starts the rollout and follows it to its end.
    let out = run_ok(
        outpost(
            &site,
            &[
                "rollout",
                "start",
                "--canary",
                "1",
                "--waves",
                "50%,100%",
                "--soak",
                "2s",
                "--confirm-within",
                "6s",
                "--artifact",
            ],
        )
        .arg(&next),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("started"), "{stdout}");

    let view = rollout(&site)?;
    let r = &view["rollout"];
    ensure!(r["state"] == "done", "{r:#}");
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .context("stages")?
        .iter()
        .map(|s| s["stage"].as_str().unwrap_or("?"))
        .collect();
    ensure!(stages == ["canary", "wave 1", "wave 2"], "{stages:?}");
    for node in r["nodes"].as_array().context("nodes")? {
        ensure!(node["phase"] == "finalized", "{node:#}");
    }
    for spec in &site.specs {
        let (fw, _) = node_row(&site, &spec.uid)?;
        ensure!(fw == "1.1.0", "node {} runs {fw}", spec.uid);
    }
    site.wait_for_samples(40, Duration::from_secs(30))?;
    site.assert_seq_contiguous_per_boot()?;

    // The floor rose with FINALIZE: the factory image is now refused before any transfer.
    let out = outpost(&site, &["rollout", "start", "--artifact"])
        .arg(&factory)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("below-floor"),
        "{stderr}"
    );
    let (status, body) = site.post(
        "/api/v1/rollout",
        &format!(
            "{{\"artifact\": \"{}\"}}",
            factory.file_name().unwrap().to_string_lossy()
        ),
    )?;
    ensure!(
        status == 422 && body["kind"] == "below-floor",
        "{status} {body}"
    );
    Ok(())
}

#[test]
fn an_image_that_never_confirms_halts_the_rollout_at_the_canary_which_reverts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image("1.0.0", &[], 1, None)?;
    let bad = fleet.image("1.2.0", &["--never-confirms"], 1, None)?;
    let crashing = fleet.image("1.2.1", &["--crash-loop"], 1, None)?;
    let mut site = site(&fleet, &factory, 3, tmp.path())?;
    run_ok(outpost(&site, &["firmware", "add"]).arg(&factory))?;
    site.start_gateway()?;
    wait_for_nodes(&site, 3)?;

    for (image, why) in [(&bad, "never confirmed"), (&crashing, "crashed")] {
        let out = outpost(
            &site,
            &[
                "rollout",
                "start",
                "--soak",
                "2s",
                "--confirm-within",
                "5s",
                "--artifact",
            ],
        )
        .arg(image)
        .output()?;
        ensure!(
            !out.status.success(),
            "the rollout of {} did not halt",
            image.display()
        );
        let view = rollout(&site)?;
        let r = &view["rollout"];
        ensure!(r["state"] == "halted" && r["stage"] == "canary", "{r:#}");
        let halt = r["halt_reason"].as_str().unwrap_or_default();
        ensure!(halt.contains(why), "{halt}");
        let nodes = r["nodes"].as_array().context("nodes")?;
        let canary: Vec<&Value> = nodes.iter().filter(|n| n["stage"] == "canary").collect();
        ensure!(canary.len() == 1, "{nodes:#?}");
        let canary_uid = canary[0]["uid"].as_str().context("uid")?;
        // Every other node was never touched.
        for node in nodes.iter().filter(|n| n["uid"] != canary_uid) {
            ensure!(
                matches!(node["phase"].as_str(), Some("pending" | "aborted")),
                "{node:#}"
            );
            ensure!(node["attempts"] == 0, "{node:#}");
        }
        // The canary is back on its old image and says why it rebooted.
        let (fw, reset) = wait_for(
            Duration::from_secs(20),
            "the canary's revert report",
            || {
                let row = node_row(&site, canary_uid).ok()?;
                (row.1.as_deref() == Some("ota_revert")).then_some(row)
            },
        )?;
        ensure!(
            fw == "1.0.0" && reset.as_deref() == Some("ota_revert"),
            "{fw} {reset:?}"
        );
        for spec in site.specs.iter().filter(|s| s.uid != canary_uid) {
            ensure!(node_row(&site, &spec.uid)?.0 == "1.0.0");
        }
    }
    site.assert_seq_contiguous_per_boot()?;
    Ok(())
}

#[test]
fn images_that_do_not_verify_are_refused_before_any_transfer_with_their_reason() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image("1.0.0", &[], 1, None)?;
    let mut site = site(&fleet, &factory, 1, tmp.path())?;
    site.start_gateway()?;
    wait_for_nodes(&site, 1)?;

    // Signed by another fleet's key.
    let stranger_dir = tmp.path().join("stranger");
    run_ok(
        Command::new(bin("outpost"))
            .args(["firmware", "keygen", "--out"])
            .arg(&stranger_dir),
    )?;
    let forged = fleet.image("1.3.0", &[], 1, Some(&stranger_dir.join("firmware.key")))?;
    // For another hardware revision.
    let other_board = fleet.image("1.4.0", &[], 2, None)?;
    // Truncated after signing.
    let truncated = fleet.image("1.5.0", &[], 1, None)?;
    let bytes = std::fs::read(&truncated)?;
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000])?;

    for (image, kind) in [
        (&forged, "bad-signature"),
        (&other_board, "wrong-hardware"),
        (&truncated, "damaged"),
    ] {
        // The CLI says why.
        let out = outpost(&site, &["rollout", "start", "--artifact"])
            .arg(image)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(kind),
            "{}: {stderr}",
            image.display()
        );
        // The API says why, as a name a script can use.
        let mut bundle = std::fs::read(format!("{}.sig", image.display()))?;
        bundle.extend(std::fs::read(image)?);
        let (status, body) = post_bytes(&site, "/api/v1/firmware", &bundle)?;
        if kind == "wrong-hardware" {
            // Signed for a board the library takes; the rollout refuses it for these nodes.
            ensure!(status == 201 || status == 409, "{status} {body}");
            let (status, body) = site.post(
                "/api/v1/rollout",
                &format!(
                    "{{\"artifact\": \"{}\"}}",
                    image.file_name().unwrap().to_string_lossy()
                ),
            )?;
            ensure!(status == 422 && body["kind"] == kind, "{status} {body}");
        } else {
            ensure!(status == 422 && body["kind"] == kind, "{status} {body}");
        }
    }
    // Nothing went to the node: it never heard an offer.
    let view = rollout(&site)?;
    ensure!(view["rollout"].is_null(), "{view:#}");
    ensure!(view["nodes"][0]["phase"] == "idle", "{view:#}");
    Ok(())
}

/// POST of raw bytes with the technician token.
fn post_bytes(site: &Site, path: &str, body: &[u8]) -> Result<(u16, Value)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(site.api)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        site.api,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let status = String::from_utf8_lossy(&response[..end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    if status == 0 {
        bail!("no status");
    }
    Ok((
        status,
        serde_json::from_slice(&response[end + 4..]).unwrap_or_default(),
    ))
}

/// Flash operations at which a node's update reached each phase, from the lines
/// `outpost-node-sim` writes on stderr ("ota phase P at flash operation N"), in order.
fn phase_ops(log: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("outpost-node-sim: ota phase ")?;
            let (phase, ops) = rest.split_once(" at flash operation ")?;
            Some((phase.to_owned(), ops.trim().parse().ok()?))
        })
        .collect())
}

fn op_at(ops: &[(String, u64)], phase: &str) -> Result<u64> {
    ops.iter()
        .find(|(p, _)| p == phase)
        .map(|&(_, n)| n)
        .with_context(|| format!("no phase {phase} in {ops:?}"))
}

#[test]
fn power_cuts_at_every_stage_and_a_gateway_restart_mid_rollout_end_with_every_node_updated()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image_sized("1.0.0", "128K")?;
    let first = fleet.image_sized("1.1.0", "128K")?;
    let next = fleet.image_sized("1.2.0", "128K")?;
    let mut site = site(&fleet, &factory, 6, tmp.path())?;
    // The nodes' stderr (kept where OUTPOST_E2E_LOGS says, to look into a failure).
    let logs =
        std::env::var_os("OUTPOST_E2E_LOGS").map_or_else(|| tmp.path().join("logs"), PathBuf::from);
    std::fs::create_dir_all(&logs)?;
    for (i, spec) in site.specs.iter_mut().enumerate() {
        spec.stderr = Some(logs.join(format!("node{i}.log")));
    }
    for i in 0..site.specs.len() {
        site.nodes[i] = Some(site.spawn_node(i)?);
    }
    site.start_gateway()?;
    wait_for_nodes(&site, 6)?;

    // A targeted update of node 0 alone, through the same path: where each phase falls in the
    // flash operations of an update, to aim the power cuts with.
    let uid0 = site.specs[0].uid.clone();
    run_ok(
        outpost(
            &site,
            &[
                "rollout",
                "start",
                "--soak",
                "0s",
                "--confirm-within",
                "4s",
                "--node",
                &uid0,
                "--artifact",
            ],
        )
        .arg(&first),
    )?;
    ensure!(node_row(&site, &uid0)?.0 == "1.1.0");
    for spec in &site.specs[1..] {
        ensure!(
            node_row(&site, &spec.uid)?.0 == "1.0.0",
            "only node 0 was updated"
        );
    }
    let ops = phase_ops(&logs.join("node0.log"))?;
    let receiving = op_at(&ops, "receiving")?;
    let verified = op_at(&ops, "verified")?;
    let installing = op_at(&ops, "installing")?;
    let trial = op_at(&ops, "trial")?;
    let confirmed = op_at(&ops, "confirmed")?;
    ensure!(
        receiving < verified && verified <= installing && installing < trial && trial < confirmed,
        "{ops:?}"
    );
    // Nodes 1–5 lose power once each, torn in the middle of an operation: writing the image,
    // its last write before it verifies, marking it for the swap, swapping, and confirming on
    // its first boot.
    let cuts = [
        ("write", receiving + (verified - receiving) / 2),
        ("verify", verified - 1),
        ("mark", installing - 1),
        ("swap", installing + (trial - installing) / 2),
        ("first boot", confirmed - 1),
    ];
    let base_args: Vec<Vec<String>> = site.specs.iter().map(|s| s.sim_args.clone()).collect();
    for (k, &(_, after)) in cuts.iter().enumerate() {
        let i = k + 1;
        if let Some(mut node) = site.nodes[i].take() {
            node.terminate(Duration::from_secs(10))?;
        }
        site.specs[i]
            .sim_args
            .extend(["--power-cut-after-ops".into(), after.to_string()]);
        site.specs[i].stderr = Some(logs.join(format!("node{i}-cut.log")));
        site.nodes[i] = Some(site.spawn_node(i)?);
    }
    wait_for_nodes(&site, 6)?;

    // Every node, canary then the rest; powered on again after its cut, the gateway restarted
    // once in the middle of the wave's transfers. The image goes into the library by the API.
    let mut bundle = std::fs::read(format!("{}.sig", next.display()))?;
    bundle.extend(std::fs::read(&next)?);
    let (status, body) = post_bytes(&site, "/api/v1/firmware", &bundle)?;
    ensure!(status == 201, "{status} {body}");
    let (status, body) = site.post(
        "/api/v1/rollout",
        &format!(
            "{{\"artifact\": \"{}\", \"canary\": 1, \"waves\": \"100%\", \"soak\": \"2s\", \
             \"confirm_within\": \"6s\"}}",
            next.file_name().unwrap().to_string_lossy()
        ),
    )?;
    ensure!(status == 201, "{status} {body}");
    let mut cut_seen = [false; 6];
    let mut gateway_restarted = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let end = loop {
        ensure!(
            std::time::Instant::now() < deadline,
            "{:#}",
            rollout(&site)?
        );
        for i in 1..6 {
            let exited = site.nodes[i].as_mut().and_then(|n| n.try_wait());
            if let Some(exit) = exited {
                ensure!(exit.code() == Some(75), "node {i} exited with {exit:?}");
                ensure!(!cut_seen[i], "node {i} lost power twice");
                cut_seen[i] = true;
                // Power back on: the same flash, no more cuts.
                site.specs[i].sim_args = base_args[i].clone();
                site.specs[i].stderr = Some(logs.join(format!("node{i}-after.log")));
                site.nodes[i] = Some(site.spawn_node(i)?);
            }
        }
        let view = rollout(&site)?;
        let r = &view["rollout"];
        if !gateway_restarted
            && r["stage"] == "wave 1"
            && view["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| n["flashed"].as_u64().unwrap_or(0) > 0))
        {
            site.restart_gateway()?;
            gateway_restarted = true;
        }
        if matches!(r["state"].as_str(), Some("done" | "halted")) {
            break r.clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(end["state"] == "done", "{end:#}");
    ensure!(
        gateway_restarted,
        "the wave ended before the gateway could be restarted"
    );
    for (k, (stage, _)) in cuts.iter().enumerate() {
        ensure!(cut_seen[k + 1], "the power cut in {stage} never came");
    }
    for node in end["nodes"].as_array().context("nodes")? {
        ensure!(node["phase"] == "finalized", "{node:#}");
    }
    for spec in &site.specs {
        ensure!(
            node_row(&site, &spec.uid)?.0 == "1.2.0",
            "node {} not on 1.2.0",
            spec.uid
        );
    }
    // Cut while writing, the node resumed where its flash was: after power-on it wrote less
    // than a whole image.
    let after = phase_ops(&logs.join("node1-after.log"))?;
    let rewritten = op_at(&after, "verified")?;
    ensure!(
        rewritten < verified - receiving,
        "after the cut node 1 did {rewritten} flash operations to verify; a whole image takes {}",
        verified - receiving
    );
    Ok(())
}

/// The cloud side of the broker path: an image comes as a bundle on `cmd/firmware-add` (a forged
/// one is refused by name); a signed `rollout-start` on `outpost/{id}/cmd/…` runs the same
/// rollout as the CLI; its result comes back on the command's result topic and every event
/// and progress step on `outpost/{id}/ota` at once; the same command again is a replay; a halt
/// with nothing to halt says so.
#[test]
fn a_signed_remote_command_runs_a_rollout_whose_events_reach_the_broker_at_once() -> Result<()> {
    use outpost_e2e::broker::{Broker, Cloud, Pki};
    let tmp = tempfile::tempdir()?;
    let pki = Pki::new(&tmp.path().join("pki"))?;
    let broker = Broker::start(&tmp.path().join("broker"), &pki)?;
    let cloud = Cloud::connect(&broker, &pki)?;
    cloud.subscribe("outpost/e2e-site/cmd/result/+")?;
    cloud.subscribe("outpost/e2e-site/ota")?;
    run_ok(
        Command::new(bin("outpost-sign"))
            .args(["keygen", "--role", "operator", "--out"])
            .arg(tmp.path().join("operator")),
    )?;
    let operator = tmp.path().join("operator/operator.key");
    let files = pki.client("e2e-site")?;
    let uplink = format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n\n\
         [commands]\noperator_keys = [\"{}\"]\nmax_lifetime = \"10m\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        tmp.path().join("operator/operator.pub").display()
    );
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image("1.0.0", &[], 1, None)?;
    let next = fleet.image("1.1.0", &[], 1, None)?;
    let stranger = tmp.path().join("stranger");
    run_ok(
        Command::new(bin("outpost"))
            .args(["firmware", "keygen", "--out"])
            .arg(&stranger),
    )?;
    let forged = fleet.image("1.3.0", &[], 1, Some(&stranger.join("firmware.key")))?;
    let mut site = site_with(&fleet, &factory, 2, tmp.path(), &uplink)?;
    site.start_gateway()?;
    wait_for_nodes(&site, 2)?;
    wait_for(Duration::from_secs(30), "the command topic", || {
        (site.get("/api/v1/status").ok()?["uplink"]["commands"] == "subscribed").then_some(())
    })?;
    // The images come as bundles on the command topic, signed by the fleet key, not by an
    // operator: that signature decides. Each is answered on cmd/result/firmware-….
    let firmware_results = || -> Vec<Value> {
        cloud
            .messages()
            .iter()
            .filter(|m| m.topic.starts_with("outpost/e2e-site/cmd/result/firmware-"))
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    };
    for (n, image) in [&next, &forged].into_iter().enumerate() {
        let mut bundle = std::fs::read(format!("{}.sig", image.display()))?;
        bundle.extend(std::fs::read(image)?);
        cloud.publish(
            "outpost/e2e-site/cmd/firmware-add",
            bundle,
            rumqttc::QoS::AtLeastOnce,
            false,
        )?;
        wait_for(Duration::from_secs(30), "the firmware-add result", || {
            (firmware_results().len() > n).then_some(())
        })?;
    }
    let taken = firmware_results();
    ensure!(
        taken[0]["outcome"] == "ok" && taken[0]["result"]["version"] == "1.1.0",
        "{taken:?}"
    );
    ensure!(
        taken[1]["outcome"] == "failed"
            && taken[1]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("bad-signature")),
        "{taken:?}"
    );
    let library = site.get("/api/v1/firmware")?;
    let sha = library
        .as_array()
        .and_then(|images| images.iter().find(|i| i["version"] == "1.1.0"))
        .and_then(|i| i["sha256"].as_str())
        .context("the image's sha256 in the library")?
        .to_owned();

    let sign = |request: &str, verb: &str, args: &[String]| -> Result<Vec<u8>> {
        Ok(run_ok(
            Command::new(bin("outpost-sign"))
                .args(["command", "--key"])
                .arg(&operator)
                .args(["--gateway", "e2e-site", "--request", request, verb])
                .args(args),
        )?
        .stdout)
    };
    let result = |request: &str, n: usize| -> Result<Value> {
        let topic = format!("outpost/e2e-site/cmd/result/{request}");
        wait_for(
            Duration::from_secs(60),
            &format!("result {n} of {request}"),
            || {
                cloud
                    .messages()
                    .iter()
                    .filter(|m| m.topic == topic)
                    .nth(n - 1)
                    .and_then(|m| serde_json::from_slice(&m.payload).ok())
            },
        )
    };
    let start = sign(
        "r-rollout-1",
        "rollout-start",
        &[
            format!("artifact={sha}"),
            "canary=1".into(),
            "waves=100%".into(),
            "soak=1s".into(),
            "confirm-within=6s".into(),
        ],
    )?;
    cloud.publish(
        "outpost/e2e-site/cmd/rollout-start",
        start.clone(),
        rumqttc::QoS::AtLeastOnce,
        false,
    )?;
    let started = result("r-rollout-1", 1)?;
    ensure!(started["outcome"] == "ok", "{started}");
    ensure!(started["result"]["version"] == "1.1.0", "{started}");

    // Every event and progress step, as they happen.
    let ota_messages = || -> Vec<Value> {
        cloud
            .messages()
            .iter()
            .filter(|m| m.topic == "outpost/e2e-site/ota")
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    };
    wait_for(
        Duration::from_secs(90),
        "the rollout's end on the broker",
        || {
            ota_messages()
                .iter()
                .any(|m| m["event"] == "done")
                .then_some(())
        },
    )?;
    let events = ota_messages();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for kind in [
        "started",
        "stage_started",
        "transferring",
        "progress",
        "confirmed",
        "done",
        "finalized",
    ] {
        ensure!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    ensure!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["done"] == e["total"]),
        "no progress step at the end of an image: {events:?}"
    );
    for spec in &site.specs {
        ensure!(node_row(&site, &spec.uid)?.0 == "1.1.0");
    }

    // The same command again is a replay; a halt with no rollout running says so.
    cloud.publish(
        "outpost/e2e-site/cmd/rollout-start",
        start,
        rumqttc::QoS::AtLeastOnce,
        false,
    )?;
    let again = result("r-rollout-1", 2)?;
    ensure!(
        again["outcome"] == "refused" && again["reason"] == "replayed",
        "{again}"
    );
    let halt = sign("r-halt-1", "rollout-halt", &["rollback=no".into()])?;
    cloud.publish(
        "outpost/e2e-site/cmd/rollout-halt",
        halt,
        rumqttc::QoS::AtLeastOnce,
        false,
    )?;
    let halted = result("r-halt-1", 1)?;
    ensure!(halted["outcome"] != "ok", "{halted}");
    drop(broker);
    Ok(())
}
