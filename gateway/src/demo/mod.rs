//! `outpost demo`: a simulated site on this machine.
//!
//! Simulated nodes (the real node core from `outpost-node`, with simulated sensors) run on
//! pseudo-terminals in a temporary directory; the gateway opens those as its serial ports, exactly
//! as it opens `/dev/ttyACM*` on a site. Everything is removed on exit.
//!
//! With `--modbus`, a simulated three-phase meter ([`meter`]) also serves Modbus TCP on loopback
//! and the gateway polls it through the built-in Eastron SDM630 catalogue map, as it would poll
//! a meter on the site LAN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use outpost_node::sim::{SimConfig, SimNode};
use tokio_util::sync::CancellationToken;

use crate::topology;
use outpost_core::config::modbus::{DeviceConfig, ModbusConfig, Transport};
use outpost_core::config::{Config, SerialPort};

pub mod meter;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub listen: SocketAddr,
    /// Samples per second per node.
    pub rate: f64,
    /// Bearer token for the HTTP pull endpoints.
    pub pull_token: String,
    pub batch_interval: Duration,
    /// Also run a simulated Modbus TCP meter ([`meter`]) and poll it.
    pub modbus: bool,
}

/// The uid of demo node `i`: recognisable, and stable across runs.
fn demo_uid(i: usize) -> [u8; 8] {
    let mut uid = [0xde, 0x30, 0, 0, 0, 0, 0, 0];
    uid[4..].copy_from_slice(&(i as u32 + 1).to_be_bytes());
    uid
}

pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=64).contains(&options.nodes),
        "--nodes must be between 1 and 64"
    );
    anyhow::ensure!(
        options.rate > 0.0 && options.rate <= 100.0,
        "--rate must be in (0, 100] samples/s"
    );
    let dir = tempfile::Builder::new()
        .prefix("outpost-demo-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let mut nodes = Vec::new();
    let mut serial = Vec::new();
    for i in 0..options.nodes {
        let mut sim = SimConfig::new(demo_uid(i));
        sim.seed = i as u64;
        sim.sample_interval = Duration::from_secs_f64(1.0 / options.rate);
        sim.lot = "DEMO-LOT-1".into();
        let link = dir.path().join(format!("ttyNODE{i}"));
        let node = SimNode::spawn_on_pty(sim, &link)
            .with_context(|| format!("cannot start simulated node {i}"))?;
        serial.push(SerialPort {
            path: link,
            baud: 115_200,
            limits: outpost_core::link::LinkLimits::default(),
            reopen_backoff_max: Duration::from_secs(2),
            offline_after: outpost_core::site::DEFAULT_OFFLINE_AFTER,
            run_pin: None,
        });
        nodes.push(node);
    }
    let config = Config {
        gateway_id: "demo-site".into(),
        data_dir: dir.path().to_owned(),
        api_listen: options.listen,
        api: outpost_core::config::ApiConfig::defaults(options.listen, None),
        commit_interval: Duration::from_millis(20),
        max_commit_readings: 8192,
        max_nodes: 1024,
        serial,
        batch_interval: options.batch_interval,
        min_batch_interval: options.batch_interval,
        max_batch_readings: 100_000,
        monthly_budget_bytes: 0,
        max_batch_interval: options.batch_interval * 10,
        priority_min_interval: outpost_core::config::DEFAULT_PRIORITY_MIN_INTERVAL,
        pull_token: Some(options.pull_token.clone()),
        upload_token: None,
        technician_token: None,
        buffer_max_bytes: 64 * 1024 * 1024,
        keep_readings: 100_000,
        mqtt: None,
        log_level: "info".into(),
        modbus: ModbusConfig::default(),
        clock_trust: outpost_core::clock::Trust::Plausible,
        clock_max_hold: outpost_core::clock::DEFAULT_MAX_HOLD,
        // The demo's simulated nodes join at once; a site enrols through a window or a manifest.
        enrollment: outpost_core::config::EnrollmentConfig {
            policy: outpost_core::link::EnrollmentPolicy::Open,
            listed: std::collections::BTreeMap::new(),
        },
        // No broker, so no remote commands.
        commands: outpost_core::config::CommandsConfig::default(),
        ota: outpost_core::config::OtaConfig::default(),
        alerts: outpost_core::alerting::Rules::default(),
        health: outpost_core::config::health::HealthConfig::default(),
        warnings: Vec::new(),
    };
    let mut config = config;
    if options.modbus {
        let map = Arc::new(meter::demo_map()?);
        let addr = meter::serve(Arc::clone(&map), 1, shutdown.clone())
            .await
            .context("cannot start the simulated Modbus meter")?;
        config.modbus.devices.push(DeviceConfig {
            name: "demo-meter".into(),
            transport: Transport::Tcp(addr),
            unit: 1,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            retries: 1,
            map_path: meter::DEMO_MAP_NAME.into(),
            map,
        });
    }
    let modbus = options.modbus;
    let token = options.pull_token.clone();
    let interval = options.batch_interval;
    let count = options.nodes;
    let data_dir = dir.path().display().to_string();
    let result = topology::run(config, shutdown, move |addr, _writer| {
        println!();
        println!(
            "  Outpost demo: {count} simulated sensor nodes on pseudo-terminals in {data_dir}"
        );
        println!("  Status:  http://{addr}/api/v1/status");
        println!("  Nodes:   http://{addr}/api/v1/nodes  (paginated: ?limit=N&after=UID)");
        if modbus {
            println!("  Modbus:  http://{addr}/api/v1/modbus  (a simulated SDM630 meter, polled every second)");
        }
        println!("  Batches: curl -H 'Authorization: Bearer {token}' http://{addr}/api/v1/batches");
        println!("           (sealed every {}s; fetch one with /api/v1/batches/SEQ, decode with `outpost batch decode`)", interval.as_secs());
        println!("  Press Ctrl-C to stop; everything is removed on exit.");
        println!();
    })
    .await;
    for node in nodes {
        let _ = node.stop();
    }
    result
}
