//! The README's two commands, checked against the tree: the demo command must pick the daemon
//! (a package with several binaries needs `default-run`, or `cargo run -p outpost` refuses to
//! guess), and `.ci/run` must run exactly the README's test command.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell commands of README.md's "The two commands" section, in order.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split("## The two commands")
        .nth(1)
        .expect("README.md has a section \"The two commands\"");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_owned())
        .collect()
}

#[test]
fn the_demo_command_runs_the_daemon_binary() {
    let commands = readme_commands();
    let demo = &commands[0];
    assert_eq!(
        demo, "cargo run --release -p outpost -- demo",
        "{commands:?}"
    );
    let metadata = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{metadata:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "outpost")
        .unwrap();
    let binaries: Vec<&str> = package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(binaries.contains(&"outpost"), "{binaries:?}");
    if binaries.len() > 1 {
        assert_eq!(
            package["default_run"], "outpost",
            "`cargo run -p outpost` cannot choose among {binaries:?} without default-run"
        );
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let commands = readme_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let ci = std::fs::read_to_string(workspace().join(".ci/run")).unwrap();
    let ran: Vec<&str> = ci
        .lines()
        .filter_map(|l| l.trim().strip_prefix("exec "))
        .collect();
    assert_eq!(ran, [commands[1].as_str()], "{ci}");
}
