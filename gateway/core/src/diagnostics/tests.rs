use super::*;
use proptest::prelude::*;

/// The shipped example's shape, with one secret of each kind.
const CONFIG: &str = r#"
[gateway]
id = "gw-0042"
data_dir = "/var/lib/outpost"

[api]
listen = "127.0.0.1:8080"
technician_token = "t0pS3cretTechnicianTokenValue99"
upload_token_file = "/etc/outpost/upload.token"

[uplink.pull]
token = "x"

[uplink.mqtt]
broker = "broker.example.com:8883"
ca_file = "/etc/outpost/ca.pem"
key_file = "/etc/outpost/keys/gateway.key"

[uplink.mqtt.provisioning]
claim_key_file = "/etc/outpost/claim.key"
template = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA=="

[commands]
operator_keys = ["keys/operator.pub", "/etc/outpost/keys/operator-2026.pub"]

[[serial]]
path = "/dev/ttyACM0"
run_pin = 17
"#;

#[test]
fn secrets_go_by_key_name_and_by_shape_and_paths_stay() {
    let (text, found) = redact_toml(CONFIG).unwrap();
    assert!(!text.contains("t0pS3cret"), "{text}");
    assert!(!text.contains("BEGIN PRIVATE KEY"), "{text}");
    for kept in [
        "/etc/outpost/upload.token",
        "/etc/outpost/keys/gateway.key",
        "/etc/outpost/claim.key",
        "keys/operator.pub",
        "/etc/outpost/keys/operator-2026.pub",
        "/dev/ttyACM0",
        "broker.example.com:8883",
        "gw-0042",
    ] {
        assert!(text.contains(kept), "{kept} should stay: {text}");
    }
    let keys: Vec<(&str, &str)> = found.iter().map(|r| (r.key.as_str(), r.why)).collect();
    assert_eq!(
        keys,
        [
            ("api.technician_token", "key name"),
            ("uplink.mqtt.provisioning.template", "PEM block"),
            ("uplink.pull.token", "key name"),
        ]
    );
    // The redacted text is TOML again, with the same keys.
    let back: toml::Table = text.parse().unwrap();
    assert_eq!(back["api"]["technician_token"].as_str(), Some(REDACTED));
    assert_eq!(back["serial"][0]["run_pin"].as_integer(), Some(17));
}

#[test]
fn key_names_that_say_secret_and_names_that_say_path() {
    for name in [
        "token",
        "pull-token",
        "technician_token",
        "password",
        "claim_secret",
        "private_key",
        "key",
        "signing_key",
        "wifi_psk",
        "API_KEY",
        "credentials",
    ] {
        assert!(secret_name(name), "{name}");
    }
    for name in [
        "key_file",
        "technician_token_file",
        "operator_keys",
        "claim_key_file",
        "private_key_path",
        "path",
        "id",
        "keepalive",
        "monkey",
    ] {
        assert!(!secret_name(name), "{name}");
    }
}

#[test]
fn journal_lines_lose_their_secret_words_only() {
    let (line, n) = redact_line(
        "2026-12-02T11:00:00+0000 gw outpost[1]: token 3q2+7wAAAAC0ZXN0IHRva2VuIHZhbHVlIQ== refused",
    );
    assert_eq!(n, 1);
    assert_eq!(
        line,
        "2026-12-02T11:00:00+0000 gw outpost[1]: token [redacted] refused"
    );
    let (line, n) = redact_line("Authorization: Bearer abc");
    assert_eq!(
        (line.as_str(), n),
        ("[redacted] (authorization credentials)", 1)
    );
    let plain =
        "2026-12-02T11:00:00+0000 gw outpost[1]: Uplink connected. /var/lib/outpost/outpost.db";
    assert_eq!(redact_line(plain), (plain.to_owned(), 0));
}

#[test]
fn an_archive_is_ustar_with_checksummed_headers() {
    let mut archive = Archive::new();
    archive
        .add("README.txt", b"hello\n", 1_796_200_000)
        .unwrap();
    archive.add("empty.json", b"", 0).unwrap();
    assert!(archive.add("/etc/passwd", b"", 0).is_err());
    assert!(archive.add(&"a".repeat(101), b"", 0).is_err());
    let bytes = archive.finish();
    // header, one data block, header, two zero blocks
    assert_eq!(bytes.len(), 5 * 512);
    let header = &bytes[..512];
    assert_eq!(&header[..10], b"README.txt");
    assert_eq!(&header[124..136], b"00000000006\0"); // size 6, octal
    assert_eq!(&header[257..263], b"ustar\0");
    let stored: u32 =
        u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
    let mut blank = header.to_vec();
    blank[148..156].fill(b' ');
    assert_eq!(stored, blank.iter().map(|&b| u32::from(b)).sum::<u32>());
    assert_eq!(&bytes[512..518], b"hello\n");
    assert!(bytes[3 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn delivery_keeps_to_the_budget_unless_forced() {
    let kib = 1024;
    assert_eq!(
        decide_delivery(Upload::Auto, 100 * kib, 0, 0),
        Delivery::Parts(2)
    );
    assert_eq!(
        decide_delivery(Upload::Auto, 100 * kib, 900 * 1024, 1000 * 1024),
        Delivery::Parts(2)
    );
    let over = decide_delivery(Upload::Auto, 100 * kib, 950 * 1024, 1000 * 1024);
    assert_eq!(
        over,
        Delivery::OverBudget {
            projected_month: 950 * 1024,
            budget: 1000 * 1024
        }
    );
    assert!(
        over.refusal()
            .unwrap()
            .starts_with("over the data budget; download it from the page")
    );
    assert_eq!(
        decide_delivery(Upload::Force, 100 * kib, 950 * 1024, 1000 * 1024),
        Delivery::Parts(2)
    );
    assert_eq!(decide_delivery(Upload::No, 10, 0, 0), Delivery::NotAsked);
    assert!(matches!(
        decide_delivery(Upload::Force, 4 << 20, 0, 0),
        Delivery::TooLarge { parts: 65 }
    ));
}

#[test]
fn parts_are_at_most_64_kib_marked_and_reassemble() {
    let bundle: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let split = parts("r-diag", &bundle);
    assert_eq!(split.len(), 4);
    let mut joined = Vec::new();
    for (i, (topic, payload)) in split.iter().enumerate() {
        assert_eq!(topic, &format!("r-diag/part/{i}"));
        assert!(payload.len() <= MAX_PART_BYTES);
        let (n, count, last, bytes) = read_part(payload).unwrap();
        assert_eq!((n, count, last), (i, 4, i == 3));
        joined.extend_from_slice(bytes);
    }
    assert_eq!(joined, bundle);
    // An empty bundle is still one (last) part.
    let one = parts("r", &[]);
    assert_eq!(one.len(), 1);
    assert_eq!(read_part(&one[0].1), Some((0, 1, true, &[][..])));
}

// ---- property: a secret planted anywhere never survives ----

fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    if !url {
        while out.len() % 4 != 0 {
            out.push('=');
        }
    }
    out
}

/// Secrets as they are made: random bytes in hex or base64, PEM keys, bearer tokens, hashes.
fn secret() -> impl Strategy<Value = String> {
    let bytes = proptest::collection::vec(any::<u8>(), 18..48);
    (bytes, 0..6u8).prop_map(|(bytes, kind)| match kind {
        0 => crate::hex::encode(&bytes),
        1 => base64(&bytes, false),
        2 => base64(&bytes, true),
        3 => format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64(&bytes, false)
        ),
        4 => format!("Bearer {}", base64(&bytes, true)),
        _ => format!(
            "$argon2id$v=19$m=19456,t=2,p=1${}${}",
            base64(&bytes[..16], true),
            base64(&bytes[16..], true)
        ),
    })
}

/// Harmless key names (none says secret).
fn innocent_key() -> impl Strategy<Value = String> + Clone {
    "[a-z][a-z0-9]{0,10}".prop_filter("not a secret's name", |k| !secret_name(k))
}

/// Where in a document the secret goes.
#[derive(Debug, Clone)]
enum Place {
    /// As a value under this table path and key.
    Value(Vec<String>, String),
    /// Inside a longer string.
    Inside(Vec<String>, String, String, String),
    /// As an element of an array.
    InArray(Vec<String>, String, usize),
    /// In an inline table inside an array of tables.
    InArrayOfTables(Vec<String>, String),
    /// As a table's key.
    AsKey(Vec<String>),
}

fn place() -> impl Strategy<Value = Place> {
    let path = proptest::collection::vec(innocent_key(), 0..4);
    prop_oneof![
        (path.clone(), innocent_key()).prop_map(|(p, k)| Place::Value(p, k)),
        (path.clone(), innocent_key(), "[a-z ]{0,8}", "[a-z .]{0,8}")
            .prop_map(|(p, k, a, b)| Place::Inside(p, k, a, b)),
        (path.clone(), innocent_key(), 0..4usize).prop_map(|(p, k, i)| Place::InArray(p, k, i)),
        (path.clone(), innocent_key()).prop_map(|(p, k)| Place::InArrayOfTables(p, k)),
        path.prop_map(Place::AsKey),
    ]
}

fn table_at<'a>(root: &'a mut toml::Table, path: &[String]) -> &'a mut toml::Table {
    let mut table = root;
    for key in path {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = entry.as_table_mut().unwrap();
    }
    table
}

fn plant(doc: &mut toml::Table, place: &Place, secret: &str) {
    let s = |v: &str| toml::Value::String(v.to_owned());
    match place {
        Place::Value(path, key) => {
            table_at(doc, path).insert(key.clone(), s(secret));
        }
        Place::Inside(path, key, before, after) => {
            table_at(doc, path).insert(key.clone(), s(&format!("{before} {secret} {after}")));
        }
        Place::InArray(path, key, i) => {
            let mut items = vec![s("/etc/outpost/a.pub"), s("10s"), s("plain")];
            items.insert((*i).min(items.len()), s(secret));
            table_at(doc, path).insert(key.clone(), toml::Value::Array(items));
        }
        Place::InArrayOfTables(path, key) => {
            let mut inner = toml::Table::new();
            inner.insert(key.clone(), s(secret));
            inner.insert("path".into(), s("/dev/ttyACM0"));
            table_at(doc, path).insert(
                "serial".into(),
                toml::Value::Array(vec![toml::Value::Table(inner)]),
            );
        }
        Place::AsKey(path) => {
            table_at(doc, path).insert(secret.to_owned(), s("gw-0042"));
        }
    }
}

proptest! {
    #[test]
    fn a_secret_planted_anywhere_in_a_toml_document_never_survives(
        secret in secret(),
        place in place(),
        with_example in any::<bool>(),
    ) {
        let mut doc: toml::Table = if with_example { CONFIG.parse().unwrap() } else { toml::Table::new() };
        plant(&mut doc, &place, &secret);
        let text = toml::to_string(&doc).unwrap();
        let (redacted, found) = redact_toml(&text).unwrap();
        prop_assert!(!found.is_empty());
        // Neither the secret nor any long piece of it.
        for line in secret.lines() {
            let probe = &line[..line.len().min(24)];
            prop_assert!(!redacted.contains(probe), "{probe} survived in {redacted}");
        }
    }

    #[test]
    fn any_value_under_a_secret_name_is_redacted(
        path in proptest::collection::vec(innocent_key(), 0..3),
        name in prop_oneof![Just("token"), Just("password"), Just("claim_secret"), Just("private_key"), Just("psk")],
        value in prop_oneof![
            "[a-z]{1,8}".prop_map(toml::Value::String),
            any::<i64>().prop_map(toml::Value::Integer),
            any::<bool>().prop_map(toml::Value::Boolean),
        ],
    ) {
        let mut doc = toml::Table::new();
        table_at(&mut doc, &path).insert(name.to_owned(), value);
        let (redacted, found) = redact_toml(&toml::to_string(&doc).unwrap()).unwrap();
        let back: toml::Table = redacted.parse().unwrap();
        let mut table = &back;
        for key in &path {
            table = table[key].as_table().unwrap();
        }
        prop_assert_eq!(table[name].as_str(), Some(REDACTED));
        prop_assert_eq!(found.len(), 1);
    }
}
