//! The one place that creates channels and spawns the long-lived tasks.
//!
//! ```text
//! serial port ─► io::serial::run ─(store_tx)─► store::writer::run ─► SQLite
//!  (one task        PortSession                 group commit
//!   per port)       ◄──────(reply_tx: registered / committed → ACCEPT / ACK)──
//! store::writer ── batcher: seal due batches ──► outbox (batches table)
//! outbox ─► io::uplink::mqtt (rumqttc) ─unix socket─► io::uplink::link (TLS, metered) ─► broker
//!           cloud ack on outpost/{id}/ack ─(store_tx)─► writer: delete acknowledged batches
//! io::api ─► store::Reader (own connection, WAL); batch acks ─(store_tx)─► writer
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::io::api::{self, ApiState};
use crate::io::dictionaries;
use crate::io::modbus::poller::{self, DeviceRuntime, ModbusWriter};
use crate::io::modbus::rtu;
use crate::io::store::writer::StoreCommand;
use crate::io::store::{Readers, Store, writer};
use crate::io::telemetry::TelemetryHub;
use crate::io::uplink::cost::{self, CostConfig};
use crate::io::uplink::link;
use crate::io::uplink::meter::Meter;
use crate::io::uplink::mqtt::{self as uplink_mqtt, UplinkIo};
use crate::io::uplink::provision;
use crate::io::wall_clock::WallClock;
use crate::io::{node_key, serial};
use outpost_core::budget::Pacing;
use outpost_core::clock::ClockConfig;
use outpost_core::config::Config;
use outpost_core::config::modbus::Transport;
use outpost_core::modbus::plan::CostModel;
use outpost_core::telemetry::{AlertKey, AlertKind, Event, Telemetry};

/// Commands queued to the store writer before port tasks wait (and nodes hold their samples).
const STORE_QUEUE: usize = 1024;

/// The store file inside a data directory.
#[must_use]
pub fn store_path(config: &Config) -> PathBuf {
    config.data_dir.join("outpost.db")
}

/// Runs the gateway until `shutdown` is cancelled. `on_listening` is called with the API's
/// address once it accepts connections, and with a probe of the store writer's progress for the
/// systemd watchdog.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr, crate::io::systemd::WriterProbe),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let path = store_path(&config);
    let mut store =
        Store::open(&path).with_context(|| format!("cannot open store {}", path.display()))?;
    store.set_max_nodes(config.max_nodes);
    store.set_enrollment(config.enrollment.clone());
    // The wall clock's judge, with what the store remembers of earlier runs (outpost_core::clock):
    // every reading's time goes through it.
    let boot_id = crate::io::wall_clock::kernel_boot_id();
    let remembered = store
        .transaction(|tx| tx.begin_boot(&boot_id))
        .with_context(|| {
            format!(
                "cannot read the clock's state from store {}",
                path.display()
            )
        })?;
    let clock = WallClock::new(
        ClockConfig {
            trust: config.clock_trust,
            max_hold: config.clock_max_hold,
            ..ClockConfig::with_floor(crate::io::wall_clock::BUILD_FLOOR_MS)
        },
        remembered,
    );

    // The newest sealed batch, so the uplink wakes for new batches instead of looking for them.
    let outbox = store.reader().and_then(|r| r.outbox()).unwrap_or_default();
    let newest_sealed = outbox.newest_seq.unwrap_or(0);
    let (sealed_tx, sealed_rx) = watch::channel(newest_sealed);
    // One place for status, counters and alerts: every task reports to it, the API reads it.
    let port_paths: Vec<String> = config
        .serial
        .iter()
        .map(|p| p.path.display().to_string())
        .collect();
    let telemetry = TelemetryHub::new(Telemetry::new(
        &port_paths,
        config.mqtt.is_some(),
        config.batch_interval,
    ));
    raise_update_alert(&telemetry, Path::new(crate::io::update::STATE_DIR));
    let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
    let writer_config = writer::WriterConfig {
        gateway_id: config.gateway_id.clone(),
        commit_interval: config.commit_interval,
        max_commit_readings: config.max_commit_readings,
        batch_interval: config.batch_interval,
        max_batch_readings: config.max_batch_readings,
        priority_min_interval: config.priority_min_interval,
        buffer_max_bytes: config.buffer_max_bytes,
        keep_readings: config.keep_readings,
        dictionary: dictionaries::load_active(&dictionaries::dir(&config.data_dir))
            .context("cannot load the active batch dictionary")?,
        sealed: sealed_tx,
        clock: clock.clone(),
    };
    let (interval_tx, interval_rx) = watch::channel(config.batch_interval);
    let writer = tokio::spawn(writer::run(
        store,
        store_rx,
        interval_rx,
        writer_config,
        telemetry.clone(),
    ));
    let meter = Arc::new(Meter::default());
    // Read connections for the API, the cost meter and the uplink, opened once and reused.
    let readers = Readers::new(&path);
    let cost_config = CostConfig {
        pacing: Pacing {
            budget: config.monthly_budget_bytes,
            floor: config.min_batch_interval,
            target: config.batch_interval,
            ceiling: config.max_batch_interval,
        },
        clock: clock.clone(),
    };
    let cost_task = tokio::spawn(cost::run(
        cost_config,
        Arc::clone(&meter),
        readers.clone(),
        store_tx.clone(),
        interval_tx,
        telemetry.clone(),
        shutdown.clone(),
    ));

    // Fleet alert rules: every `alerts.interval`, the registry, resets, outbox, budget and
    // Modbus counters in; transitions to the telemetry, which wakes the uplink.
    let alerting_task = tokio::spawn(crate::io::alerting::run(
        config.alerts.clone(),
        crate::io::alerting::AlertingIo {
            readers: readers.clone(),
            telemetry: telemetry.clone(),
            offline_after: config
                .serial
                .iter()
                .map(|p| (p.path.display().to_string(), p.offline_after))
                .collect(),
        },
        shutdown.clone(),
    ));

    // Node firmware rollouts: one task, with each port's ends; its events go up at once.
    let (ota_publish_tx, ota_publish_rx) = mpsc::channel(64);
    let (ota, ota_ends) = crate::io::ota::spawn(
        crate::io::ota::OtaSettings {
            library: crate::io::firmware::dir(&config.data_dir),
            keys: config.ota.firmware_keys.clone(),
            chunk: config.ota.chunk,
            share: config.ota.share,
        },
        config.serial.len(),
        store_tx.clone(),
        readers.clone(),
        config.mqtt.is_some().then_some(ota_publish_tx),
        shutdown.clone(),
    );
    let mut ota_ends = ota_ends.into_iter();
    // Requests to nodes over their links (reboot, HEALTH now, reset history, log): the handle
    // for whatever asks (remote commands, the diagnostics bundle), one end per port.
    let (node_requests, node_request_ends) =
        crate::io::node_requests::channels(config.serial.len());
    let mut node_request_ends = node_request_ends.into_iter();
    let mut port_tasks = Vec::new();
    let node_link_key = if config.serial.is_empty() {
        None
    } else {
        Some(node_key::load_or_create(&config.data_dir).context("the node-link key")?)
    };
    for (index, port) in config.serial.iter().enumerate() {
        let key = node_link_key
            .as_ref()
            .expect("made above when there are ports");
        port_tasks.push(tokio::spawn(serial::run(
            index,
            port.clone(),
            node_key::secrets(key)?,
            store_tx.clone(),
            clock.clone(),
            telemetry.clone(),
            ota_ends.next(),
            shutdown.clone(),
            node_request_ends.next(),
        )));
    }

    // Kept for the whole run: remote commands write points through it.
    let (modbus_writer, modbus_tasks) =
        spawn_modbus(&config, &telemetry, &store_tx, &clock, &shutdown);

    // The gateway's own health: sampled for the API and the page, published through the uplink.
    let (health_tx, health_rx) = watch::channel(Vec::new());
    let health_task = tokio::spawn(crate::io::health::run(
        crate::io::health::HealthIo {
            config: config.health.clone(),
            data_dir: config.data_dir.clone(),
            readers: readers.clone(),
            telemetry: telemetry.clone(),
            started: Instant::now(),
            reports: config.mqtt.is_some().then_some(health_tx),
        },
        shutdown.clone(),
    ));
    // Diagnostics bundles: for the remote command and the page's download.
    let diagnostics = crate::io::diagnostics::Builder::new(
        config.gateway_id.clone(),
        readers.clone(),
        telemetry.clone(),
        node_requests.clone(),
    );

    // Awaited at shutdown, so its clean "offline" is out before the process exits.
    let uplink_task = TaskTracker::new();
    if let Some(mqtt) = &config.mqtt {
        // Remote commands come over this uplink; the task ends when the uplink drops its end.
        let commands = config.commands.enabled().then(|| {
            crate::io::commands::spawn(crate::io::commands::Desk {
                gateway_id: config.gateway_id.clone(),
                config: config.commands.clone(),
                store_tx: store_tx.clone(),
                clock: clock.clone(),
                enrollment_policy: config.enrollment.policy,
                ota: ota.clone(),
                firmware: firmware_library(&config),
                remedy: crate::io::remedy::Remedy {
                    diagnostics: diagnostics.clone(),
                    serial: config.serial.clone(),
                    modbus_maps: config
                        .modbus
                        .devices
                        .iter()
                        .map(|d| (d.name.clone(), Arc::clone(&d.map)))
                        .collect(),
                    modbus: modbus_writer.clone(),
                    shutdown: shutdown.clone(),
                    node_requests: node_requests.clone(),
                },
            })
            .0
        });
        let mut io = UplinkIo {
            readers: readers.clone(),
            store_tx: store_tx.clone(),
            sealed: sealed_rx,
            meter: Arc::clone(&meter),
            telemetry: telemetry.clone(),
            commands,
            ota_events: Some(ota_publish_rx),
            health_reports: Some(health_rx),
        };
        if mqtt.provisioning.is_some() {
            // The identity may have to be obtained first (by claim), and is renewed.
            uplink_task.spawn(provision::run(
                mqtt.clone(),
                config.gateway_id.clone(),
                config.data_dir.clone(),
                io,
                shutdown.clone(),
            ));
        } else {
            let tls = link::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)
                .context("cannot set up TLS for the MQTT uplink")?;
            let mqtt = mqtt.clone();
            let (gateway_id, run_dir) = (config.gateway_id.clone(), config.data_dir.join("run"));
            let shutdown = shutdown.clone();
            uplink_task.spawn(async move {
                uplink_mqtt::run(mqtt, Arc::new(tls), gateway_id, run_dir, &mut io, shutdown).await;
            });
        }
    }
    uplink_task.close();

    // Each API connection is a descriptor: raise the soft limit, and cap connections below it.
    let descriptors = api::listener::raise_descriptor_limit();
    let modbus_links = config.modbus.buses.len()
        + config
            .modbus
            .devices
            .iter()
            .filter(|d| matches!(d.transport, Transport::Tcp(_)))
            .count();
    let listener_config = api::listener::ListenerConfig {
        limits: api::listener::size_cap(
            config.api.max_connections,
            descriptors,
            outpost_core::listener::admission::reserved_descriptors(
                config.serial.len(),
                modbus_links,
                config.mqtt.is_some(),
            ),
        ),
        header_timeout: config.api.header_timeout,
        idle_timeout: config.api.idle_timeout,
        request_timeout: config.api.request_timeout,
        allowed_hosts: config.api.allowed_hosts.clone(),
    };
    let listener = api::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api_listen))?;
    on_listening(
        listener.local_addr()?,
        crate::io::systemd::WriterProbe::new(telemetry.clone(), &store_tx),
    );
    let auth = api::auth::AuthGate::new(
        api::auth::Tokens {
            pull: config.pull_token.clone(),
            upload: config.upload_token.clone(),
            technician: config.technician_token.clone(),
        },
        telemetry.clone(),
    );
    let state = ApiState {
        gateway_id: config.gateway_id.clone(),
        started: Instant::now(),
        readers,
        // What was acknowledged was served, by an earlier run if not this one.
        served_upto: Arc::new(std::sync::atomic::AtomicU64::new(outbox.acked_upto)),
        telemetry,
        auth,
        upload_slots: api::upload::slots(),
        meter,
        dictionaries: dictionaries::dir(&config.data_dir),
        updates: {
            let dir = crate::io::update::incoming::incoming_dir(&config.data_dir);
            // Uploads cut off by a crash left their temporary files.
            crate::io::update::incoming::remove_partials(&dir);
            dir
        },
        update_state: PathBuf::from(crate::io::update::STATE_DIR),
        store_tx,
        clock,
        offline_after: api::page::OfflineAfter::new(&config.serial),
        technician: api::technician::TechnicianGate::new(&config.data_dir, false),
        modbus: modbus_writer,
        enrollment_policy: config.enrollment.policy,
        enrollment_listed: config.enrollment.listed.len(),
        ota,
        firmware: firmware_library(&config),
        node_requests,
        metrics: api::metrics::Scrapes::default(),
        diagnostics,
    };
    // The writer ends when the last sender (port tasks, the API) is gone.
    api::serve(listener, state, listener_config, shutdown.clone())
        .await
        .context("API server failed")?;

    for task in port_tasks.into_iter().chain(modbus_tasks) {
        let _ = task.await;
    }
    uplink_task.wait().await;
    let _ = cost_task.await;
    let _ = alerting_task.await;
    let _ = health_task.await;
    // Everything queued is committed before the process exits.
    writer.await.context("store writer failed")?;
    Ok(())
}

/// One task per Modbus TCP device (polled concurrently) and one per RTU bus (its devices one at a
/// time); first polls staggered over each device's interval.
fn spawn_modbus(
    config: &Config,
    telemetry: &TelemetryHub,
    store_tx: &mpsc::Sender<StoreCommand>,
    clock: &WallClock,
    shutdown: &CancellationToken,
) -> (ModbusWriter, Vec<tokio::task::JoinHandle<()>>) {
    let mut writer = ModbusWriter::default();
    let mut tasks = Vec::new();
    let mut buses: Vec<Vec<DeviceRuntime>> =
        config.modbus.buses.iter().map(|_| Vec::new()).collect();
    let tcp_count = config
        .modbus
        .devices
        .iter()
        .filter(|d| matches!(d.transport, Transport::Tcp(_)))
        .count();
    let mut tcp_index = 0;
    // In config order, so the status board lists devices as the installer wrote them.
    for device in &config.modbus.devices {
        match device.transport {
            Transport::Tcp(_) => {
                let runtime = DeviceRuntime::new(device.clone(), &CostModel::TCP, telemetry);
                let writes = writer.add_queue([device.name.clone()]);
                let first_poll_in = poller::stagger(device.poll_interval, tcp_index, tcp_count);
                tcp_index += 1;
                tasks.push(tokio::spawn(poller::run_tcp_device(
                    runtime,
                    store_tx.clone(),
                    writes,
                    first_poll_in,
                    clock.clone(),
                    shutdown.clone(),
                )));
            }
            Transport::Rtu(bus) => {
                buses[bus].push(DeviceRuntime::new(
                    device.clone(),
                    &CostModel::RTU,
                    telemetry,
                ));
            }
        }
    }
    for (bus, devices) in config.modbus.buses.iter().zip(buses) {
        if devices.is_empty() {
            continue;
        }
        let writes = writer.add_queue(devices.iter().map(|d| d.config.name.clone()));
        tasks.push(tokio::spawn(rtu::run_bus(
            bus.clone(),
            devices,
            store_tx.clone(),
            writes,
            clock.clone(),
            shutdown.clone(),
        )));
    }
    (writer, tasks)
}

/// A self-update that did not end confirmed (refused, rolled back, failed) becomes an alert: on
/// the status page and, through the uplink, at the cloud. Raised at every start with the report's
/// own time, so the cloud sees one alert per attempt however often it is re-sent.
fn raise_update_alert(telemetry: &TelemetryHub, state_dir: &Path) {
    let Some(report) = crate::io::update::last_report(state_dir) else {
        return;
    };
    if !report.outcome.is_alert() {
        return;
    }
    tracing::warn!(message = "The last self-update did not succeed.", summary = %report.summary());
    telemetry.record(Event::Raise {
        at_ms: report.finished_at_unix_ms,
        key: AlertKey::gateway(AlertKind::Update),
        message: report.summary(),
    });
}

/// The node firmware library, for the local API and the `firmware-add` command.
fn firmware_library(config: &Config) -> api::FirmwareLibrary {
    api::FirmwareLibrary {
        dir: crate::io::firmware::dir(&config.data_dir),
        keys: config.ota.firmware_keys.clone(),
        cap: config.ota.library_max_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::update::report::{Outcome, UpdateReport, example as report};

    fn alerts_after(report: Option<UpdateReport>) -> Vec<outpost_core::telemetry::Alert> {
        let dir = tempfile::tempdir().unwrap();
        if let Some(report) = report {
            std::fs::write(
                dir.path().join(crate::io::update::report::REPORT_FILE),
                serde_json::to_vec(&report).unwrap(),
            )
            .unwrap();
        }
        let telemetry = TelemetryHub::new(Telemetry::new(
            &[],
            false,
            std::time::Duration::from_secs(60),
        ));
        raise_update_alert(&telemetry, dir.path());
        telemetry.snapshot().alerts
    }

    #[test]
    fn a_rolled_back_update_is_an_alert_with_its_own_time_and_a_confirmed_one_is_not() {
        let alerts = alerts_after(Some(report(Outcome::RolledBack)));
        assert_eq!(alerts.len(), 1);
        let finished = report(Outcome::RolledBack).finished_at_unix_ms;
        assert_eq!(
            (alerts[0].kind, alerts[0].at_ms),
            (AlertKind::Update, finished)
        );
        assert!(
            alerts[0].message.contains("rolled back"),
            "{}",
            alerts[0].message
        );
        assert!(
            alerts[0].message.contains("not ready"),
            "{}",
            alerts[0].message
        );
        assert!(alerts_after(Some(report(Outcome::Confirmed))).is_empty());
        assert!(alerts_after(None).is_empty());
    }
}
