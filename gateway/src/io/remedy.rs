//! The diagnostics and remediation verbs of remote commands, carried out: `diagnostics`,
//! `node-reboot`, `gateway-restart`, `modbus-read`, `modbus-write`. `io::commands` has checked,
//! claimed and will audit each; this module does the work and says how it ended
//! ([`Outcome`]). The decisions (redaction, whether a bundle fits the budget, its parts) are
//! `outpost_core::diagnostics`'.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_core::command::Outcome;
use outpost_core::command::remedy::{
    DiagnosticsArgs, ModbusPoint, ModbusWrite, NodeReboot, RebootMode,
};
use outpost_core::config::SerialPort;
use outpost_core::diagnostics::{self as policy, Delivery};
use outpost_core::modbus::map::RegisterMap;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use outpost_core::node_request::{NodeAnswer, NodeRequest};

use crate::io::diagnostics::{Builder, Inputs};
use crate::io::modbus::poller::{ModbusWriter, WriteFailure};
use crate::io::node_requests::NodeRequests;

/// What the remediation verbs reach.
#[derive(Debug, Clone)]
pub struct Remedy {
    /// Diagnostics bundles; also the store's readers and the telemetry.
    pub diagnostics: Builder,
    /// The serial ports, for a node's `run_pin`.
    pub serial: Vec<SerialPort>,
    /// Each Modbus device's map, by name: which points exist and which are writable.
    pub modbus_maps: Vec<(String, Arc<RegisterMap>)>,
    /// Writes go through each device's polling task (as the technician's page's do).
    pub modbus: ModbusWriter,
    /// The daemon's shutdown, for `gateway-restart`.
    pub shutdown: CancellationToken,
    /// The node links: soft reboot, HEALTH now.
    pub node_requests: NodeRequests,
}

/// How long `node-health` waits for the fresh HEALTH to be committed before it answers with
/// the registry as it is.
const HEALTH_COMMIT_POLLS: u32 = 20;
const HEALTH_COMMIT_POLL: Duration = Duration::from_millis(100);

/// The prefix of every `node-reboot mode=hard` failure that is about this machine.
const NOT_HERE: &str = "hard reboot not available on this machine";

impl Remedy {
    /// `diagnostics`: builds a bundle; uploads it in parts on `results` if it fits the data
    /// budget (or `upload=force`); the result says its size, SHA-256 and how it was delivered.
    pub async fn diagnostics(
        &self,
        request: &str,
        args: DiagnosticsArgs,
        results: &mpsc::Sender<(String, Vec<u8>)>,
    ) -> Outcome {
        let inputs = Inputs {
            journal_lines: args.journal_lines,
            pull_nodes: true,
        };
        let bundle = match self.diagnostics.build(inputs).await {
            Ok(bundle) => bundle,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let cost = self.diagnostics.telemetry.with(|t| t.cost().clone());
        let delivery = policy::decide_delivery(
            args.upload,
            bundle.bytes.len(),
            cost.projected_month,
            cost.budget,
        );
        let mut result = json!({
            "file": bundle.file_name,
            "size": bundle.bytes.len(),
            "sha256": bundle.sha256_hex(),
            "redactions": bundle.redactions,
            "delivery": delivery.as_str(),
            "download": "/api/v1/diagnostics",
        });
        if let Delivery::Parts(count) = delivery {
            for part in policy::parts(request, &bundle.bytes) {
                if results.send(part).await.is_err() {
                    return Outcome::Failed("the uplink stopped while the bundle was sent".into());
                }
            }
            result["parts"] = count.into();
            result["parts_topic"] = format!("cmd/result/{request}/part/{{n}}").into();
        }
        tracing::info!(
            message = "Diagnostics bundle built.",
            request,
            size = bundle.bytes.len(),
            sha256 = %bundle.sha256_hex(),
            delivery = delivery.as_str()
        );
        match delivery.refusal() {
            // The bundle exists but did not leave: the page has it.
            Some(why) => Outcome::Failed(format!(
                "{why}; bundle {} bytes, sha256 {}",
                bundle.bytes.len(),
                bundle.sha256_hex()
            )),
            None => Outcome::Done(result),
        }
    }

    /// `node-reboot`: soft over the node's link (its firmware restarts itself, reason
    /// `software`); hard through the port's `run_pin` (works on a hung node).
    pub async fn node_reboot(&self, reboot: &NodeReboot) -> Outcome {
        match reboot.mode {
            RebootMode::Soft => match self.ask_node(&reboot.node, NodeRequest::Reboot).await {
                Ok(NodeAnswer::Rebooting) => {
                    Outcome::Done(json!({ "node": reboot.node, "mode": "soft" }))
                }
                Ok(_) => Outcome::Failed("the node answered REBOOT with something else".into()),
                Err(why) => Outcome::Failed(why),
            },
            RebootMode::Hard => self.hard_reboot(&reboot.node).await,
        }
    }

    /// `node-health`: the node sends a HEALTH at once (stored and shown like any other); the
    /// result carries the registry's view of the node once that report is in.
    pub async fn node_health(&self, uid: &str) -> Outcome {
        let asked_ms = crate::io::wall_clock::unix_ms();
        match self.ask_node(uid, NodeRequest::HealthNow).await {
            Ok(NodeAnswer::HealthSent) => {}
            Ok(_) => {
                return Outcome::Failed("the node answered HEALTH_NOW with something else".into());
            }
            Err(why) => return Outcome::Failed(why),
        }
        // The HEALTH went out before the answer; its commit is the store writer's next round.
        let mut node = None;
        for _ in 0..HEALTH_COMMIT_POLLS {
            let wanted = uid.to_owned();
            node = self
                .diagnostics
                .readers
                .read(move |r| Ok(r.nodes()?.into_iter().find(|n| n.uid == wanted)))
                .await
                .ok()
                .flatten();
            if node.as_ref().is_some_and(|n| n.last_seen_ms >= asked_ms) {
                break;
            }
            tokio::time::sleep(HEALTH_COMMIT_POLL).await;
        }
        Outcome::Done(json!({ "node": uid, "health_sent": true, "registry": node }))
    }

    /// Sends `request` to node `uid` over its link; a failure as the result's detail.
    async fn ask_node(&self, uid: &str, request: NodeRequest) -> Result<NodeAnswer, String> {
        let raw = outpost_core::hex::decode::<8>(uid)
            .ok_or_else(|| format!("node `{uid}` is not a uid"))?;
        self.node_requests
            .request(raw, request)
            .await
            .map_err(|e| format!("node {uid}: {e}"))
    }

    async fn hard_reboot(&self, uid: &str) -> Outcome {
        let wanted = uid.to_owned();
        let node = self
            .diagnostics
            .readers
            .read(move |r| Ok(r.nodes()?.into_iter().find(|n| n.uid == wanted)))
            .await;
        let node = match node {
            Ok(Some(node)) => node,
            Ok(None) => {
                return Outcome::Failed(format!("unknown-node: {uid} is not in the registry"));
            }
            Err(e) => return Outcome::Failed(format!("the registry could not be read: {e}")),
        };
        let Some(port) = node.port else {
            return Outcome::Failed(format!("{NOT_HERE}: node {uid} was never seen on a port"));
        };
        let Some(pin) = self
            .serial
            .iter()
            .find(|p| p.path == Path::new(&port))
            .and_then(|p| p.run_pin)
        else {
            return Outcome::Failed(format!(
                "{NOT_HERE}: port {port} has no run_pin in its [[serial]] section"
            ));
        };
        match tokio::task::spawn_blocking(move || crate::io::gpio::pulse_run_pin(pin)).await {
            Ok(Ok(())) => {
                tracing::info!(
                    message = "Node reset through its RUN pin.",
                    node = uid,
                    port,
                    pin
                );
                Outcome::Done(json!({
                    "node": uid,
                    "mode": "hard",
                    "port": port,
                    "run_pin": pin,
                    "pulse_ms": crate::io::gpio::RUN_PULSE.as_millis() as u64,
                }))
            }
            Ok(Err(why)) => Outcome::Failed(format!("{NOT_HERE}: {why}")),
            Err(e) => Outcome::Failed(format!("the GPIO pulse stopped: {e}")),
        }
    }

    /// `gateway-restart`: answered now; the daemon stops once the answer is handed to the
    /// uplink ([`Remedy::restart_after_answer`]).
    pub fn gateway_restart(&self) -> Outcome {
        Outcome::Done(json!({
            "restarting": true,
            "exit_status": crate::io::restart::RESTART_EXIT_STATUS,
        }))
    }

    /// Waits until the uplink took every result handed to it (so the answer leaves before the
    /// uplink's `offline` and DISCONNECT), then stops the daemon for a restart.
    pub async fn restart_after_answer(&self, results: &mpsc::Sender<(String, Vec<u8>)>) {
        let taken = async {
            while results.capacity() < results.max_capacity() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // An uplink that does not take it within this is down; the audit log has the answer.
        let _ = tokio::time::timeout(Duration::from_secs(10), taken).await;
        // The uplink queues it on the same turn it takes it: one more turn to be sure.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::info!(
            message = "Restarting on a remote command.",
            exit_status = crate::io::restart::RESTART_EXIT_STATUS
        );
        crate::io::restart::request(&self.shutdown);
    }

    fn map(&self, device: &str) -> Result<&RegisterMap, String> {
        self.modbus_maps
            .iter()
            .find(|(name, _)| name == device)
            .map(|(_, map)| map.as_ref())
            .ok_or_else(|| format!("unknown-device: no Modbus device is named `{device}`"))
    }

    /// `modbus-read`: a declared point's value from the device's latest poll, with its time.
    pub fn modbus_read(&self, target: &ModbusPoint) -> Outcome {
        let map = match self.map(&target.device) {
            Ok(map) => map,
            Err(why) => return Outcome::Failed(why),
        };
        if map.point(&target.point).is_none() {
            return Outcome::Failed(format!(
                "unknown-point: device `{}` declares no point `{}`",
                target.device, target.point
            ));
        }
        let snapshot = self.diagnostics.telemetry.snapshot();
        let Some(device) = snapshot.modbus.iter().find(|d| d.name == target.device) else {
            return Outcome::Failed(format!(
                "not-polled: device `{}` is not polled by this gateway",
                target.device
            ));
        };
        match device.values.get(&target.point) {
            Some(value) => Outcome::Done(json!({
                "device": target.device,
                "point": target.point,
                "value": value.value,
                "unit": value.unit,
                "polled_at": value.at,
                "online": device.health.state() == outpost_core::modbus::health::LinkState::Online,
            })),
            None => Outcome::Failed(format!(
                "no-value: point `{}` of `{}` has not been read yet ({})",
                target.point,
                target.device,
                device.last_error.as_deref().unwrap_or("no poll finished")
            )),
        }
    }

    /// `modbus-write`: through the device's own polling task, as the technician's page writes:
    /// only a point its map declares `writable`, after the point's type and range checks.
    pub async fn modbus_write(&self, write: &ModbusWrite) -> Outcome {
        let target = &write.target;
        if let Err(why) = self.map(&target.device) {
            return Outcome::Failed(why);
        }
        let result = self
            .modbus
            .write(&target.device, &target.point, write.value())
            .await;
        match result {
            Ok(()) => {
                tracing::info!(message = "Modbus point written on a remote command.", device = %target.device, point = %target.point, value = %write.value);
                Outcome::Done(json!({
                    "device": target.device,
                    "point": target.point,
                    "written": write.value,
                }))
            }
            Err(failure) => {
                let kind = match &failure {
                    WriteFailure::UnknownDevice(_) => "unknown-device",
                    WriteFailure::UnknownPoint { .. } => "unknown-point",
                    WriteFailure::Write(_) => "refused",
                    WriteFailure::Exception(_) => "exception",
                    WriteFailure::Stopped => "stopped",
                    WriteFailure::Request(_) => "request",
                };
                Outcome::Failed(format!("{kind}: {failure}"))
            }
        }
    }
}
