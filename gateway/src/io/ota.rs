//! Node firmware rollouts: the task around the rollout core (`outpost_core::rollout`).
//!
//! ```text
//! API / CLI / MQTT ─(Request)─► io::ota ─(PortCommand: start, install, abort, finalize)─► port tasks
//!                                 ▲  │                                                   (PortSession
//!            (PortReport: node up,│  └─(StoreCommand::Ota: rows, events)─► store writer     + Transfer)
//!       HEALTH, OTA_STATUS, transfer events)                                      │
//!                                 │  └─(JSON)─► uplink: outpost/{id}/ota, at once  │
//!                                 └────────────────────────────────────────────────┘
//! ```
//!
//! This task only moves things between the cores and the world: what to update, when, and what a
//! gate says are the rollout core's; how chunks go over a line is each port's transfer core's.
//! At most one rollout runs at a time. A drain's rows are in SQLite before anything of that drain
//! is carried out, so a restarted gateway carries on where it was (`Rollout::restore`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outpost_core::firmware::{self, Expect, Firmware};
use outpost_core::hex;
use outpost_core::ota::{Image, TransferEvent};
use outpost_core::rollout::{
    self, Action, Artifact, Mode, NodeReport, Plan, Rollout, RolloutStatus, Row, Settings,
    TargetNode, Waves,
};
use outpost_core::update::signing::{Found, PublicKey, SignedManifest};
use outpost_proto::{ChunkSize, FwVersion, Millis, OtaPhase, OtaStatus, ResetReason};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::io::store::Readers;
use crate::io::store::ota::FirmwareTransition;
use crate::io::store::writer::{OtaStoreOp, StoreCommand};

/// What a port task tells the rollout task.
#[derive(Debug)]
pub enum PortReport {
    /// A node opened a session on port `port` (a new boot, or the same one again).
    NodeUp {
        port: usize,
        uid: [u8; 8],
        boot_id: u32,
        fw: FwVersion,
        hw_rev: u8,
    },
    /// The port lost its node (closed, another node, silent past the port's offline time).
    NodeDown { uid: [u8; 8] },
    /// A node's HEALTH: its reset reason tells why its boot began.
    Health {
        uid: [u8; 8],
        boot_id: u32,
        reset_reason: ResetReason,
    },
    /// A node's OTA_STATUS.
    Status {
        uid: [u8; 8],
        boot_id: u32,
        status: OtaStatus,
    },
    /// What a port's transfer did.
    Transfer { uid: [u8; 8], event: TransferEvent },
}

/// What the rollout task asks a port task.
#[derive(Debug)]
pub enum PortCommand {
    Start {
        uid: [u8; 8],
        image: Image,
        chunk: ChunkSize,
        share: f64,
    },
    Install {
        uid: [u8; 8],
        confirm_within_s: u16,
    },
    Abort {
        uid: [u8; 8],
    },
    Finalize {
        uid: [u8; 8],
    },
}

/// A rollout as asked for (API, CLI, MQTT, the page).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    /// The image: its file name in the library, or its SHA-256 (at least 8 hex digits of it).
    pub artifact: String,
    /// Nodes in the canary (staged; default 1).
    pub canary: Option<usize>,
    /// Cumulative shares, e.g. `25%,100%` (staged; the default).
    pub waves: Option<String>,
    /// How long each stage soaks, e.g. `10m`.
    pub soak: Option<String>,
    /// How long a trial image has to confirm, e.g. `90s`.
    pub confirm_within: Option<String>,
    /// One node's uid (16 hex digits): a targeted update of that node alone.
    pub node: Option<String>,
}

/// Why a rollout did not start. `kind` names it for scripts; the text says what to fix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    pub kind: &'static str,
    pub error: String,
}

impl Refused {
    fn new(kind: &'static str, error: impl Into<String>) -> Refused {
        Refused {
            kind,
            error: error.into(),
        }
    }
}

/// Requests to the rollout task.
#[derive(Debug)]
pub enum Request {
    Start {
        spec: StartSpec,
        started_by: String,
        reply: oneshot::Sender<Result<RolloutStatus, Refused>>,
    },
    Halt {
        rollback: bool,
        reply: oneshot::Sender<Result<RolloutStatus, Refused>>,
    },
}

/// What the API and the page show: the rollout in progress (or the last one this run) and each
/// node's transfer as its port last reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OtaView {
    pub rollout: Option<RolloutStatus>,
    /// Nodes that take updates, with their firmware.
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub uid: String,
    pub fw: String,
    pub hw_rev: u8,
    pub online: bool,
    /// The node's own word on its update (OTA_STATUS phase).
    pub phase: Option<&'static str>,
    /// The anti-rollback floor the node enforces.
    pub floor: Option<String>,
    /// Bytes of an image in its flash, of the image's size, while a transfer runs.
    pub flashed: Option<u64>,
    pub size: Option<u64>,
}

/// The handles other tasks hold.
#[derive(Debug, Clone)]
pub struct OtaHandle {
    pub requests: mpsc::Sender<Request>,
    pub view: Arc<Mutex<OtaView>>,
}

impl OtaHandle {
    #[must_use]
    pub fn view(&self) -> OtaView {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts a rollout and waits for the answer.
    pub async fn start(
        &self,
        spec: StartSpec,
        started_by: String,
    ) -> Result<RolloutStatus, Refused> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Start {
                spec,
                started_by,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Halts the rollout that runs.
    pub async fn halt(&self, rollback: bool) -> Result<RolloutStatus, Refused> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Halt { rollback, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Refused {
    Refused::new("unavailable", "the gateway is shutting down")
}

/// The task's settings.
#[derive(Debug, Clone)]
pub struct OtaSettings {
    pub library: PathBuf,
    pub keys: Vec<PublicKey>,
    pub chunk: ChunkSize,
    pub share: f64,
}

/// One port's ends: the task keeps the command sender, the port the rest.
#[derive(Debug)]
pub struct PortEnds {
    pub commands: mpsc::UnboundedReceiver<PortCommand>,
    pub reports: mpsc::UnboundedSender<PortReport>,
}

/// Starts the rollout task for `ports` serial ports; it ends at `shutdown`.
pub fn spawn(
    settings: OtaSettings,
    ports: usize,
    store_tx: mpsc::Sender<StoreCommand>,
    readers: Readers,
    publish: Option<mpsc::Sender<Vec<u8>>>,
    shutdown: CancellationToken,
) -> (OtaHandle, Vec<PortEnds>) {
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let mut port_commands = Vec::with_capacity(ports);
    let mut ends = Vec::with_capacity(ports);
    for _ in 0..ports {
        let (tx, rx) = mpsc::unbounded_channel();
        port_commands.push(tx);
        ends.push(PortEnds {
            commands: rx,
            reports: report_tx.clone(),
        });
    }
    drop(report_tx);
    let (requests, request_rx) = mpsc::channel(8);
    let view = Arc::new(Mutex::new(OtaView::default()));
    let task = Task {
        settings,
        ports: port_commands,
        store_tx,
        publish,
        view: Arc::clone(&view),
        started: Instant::now(),
        nodes: HashMap::new(),
        rollout: None,
        images: HashMap::new(),
        install_sent: HashSet::new(),
        undelivered: HashMap::new(),
        progress_published: HashMap::new(),
    };
    tokio::spawn(task.run(readers, report_rx, request_rx, shutdown));
    (OtaHandle { requests, view }, ends)
}

#[derive(Debug, Clone)]
struct NodeInfo {
    port: usize,
    boot_id: u32,
    fw: FwVersion,
    hw_rev: u8,
    online: bool,
    status: Option<OtaStatus>,
    /// The boot whose HEALTH has been handed to the rollout.
    boot_reported: Option<u32>,
    transfer: Option<(u64, u64)>,
}

struct Task {
    settings: OtaSettings,
    ports: Vec<mpsc::UnboundedSender<PortCommand>>,
    store_tx: mpsc::Sender<StoreCommand>,
    publish: Option<mpsc::Sender<Vec<u8>>>,
    view: Arc<Mutex<OtaView>>,
    started: Instant,
    nodes: HashMap<[u8; 8], NodeInfo>,
    rollout: Option<Rollout>,
    /// Images the rollout sends, by SHA-256, read from the library once.
    images: HashMap<[u8; 32], Image>,
    /// Nodes told to INSTALL: their next boot is the install's.
    install_sent: HashSet<[u8; 8]>,
    /// Commands for nodes not heard from since the gateway started (a rollout resumed after a
    /// restart): sent to the node's port once it links.
    undelivered: HashMap<[u8; 8], Vec<PortCommand>>,
    /// The last progress tenth published per node (progress goes out at most every 10 %).
    progress_published: HashMap<[u8; 8], u64>,
}

impl Task {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    async fn run(
        mut self,
        readers: Readers,
        mut reports: mpsc::UnboundedReceiver<PortReport>,
        mut requests: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) {
        self.restore(&readers).await;
        loop {
            let timeout = self.rollout.as_ref().and_then(Rollout::poll_timeout);
            let sleep = timeout.map(|at| Duration::from_millis(at.saturating_since(self.now())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(report) = reports.recv() => self.handle_report(report),
                Some(request) = requests.recv() => self.handle_request(request).await,
                () = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {
                    let now = self.now();
                    if let Some(r) = &mut self.rollout {
                        r.handle_timeout(now);
                    }
                }
            }
            self.drain().await;
            self.refresh_view();
        }
    }

    /// A rollout that had not ended when the gateway stopped carries on.
    async fn restore(&mut self, readers: &Readers) {
        let rows = readers.read(|r| r.active_rollout()).await;
        let rows = match rows {
            Ok(Some(rows)) => rows,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(message = "Cannot read the rollout in progress; it does not resume.", %error);
                return;
            }
        };
        let id = rows.rollout.id;
        let mut shas = vec![rows.rollout.artifact.sha256];
        shas.extend(
            rows.nodes
                .iter()
                .filter_map(|n| n.rollback.map(|a| a.sha256)),
        );
        for sha in shas {
            if let Err(why) = self.load_image(&sha) {
                tracing::warn!(message = "An image of the rollout in progress is no longer in the library.", rollout = id, sha256 = %hex::encode(&sha), %why);
            }
        }
        match Rollout::restore(rows, self.now()) {
            Ok(rollout) => {
                tracing::info!(message = "Rollout in progress resumed.", rollout = id);
                self.rollout = Some(rollout);
            }
            Err(error) => {
                tracing::error!(message = "Cannot resume the rollout in progress.", rollout = id, %error);
            }
        }
    }

    fn handle_report(&mut self, report: PortReport) {
        let now = self.now();
        match report {
            PortReport::NodeUp {
                port,
                uid,
                boot_id,
                fw,
                hw_rev,
            } => {
                let node = self.nodes.entry(uid).or_insert(NodeInfo {
                    port,
                    boot_id,
                    fw,
                    hw_rev,
                    online: true,
                    status: None,
                    boot_reported: None,
                    transfer: None,
                });
                if node.boot_id != boot_id {
                    // A new boot: its status comes again with this session.
                    node.status = None;
                }
                node.port = port;
                node.boot_id = boot_id;
                node.fw = fw;
                node.hw_rev = hw_rev;
                node.online = true;
                if let Some(waiting) = self.undelivered.remove(&uid)
                    && let Some(port) = self.ports.get(port)
                {
                    for command in waiting {
                        let _ = port.send(command);
                    }
                }
                if let Some(r) = &mut self.rollout {
                    r.handle_online(now, uid, true);
                }
            }
            PortReport::NodeDown { uid } => {
                if let Some(node) = self.nodes.get_mut(&uid) {
                    node.online = false;
                }
                if let Some(r) = &mut self.rollout {
                    r.handle_online(now, uid, false);
                }
            }
            PortReport::Health {
                uid,
                boot_id,
                reset_reason,
            } => {
                let Some(node) = self.nodes.get_mut(&uid) else {
                    return;
                };
                if node.boot_reported == Some(boot_id) {
                    return;
                }
                node.boot_reported = Some(boot_id);
                let install = self.install_sent.remove(&uid);
                if let Some(r) = &mut self.rollout {
                    r.handle_boot(
                        now,
                        uid,
                        rollout::Boot {
                            boot_id,
                            reset_reason,
                            install,
                        },
                    );
                }
            }
            PortReport::Status {
                uid,
                boot_id,
                status,
            } => self.handle_status(now, uid, boot_id, status),
            PortReport::Transfer { uid, event } => self.handle_transfer(now, uid, event),
        }
    }

    fn handle_status(&mut self, now: Millis, uid: [u8; 8], boot_id: u32, status: OtaStatus) {
        let Some(node) = self.nodes.get_mut(&uid) else {
            return;
        };
        if node.boot_id != boot_id {
            return;
        }
        let first_of_phase = node.status.is_none_or(|s| s.phase != status.phase);
        node.status = Some(status);
        let fw = node.fw;
        let Some(r) = &mut self.rollout else { return };
        // The rollout hears of phases for the image it sends; a report of another image (the
        // node's own idle state, a refused offer) is the transfer's business.
        let Some(expected) = r.expected_image(uid) else {
            return;
        };
        if status.image != outpost_proto::ImageTag::of(&expected)
            && status.phase != OtaPhase::Reverted
        {
            return;
        }
        if !first_of_phase {
            return;
        }
        let report = match status.phase {
            OtaPhase::Installing => NodeReport::Installing,
            OtaPhase::Trial => NodeReport::Trial,
            OtaPhase::Confirmed => NodeReport::Confirmed { version: fw },
            OtaPhase::Reverted => NodeReport::Reverted {
                cause: match outpost_proto::RevertCause::from_code(status.detail) {
                    outpost_proto::RevertCause::Crash => rollout::RevertCause::Crash,
                    outpost_proto::RevertCause::Watchdog => rollout::RevertCause::Watchdog,
                    outpost_proto::RevertCause::PowerLoss => rollout::RevertCause::PowerLoss,
                    outpost_proto::RevertCause::Deadline | outpost_proto::RevertCause::Unknown => {
                        rollout::RevertCause::Deadline
                    }
                },
            },
            _ => return,
        };
        r.handle_node_report(now, uid, report);
    }

    fn handle_transfer(&mut self, now: Millis, uid: [u8; 8], event: TransferEvent) {
        tracing::debug!(message = "Firmware transfer.", uid = %hex::encode(&uid), ?event);
        let Some(r) = &mut self.rollout else { return };
        let Some(sha) = r.expected_image(uid) else {
            return;
        };
        let event = match event {
            TransferEvent::Progress { flashed, size } => {
                if let Some(node) = self.nodes.get_mut(&uid) {
                    node.transfer = Some((flashed, size));
                }
                rollout::TransferEvent::Progress {
                    done: flashed,
                    total: size,
                }
            }
            TransferEvent::Verified => rollout::TransferEvent::Finished,
            TransferEvent::Ended(outcome) => match outcome {
                outpost_core::ota::Outcome::Refused(reason) => rollout::TransferEvent::Refused(
                    reason
                        .map_or("unknown", outpost_proto::OtaRefusal::as_str)
                        .to_owned(),
                ),
                outpost_core::ota::Outcome::Lost => {
                    rollout::TransferEvent::Failed("the node no longer holds the image".into())
                }
                // Reverts come with the node's OTA_STATUS; FINALIZE and ABORT are the rollout's own.
                _ => return,
            },
            _ => return,
        };
        r.handle_transfer(now, uid, sha, event);
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Start {
                spec,
                started_by,
                reply,
            } => {
                let result = self.start(spec, started_by).await;
                let _ = reply.send(result);
            }
            Request::Halt { rollback, reply } => {
                let now = self.now();
                let result = match &mut self.rollout {
                    Some(r) if !r.is_over() => {
                        r.handle_halt(now, rollback);
                        Ok(r.status(now))
                    }
                    _ => Err(Refused::new("no-rollout", "no rollout is running")),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Checks a rollout as asked for against the library and the nodes, and starts it: every
    /// refusal comes before a single byte goes to a node.
    async fn start(
        &mut self,
        spec: StartSpec,
        started_by: String,
    ) -> Result<RolloutStatus, Refused> {
        if self.rollout.as_ref().is_some_and(|r| !r.is_over()) {
            return Err(Refused::new(
                "busy",
                "a rollout is running: halt it first (`outpost rollout halt`)",
            ));
        }
        let (firmware, image) = self.find_artifact(&spec.artifact)?;
        let settings = settings(&spec)?;
        let targeted = match &spec.node {
            Some(text) => Some(hex::decode::<8>(text).ok_or_else(|| {
                Refused::new("bad-request", format!("node `{text}` is not 16 hex digits"))
            })?),
            None => None,
        };
        let mut candidates: Vec<([u8; 8], NodeInfo)> = self
            .nodes
            .iter()
            .filter(|(uid, n)| targeted.is_none_or(|t| t == **uid) && n.status.is_some())
            .map(|(uid, n)| (*uid, n.clone()))
            .collect();
        candidates.sort_by_key(|(uid, n)| (n.port, *uid));
        if let Some(uid) = targeted
            && candidates.is_empty()
        {
            return Err(Refused::new(
                "unknown-node",
                format!(
                    "node {} has not been heard taking updates since the gateway started",
                    hex::encode(&uid)
                ),
            ));
        }
        let mut nodes = Vec::new();
        let mut refusals = Vec::new();
        for (uid, n) in &candidates {
            let floor = n.status.map(|s| s.floor);
            if n.hw_rev != firmware.hw_rev {
                refusals.push(Refused::new(
                    "wrong-hardware",
                    format!(
                        "node {} is hardware revision {}, the image is for {}",
                        hex::encode(uid),
                        n.hw_rev,
                        firmware.hw_rev
                    ),
                ));
                continue;
            }
            if let Some(floor) = floor
                && firmware.version < floor
            {
                refusals.push(Refused::new(
                    "below-floor",
                    format!(
                        "version {} is below the floor {floor} node {} enforces (anti-rollback): sign a newer version",
                        firmware.version,
                        hex::encode(uid)
                    ),
                ));
                continue;
            }
            let rollback = self.rollback_for(n.fw, n.hw_rev);
            nodes.push(TargetNode {
                uid: *uid,
                port: n.port.to_string(),
                version: n.fw,
                online: n.online,
                boot_id: Some(n.boot_id),
                rollback,
            });
        }
        if nodes.is_empty() {
            return Err(refusals.into_iter().next().unwrap_or_else(|| {
                Refused::new(
                    "no-nodes",
                    "no node that takes updates has been heard since the gateway started",
                )
            }));
        }
        let id = self.next_id().await?;
        let artifact = Artifact {
            sha256: firmware.sha256,
            version: firmware.version,
        };
        self.images.insert(firmware.sha256, image);
        let plan = Plan {
            id,
            artifact,
            nodes,
            settings,
            started_by,
        };
        let now = self.now();
        let rollout =
            Rollout::new(plan, now).map_err(|e| Refused::new("bad-request", e.to_string()))?;
        self.rollout = Some(rollout);
        for refusal in refusals {
            tracing::warn!(message = "Node left out of the rollout.", rollout = id, reason = refusal.kind, detail = %refusal.error);
        }
        self.drain().await;
        self.refresh_view();
        Ok(self
            .rollout
            .as_ref()
            .map(|r| r.status(self.now()))
            .expect("set above"))
    }

    async fn next_id(&self) -> Result<u64, Refused> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || Refused::new("unavailable", "the store is not answering");
        self.store_tx
            .send(StoreCommand::Ota {
                op: OtaStoreOp::NextRolloutId,
                reply,
            })
            .await
            .map_err(|_| unavailable())?;
        match answer.await.map_err(|_| unavailable())? {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(unavailable()),
            Err(e) => Err(Refused::new("store", e.to_string())),
        }
    }

    /// The library's image named `artifact`, checked again now (signature, expiry, size).
    fn find_artifact(&mut self, artifact: &str) -> Result<(Firmware, Image), Refused> {
        let entries =
            crate::io::firmware::list(&self.settings.library, &self.settings.keys, now_unix_ms());
        let wanted = artifact.trim();
        let by_sha = wanted.len() >= 8 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
        let mut matching = entries.into_iter().filter(|e| {
            e.file == wanted
                || (by_sha
                    && e.checked
                        .as_ref()
                        .is_ok_and(|f| hex::encode(&f.sha256).starts_with(&wanted.to_lowercase())))
        });
        let entry = matching.next().ok_or_else(|| {
            Refused::new(
                "unknown-artifact",
                format!(
                    "no image `{wanted}` in the library: add it first (`outpost firmware add`)"
                ),
            )
        })?;
        if matching.next().is_some() {
            return Err(Refused::new(
                "bad-request",
                format!("`{wanted}` names more than one image: give more of its SHA-256"),
            ));
        }
        let firmware = entry.checked.map_err(|why| {
            let kind = [
                "bad-signature",
                "damaged",
                "expired",
                "not-firmware",
                "wrong-hardware",
                "below-floor",
                "too-large",
            ]
            .into_iter()
            .find(|k| why.ends_with(&format!("({k})")))
            .unwrap_or("refused");
            Refused::new(kind, why)
        })?;
        let image = self
            .load_image(&firmware.sha256)
            .map_err(|why| Refused::new("damaged", why))?;
        Ok((firmware, image))
    }

    /// Reads an image of the library into memory once (a rollout sends it to every port).
    fn load_image(&mut self, sha256: &[u8; 32]) -> Result<Image, String> {
        if let Some(image) = self.images.get(sha256) {
            return Ok(image.clone());
        }
        let dir = &self.settings.library;
        let entries = crate::io::firmware::list(dir, &self.settings.keys, now_unix_ms());
        for entry in entries {
            // An expired manifest still vouches for an image a rollout already sends (rollback).
            let path = dir.join(&entry.file);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(manifest) = std::fs::read(crate::io::signing_files::sig_path(&path)) else {
                continue;
            };
            let found = Found::of_bytes(&entry.file, &bytes);
            if found.sha256 != *sha256 {
                continue;
            }
            let parsed = SignedManifest::parse(&manifest).map_err(|e| e.to_string())?;
            let version = firmware::parse_version(&parsed.manifest().artifact.version)?;
            let image = Image::new(bytes, &manifest, version).map_err(|e| e.to_string())?;
            self.images.insert(*sha256, image.clone());
            return Ok(image);
        }
        Err(format!(
            "no image with SHA-256 {} in the library",
            hex::encode(sha256)
        ))
    }

    /// The library's image of `version` for `hw_rev`, to roll a node back to.
    fn rollback_for(&mut self, version: FwVersion, hw_rev: u8) -> Option<Artifact> {
        let expect = Expect {
            keys: &self.settings.keys,
            hw_rev: Some(hw_rev),
            floor: None,
            now_unix_ms: now_unix_ms(),
        };
        let _ = expect;
        let entries =
            crate::io::firmware::list(&self.settings.library, &self.settings.keys, now_unix_ms());
        let firmware = entries
            .into_iter()
            .filter_map(|e| e.checked.ok())
            .find(|f| f.version == version && f.hw_rev == hw_rev)?;
        self.load_image(&firmware.sha256).ok()?;
        Some(Artifact {
            sha256: firmware.sha256,
            version: firmware.version,
        })
    }

    /// Carries out what the rollout asked for: its rows and events into the store first (one
    /// transaction), then the rest in order.
    async fn drain(&mut self) {
        let Some(r) = &mut self.rollout else { return };
        let id = r.id();
        let mut rows: Vec<Row> = Vec::new();
        let mut events: Vec<String> = Vec::new();
        let mut rest = Vec::new();
        while let Some(action) = r.poll_action() {
            match action {
                Action::Persist(row) => rows.push(row),
                Action::Event(event) => {
                    let json = serde_json::to_string(&EventOut {
                        at_ms: now_unix_ms(),
                        event: &event,
                    })
                    .unwrap_or_default();
                    tracing::info!(message = "Rollout.", rollout = id, event = event.kind.as_str(),
                        uid = event.uid.map(|u| hex::encode(&u)).unwrap_or_default(), detail = %event.detail);
                    events.push(json);
                    rest.push(Action::Event(event));
                }
                other => rest.push(other),
            }
        }
        if !rows.is_empty() || !events.is_empty() {
            self.persist(id, rows, &events).await;
        }
        for action in rest {
            self.carry_out(id, action).await;
        }
    }

    async fn persist(&self, id: u64, rows: Vec<Row>, events: &[String]) {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .store_tx
            .send(StoreCommand::Ota {
                op: OtaStoreOp::Persist {
                    rollout: id,
                    rows,
                    events: events.to_vec(),
                    now_ms: now_unix_ms(),
                },
                reply,
            })
            .await;
        let result = match sent {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        match result {
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::error!(message = "Cannot record the rollout's progress; a restart would resume it from earlier.", rollout = id, %error);
            }
            None => tracing::warn!(
                message = "The store writer stopped; the rollout's progress is not recorded.",
                rollout = id
            ),
        }
    }

    async fn carry_out(&mut self, id: u64, action: Action) {
        let to_port = |this: &mut Self, uid: [u8; 8], command: PortCommand| match this
            .nodes
            .get(&uid)
            .and_then(|n| this.ports.get(n.port))
        {
            Some(port) => {
                let _ = port.send(command);
            }
            None => {
                tracing::info!(message = "A node of the rollout has not linked since the gateway started; its command waits for it.", rollout = id, uid = %hex::encode(&uid));
                let waiting = this.undelivered.entry(uid).or_default();
                // A new transfer replaces whatever was waiting for the old one.
                if matches!(command, PortCommand::Start { .. }) {
                    waiting.clear();
                }
                waiting.push(command);
            }
        };
        match action {
            Action::StartTransfer { uid, artifact } | Action::RollBack { uid, artifact } => {
                match self.load_image(&artifact.sha256) {
                    Ok(image) => to_port(
                        self,
                        uid,
                        PortCommand::Start {
                            uid,
                            image,
                            chunk: self.settings.chunk,
                            share: self.settings.share,
                        },
                    ),
                    Err(why) => {
                        let now = self.now();
                        if let Some(r) = &mut self.rollout {
                            r.handle_transfer(
                                now,
                                uid,
                                artifact.sha256,
                                rollout::TransferEvent::Failed(why),
                            );
                        }
                    }
                }
            }
            Action::Install {
                uid,
                confirm_within,
            } => {
                self.install_sent.insert(uid);
                let confirm_within_s = u16::try_from(confirm_within.as_secs()).unwrap_or(u16::MAX);
                to_port(
                    self,
                    uid,
                    PortCommand::Install {
                        uid,
                        confirm_within_s,
                    },
                );
            }
            Action::Abort { uid } => to_port(self, uid, PortCommand::Abort { uid }),
            Action::Finalize { uid } => to_port(self, uid, PortCommand::Finalize { uid }),
            Action::Event(event) => {
                self.record_transition(id, &event).await;
                let json = serde_json::to_vec(&EventOut {
                    at_ms: now_unix_ms(),
                    event: &event,
                })
                .unwrap_or_default();
                self.publish(json);
            }
            Action::Progress(progress) => {
                let tenth = progress.done * 10 / progress.total.max(1);
                if self.progress_published.get(&progress.uid) != Some(&tenth) {
                    self.progress_published.insert(progress.uid, tenth);
                    let json = serde_json::to_vec(&ProgressOut {
                        at_ms: now_unix_ms(),
                        event: "progress",
                        progress: &progress,
                    })
                    .unwrap_or_default();
                    self.publish(json);
                }
            }
            Action::Persist(_) => {}
        }
    }

    /// A node's firmware changed (or a new image failed on it): its RMA history.
    async fn record_transition(&self, id: u64, event: &rollout::Event) {
        use rollout::{EventKind, NodePhase};
        let Some(uid) = event.uid else { return };
        let outcome = match event.kind {
            EventKind::Phase(NodePhase::Confirmed) => "confirmed".to_owned(),
            EventKind::Phase(NodePhase::Finalized) => "finalized".to_owned(),
            EventKind::Phase(NodePhase::RolledBack) => "rolled back".to_owned(),
            EventKind::Phase(NodePhase::Failed) => format!("failed ({})", event.detail),
            _ => return,
        };
        let Some(status) = self.rollout.as_ref().map(|r| r.status(self.now())) else {
            return;
        };
        let Some(node) = status.nodes.iter().find(|n| n.uid == uid) else {
            return;
        };
        let (reply, _answer) = oneshot::channel();
        let _ = self
            .store_tx
            .send(StoreCommand::Ota {
                op: OtaStoreOp::Transition(FirmwareTransition {
                    uid: hex::encode(&uid),
                    at_ms: now_unix_ms(),
                    from_version: node.from_version.clone(),
                    to_version: node.to_version.clone(),
                    outcome,
                    rollout: i64::try_from(id).ok(),
                }),
                reply,
            })
            .await;
    }

    fn publish(&self, json: Vec<u8>) {
        if let Some(publish) = &self.publish
            && publish.try_send(json).is_err()
        {
            tracing::debug!(message = "Firmware update event not queued for the uplink (full).");
        }
    }

    fn refresh_view(&self) {
        let now = self.now();
        let mut nodes: Vec<NodeView> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.status.is_some())
            .map(|(uid, n)| NodeView {
                uid: hex::encode(uid),
                fw: n.fw.to_string(),
                hw_rev: n.hw_rev,
                online: n.online,
                phase: n.status.map(|s| s.phase.as_str()),
                floor: n.status.map(|s| s.floor.to_string()),
                flashed: n.transfer.map(|t| t.0),
                size: n.transfer.map(|t| t.1),
            })
            .collect();
        nodes.sort_by(|a, b| a.uid.cmp(&b.uid));
        let view = OtaView {
            rollout: self.rollout.as_ref().map(|r| r.status(now)),
            nodes,
        };
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }
}

#[derive(Serialize)]
struct EventOut<'a> {
    at_ms: i64,
    #[serde(flatten)]
    event: &'a rollout::Event,
}

#[derive(Serialize)]
struct ProgressOut<'a> {
    at_ms: i64,
    event: &'static str,
    #[serde(flatten)]
    progress: &'a rollout::Progress,
}

fn now_unix_ms() -> i64 {
    crate::io::wall_clock::unix_ms()
}

/// A spec's policy, defaults filled in.
fn settings(spec: &StartSpec) -> Result<Settings, Refused> {
    let duration =
        |name: &str, text: &Option<String>, default: Duration| -> Result<Duration, Refused> {
            match text {
                None => Ok(default),
                Some(t) => humantime::parse_duration(t)
                    .map_err(|e| Refused::new("bad-request", format!("{name} `{t}`: {e}"))),
            }
        };
    let mode = if spec.node.is_some() {
        if spec.canary.is_some() || spec.waves.is_some() {
            return Err(Refused::new(
                "bad-request",
                "a targeted update (one node) has no canary or waves",
            ));
        }
        Mode::Targeted
    } else {
        Mode::Staged {
            canary: spec.canary.unwrap_or(rollout::DEFAULT_CANARY),
            waves: match &spec.waves {
                Some(text) => Waves::parse(text)
                    .map_err(|e| Refused::new("bad-request", format!("waves `{text}`: {e}")))?,
                None => Waves::default(),
            },
        }
    };
    Ok(Settings {
        mode,
        soak: duration("soak", &spec.soak, rollout::DEFAULT_SOAK)?,
        confirm_within: duration(
            "confirm_within",
            &spec.confirm_within,
            rollout::DEFAULT_CONFIRM_WITHIN,
        )?,
        ..Settings::default()
    })
}
