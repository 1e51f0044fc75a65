//! End-to-end: gateway identity by claim against a real Mosquitto (TLS, client certificates, the
//! certificate's CN as identity, an ACL) and the test provisioning responder
//! (`outpost_e2e::provisioning_responder`), with the real `outpost` binary.
//!
//! The broker's ACL is the one docs/provisioning.md describes: the claim identity (its CN holds
//! a '+', which Mosquitto refuses every `pattern` line to) may use only the fleet-provisioning
//! topics; every provisioned gateway its own `outpost/<CN>/#` and the provisioning topics (to
//! renew); the cloud everything.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::provisioning::CertificateInfo;
use outpost_e2e::broker::{Broker, Cloud, Message, Pki};
use outpost_e2e::provisioning_responder::{Responder, Stage};
use outpost_e2e::{NodeSpec, Proc, Site, bin, wait_for};
use rumqttc::{Event, Incoming, MqttOptions, QoS};

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id
const TEMPLATE: &str = "OutpostE2E";
/// The batch's claim identity: '+' keeps Mosquitto's `pattern` lines away from it.
const CLAIM: &str = "claim+batch-7";

fn acl() -> String {
    format!(
        "# Every provisioned gateway: its own subtree, and the provisioning API to renew.\n\
         pattern readwrite outpost/%u/#\n\
         pattern write $aws/certificates/create-from-csr/json\n\
         pattern read $aws/certificates/create-from-csr/json/+\n\
         pattern write $aws/provisioning-templates/{TEMPLATE}/provision/json\n\
         pattern read $aws/provisioning-templates/{TEMPLATE}/provision/json/+\n\
         \n\
         # The claim: the provisioning API only.\n\
         user {CLAIM}\n\
         topic write $aws/certificates/create-from-csr/json\n\
         topic read $aws/certificates/create-from-csr/json/+\n\
         topic write $aws/provisioning-templates/{TEMPLATE}/provision/json\n\
         topic read $aws/provisioning-templates/{TEMPLATE}/provision/json/+\n\
         \n\
         user cloud\n\
         topic readwrite outpost/#\n\
         topic readwrite $aws/#\n"
    )
}

struct World {
    pki: Arc<Pki>,
    broker: Broker,
    responder: Responder,
    cloud: Cloud,
    site: Site,
    /// The gateway's stdout and stderr, captured.
    log: PathBuf,
}

impl World {
    fn new(dir: &Path, provisioning_keys: &str) -> World {
        let pki = Arc::new(Pki::new(&dir.join("pki")).unwrap());
        let broker = Broker::start_with_acl(&dir.join("broker"), &pki, &acl()).unwrap();
        let responder = Responder::start(&broker, Arc::clone(&pki), TEMPLATE).unwrap();
        let cloud = Cloud::connect(&broker, &pki).unwrap();
        let claim = pki.client(CLAIM).unwrap();
        let config = format!(
            "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\n\
             ca_file = \"{}\"\nkeepalive = \"5s\"\nresend_after = \"20s\"\n\n\
             [uplink.mqtt.provisioning]\nclaim_cert_file = \"{}\"\nclaim_key_file = \"{}\"\n\
             template = \"{TEMPLATE}\"\n{provisioning_keys}",
            broker.port(),
            claim.ca.display(),
            claim.cert.display(),
            claim.key.display(),
        );
        let specs = vec![NodeSpec {
            rate_hz: 20.0,
            ..NodeSpec::new(0)
        }];
        let site = Site::with_config(specs, &config).unwrap();
        let log = dir.join("gateway.log");
        World {
            pki,
            broker,
            responder,
            cloud,
            site,
            log,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.site.dir.path().join("data/identity/gateway.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.site.dir.path().join("data/identity/gateway.key")
    }

    /// Starts the gateway with its stdout and stderr appended to [`World::log`].
    fn start_gateway(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin("outpost"));
        cmd.arg("run")
            .arg("--config")
            .arg(self.site.config_path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        self.site.gateway = Some(Proc::spawn("gateway", &mut cmd).unwrap());
        wait_for(Duration::from_secs(20), "the gateway's API", || {
            self.site.get("/api/v1/status").ok()
        })
        .unwrap();
    }

    fn stop_gateway(&mut self) {
        if let Some(mut gateway) = self.site.gateway.take() {
            gateway.terminate(Duration::from_secs(10)).unwrap();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        self.site.get("/api/v1/status").unwrap()
    }

    /// Waits until the status's `provisioning` satisfies `pred`.
    fn wait_for_provisioning(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(timeout, what, || {
            let status = self.site.get("/api/v1/status").ok()?;
            pred(&status["provisioning"]).then_some(status)
        })
        .unwrap_or_else(|e| panic!("{e:#}\nstatus: {}\n{}", self.status(), self.log()))
    }

    fn identity_show(&self) -> String {
        let output = Command::new(bin("outpost"))
            .args(["identity", "show", "--config"])
            .arg(self.site.config_path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap() + &String::from_utf8_lossy(&output.stderr)
    }
}

fn batch_topic() -> String {
    format!("outpost/{GATEWAY}/batch")
}

/// Sequence numbers of the batches the cloud received, and their readings' `seq` per source.
fn batches(messages: &[Message]) -> BTreeMap<u64, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    for m in messages.iter().filter(|m| m.topic == batch_topic()) {
        let (Ok(header), Ok(batch)) = (
            outpost_batch::read_header(&m.payload),
            outpost_batch::decode(&m.payload, &outpost_batch::Dictionaries::new()),
        ) else {
            continue;
        };
        let readings = batch
            .readings()
            .filter(|r| r.channel == "seq")
            .map(|r| (r.source.to_owned(), r.value.as_f64() as i64))
            .collect();
        out.insert(header.seq, readings);
    }
    out
}

fn contiguous_upto(batches: &BTreeMap<u64, Vec<(String, i64)>>) -> u64 {
    let mut upto = batches.keys().next().map_or(0, |first| first - 1);
    while batches.contains_key(&(upto + 1)) {
        upto += 1;
    }
    upto
}

/// Asserts that nothing of the private key is in `text`: no PEM armour, no line of its base64,
/// no stretch of its DER in hex.
fn assert_key_absent(key_pem: &str, text: &str, where_: &str) {
    assert!(!text.contains("PRIVATE KEY"), "PEM armour in {where_}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        for chunk in line.as_bytes().chunks(16).filter(|c| c.len() == 16) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(!text.contains(chunk), "key base64 `{chunk}` in {where_}");
        }
    }
    let der = rcgen::KeyPair::from_pem(key_pem).unwrap().serialize_der();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    for chunk in hex.as_bytes().chunks(24).filter(|c| c.len() == 24) {
        let chunk = std::str::from_utf8(chunk).unwrap();
        assert!(!text.to_lowercase().contains(chunk), "key hex in {where_}");
    }
}

#[test]
fn a_fresh_gateway_with_only_a_claim_gets_its_own_identity_its_batches_arrive_and_the_claim_is_refused_telemetry()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), "");
    assert!(!world.cert_path().exists() && !world.key_path().exists());
    let before = world.identity_show();
    assert!(
        before.contains("not provisioned yet; claim certificate present"),
        "{before}"
    );
    assert!(before.contains(&format!("CN={CLAIM}")), "{before}");
    assert!(
        before.contains("private key:") && before.contains("not made yet"),
        "{before}"
    );

    world.start_gateway();
    let things = world
        .responder
        .wait_for_things(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", world.log(), world.broker.log()));
    assert_eq!(
        things[0].name, GATEWAY,
        "the thing is named after the CSR's CN"
    );
    assert_eq!(
        things[0].serial_number, GATEWAY,
        "serial number defaults to the id"
    );

    // Its batches arrive: only its own certificate (CN e2e-site) may publish there.
    let status =
        world.wait_for_provisioning("the gateway provisioned", Duration::from_secs(30), |p| {
            p["state"] == "provisioned"
        });
    wait_for(
        Duration::from_secs(30),
        "batches from the provisioned gateway",
        || {
            let b = batches(&world.cloud.messages());
            (b.len() >= 2).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", world.log(), world.broker.log()));
    let status_after = world.status();
    assert_eq!(status_after["uplink"]["connected"], true, "{status_after}");
    assert_eq!(status_after["uplink"]["refused"], serde_json::Value::Null);
    assert!(status["provisioning"]["not_after_unix_s"].as_i64().unwrap() > 0);
    assert_eq!(status["provisioning"]["thing_name"], GATEWAY);

    // The certificate on disk is for the gateway's own key, issued by the CA, CN = its id.
    let cert_pem = fs::read_to_string(world.cert_path()).unwrap();
    let info = CertificateInfo::from_pem(&cert_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some(GATEWAY));
    assert!(
        info.issuer.contains("Outpost e2e test CA"),
        "{}",
        info.issuer
    );
    let key_pem = fs::read_to_string(world.key_path()).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(info.public_key, rcgen::PublicKeyData::der_bytes(&key));
    let mode = fs::metadata(world.key_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is private to the service user");

    // `outpost identity show` names the certificate and never the key.
    let shown = world.identity_show();
    assert!(shown.contains(&format!("subject: CN={GATEWAY}")), "{shown}");
    assert!(shown.contains("issuer: CN=Outpost e2e test CA"), "{shown}");
    let colon_fingerprint = info
        .sha256_fingerprint
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(shown.contains(&colon_fingerprint), "{shown}");
    assert!(
        shown.contains("not before:") && shown.contains("not after:"),
        "{shown}"
    );
    assert!(shown.contains("present, not shown"), "{shown}");

    // The claim cannot publish telemetry. Mosquitto answers a denied MQTT 3.1.1 QoS 1 publish
    // with a plain PUBACK and drops it, so the PUBACK proves nothing; what proves the refusal:
    // the broker handles a PUBLISH (routes or drops it) before it sends the PUBACK, so anything
    // it routed to the cloud is queued ahead of every later message. The cloud then receives a
    // batch the gateway sealed after that PUBACK, and never the forged one.
    let claim = world.pki.client(CLAIM).unwrap();
    let mut options = MqttOptions::new("claim-probe", "127.0.0.1", world.broker.port());
    options
        .set_transport(claim.transport().unwrap())
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = rumqttc::Client::new(options, 8);
    client
        .publish(
            batch_topic(),
            QoS::AtLeastOnce,
            false,
            b"forged by the claim".to_vec(),
        )
        .unwrap();
    let mut acked = false;
    for event in connection.iter().take(20) {
        match event {
            Ok(Event::Incoming(Incoming::PubAck(_))) => {
                acked = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("the claim's connection failed: {e}"),
        }
    }
    assert!(acked, "Mosquitto PUBACKs a denied 3.1.1 publish");
    let newest_before = *batches(&world.cloud.messages()).keys().last().unwrap();
    wait_for(
        Duration::from_secs(20),
        "a batch sealed after the forged publish",
        || {
            let b = batches(&world.cloud.messages());
            (b.keys().last().copied().unwrap_or(0) >= newest_before + 2).then_some(())
        },
    )
    .unwrap();
    assert!(
        !world
            .cloud
            .messages()
            .iter()
            .any(|m| m.payload == b"forged by the claim"),
        "the claim's publish reached the cloud"
    );
    let broker_log = world.broker.log();
    assert!(
        broker_log.contains("Denied PUBLISH from claim-probe"),
        "{broker_log}"
    );
    // And why: the claim's name holds a '+', so no `pattern` line (outpost/%u/#) applies to it.
    assert!(
        broker_log.contains(&format!(
            "ACL denying access to client with dangerous username \"{CLAIM}\""
        )),
        "{broker_log}"
    );
    drop(client);

    // Restarted, the gateway uses its own certificate and ignores the claim.
    let requests = world.responder.requests().len();
    world.stop_gateway();
    world.start_gateway();
    wait_for(
        Duration::from_secs(20),
        "the restarted gateway connected",
        || (world.status()["uplink"]["connected"] == true).then_some(()),
    )
    .unwrap();
    assert_eq!(
        world.responder.requests().len(),
        requests,
        "no new exchange"
    );
    let log = world.log();
    assert!(
        log.contains("never the claim"),
        "said once provisioned: {log}"
    );
    assert!(
        log.contains("the claim certificate is not used"),
        "said at the next start: {log}"
    );

    // The key was never in the output, the status, the page's data or `identity show`.
    let overview = world
        .site
        .get("/api/v1/overview")
        .ok()
        .map(|v| v.to_string());
    world.stop_gateway();
    assert_key_absent(&key_pem, &world.log(), "the gateway's stdout/stderr");
    assert_key_absent(&key_pem, &status.to_string(), "/api/v1/status");
    assert_key_absent(&key_pem, &status_after.to_string(), "/api/v1/status");
    assert_key_absent(&key_pem, &overview.unwrap_or_default(), "/api/v1/overview");
    assert_key_absent(&key_pem, &shown, "outpost identity show");
}

#[test]
fn a_rejected_provisioning_shows_its_reason_and_is_retried_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(
        dir.path(),
        "response_timeout = \"5s\"\nretry_max = \"10s\"\n",
    );
    world.responder.reject(
        Stage::Template,
        400,
        "InvalidParameters",
        "SerialNumber e2e-site is not on the allow list",
    );
    world.start_gateway();

    let status = world.wait_for_provisioning(
        "the rejection on the status",
        Duration::from_secs(30),
        |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not on the allow list"))
        },
    );
    let p = &status["provisioning"];
    assert_eq!(p["state"], "claiming", "{p}");
    let error = p["last_error"].as_str().unwrap();
    assert!(error.contains("400 InvalidParameters"), "{error}");
    assert!(
        error.contains("uplink.mqtt.provisioning.serial_number"),
        "what to fix: {error}"
    );
    assert!(p["attempts"].as_u64().unwrap() >= 1, "{p}");
    let now_ms = outpost_e2e::unix_ms();
    if p["exchange"] == "waiting" {
        assert!(
            p["next_attempt_unix_ms"].as_i64().unwrap() > now_ms - 1_000,
            "{p}"
        );
    }
    // The technician's page gets the same.
    let overview = world.site.get("/api/v1/overview").unwrap();
    assert!(
        overview["uplink"]["provisioning"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not on the allow list")),
        "{overview}"
    );
    assert!(
        !world.cert_path().exists(),
        "nothing stored after a rejection"
    );

    // Retried with growing, jittered, capped waits: 2.5–5 s, then 5–10 s, then at most 10 s.
    let attempts = wait_for(Duration::from_secs(40), "four template requests", || {
        let times: Vec<Instant> = world
            .responder
            .requests()
            .iter()
            .filter(|r| r.stage == Stage::Template)
            .map(|r| r.at)
            .collect();
        (times.len() >= 4).then_some(times)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", world.log()));
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(2_400), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(4_900), "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(12)),
        "capped at retry_max: {gaps:?}"
    );
    let log = world.log();
    assert!(log.contains("Provisioning failed; retrying."), "{log}");
    assert!(log.contains("not on the allow list"), "{log}");

    // Fixed in the cloud: the next attempt provisions the gateway.
    world.responder.accept();
    let status =
        world.wait_for_provisioning("provisioned after the fix", Duration::from_secs(30), |p| {
            p["state"] == "provisioned"
        });
    assert_eq!(
        status["provisioning"]["last_error"],
        serde_json::Value::Null
    );
    assert!(world.cert_path().exists());
}

#[test]
fn with_no_provisioning_service_answering_the_time_out_says_what_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(
        dir.path(),
        "response_timeout = \"2s\"\nretry_max = \"10s\"\n",
    );
    world.responder.set_silent(true);
    world.start_gateway();
    let status =
        world.wait_for_provisioning("the time-out on the status", Duration::from_secs(30), |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no answer"))
        });
    let error = status["provisioning"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("no answer to the certificate signing request within 2s"),
        "{error}"
    );
    assert!(
        error.contains("is a provisioning service"),
        "what may be missing: {error}"
    );
    assert_eq!(status["provisioning"]["state"], "claiming");
    // The CSR did reach the broker and the (silent) service: the claim's ACL let it through.
    assert!(
        world
            .responder
            .requests()
            .iter()
            .any(|r| r.stage == Stage::CreateFromCsr)
    );
    world.responder.set_silent(false);
    world.wait_for_provisioning(
        "provisioned once the service answers",
        Duration::from_secs(30),
        |p| p["state"] == "provisioned",
    );
}

#[test]
fn renewal_near_expiry_swaps_the_certificate_without_losing_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path(), "");
    // A 40 s certificate: renewal is due at half its life (the 30-day window is longer).
    world.responder.set_lifetime(Duration::from_secs(40));
    world.start_gateway();
    world
        .responder
        .wait_for_things(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", world.log()));
    world.responder.set_lifetime(Duration::from_secs(86_400));
    // The thing is registered just before the gateway stores the certificate.
    world.wait_for_provisioning(
        "the first certificate stored",
        Duration::from_secs(20),
        |p| p["state"] == "provisioned",
    );
    let first = CertificateInfo::from_pem(&fs::read_to_string(world.cert_path()).unwrap()).unwrap();
    let key_before = fs::read(world.key_path()).unwrap();

    // The cloud acknowledges everything contiguous, all along.
    let ack = |upto: u64| {
        world
            .cloud
            .publish(
                &format!("outpost/{GATEWAY}/ack"),
                format!("{{\"upto\": {upto}}}"),
                QoS::AtLeastOnce,
                false,
            )
            .unwrap();
    };
    let mut renewed_at_batch = None;
    wait_for(
        Duration::from_secs(90),
        "renewal, then batches after it",
        || {
            let b = batches(&world.cloud.messages());
            let upto = contiguous_upto(&b);
            if upto > 0 {
                ack(upto);
            }
            if renewed_at_batch.is_none() && world.responder.things().len() >= 2 {
                renewed_at_batch = Some(b.keys().last().copied().unwrap_or(0));
            }
            let after = renewed_at_batch?;
            (upto >= after + 5).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", world.log(), world.broker.log()));

    let things = world.responder.things();
    assert_eq!(things[1].name, GATEWAY, "the same thing, a new certificate");
    assert_ne!(things[0].certificate_id, things[1].certificate_id);
    let second =
        CertificateInfo::from_pem(&fs::read_to_string(world.cert_path()).unwrap()).unwrap();
    assert_ne!(first.sha256_fingerprint, second.sha256_fingerprint);
    assert!(second.not_after_unix_s > first.not_after_unix_s + 3_600);
    assert_eq!(
        second.public_key, first.public_key,
        "the same key, certified again"
    );
    assert_eq!(fs::read(world.key_path()).unwrap(), key_before);
    let log = world.log();
    assert!(
        log.contains("Certificate renewed; the uplink reconnects with it."),
        "{log}"
    );

    // Nothing lost: batch numbers and the node's samples are contiguous across the swap, and
    // the cloud's acknowledgements after it emptied the outbox up to them.
    let b = batches(&world.cloud.messages());
    let first_seq = *b.keys().next().unwrap();
    let last_seq = *b.keys().last().unwrap();
    assert_eq!(first_seq, 1);
    assert_eq!(
        contiguous_upto(&b),
        last_seq,
        "a batch is missing: {:?}",
        b.keys()
    );
    let mut samples: Vec<i64> = b.values().flatten().map(|(_, seq)| *seq).collect();
    samples.sort_unstable();
    samples.dedup();
    outpost_e2e::assert_contiguous("node 0", &samples, 50);
    let acked = wait_for(
        Duration::from_secs(20),
        "the outbox acknowledged after renewal",
        || {
            let status = world.status();
            let acked = status["uplink"]["acked_upto"].as_u64()?;
            (acked >= renewed_at_batch.unwrap() + 3).then_some(acked)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", world.status()));
    assert!(acked > 0);
    let p = world.status()["provisioning"].clone();
    assert_eq!(p["state"], "provisioned", "{p}");
    assert_eq!(
        p["not_after_unix_s"].as_i64(),
        Some(second.not_after_unix_s),
        "{p}"
    );
}
