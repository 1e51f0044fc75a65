//! Gateway self-update, end to end, in a booted Debian root (systemd-nspawn): the amd64 package
//! from `packaging/build-deb.sh` is installed, a test key pair (role gateway-update) is made with
//! `outpost-sign` and its public key put in `/etc/outpost/keys/`, and artifacts are dropped into
//! the spool as the daemon would (user `outpost`, the .deb then its .sig). `outpost-update.path`
//! starts the root agent, `outpost-update.service`, with a 15 s deadline (a drop-in). In order:
//!
//! 1. a tampered artifact (one byte changed after signing): refused, nothing installed;
//! 2. a good update while no package of the installed version is kept: refused;
//! 3. `outpost-update keep` with the installed package;
//! 4. a broken update (the same package, version bumped, `/usr/bin/outpost` replaced by a
//!    script that never becomes ready): installed, not ready by the deadline, the previous
//!    version reinstalled and answering again, `report.json` saying rolled back and why;
//! 5. a good update (the same binary, version bumped): confirmed, kept for the next rollback.
//!
//! The container has its own network namespace (loopback only), so its daemon's API port is
//! nobody else's. The Debian root is the one `tests/install.rs` caches (target/nspawn-cache/,
//! made by debootstrap on first use), copied per run. Skipped, with the reason, only where
//! systemd-nspawn cannot run (and without root).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::nspawn::{self, repo, run};

use outpost_core::update::{Outcome, UpdateReport};

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

fn is_root() -> bool {
    stdout(Command::new("id").arg("-u")).trim() == "0"
}

/// The amd64 package, built (or found current, in seconds) by the packaging script; or the one
/// `OUTPOST_SELF_UPDATE_DEB` names.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("OUTPOST_SELF_UPDATE_DEB") {
        return PathBuf::from(deb);
    }
    let started = Instant::now();
    let out = stdout(
        Command::new(repo().join("packaging/build-deb.sh"))
            .args(["--arch", "amd64"])
            .current_dir(repo()),
    );
    let deb = PathBuf::from(
        out.lines()
            .last()
            .expect("the script prints the package path"),
    );
    assert!(deb.is_file(), "build-deb.sh printed {deb:?}");
    eprintln!(
        "package ready in {:.1?}: {}",
        started.elapsed(),
        deb.display()
    );
    deb
}

fn control_field(deb: &Path, field: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))
        .trim()
        .to_owned()
}

fn ships(deb: &Path, path: &str) -> bool {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .any(|l| l.ends_with(&format!(".{path}")))
}

/// The package as it will ship with the update agent: as built when it already holds
/// `/usr/bin/outpost-update` and its units; otherwise (until the packaging adds them) with the
/// agent built in the same `deb` profile and the units from packaging/ added.
fn with_update_agent(deb: &Path, work: &Path) -> PathBuf {
    if ships(deb, "/usr/bin/outpost-update") {
        for unit in ["outpost-update.service", "outpost-update.path"] {
            assert!(
                ships(deb, &format!("/usr/lib/systemd/system/{unit}")),
                "{} ships outpost-update but not {unit}",
                deb.display()
            );
        }
        return deb.to_owned();
    }
    eprintln!("the package lacks outpost-update: adding the agent and its units for this test");
    let target = repo().join("target/deb");
    run(outpost_e2e::cargo()
        .args([
            "build",
            "--quiet",
            "--locked",
            "--profile",
            "deb",
            "-p",
            "outpost",
            "--bin",
            "outpost-update",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo()));
    let tree = work.join("with-agent");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    std::fs::copy(
        target.join("deb/outpost-update"),
        tree.join("usr/bin/outpost-update"),
    )
    .unwrap();
    for unit in ["outpost-update.service", "outpost-update.path"] {
        std::fs::copy(
            repo().join("packaging").join(unit),
            tree.join("usr/lib/systemd/system").join(unit),
        )
        .unwrap();
    }
    let out = work.join(deb.file_name().unwrap());
    build(&tree, &out);
    out
}

fn build(tree: &Path, deb: &Path) {
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "-b"])
        .arg(tree)
        .arg(deb));
}

/// `deb` rebuilt as `version`, optionally with `/usr/bin/outpost` replaced.
fn rebuilt(deb: &Path, work: &Path, version: &str, outpost: Option<&str>) -> PathBuf {
    let tree = work.join(format!("tree-{version}"));
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).unwrap();
    let old = format!("Version: {}\n", control_field(deb, "Version"));
    assert!(control.contains(&old), "{control}");
    std::fs::write(
        &control_path,
        control.replace(&old, &format!("Version: {version}\n")),
    )
    .unwrap();
    if let Some(script) = outpost {
        std::fs::write(tree.join("usr/bin/outpost"), script).unwrap();
    }
    let out = work.join(format!("outpost_{version}_amd64.deb"));
    build(&tree, &out);
    out
}

/// Never sends READY=1 and never serves the API: what a broken release looks like to systemd.
const NEVER_READY: &str = "#!/bin/sh\n# A release that never becomes ready.\nexec sleep infinity\n";

fn sign(key: &Path, deb: &Path) {
    run(Command::new(outpost_e2e::bin("outpost-sign"))
        .args(["sign", "--key"])
        .arg(key)
        .arg(deb));
}

// ---------------------------------------------------------------------------------------------
// The Debian root: tests/install.rs's cache, same path and lock; a copy per test.

struct TestRoot {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestRoot {
    fn new() -> TestRoot {
        let (dir, path) = nspawn::fresh_root();
        TestRoot { _dir: dir, path }
    }

    fn chroot_ok(&self, script: &str) -> String {
        stdout(
            Command::new("chroot")
                .arg(&self.path)
                .args(["/bin/sh", "-c", script])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }

    fn put(&self, path: &str, bytes: impl AsRef<[u8]>) {
        let path = self.inside(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let to = self.inside(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }

    fn inside(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// Boots the root until it powers itself off; `None` if it had not after `limit`.
    fn boot(&self, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
        nspawn::boot(&self.path, &["--private-network"], limit)
    }
}

/// Runs inside the booted root as outpost-self-update-test.service, after outpost.service
/// and the path unit: drops each artifact as the daemon would and waits for the agent's
/// report, keeping a copy of each report and of the API's status answer in /root/self-update/.
const SCENARIO: &str = r#"#!/bin/bash
set -u
dir=/root/self-update
mkdir -p "$dir"
exec 3>"$dir/log"
out=$dir/result
: >"$out"
put() { printf '%s=%s\n' "$1" "$2" >>"$out"; }
spool=/var/lib/outpost/updates/incoming
report=/var/lib/outpost-update/report.json

wait_active() {
    for _ in $(seq 1 300); do
        [ "$(systemctl is-active outpost.service)" = active ] && return 0
        sleep 0.2
    done
    return 1
}
# GET /api/v1/status over bash's /dev/tcp (a minimal root has no curl).
status() {
    exec 4<>/dev/tcp/127.0.0.1/8080 || return 1
    printf 'GET /api/v1/status HTTP/1.0\r\nHost: localhost\r\n\r\n' >&4
    cat <&4
    exec 4<&-
}
# As the daemon does: the artifact under a hidden name, renamed, then its manifest; the files
# owned by outpost (copied by root: /root is not outpost's to read), the renames by outpost.
drop() { # FOLDER NAME STEP
    rm -f "$report"
    local started=$SECONDS
    runuser -u outpost -- install -d -m 0750 /var/lib/outpost/updates "$spool"
    for f in "$2" "$2.sig"; do
        install -o outpost -g outpost -m 0600 "$1/$f" "$spool/.$f.partial"
        runuser -u outpost -- mv "$spool/.$f.partial" "$spool/$f"
    done
    for _ in $(seq 1 900); do
        if [ -f "$report" ] && [ "$(systemctl is-active outpost-update.service)" != activating ]; then
            break
        fi
        sleep 0.1
    done
    put "$3_seconds" $((SECONDS - started))
    cp "$report" "$dir/report-$3.json" 2>/dev/null
    put "$3_spool" "$(ls -A "$spool" | xargs)"
    wait_active
    put "$3_active" "$(systemctl is-active outpost.service)"
    put "$3_enabled" "$(systemctl is-enabled outpost.service)"
    put "$3_installed" "$(dpkg-query -W -f='${Version}' outpost)"
    status >"$dir/status-$3.txt" 2>&3
    { echo "--- $3"; systemctl status outpost.service --no-pager; } >&3 2>&1
}

wait_active
put boot_active "$(systemctl is-active outpost.service)"
put path_active "$(systemctl is-active outpost-update.path)"
put boot_installed "$(dpkg-query -W -f='${Version}' outpost)"

drop /root/debs/tampered "$GOOD" tampered
drop /root/debs "$GOOD" no_previous
outpost-update keep "/root/debs/$BASE" >&3 2>&1
put keep $?
drop /root/debs "$BROKEN" broken
drop /root/debs "$GOOD" good
put current "$(ls /var/lib/outpost-update/current | xargs)"
put report_mode "$(stat -c '%a %U' /var/lib/outpost-update/report.json)"
put current_mode "$(stat -c '%a %U' /var/lib/outpost-update/current)"
{ echo "--- outpost-update"; journalctl -u outpost-update.service --no-pager -o cat; } >&3 2>&1
put done yes
"#;

const SCENARIO_UNIT: &str = "[Unit]
Description=Outpost self-update test: drop artifacts, read the reports, power off
After=outpost.service outpost-update.path
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
EnvironmentFile=/root/self-update.env
ExecStart=/root/self-update.sh
TimeoutStartSec=400

[Install]
WantedBy=multi-user.target
";

fn result_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The `version` in a saved HTTP answer of `GET /api/v1/status`.
fn status_version(answer: &str) -> Option<String> {
    let body = answer.split("\r\n\r\n").nth(1)?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(json.get("version")?.as_str()?.to_owned())
}

#[test]
fn a_self_update_that_never_becomes_ready_is_reverted_and_a_good_one_is_confirmed() {
    if !is_root() {
        eprintln!(
            "SKIPPED: booting a container with systemd-nspawn needs root (scripts/test.sh runs as root)"
        );
        return;
    }
    let started = Instant::now();
    let root = TestRoot::new();
    if let Some(why) = nspawn::unavailable(&root.path, &["--private-network"]) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let built = package();
    let base = with_update_agent(&built, work.path());
    let base_version = control_field(&base, "Version");
    let good_version = format!("{base_version}+selfupdate1");
    let broken_version = format!("{base_version}+broken1");
    let good = rebuilt(&base, work.path(), &good_version, None);
    let broken = rebuilt(&base, work.path(), &broken_version, Some(NEVER_READY));

    // A test key pair, role gateway-update; both updates signed with it.
    let keys = work.path().join("keys");
    run(Command::new(outpost_e2e::bin("outpost-sign"))
        .args(["keygen", "--role", "gateway-update", "--out"])
        .arg(&keys));
    let key = keys.join("gateway-update.key");
    sign(&key, &good);
    sign(&key, &broken);
    let name = |deb: &Path| deb.file_name().unwrap().to_string_lossy().into_owned();
    // The good update with one byte changed after signing, under the same name.
    let mut tampered = std::fs::read(&good).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    root.put(&format!("/root/debs/tampered/{}", name(&good)), tampered);
    root.copy_in(
        &work.path().join(format!("{}.sig", name(&good))),
        &format!("/root/debs/tampered/{}.sig", name(&good)),
    );
    for deb in [&base, &good, &broken] {
        root.copy_in(deb, &format!("/root/debs/{}", name(deb)));
        let sig = PathBuf::from(format!("{}.sig", deb.display()));
        if sig.exists() {
            root.copy_in(&sig, &format!("/root/debs/{}.sig", name(deb)));
        }
    }
    eprintln!("artifacts made and signed in {:.1?}", started.elapsed());

    // Installed as an installer would, with the public key, before the first boot.
    root.chroot_ok(&format!("dpkg -i /root/debs/{}", name(&base)));
    root.copy_in(
        &keys.join("gateway-update.pub"),
        "/etc/outpost/keys/gateway-update.pub",
    );
    let path_wants = "etc/systemd/system/multi-user.target.wants/outpost-update.path";
    if base == built {
        assert!(
            // The link's target is absolute: look at the link, not through it.
            std::fs::symlink_metadata(root.path.join(path_wants)).is_ok(),
            "the package does not enable outpost-update.path"
        );
    } else {
        root.chroot_ok("systemctl enable outpost-update.path");
    }
    // The test's deadline and settle time.
    root.put(
        "/etc/systemd/system/outpost-update.service.d/test-deadline.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/outpost-update apply --deadline 15s --settle 3s\n",
    );
    root.put("/root/self-update.sh", SCENARIO);
    root.chroot_ok("chmod 755 /root/self-update.sh");
    root.put(
        "/root/self-update.env",
        format!(
            "BASE={}\nGOOD={}\nBROKEN={}\n",
            name(&base),
            name(&good),
            name(&broken)
        ),
    );
    root.put(
        "/etc/systemd/system/outpost-self-update-test.service",
        SCENARIO_UNIT,
    );
    root.chroot_ok("systemctl enable outpost-self-update-test.service");

    let booted = Instant::now();
    let (status, console) = root.boot(Duration::from_secs(420));
    let in_container = booted.elapsed();
    let read = |path: &str| std::fs::read_to_string(root.inside(path)).unwrap_or_default();
    let results_text = read("/root/self-update/result");
    let context = format!(
        "results:\n{results_text}\nlog:\n{}\nconsole:\n{console}",
        read("/root/self-update/log")
    );
    eprintln!("in the container (boot, five drops, power-off): {in_container:.1?}");
    let Some(status) = status else {
        panic!("the container did not power off in time\n{context}");
    };
    assert!(status.success(), "systemd-nspawn: {status}\n{context}");
    let results = result_map(&results_text);
    let get = |key: &str| -> &str {
        results
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the scenario wrote no {key}\n{context}"))
    };
    let report = |step: &str| -> UpdateReport {
        let text = read(&format!("/root/self-update/report-{step}.json"));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("report of {step}: {e}: {text:?}\n{context}"))
    };
    let api_version =
        |step: &str| status_version(&read(&format!("/root/self-update/status-{step}.txt")));
    let upstream = outpost_core::update::version::upstream(&base_version).to_owned();
    eprintln!(
        "report.json of the broken update:\n{}",
        read("/root/self-update/report-broken.json")
    );
    for step in ["tampered", "no_previous", "broken", "good"] {
        eprintln!(
            "{step}: {} s: {}",
            get(&format!("{step}_seconds")),
            report(step).summary()
        );
    }

    assert_eq!(get("boot_active"), "active", "{context}");
    assert_eq!(get("path_active"), "active", "{context}");
    assert_eq!(get("boot_installed"), base_version);

    // 1. Tampered: refused on its digest, nothing installed, the spool emptied.
    let tampered = report("tampered");
    assert_eq!(tampered.outcome, Outcome::Refused, "{tampered:#?}");
    assert!(
        tampered.reason.as_deref().unwrap().contains("SHA-256"),
        "{tampered:#?}"
    );
    assert_eq!(get("tampered_installed"), base_version);
    assert_eq!(get("tampered_spool"), "", "{context}");

    // 2. Nothing to roll back to yet (no dpkg-repack in a minimal root): refused, clearly.
    let no_previous = report("no_previous");
    assert_eq!(no_previous.outcome, Outcome::Refused, "{no_previous:#?}");
    assert!(
        no_previous
            .reason
            .as_deref()
            .unwrap()
            .contains("no package of the installed version"),
        "{no_previous:#?}"
    );
    assert_eq!(get("no_previous_installed"), base_version);
    assert_eq!(get("keep"), "0", "{context}");

    // 3. Broken: installed, never ready, rolled back within the deadline and a little.
    let broken_report = report("broken");
    assert_eq!(
        broken_report.outcome,
        Outcome::RolledBack,
        "{broken_report:#?}\n{context}"
    );
    assert_eq!(
        broken_report.from_version.as_deref(),
        Some(base_version.as_str())
    );
    assert_eq!(
        broken_report.to_version.as_deref(),
        Some(broken_version.as_str())
    );
    let reason = broken_report.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("not ready and healthy within 15 s"),
        "{reason}"
    );
    assert_eq!(broken_report.deadline_ms, 15_000);
    assert!(
        broken_report
            .steps
            .iter()
            .any(|s| s.what.starts_with("installing")),
        "{broken_report:#?}"
    );
    assert_eq!(get("broken_installed"), base_version, "{context}");
    assert_eq!(get("broken_active"), "active", "{context}");
    // Not left masked: the hold ends with the rollback.
    assert_eq!(get("broken_enabled"), "enabled", "{context}");
    assert_eq!(api_version("broken"), Some(upstream.clone()), "{context}");
    let seconds: u64 = get("broken_seconds").parse().unwrap();
    assert!(
        (15..60).contains(&seconds),
        "the broken update took {seconds} s\n{context}"
    );

    // 4. Good: confirmed, running, and kept as the package to roll back to.
    let good_report = report("good");
    assert_eq!(
        good_report.outcome,
        Outcome::Confirmed,
        "{good_report:#?}\n{context}"
    );
    assert_eq!(get("good_installed"), good_version, "{context}");
    assert_eq!(get("good_active"), "active", "{context}");
    assert_eq!(api_version("good"), Some(upstream), "{context}");
    assert_eq!(
        get("current"),
        format!("{} {}.sig", name(&good), name(&good)),
        "{context}"
    );
    // The daemon (user outpost) can read the report; root's packages are root's alone.
    assert_eq!(get("report_mode"), "644 root", "{context}");
    assert_eq!(get("current_mode"), "700 root", "{context}");
    assert_eq!(get("done"), "yes", "{context}");
    eprintln!("whole test: {:.1?}", started.elapsed());
}

/// `outpost-sign` as a release engineer uses it: keygen, sign, verify; a key of the wrong role
/// and a readable private key are refused. No root needed.
#[test]
fn outpost_sign_signs_and_verifies_and_refuses_the_wrong_role() {
    let dir = tempfile::tempdir().unwrap();
    let sign_tool = || Command::new(outpost_e2e::bin("outpost-sign"));
    for role in ["gateway-update", "firmware"] {
        run(sign_tool()
            .args(["keygen", "--role", role, "--out"])
            .arg(dir.path().join("keys")));
    }
    let key = |name: &str| dir.path().join("keys").join(name);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(key("gateway-update.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // Keys are never overwritten.
    let again = sign_tool()
        .args(["keygen", "--role", "firmware", "--out"])
        .arg(dir.path().join("keys"))
        .output()
        .unwrap();
    assert!(!again.status.success());

    let image = dir.path().join("node-fw-1.2.0.bin");
    std::fs::write(&image, b"firmware image bytes").unwrap();
    run(sign_tool()
        .args([
            "sign",
            "--package",
            "outpost-node",
            "--artifact-version",
            "1.2.0",
        ])
        .args(["--arch", "rp2040", "--key"])
        .arg(key("firmware.key"))
        .arg(&image));
    let verify = |pubkey: &str, role: &str| {
        sign_tool()
            .args(["verify", "--role", role, "--pubkey"])
            .arg(key(pubkey))
            .arg(&image)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = verify("firmware.pub", "firmware");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("version 1.2.0\n"));
    // A firmware signature is no gateway update, whichever key is trusted.
    for pubkey in ["gateway-update.pub", "firmware.pub"] {
        let refused = verify(pubkey, "gateway-update");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(
            stderr.contains("the manifest is for role firmware, not gateway-update"),
            "{stderr}"
        );
    }
    // Signed by a key the verifier does not hold.
    let unknown = verify("gateway-update.pub", "firmware");
    assert!(!unknown.status.success());
    // One byte changed.
    std::fs::write(&image, b"firmware image bytez").unwrap();
    let tampered = verify("firmware.pub", "firmware");
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("SHA-256"));

    // A private key others can read is not used.
    std::fs::set_permissions(
        key("firmware.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let loose = sign_tool()
        .args([
            "sign",
            "--package",
            "p",
            "--artifact-version",
            "1",
            "--arch",
            "a",
            "--key",
        ])
        .arg(key("firmware.key"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&loose.stderr).contains("chmod 600"));
}

#[test]
fn outpost_sign_writes_an_expiry_and_a_floor_and_an_expired_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sign_tool = || Command::new(outpost_e2e::bin("outpost-sign"));
    run(sign_tool()
        .args(["keygen", "--role", "firmware", "--out"])
        .arg(dir.path()));
    let key = dir.path().join("firmware.key");
    let pubkey = dir.path().join("firmware.pub");
    let image = dir.path().join("node-fw-1.3.0.bin");
    std::fs::write(&image, b"firmware image bytes").unwrap();
    let sign = |extra: &[&str]| {
        sign_tool()
            .args([
                "sign",
                "--package",
                "outpost-node",
                "--artifact-version",
                "1.3.0",
            ])
            .args(["--arch", "rp2040", "--key"])
            .arg(&key)
            .args(extra)
            .arg(&image)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let verify = || {
        sign_tool()
            .args(["verify", "--role", "firmware", "--pubkey"])
            .arg(&pubkey)
            .arg(&image)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let manifest = || std::fs::read_to_string(dir.path().join("node-fw-1.3.0.bin.sig")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The defaults: the floor is the artifact's version, valid for 30 days.
    let signed = sign(&[]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let text = manifest();
    assert!(text.starts_with("outpost-manifest 2\n"), "{text}");
    assert!(text.contains("\nfloor 1.3.0\n"), "{text}");
    let expires: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("expires "))
        .unwrap()
        .parse()
        .unwrap();
    let month = 30 * 24 * 3600;
    assert!(
        (now + month..=now + month + 60).contains(&expires),
        "{expires}"
    );
    assert!(verify().status.success());

    // Given: a lower floor and an RFC 3339 expiry.
    let signed = sign(&["--floor", "1.1.0", "--expires", "2099-01-01T00:00:00Z"]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        manifest().contains("\nfloor 1.1.0\nexpires 4070908800\n"),
        "{}",
        manifest()
    );

    // Already expired: not signed at all. Expired since: refused by verify.
    let past = sign(&["--expires", "1000000000"]);
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("already have expired"));
    let signed = sign(&["--valid-for", "1s"]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    std::thread::sleep(Duration::from_millis(2100));
    let expired = verify();
    let stderr = String::from_utf8_lossy(&expired.stderr);
    assert!(!expired.status.success());
    assert!(stderr.contains("the manifest expired at"), "{stderr}");
}
