use std::collections::HashMap;

use super::*;

/// The machine as a test sees it: files in memory, a fixed host name, a log filter syntax that
/// refuses what tracing's would.
#[derive(Default)]
pub(crate) struct Machine {
    files: HashMap<PathBuf, String>,
    /// Each file's mode and owner:group (`0o600`, `outpost:outpost` unless set).
    access: HashMap<PathBuf, (u32, &'static str, &'static str)>,
}

impl Machine {
    pub(crate) fn with_file(mut self, path: impl Into<PathBuf>, text: &str) -> Machine {
        self.files.insert(path.into(), text.to_owned());
        self
    }

    /// A file with its mode and owner and group names.
    pub(crate) fn with_secret(
        mut self,
        path: &str,
        text: &str,
        mode: u32,
        (owner, group): (&'static str, &'static str),
    ) -> Machine {
        self.access.insert(path.into(), (mode, owner, group));
        self.with_file(path, text)
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
    fn file_access(&self, path: &Path) -> Result<FileAccess, String> {
        if !self.files.contains_key(path) {
            return Err(format!(
                "cannot read {}: No such file or directory (os error 2)",
                path.display()
            ));
        }
        let (mode, owner, group) = self
            .access
            .get(path)
            .copied()
            .unwrap_or((0o600, "outpost", "outpost"));
        // The test runs as neither: only names and root's id make a principal trusted here.
        let principal = |name: &str| Principal {
            id: if name == "root" {
                0
            } else {
                1000 + name.len() as u32
            },
            name: Some(name.to_owned()),
            is_self: false,
        };
        Ok(FileAccess {
            mode,
            owner: principal(owner),
            group: principal(group),
        })
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
    let e = only_error("[[serial]]\npath = \"/dev/a\"\n\noffline_after = \"1s\"\n");
    assert_eq!(
        (e.key.as_str(), e.line, e.message.as_str()),
        (
            "serial[0].offline_after",
            Some(4),
            "must be between 2s and 24h"
        ),
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
fn the_frame_limit_defaults_to_what_the_line_carries_at_its_baud() {
    let config = parse("[[serial]]\npath = \"/dev/a\"\n[[serial]]\npath = \"/dev/b\"\nbaud = 921600\n[[serial]]\npath = \"/dev/c\"\nmax_frames_per_sec = 200\n").unwrap();
    let limits: Vec<u32> = config
        .serial
        .iter()
        .map(|p| p.limits.max_frames_per_sec)
        .collect();
    // 115200 baud carries 11520 bytes/s: 548 of the smallest node frame (21 bytes).
    assert_eq!(limits, [548, 4388, 200]);
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

#[test]
fn each_api_scope_takes_its_own_token_inline_or_from_a_file() {
    let machine = Machine::default()
        .with_file("/etc/outpost/upload-token", "upload-token-0123456789\n")
        .with_file("/etc/outpost/tech-token", "  technician-0123456789 \n");
    let config = Config::parse(
        Path::new("/etc/outpost/outpost.toml"),
        "[api]\nupload_token_file = \"/etc/outpost/upload-token\"\n\
         technician_token_file = \"/etc/outpost/tech-token\"\n\
         [uplink.pull]\ntoken = \"pull-token-0123456789\"\n",
        &machine,
    )
    .unwrap();
    assert_eq!(
        config.upload_token.as_deref(),
        Some("upload-token-0123456789")
    );
    assert_eq!(
        config.technician_token.as_deref(),
        Some("technician-0123456789")
    );
    assert_eq!(config.pull_token.as_deref(), Some("pull-token-0123456789"));

    let inline = parse("[api]\nupload_token = \"upload-token-0123456789\"\n").unwrap();
    assert_eq!(
        inline.upload_token.as_deref(),
        Some("upload-token-0123456789")
    );
    assert_eq!(
        inline.technician_token, None,
        "no token: the read endpoints stay open"
    );
    assert_eq!(inline.pull_token, None);
}

#[test]
fn bad_scope_tokens_are_located_all_at_once() {
    let errors = parse(
        "[api]\n\
         upload_token = \"short\"\n\
         technician_token = \"technician-0123456789\"\n\
         technician_token_file = \"/etc/outpost/tech-token\"\n\
         [uplink.pull]\n\
         token_file = \"/run/none\"\n",
    )
    .unwrap_err()
    .0;
    let found: Vec<(&str, Option<usize>, &str)> = errors
        .iter()
        .map(|e| (e.key.as_str(), e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "uplink.pull.token_file",
                Some(6),
                "cannot read /run/none: No such file or directory (os error 2)"
            ),
            (
                "api.upload_token",
                Some(2),
                "must be at least 16 characters"
            ),
            (
                "api.technician_token_file",
                Some(4),
                "give either technician_token or technician_token_file, not both"
            ),
        ],
        "{errors:?}"
    );
}

#[test]
fn one_token_for_two_scopes_is_refused() {
    let error = only_error(
        "[api]\nupload_token = \"same-token-0123456789\"\n\
         [uplink.pull]\ntoken = \"same-token-0123456789\"\n",
    );
    assert_eq!(error.key, "api.upload_token");
    assert_eq!(error.line, Some(2));
    assert!(
        error.message.contains("must differ from uplink.pull.token"),
        "{error}"
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
    assert_eq!(
        m.devices[0].timeout,
        crate::config::modbus::DEFAULT_TIMEOUT,
        "no timeout in the file: the documented default"
    );
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

const MQTT: &str = "[uplink.mqtt]\nbroker = \"broker.example:8883\"\nca_file = \"/etc/outpost/ca.pem\"\ncert_file = \"/etc/outpost/gw.pem\"\nkey_file = \"/etc/outpost/gw.key\"\n";

/// The TLS files of [`MQTT`], the key with `mode` and `owner`.
fn tls_machine(mode: u32, owner: (&'static str, &'static str)) -> Machine {
    Machine::default()
        .with_secret("/etc/outpost/ca.pem", "ca", 0o644, ("root", "root"))
        .with_secret("/etc/outpost/gw.pem", "cert", 0o644, ("root", "root"))
        .with_secret("/etc/outpost/gw.key", "key", mode, owner)
}

#[test]
fn a_private_key_others_can_read_is_a_located_error_with_its_mode_and_the_fix() {
    let path = Path::new("/etc/outpost/outpost.toml");
    for (mode, owner) in [
        (0o644, ("outpost", "outpost")),
        (0o604, ("root", "outpost")),
        (0o640, ("root", "adm")),
        (0o600, ("pi", "pi")),
        (0o660, ("root", "outpost")),
    ] {
        let errors = Config::parse(path, MQTT, &tls_machine(mode, owner))
            .expect_err("a secret others can read or change is refused")
            .0;
        assert_eq!(errors.len(), 1, "{mode:o} {owner:?}: {errors:?}");
        let e = &errors[0];
        assert_eq!(
            (e.file.as_path(), e.key.as_str(), e.line),
            (path, "uplink.mqtt.key_file", Some(5)),
            "{e}"
        );
        assert!(e.message.contains(&format!("(mode {mode:04o})")), "{e}");
        assert!(
            e.message.contains("chmod 0600 /etc/outpost/gw.key") || e.message.contains("chmod g-w"),
            "{e}"
        );
    }
    // Group adm, world: the message says who.
    let e = &Config::parse(path, MQTT, &tls_machine(0o640, ("root", "adm")))
        .unwrap_err()
        .0[0];
    assert!(e.message.contains("group adm"), "{e}");
}

#[test]
fn a_private_key_for_the_service_alone_is_accepted() {
    let path = Path::new("/etc/outpost/outpost.toml");
    for (mode, owner) in [
        (0o600, ("outpost", "outpost")),
        (0o400, ("outpost", "root")),
        (0o600, ("root", "root")),
        (0o640, ("root", "outpost")),
        (0o440, ("root", "outpost")),
    ] {
        let config = Config::parse(path, MQTT, &tls_machine(mode, owner));
        assert!(config.is_ok(), "{mode:o} {owner:?}: {config:?}");
        assert!(config.unwrap().warnings.is_empty());
    }
}

#[test]
fn a_token_file_others_can_read_is_refused_and_an_inline_token_is_a_located_warning() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let text = "[uplink.pull]\ntoken_file = \"/etc/outpost/pull.token\"\n";
    let token = "0123456789abcdef0123\n";
    let open =
        Machine::default().with_secret("/etc/outpost/pull.token", token, 0o644, ("root", "root"));
    let e = &Config::parse(path, text, &open).unwrap_err().0[0];
    assert_eq!(
        (e.key.as_str(), e.line),
        ("uplink.pull.token_file", Some(2))
    );
    assert!(
        e.message.contains("every user") && e.message.contains("0644"),
        "{e}"
    );
    let private = Machine::default().with_secret(
        "/etc/outpost/pull.token",
        token,
        0o640,
        ("root", "outpost"),
    );
    let config = Config::parse(path, text, &private).unwrap();
    assert_eq!(config.pull_token.as_deref(), Some("0123456789abcdef0123"));
    assert!(config.warnings.is_empty());
    // Inline: accepted, with a warning located like an error.
    let config = parse("[api]\n\n[uplink.pull]\ntoken = \"0123456789abcdef0123\"\n").unwrap();
    assert_eq!(config.pull_token.as_deref(), Some("0123456789abcdef0123"));
    let [w] = config.warnings.as_slice() else {
        panic!("{:?}", config.warnings)
    };
    assert_eq!(
        (w.file.as_path(), w.key.as_str(), w.line),
        (path, "uplink.pull.token", Some(4))
    );
    assert!(w.message.contains("`uplink.pull.token_file`"), "{w}");
}

#[test]
fn every_scope_token_file_others_can_read_is_refused_and_inline_ones_warned_of() {
    let path = Path::new("/etc/outpost/outpost.toml");
    for key in ["upload_token", "technician_token"] {
        let text = format!("[api]\n{key}_file = \"/etc/outpost/{key}\"\n");
        let open = Machine::default().with_secret(
            &format!("/etc/outpost/{key}"),
            "0123456789abcdef0123\n",
            0o604,
            ("root", "outpost"),
        );
        let e = &Config::parse(path, &text, &open).unwrap_err().0[0];
        assert_eq!(
            (e.key.as_str(), e.line),
            (format!("api.{key}_file").as_str(), Some(2))
        );
        assert!(e.message.contains("0604"), "{e}");

        let config = parse(&format!("[api]\n{key} = \"0123456789abcdef0123\"\n")).unwrap();
        let [w] = config.warnings.as_slice() else {
            panic!("{key}: {:?}", config.warnings)
        };
        assert_eq!(
            (w.key.as_str(), w.line),
            (format!("api.{key}").as_str(), Some(2))
        );
        assert!(w.message.contains(&format!("`api.{key}_file`")), "{w}");
    }
}

#[test]
fn an_inline_token_in_a_drop_in_is_warned_of_in_that_file() {
    let layers = [
        dropin::Layer {
            path: "/etc/outpost/outpost.toml".into(),
            text: "[api]\n".into(),
        },
        dropin::Layer {
            path: "/etc/outpost/outpost.d/50-pull.toml".into(),
            text: "\n[uplink.pull]\ntoken = \"0123456789abcdef0123\"\n".into(),
        },
    ];
    let config =
        dropin::parse_layers(&layers, Path::new("/etc/outpost"), &Machine::default()).unwrap();
    let [w] = config.warnings.as_slice() else {
        panic!("{:?}", config.warnings)
    };
    assert_eq!(
        (w.file.as_path(), w.key.as_str(), w.line),
        (
            Path::new("/etc/outpost/outpost.d/50-pull.toml"),
            "uplink.pull.token",
            Some(3)
        )
    );
}

#[test]
fn api_connection_settings_have_defaults_and_nonsense_is_located() {
    let config = parse("").unwrap();
    assert_eq!(config.api.max_connections, 512);
    assert_eq!(config.api.header_timeout, Duration::from_secs(10));
    assert_eq!(config.api.idle_timeout, Duration::from_secs(60));
    assert_eq!(config.api.request_timeout, Duration::from_secs(120));
    assert_eq!(
        config.api.allowed_hosts.check(Some("localhost:8080")),
        Ok(())
    );
    assert_eq!(
        config.api.allowed_hosts.check(Some("test-host.local")),
        Ok(())
    );
    assert!(
        config
            .api
            .allowed_hosts
            .check(Some("evil.example"))
            .is_err()
    );

    let config = parse(
        "[api]\nmax_connections = 64\nheader_timeout = \"2s\"\nidle_timeout = \"30s\"\nrequest_timeout = \"5m\"\nallowed_hosts = [\"gw.site.example\", \"::1\"]\n",
    )
    .unwrap();
    assert_eq!(config.api.max_connections, 64);
    assert_eq!(config.api.header_timeout, Duration::from_secs(2));
    assert_eq!(config.api.request_timeout, Duration::from_secs(300));
    assert_eq!(
        config.api.allowed_hosts.check(Some("GW.site.example:8080")),
        Ok(())
    );

    let errors = parse(
        "[api]\nmax_connections = 0\nheader_timeout = \"0s\"\nidle_timeout = \"2h\"\nrequest_timeout = \"10ms\"\nallowed_hosts = [\"ok.example\", \"gw:8080\", \"http://x\"]\n",
    )
    .unwrap_err()
    .0;
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("api.max_connections", Some(2)),
            ("api.header_timeout", Some(3)),
            ("api.idle_timeout", Some(4)),
            ("api.request_timeout", Some(5)),
            ("api.allowed_hosts[1]", Some(6)),
            ("api.allowed_hosts[2]", Some(6)),
        ],
        "{errors:?}"
    );
    assert!(
        errors[4].message.contains("without a port"),
        "{}",
        errors[4]
    );
    let e = only_error("[api]\nheader_timeout = \"soon\"\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("api.header_timeout", Some(2)),
        "{e}"
    );
}

#[test]
fn a_device_polled_every_second_needs_no_timeout_of_its_own() {
    // With the old default (1 s) this failed `outpost check`: "must be shorter than
    // poll_interval", at a key the file does not have.
    let site = MODBUS_SITE.replace("unit = 1\n", "unit = 1\npoll_interval = \"1s\"\n");
    let fast = site.replace(
        "unit = 1\npoll_interval = \"1s\"\n",
        "unit = 1\npoll_interval = \"200ms\"\n",
    );
    let config = parse_in_repo(&site).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.modbus.devices[0].timeout, Duration::from_millis(500));
    let config = parse_in_repo(&fast).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.modbus.devices[0].timeout,
        Duration::from_millis(100),
        "half the poll interval when that is shorter"
    );
}

/// `(key, line, message)` of every problem in `text`, with the catalogue at hand.
fn modbus_problems(text: &str) -> Vec<(String, Option<usize>, String)> {
    parse_in_repo(text)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| (e.key, e.line, e.message))
        .collect()
}

#[test]
fn a_poll_interval_too_short_is_one_problem_at_its_key_not_also_one_at_a_default_timeout() {
    // The default timeout (half of 10 ms) was refused too, at `timeout`, a key the file lacks.
    let errors = modbus_problems(
        "[[modbus.device]]\nname = \"m\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\npoll_interval = \"10ms\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1),
        ("modbus.device[0].poll_interval", Some(6))
    );
    // 100 ms, the shortest allowed, is fine on its own: the timeout is 50 ms.
    let config = parse_in_repo(
        "[[modbus.device]]\nname = \"m\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\npoll_interval = \"100ms\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.modbus.devices[0].timeout, Duration::from_millis(50));
}

#[test]
fn a_timeout_against_the_default_poll_interval_names_that_default() {
    let errors = modbus_problems(
        "[[modbus.device]]\nname = \"m\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\ntimeout = \"20s\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (key, line, message) = &errors[0];
    assert_eq!((key.as_str(), *line), ("modbus.device[0].timeout", Some(6)));
    assert!(
        message.contains("poll_interval (the default, 10s)"),
        "{message}"
    );
}

#[test]
fn two_devices_on_a_bus_both_left_at_the_default_unit_are_told_it_is_the_default() {
    let errors = modbus_problems(
        "[[modbus.bus]]\npath = \"/dev/ttyUSB0\"\n\n\
         [[modbus.device]]\nname = \"a\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"rtu\"\nbus = \"/dev/ttyUSB0\"\n\n\
         [[modbus.device]]\nname = \"b\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"rtu\"\nbus = \"/dev/ttyUSB0\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (key, line, message) = &errors[0];
    // No `unit` key in the file: the line is the device's header.
    assert_eq!((key.as_str(), *line), ("modbus.device[1].unit", Some(10)));
    assert!(
        message.contains("unit 1 (the default: this device has no `unit`) is used twice"),
        "{message}"
    );
}

#[test]
fn a_timeout_shorter_than_the_answer_takes_on_the_line_is_refused_and_a_default_one_says_so() {
    // The SDM630 map is one read of 72 registers: a 149-byte answer, 171 ms at 9600 baud 8E1
    // (the bus's default baud). Polled every 200 ms, the default timeout is 100 ms: no poll
    // could ever succeed. Before, `outpost check` accepted it.
    let site = |device_keys: &str| {
        format!(
            "[[modbus.bus]]\npath = \"/dev/ttyUSB0\"\n\n\
             [[modbus.device]]\nname = \"a\"\nmap = \"devices/eastron-sdm630.toml\"\ntransport = \"rtu\"\nbus = \"/dev/ttyUSB0\"\n{device_keys}"
        )
    };
    let errors = modbus_problems(&site("poll_interval = \"200ms\"\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (key, line, message) = &errors[0];
    assert_eq!(
        (key.as_str(), *line),
        ("modbus.device[0].poll_interval", Some(9)),
        "the default timeout follows poll_interval: that key is in the file"
    );
    assert!(
        message.contains("the default timeout, 100ms (half of poll_interval),")
            && message.contains("171ms")
            && message.contains("72 registers")
            && message.contains("9600 baud"),
        "{message}"
    );
    // A timeout of its own, too short: located at it.
    let errors = modbus_problems(&site("timeout = \"150ms\"\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1),
        ("modbus.device[0].timeout", Some(9))
    );
    // At 19200 baud the answer takes 86 ms: the same 100 ms default is enough.
    let fast = site("poll_interval = \"200ms\"\n").replace(
        "path = \"/dev/ttyUSB0\"\n\n",
        "path = \"/dev/ttyUSB0\"\nbaud = 19200\n\n",
    );
    parse_in_repo(&fast).unwrap_or_else(|e| panic!("{e}"));
    // And the documented defaults (10 s polls, 500 ms timeout) are fine at 9600 baud.
    parse_in_repo(&site("")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_batch_interval_floor_defaults_to_10s_or_batch_interval_and_must_not_exceed_it() {
    let config = parse("").unwrap();
    assert_eq!(config.min_batch_interval, Duration::from_secs(10));
    assert_eq!(config.priority_min_interval, Duration::from_secs(30));
    let config = parse("[uplink]\nbatch_interval = \"4s\"\n").unwrap();
    assert_eq!(config.min_batch_interval, Duration::from_secs(4));
    let config = parse(
        "[uplink]\nmin_batch_interval = \"2s\"\npriority_min_interval = \"1m\"\nmonthly_budget_bytes = 1000000\n",
    )
    .unwrap();
    assert_eq!(config.min_batch_interval, Duration::from_secs(2));
    assert_eq!(config.priority_min_interval, Duration::from_secs(60));
    let e = only_error("[uplink]\nbatch_interval = \"30s\"\nmin_batch_interval = \"45s\"\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("uplink.min_batch_interval", Some(3)),
        "{e}"
    );
    assert!(e.message.contains("batch_interval"), "{e}");
    let e = only_error("[uplink]\npriority_min_interval = \"0s\"\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("uplink.priority_min_interval", Some(2)),
        "{e}"
    );
}

#[test]
fn a_device_may_mark_points_of_its_map_priority_and_an_unknown_one_is_located() {
    let site = MODBUS_SITE.replace(
        "unit = 1\n",
        "unit = 1\npriority = [\"frequency\", \"l1_voltage\"]\n",
    );
    let config = parse_in_repo(&site).unwrap_or_else(|e| panic!("{e}"));
    let map = &config.modbus.devices[0].map;
    let index = |name: &str| map.points().iter().position(|p| p.name == name).unwrap();
    assert!(map.is_priority(index("frequency")));
    assert!(map.is_priority(index("l1_voltage")));
    assert!(!map.is_priority(index("l2_voltage")));
    // Another device on the same catalogue map is not affected.
    assert!(!config.modbus.devices[1].map.is_priority(0));
    let site = MODBUS_SITE.replace("unit = 1\n", "unit = 1\npriority = [\"alarm\"]\n");
    let errors = parse_in_repo(&site).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("modbus.device[0].priority", Some(12)),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].message.contains("no point `alarm`"),
        "{}",
        errors[0]
    );
}

#[test]
fn the_mqtt_version_defaults_to_auto_and_a_bad_one_is_a_located_error() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let machine = tls_machine(0o600, ("outpost", "outpost"));
    let config = Config::parse(path, MQTT, &machine).unwrap();
    let mqtt = config.mqtt.expect("mqtt");
    assert_eq!(
        mqtt.protocol,
        crate::uplink::protocol::ProtocolSetting::Auto
    );
    assert_eq!(mqtt.session_expiry, Duration::from_secs(3600));

    let text = format!("{MQTT}protocol = \"3.1\"\nsession_expiry = \"200years\"\n");
    let errors = Config::parse(path, &text, &machine).unwrap_err().0;
    let located: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        located,
        [
            ("uplink.mqtt.protocol", Some(6)),
            ("uplink.mqtt.session_expiry", Some(7))
        ],
        "{errors:?}"
    );
    assert!(
        errors[0].message.contains("`auto`, `5` or `3.1.1`"),
        "{}",
        errors[0]
    );
}

const CLAIM: &str = "[gateway]\nid = \"gw-7\"\ndata_dir = \"/var/lib/outpost\"\n\n[uplink.mqtt]\nbroker = \"broker.example:8883\"\nca_file = \"/etc/outpost/ca.pem\"\n\n[uplink.mqtt.provisioning]\nclaim_cert_file = \"/etc/outpost/claim.pem\"\nclaim_key_file = \"/etc/outpost/claim.key\"\ntemplate = \"OutpostGateway\"\n";

fn claim_machine() -> Machine {
    Machine::default()
        .with_secret("/etc/outpost/ca.pem", "ca", 0o644, ("root", "root"))
        .with_secret("/etc/outpost/claim.pem", "claim", 0o644, ("root", "root"))
        .with_secret("/etc/outpost/claim.key", "key", 0o640, ("root", "outpost"))
}

#[test]
fn with_provisioning_the_own_certificate_may_be_missing_and_defaults_to_the_data_dir() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let config = Config::parse(path, CLAIM, &claim_machine()).unwrap();
    let mqtt = config.mqtt.unwrap();
    assert_eq!(
        mqtt.cert_file,
        Path::new("/var/lib/outpost/identity/gateway.crt")
    );
    assert_eq!(
        mqtt.key_file,
        Path::new("/var/lib/outpost/identity/gateway.key")
    );
    let p = mqtt.provisioning.unwrap();
    assert_eq!(
        p.serial_number, "gw-7",
        "the serial number defaults to the id"
    );
    assert_eq!(p.renew_before, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(p.template, "OutpostGateway");
}

#[test]
fn without_provisioning_the_own_certificate_is_required_by_name() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let text =
        "[uplink.mqtt]\nbroker = \"broker.example:8883\"\nca_file = \"/etc/outpost/ca.pem\"\n";
    let errors = Config::parse(path, text, &claim_machine()).unwrap_err().0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["uplink.mqtt.cert_file", "uplink.mqtt.key_file"]);
    assert!(
        errors[0].message.contains("[uplink.mqtt.provisioning]"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, Some(1), "located at its table");
}

#[test]
fn provisioning_problems_are_located_by_key_and_line() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let text = format!(
        "{}serial_number = \"\"\nrenew_before = \"1s\"\nretry_max = \"2s\"\n",
        CLAIM.replace("OutpostGateway", "bad/template")
    );
    let machine = Machine::default()
        .with_secret("/etc/outpost/ca.pem", "ca", 0o644, ("root", "root"))
        .with_secret(
            "/etc/outpost/claim.key",
            "key",
            0o644,
            ("outpost", "outpost"),
        );
    let errors = Config::parse(path, &text, &machine).unwrap_err().0;
    let located: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        located,
        [
            ("uplink.mqtt.provisioning.template", Some(12)),
            ("uplink.mqtt.provisioning.serial_number", Some(13)),
            ("uplink.mqtt.provisioning.renew_before", Some(14)),
            ("uplink.mqtt.provisioning.retry_max", Some(15)),
            ("uplink.mqtt.provisioning.claim_cert_file", Some(10)),
            ("uplink.mqtt.provisioning.claim_key_file", Some(11)),
        ],
        "{errors:?}"
    );
    assert!(
        errors[4].message.contains("no certificate of its own yet"),
        "{}",
        errors[4]
    );
    assert!(errors[5].message.contains("0644"), "{}", errors[5]);
}

#[test]
fn once_the_own_certificate_exists_the_claim_files_are_not_needed() {
    let path = Path::new("/etc/outpost/outpost.toml");
    let machine = Machine::default()
        .with_secret("/etc/outpost/ca.pem", "ca", 0o644, ("root", "root"))
        .with_secret(
            "/var/lib/outpost/identity/gateway.crt",
            "cert",
            0o644,
            ("outpost", "outpost"),
        )
        .with_secret(
            "/var/lib/outpost/identity/gateway.key",
            "key",
            0o600,
            ("outpost", "outpost"),
        );
    assert!(Config::parse(path, CLAIM, &machine).is_ok());
}

#[test]
fn commands_take_operator_keys_only_and_name_the_key_that_is_wrong() {
    use crate::update::signing::{Role, SigningKey};
    let operator = SigningKey::from_seed(Role::Operator, &[1; 32])
        .public()
        .emit();
    let firmware = SigningKey::from_seed(Role::Firmware, &[1; 32])
        .public()
        .emit();
    let machine = Machine::default()
        .with_file("/etc/outpost/keys/operator.pub", &operator)
        .with_file("/etc/outpost/keys/firmware.pub", &firmware);
    let path = Path::new("/etc/outpost/outpost.toml");

    let off = Config::parse(path, "", &machine).unwrap();
    assert!(!off.commands.enabled());

    let text = "[commands]\noperator_keys = [\"keys/operator.pub\"]\nmax_lifetime = \"15m\"\n";
    let on = Config::parse(path, text, &machine).unwrap();
    assert!(on.commands.enabled());
    assert_eq!(on.commands.policy.max_lifetime, Duration::from_secs(900));

    let text = "[commands]\noperator_keys = [\"keys/firmware.pub\"]\n";
    let errors = Config::parse(path, text, &machine).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "commands.operator_keys");
    assert_eq!(errors[0].line, Some(2));
    assert!(
        errors[0].message.contains("firmware key"),
        "{}",
        errors[0].message
    );

    let text = "[commands]\nmax_lifetime = \"30d\"\n";
    let errors = Config::parse(path, text, &machine).unwrap_err().0;
    assert_eq!(errors[0].key, "commands.max_lifetime");
}

#[test]
fn ota_takes_firmware_keys_only_and_a_library_that_holds_an_image() {
    use crate::update::signing::{Role, SigningKey};
    let firmware = SigningKey::from_seed(Role::Firmware, &[1; 32])
        .public()
        .emit();
    let operator = SigningKey::from_seed(Role::Operator, &[1; 32])
        .public()
        .emit();
    let machine = Machine::default()
        .with_file("/etc/outpost/keys/firmware.pub", &firmware)
        .with_file("/etc/outpost/keys/operator.pub", &operator);
    let path = Path::new("/etc/outpost/outpost.toml");
    let on = Config::parse(
        path,
        "[ota]\nfirmware_keys = [\"keys/firmware.pub\"]\n",
        &machine,
    )
    .unwrap();
    assert_eq!(on.ota.firmware_keys.len(), 1);
    assert_eq!(on.ota.library_max_bytes, DEFAULT_LIBRARY_MAX_BYTES);
    let errors = Config::parse(
        path,
        "[ota]\nfirmware_keys = [\"keys/operator.pub\"]\nlibrary_max_bytes = 1000\n",
        &machine,
    )
    .unwrap_err()
    .0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["ota.firmware_keys", "ota.library_max_bytes"],
        "{errors:?}"
    );
}

#[test]
fn an_alert_rule_problem_is_located_by_file_line_and_key() {
    let error = only_error(
        "[alerts]\ninterval = \"10s\"\n\n[alerts.lot_cluster]\nfire_above = 3\nresolve_below = 5\n",
    );
    assert_eq!(error.key, "alerts.lot_cluster.resolve_below");
    assert_eq!(error.line, Some(6));
    let config = parse("[alerts.budget_pace]\nenabled = false\n").unwrap();
    let budget = config
        .alerts
        .get(crate::alerting::RuleKind::BudgetPace)
        .unwrap();
    assert!(!budget.enabled);
    assert_eq!(parse("").unwrap().alerts, crate::alerting::Rules::default());
}
