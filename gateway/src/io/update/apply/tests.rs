//! The adapter against a fake machine: the spool, verification and planning for real (files in
//! a temp dir, real signatures), dpkg and systemd simulated on a virtual clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_proto::Millis;

use super::*;
use crate::io::update::report::Outcome;
use outpost_core::update::agent::Probe;
use outpost_core::update::signing::{Artifact, Found, SigningKey, Validity};

/// How a fake package behaves once installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Ready one second after its start.
    Healthy,
    /// Never sends READY=1: dpkg's postinst waits until the service is held.
    NeverReady,
}

/// A fake gateway: packages are files whose content is `package version arch behaviour`.
struct FakeHost {
    now: Millis,
    arch: String,
    installed: Option<(String, Behaviour)>,
    /// Invocation counter and the time the current one started.
    invocation: u32,
    started_at: Millis,
    held: bool,
    log: Vec<String>,
}

/// A dpkg run: when it will end and what it installs.
struct FakeInstall {
    version: String,
    behaviour: Behaviour,
    unpacked_at: Millis,
}

fn deb_bytes(version: &str, behaviour: Behaviour) -> Vec<u8> {
    format!("outpost {version} amd64 {behaviour:?}").into_bytes()
}

fn read_deb(path: &Path) -> Option<(DebFields, Behaviour)> {
    let text = std::fs::read_to_string(path).ok()?;
    let f: Vec<&str> = text.split(' ').collect();
    Some((
        DebFields {
            package: f[0].into(),
            version: f[1].into(),
            architecture: f[2].into(),
        },
        if f[3] == "Healthy" {
            Behaviour::Healthy
        } else {
            Behaviour::NeverReady
        },
    ))
}

impl FakeHost {
    fn new(installed: &str) -> FakeHost {
        FakeHost {
            now: Millis::from_secs(1),
            arch: "amd64".into(),
            installed: Some((installed.into(), Behaviour::Healthy)),
            invocation: 1,
            started_at: Millis::ZERO,
            held: false,
            log: Vec::new(),
        }
    }
}

impl Host for FakeHost {
    type Install = FakeInstall;

    fn now(&self) -> Millis {
        self.now
    }

    fn sleep(&mut self, duration: Duration) {
        self.now = self.now + duration;
    }

    fn installed_version(&mut self, _package: &str) -> Option<String> {
        self.installed.as_ref().map(|(v, _)| v.clone())
    }

    fn architecture(&mut self) -> Result<String, String> {
        Ok(self.arch.clone())
    }

    fn is_newer(&mut self, version: &str, than: &str) -> bool {
        version > than
    }

    fn deb_fields(&mut self, deb: &Path) -> Result<DebFields, String> {
        read_deb(deb)
            .map(|(f, _)| f)
            .ok_or_else(|| "not a package".into())
    }

    fn repack(&mut self, _package: &str, _dir: &Path) -> Result<PathBuf, String> {
        Err("dpkg-repack is not installed".into())
    }

    fn start_install(&mut self, deb: &Path) -> Result<FakeInstall, String> {
        let (fields, behaviour) = read_deb(deb).ok_or("not a package")?;
        self.log.push(format!("dpkg -i {}", fields.version));
        Ok(FakeInstall {
            version: fields.version,
            behaviour,
            unpacked_at: self.now + Duration::from_secs(2),
        })
    }

    fn poll_install(&mut self, install: &mut FakeInstall) -> Option<Result<(), String>> {
        if self.now < install.unpacked_at {
            return None;
        }
        // postinst: the files are in place, the service restarted; a never-ready one keeps
        // the restart (and so dpkg) waiting until the service is held.
        self.installed = Some((install.version.clone(), install.behaviour));
        if install.behaviour == Behaviour::NeverReady && !self.held {
            if self.started_at < install.unpacked_at {
                self.invocation += 1;
                self.started_at = self.now;
            }
            return None;
        }
        if !self.held {
            self.invocation += 1;
            self.started_at = self.now;
        }
        Some(Ok(()))
    }

    fn probe(&mut self) -> Probe {
        let (version, behaviour) = self.installed.clone().unwrap();
        let up = !self.held
            && behaviour == Behaviour::Healthy
            && self.now.saturating_since(self.started_at) >= 1000;
        Probe {
            active_state: if self.held {
                "inactive".into()
            } else if up {
                "active".into()
            } else {
                "activating".into()
            },
            invocation: format!("inv{}", self.invocation),
            api: if up {
                Ok(outpost_core::update::version::upstream(&version).to_owned())
            } else {
                Err("connection refused".into())
            },
        }
    }

    fn hold_service(&mut self) {
        self.log.push("hold".into());
        self.held = true;
    }

    fn release_service(&mut self) {
        if self.held {
            self.log.push("release".into());
        }
        self.held = false;
    }
}

struct Site {
    _dir: tempfile::TempDir,
    settings: Settings,
    key: SigningKey,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(Role::GatewayUpdate, &[7; 32]);
        let pubkeys = dir.path().join("gateway-update.pub");
        std::fs::write(&pubkeys, key.public().emit()).unwrap();
        let spool = dir.path().join("var/lib/outpost/updates/incoming");
        std::fs::create_dir_all(&spool).unwrap();
        let settings = Settings {
            spool,
            state_dir: dir.path().join("var/lib/outpost-update"),
            pubkeys,
            package: "outpost".into(),
            agent: AgentConfig {
                deadline: Duration::from_secs(30),
                settle: Duration::from_secs(3),
                probe_interval: Duration::from_secs(1),
            },
            unusable_config: None,
        };
        Site {
            _dir: dir,
            settings,
            key,
        }
    }

    fn current(&self) -> PathBuf {
        self.settings.state_dir.join("current")
    }

    /// Drops a package into the spool as the daemon would, signed by `key`, valid for a day,
    /// its floor its own version.
    fn drop_signed(&self, version: &str, behaviour: Behaviour, key: &SigningKey) -> String {
        let validity = Validity {
            floor: version.into(),
            expires_unix_s: now_unix_s() + 24 * 3600,
        };
        self.drop_with(version, behaviour, key, validity)
    }

    fn drop_with(
        &self,
        version: &str,
        behaviour: Behaviour,
        key: &SigningKey,
        validity: Validity,
    ) -> String {
        let file = format!("outpost_{version}_amd64.deb");
        let bytes = deb_bytes(version, behaviour);
        let found = Found::of_bytes(&file, &bytes);
        let sig = key.sign(
            Artifact {
                file: file.clone(),
                size: found.size,
                sha256: found.sha256,
                package: "outpost".into(),
                version: version.into(),
                architecture: "amd64".into(),
            },
            validity,
        );
        std::fs::write(self.settings.spool.join(&file), bytes).unwrap();
        std::fs::write(self.settings.spool.join(format!("{file}.sig")), sig.emit()).unwrap();
        file
    }

    fn drop(&self, version: &str, behaviour: Behaviour) -> String {
        self.drop_signed(version, behaviour, &self.key)
    }

    /// `outpost-update keep` with the installed version's package.
    fn keep_installed(&self, host: &mut FakeHost, version: &str) {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join(format!("outpost_{version}_amd64.deb"));
        std::fs::write(&deb, deb_bytes(version, Behaviour::Healthy)).unwrap();
        keep(&self.settings, host, &deb).unwrap();
    }

    fn spool_is_empty(&self) -> bool {
        std::fs::read_dir(&self.settings.spool)
            .unwrap()
            .next()
            .is_none()
    }
}

fn now_unix_s() -> u64 {
    u64::try_from(crate::io::wall_clock::unix_ms() / 1000).unwrap()
}

fn only(reports: Vec<UpdateReport>) -> UpdateReport {
    assert_eq!(reports.len(), 1, "{reports:#?}");
    reports.into_iter().next().unwrap()
}

#[test]
fn a_healthy_update_is_confirmed_and_becomes_the_rollback_package() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    let file = site.drop("0.2.0-1", Behaviour::Healthy);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Confirmed, "{report:#?}");
    assert_eq!(report.file, file);
    assert_eq!(
        host.installed_version("outpost").as_deref(),
        Some("0.2.0-1")
    );
    let mut kept: Vec<String> = std::fs::read_dir(site.current())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, [file.clone(), format!("{file}.sig")]);
    assert!(site.spool_is_empty());
    assert_eq!(last_report_in(&site), Some(report));
    assert!(!site.settings.state_dir.join(PENDING_FILE).exists());
}

fn last_report_in(site: &Site) -> Option<UpdateReport> {
    crate::io::update::last_report(&site.settings.state_dir)
}

#[test]
fn an_update_that_never_becomes_ready_is_reverted() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    site.drop("0.2.0-1", Behaviour::NeverReady);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .starts_with("not ready and healthy within 30 s"),
        "{report:#?}"
    );
    assert_eq!(report.installed_version.as_deref(), Some("0.1.0-1"));
    assert_eq!(
        host.installed_version("outpost").as_deref(),
        Some("0.1.0-1")
    );
    assert_eq!(
        host.log,
        ["dpkg -i 0.2.0-1", "hold", "release", "dpkg -i 0.1.0-1"]
    );
    // The previous package is still the one to roll back to.
    assert!(site.current().join("outpost_0.1.0-1_amd64.deb").exists());
    assert_eq!(last_report_in(&site), Some(report));
}

#[test]
fn without_a_package_to_roll_back_to_nothing_is_installed() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.drop("0.2.0-1", Behaviour::Healthy);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Refused);
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("no package of the installed version 0.1.0-1 to roll back to"),
        "{reason}"
    );
    assert!(reason.contains("outpost-update keep"), "{reason}");
    assert!(host.log.is_empty(), "{:?}", host.log);
    assert!(site.spool_is_empty());
}

#[test]
fn untrusted_or_inapplicable_artifacts_are_refused_before_dpkg() {
    let site = Site::new();
    let mut host = FakeHost::new("0.2.0-1");
    site.keep_installed(&mut host, "0.2.0-1");
    // Signed by a stranger; signed with a firmware key; an old version (a replay);
    // the same version; tampered after signing.
    site.drop_signed(
        "0.3.0-1",
        Behaviour::Healthy,
        &SigningKey::from_seed(Role::GatewayUpdate, &[9; 32]),
    );
    site.drop_signed(
        "0.3.1-1",
        Behaviour::Healthy,
        &SigningKey::from_seed(Role::Firmware, &[7; 32]),
    );
    site.drop("0.1.0-1", Behaviour::Healthy);
    site.drop("0.2.0-1", Behaviour::Healthy);
    let tampered = site.drop("0.3.2-1", Behaviour::Healthy);
    std::fs::write(
        site.settings.spool.join(&tampered),
        deb_bytes("0.3.2-1", Behaviour::NeverReady),
    )
    .unwrap();
    let reports = apply(&site.settings, &mut host).unwrap();
    let reasons: Vec<(String, String)> = reports
        .iter()
        .map(|r| {
            assert_eq!(r.outcome, Outcome::Refused, "{r:#?}");
            (r.to_version.clone().unwrap(), r.reason.clone().unwrap())
        })
        .collect();
    let expect = [
        (
            "0.1.0-1",
            "version 0.1.0-1 is not newer than the installed 0.2.0-1",
        ),
        (
            "0.2.0-1",
            "version 0.2.0-1 is not newer than the installed 0.2.0-1",
        ),
        ("0.3.0-1", "which is not a trusted key"),
        (
            "0.3.1-1",
            "the manifest is for role firmware, not gateway-update",
        ),
        ("0.3.2-1", "the artifact has"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for ((version, reason), (want_version, want)) in reasons.iter().zip(expect) {
        assert_eq!(version, want_version);
        // The tampered one is longer than signed: caught by size before the digest.
        assert!(reason.contains(want), "{version}: {reason}");
    }
    assert!(host.log.is_empty(), "{:?}", host.log);
    assert!(site.spool_is_empty());
}

#[test]
fn a_package_for_another_architecture_is_refused() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    host.arch = "arm64".into();
    site.keep_installed(&mut host, "0.1.0-1");
    site.drop("0.2.0-1", Behaviour::Healthy);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(
        report.reason.as_deref(),
        Some("the package is for amd64, this gateway is arm64")
    );
}

#[test]
fn an_update_cut_short_is_finished_on_the_next_run() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    // The power went while the never-ready version was being checked: it is installed and the
    // marker is there; after the reboot the service is (still) not ready.
    let state = StateDir::create(&site.settings.state_dir).unwrap();
    let artifact = state.work().join("outpost_0.2.0-1_amd64.deb");
    std::fs::write(&artifact, deb_bytes("0.2.0-1", Behaviour::NeverReady)).unwrap();
    state
        .persist(&Pending {
            file: "outpost_0.2.0-1_amd64.deb".into(),
            artifact,
            from_version: "0.1.0-1".into(),
            to_version: "0.2.0-1".into(),
            previous: site.current().join("outpost_0.1.0-1_amd64.deb"),
            rolling_back: None,
            started_at_unix_ms: 1,
        })
        .unwrap();
    host.installed = Some(("0.2.0-1".into(), Behaviour::NeverReady));
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert_eq!(
        host.installed_version("outpost").as_deref(),
        Some("0.1.0-1")
    );
    assert!(!site.settings.state_dir.join(PENDING_FILE).exists());
}

#[test]
fn keep_accepts_only_the_installed_version() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("outpost_0.0.9-1_amd64.deb");
    std::fs::write(&other, deb_bytes("0.0.9-1", Behaviour::Healthy)).unwrap();
    let err = keep(&site.settings, &mut host, &other).unwrap_err();
    assert!(
        err.to_string().contains("but outpost 0.1.0-1 is installed"),
        "{err}"
    );
}

#[test]
fn an_expired_manifest_is_refused_before_dpkg() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    let expired = Validity {
        floor: "0.2.0-1".into(),
        expires_unix_s: now_unix_s() - 60,
    };
    site.drop_with("0.2.0-1", Behaviour::Healthy, &site.key, expired);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("not trusted: the manifest expired at"),
        "{reason}"
    );
    assert!(host.log.is_empty(), "{:?}", host.log);
    assert!(site.spool_is_empty());
    assert_eq!(last_report_in(&site).unwrap().outcome, Outcome::Refused);
}

#[test]
fn a_superseded_package_newer_than_the_installed_one_is_refused_below_the_floor() {
    // 0.3.0 was published (floor 0.3.0-1) and reached this unit, which could not keep it and
    // went back to 0.1.0. Then 0.2.0, signed earlier and still within its expiry, is replayed:
    // newer than what is installed, but below the floor this unit has seen.
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    let superseded = Validity {
        floor: "0.2.0-1".into(),
        expires_unix_s: now_unix_s() + 24 * 3600,
    };
    site.drop("0.3.0-1", Behaviour::NeverReady);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::RolledBack, "{report:#?}");
    assert_eq!(
        std::fs::read_to_string(site.settings.state_dir.join(FLOOR_FILE)).unwrap(),
        "0.3.0-1\n"
    );
    site.drop_with("0.2.0-1", Behaviour::Healthy, &site.key, superseded);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("version 0.2.0-1 is below the version floor 0.3.0-1"),
        "{reason}"
    );
    assert_eq!(
        host.installed_version("outpost").as_deref(),
        Some("0.1.0-1")
    );
    assert_eq!(
        host.log.len(),
        4,
        "only the 0.3.0 attempt ran dpkg: {:?}",
        host.log
    );
    // A lower floor never lowers the kept one; a higher one raises it.
    site.drop("0.4.0-1", Behaviour::Healthy);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Confirmed, "{report:#?}");
    assert_eq!(
        std::fs::read_to_string(site.settings.state_dir.join(FLOOR_FILE)).unwrap(),
        "0.4.0-1\n"
    );
}

#[test]
fn a_manifest_whose_floor_is_above_its_own_version_is_refused() {
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    site.keep_installed(&mut host, "0.1.0-1");
    let odd = Validity {
        floor: "0.9.0-1".into(),
        expires_unix_s: now_unix_s() + 3600,
    };
    site.drop_with("0.2.0-1", Behaviour::Healthy, &site.key, odd);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("floor 0.9.0-1 is above its own version"),
        "{report:#?}"
    );
    assert!(!site.settings.state_dir.join(FLOOR_FILE).exists());
}

#[test]
fn a_symlinked_spool_is_refused_with_a_report_and_moved_aside() {
    // The daemon (user outpost) owns data_dir: it can make `incoming` a link to anywhere.
    let site = Site::new();
    let mut host = FakeHost::new("0.1.0-1");
    let elsewhere = site.settings.spool.parent().unwrap().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("outpost_0.2.0-1_amd64.deb.sig"), b"manifest").unwrap();
    std::fs::remove_dir(&site.settings.spool).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &site.settings.spool).unwrap();
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    let reason = report.reason.clone().unwrap();
    assert!(
        reason.contains("is a symbolic link or not a folder"),
        "{reason}"
    );
    assert!(reason.contains("moved aside to"), "{reason}");
    assert_eq!(last_report_in(&site), Some(report));
    // Nothing matches the path unit's glob any more, so it does not start the agent again;
    // what the link pointed to is left alone.
    assert!(std::fs::symlink_metadata(&site.settings.spool).is_err());
    assert!(elsewhere.join("outpost_0.2.0-1_amd64.deb.sig").exists());
    assert!(host.log.is_empty(), "{:?}", host.log);
    // The next run finds no spool: nothing to do, no error.
    assert!(apply(&site.settings, &mut host).unwrap().is_empty());
}

#[test]
fn with_an_unusable_configuration_every_artifact_is_refused_reported_and_taken_away() {
    // A configuration the agent cannot load (here, a key file others can read) must not leave
    // the .sig in the spool without a report: the path unit would start the agent again and
    // again, and nobody would learn why nothing is installed.
    let mut site = Site::new();
    site.settings.unusable_config = Some("uplink.mqtt.key_file: mode 0644".into());
    let mut host = FakeHost::new("0.1.0-1");
    let file = site.drop("0.2.0-1", Behaviour::Healthy);
    let report = only(apply(&site.settings, &mut host).unwrap());
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert_eq!(report.file, file);
    let reason = report.reason.clone().unwrap();
    assert!(
        reason.contains("configuration cannot be used") && reason.contains("mode 0644"),
        "{reason}"
    );
    assert_eq!(last_report_in(&site), Some(report));
    assert!(
        std::fs::read_dir(&site.settings.spool)
            .unwrap()
            .next()
            .is_none(),
        "the spool is empty"
    );
    assert!(host.log.is_empty(), "nothing installed: {:?}", host.log);
}
