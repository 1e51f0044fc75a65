//! The diagnostics bundle: what a technician or the cloud needs to understand a site without
//! going there, in one compressed archive (ustar in zstd, `outpost-diagnostics-*.tar.zst`).
//!
//! This adapter gathers (the journal through `journalctl`, the configuration's files, the
//! store's tables, the telemetry's alerts, the host's versions); `outpost_core::diagnostics`
//! redacts and packs. Built on demand for the remote command `diagnostics` and for
//! `GET /api/v1/diagnostics`; one at a time ([`Builder`]), never kept on disk.

use std::path::PathBuf;
use std::sync::Arc;

use outpost_core::diagnostics::{self, Archive, Redaction};
use serde_json::{Value, json};
use sha2::Digest as _;

use outpost_core::node_request::{NodeAnswer, NodeRequest};

use crate::io::node_requests::NodeRequests;
use crate::io::store::Readers;
use crate::io::telemetry::TelemetryHub;

/// zstd level: a few hundred KiB of text in well under a second on a Raspberry Pi 3.
const ZSTD_LEVEL: i32 = 12;

/// Rows of each node table a bundle holds, newest first.
const TABLE_ROWS: u32 = 5000;
/// Command audit entries a bundle holds, newest first.
const AUDIT_ROWS: u32 = 500;

/// A node's own history, pulled over the node link (`io::node_requests`): the resets its flash
/// remembers and its log ring. A node that is not linked now, or does not answer, has `error`
/// instead; the gateway's own view of its boots is in `node_resets.json` either way.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSidePull {
    pub uid: String,
    /// The node's reset records, newest first, as the node reports them.
    pub resets: Vec<Value>,
    /// The node's log ring, oldest first.
    pub log: Vec<Value>,
    /// Log entries the ring had overwritten before the first one here.
    pub log_overwritten: u32,
    /// Why the pull failed (or stopped part-way).
    pub error: Option<String>,
}

/// What a bundle is built from, besides the gateway's own state.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Journal lines to include.
    pub journal_lines: u32,
    /// Ask every linked node for its reset history and log ring over its link.
    pub pull_nodes: bool,
}

/// Nodes pulled at the same time: one per port at most matters (a port carries one node), this
/// only bounds the tasks.
const PULLS_AT_ONCE: usize = 8;

/// Pulls each node's own reset history and log ring; nodes not linked now answer at once.
async fn pull_nodes(requests: &NodeRequests, uids: Vec<String>) -> Vec<NodeSidePull> {
    let mut pulls = Vec::with_capacity(uids.len());
    for chunk in uids.chunks(PULLS_AT_ONCE) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, uid) in chunk.iter().enumerate() {
            let requests = requests.clone();
            let uid = uid.clone();
            tasks.spawn(async move { (i, pull_node(&requests, uid).await) });
        }
        let mut done: Vec<(usize, NodeSidePull)> = tasks.join_all().await;
        done.sort_by_key(|(i, _)| *i);
        pulls.extend(done.into_iter().map(|(_, pull)| pull));
    }
    pulls
}

async fn pull_node(requests: &NodeRequests, uid: String) -> NodeSidePull {
    let mut pull = NodeSidePull {
        uid: uid.clone(),
        resets: Vec::new(),
        log: Vec::new(),
        log_overwritten: 0,
        error: None,
    };
    let Some(raw) = outpost_core::hex::decode::<8>(&uid) else {
        pull.error = Some("the registry's uid is not 16 hex digits".into());
        return pull;
    };
    match requests.request(raw, NodeRequest::ResetHistory).await {
        Ok(NodeAnswer::ResetHistory(history)) => {
            pull.resets = history
                .records
                .iter()
                .map(|r| {
                    json!({
                        "boot": r.boot,
                        "reason": r.reason.as_str(),
                        "expected": r.reason.is_expected(),
                        "firmware": r.fw.to_string(),
                    })
                })
                .collect();
        }
        Ok(_) => {
            pull.error = Some("the node answered RESET_HISTORY with something else".into());
            return pull;
        }
        Err(e) => {
            pull.error = Some(format!("reset history: {e}"));
            return pull;
        }
    }
    match requests.read_log(raw).await {
        Ok((entries, overwritten)) => {
            pull.log_overwritten = overwritten;
            pull.log = entries
                .iter()
                .map(|e| {
                    json!({
                        "uptime_ms": e.uptime_ms,
                        "event": e.event.as_str(),
                        "arg": e.arg,
                    })
                })
                .collect();
        }
        Err(e) => pull.error = Some(format!("log ring: {e}")),
    }
    pull
}

/// A built bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The archive, compressed.
    pub bytes: Vec<u8>,
    pub sha256: [u8; 32],
    /// The file name a download gets.
    pub file_name: String,
    /// Configuration values redacted.
    pub redactions: usize,
    /// Journal words redacted.
    pub journal_redactions: usize,
}

impl Bundle {
    #[must_use]
    pub fn sha256_hex(&self) -> String {
        outpost_core::hex::encode(&self.sha256)
    }
}

/// Why no bundle was built.
#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    #[error("a diagnostics bundle is being built already")]
    Busy,
    #[error("the store could not be read: {0}")]
    Store(#[from] crate::io::store::StoreError),
    #[error("the bundle could not be packed: {0}")]
    Pack(String),
}

/// Builds bundles, one at a time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Builder {
    pub gateway_id: String,
    pub readers: Readers,
    pub telemetry: TelemetryHub,
    /// The node links, for each node's own history ([`Inputs::pull_nodes`]).
    pub node_requests: NodeRequests,
    /// The configuration's files; `None`: those [`crate::io::config::load`] last read.
    pub config_files: Option<Vec<PathBuf>>,
    busy: Arc<tokio::sync::Semaphore>,
}

impl Builder {
    #[must_use]
    pub fn new(
        gateway_id: String,
        readers: Readers,
        telemetry: TelemetryHub,
        node_requests: NodeRequests,
    ) -> Builder {
        Builder {
            gateway_id,
            readers,
            telemetry,
            node_requests,
            config_files: None,
            busy: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Builds a bundle now; [`DiagnosticsError::Busy`] while another is being built.
    pub async fn build(&self, inputs: Inputs) -> Result<Bundle, DiagnosticsError> {
        let _permit = self
            .busy
            .try_acquire()
            .map_err(|_| DiagnosticsError::Busy)?;
        let at_ms = crate::io::wall_clock::unix_ms();
        let alerts = self.telemetry.alerts_changed_since(0);
        let snapshot = self.telemetry.snapshot();
        let mut tables = self
            .readers
            .read(|r| {
                Ok(json!({
                    "statistics": r.statistics()?,
                    "nodes": r.nodes()?,
                    "node_resets": r.reset_history(TABLE_ROWS)?,
                    "node_firmware": r.firmware_transitions(TABLE_ROWS)?,
                    "command_audit": r.command_audit(AUDIT_ROWS)?,
                }))
            })
            .await?;
        let node_side = if inputs.pull_nodes {
            let uids = tables["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter_map(|n| n["uid"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some(pull_nodes(&self.node_requests, uids).await)
        } else {
            None
        };
        if let Some(pulls) = node_side {
            tables["node_side"] = json!(pulls);
        }
        let status = json!({
            "uplink": snapshot.uplink,
            "cost": snapshot.cost,
            "store": snapshot.store,
            "ports": snapshot.ports,
            "modbus": snapshot.modbus,
        });
        let gateway_id = self.gateway_id.clone();
        let config_files = self
            .config_files
            .clone()
            .unwrap_or_else(crate::io::config::loaded_files);
        tokio::task::spawn_blocking(move || {
            pack(
                &gateway_id,
                at_ms,
                &config_files,
                &inputs,
                &tables,
                &status,
                &alerts,
            )
        })
        .await
        .map_err(|e| DiagnosticsError::Pack(e.to_string()))?
    }
}

fn pretty(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Gathers what needs the host (configuration files, journal, versions) and packs everything.
fn pack(
    gateway_id: &str,
    at_ms: i64,
    config_files: &[PathBuf],
    inputs: &Inputs,
    tables: &Value,
    status: &Value,
    alerts: &[outpost_core::telemetry::Alert],
) -> Result<Bundle, DiagnosticsError> {
    let mtime = u64::try_from(at_ms / 1000).unwrap_or(0);
    let (config, redactions) = redacted_config(config_files);
    let (journal, journal_redactions) = journal(inputs.journal_lines);
    let node_side = match tables.get("node_side") {
        Some(pulls) => pretty(pulls),
        None => pretty(&json!({
            "pulled": false,
            "note": "this bundle was asked for without pulling the nodes; node_resets.json \
                     holds every boot the gateway saw (from each node's HEALTH)",
        })),
    };
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "versions.json",
            "outpost, OS and kernel versions",
            pretty(&versions()),
        ),
        (
            "config.toml",
            "the configuration, every file in load order, secrets redacted",
            config.into_bytes(),
        ),
        (
            "redactions.json",
            "what was redacted: key and why (never the value)",
            pretty(&json!({ "config": redactions, "journal_words": journal_redactions })),
        ),
        (
            "journal.txt",
            "recent journal lines of the outpost unit (or why there are none)",
            journal.into_bytes(),
        ),
        (
            "store.json",
            "store sizes, row counts, outbox depth",
            pretty(&tables["statistics"]),
        ),
        (
            "status.json",
            "uplink, data budget, ports and Modbus devices now",
            pretty(status),
        ),
        ("nodes.json", "the node registry", pretty(&tables["nodes"])),
        (
            "node_resets.json",
            "every node's reset history, newest first",
            pretty(&tables["node_resets"]),
        ),
        (
            "node_firmware.json",
            "every node's firmware transitions, newest first",
            pretty(&tables["node_firmware"]),
        ),
        (
            "node_side.json",
            "each node's own reset history and log ring, pulled over the link",
            node_side,
        ),
        (
            "alerts.json",
            "alerts raised or resolved since the gateway started",
            pretty(&alerts),
        ),
        (
            "command_audit.json",
            "the newest remote commands and how they ended",
            pretty(&tables["command_audit"]),
        ),
    ];
    let index: Vec<(&str, &str)> = files.iter().map(|(n, w, _)| (*n, *w)).collect();
    let mut archive = Archive::new();
    let pack_error =
        |e: outpost_core::diagnostics::ArchiveError| DiagnosticsError::Pack(e.to_string());
    archive
        .add(
            "README.txt",
            diagnostics::readme(gateway_id, at_ms, &index).as_bytes(),
            mtime,
        )
        .map_err(pack_error)?;
    for (name, _, bytes) in &files {
        archive.add(name, bytes, mtime).map_err(pack_error)?;
    }
    let tar = archive.finish();
    let bytes = zstd::bulk::compress(&tar, ZSTD_LEVEL)
        .map_err(|e| DiagnosticsError::Pack(format!("zstd: {e}")))?;
    let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    Ok(Bundle {
        file_name: format!("outpost-diagnostics-{gateway_id}-{at_ms}.tar.zst"),
        bytes,
        sha256,
        redactions: redactions.len(),
        journal_redactions,
    })
}

/// Every configuration file, redacted, one after the other with a comment naming it.
fn redacted_config(files: &[PathBuf]) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut found = Vec::new();
    if files.is_empty() {
        text.push_str("# no configuration file was loaded by this process\n");
    }
    for file in files {
        let shown = file.display().to_string();
        text.push_str(&format!("# ---- {shown}\n"));
        let redacted = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|raw| diagnostics::redact_toml(&raw));
        match redacted {
            Ok((redacted, list)) => {
                text.push_str(&redacted);
                found.extend(list.into_iter().map(
                    |Redaction { key, why }| json!({ "file": shown, "key": key, "why": why }),
                ));
            }
            // Never the raw text of a file that did not parse: it could not be redacted.
            Err(why) => text.push_str(&format!("# left out: {why}\n")),
        }
        text.push('\n');
    }
    (text, found)
}

/// The newest `lines` journal lines of the unit, each with its secret-shaped words redacted,
/// and how many words were; or a note saying why there are none.
fn journal(lines: u32) -> (String, usize) {
    let output = std::process::Command::new("journalctl")
        .args(["-u", "outpost", "-n", &lines.to_string()])
        .args(["-o", "short-iso", "--no-pager"])
        .stdin(std::process::Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (
                "# journalctl is not on this machine: no journal lines (outside systemd the \
                 daemon logs to its standard error)\n"
                    .into(),
                0,
            );
        }
        Err(e) => return (format!("# journalctl could not be run: {e}\n"), 0),
    };
    let mut text = format!(
        "# journalctl -u outpost -n {lines} -o short-iso --no-pager: {}\n",
        output.status
    );
    let mut count = 0;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr
        .lines()
        .map(|l| ("# ", l))
        .chain(stdout.lines().map(|l| ("", l)))
    {
        let (redacted, n) = diagnostics::redact_line(line.1);
        count += n;
        text.push_str(line.0);
        text.push_str(&redacted);
        text.push('\n');
    }
    (text, count)
}

/// Outpost's version, the OS and the kernel, from the files every Linux has.
fn versions() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let os = read("/etc/os-release").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
    });
    json!({
        "outpost": env!("CARGO_PKG_VERSION"),
        "os": os,
        "kernel": read("/proc/sys/kernel/osrelease").map(|v| v.trim().to_owned()),
        "kernel_build": read("/proc/sys/kernel/version").map(|v| v.trim().to_owned()),
        "arch": std::env::consts::ARCH,
        "uptime_s": read("/proc/uptime")
            .and_then(|v| v.split_whitespace().next().and_then(|s| s.parse::<f64>().ok())),
    })
}
