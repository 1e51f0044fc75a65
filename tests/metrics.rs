//! `/metrics` end to end: a real gateway with simulated nodes on ptys and a Modbus TCP meter,
//! its exposition checked by `promtool check metrics`, then scraped every second by a real
//! Prometheus (Debian's `prometheus` package, installed by scripts/test.sh) whose HTTP API shows
//! the target up and the gateway's series stored with the values the gateway shows. A node whose
//! lot is hostile (quotes, backslashes, a line feed) still gives an exposition promtool accepts,
//! and its lot reads back exactly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use outpost::demo::meter;
use outpost_e2e::{NodeSpec, Proc, Site, free_port, http, promtool_check, wait_for};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-metrics-technician-token-0123456789";
/// 7 bytes of the 16 a node may send as its lot: a quote, a backslash, a line feed, braces.
const HOSTILE_LOT: &str = "q\"b\\\n}{";

/// `/metrics` as text, with the technician token.
fn scrape(site: &Site) -> Result<String> {
    let (status, body) = http(site.api, "GET", "/metrics", site.bearer.as_deref(), None)?;
    ensure!(
        status == 200,
        "GET /metrics: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(String::from_utf8(body)?)
}

/// One sample's labels and value, read back from the text (escapes undone).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(body) => {
                let end = body.rfind('}').expect("closing brace");
                (labels(&body[..end]), &body[end + 1..])
            }
            None if rest.starts_with(' ') => (BTreeMap::new(), rest),
            None => continue,
        };
        found.push((labels, value.trim().parse().expect("a value")));
    }
    found
}

fn labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(labels, _)| {
            want.len() == labels.len()
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, v)| v)
}

/// A Prometheus server, stopped by PID when dropped.
struct Prometheus {
    addr: SocketAddr,
    _proc: Proc,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Scrapes `target` every second with `token`; its files under `dir`.
    fn start(dir: &Path, target: SocketAddr, token: &str) -> Result<Prometheus> {
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: outpost\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   authorization:\n      credentials_file: {}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n",
                token_file.display()
            ),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let proc = Proc::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(out.try_clone()?)
                .stderr(out),
        )?;
        let prometheus = Prometheus {
            addr,
            _proc: proc,
            log,
        };
        wait_for(Duration::from_secs(30), "Prometheus ready", || {
            http(addr, "GET", "/-/ready", None, None)
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .with_context(|| prometheus.log_text())?;
        Ok(prometheus)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query's result: each series' labels and value.
    fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http(self.addr, "GET", &path, None, None)?;
        ensure!(
            status == 200,
            "{promql}: {}",
            String::from_utf8_lossy(&body)
        );
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        ensure!(answer["status"] == "success", "{promql}: {answer}");
        let mut out = Vec::new();
        for series in answer["data"]["result"].as_array().context("result")? {
            let v = series["value"][1].as_str().context("value")?.parse()?;
            out.push((series["metric"].clone(), v));
        }
        Ok(out)
    }

    /// Waits until `promql` has exactly one series, and returns its value.
    fn wait_for_one(&self, promql: &str) -> Result<f64> {
        wait_for(Duration::from_secs(30), promql, || {
            let result = self.query(promql).ok()?;
            (result.len() == 1).then(|| result[0].1)
        })
        .with_context(|| self.log_text())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_gateway_and_stores_its_series() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let shutdown = CancellationToken::new();
    let map = Arc::new(meter::demo_map()?);
    let meter_addr = runtime.block_on(meter::serve(map, 3, shutdown.clone()))?;
    let maps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/devices");
    let extra = format!(
        "[[modbus.device]]\nname = \"hall-meter\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{meter_addr}\"\npoll_interval = \"200ms\"\ntimeout = \"150ms\"\n",
        maps.join("eastron-sdm630.toml").display()
    );
    let specs: Vec<NodeSpec> = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 10.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &extra)?;
    site.set_technician_token(TOKEN)?;
    site.start_gateway()?;

    // Behind the technician token, like /api/v1/status.
    let (status, _) = http(site.api, "GET", "/metrics", None, None)?;
    assert_eq!(status, 401, "a scrape without the token is refused");

    // Both nodes online with a HEALTH (uptime), the meter polled.
    let text = wait_for(
        Duration::from_secs(60),
        "nodes and meter in /metrics",
        || {
            let text = scrape(&site).ok()?;
            let ready = value(&text, "outpost_nodes", &[("state", "online")]) == Some(2.0)
                && samples(&text, "outpost_node_uptime_seconds").len() == 2
                && value(
                    &text,
                    "outpost_modbus_device_online",
                    &[("device", "hall-meter")],
                ) == Some(1.0);
            ready.then_some(text)
        },
    )?;
    promtool_check(&text)?;
    let node = &site.specs[0].uid;
    let info = samples(&text, "outpost_node_info");
    assert_eq!(info.len(), 2, "{info:?}");
    assert!(
        info.iter().any(|(l, v)| l["node"] == *node && *v == 1.0),
        "{info:?}"
    );
    let resets = value(
        &text,
        "outpost_node_resets_total",
        &[("node", node), ("reason", "power_on"), ("expected", "true")],
    );
    assert_eq!(resets, Some(1.0), "the simulated node's one boot");
    let port = site.link(0).display().to_string();
    assert_eq!(
        value(&text, "outpost_port_open", &[("port", &port)]),
        Some(1.0)
    );
    assert!(value(&text, "outpost_port_frames_total", &[("port", &port)]).unwrap() > 0.0);
    assert!(
        value(
            &text,
            "outpost_modbus_device_readings_total",
            &[("device", "hall-meter")]
        )
        .unwrap()
            > 0.0
    );

    let dir = tempfile::Builder::new()
        .prefix("outpost-prometheus-")
        .tempdir()?;
    let prometheus = Prometheus::start(dir.path(), site.api, TOKEN)?;
    let up = prometheus.wait_for_one("up{job=\"outpost\"} == 1")?;
    assert_eq!(up, 1.0, "Prometheus scraped the gateway");
    let online = prometheus.wait_for_one("outpost_nodes{state=\"online\"}")?;
    assert_eq!(online, 2.0);
    let meter_online =
        prometheus.wait_for_one("outpost_modbus_device_online{device=\"hall-meter\"}")?;
    assert_eq!(meter_online, 1.0);
    // A counter Prometheus stored is one the gateway showed: at most what it shows now.
    let readings_query = format!("outpost_node_readings_total{{node=\"{node}\"}}");
    let stored = prometheus.wait_for_one(&readings_query)?;
    let now = value(
        &scrape(&site)?,
        "outpost_node_readings_total",
        &[("node", node)],
    )
    .unwrap();
    assert!(stored > 0.0 && stored <= now, "stored {stored}, now {now}");
    // The info series keeps its labels through Prometheus.
    let info = prometheus.query(&format!("outpost_node_info{{node=\"{node}\"}}"))?;
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].0["firmware"], "0.1.0", "{:?}", info[0].0);
    // Every scrape succeeded: none failed a parse or a time-out.
    let failed = prometheus.query("scrape_samples_scraped{job=\"outpost\"} == 0")?;
    assert!(failed.is_empty(), "{failed:?}");
    shutdown.cancel();
    Ok(())
}

#[test]
fn a_node_with_a_hostile_lot_still_gives_an_exposition_promtool_accepts() -> Result<()> {
    let specs = vec![NodeSpec {
        rate_hz: 5.0,
        sim_args: vec!["--lot".into(), HOSTILE_LOT.into()],
        ..NodeSpec::new(0)
    }];
    let mut site = Site::new(specs)?;
    site.start_gateway()?;
    let uid = site.specs[0].uid.clone();
    let text = wait_for(Duration::from_secs(30), "the node's info", || {
        let text = scrape(&site).ok()?;
        (!samples(&text, "outpost_node_info").is_empty()).then_some(text)
    })?;
    promtool_check(&text)?;
    let info = samples(&text, "outpost_node_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0["lot"], HOSTILE_LOT, "the lot as the node sent it");
    assert_eq!(info[0].0["node"], uid);
    assert!(
        text.contains(r#"lot="q\"b\\\n}{""#),
        "escaped as the format says:\n{text}"
    );
    // The registry says the same as the scrape: nothing was lost or changed on the way.
    let nodes = site.get("/api/v1/nodes")?;
    assert_eq!(nodes["nodes"][0]["lot"], HOSTILE_LOT);
    if text.lines().any(|l| l.starts_with("}{")) {
        bail!("the lot's line feed split a line:\n{text}");
    }
    Ok(())
}
