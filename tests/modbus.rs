//! End-to-end Modbus: the `outpost` gateway polls a Modbus TCP meter (tokio-modbus's server,
//! serving the SDM630 catalogue map) and the readings reach `/api/v1/modbus` and the batches the
//! cloud pulls; `outpost demo --modbus` shows a polled meter with no hardware.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use outpost::demo::meter;
use outpost_e2e::{Proc, Site, bin, free_port, http, http_get_json, wait_for};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-pull-token-0123456789";

fn catalogue(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/devices")
        .join(file)
}

/// `/api/v1/modbus` as the text it is sent as.
fn modbus_text(site: &Site) -> String {
    let (status, body) = http(site.api, "GET", "/api/v1/modbus", None, None).unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The device called `name` on `/api/v1/modbus`.
fn device(devices: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    devices
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
}

#[test]
fn a_tcp_meter_is_polled_into_the_status_page_and_the_pulled_batches() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let map = Arc::new(meter::demo_map().unwrap());
    let points = map.points().len();
    let meter_addr = runtime
        .block_on(meter::serve(Arc::clone(&map), 3, shutdown.clone()))
        .unwrap();
    // A second device that refuses every connection: it must go offline without slowing the meter.
    let dead_addr = format!("127.0.0.1:{}", free_port());
    let extra = format!(
        "[uplink]\nbatch_interval = \"1s\"\n[uplink.pull]\ntoken = \"{TOKEN}\"\n\n\
         [[modbus.device]]\nname = \"hall-meter\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{meter_addr}\"\npoll_interval = \"200ms\"\ntimeout = \"150ms\"\n\n\
         [[modbus.device]]\nname = \"dead-meter\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{dead_addr}\"\npoll_interval = \"200ms\"\ntimeout = \"100ms\"\n",
        catalogue("eastron-sdm630.toml").display(),
        catalogue("eastron-sdm230.toml").display(),
    );
    let mut site = Site::with_config(Vec::new(), &extra).unwrap();
    site.start_gateway().unwrap();

    let hall = wait_for(Duration::from_secs(30), "ten polls of the meter", || {
        let d = device(&site.get("/api/v1/modbus").ok()?, "hall-meter")?;
        (d["health"]["polls"].as_u64()? >= 10).then_some(d)
    })
    .unwrap();
    assert_eq!(hall["health"]["state"], "online", "{hall:#}");
    assert_eq!(hall["transport"], format!("tcp {meter_addr}"));
    assert_eq!(hall["model"], "Eastron SDM630-Modbus");
    assert_eq!(hall["health"]["timeouts"], 0, "{hall:#}");
    let voltage = hall["values"]["l1_voltage"]["value"].as_f64().unwrap();
    assert!((222.0..=238.0).contains(&voltage), "{voltage}");
    assert_eq!(hall["values"]["l1_voltage"]["unit"], "V");
    assert_eq!(hall["values"].as_object().unwrap().len(), points);

    let dead = wait_for(Duration::from_secs(30), "the dead meter offline", || {
        let d = device(&site.get("/api/v1/modbus").ok()?, "dead-meter")?;
        (d["health"]["state"] == "offline").then_some(d)
    })
    .unwrap();
    assert!(
        dead["last_error"].as_str().unwrap().contains("connect"),
        "{dead:#}"
    );
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["modbus"]["devices"], 2);
    assert_eq!(status["modbus"]["offline"], 1);

    // The meter kept its rate while the other device failed: 200 ms polls, so about five a
    // second (generous bounds: the machine is shared).
    let before =
        device(&site.get("/api/v1/modbus").unwrap(), "hall-meter").unwrap()["health"]["polls"]
            .as_u64()
            .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after =
        device(&site.get("/api/v1/modbus").unwrap(), "hall-meter").unwrap()["health"]["polls"]
            .as_u64()
            .unwrap();
    assert!(
        (10..=17).contains(&(after - before)),
        "{} polls in 3 s",
        after - before
    );

    // The cloud's side: every reading of the meter, as floats, under the device and point names.
    let mut by_channel: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    wait_for(
        Duration::from_secs(30),
        "meter readings in pulled batches",
        || {
            by_channel.clear();
            for (_, bytes) in site.pulled_batches(TOKEN)? {
                let batch =
                    outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::new()).unwrap();
                for r in batch.readings() {
                    assert_eq!(r.source, "hall-meter", "only the meter answers");
                    let outpost_batch::Value::Float(v) = r.value else {
                        panic!("{} is not a float: {:?}", r.channel, r.value);
                    };
                    by_channel.entry(r.channel.to_string()).or_default().push(v);
                }
            }
            (by_channel.get("frequency").is_some_and(|f| f.len() >= 10)).then_some(())
        },
    )
    .unwrap();
    assert_eq!(by_channel.len(), points, "{:?}", by_channel.keys());
    let lens: Vec<usize> = by_channel.values().map(Vec::len).collect();
    assert!(
        lens.iter().all(|&n| n == lens[0]),
        "every point in every poll: {lens:?}"
    );
    assert!(
        by_channel["frequency"]
            .iter()
            .all(|f| (49.9..=50.1).contains(f))
    );

    site.gateway.take();
    shutdown.cancel();
}

#[test]
fn the_demo_shows_a_polled_modbus_meter() {
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(bin("outpost"));
    cmd.args([
        "demo",
        "--nodes",
        "1",
        "--modbus",
        "--listen",
        &addr.to_string(),
    ]);
    let mut demo = Proc::spawn("demo", &mut cmd).unwrap();
    let meter = wait_for(Duration::from_secs(30), "the demo meter polled", || {
        let d = device(&http_get_json(addr, "/api/v1/modbus").ok()?, "demo-meter")?;
        (d["health"]["polls"].as_u64()? >= 3).then_some(d)
    })
    .unwrap();
    assert_eq!(meter["health"]["state"], "online", "{meter:#}");
    let power = meter["values"]["total_power"]["value"].as_f64().unwrap();
    assert!(power > 0.0, "{meter:#}");
    assert_eq!(meter["values"]["total_power"]["unit"], "W");
    demo.terminate(Duration::from_secs(10)).unwrap();
}

#[test]
fn an_rtu_bus_is_polled_by_the_daemon_and_its_line_faults_show_on_the_status_page() {
    use outpost_e2e::modbus_peer::{Bank, PeerConfig, RtuPeer};
    let map = std::env::temp_dir().join(format!("outpost-e2e-rtu-{}.toml", std::process::id()));
    std::fs::write(
        &map,
        "[[point]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\nunit = \"V\"\n\
         [[point]]\nname = \"energy\"\ntable = \"holding\"\naddress = 10\ntype = \"u32\"\nword_order = \"little\"\nunit = \"Wh\"\n",
    )
    .unwrap();
    let mut units = BTreeMap::new();
    for unit in [1u8, 2] {
        let mut bank = Bank::default();
        bank.input.insert(0, 2290 + u16::from(unit));
        bank.holding.extend([(10, 0x5678), (11, 0x1234)]);
        units.insert(unit, bank);
    }
    let peer = RtuPeer::start(PeerConfig {
        units,
        baud: Some(19_200),
        ..PeerConfig::default()
    })
    .unwrap();
    let mut extra = format!(
        "[[modbus.bus]]\npath = \"{}\"\nbaud = 19200\n",
        peer.path().display()
    );
    for unit in [1, 2] {
        extra += &format!(
            "[[modbus.device]]\nname = \"meter-{unit}\"\nmap = \"{}\"\ntransport = \"rtu\"\nbus = \"{}\"\nunit = {unit}\npoll_interval = \"300ms\"\ntimeout = \"100ms\"\nretries = 0\n",
            map.display(),
            peer.path().display()
        );
    }
    let mut site = Site::with_config(Vec::new(), &extra).unwrap();
    site.start_gateway().unwrap();
    wait_for(Duration::from_secs(30), "both meters online", || {
        let devices = site.get("/api/v1/modbus").ok()?;
        ["meter-1", "meter-2"]
            .iter()
            .all(|n| device(&devices, n).is_some_and(|d| d["health"]["state"] == "online"))
            .then_some(())
    })
    .unwrap();
    peer.bus().unit(2).faults.corrupt_crc = 2;
    let meter = wait_for(Duration::from_secs(30), "the CRC errors counted", || {
        let d = device(&site.get("/api/v1/modbus").ok()?, "meter-2")?;
        (d["health"]["crc_errors"].as_u64()? >= 2).then_some(d)
    })
    .unwrap();
    assert_eq!(meter["health"]["crc_errors"], 2, "{meter:#}");
    assert_eq!(meter["transport"], format!("rtu {}", peer.path().display()));
    assert!(
        meter["last_error"].as_str().unwrap().contains("CRC"),
        "{meter:#}"
    );
    let one = device(&site.get("/api/v1/modbus").unwrap(), "meter-1").unwrap();
    assert_eq!(
        one["health"]["crc_errors"], 0,
        "the other unit is untouched: {one:#}"
    );
    // 2291 at scale 0.1: exactly 229.1 (in f64, 229.10000000000002), in the response's own
    // text (serde_json's default parser is not correctly rounded: it would read either as 229.1).
    assert!(
        modbus_text(&site).contains("\"voltage\":{\"value\":229.1,"),
        "{}",
        modbus_text(&site)
    );
    assert_eq!(one["values"]["energy"]["value"], 0x1234_5678);
    assert_eq!(
        peer.bus().early_requests,
        0,
        "the daemon kept the inter-frame silence"
    );
    site.gateway.take();
    let _ = std::fs::remove_file(map);
}

#[test]
fn a_register_in_tenths_reaches_the_api_and_the_cloud_as_the_exact_decimal() {
    use outpost_e2e::modbus_peer::{Bank, PeerConfig, RtuPeer};
    // 449 at scale 0.1 is 44.9; in f64, 449 × 0.1 is 44.900000000000006. The energy counter in
    // hundredths of a kWh, and a temperature with an offset, likewise.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("tenths.toml");
    std::fs::write(
        &map,
        "[[point]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\nunit = \"V\"\n\
         [[point]]\nname = \"energy\"\ntable = \"input\"\naddress = 1\ntype = \"u32\"\nscale = 0.01\nunit = \"kWh\"\n\
         [[point]]\nname = \"temperature\"\ntable = \"input\"\naddress = 3\ntype = \"i16\"\nscale = 0.1\noffset = -40\nunit = \"°C\"\n",
    )
    .unwrap();
    let mut bank = Bank::default();
    // energy 123456789 = 0x075B_CD15 (1234567.89 kWh); temperature 603 − 400 tenths = 20.3 °C.
    bank.input
        .extend([(0, 449), (1, 0x075B), (2, 0xCD15), (3, 603)]);
    let peer = RtuPeer::start(PeerConfig {
        units: BTreeMap::from([(1u8, bank)]),
        baud: Some(19_200),
        ..PeerConfig::default()
    })
    .unwrap();
    let extra = format!(
        "[uplink]\nbatch_interval = \"1s\"\n[uplink.pull]\ntoken = \"{TOKEN}\"\n\n\
         [[modbus.bus]]\npath = \"{}\"\nbaud = 19200\n\n\
         [[modbus.device]]\nname = \"meter\"\nmap = \"{}\"\ntransport = \"rtu\"\nbus = \"{}\"\npoll_interval = \"300ms\"\n",
        peer.path().display(),
        map.display(),
        peer.path().display()
    );
    let mut site = Site::with_config(Vec::new(), &extra).unwrap();
    site.start_gateway().unwrap();

    // The local API: the values as JSON numbers whose text is the decimal's.
    let meter = wait_for(Duration::from_secs(30), "the meter polled", || {
        let d = device(&site.get("/api/v1/modbus").ok()?, "meter")?;
        (d["health"]["polls"].as_u64()? >= 2).then_some(d)
    })
    .unwrap();
    assert_eq!(meter["values"]["voltage"]["unit"], "V");
    // The response's own text (a JSON parser may round 44.900000000000006 to 44.9 on reading).
    let text = modbus_text(&site);
    for (name, value) in [
        ("voltage", "44.9"),
        ("energy", "1234567.89"),
        ("temperature", "20.3"),
    ] {
        assert!(
            text.contains(&format!("\"{name}\":{{\"value\":{value},")),
            "{name}: {text}"
        );
    }

    // The cloud's side: decimal columns, and `outpost batch decode` prints the decimals.
    let lines = wait_for(Duration::from_secs(30), "a pulled batch", || {
        let (seq, bytes) = site.pulled_batches(TOKEN)?.into_iter().next()?;
        let batch = outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::new()).unwrap();
        for r in batch.readings() {
            let expected = match r.channel {
                "voltage" => outpost_batch::Value::decimal(449, -1),
                "energy" => outpost_batch::Value::decimal(123_456_789, -2),
                "temperature" => outpost_batch::Value::decimal(203, -1),
                other => panic!("unexpected channel {other}"),
            };
            assert_eq!(r.value, expected, "{}: a decimal column", r.channel);
        }
        let file = dir.path().join(format!("batch-{seq}.bin"));
        std::fs::write(&file, &bytes).unwrap();
        let out = Command::new(bin("outpost"))
            .args(["batch", "decode"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Some(String::from_utf8(out.stdout).unwrap())
    })
    .unwrap();
    let readings: Vec<&str> = lines.lines().skip(1).collect();
    assert!(!readings.is_empty(), "{lines}");
    for (channel, text) in [
        ("voltage", "44.9"),
        ("energy", "1234567.89"),
        ("temperature", "20.3"),
    ] {
        let of_channel: Vec<&&str> = readings
            .iter()
            .filter(|l| l.contains(&format!("\"channel\":\"{channel}\"")))
            .collect();
        assert!(!of_channel.is_empty(), "{channel}: {lines}");
        for line in of_channel {
            assert!(
                line.ends_with(&format!("\"value\":{text}}}")),
                "{channel}: {line}"
            );
        }
    }
    site.gateway.take();
}
