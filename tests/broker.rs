//! A real Mosquitto broker for the end-to-end tests, the way a fleet's cloud would run it: TLS with
//! client certificates made by the test, the certificate's CN as the MQTT identity, and an ACL that
//! confines each gateway to `outpost/<its id>/#`.
//!
//! - [`Pki`]: a test CA, a server certificate for 127.0.0.1/localhost, and client certificates per
//!   identity ("gw-a", "cloud", …) as PEM files ([`ClientFiles`]).
//! - [`Broker`]: `mosquitto -c <dir>/mosquitto.conf` on a free loopback port, with persistence, so a
//!   held session and its queued QoS 1 messages survive [`Broker::restart`]. Stopped by PID on drop.
//! - [`Cloud`]: the cloud's side, a synchronous rumqttc client with the "cloud" identity and a
//!   persistent session, subscribed to `outpost/+/batch` and `outpost/+/status`, collecting what
//!   it receives.
//! - [`Relay`]: a loopback TCP relay between a client and the broker that can be cut silently (a
//!   cellular link that dies without a FIN) or reset.
//!
//! Mosquitto behaviour this harness relies on, and that `tests/broker_selftest.rs` pins down
//! against the installed broker (2.0.x):
//! - A publish the ACL denies is still acknowledged: with MQTT 3.1.1 a plain PUBACK, with MQTT 5 a
//!   PUBACK with reason 0x87 (not authorized). The message is dropped and the connection stays up.
//!   A gateway therefore cannot learn of a refusal from a 3.1.1 PUBACK.
//!   The broker log says `Denied PUBLISH from <client id> (…, '<topic>', …)`.
//! - Mosquitto 2.0 does not check the ACL at SUBSCRIBE: a subscription to another gateway's
//!   topics (or to `outpost/#`) is granted (SUBACK 0x01 for QoS 1, with 3.1.1 and MQTT 5 alike),
//!   and the ACL filters each message on delivery, so nothing of another gateway arrives.
//! - The Last Will is published as soon as the TCP connection ends without DISCONNECT; on a link
//!   that goes silent, once the client has been silent for more than 1.5 × keepalive (whole
//!   seconds, checked about every 6 s). Forwarded live, a retained will (or any retained publish)
//!   reaches a 3.1.1 subscriber with `retain == false`; a later subscriber gets it with `true`.
//! - Persistence is written on SIGTERM (and every `autosave_interval`, default 1800 s): a
//!   [`Broker::stop`] / [`Broker::restart`] keeps sessions and queued messages; after
//!   [`Broker::kill_hard`] the broker has forgotten everything since its last save.
//! - An offline persistent session queues at most `max_queued_messages` (default 1000) messages.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{
    Client, Connection, Event, Incoming, MqttOptions, Outgoing, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Proc, free_port, wait_for};

/// The topic filters the cloud subscribes to.
pub const CLOUD_FILTERS: [&str; 2] = ["outpost/+/batch", "outpost/+/status"];

/// The cloud's fixed client id: its session persists across reconnects and broker restarts.
pub const CLOUD_CLIENT_ID: &str = "outpost-e2e-cloud";

/// Largest MQTT packet the test clients accept or send: room for big batches.
const MAX_PACKET: usize = 1 << 20;

/// A test certificate authority with its server certificate, issuing client certificates whose
/// subject CN is the MQTT identity.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

/// The PEM files a client needs: the CA that signed the broker, its own certificate and key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub identity: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA in `dir` (created if missing): `ca.pem`, and `server.pem` / `server.key` for
    /// 127.0.0.1 and localhost. Each `Pki` is a different CA.
    pub fn new(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Outpost e2e test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        fs::write(dir.join("ca.pem"), cert.pem())?;
        let pki = Pki {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
        };

        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "outpost-e2e broker");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.issue(params, "server")?;
        Ok(pki)
    }

    /// The CA certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The broker's certificate and key (PEM).
    pub fn server_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }

    /// The files of a client certificate with subject CN `identity`, issued on first use
    /// (`<identity>.pem`, `<identity>.key`).
    pub fn client(&self, identity: &str) -> Result<ClientFiles> {
        let files = ClientFiles {
            identity: identity.to_owned(),
            ca: self.ca_path(),
            cert: self.dir.join(format!("{identity}.pem")),
            key: self.dir.join(format!("{identity}.key")),
        };
        if !files.cert.exists() {
            let mut params = CertificateParams::new(Vec::new())?;
            params.distinguished_name.push(DnType::CommonName, identity);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(params, identity)?;
            // The gateway refuses a private key others can read.
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))?;
        }
        Ok(files)
    }

    /// Signs a PKCS#10 request (PEM) as this CA, valid from a few seconds ago for `lifetime`:
    /// the certificate keeps the request's subject and public key (client authentication).
    pub fn sign_csr(&self, csr_pem: &str, lifetime: Duration) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .context("not a PKCS#10 request")?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - Duration::from_secs(5);
        csr.params.not_after = now + lifetime;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.use_authority_key_identifier_extension = true;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    fn issue(&self, mut params: CertificateParams, name: &str) -> Result<()> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        // Key before certificate: `client` takes an existing certificate as a complete pair.
        fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem())?;
        fs::write(self.dir.join(format!("{name}.pem")), cert.pem())?;
        Ok(())
    }
}

impl ClientFiles {
    /// A rustls client config (ring provider) trusting only this CA and presenting this
    /// certificate, as the gateway builds it.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("cannot read {}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("cannot read {}", self.key.display()))?;
        Ok(tls_builder(&self.ca)?.with_client_auth_cert(chain, key)?)
    }

    /// [`ClientFiles::tls_config`] as a rumqttc transport (usable with `rumqttc` and
    /// `rumqttc::v5`).
    pub fn transport(&self) -> Result<Transport> {
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(self.tls_config()?),
        )))
    }
}

/// A rustls client config that trusts `ca` and presents no client certificate.
pub fn tls_config_without_client_cert(ca: &Path) -> Result<rustls::ClientConfig> {
    Ok(tls_builder(ca)?.with_no_client_auth())
}

fn tls_builder(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots))
}

/// A Mosquitto instance of its own: config, ACL, persistence and log in `dir`, listening on
/// 127.0.0.1 only. Stopped (SIGTERM by PID) when dropped.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl Broker {
    /// Writes `mosquitto.conf` and `acl` into `dir` (created if missing), starts mosquitto on a
    /// free loopback port and waits until the port accepts connections.
    pub fn start(dir: &Path, pki: &Pki) -> Result<Broker> {
        // Each gateway identity may use only its own subtree; the cloud may use all of them.
        // `pattern` lines apply to every user, so the cloud also matches `outpost/cloud/#`.
        Broker::start_with_acl(
            dir,
            pki,
            "pattern readwrite outpost/%u/#\n\nuser cloud\ntopic readwrite outpost/#\n",
        )
    }

    /// [`Broker::start`] with the ACL file `acl` (mosquitto's `acl_file` syntax).
    pub fn start_with_acl(dir: &Path, pki: &Pki, acl: &str) -> Result<Broker> {
        fs::create_dir_all(dir.join("persist"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = free_port();
        let (cert, key) = pki.server_paths();
        fs::write(dir.join("acl"), acl)?;
        let mut conf = String::from("# Written by the Outpost e2e harness (tests/broker.rs).\n");
        if running_as_root() {
            // Run as root, mosquitto switches to the `mosquitto` user, which cannot read the
            // test's private temp dir. `user root` keeps the privileges it started with.
            conf += "user root\n";
        }
        conf += &format!(
            "listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             allow_anonymous false\n\
             acl_file {acl}\n\
             persistence true\n\
             persistence_location {persist}/\n\
             log_dest file {log}\n\
             log_type all\n\
             connection_messages true\n\
             log_timestamp true\n\
             log_timestamp_format %H:%M:%S\n",
            ca = pki.ca_path().display(),
            cert = cert.display(),
            key = key.display(),
            acl = dir.join("acl").display(),
            persist = dir.join("persist").display(),
            log = dir.join("mosquitto.log").display(),
        );
        fs::write(dir.join("mosquitto.conf"), conf)?;
        let mut broker = Broker {
            dir: dir.to_owned(),
            port,
            proc: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = mosquitto_bin()?;
        // Output before the log file opens (a config error) goes here.
        let console = fs::File::create(self.dir.join("mosquitto.console"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(console.try_clone()?)
            .stderr(console);
        let mut proc = Proc::spawn("mosquitto", &mut cmd)?;
        let addr = self.addr();
        let ready = wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            if let Some(status) = proc.try_wait() {
                return Some(Err(status));
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| Ok(()))
        });
        match ready {
            Ok(Ok(())) => {
                self.proc = Some(proc);
                Ok(())
            }
            Ok(Err(status)) => bail!("mosquitto exited ({status}) on start\n{}", self.log()),
            Err(e) => Err(e.context(self.log())),
        }
    }

    /// The port it listens on, on 127.0.0.1. The same across [`Broker::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// SIGTERM by PID and wait for the exit: mosquitto writes its persistence file on the way out.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// SIGKILL by PID: no persistence written, like a crash or a power cut of the broker's host.
    pub fn kill_hard(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill_hard();
        }
    }

    /// Stops it (if running) and starts it again on the same port with the same config,
    /// persistence and log.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// What mosquitto logged (all log types) and printed, for diagnostics. Each start logs one
    /// `Client connection from 127.0.0.1 failed: … unexpected eof`: the harness's readiness probe.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- {}/mosquitto.log\n{}--- console\n{}",
            self.dir.display(),
            read("mosquitto.log"),
            read("mosquitto.console")
        )
    }
}

/// mosquitto on PATH, else Debian's /usr/sbin/mosquitto (sbin is often not on a user's PATH).
fn mosquitto_bin() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|bin| bin.is_file())
        .context(
            "mosquitto is not installed (not on PATH nor in /usr/sbin): \
             run scripts/test.sh, which installs it",
        )
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// One message the cloud received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set only when the broker sent a stored retained message (on subscribe); a retained
    /// publish forwarded live to a subscriber arrives with `retain == false` (MQTT 3.1.1).
    pub retain: bool,
    pub qos: QoS,
    pub dup: bool,
}

#[derive(Debug, Default)]
struct CloudState {
    messages: Vec<Message>,
    /// `session_present` of every CONNACK, in order.
    connacks: Vec<bool>,
    subacks: Vec<Vec<SubscribeReasonCode>>,
    last_error: Option<String>,
}

/// The cloud's MQTT client: identity "cloud", client id [`CLOUD_CLIENT_ID`], persistent session,
/// subscribed with QoS 1 to [`CLOUD_FILTERS`]. A background thread drives the connection
/// (reconnecting by itself) and collects every message received.
pub struct Cloud {
    client: Client,
    state: Arc<Mutex<CloudState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Cloud {
    /// Connects over TLS, subscribes to [`CLOUD_FILTERS`] and waits for the SUBACK (10 s).
    pub fn connect(broker: &Broker, pki: &Pki) -> Result<Cloud> {
        let mut options = MqttOptions::new(CLOUD_CLIENT_ID, "127.0.0.1", broker.port());
        options
            .set_transport(pki.client("cloud")?.transport()?)
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, connection) = Client::new(options, 64);
        let state = Arc::new(Mutex::new(CloudState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("cloud-mqtt".into())
            .spawn({
                let state = state.clone();
                let stop = stop.clone();
                move || drive(connection, &state, &stop)
            })?;
        let cloud = Cloud {
            client,
            state,
            stop,
            thread: Some(thread),
        };
        let filters = CLOUD_FILTERS.map(|f| SubscribeFilter::new(f.into(), QoS::AtLeastOnce));
        cloud.client.subscribe_many(filters)?;
        let codes = cloud
            .wait_for_subacks(1, Duration::from_secs(10))
            .with_context(|| broker.log())?;
        if codes[0]
            .iter()
            .any(|c| *c != SubscribeReasonCode::Success(QoS::AtLeastOnce))
        {
            bail!("the broker refused the cloud's subscriptions: {codes:?}");
        }
        Ok(cloud)
    }

    /// Also subscribes to `filter` with QoS 1 and waits for the broker to grant it.
    pub fn subscribe(&self, filter: &str) -> Result<()> {
        let before = self.state.lock().unwrap().subacks.len();
        self.client.subscribe(filter, QoS::AtLeastOnce)?;
        let codes = self.wait_for_subacks(before + 1, Duration::from_secs(10))?;
        match codes[before][..] {
            [SubscribeReasonCode::Success(_)] => Ok(()),
            ref other => {
                bail!("the broker refused the cloud's subscription to {filter}: {other:?}")
            }
        }
    }

    fn wait_for_subacks(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Vec<SubscribeReasonCode>>> {
        wait_for(timeout, "the cloud's SUBACK", || {
            let state = self.state.lock().unwrap();
            (state.subacks.len() >= n).then(|| state.subacks.clone())
        })
        .with_context(|| format!("cloud: {:?}", self.state.lock().unwrap().last_error))
    }

    /// Queues a publish; rumqttc sends it (and retries it after a reconnect) in the background.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Result<()> {
        self.client.publish(topic, qos, retain, payload.into())?;
        Ok(())
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Waits until `pred` holds for the messages received so far; returns them.
    pub fn wait_for_messages(
        &self,
        mut pred: impl FnMut(&[Message]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        wait_for(timeout, "the cloud's messages", || {
            let state = self.state.lock().unwrap();
            pred(&state.messages).then(|| state.messages.clone())
        })
        .with_context(|| {
            let state = self.state.lock().unwrap();
            let topics: Vec<_> = state.messages.iter().map(|m| m.topic.as_str()).collect();
            format!(
                "cloud received {} messages: {topics:?}; last error: {:?}",
                topics.len(),
                state.last_error
            )
        })
    }

    /// `session_present` of every CONNACK so far: one entry per (re)connection.
    pub fn connacks(&self) -> Vec<bool> {
        self.state.lock().unwrap().connacks.clone()
    }

    /// Waits until the cloud has connected `n` times in all (e.g. 2 after one broker restart).
    pub fn wait_for_connacks(&self, n: usize, timeout: Duration) -> Result<Vec<bool>> {
        wait_for(timeout, &format!("the cloud's connection #{n}"), || {
            let state = self.state.lock().unwrap();
            (state.connacks.len() >= n).then(|| state.connacks.clone())
        })
    }

    /// Sends DISCONNECT and stops the background thread. The broker keeps the session (and
    /// queues QoS 1 messages for it) until the cloud connects again.
    pub fn disconnect(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let result = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Ok(result?)
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The cloud's event loop: records CONNACKs, SUBACKs and messages; pauses between failed
/// reconnects (rumqttc's sync iterator retries at once); ends on stop or after DISCONNECT.
fn drive(mut connection: Connection, state: &Mutex<CloudState>, stop: &AtomicBool) {
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                state.lock().unwrap().messages.push(Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                    retain: p.retain,
                    qos: p.qos,
                    dup: p.dup,
                });
            }
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                state.lock().unwrap().connacks.push(ack.session_present);
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                state.lock().unwrap().subacks.push(ack.return_codes);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                state.lock().unwrap().last_error = Some(e.to_string());
                if !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
}

/// A loopback TCP relay to `127.0.0.1:upstream`: clients connect to [`Relay::port`] instead of
/// the broker. [`Relay::cut`] makes the link go silent without closing anything (bytes in both
/// directions are swallowed, as on a cellular link that died), so only keepalives can notice;
/// [`Relay::reset`] closes every relayed connection. Threads stop on drop.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    shared: Arc<RelayShared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct RelayShared {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Incremented by `reset`: a pump whose generation is older closes its connection.
    generation: AtomicU64,
}

impl Relay {
    pub fn start(upstream: u16) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(RelayShared::default());
        let accept = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn({
                let shared = shared.clone();
                move || relay_accept(&listener, upstream, &shared)
            })?;
        Ok(Relay {
            port,
            shared,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, swallow every byte in both directions; connections stay open.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forward bytes again (what was swallowed meanwhile is lost).
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Close every connection relayed so far (both sides see the TCP connection end).
    pub fn reset(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn relay_accept(listener: &TcpListener, upstream: u16, shared: &Arc<RelayShared>) {
    let mut pumps = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the client sees its connection close: like a refused connect
                };
                let generation = shared.generation.load(Ordering::SeqCst);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let shared = shared.clone();
                    pumps.push(std::thread::spawn(move || {
                        relay_pump(from, to, generation, &shared);
                    }));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

fn relay_pump(mut from: TcpStream, mut to: TcpStream, generation: u64, shared: &RelayShared) {
    let _ = from.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst)
            || shared.generation.load(Ordering::SeqCst) != generation
        {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !shared.cut.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    // While cut, one side's close is swallowed too: the other side keeps a silent open
    // connection until its own keepalive gives up.
    if !shared.cut.load(Ordering::SeqCst) || shared.generation.load(Ordering::SeqCst) != generation
    {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

impl Cloud {
    /// The messages received after the first `start`, in arrival order (a long run reads only
    /// what is new instead of copying everything received so far).
    pub fn messages_since(&self, start: usize) -> Vec<Message> {
        let state = self.state.lock().unwrap();
        state.messages.get(start..).unwrap_or_default().to_vec()
    }

    /// The last connection error the cloud's client saw, if any.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().unwrap().last_error.clone()
    }
}

impl Broker {
    /// The PID of the running mosquitto, if it runs.
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.proc.as_ref().map(Proc::pid)
    }
}
