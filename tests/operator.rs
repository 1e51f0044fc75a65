//! The cloud's operator side of remote commands, for the suites that send them: operator keys,
//! signed commands (`outpost-sign command`), their results on the broker, the gateway's audit log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use crate::broker::Cloud;
use crate::{Site, bin, run_ok, wait_for};

/// How long a command's result may take.
const RESULT_WITHIN: Duration = Duration::from_secs(60);

/// A key pair of `role` made by `outpost-sign keygen` in `dir`; the secret key's path.
pub fn keygen(dir: &Path, role: &str) -> PathBuf {
    run_ok(
        Command::new(bin("outpost-sign"))
            .args(["keygen", "--role", role, "--out"])
            .arg(dir),
    )
    .unwrap();
    dir.join(format!("{role}.key"))
}

/// A command as an operator signs it: `outpost-sign command`.
pub fn sign(key: &Path, gateway: &str, request: &str, valid_for: &str, args: &[&str]) -> Vec<u8> {
    run_ok(
        Command::new(bin("outpost-sign"))
            .arg("command")
            .arg("--key")
            .arg(key)
            .args(["--gateway", gateway, "--request", request])
            .args(["--valid-for", valid_for])
            .args(args),
    )
    .unwrap()
    .stdout
}

/// The results the cloud received for `request` of `gateway`, in arrival order.
pub fn results(cloud: &Cloud, gateway: &str, request: &str) -> Vec<Value> {
    let topic = format!("outpost/{gateway}/cmd/result/{request}");
    cloud
        .messages()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

/// Publishes `command` on `gateway`'s `verb` topic and waits for the `n`th result of `request`.
pub fn send(
    cloud: &Cloud,
    gateway: &str,
    verb: &str,
    command: &[u8],
    request: &str,
    n: usize,
) -> Value {
    cloud
        .publish(
            &format!("outpost/{gateway}/cmd/{verb}"),
            command.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .unwrap();
    wait_for(RESULT_WITHIN, &format!("result {n} of {request}"), || {
        results(cloud, gateway, request).get(n - 1).cloned()
    })
    .unwrap()
}

/// The gateway's command audit log, newest first: `outpost audit --json`.
pub fn audit(site: &Site) -> Vec<Value> {
    let out = run_ok(
        Command::new(bin("outpost"))
            .args(["audit", "--json", "--limit", "1000", "--config"])
            .arg(site.config_path()),
    )
    .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
