use std::time::Duration;

use outpost_proto::Millis;
use proptest::prelude::*;
use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData as _};

use super::*;

const TEMPLATE: &str = "OutpostGateway";

fn settings() -> ProvisioningSettings {
    ProvisioningSettings {
        template: TEMPLATE.into(),
        serial_number: "SN-0042".into(),
        response_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            first: Duration::from_secs(5),
            max: Duration::from_secs(600),
        },
    }
}

/// A test CA that signs whatever key it is given.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Ca {
            issuer: Issuer::new(params, KeyPair::generate().unwrap()),
        }
    }

    fn certificate_for(&self, key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.signed_by(key, &self.issuer).unwrap().pem()
    }
}

struct Gateway {
    key: KeyPair,
    other: KeyPair,
    ca: Ca,
}

impl Gateway {
    fn new() -> Gateway {
        Gateway {
            key: KeyPair::generate().unwrap(),
            other: KeyPair::generate().unwrap(),
            ca: Ca::new(),
        }
    }

    fn provisioner(&self, now: Millis) -> Provisioner {
        Provisioner::new(
            settings(),
            Purpose::Claim,
            self.key.der_bytes().to_vec(),
            "-----BEGIN CERTIFICATE REQUEST-----\nTEST\n-----END CERTIFICATE REQUEST-----\n".into(),
            7,
            now,
        )
    }

    fn accepted(&self, ours: bool, id: &str) -> Vec<u8> {
        let key = if ours { &self.key } else { &self.other };
        serde_json::json!({
            "certificatePem": self.ca.certificate_for(key, "gw-1"),
            "certificateId": id,
            "certificateOwnershipToken": format!("token-{id}"),
        })
        .to_string()
        .into_bytes()
    }
}

fn drain(p: &mut Provisioner) -> Vec<Action> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

fn events(p: &mut Provisioner) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn published(actions: &[Action]) -> Vec<(String, serde_json::Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload } => {
                Some((topic.clone(), serde_json::from_slice(payload).unwrap()))
            }
            _ => None,
        })
        .collect()
}

/// Connects and grants the four subscriptions.
fn up_to_csr(p: &mut Provisioner, now: Millis) -> Vec<Action> {
    assert_eq!(drain(p), [Action::Connect]);
    p.handle_connected(now);
    let subscribes = drain(p);
    assert_eq!(
        subscribes,
        [
            Action::Subscribe("$aws/certificates/create-from-csr/json/accepted".into()),
            Action::Subscribe("$aws/certificates/create-from-csr/json/rejected".into()),
            Action::Subscribe(format!(
                "$aws/provisioning-templates/{TEMPLATE}/provision/json/accepted"
            )),
            Action::Subscribe(format!(
                "$aws/provisioning-templates/{TEMPLATE}/provision/json/rejected"
            )),
        ]
    );
    for _ in 0..3 {
        p.handle_subscribed(now, true);
        assert_eq!(drain(p), [], "nothing is published before every SUBACK");
    }
    p.handle_subscribed(now, true);
    drain(p)
}

#[test]
fn a_claim_gets_a_certificate_for_its_own_key_and_learns_its_thing_name() {
    let gw = Gateway::new();
    let t0 = Millis(1_000);
    let mut p = gw.provisioner(t0);
    let csr = published(&up_to_csr(&mut p, t0));
    assert_eq!(csr.len(), 1);
    assert_eq!(csr[0].0, "$aws/certificates/create-from-csr/json");
    assert!(
        csr[0].1["certificateSigningRequest"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE REQUEST")
    );
    assert_eq!(p.status().state, State::AwaitingCertificate);

    p.handle_message(
        t0,
        "$aws/certificates/create-from-csr/json/accepted",
        &gw.accepted(true, "c1"),
    );
    let register = published(&drain(&mut p));
    assert_eq!(
        register,
        [(
            format!("$aws/provisioning-templates/{TEMPLATE}/provision/json"),
            serde_json::json!({
                "certificateOwnershipToken": "token-c1",
                "parameters": {"SerialNumber": "SN-0042"},
            })
        )]
    );
    p.handle_message(
        t0,
        &format!("$aws/provisioning-templates/{TEMPLATE}/provision/json/accepted"),
        br#"{"thingName":"gw-1","deviceConfiguration":{"site":"north"}}"#,
    );
    let store = drain(&mut p);
    let [Action::StoreCertificate(issued)] = store.as_slice() else {
        panic!("expected a store, got {store:?}");
    };
    assert_eq!(issued.certificate_id, "c1");
    assert_eq!(issued.thing_name.as_deref(), Some("gw-1"));
    assert_eq!(issued.device_configuration["site"], "north");
    let info = CertificateInfo::from_pem(&issued.certificate_pem).unwrap();
    assert_eq!(info.public_key, gw.key.der_bytes());
    assert_eq!(p.poll_timeout(), None, "storing waits for the adapter only");

    p.handle_stored(t0, Ok(issued));
    assert!(p.is_done());
    assert_eq!(drain(&mut p), [Action::Disconnect]);
    assert!(events(&mut p).contains(&Event::Provisioned {
        certificate_id: "c1".into(),
        thing_name: Some("gw-1".into())
    }));
    assert_eq!(p.status().attempts, 1);
    assert_eq!(p.status().last_error, None);
}

#[test]
fn a_certificate_for_another_key_is_ignored_and_the_exchange_waits_for_its_own() {
    let gw = Gateway::new();
    let t0 = Millis(0);
    let mut p = gw.provisioner(t0);
    up_to_csr(&mut p, t0);
    p.handle_message(
        t0,
        "$aws/certificates/create-from-csr/json/accepted",
        &gw.accepted(false, "theirs"),
    );
    assert_eq!(drain(&mut p), [], "no registration with another's token");
    assert_eq!(p.status().foreign_certificates, 1);
    assert_eq!(p.status().state, State::AwaitingCertificate);
    p.handle_message(
        t0 + 10,
        "$aws/certificates/create-from-csr/json/accepted",
        &gw.accepted(true, "ours"),
    );
    let register = published(&drain(&mut p));
    assert_eq!(register[0].1["certificateOwnershipToken"], "token-ours");
}

#[test]
fn a_rejection_is_reported_with_what_to_fix_and_retried_with_growing_capped_waits() {
    let gw = Gateway::new();
    let mut now = Millis(0);
    let mut p = gw.provisioner(now);
    let mut waits = Vec::new();
    for attempt in 1..=12u32 {
        up_to_csr(&mut p, now);
        p.handle_message(
            now,
            "$aws/certificates/create-from-csr/json/accepted",
            &gw.accepted(true, "c"),
        );
        drain(&mut p);
        p.handle_message(
            now,
            &format!("$aws/provisioning-templates/{TEMPLATE}/provision/json/rejected"),
            br#"{"statusCode":400,"errorCode":"InvalidParameters","errorMessage":"Serial SN-0042 is not on the allow list"}"#,
        );
        assert_eq!(drain(&mut p), [Action::Disconnect]);
        let error = p.status().last_error.clone().unwrap();
        assert!(error.contains("400 InvalidParameters"), "{error}");
        assert!(error.contains("not on the allow list"), "{error}");
        assert!(error.contains("serial_number"), "{error}");
        assert_eq!(p.status().attempts, attempt);
        let at = p.status().next_attempt_at.unwrap();
        assert_eq!(p.poll_timeout(), Some(at));
        waits.push(at - now);
        // Not before its time.
        p.handle_timeout(Millis(at.0 - 1));
        assert_eq!(drain(&mut p), []);
        now = at;
        p.handle_timeout(now);
    }
    assert!(waits[0] >= 2_500 && waits[0] <= 5_000, "{waits:?}");
    assert!(waits[3] >= 20_000, "doubling: {waits:?}");
    assert!(waits.iter().all(|&w| w <= 600_000), "capped: {waits:?}");
    assert!(waits[11] >= 300_000, "reaches the cap: {waits:?}");
}

#[test]
fn silence_after_the_csr_times_out_and_says_what_may_be_missing() {
    let gw = Gateway::new();
    let mut p = gw.provisioner(Millis(0));
    up_to_csr(&mut p, Millis(0));
    p.handle_timeout(Millis(29_999));
    assert_eq!(drain(&mut p), []);
    p.handle_timeout(Millis(30_000));
    assert_eq!(drain(&mut p), [Action::Disconnect]);
    let error = p.status().last_error.clone().unwrap();
    assert!(
        error.contains("no answer to the certificate signing request"),
        "{error}"
    );
    assert!(
        error.contains("request within 30s: is a provisioning service"),
        "{error}"
    );
    assert_eq!(p.status().state, State::Waiting);
}

#[test]
fn a_refused_subscription_or_connection_fails_the_attempt_naming_the_credential() {
    let gw = Gateway::new();
    let mut p = gw.provisioner(Millis(0));
    drain(&mut p);
    p.handle_connection_lost(Millis(5), "TLS with broker x failed: certificate revoked");
    assert_eq!(drain(&mut p), [Action::Disconnect]);
    let error = p.status().last_error.clone().unwrap();
    assert!(
        error.contains("cannot connect with the claim certificate"),
        "{error}"
    );
    assert!(error.contains("certificate revoked"), "{error}");

    let at = p.poll_timeout().unwrap();
    p.handle_timeout(at);
    assert_eq!(drain(&mut p), [Action::Connect]);
    p.handle_connected(at);
    drain(&mut p);
    p.handle_subscribed(at, true);
    p.handle_subscribed(at, false);
    assert_eq!(
        drain(&mut p),
        [Action::Disconnect],
        "no CSR after a refusal"
    );
    let error = p.status().last_error.clone().unwrap();
    assert!(error.contains("refused to subscribe"), "{error}");
}

#[test]
fn rejections_are_explained_by_status_code() {
    let explain = |status: u16, what: &str| {
        rejection(
            what,
            format!(r#"{{"statusCode":{status},"errorCode":"E","errorMessage":"m"}}"#).as_bytes(),
            "T",
            Purpose::Claim,
        )
    };
    assert!(explain(403, "provisioning template").contains("claim certificate may not"));
    assert!(explain(404, "provisioning template").contains("no template `T`"));
    assert!(explain(400, "certificate signing request").contains("CSR was refused"));
    assert!(explain(503, "provisioning template").contains("retrying"));
    assert!(rejection("x", b"not json", "T", Purpose::Claim).contains("unreadable"));
}

#[test]
fn a_thing_name_that_cannot_be_a_gateway_id_is_refused() {
    let gw = Gateway::new();
    let mut p = gw.provisioner(Millis(0));
    up_to_csr(&mut p, Millis(0));
    p.handle_message(
        Millis(0),
        "$aws/certificates/create-from-csr/json/accepted",
        &gw.accepted(true, "c"),
    );
    drain(&mut p);
    p.handle_message(
        Millis(0),
        &format!("$aws/provisioning-templates/{TEMPLATE}/provision/json/accepted"),
        br#"{"thingName":"a/b#"}"#,
    );
    assert_eq!(drain(&mut p), [Action::Disconnect]);
    assert!(p.status().last_error.clone().unwrap().contains("ThingName"));
}

#[test]
fn certificate_info_reads_subject_issuer_validity_and_fingerprint() {
    let gw = Gateway::new();
    let pem = gw.ca.certificate_for(&gw.key, "gw-7");
    let info = CertificateInfo::from_pem(&pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("gw-7"));
    assert!(info.subject.contains("CN=gw-7"), "{}", info.subject);
    assert!(info.issuer.contains("CN=test CA"), "{}", info.issuer);
    assert!(info.not_after_unix_s > info.not_before_unix_s);
    assert_eq!(info.sha256_fingerprint.len(), 64);
    assert!(CertificateInfo::from_pem("hello").is_err());
    assert!(CertificateInfo::from_pem(&gw.key.serialize_pem()).is_err());
}

#[test]
fn renewal_is_due_a_window_before_expiry_but_not_before_half_the_life() {
    let day = 86_400;
    let window = Duration::from_secs(30 * day as u64);
    assert_eq!(renewal_due_at(0, 365 * day, window), 335 * day);
    // A one-hour certificate with a 30-day window: renewed at half-life, not at once.
    assert_eq!(renewal_due_at(1_000, 1_000 + 3_600, window), 1_000 + 1_800);
}

#[test]
fn template_names_are_checked() {
    assert!(check_template_name("OutpostGateway_v2").is_ok());
    assert!(check_template_name("").is_err());
    assert!(check_template_name("a/b").is_err());
    assert!(check_template_name("+").is_err());
}

#[test]
fn progress_steps_alone_end_with_the_certificate_stored() {
    // The proptests' `Step::Progress` reaches the end, so their runs cover storing.
    let gw = Gateway::new();
    let own = gw.accepted(true, "ours");
    let topics = Topics::new(TEMPLATE);
    let now = Millis(0);
    let mut p = gw.provisioner(now);
    let mut pending = None;
    for _ in 0..10 {
        match progress(&p, now, Step::Progress) {
            Step::Connected => p.handle_connected(now),
            Step::Subscribed(ok) => p.handle_subscribed(now, ok),
            Step::OwnCertificate => p.handle_message(now, &topics.create_accepted, &own),
            Step::Registered => p.handle_message(now, &topics.provision_accepted, b"{}"),
            Step::Stored(_) => {
                let issued: Box<Issued> = pending.take().unwrap();
                p.handle_stored(now, Ok(&issued));
            }
            other => panic!("unexpected {other:?}"),
        }
        while let Some(action) = p.poll_action() {
            if let Action::StoreCertificate(issued) = action {
                pending = Some(issued);
            }
        }
        if p.is_done() {
            return;
        }
    }
    panic!("not done: {:?}", p.status());
}

/// What can happen to an exchange, in any order.
#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Connected,
    Subscribed(bool),
    OwnCertificate,
    ForeignCertificate,
    CertificateRejected(u16),
    Registered,
    RegistrationRejected(u16),
    Garbage(bool),
    Lost,
    Stored(bool),
    /// Whatever the exchange waits for next, going well (so that runs reach the end often).
    Progress,
}

/// [`Step::Progress`] as the step the exchange waits for; any other step as it is.
fn progress(p: &Provisioner, now: Millis, step: Step) -> Step {
    if !matches!(step, Step::Progress) {
        return step;
    }
    match p.status().state {
        State::Waiting | State::Done => {
            Step::Advance(p.poll_timeout().map_or(1_000, |at| at - now))
        }
        State::Connecting => Step::Connected,
        State::Subscribing => Step::Subscribed(true),
        State::AwaitingCertificate => Step::OwnCertificate,
        State::AwaitingRegistration => Step::Registered,
        State::Storing => Step::Stored(true),
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Progress),
        1 => (0u64..120_000).prop_map(Step::Advance),
        1 => Just(Step::Connected),
        1 => any::<bool>().prop_map(Step::Subscribed),
        1 => Just(Step::OwnCertificate),
        1 => Just(Step::ForeignCertificate),
        1 => (400u16..600).prop_map(Step::CertificateRejected),
        1 => Just(Step::Registered),
        1 => (400u16..600).prop_map(Step::RegistrationRejected),
        1 => any::<bool>().prop_map(Step::Garbage),
        1 => Just(Step::Lost),
        1 => any::<bool>().prop_map(Step::Stored),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens, in whatever order: only a certificate for the gateway's own key is
    /// stored; nothing is published on an attempt before its four SUBACKs; a registration
    /// carries only the token of an accepted certificate for the own key; every wait after a
    /// failure is within the back-off's bounds; and the exchange always has a next deadline
    /// unless it is storing or done.
    #[test]
    fn only_the_own_certificate_is_stored_and_retries_stay_bounded(
        steps in proptest::collection::vec(step(), 1..80),
        seed in any::<u64>(),
    ) {
        let gw = Gateway::new();
        let own = gw.accepted(true, "ours");
        let foreign = gw.accepted(false, "theirs");
        let topics = Topics::new(TEMPLATE);
        let mut now = Millis(0);
        let mut p = Provisioner::new(
            settings(),
            Purpose::Claim,
            gw.key.der_bytes().to_vec(),
            "CSR".into(),
            seed,
            now,
        );
        let mut pending_store: Option<Box<Issued>> = None;
        let mut last_failures = 0;
        for step in steps {
            let step = progress(&p, now, step);
            match step {
                Step::Advance(ms) => {
                    now = now + ms;
                    p.handle_timeout(now);
                }
                Step::Connected => p.handle_connected(now),
                Step::Subscribed(ok) => p.handle_subscribed(now, ok),
                Step::OwnCertificate => p.handle_message(now, &topics.create_accepted, &own),
                Step::ForeignCertificate => {
                    p.handle_message(now, &topics.create_accepted, &foreign);
                }
                Step::CertificateRejected(code) => p.handle_message(
                    now,
                    &topics.create_rejected,
                    format!(r#"{{"statusCode":{code},"errorMessage":"no"}}"#).as_bytes(),
                ),
                Step::Registered => p.handle_message(
                    now,
                    &topics.provision_accepted,
                    br#"{"thingName":"gw-1"}"#,
                ),
                Step::RegistrationRejected(code) => p.handle_message(
                    now,
                    &topics.provision_rejected,
                    format!(r#"{{"statusCode":{code}}}"#).as_bytes(),
                ),
                Step::Garbage(create) => {
                    let topic = if create { &topics.create_accepted } else { &topics.provision_accepted };
                    p.handle_message(now, topic, b"{not json");
                }
                Step::Lost => p.handle_connection_lost(now, "gone"),
                Step::Progress => {}
                Step::Stored(ok) => {
                    if let Some(issued) = pending_store.take() {
                        if ok {
                            p.handle_stored(now, Ok(&issued));
                        } else {
                            p.handle_stored(now, Err("disk full".into()));
                        }
                    }
                }
            }
            while let Some(action) = p.poll_action() {
                match action {
                    Action::Connect | Action::Subscribe(_) | Action::Disconnect => {}
                    Action::Publish { topic, payload } => {
                        prop_assert!(p.status().attempts > 0);
                        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                        if topic == topics.provision {
                            prop_assert_eq!(&body["certificateOwnershipToken"], "token-ours");
                        } else {
                            prop_assert_eq!(&topic, &topics.create);
                        }
                    }
                    Action::StoreCertificate(issued) => {
                        let info = CertificateInfo::from_pem(&issued.certificate_pem).unwrap();
                        prop_assert_eq!(&info.public_key, &gw.key.der_bytes().to_vec());
                        prop_assert_eq!(&issued.certificate_id, "ours");
                        pending_store = Some(issued);
                    }
                }
            }
            if p.backoff.failures() > last_failures {
                let wait = p.status().next_attempt_at.unwrap() - now;
                prop_assert!(wait >= 2_500, "wait {wait} under half the first");
                prop_assert!(wait <= 600_000, "wait {wait} over the cap");
                prop_assert!(p.status().last_error.is_some());
            }
            last_failures = p.backoff.failures();
            match p.status().state {
                State::Storing | State::Done => prop_assert_eq!(p.poll_timeout(), None),
                _ => prop_assert!(p.poll_timeout().is_some()),
            }
        }
    }

    /// A publish of the CSR only ever follows four granted SUBACKs of the same attempt.
    #[test]
    fn the_csr_is_published_only_after_four_grants_of_the_same_attempt(
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let gw = Gateway::new();
        let mut now = Millis(0);
        let mut p = gw.provisioner(now);
        let mut grants = 0u32;
        let mut connected = false;
        for step in steps {
            let step = progress(&p, now, step);
            let mut granted = None;
            match step {
                Step::Advance(ms) => { now = now + ms; p.handle_timeout(now); }
                Step::Connected => p.handle_connected(now),
                Step::Subscribed(ok) => { granted = Some(ok); p.handle_subscribed(now, ok); }
                Step::Lost => p.handle_connection_lost(now, "gone"),
                _ => {}
            }
            while let Some(action) = p.poll_action() {
                match action {
                    Action::Connect => { grants = 0; connected = false; }
                    Action::Subscribe(_) => connected = true,
                    Action::Publish { .. } => {
                        prop_assert!(connected);
                        prop_assert_eq!(grants + u32::from(granted == Some(true)), 4);
                    }
                    Action::Disconnect => { grants = 0; connected = false; }
                    Action::StoreCertificate(_) => {}
                }
            }
            if granted == Some(true) && p.status().state == State::Subscribing {
                grants += 1;
            }
        }
    }
}
