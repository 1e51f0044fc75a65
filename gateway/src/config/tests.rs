use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("/etc/outpost/outpost.toml"), text)
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
fn durations_need_a_unit() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("20").is_err());
    assert!(parse_duration("fast").is_err());
    let e = only_error("[store]\ncommit_interval = \"soon\"\n");
    assert_eq!((e.key.as_str(), e.line), ("store.commit_interval", Some(2)));
}

#[test]
fn every_example_config_in_the_repository_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no example config found in {}", dir.display());
}
