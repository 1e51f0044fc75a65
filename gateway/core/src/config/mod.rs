//! Configuration: `/etc/outpost/outpost.toml`, in two stages.
//!
//! Stage one deserializes the file into [`RawConfig`] (unknown keys rejected, durations parsed by
//! `humantime`). Stage two, [`compile`], checks values and relations and turns them into
//! [`Config`], whose types cannot hold an invalid setting. Both stages name the file, line and key
//! of every problem; stage two reports all of them at once so an installer fixes the file in one
//! go.
//!
//! No IO here: what compiling needs from the machine (the text of a file the configuration names,
//! the host name, the log filter syntax) comes through [`Environment`], which the adapter
//! (`outpost::io::config`) answers from the file system. Reading the main file and its drop-ins is
//! the adapter's too; [`dropin::parse_layers`] merges their texts.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::uplink::protocol::ProtocolSetting;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

pub mod alerts;
pub mod dropin;
pub mod health;
pub mod modbus;

/// The documented shape of the file. Doc comments here are the user's reference; keep them in step
/// with `config/outpost.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub store: RawStore,
    /// One entry per serial line with a node on it.
    #[serde(default)]
    pub serial: Vec<RawSerialPort>,
    #[serde(default)]
    pub uplink: RawUplink,
    #[serde(default)]
    pub buffer: RawBuffer,
    #[serde(default)]
    pub log: RawLog,
    /// Modbus RTU buses and RTU/TCP devices.
    #[serde(default)]
    pub modbus: modbus::RawModbus,
    /// When the wall clock may stamp readings (`outpost_core::clock`).
    #[serde(default)]
    pub clock: RawClock,
    #[serde(default)]
    pub enrollment: RawEnrollment,
    #[serde(default)]
    pub commands: RawCommands,
    #[serde(default)]
    pub ota: RawOta,
    /// Fleet alert rules (`outpost_core::alerting`). See docs/alerts.md.
    #[serde(default)]
    pub alerts: alerts::RawAlerts,
    /// The gateway's own health report (`outpost/{id}/health`).
    #[serde(default)]
    pub health: health::RawHealth,
}

/// `[ota]`: node firmware updates. See docs/ota.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOta {
    /// The fleet's firmware public key files (`outpost firmware keygen`): only images signed by
    /// one of them are taken.
    pub firmware_keys: Vec<PathBuf>,
    /// The most bytes the gateway keeps of firmware images (its library in the data directory).
    pub library_max_bytes: u64,
    /// Image bytes per OTA_CHUNK: 1024 (the most efficient) or 512 (better on a noisy line).
    pub chunk_bytes: u32,
    /// The share of a port's line a firmware transfer may take (0.01 to 0.95): telemetry's
    /// ACKs keep the rest.
    pub share: f64,
}

impl Default for RawOta {
    fn default() -> RawOta {
        RawOta {
            firmware_keys: Vec::new(),
            library_max_bytes: DEFAULT_LIBRARY_MAX_BYTES,
            chunk_bytes: 1024,
            share: crate::ota::DEFAULT_OTA_SHARE,
        }
    }
}

/// Room for a few 512 KiB images: the running one, the next, and the ones to roll back to.
pub const DEFAULT_LIBRARY_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// `[ota]`, checked: the firmware keys read.
#[derive(Debug, Clone)]
pub struct OtaConfig {
    pub firmware_keys: Vec<crate::update::signing::PublicKey>,
    pub library_max_bytes: u64,
    pub chunk: outpost_proto::ChunkSize,
    pub share: f64,
}

impl Default for OtaConfig {
    fn default() -> OtaConfig {
        OtaConfig {
            firmware_keys: Vec::new(),
            library_max_bytes: DEFAULT_LIBRARY_MAX_BYTES,
            chunk: outpost_proto::ChunkSize::B1024,
            share: crate::ota::DEFAULT_OTA_SHARE,
        }
    }
}

/// `[commands]`: signed remote commands from the cloud (`outpost_core::command`). See
/// docs/commands.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCommands {
    /// Operator public key files (`outpost-sign keygen --role operator`) whose signed commands
    /// this gateway obeys. None: the command topic is not even subscribed.
    pub operator_keys: Vec<PathBuf>,
    /// The longest validity (`expires - issued`) a command may have; the store remembers each
    /// nonce at least that long.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
}

impl Default for RawCommands {
    fn default() -> RawCommands {
        RawCommands {
            operator_keys: Vec::new(),
            max_lifetime: crate::command::Policy::default().max_lifetime,
        }
    }
}

/// `[commands]`, checked: the operator keys read.
#[derive(Debug, Clone, Default)]
pub struct CommandsConfig {
    pub operator_keys: Vec<crate::update::signing::PublicKey>,
    pub policy: crate::command::Policy,
}

impl CommandsConfig {
    /// Whether remote commands are taken at all.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.operator_keys.is_empty()
    }
}

/// `[enrollment]`: how nodes never enrolled join. See docs/provisioning.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEnrollment {
    /// `window` (only while an enrollment window is open: the technician page, `outpost nodes
    /// enroll --window 10m`), `allowlist` (only nodes a manufacturer-signed manifest lists, with
    /// the listed key and board revision), `closed`, or `open` (any: a bench or the demo).
    pub policy: crate::link::EnrollmentPolicy,
    /// Manufacturer public key files (`outpost-sign keygen --role manufacturer`) whose manifests
    /// are trusted.
    pub manufacturer_keys: Vec<PathBuf>,
    /// Signed node manifests (`outpost-sign node-manifest`) for the `allowlist` policy.
    pub manifests: Vec<PathBuf>,
}

/// `[enrollment]`, checked: the manifests read and their signatures verified.
#[derive(Debug, Clone, Default)]
pub struct EnrollmentConfig {
    pub policy: crate::link::EnrollmentPolicy,
    /// Every node the verified manifests list, by uid.
    pub listed: std::collections::BTreeMap<[u8; 8], crate::enrollment::Listed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClock {
    /// What shows the clock was synchronised before readings are stamped with it: `plausible`
    /// (nothing: a clock after the build date and the latest trusted time is trusted; an RTC or a
    /// VM), `synchronised` (the kernel's flag, kept by timesyncd, chrony and ntpd, or a step of
    /// the clock seen by the daemon; a Raspberry Pi without RTC), `step` (only a step: time set
    /// by `date`).
    pub trust: crate::clock::Trust,
    /// How long readings taken while the clock is not trusted wait for it to be, to get their
    /// exact time; after that they are sealed marked unsynchronised.
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
}

impl Default for RawClock {
    fn default() -> Self {
        RawClock {
            trust: crate::clock::Trust::Plausible,
            max_hold: crate::clock::DEFAULT_MAX_HOLD,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUplink {
    /// How long readings gather before they are sealed into a batch; without a budget, always.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// The shortest the data budget's pacer may make the batch interval, while the month's
    /// traffic is well under the budget's pace. Default: 10 s, or `batch_interval` if shorter.
    #[serde(default, with = "humantime_serde")]
    pub min_batch_interval: Option<Duration>,
    /// Most readings in one batch; a backlog becomes several batches.
    pub max_batch_readings: u32,
    /// Uplink bytes a month (both directions, TLS and MQTT included); 0 for no budget. With
    /// one, the batch interval is paced between `min_batch_interval` and `max_batch_interval`.
    pub monthly_budget_bytes: u64,
    /// The longest the data budget's pacer may make the batch interval, while the month's
    /// traffic is over the budget's pace.
    #[serde(with = "humantime_serde")]
    pub max_batch_interval: Duration,
    /// The least time between two batches sealed early for a priority reading (a Modbus point
    /// marked `priority`): a chattering point costs at most one extra batch this often.
    #[serde(with = "humantime_serde")]
    pub priority_min_interval: Duration,
    /// HTTP pull: the cloud fetches sealed batches from the local API.
    pub pull: RawPull,
    /// MQTT push over TLS; off when absent.
    pub mqtt: Option<RawMqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// The broker, `host:port` (TLS always).
    pub broker: String,
    /// CA certificate(s) the broker's certificate must chain to (PEM).
    pub ca_file: PathBuf,
    /// This gateway's certificate (PEM); its identity must be `gateway.id`. With
    /// `[uplink.mqtt.provisioning]` it may be missing (it is then obtained by claim, and written
    /// here); default there: `<data_dir>/identity/gateway.crt`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM). With provisioning: made by the gateway if missing, default
    /// `<data_dir>/identity/gateway.key`.
    pub key_file: Option<PathBuf>,
    /// MQTT keepalive; long enough for a sleepy cellular link, short enough for mobile NATs.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// `end_to_end` (the cloud's ack on outpost/{id}/ack) or `broker` (the broker's PUBACK).
    #[serde(default = "default_ack")]
    pub ack: String,
    /// Batches out without an acknowledgement at most.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: u32,
    /// With no acknowledgement for this long, publish again from the oldest unacked batch.
    #[serde(default = "default_resend_after", with = "humantime_serde")]
    pub resend_after: Duration,
    /// `auto` (MQTT 5, or 3.1.1 for a broker that will not take it), `5` or `3.1.1`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// MQTT 5: how long the broker keeps this gateway's session after a connection ends.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Identity by claim (AWS IoT fleet provisioning): the gateway makes its own key and gets its
    /// certificate with a claim certificate; it renews it before expiry.
    pub provisioning: Option<RawProvisioning>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvisioning {
    /// The claim certificate (PEM) put on the gateway at manufacturing, shared by a batch of
    /// units; used only while the gateway has no certificate of its own.
    pub claim_cert_file: PathBuf,
    /// The claim certificate's private key (PEM; mode 0600 or 0640 root:outpost).
    pub claim_key_file: PathBuf,
    /// The provisioning template's name.
    pub template: String,
    /// The template's `SerialNumber` parameter; default: `gateway.id`.
    pub serial_number: Option<String>,
    /// Renew the gateway's certificate this long before it expires (never before half its life).
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    /// How long each answer of the provisioning exchange may take.
    #[serde(default = "default_provisioning_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// The longest wait between two failed attempts (waits double from 5 s, jittered).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

fn default_renew_before() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_provisioning_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `uplink.min_batch_interval` when not set: this, or `batch_interval` if shorter.
pub const DEFAULT_MIN_BATCH_INTERVAL: Duration = Duration::from_secs(10);
/// `uplink.priority_min_interval` when not set.
pub const DEFAULT_PRIORITY_MIN_INTERVAL: Duration = Duration::from_secs(30);

fn default_keepalive() -> Duration {
    Duration::from_secs(120)
}
fn default_ack() -> String {
    "end_to_end".into()
}
fn default_max_unacked() -> u32 {
    4
}
fn default_resend_after() -> Duration {
    Duration::from_secs(300)
}
fn default_protocol() -> String {
    "auto".into()
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(3600)
}

impl Default for RawUplink {
    fn default() -> Self {
        RawUplink {
            batch_interval: Duration::from_secs(60),
            max_batch_readings: 100_000,
            min_batch_interval: None,
            monthly_budget_bytes: 0,
            max_batch_interval: Duration::from_secs(15 * 60),
            priority_min_interval: DEFAULT_PRIORITY_MIN_INTERVAL,
            pull: RawPull::default(),
            mqtt: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPull {
    /// Bearer token the cloud presents; the batch endpoints are off without one.
    pub token: Option<String>,
    /// Or a file holding it (preferred: keeps the secret out of the config file).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBuffer {
    /// Most bytes of sealed batches kept for an absent uplink; beyond it the oldest are dropped.
    pub max_bytes: u64,
}

impl Default for RawBuffer {
    fn default() -> Self {
        RawBuffer {
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGateway {
    /// This gateway's id in the fleet; defaults to the host name.
    pub id: Option<String>,
    /// Where the store lives.
    pub data_dir: PathBuf,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            id: None,
            data_dir: PathBuf::from("/var/lib/outpost"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Address of the local status API and page.
    pub listen: String,
    /// Bearer token for uploading gateway update artifacts (`PUT /api/v1/updates/{file}`);
    /// uploads are off without one. Its own scope: the pull token does not open uploads.
    pub upload_token: Option<String>,
    /// Or a file holding it (preferred).
    pub upload_token_file: Option<PathBuf>,
    /// Bearer token for the read endpoints (`/api/v1/status`, `/nodes`, `/modbus`); without
    /// one they are open to whoever reaches `listen`.
    pub technician_token: Option<String>,
    /// Or a file holding it (preferred).
    pub technician_token_file: Option<PathBuf>,
    /// Open connections at most (also bounded by the file descriptors the process may hold).
    /// When full, a new client is still served: the least recently active idle connection of
    /// the address holding the most is closed for it.
    pub max_connections: u32,
    /// A request head must arrive in full within this time of its first byte.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request (its body included) answered 503 after this long.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Names and addresses the API answers to besides its defaults (the listening address,
    /// `localhost` on loopback, the host name and `<host name>.local`): DNS rebinding defence.
    pub allowed_hosts: Vec<String>,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: "127.0.0.1:8080".into(),
            upload_token: None,
            upload_token_file: None,
            technician_token: None,
            technician_token_file: None,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            allowed_hosts: Vec::new(),
        }
    }
}

/// The validated `[api]` connection settings (the address is [`Config::api_listen`]).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// The `Host:` names and addresses answered.
    pub allowed_hosts: crate::listener::host::AllowedHosts,
}

impl ApiConfig {
    /// The documented defaults for an API on `listen` on a machine called `host_name`.
    #[must_use]
    pub fn defaults(listen: SocketAddr, host_name: Option<&str>) -> ApiConfig {
        let raw = RawApi::default();
        ApiConfig {
            max_connections: raw.max_connections as usize,
            header_timeout: raw.header_timeout,
            idle_timeout: raw.idle_timeout,
            request_timeout: raw.request_timeout,
            allowed_hosts: crate::listener::host::AllowedHosts::new(listen, host_name, &[]),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// Longest a reading waits for its group commit (and so for its ACK to the node).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most readings in one transaction.
    pub max_commit_readings: u32,
    /// Most nodes the registry enrols; a newcomer beyond it is refused (and alerted). Also the
    /// most per-node dedup points the writer keeps in memory.
    pub max_nodes: u64,
    /// Readings kept on the gateway after the cloud has them (their batch acknowledged, or
    /// dropped from a full outbox): the newest this many, for local inspection; older ones are
    /// deleted, so the store stays the size of what is still on its way.
    pub keep_readings: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            commit_interval: Duration::from_millis(20),
            max_commit_readings: 8192,
            max_nodes: 1024,
            keep_readings: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialPort {
    /// Device path, e.g. `/dev/ttyACM0` or a `/dev/serial/by-id/…` link.
    pub path: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Frames per second a node may send before the excess is dropped unacknowledged (it is
    /// resent, so nothing is lost): a flooding node cannot starve the others. Default: what the
    /// line carries at `baud` ([`crate::link::line_frame_capacity`]), so only a transport
    /// faster than its baud (USB CDC) is ever held back.
    #[serde(default)]
    pub max_frames_per_sec: Option<u32>,
    /// Longest wait between attempts to reopen a port that went away.
    #[serde(default = "default_reopen_backoff_max", with = "humantime_serde")]
    pub reopen_backoff_max: Duration,
    /// How long a node on this port may stay silent before the status page calls it offline.
    #[serde(default = "default_offline_after", with = "humantime_serde")]
    pub offline_after: Duration,
    /// The oldest a sample may claim to be (besides the node's reported uptime); an older claim
    /// is clamped and counted.
    #[serde(default = "default_max_sample_age", with = "humantime_serde")]
    pub max_sample_age: Duration,
    /// The fastest a node on this line can sample, in Hz: a claimed gap larger than the node
    /// can have taken at this rate is refused and counted.
    #[serde(default = "default_max_sample_rate")]
    pub max_sample_rate: u32,
    /// Uids never enrolled that may enrol through this port at once (0: none)…
    #[serde(default = "default_newcomers_burst")]
    pub newcomers_burst: u32,
    /// …and how many more per hour after that.
    #[serde(default = "default_newcomers_per_hour")]
    pub newcomers_per_hour: u32,
    /// The Raspberry Pi GPIO (BCM number, 2 to 27) wired to this port's node's RUN pin: the
    /// remote command `node-reboot mode=hard` pulls it low to restart a node whose firmware
    /// hangs (docs/commands.md). Absent: no hard reboot on this port.
    #[serde(default)]
    pub run_pin: Option<u8>,
}

fn default_baud() -> u32 {
    115_200
}
fn default_reopen_backoff_max() -> Duration {
    Duration::from_secs(10)
}
fn default_offline_after() -> Duration {
    crate::site::DEFAULT_OFFLINE_AFTER
}
fn default_max_sample_age() -> Duration {
    crate::link::LinkLimits::default().max_sample_age
}
fn default_max_sample_rate() -> u32 {
    crate::link::LinkLimits::default().max_sample_rate_hz
}
fn default_newcomers_burst() -> u32 {
    crate::link::LinkLimits::default().newcomers_burst
}
fn default_newcomers_per_hour() -> u32 {
    crate::link::LinkLimits::default().newcomers_per_hour
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing filter: `info`, `outpost=debug`, …
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub api: ApiConfig,
    pub commit_interval: Duration,
    pub max_commit_readings: usize,
    /// `store.max_nodes`.
    pub max_nodes: u64,
    /// `store.keep_readings`.
    pub keep_readings: u64,
    pub serial: Vec<SerialPort>,
    pub batch_interval: Duration,
    /// `uplink.min_batch_interval` (its default applied).
    pub min_batch_interval: Duration,
    pub max_batch_readings: usize,
    pub monthly_budget_bytes: u64,
    pub max_batch_interval: Duration,
    /// `uplink.priority_min_interval`.
    pub priority_min_interval: Duration,
    /// The HTTP pull bearer token; `None` turns the batch endpoints off.
    pub pull_token: Option<String>,
    /// The update upload bearer token; `None` turns uploads off.
    pub upload_token: Option<String>,
    /// The read endpoints' bearer token; `None` leaves them open.
    pub technician_token: Option<String>,
    pub buffer_max_bytes: u64,
    pub mqtt: Option<MqttConfig>,
    pub log_level: String,
    pub modbus: modbus::ModbusConfig,
    /// `clock.trust`.
    pub clock_trust: crate::clock::Trust,
    /// `clock.max_hold`.
    pub clock_max_hold: Duration,
    pub enrollment: EnrollmentConfig,
    pub commands: CommandsConfig,
    pub ota: OtaConfig,
    /// `[alerts]`: the fleet alert rules, each with its defaults unless the file changes it.
    pub alerts: crate::alerting::Rules,
    /// `[health]`.
    pub health: health::HealthConfig,
    /// What is accepted but unwise (an inline secret), located like an error: the daemon logs
    /// each at start and `outpost check` prints them.
    pub warnings: Vec<ConfigError>,
}

/// Which acknowledgement lets a batch leave the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// The cloud's `{"upto": SEQ}` on `outpost/{id}/ack`: the batch is in the cloud's storage.
    EndToEnd,
    /// The broker's PUBACK: the batch reached the broker (cheaper, weaker).
    Broker,
}

/// The validated `[uplink.mqtt]` settings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub keepalive: Duration,
    pub ack: AckMode,
    pub max_unacked: usize,
    /// With no acknowledgement progress for this long, publish again from the oldest unacked.
    pub resend_after: Duration,
    pub protocol: ProtocolSetting,
    /// MQTT 5's session expiry interval.
    pub session_expiry: Duration,
    /// `[uplink.mqtt.provisioning]`: identity by claim, and renewal.
    pub provisioning: Option<ProvisioningConfig>,
}

/// The validated `[uplink.mqtt.provisioning]` settings.
#[derive(Debug, Clone)]
pub struct ProvisioningConfig {
    pub claim_cert_file: PathBuf,
    pub claim_key_file: PathBuf,
    pub template: String,
    pub serial_number: String,
    pub renew_before: Duration,
    pub response_timeout: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
pub struct SerialPort {
    pub path: PathBuf,
    pub baud: u32,
    /// Frame rate, sample age and gap bounds, newcomer budget.
    pub limits: crate::link::LinkLimits,
    pub reopen_backoff_max: Duration,
    /// Silence after which the status page calls this port's node offline.
    pub offline_after: Duration,
    /// `run_pin`: the GPIO wired to the node's RUN pin, if any.
    pub run_pin: Option<u8>,
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` for a key the file does not have (a missing required key).
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `serial[1].baud`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// A file that could not be read, as a located error like any other.
    #[must_use]
    pub fn unreadable(file: &Path, why: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {why}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.line {
            Some(line) => write!(f, "{file}:{line}: ")?,
            None => write!(f, "{file}: ")?,
        }
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Who may use a file, as the file system says: what [`Environment::check_secret_file`] judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccess {
    /// The permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub owner: Principal,
    pub group: Principal,
}

/// A file's owner or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: u32,
    /// Its name on this machine, when it has one.
    pub name: Option<String>,
    /// Whether it is the user (or group) this process runs as.
    pub is_self: bool,
}

impl Principal {
    /// Root, the service account (`outpost`, whose group holds that user alone), or whoever
    /// runs this (the daemon itself, or root running `outpost check`): nobody else may read a
    /// secret.
    fn is_trusted(&self) -> bool {
        self.id == 0 || self.is_self || self.name.as_deref() == Some(SERVICE_ACCOUNT)
    }

    fn describe(&self, what: &str) -> String {
        match &self.name {
            Some(name) => format!("{what} {name}"),
            None => format!("{what} id {}", self.id),
        }
    }
}

/// The service's user and group (`User=`/`Group=` in packaging/outpost.service). The package
/// creates the group with the service user alone in it, so `root:outpost 0640` is as private
/// as `outpost 0600`.
pub const SERVICE_ACCOUNT: &str = "outpost";

/// Whether a file with `access` may hold a secret (a private key, a token): `Err` says who else
/// can read or change it and how to fix it. The one rule for every secret file the
/// configuration names; see [`Environment::check_secret_file`].
pub fn judge_secret_file(path: &Path, access: &FileAccess) -> Result<(), String> {
    let (mode, p) = (access.mode & 0o7777, path.display());
    let private = "a secret must be readable by root and the outpost service alone";
    let fix =
        format!("fix: chown outpost {p} && chmod 0600 {p} (or chown root:outpost and chmod 0640)");
    if mode & 0o007 != 0 {
        return Err(format!(
            "{p} is readable or writable by every user on this machine (mode {mode:04o}): {private}; {fix}"
        ));
    }
    if !access.owner.is_trusted() {
        return Err(format!(
            "{p} belongs to {} (mode {mode:04o}), who can read it and change its mode: {private}; {fix}",
            access.owner.describe("user")
        ));
    }
    if mode & 0o070 != 0 && !access.group.is_trusted() {
        return Err(format!(
            "{p} is readable or writable by {} (mode {mode:04o}): {private}; {fix}",
            access.group.describe("group")
        ));
    }
    if mode & 0o020 != 0 {
        return Err(format!(
            "{p} is writable by {} (mode {mode:04o}): the service must not be able to replace its own secret; fix: chmod g-w {p}",
            access.group.describe("group")
        ));
    }
    Ok(())
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What compiling a configuration needs from the machine. The daemon answers from the file
/// system (`outpost::io::config`); tests answer from memory.
pub trait Environment {
    /// The text of a file the configuration names (a Modbus map, a token file), or why not.
    fn read_file(&self, path: &Path) -> Result<String, String>;
    /// Whether `path` is a file that can be read (TLS material is loaded later, by the uplink).
    fn is_readable_file(&self, path: &Path) -> bool;
    /// Whether something other than a directory is at `path` (a folder the daemon would create
    /// may be missing; a file in its place is a mistake).
    fn is_non_directory(&self, path: &Path) -> bool;
    /// This machine's host name, the default gateway id.
    fn host_name(&self) -> Option<String>;
    /// Checks a log filter (`info`, `outpost=debug`) against the logger's syntax.
    fn check_log_filter(&self, filter: &str) -> Result<(), String>;
    /// Who may use the regular file at `path` (links followed: what the daemon will open), or
    /// why it cannot be looked at.
    fn file_access(&self, path: &Path) -> Result<FileAccess, String>;

    /// Checks a file that holds a secret (a private key, a token): a regular file that only
    /// root and the service can read ([`judge_secret_file`]). Every secret file the
    /// configuration names goes through here (or [`Environment::secret_file`]).
    fn check_secret_file(&self, path: &Path) -> Result<(), String> {
        judge_secret_file(path, &self.file_access(path)?)
    }

    /// The text of a secret file, once [`Environment::check_secret_file`] accepted it.
    fn secret_file(&self, path: &Path) -> Result<String, String> {
        self.check_secret_file(path)?;
        self.read_file(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// Warns of a secret written into a configuration file (key `key`), which is world-readable
/// (`0644`) so that `outpost check` works for everyone; `file_key` is where it belongs.
pub fn inline_secret_warning(key: &str, file_key: &str) -> Problem {
    Problem {
        key: key.to_owned(),
        message: format!(
            "a secret written into the configuration, which every user on this machine can \
             read: put it in a file named by `{file_key}` instead (mode 0600 owner outpost, or \
             0640 root:outpost)"
        ),
    }
}

impl Config {
    /// Parses and validates config text; `path` names it in errors, and files the configuration
    /// names by a relative path are taken from its folder.
    pub fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigErrors> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config = parse_two_stage(path, text, |raw| compile(raw, dir, env))?;
        if let Ok(table) = DeTable::parse(text) {
            let doc = Document { path, text };
            for warning in &mut config.warnings {
                warning.file = path.to_owned();
                warning.line = doc.line_of_key(&table, &warning.key);
            }
        }
        Ok(config)
    }
}

/// Parses TOML `text` (named `path` in errors) into the raw shape `R` (stage one), then runs
/// `compile` on it (stage two). Every error comes back located: file, line, key path. Shared by
/// the main config and the Modbus device maps.
pub fn parse_two_stage<R: serde::de::DeserializeOwned, T>(
    path: &Path,
    text: &str,
    compile: impl FnOnce(R) -> Result<T, Vec<Problem>>,
) -> Result<T, ConfigErrors> {
    let doc = Document { path, text };
    let table =
        DeTable::parse(text).map_err(|e| ConfigErrors(vec![doc.toml_error(&e, "", None)]))?;
    let deserializer = toml::Deserializer::from(table.clone());
    let raw: R = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "" } else { &key };
        ConfigErrors(vec![doc.toml_error(e.inner(), key, Some(&table))])
    })?;
    compile(raw).map_err(|problems| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| ConfigError {
                    file: path.to_owned(),
                    line: doc.line_of_key(&table, &p.key),
                    key: p.key,
                    message: p.message,
                })
                .collect(),
        )
    })
}

/// A stage-two problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Stage two: checks every value and relation, collecting all problems. Files the config names
/// by a relative path (Modbus maps) are taken from `config_dir`, through `env`.
pub fn compile(
    raw: RawConfig,
    config_dir: &Path,
    env: &dyn Environment,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings: Vec<Problem> = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_owned(),
            message,
        });
    };

    let gateway_id = match raw.gateway.id {
        Some(id) => id,
        None => env
            .host_name()
            .map(|name| {
                name.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
            })
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "outpost".into()),
    };
    if let Err(why) = check_identifier(&gateway_id) {
        problem("gateway.id", why);
    }
    if raw.gateway.data_dir.as_os_str().is_empty() {
        problem("gateway.data_dir", "must not be empty".into());
    } else if env.is_non_directory(&raw.gateway.data_dir) {
        problem(
            "gateway.data_dir",
            format!(
                "{} exists and is not a directory",
                raw.gateway.data_dir.display()
            ),
        );
    }
    let api_listen = raw.api.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        problem(
            "api.listen",
            format!("`{}` is not an address:port ({e})", raw.api.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let api = compile_api(&raw.api, api_listen, env, &mut problem);
    let commit_interval = raw.store.commit_interval;
    if commit_interval > Duration::from_secs(5) {
        problem(
            "store.commit_interval",
            "must be at most 5s: nodes wait this long for their ACK".into(),
        );
    } else if commit_interval < Duration::from_millis(1) {
        problem(
            "store.commit_interval",
            "must be at least 1ms: a commit per command would cost an fsync each".into(),
        );
    }
    if !(64..=1_000_000).contains(&raw.store.max_commit_readings) {
        problem(
            "store.max_commit_readings",
            "must be between 64 and 1000000".into(),
        );
    }
    if !(1_000..=100_000_000).contains(&raw.store.keep_readings) {
        problem(
            "store.keep_readings",
            "must be between 1000 and 100000000".into(),
        );
    }
    if !(1..=1_000_000).contains(&raw.store.max_nodes) {
        problem("store.max_nodes", "must be between 1 and 1000000".into());
    }

    let mut seen = HashSet::new();
    let mut serial = Vec::new();
    for (i, port) in raw.serial.into_iter().enumerate() {
        let key = |field: &str| format!("serial[{i}].{field}");
        if !seen.insert(port.path.clone()) {
            problem(
                &key("path"),
                format!("`{}` is listed twice", port.path.display()),
            );
        }
        if port.path.as_os_str().is_empty() {
            problem(&key("path"), "must not be empty".into());
        }
        if !(300..=4_000_000).contains(&port.baud) {
            problem(
                &key("baud"),
                format!("{} is outside 300..=4000000", port.baud),
            );
        }
        let max_frames_per_sec = port
            .max_frames_per_sec
            .unwrap_or_else(|| crate::link::line_frame_capacity(port.baud));
        if !(1..=10_000).contains(&max_frames_per_sec) {
            problem(
                &key("max_frames_per_sec"),
                "must be between 1 and 10000".into(),
            );
        }
        if port.reopen_backoff_max < Duration::from_millis(100) {
            problem(&key("reopen_backoff_max"), "must be at least 100ms".into());
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(24 * 3600)).contains(&port.offline_after)
        {
            problem(&key("offline_after"), "must be between 2s and 24h".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(366 * 24 * 3600))
            .contains(&port.max_sample_age)
        {
            problem(&key("max_sample_age"), "must be between 1s and 366d".into());
        }
        if !(1..=100_000).contains(&port.max_sample_rate) {
            problem(
                &key("max_sample_rate"),
                "must be between 1 and 100000 (Hz)".into(),
            );
        }
        if port.newcomers_burst > 10_000 {
            problem(&key("newcomers_burst"), "must be at most 10000".into());
        }
        if port.newcomers_per_hour > 36_000 {
            problem(&key("newcomers_per_hour"), "must be at most 36000".into());
        }
        if let Some(pin) = port.run_pin
            && !(2..=27).contains(&pin)
        {
            problem(
                &key("run_pin"),
                format!("GPIO {pin} is not on the Raspberry Pi's header: BCM 2 to 27"),
            );
        }
        serial.push(SerialPort {
            path: port.path,
            baud: port.baud,
            limits: crate::link::LinkLimits {
                max_frames_per_sec,
                max_sample_age: port.max_sample_age,
                max_sample_rate_hz: port.max_sample_rate,
                newcomers_burst: port.newcomers_burst,
                newcomers_per_hour: port.newcomers_per_hour,
            },
            reopen_backoff_max: port.reopen_backoff_max,
            offline_after: port.offline_after,
            run_pin: port.run_pin,
        });
    }

    let batch_interval = raw.uplink.batch_interval;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&batch_interval) {
        problem("uplink.batch_interval", "must be between 1s and 24h".into());
    }
    let max_batch_interval = raw.uplink.max_batch_interval;
    if max_batch_interval < batch_interval {
        problem(
            "uplink.max_batch_interval",
            "must not be shorter than uplink.batch_interval".into(),
        );
    }
    let min_batch_interval = match raw.uplink.min_batch_interval {
        Some(min) => {
            if min < Duration::from_secs(1) {
                problem("uplink.min_batch_interval", "must be at least 1s".into());
            } else if min > batch_interval {
                problem(
                    "uplink.min_batch_interval",
                    "must not be longer than uplink.batch_interval".into(),
                );
            }
            min
        }
        None => DEFAULT_MIN_BATCH_INTERVAL.min(batch_interval),
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600))
        .contains(&raw.uplink.priority_min_interval)
    {
        problem(
            "uplink.priority_min_interval",
            "must be between 1s and 24h".into(),
        );
    }
    if !(100..=1_000_000).contains(&raw.uplink.max_batch_readings) {
        problem(
            "uplink.max_batch_readings",
            "must be between 100 and 1000000".into(),
        );
    }
    let pull_token = bearer_token(
        raw.uplink.pull.token,
        raw.uplink.pull.token_file,
        "uplink.pull.token",
        env,
        &mut problem,
        &mut warnings,
    );
    let upload_token = bearer_token(
        raw.api.upload_token,
        raw.api.upload_token_file,
        "api.upload_token",
        env,
        &mut problem,
        &mut warnings,
    );
    let technician_token = bearer_token(
        raw.api.technician_token,
        raw.api.technician_token_file,
        "api.technician_token",
        env,
        &mut problem,
        &mut warnings,
    );
    let scoped = [
        ("uplink.pull.token", &pull_token),
        ("api.upload_token", &upload_token),
        ("api.technician_token", &technician_token),
    ];
    for (i, (key, token)) in scoped.iter().enumerate() {
        if let Some((earlier, _)) = scoped[..i]
            .iter()
            .find(|(_, other)| token.is_some() && other == token)
        {
            problem(
                key,
                format!("must differ from {earlier}: each token opens only its own endpoints"),
            );
        }
    }
    let mqtt = raw.uplink.mqtt.map(|m| {
        let (host, port) = match m
            .broker
            .rsplit_once(':')
            .map(|(h, p)| (h, p.parse::<u16>()))
        {
            Some((host, Ok(port))) if !host.is_empty() => {
                (host.trim_matches(['[', ']']).to_owned(), port)
            }
            _ => {
                problem(
                    "uplink.mqtt.broker",
                    format!("`{}` is not host:port", m.broker),
                );
                (String::new(), 0)
            }
        };
        let (keepalive, resend_after) = (m.keepalive, m.resend_after);
        if resend_after < Duration::from_secs(1) {
            problem("uplink.mqtt.resend_after", "must be at least 1s".into());
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(65535)).contains(&keepalive) {
            problem(
                "uplink.mqtt.keepalive",
                "must be between 5s and 65535s".into(),
            );
        }
        let ack = match m.ack.as_str() {
            "end_to_end" => AckMode::EndToEnd,
            "broker" => AckMode::Broker,
            other => {
                problem(
                    "uplink.mqtt.ack",
                    format!("`{other}` is neither `end_to_end` nor `broker`"),
                );
                AckMode::EndToEnd
            }
        };
        let protocol = ProtocolSetting::parse(&m.protocol).unwrap_or_else(|| {
            problem(
                "uplink.mqtt.protocol",
                format!("`{}` is not `auto`, `5` or `3.1.1`", m.protocol),
            );
            ProtocolSetting::Auto
        });
        if m.session_expiry.as_secs() > u64::from(u32::MAX) {
            problem(
                "uplink.mqtt.session_expiry",
                format!("must be at most {}s (MQTT 5's limit)", u32::MAX),
            );
        }
        if !(1..=64).contains(&m.max_unacked) {
            problem("uplink.mqtt.max_unacked", "must be between 1 and 64".into());
        }
        if !env.is_readable_file(&m.ca_file) {
            problem(
                "uplink.mqtt.ca_file",
                format!("{} is not a readable file", m.ca_file.display()),
            );
        }
        let identity_dir = raw.gateway.data_dir.join("identity");
        let provisioned = m.provisioning.is_some();
        let mut own_file = |key: &str, given: Option<PathBuf>, default: &str| match given {
            Some(path) => path,
            None if provisioned => identity_dir.join(default),
            None => {
                problem(
                    &format!("uplink.mqtt.{key}"),
                    "is required (or set [uplink.mqtt.provisioning] to obtain the gateway's \
                     certificate by claim)"
                        .into(),
                );
                PathBuf::new()
            }
        };
        let cert_file = own_file("cert_file", m.cert_file, "gateway.crt");
        let key_file = own_file("key_file", m.key_file, "gateway.key");
        let has_own_identity = env.is_readable_file(&cert_file);
        if !provisioned || has_own_identity {
            // The gateway's own identity is (or must be) in place: check it as always.
            if !cert_file.as_os_str().is_empty() && !has_own_identity {
                problem(
                    "uplink.mqtt.cert_file",
                    format!("{} is not a readable file", cert_file.display()),
                );
            }
            if key_file.as_os_str().is_empty() {
                // Already reported as missing.
            } else if !env.is_readable_file(&key_file) {
                problem(
                    "uplink.mqtt.key_file",
                    format!("{} is not a readable file", key_file.display()),
                );
            } else if let Err(e) = env.check_secret_file(&key_file) {
                problem("uplink.mqtt.key_file", e);
            }
        } else if env.is_readable_file(&key_file)
            && let Err(e) = env.check_secret_file(&key_file)
        {
            // A key made by an earlier start that got no certificate yet: it is reused.
            problem("uplink.mqtt.key_file", e);
        }
        let provisioning = m.provisioning.map(|p| {
            if let Err(why) = crate::provisioning::check_template_name(&p.template) {
                problem("uplink.mqtt.provisioning.template", why);
            }
            let serial_number = p.serial_number.unwrap_or_else(|| gateway_id.clone());
            if serial_number.is_empty()
                || serial_number.len() > 128
                || serial_number.chars().any(char::is_control)
            {
                problem(
                    "uplink.mqtt.provisioning.serial_number",
                    "must be 1 to 128 characters, none of them a control character".into(),
                );
            }
            if !(Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600))
                .contains(&p.renew_before)
            {
                problem(
                    "uplink.mqtt.provisioning.renew_before",
                    "must be between 1m and 365d".into(),
                );
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&p.response_timeout) {
                problem(
                    "uplink.mqtt.provisioning.response_timeout",
                    "must be between 1s and 10m".into(),
                );
            }
            if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&p.retry_max) {
                problem(
                    "uplink.mqtt.provisioning.retry_max",
                    "must be between 10s and 24h".into(),
                );
            }
            if !has_own_identity {
                // Only needed until the gateway has its own certificate.
                if !env.is_readable_file(&p.claim_cert_file) {
                    problem(
                        "uplink.mqtt.provisioning.claim_cert_file",
                        format!(
                            "{} is not a readable file, and the gateway has no certificate of \
                             its own yet ({})",
                            p.claim_cert_file.display(),
                            cert_file.display()
                        ),
                    );
                }
                if !env.is_readable_file(&p.claim_key_file) {
                    problem(
                        "uplink.mqtt.provisioning.claim_key_file",
                        format!("{} is not a readable file", p.claim_key_file.display()),
                    );
                } else if let Err(e) = env.check_secret_file(&p.claim_key_file) {
                    problem("uplink.mqtt.provisioning.claim_key_file", e);
                }
            }
            if p.claim_key_file == key_file || p.claim_cert_file == cert_file {
                problem(
                    "uplink.mqtt.provisioning.claim_cert_file",
                    "the claim certificate and key must be other files than the gateway's own \
                     (uplink.mqtt.cert_file, key_file)"
                        .into(),
                );
            }
            ProvisioningConfig {
                claim_cert_file: p.claim_cert_file,
                claim_key_file: p.claim_key_file,
                template: p.template,
                serial_number,
                renew_before: p.renew_before,
                response_timeout: p.response_timeout,
                retry_max: p.retry_max,
            }
        });
        MqttConfig {
            host,
            port,
            ca_file: m.ca_file,
            cert_file,
            key_file,
            keepalive,
            ack,
            max_unacked: m.max_unacked as usize,
            resend_after,
            protocol,
            session_expiry: m.session_expiry,
            provisioning,
        }
    });
    if raw.buffer.max_bytes < 64 * 1024 {
        problem("buffer.max_bytes", "must be at least 65536".into());
    }

    let modbus = modbus::compile(raw.modbus, config_dir, env, &mut problem);
    let alerts = alerts::compile(raw.alerts, &mut problem);
    let enrollment = compile_enrollment(&raw.enrollment, config_dir, env, &mut problem);
    let commands = compile_commands(&raw.commands, config_dir, env, &mut problem);
    let ota = OtaConfig {
        firmware_keys: read_role_keys(
            &raw.ota.firmware_keys,
            crate::update::signing::Role::Firmware,
            "ota.firmware_keys",
            config_dir,
            env,
            &mut problem,
        ),
        library_max_bytes: raw.ota.library_max_bytes,
        chunk: match raw.ota.chunk_bytes {
            512 => outpost_proto::ChunkSize::B512,
            1024 => outpost_proto::ChunkSize::B1024,
            other => {
                problem(
                    "ota.chunk_bytes",
                    format!("must be 512 or 1024, not {other}"),
                );
                outpost_proto::ChunkSize::B1024
            }
        },
        share: if (crate::ota::MIN_OTA_SHARE..=crate::ota::MAX_OTA_SHARE).contains(&raw.ota.share) {
            raw.ota.share
        } else {
            problem(
                "ota.share",
                format!(
                    "must be between {} and {}, not {}",
                    crate::ota::MIN_OTA_SHARE,
                    crate::ota::MAX_OTA_SHARE,
                    raw.ota.share
                ),
            );
            crate::ota::DEFAULT_OTA_SHARE
        },
    };
    if raw.ota.library_max_bytes < crate::firmware::MAX_IMAGE_BYTES {
        problem(
            "ota.library_max_bytes",
            format!(
                "must hold at least one image ({} bytes)",
                crate::firmware::MAX_IMAGE_BYTES
            ),
        );
    }

    if let Err(e) = env.check_log_filter(&raw.log.level) {
        problem(
            "log.level",
            format!("`{}` is not a log filter: {e}", raw.log.level),
        );
    }

    if raw.clock.max_hold < Duration::from_secs(1) {
        problem("clock.max_hold", "must be at least 1s".into());
    }

    let health = health::compile(&raw.health, &mut problem);

    if problems.is_empty() {
        Ok(Config {
            gateway_id,
            data_dir: raw.gateway.data_dir,
            api_listen,
            api,
            commit_interval,
            max_commit_readings: raw.store.max_commit_readings as usize,
            max_nodes: raw.store.max_nodes,
            keep_readings: raw.store.keep_readings,
            serial,
            batch_interval,
            min_batch_interval,
            max_batch_readings: raw.uplink.max_batch_readings as usize,
            monthly_budget_bytes: raw.uplink.monthly_budget_bytes,
            max_batch_interval,
            priority_min_interval: raw.uplink.priority_min_interval,
            pull_token,
            upload_token,
            technician_token,
            buffer_max_bytes: raw.buffer.max_bytes,
            mqtt,
            log_level: raw.log.level,
            modbus,
            clock_trust: raw.clock.trust,
            clock_max_hold: raw.clock.max_hold,
            enrollment,
            commands,
            ota,
            alerts,
            health,
            warnings: warnings
                .into_iter()
                .map(|w| ConfigError {
                    file: PathBuf::new(),
                    line: None,
                    key: w.key,
                    message: w.message,
                })
                .collect(),
        })
    } else {
        Err(problems)
    }
}

/// A bearer token given inline (`key`) or in a file (`key` + `_file`, trimmed): not both, at
/// least 16 characters.
fn bearer_token(
    inline: Option<String>,
    file: Option<PathBuf>,
    key: &str,
    env: &dyn Environment,
    problem: &mut impl FnMut(&str, String),
    warnings: &mut Vec<Problem>,
) -> Option<String> {
    let file_key = format!("{key}_file");
    let short = key.rsplit('.').next().unwrap_or(key);
    let (token, from) = match (inline, file) {
        (Some(_), Some(_)) => {
            problem(
                &file_key,
                format!("give either {short} or {short}_file, not both"),
            );
            return None;
        }
        (Some(token), None) => {
            warnings.push(inline_secret_warning(key, &file_key));
            (token, key.to_owned())
        }
        (None, Some(file)) => match env.secret_file(&file) {
            Ok(token) => (token.trim().to_owned(), file_key),
            Err(e) => {
                problem(&file_key, e);
                return None;
            }
        },
        (None, None) => return None,
    };
    if token.len() < 16 {
        problem(&from, "must be at least 16 characters".into());
    }
    Some(token)
}

/// `[api]` beyond `listen`.
fn compile_api(
    raw: &RawApi,
    listen: SocketAddr,
    env: &dyn Environment,
    problem: &mut impl FnMut(&str, String),
) -> ApiConfig {
    if !(1..=65_535).contains(&raw.max_connections) {
        problem("api.max_connections", "must be between 1 and 65535".into());
    }
    let second = Duration::from_secs(1);
    for (key, value, min, max) in [
        (
            "api.header_timeout",
            raw.header_timeout,
            Duration::from_millis(100),
            300 * second,
        ),
        ("api.idle_timeout", raw.idle_timeout, second, 3600 * second),
        (
            "api.request_timeout",
            raw.request_timeout,
            second,
            3600 * second,
        ),
    ] {
        if !(min..=max).contains(&value) {
            problem(
                key,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
    }
    for (i, entry) in raw.allowed_hosts.iter().enumerate() {
        if let Err(why) = crate::listener::host::parse_allowed(entry) {
            problem(&format!("api.allowed_hosts[{i}]"), why);
        }
    }
    ApiConfig {
        max_connections: raw.max_connections as usize,
        header_timeout: raw.header_timeout,
        idle_timeout: raw.idle_timeout,
        request_timeout: raw.request_timeout,
        allowed_hosts: crate::listener::host::AllowedHosts::new(
            listen,
            env.host_name().as_deref(),
            &raw.allowed_hosts,
        ),
    }
}

/// Gateway ids become MQTT topic levels and file names, device names batch sources and API path
/// segments: keep them to a safe alphabet.
pub(crate) fn check_identifier(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 64 {
        Err("must be 1 to 64 characters".into())
    } else if !id.chars().all(ok_char) {
        Err(format!(
            "`{id}` may only hold letters, digits, '-', '_' and '.'"
        ))
    } else {
        Ok(())
    }
}

struct Document<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Document<'_> {
    fn line_at(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// A located toml error; without a span of its own, the key's line (when `root` is given).
    fn toml_error(
        &self,
        e: &toml::de::Error,
        key: &str,
        root: Option<&toml::Spanned<DeTable<'_>>>,
    ) -> ConfigError {
        let line = e
            .span()
            .map(|s| self.line_at(s.start))
            .or_else(|| root.and_then(|r| self.line_of_key(r, key)));
        ConfigError {
            file: self.path.to_owned(),
            line,
            key: key.to_owned(),
            message: e.message().trim().to_owned(),
        }
    }

    /// The line of a dotted key like `serial[1].baud`, or of its nearest present parent.
    fn line_of_key(&self, root: &toml::Spanned<DeTable<'_>>, key: &str) -> Option<usize> {
        let mut span = None;
        let mut node: Option<&DeValue<'_>> = None;
        for part in key.split('.').filter(|p| !p.is_empty()) {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let mut next = match node {
                None => root.get_ref().get(name),
                Some(value) => value.get(name),
            };
            if let (Some(value), Some(i)) = (next, index) {
                next = value.get_ref().get(i);
            }
            match next {
                Some(value) => {
                    span = Some(value.span());
                    node = Some(value.get_ref());
                }
                None => break,
            }
        }
        span.map(|s| self.line_at(s.start))
    }
}

#[cfg(test)]
mod tests;

/// Reads the manufacturer keys and verifies every manifest with them.
fn compile_enrollment(
    raw: &RawEnrollment,
    config_dir: &Path,
    env: &dyn Environment,
    problem: &mut dyn FnMut(&str, String),
) -> EnrollmentConfig {
    use crate::link::EnrollmentPolicy;
    let keys = read_role_keys(
        &raw.manufacturer_keys,
        crate::update::signing::Role::Manufacturer,
        "enrollment.manufacturer_keys",
        config_dir,
        env,
        problem,
    );
    let mut listed = std::collections::BTreeMap::new();
    for path in &raw.manifests {
        let path = config_dir.join(path);
        match env
            .read_file(&path)
            .and_then(|text| crate::enrollment::verify(&text, &keys).map_err(|e| e.to_string()))
        {
            Ok(nodes) => listed.extend(nodes.into_iter().map(|n| (n.uid, n))),
            Err(why) => problem(
                "enrollment.manifests",
                format!("{} is refused: {why}", path.display()),
            ),
        }
    }
    if raw.policy == EnrollmentPolicy::Allowlist && raw.manifests.is_empty() {
        problem(
            "enrollment.policy",
            "`allowlist` takes only nodes a signed manifest lists: name one in enrollment.manifests (and its key in enrollment.manufacturer_keys)".into(),
        );
    }
    EnrollmentConfig {
        policy: raw.policy,
        listed,
    }
}

/// Reads public key files for one role; a key of another role in them is a problem at `key`.
fn read_role_keys(
    paths: &[PathBuf],
    role: crate::update::signing::Role,
    key: &str,
    config_dir: &Path,
    env: &dyn Environment,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<crate::update::signing::PublicKey> {
    use crate::update::signing::PublicKey;
    let mut keys = Vec::new();
    for path in paths {
        let path = config_dir.join(path);
        match env
            .read_file(&path)
            .and_then(|text| PublicKey::parse_all(&text).map_err(|e| e.to_string()))
        {
            Ok(found) => {
                for public in found {
                    if public.role() == role {
                        keys.push(public);
                    } else {
                        problem(
                            key,
                            format!(
                                "{} holds a {} key; only {role} keys belong here",
                                path.display(),
                                public.role(),
                            ),
                        );
                    }
                }
            }
            Err(why) => problem(key, format!("cannot use {}: {why}", path.display())),
        }
    }
    keys
}

/// Reads the operator keys remote commands must be signed with.
fn compile_commands(
    raw: &RawCommands,
    config_dir: &Path,
    env: &dyn Environment,
    problem: &mut dyn FnMut(&str, String),
) -> CommandsConfig {
    let operator_keys = read_role_keys(
        &raw.operator_keys,
        crate::update::signing::Role::Operator,
        "commands.operator_keys",
        config_dir,
        env,
        problem,
    );
    if raw.max_lifetime < Duration::from_secs(10)
        || raw.max_lifetime > Duration::from_secs(7 * 86_400)
    {
        problem("commands.max_lifetime", "must be between 10s and 7d".into());
    }
    CommandsConfig {
        operator_keys,
        policy: crate::command::Policy {
            max_lifetime: raw.max_lifetime,
        },
    }
}
