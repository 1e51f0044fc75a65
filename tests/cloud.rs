//! The cloud's ingest for the end-to-end tests and benchmarks: `outpost-ingest run` replicas
//! with their config written by the test, stopped by PID, and the broker ACL they run under.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::broker::{Broker, Pki};
use crate::postgres::Postgres;
use crate::{Proc, bin, free_port, http, wait_for};

/// Mosquitto's ACL: gateways in their own subtree; the ingest reads every gateway's batches and
/// writes every gateway's acks, nothing else; the test's cloud tap reads everything.
pub const ACL: &str = "pattern readwrite outpost/%u/#\n\n\
                   user cloud\ntopic readwrite outpost/#\n\n\
                   user ingest\ntopic read outpost/+/batch\ntopic write outpost/+/ack\n";

/// One `outpost-ingest run` replica.
pub struct Ingest {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub metrics: SocketAddr,
    pub proc: Option<Proc>,
}

impl Ingest {
    /// A replica named `replica` whose config holds `sources` (`[mqtt]`, `[pull]` tables).
    pub fn new(dir: &Path, replica: &str, pg: &Postgres, sources: &str) -> Result<Ingest> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join(format!("{replica}.toml"));
        std::fs::write(
            &config,
            format!(
                "replica = \"{replica}\"\n\n[database]\nurl = \"{}\"\nconnections = 3\nretention_days = 30\n\n\
                 [metrics]\nlisten = \"{metrics}\"\n\n{sources}",
                pg.url()
            ),
        )?;
        Ok(Ingest {
            name: replica.to_owned(),
            config,
            log: dir.join(format!("{replica}.log")),
            metrics,
            proc: None,
        })
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(bin("outpost-ingest"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("OUTPOST_INGEST_LOG", "info")
            .stderr(log);
        let mut proc = Proc::spawn("outpost-ingest", &mut cmd)?;
        let metrics = self.metrics;
        wait_for(Duration::from_secs(20), "the ingest's /healthz", || {
            if proc.try_wait().is_some() {
                return Some(false);
            }
            http(metrics, "GET", "/healthz", None, None)
                .ok()
                .map(|(s, _)| s == 200)
        })
        .and_then(|up| {
            ensure!(up, "outpost-ingest exited on start");
            Ok(())
        })
        .with_context(|| self.log_text())?;
        self.proc = Some(proc);
        Ok(())
    }

    /// The running replica's PID.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(|p| p.pid().as_raw())
    }

    /// SIGTERM, as an orchestrator stops a replica: it leaves the group and finishes what it holds.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            let status = proc.terminate(Duration::from_secs(30))?;
            ensure!(
                status.success(),
                "outpost-ingest exited with {status}\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    pub fn kill_hard(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill_hard();
        }
    }

    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http(self.metrics, "GET", "/metrics", None, None)?;
        ensure!(status == 200, "/metrics: {status}");
        Ok(String::from_utf8(body)?)
    }

    /// A counter's value on this replica's /metrics (first line starting with `prefix`).
    pub fn counter(&self, prefix: &str) -> Result<f64> {
        let text = self.metrics()?;
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .with_context(|| format!("no {prefix} in\n{text}"))?;
        Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn mqtt_sources(broker: &Broker, pki: &Pki) -> Result<String> {
    let files = pki.client("ingest")?;
    Ok(format!(
        "[mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         group = \"e2e\"\nkeepalive = \"5s\"\nreceive_maximum = 16\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    ))
}
