//! The one-way rule, checked: `outpost-core` depends on no IO crate (so Cargo keeps tokio,
//! SQLite, MQTT, serial and Modbus transports out of it), and its code reads no clock, file,
//! socket, process or environment (so time and the outside world come in as arguments).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do IO; none may be in the core's dependency tree.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-serial",
    "tokio-modbus",
    "tokio-rustls",
    "rusqlite",
    "libsqlite3-sys",
    "rumqttc",
    "axum",
    "hyper",
    "mio",
    "serialport",
    "nix",
    "libc",
    "sd-notify",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_core_crate_depends_on_no_io_crate() {
    let tree = normal_tree("outpost-core");
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"outpost-core"), "{tree}");
    assert!(crates.contains(&"outpost-proto"), "{tree}");
    let leaked: Vec<&&str> = IO_CRATES.iter().filter(|c| crates.contains(c)).collect();
    assert!(
        leaked.is_empty(),
        "IO crates in outpost-core's tree: {leaked:?}"
    );
}

/// A package's normal dependency tree, as `cargo tree` prints it (crate and version a line).
fn normal_tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_daemon_does_not_carry_rumqttc_s_unused_tls_stack() {
    // Outpost makes its own TLS link; rumqttc's TLS feature brought rustls-webpki 0.102
    // (RUSTSEC-2026-0049, -0104) and the unmaintained rustls-pemfile for nothing.
    // The cloud's ingest makes its own TLS link the same way.
    for package in ["outpost", "outpost-ingest"] {
        let tree = normal_tree(package);
        for line in tree.lines() {
            assert!(
                !line.starts_with("rustls-pemfile ") && !line.starts_with("rustls-webpki v0.102"),
                "in {package}'s tree: {line}"
            );
        }
        assert!(tree.lines().any(|l| l.starts_with("rumqttc ")), "{tree}");
    }
}

/// What core code may not call: each reads the world instead of being told.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net::Tcp",
    "std::net::Udp",
    "std::process",
    "std::env::",
    "Instant::now(",
    "SystemTime::now(",
    "thread::sleep",
    "rand::",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_code_reads_no_clock_file_socket_process_or_environment() {
    let mut files = Vec::new();
    rust_files(&workspace().join("gateway/core/src"), &mut files);
    assert!(files.len() > 10, "{files:?}");
    let mut found = Vec::new();
    for file in files {
        // Tests may read fixtures and clocks; the cores may not.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in without_test_items(&text) {
            let line = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN.iter().filter(|w| line.contains(*w)) {
                found.push(format!("{}:{number}: {word}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "IO in outpost-core:\n{}",
        found.join("\n")
    );
}

/// The lines of `text` (numbered from 1) outside items marked `#[cfg(test)]`.
fn without_test_items(text: &str) -> Vec<(usize, &str)> {
    let mut kept = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push((i + 1, line));
            continue;
        }
        // Skip the item: one line (`mod tests;`) or up to its balancing brace.
        let mut depth = 0i32;
        for (_, line) in lines.by_ref() {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth <= 0 && (line.contains('}') || line.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    kept
}

#[test]
fn test_items_are_skipped_and_code_after_them_is_not() {
    let text = "a\n#[cfg(test)]\nmod tests {\n    x\n}\nb\n#[cfg(test)]\nmod more;\nc\n";
    let kept: Vec<&str> = without_test_items(text)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(kept, ["a", "b", "c"]);
}
