//! The one place that creates channels and spawns the long-lived tasks.
//!
//! ```text
//! serial port ─► io::serial::run ─(store_tx)─► store::writer::run ─► SQLite
//!  (one task        PortSession                 group commit
//!   per port)       ◄──────(reply_tx: registered / committed → ACCEPT / ACK)──
//! io::api ─► store::Reader (own connection, WAL)
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::io::api::{self, ApiState};
use crate::io::serial::{self, PortStatus};
use crate::store::{Store, writer};

/// Commands queued to the store writer before port tasks wait (and nodes hold their samples).
const STORE_QUEUE: usize = 1024;

/// The store file inside a data directory.
#[must_use]
pub fn store_path(config: &Config) -> PathBuf {
    config.data_dir.join("outpost.db")
}

/// Runs the gateway until `shutdown` is cancelled. `on_listening` is called with the API's
/// address once it accepts connections.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let path = store_path(&config);
    let store =
        Store::open(&path).with_context(|| format!("cannot open store {}", path.display()))?;

    let condition = Arc::new(Mutex::new(writer::StoreCondition::default()));
    let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
    let writer = tokio::spawn(writer::run(
        store,
        store_rx,
        config.commit_interval,
        config.max_commit_readings,
        Arc::clone(&condition),
    ));

    let ports = Arc::new(Mutex::new(
        config
            .serial
            .iter()
            .map(|p| PortStatus {
                path: p.path.display().to_string(),
                ..PortStatus::default()
            })
            .collect(),
    ));
    let mut port_tasks = Vec::new();
    for (index, port) in config.serial.iter().enumerate() {
        port_tasks.push(tokio::spawn(serial::run(
            index,
            port.clone(),
            store_tx.clone(),
            Arc::clone(&ports),
            shutdown.clone(),
        )));
    }
    drop(store_tx); // the writer ends when the last port task does

    let listener = api::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api_listen))?;
    on_listening(listener.local_addr()?);
    let state = ApiState {
        gateway_id: config.gateway_id.clone(),
        started: Instant::now(),
        store_path: path,
        store_condition: condition,
        ports,
    };
    api::serve(listener, state, shutdown.clone())
        .await
        .context("API server failed")?;

    for task in port_tasks {
        let _ = task.await;
    }
    // Everything queued is committed before the process exits.
    writer.await.context("store writer failed")?;
    Ok(())
}
