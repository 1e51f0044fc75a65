use std::collections::HashMap;

use super::*;

/// The machine as a test sees it: files in memory, a fixed host name, a log filter syntax that
/// refuses what tracing's would.
#[derive(Default)]
pub(crate) struct Machine {
    files: HashMap<PathBuf, String>,
}

impl Machine {
    pub(crate) fn with_file(mut self, path: impl Into<PathBuf>, text: &str) -> Machine {
        self.files.insert(path.into(), text.to_owned());
        self
    }

    /// `/etc/outpost/devices/*`: the catalogue maps shipped in config/devices/.
    pub(crate) fn with_catalogue(self) -> Machine {
        self.with_file(
            "/etc/outpost/devices/eastron-sdm630.toml",
            include_str!("../../../../config/devices/eastron-sdm630.toml"),
        )
        .with_file(
            "/etc/outpost/devices/eastron-sdm230.toml",
            include_str!("../../../../config/devices/eastron-sdm230.toml"),
        )
        .with_file(
            "/etc/outpost/devices/eastron-sdm72d-m.toml",
            include_str!("../../../../config/devices/eastron-sdm72d-m.toml"),
        )
    }
}

impl Environment for Machine {
    fn read_file(&self, path: &Path) -> Result<String, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "No such file or directory (os error 2)".into())
    }
    fn is_readable_file(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }
    fn is_non_directory(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }
    fn host_name(&self) -> Option<String> {
        Some("test-host.local".into())
    }
    fn check_log_filter(&self, filter: &str) -> Result<(), String> {
        if filter.contains(' ') {
            Err("invalid filter directive".into())
        } else {
            Ok(())
        }
    }
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(
        Path::new("/etc/outpost/outpost.toml"),
        text,
        &Machine::default(),
    )
}

fn only_error(text: &str) -> ConfigError {
    let errors = parse(text).expect_err("config should be rejected").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn an_empty_file_is_a_valid_config_with_embedded_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.api_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.commit_interval, Duration::from_millis(20));
    assert!(config.serial.is_empty());
}

#[test]
fn an_unknown_key_is_named_with_its_file_and_line() {
    let e = only_error(
        "[gateway]\nid = \"site-1\"\n\n[[serial]]\npath = \"/dev/ttyACM0\"\nbaudrate = 9600\n",
    );
    assert_eq!(e.line, Some(6), "{e}");
    assert!(e.message.contains("baudrate"), "{e}");
    assert!(
        e.to_string().starts_with("/etc/outpost/outpost.toml:6: "),
        "{e}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_path() {
    let e = only_error(
        "[[serial]]\npath = \"/dev/a\"\n\n[[serial]]\npath = \"/dev/b\"\nbaud = \"fast\"\n",
    );
    assert_eq!(e.key, "serial[1].baud");
    assert_eq!(e.line, Some(6));
}

#[test]
fn every_semantic_problem_is_reported_at_once_with_its_line() {
    let text = "[gateway]\nid = \"bad id!\"\n[api]\nlisten = \"localhost\"\n[[serial]]\npath = \"/dev/a\"\n[[serial]]\npath = \"/dev/a\"\nbaud = 12\n";
    let errors = parse(text).unwrap_err().0;
    let found: Vec<(String, Option<usize>)> =
        errors.iter().map(|e| (e.key.clone(), e.line)).collect();
    assert_eq!(
        found,
        vec![
            ("gateway.id".into(), Some(2)),
            ("api.listen".into(), Some(4)),
            ("serial[1].path".into(), Some(8)),
            ("serial[1].baud".into(), Some(9)),
        ]
    );
}

#[test]
fn broken_toml_syntax_gives_the_line() {
    let e = only_error("[gateway]\nid = \"x\"\n[api\nlisten = 1\n");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn durations_are_parsed_with_units_and_a_bad_one_is_a_located_error() {
    let config = parse(
        "[store]\ncommit_interval = \"250ms\"\n[uplink]\nbatch_interval = \"2m\"\nmax_batch_interval = \"1h 30m\"\n",
    )
    .unwrap();
    assert_eq!(config.commit_interval, Duration::from_millis(250));
    assert_eq!(config.batch_interval, Duration::from_secs(120));
    assert_eq!(config.max_batch_interval, Duration::from_secs(5400));
    for bad in ["soon", "20", "-5s", "5 parsecs"] {
        let e = only_error(&format!(
            "[gateway]\nid = \"a\"\n\n[store]\ncommit_interval = \"{bad}\"\n"
        ));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("store.commit_interval", Some(5)),
            "{bad}: {e}"
        );
    }
    let e = only_error("[[serial]]\npath = \"/dev/a\"\nreopen_backoff_max = \"later\"\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("serial[0].reopen_backoff_max", Some(3)),
        "{e}"
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_and_a_missing_one_is_not() {
    let machine = Machine::default().with_file("/var/lib/outpost", "");
    let text = "[gateway]\nid = \"a\"\ndata_dir = \"/var/lib/outpost\"\n";
    let errors = Config::parse(Path::new("/etc/outpost/outpost.toml"), text, &machine)
        .unwrap_err()
        .0;
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(found, [("gateway.data_dir", Some(3))], "{errors:?}");
    assert!(errors[0].message.contains("not a directory"));
    assert!(parse(text).is_ok(), "missing: the daemon creates it");
}

#[test]
fn a_commit_interval_of_zero_or_over_five_seconds_is_refused() {
    for bad in ["0ms", "6s"] {
        let e = only_error(&format!("[store]\ncommit_interval = \"{bad}\"\n"));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("store.commit_interval", Some(2)),
            "{bad}: {e}"
        );
    }
    assert!(parse("[store]\ncommit_interval = \"1ms\"\n").is_ok());
}

#[test]
fn node_link_limits_have_defaults_and_are_set_per_port() {
    let config = parse("[[serial]]\npath = \"/dev/a\"\n[[serial]]\npath = \"/dev/b\"\nmax_sample_age = \"2h\"\nmax_sample_rate = 50\nnewcomers_burst = 0\nnewcomers_per_hour = 3\n[store]\nmax_nodes = 64\n").unwrap();
    assert_eq!(config.serial[0].limits, crate::link::LinkLimits::default());
    let b = config.serial[1].limits;
    assert_eq!(b.max_sample_age, Duration::from_secs(7200));
    assert_eq!(
        (
            b.max_sample_rate_hz,
            b.newcomers_burst,
            b.newcomers_per_hour
        ),
        (50, 0, 3)
    );
    assert_eq!(config.max_nodes, 64);
    assert_eq!(parse("").unwrap().max_nodes, 1024);
}

#[test]
fn node_link_limits_out_of_range_are_each_located() {
    let text = "[store]\nmax_nodes = 0\n[[serial]]\npath = \"/dev/a\"\nmax_sample_age = \"0s\"\nmax_sample_rate = 0\nnewcomers_burst = 20000\nnewcomers_per_hour = 40000\n";
    let errors = parse(text).unwrap_err().0;
    let found: Vec<(String, Option<usize>)> =
        errors.iter().map(|e| (e.key.clone(), e.line)).collect();
    assert_eq!(
        found,
        vec![
            ("store.max_nodes".into(), Some(2)),
            ("serial[0].max_sample_age".into(), Some(5)),
            ("serial[0].max_sample_rate".into(), Some(6)),
            ("serial[0].newcomers_burst".into(), Some(7)),
            ("serial[0].newcomers_per_hour".into(), Some(8)),
        ]
    );
}

#[test]
fn the_gateway_id_defaults_to_the_host_name_cut_to_a_safe_alphabet() {
    assert_eq!(parse("").unwrap().gateway_id, "test-hostlocal");
}

#[test]
fn a_bad_log_filter_and_a_missing_token_file_are_located() {
    let errors =
        parse("[log]\nlevel = \"info debug\"\n[uplink.pull]\ntoken_file = \"/run/none\"\n")
            .unwrap_err()
            .0;
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [("uplink.pull.token_file", Some(4)), ("log.level", Some(2))],
        "{errors:?}"
    );
}

/// Parses `text` as `/etc/outpost/outpost.toml` on a machine with the shipped catalogue in
/// `/etc/outpost/devices/`, so `map` paths like `devices/eastron-sdm630.toml` find it.
fn parse_in_repo(text: &str) -> Result<Config, ConfigErrors> {
    let machine = Machine::default().with_catalogue();
    Config::parse(Path::new("/etc/outpost/outpost.toml"), text, &machine)
}

const MODBUS_SITE: &str = r#"
[[modbus.bus]]
path = "/dev/ttyUSB0"
baud = 19200

[[modbus.device]]
name = "main-meter"
map = "devices/eastron-sdm630.toml"
transport = "rtu"
bus = "/dev/ttyUSB0"
unit = 1

[[modbus.device]]
name = "pump-meter"
map = "devices/eastron-sdm230.toml"
transport = "rtu"
bus = "/dev/ttyUSB0"
unit = 2
poll_interval = "2s"
timeout = "300ms"
retries = 0

[[modbus.device]]
name = "hall-meter"
map = "devices/eastron-sdm72d-m.toml"
transport = "tcp"
address = "10.0.0.20:502"
"#;

#[test]
fn modbus_buses_and_devices_compile_with_their_maps() {
    use modbus::{Parity, Transport};
    let config = parse_in_repo(MODBUS_SITE).unwrap_or_else(|e| panic!("{e}"));
    let m = &config.modbus;
    assert_eq!(m.buses.len(), 1);
    assert_eq!(m.buses[0].parity, Parity::Even);
    assert_eq!(m.buses[0].stop_bits, 1);
    assert_eq!(m.buses[0].baud, 19200);
    let names: Vec<&str> = m.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["main-meter", "pump-meter", "hall-meter"]);
    assert_eq!(m.devices[0].transport, Transport::Rtu(0));
    assert_eq!(m.devices[1].poll_interval, Duration::from_secs(2));
    assert_eq!(m.devices[1].timeout, Duration::from_millis(300));
    assert_eq!(m.devices[1].retries, 0);
    assert_eq!(
        m.devices[2].transport,
        Transport::Tcp("10.0.0.20:502".parse().unwrap())
    );
    assert!(m.devices[0].map.point("l1_voltage").is_some());
}

#[test]
fn modbus_mistakes_are_each_named_with_key_and_line() {
    let text = r#"
[[modbus.bus]]
path = "/dev/ttyUSB0"
parity = "mark"

[[modbus.device]]
name = "a"
map = "devices/eastron-sdm630.toml"
transport = "rtu"
bus = "/dev/ttyUSB1"

[[modbus.device]]
name = "a"
map = "devices/eastron-sdm630.toml"
transport = "tcp"
address = "meter.local"
timeout = "20s"
poll_interval = "10s"

[[modbus.device]]
name = "b"
map = "devices/eastron-sdm630.toml"
transport = "rtu"
bus = "/dev/ttyUSB0"
unit = 0
"#;
    let errors = parse_in_repo(text).unwrap_err().0;
    let found: Vec<(String, Option<usize>)> =
        errors.iter().map(|e| (e.key.clone(), e.line)).collect();
    assert_eq!(
        found,
        vec![
            ("modbus.bus[0].parity".into(), Some(4)),
            ("modbus.device[0].bus".into(), Some(10)),
            ("modbus.device[1].name".into(), Some(13)),
            ("modbus.device[1].address".into(), Some(16)),
            ("modbus.device[1].timeout".into(), Some(17)),
            ("modbus.device[2].unit".into(), Some(25)),
        ],
        "{errors:?}"
    );
}

#[test]
fn a_broken_map_is_reported_at_the_device_and_in_the_map_file() {
    let machine = Machine::default().with_file(
        "/etc/outpost/bad.toml",
        "[[point]]\nname = \"x\"\ntable = \"input\"\naddress = 70000\ntype = \"u16\"\n",
    );
    let text = "[[modbus.device]]\nname = \"m\"\nmap = \"bad.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\n";
    let errors = Config::parse(Path::new("/etc/outpost/outpost.toml"), text, &machine)
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!((e.key.as_str(), e.line), ("modbus.device[0].map", Some(3)));
    assert!(e.message.contains("bad.toml:4"), "{e}");
    assert!(e.message.contains("address"), "{e}");
}

#[test]
fn a_missing_map_is_reported_at_the_device() {
    let text = "[[modbus.device]]\nname = \"m\"\nmap = \"none.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\n";
    let e = only_error(text);
    assert_eq!((e.key.as_str(), e.line), ("modbus.device[0].map", Some(3)));
    assert!(e.message.contains("/etc/outpost/none.toml"), "{e}");
}

/// The drop-in merge, on texts: a main file and drop-ins already read, in name order.
fn layered(main: &str, dropins: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let mut layers = vec![dropin::Layer {
        path: PathBuf::from("/etc/outpost/outpost.toml"),
        text: main.to_owned(),
    }];
    layers.extend(dropins.iter().map(|(name, text)| dropin::Layer {
        path: Path::new("/etc/outpost/outpost.d").join(name),
        text: (*text).to_owned(),
    }));
    dropin::parse_layers(&layers, Path::new("/etc/outpost"), &Machine::default())
}

#[test]
fn drop_ins_apply_in_order_tables_merge_and_arrays_append() {
    let config = layered(
        "[gateway]\nid = \"site-1\"\n[api]\nlisten = \"127.0.0.1:8080\"\n[[serial]]\npath = \"/dev/ttyACM0\"\n",
        &[
            (
                "10-more.toml",
                "[[serial]]\npath = \"/dev/ttyACM1\"\nbaud = 9600\n[store]\nmax_commit_readings = 100\n",
            ),
            ("20-late.toml", "[api]\nlisten = \"127.0.0.1:9090\"\n"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway_id, "site-1", "kept from the main file");
    assert_eq!(config.api_listen.port(), 9090, "the later drop-in wins");
    let ports: Vec<(String, u32)> = config
        .serial
        .iter()
        .map(|p| (p.path.display().to_string(), p.baud))
        .collect();
    assert_eq!(
        ports,
        [
            ("/dev/ttyACM0".into(), 115_200),
            ("/dev/ttyACM1".into(), 9600)
        ]
    );
    assert_eq!(config.max_commit_readings, 100);
}

#[test]
fn a_problem_in_a_drop_in_is_located_in_that_file() {
    let errors = layered(
        "[[serial]]\npath = \"/dev/ttyACM0\"\n",
        &[(
            "10-ports.toml",
            "# a second port\n\n[[serial]]\npath = \"/dev/ttyACM1\"\nbaud = 12\n",
        )],
    )
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.file, Path::new("/etc/outpost/outpost.d/10-ports.toml"));
    assert_eq!((e.key.as_str(), e.line), ("serial[0].baud", Some(5)), "{e}");

    let errors = layered("", &[("10-x.toml", "[api]\nlisten = 7\n")]).unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.file, Path::new("/etc/outpost/outpost.d/10-x.toml"));
    assert_eq!((e.key.as_str(), e.line), ("api.listen", Some(2)), "{e}");

    let errors = layered(
        "[api]\nlisten = \"x\"\n",
        &[("10-x.toml", "[gateway]\nid = \"a\"\n")],
    )
    .unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.file, Path::new("/etc/outpost/outpost.toml"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");

    let errors = layered("", &[("10-x.toml", "[api\n")]).unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.file, Path::new("/etc/outpost/outpost.d/10-x.toml"), "{e}");

    let errors = layered(
        "",
        &[("10-x.toml", "[store]\ncommit_interval = \"soon\"\n")],
    )
    .unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.file, Path::new("/etc/outpost/outpost.d/10-x.toml"), "{e}");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("store.commit_interval", Some(2)),
        "{e}"
    );
}
