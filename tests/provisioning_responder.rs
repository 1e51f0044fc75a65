//! The cloud's side of fleet provisioning, for the tests: connects to the real Mosquitto as the
//! "cloud" identity and answers the AWS IoT fleet-provisioning MQTT API the way AWS does.
//!
//! - `$aws/certificates/create-from-csr/json`: signs the request's CSR with the test CA
//!   ([`Pki::sign_csr`]; the certificate keeps the CSR's subject and key), answers
//!   `{certificatePem, certificateId, certificateOwnershipToken}` on `…/accepted`.
//! - `$aws/provisioning-templates/{template}/provision/json`: takes an ownership token it
//!   issued (once) and `parameters.SerialNumber`, answers `{thingName, deviceConfiguration}` on
//!   `…/accepted`; the thing is named after the certificate's CN (as an AWS template does with
//!   `AWS::IoT::Certificate::CommonName`).
//! - [`Responder::reject`] makes it answer a stage on `…/rejected` with
//!   `{statusCode, errorCode, errorMessage}` instead, until [`Responder::accept`].
//! - [`Responder::set_silent`] leaves requests unanswered (a service that is down).
//! - [`Responder::set_lifetime`] sets how long the next certificates are valid.
//!
//! Every request is recorded with its arrival time ([`Responder::requests`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS};

use crate::broker::{Broker, Pki};
use crate::wait_for;

pub const CREATE: &str = "$aws/certificates/create-from-csr/json";

/// Which request a rejection answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    CreateFromCsr,
    Template,
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub stage: Stage,
    pub status_code: u16,
    pub error_code: String,
    pub error_message: String,
}

/// One request the responder received.
#[derive(Debug, Clone)]
pub struct Request {
    pub stage: Stage,
    pub at: Instant,
    /// Whether it was answered on `…/accepted`.
    pub accepted: bool,
}

/// A thing the template registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thing {
    pub name: String,
    pub serial_number: String,
    pub certificate_id: String,
}

#[derive(Default)]
struct State {
    /// Requests are recorded and left unanswered (a provisioning service that is down).
    silent: bool,
    reject: Option<Rejection>,
    lifetime: Option<Duration>,
    requests: Vec<Request>,
    /// Ownership token → (certificate id, CN), until used.
    tokens: HashMap<String, (String, String)>,
    things: Vec<Thing>,
    issued: u64,
    errors: Vec<String>,
}

/// The test provisioning service. Stops (disconnects) on drop.
pub struct Responder {
    client: Client,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    /// Connects as "cloud" and serves `template` until dropped. Certificates are valid for a
    /// day unless [`Responder::set_lifetime`] says otherwise.
    pub fn start(broker: &Broker, pki: Arc<Pki>, template: &str) -> Result<Responder> {
        let mut options = MqttOptions::new("outpost-e2e-provisioner", "127.0.0.1", broker.port());
        options
            .set_transport(pki.client("cloud")?.transport()?)
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, connection) = Client::new(options, 64);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let provision = format!("$aws/provisioning-templates/{template}/provision/json");
        let thread = std::thread::Builder::new()
            .name("provisioning-responder".into())
            .spawn({
                let (state, stop, subscribed) = (state.clone(), stop.clone(), subscribed.clone());
                let client = client.clone();
                let provision = provision.clone();
                move || {
                    serve(
                        connection,
                        &client,
                        &pki,
                        &provision,
                        &state,
                        &stop,
                        &subscribed,
                    );
                }
            })?;
        client.subscribe(CREATE, QoS::AtLeastOnce)?;
        client.subscribe(&provision, QoS::AtLeastOnce)?;
        let responder = Responder {
            client,
            state,
            stop,
            thread: Some(thread),
        };
        wait_for(
            Duration::from_secs(10),
            "the responder's subscriptions",
            || subscribed.load(Ordering::SeqCst).then_some(()),
        )
        .with_context(|| broker.log())?;
        Ok(responder)
    }

    /// Answers `stage` with this rejection from now on.
    pub fn reject(&self, stage: Stage, status_code: u16, error_code: &str, error_message: &str) {
        self.state.lock().unwrap().reject = Some(Rejection {
            stage,
            status_code,
            error_code: error_code.into(),
            error_message: error_message.into(),
        });
    }

    /// Leaves requests unanswered (`true`), like a provisioning service that is down, or
    /// answers them again (`false`).
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Accepts again.
    pub fn accept(&self) {
        self.state.lock().unwrap().reject = None;
    }

    /// The next certificates are valid for `lifetime`.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().lifetime = Some(lifetime);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn things(&self) -> Vec<Thing> {
        self.state.lock().unwrap().things.clone()
    }

    /// Requests it could not make sense of, and MQTT errors.
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    /// Waits until `n` things are registered.
    pub fn wait_for_things(&self, n: usize, timeout: Duration) -> Result<Vec<Thing>> {
        wait_for(timeout, "things registered by the responder", || {
            let things = self.things();
            (things.len() >= n).then_some(things)
        })
        .with_context(|| format!("responder errors: {:?}", self.errors()))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    mut connection: Connection,
    client: &Client,
    pki: &Pki,
    provision: &str,
    state: &Mutex<State>,
    stop: &AtomicBool,
    subscribed: &AtomicBool,
) {
    let mut subacks = 0;
    for event in connection.iter() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let publish = match event {
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                subacks += 1;
                if subacks >= 2 {
                    subscribed.store(true, Ordering::SeqCst);
                }
                continue;
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => publish,
            Ok(_) => continue,
            Err(e) => {
                state.lock().unwrap().errors.push(e.to_string());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let (stage, answer_topic) = if publish.topic == CREATE {
            (Stage::CreateFromCsr, CREATE)
        } else if publish.topic == provision {
            (Stage::Template, provision)
        } else {
            continue;
        };
        if state.lock().unwrap().silent {
            state.lock().unwrap().requests.push(Request {
                stage,
                at: Instant::now(),
                accepted: false,
            });
            continue;
        }
        let answer = match answer(stage, &publish.payload, pki, state) {
            Ok(answer) => answer,
            Err(e) => {
                state.lock().unwrap().errors.push(format!("{e:#}"));
                Err(serde_json::json!({
                    "statusCode": 400,
                    "errorCode": "InvalidRequest",
                    "errorMessage": format!("{e:#}"),
                }))
            }
        };
        let accepted = answer.is_ok();
        state.lock().unwrap().requests.push(Request {
            stage,
            at: Instant::now(),
            accepted,
        });
        let (leaf, body) = match answer {
            Ok(body) => ("accepted", body),
            Err(body) => ("rejected", body),
        };
        let _ = client.publish(
            format!("{answer_topic}/{leaf}"),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        );
    }
}

/// The answer to one request: `Ok` for accepted, `Err` for rejected (both as JSON bodies).
fn answer(
    stage: Stage,
    payload: &[u8],
    pki: &Pki,
    state: &Mutex<State>,
) -> Result<Result<serde_json::Value, serde_json::Value>> {
    let request: serde_json::Value = serde_json::from_slice(payload).context("not JSON")?;
    let mut state = state.lock().unwrap();
    if let Some(r) = state.reject.clone().filter(|r| r.stage == stage) {
        return Ok(Err(serde_json::json!({
            "statusCode": r.status_code,
            "errorCode": r.error_code,
            "errorMessage": r.error_message,
        })));
    }
    match stage {
        Stage::CreateFromCsr => {
            let Some(csr) = request["certificateSigningRequest"].as_str() else {
                bail!("no certificateSigningRequest");
            };
            let lifetime = state.lifetime.unwrap_or(Duration::from_secs(86_400));
            let pem = pki.sign_csr(csr, lifetime)?;
            let cn = rcgen::CertificateSigningRequestParams::from_pem(csr)?
                .params
                .distinguished_name
                .get(&rcgen::DnType::CommonName)
                .and_then(|v| match v {
                    rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                    rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
                    rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            state.issued += 1;
            let id = format!("cert-{:04}", state.issued);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let token = format!("token-{}-{nanos:x}", state.issued);
            state.tokens.insert(token.clone(), (id.clone(), cn));
            Ok(Ok(serde_json::json!({
                "certificatePem": pem,
                "certificateId": id,
                "certificateOwnershipToken": token,
            })))
        }
        Stage::Template => {
            let token = request["certificateOwnershipToken"].as_str().unwrap_or("");
            let Some(serial) = request["parameters"]["SerialNumber"].as_str() else {
                return Ok(Err(serde_json::json!({
                    "statusCode": 400,
                    "errorCode": "InvalidParameters",
                    "errorMessage": "parameters.SerialNumber is missing",
                })));
            };
            let Some((certificate_id, cn)) = state.tokens.remove(token) else {
                return Ok(Err(serde_json::json!({
                    "statusCode": 400,
                    "errorCode": "InvalidCertificateOwnershipToken",
                    "errorMessage": "unknown or used ownership token",
                })));
            };
            let thing = Thing {
                name: cn,
                serial_number: serial.to_owned(),
                certificate_id,
            };
            let body = serde_json::json!({
                "thingName": thing.name,
                "deviceConfiguration": { "serial": serial },
            });
            state.things.push(thing);
            Ok(Ok(body))
        }
    }
}
