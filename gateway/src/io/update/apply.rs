//! `outpost-update apply`: the adapter around [`Agent`]. It finishes an attempt a power cut
//! interrupted, then takes each artifact out of the spool, verifies it and plans the update
//! (the refusals are here), and pumps the agent: carries out its actions against a [`Host`]
//! (dpkg, systemd, the daemon's API: [`super::system::System`] on a gateway, a fake in tests)
//! and feeds back what happened, until the report is written.
//!
//! Root's own folder ([`super::STATE_DIR`], `0755`, its subfolders `0700`):
//!
//! | path | what |
//! |------|------|
//! | `report.json` | the last attempt's [`UpdateReport`], readable by the daemon |
//! | `pending.json` | the attempt in progress ([`Pending`]); present only while one runs |
//! | `current/` | the installed version's package (and its `.sig` when it came as an update): what a failed update is rolled back to |
//! | `work/` | the verified copy of the artifact being applied, dpkg's log |
//! | `floor` | the highest version floor of any verified manifest: nothing below it is installed |
//! | `lock` | one agent at a time |

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use outpost_proto::Millis;

use super::report::{self, PENDING_FILE, Pending, REPORT_FILE, UpdateReport};
use super::spool::{SIG_SUFFIX, Spool, Taken};
use outpost_core::update::agent::{Action, Agent, AgentConfig, InstallExit, Plan, Probe, Refusal};
use outpost_core::update::signing::{PublicKey, Role, SignedManifest};

/// How the agent is set up (flags of `outpost-update apply`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the daemon drops artifacts.
    pub spool: PathBuf,
    /// Root's own folder (report, marker, rollback package).
    pub state_dir: PathBuf,
    /// The trusted `gateway-update` public keys.
    pub pubkeys: PathBuf,
    /// The package that updates itself.
    pub package: String,
    pub agent: AgentConfig,
    /// Why the gateway's configuration cannot be used (`outpost-update apply` then works on the
    /// packaged spool path): every artifact is refused with this reason, so the refusal is
    /// reported and the path unit is not started again and again.
    pub unusable_config: Option<String>,
}

/// A package's control fields, as `dpkg-deb -f` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebFields {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// What the agent needs from the machine. Each method is one command or one request.
pub trait Host {
    /// A dpkg run in progress.
    type Install;
    /// Monotonic time.
    fn now(&self) -> Millis;
    fn sleep(&mut self, duration: Duration);
    /// The package's installed and configured version (`None`: not installed, or half).
    fn installed_version(&mut self, package: &str) -> Option<String>;
    /// `dpkg --print-architecture`.
    fn architecture(&mut self) -> Result<String, String>;
    /// `dpkg --compare-versions VERSION gt THAN`.
    fn is_newer(&mut self, version: &str, than: &str) -> bool;
    /// `dpkg-deb -f DEB Package Version Architecture`.
    fn deb_fields(&mut self, deb: &Path) -> Result<DebFields, String>;
    /// Rebuilds the installed package's .deb into `dir` (`dpkg-repack`), if that tool is there.
    fn repack(&mut self, package: &str, dir: &Path) -> Result<PathBuf, String>;
    /// Starts `dpkg -i` on `deb`.
    fn start_install(&mut self, deb: &Path) -> Result<Self::Install, String>;
    /// `Some` once the dpkg run has ended: `Err` with its exit status and last lines.
    fn poll_install(&mut self, install: &mut Self::Install) -> Option<Result<(), String>>;
    fn probe(&mut self) -> Probe;
    fn hold_service(&mut self);
    fn release_service(&mut self);
}

/// Root's folder: see the module docs.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the folder and its subfolders when missing.
    pub fn create(root: &Path) -> std::io::Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)?;
        for sub in ["current", "work"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))?;
        }
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    #[must_use]
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    #[must_use]
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// One agent at a time (the path unit never starts two, but a person might).
    pub fn lock(&self) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno.into())
    }

    fn pending(&self) -> Option<Pending> {
        let bytes = std::fs::read(self.root.join(PENDING_FILE)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(pending) => Some(pending),
            Err(error) => {
                tracing::warn!(message = "Unreadable update marker ignored.", %error);
                None
            }
        }
    }

    /// Empties `work/`, except what an unfinished attempt still needs.
    fn clear_work(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(self.work())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The version floor kept from earlier manifests (`None`: none verified yet). An unreadable
    /// one is an error: without it, a replay could not be told from an update.
    fn floor(&self) -> Result<Option<String>, String> {
        let path = self.root.join(FLOOR_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|f| !f.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read the version floor {}: {e}",
                path.display()
            )),
        }
    }

    fn raise_floor(&self, floor: &str) -> std::io::Result<()> {
        report::write_text(&self.root, FLOOR_FILE, &format!("{floor}\n"))
    }

    fn persist(&self, pending: &Pending) -> std::io::Result<()> {
        report::write_json(&self.root, PENDING_FILE, pending)
    }

    fn finish(&self, report: &UpdateReport) -> std::io::Result<()> {
        report::write_json(&self.root, REPORT_FILE, report)?;
        match std::fs::remove_file(self.root.join(PENDING_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Makes `deb` (and its `.sig` beside it, if any) the only package in `current/`.
    fn keep(&self, deb: &Path) -> std::io::Result<PathBuf> {
        let current = self.current();
        let name = deb
            .file_name()
            .ok_or_else(|| std::io::Error::other("no file name"))?;
        let target = current.join(name);
        if deb != target {
            let partial = current.join(".incoming.partial");
            std::fs::copy(deb, &partial)?;
            std::fs::File::open(&partial)?.sync_all()?;
            std::fs::rename(&partial, &target)?;
        }
        let sig = sig_path(deb);
        let target_sig = sig_path(&target);
        if sig.exists() && sig != target_sig {
            std::fs::copy(&sig, &target_sig)?;
        }
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            if path != target && path != target_sig {
                std::fs::remove_file(&path)?;
            }
        }
        std::fs::File::open(&current)?.sync_all()?;
        Ok(target)
    }
}

/// The version floor's file name in the state folder.
pub const FLOOR_FILE: &str = "floor";

fn sig_path(deb: &Path) -> PathBuf {
    let mut name = deb.as_os_str().to_owned();
    name.push(SIG_SUFFIX);
    PathBuf::from(name)
}

/// Finishes an interrupted attempt, then applies every artifact in the spool, in name order.
/// Returns the reports written, one per attempt.
pub fn apply<H: Host>(settings: &Settings, host: &mut H) -> anyhow::Result<Vec<UpdateReport>> {
    let state = StateDir::create(&settings.state_dir)
        .with_context(|| format!("cannot create {}", settings.state_dir.display()))?;
    let _lock = state
        .lock()
        .with_context(|| format!("cannot lock {}", settings.state_dir.display()))?;
    let mut reports = Vec::new();
    if let Some(pending) = state.pending() {
        tracing::warn!(message = "Finishing an interrupted update.", file = %pending.file,
            from = %pending.from_version, to = %pending.to_version);
        let installed = host.installed_version(&settings.package);
        let mut agent = Agent::resume(settings.agent, host.now(), pending, installed);
        reports.push(drive(&mut agent, host, &state, settings));
    }
    let spool = match Spool::open(&settings.spool) {
        Ok(Some(spool)) => spool,
        Ok(None) => return Ok(reports),
        Err(refused) => {
            // A spool that cannot be opened safely (a link where a folder should be) is a
            // refusal like any other: reported, and moved aside when the daemon made it, so
            // the path unit does not start the agent again and again.
            let mut agent = Agent::new(settings.agent, crate::io::wall_clock::unix_ms());
            let reason = match refused.quarantined {
                Some(aside) => format!("{}; moved aside to {}", refused.reason, aside.display()),
                None => refused.reason,
            };
            agent.handle_verified(
                host.now(),
                Err(Refusal {
                    file: settings.spool.display().to_string(),
                    from_version: host.installed_version(&settings.package),
                    to_version: None,
                    reason,
                }),
            );
            reports.push(drive(&mut agent, host, &state, settings));
            return Ok(reports);
        }
    };
    for sig in spool.signatures()? {
        state.clear_work().context("cannot empty work/")?;
        let now_unix_ms = crate::io::wall_clock::unix_ms();
        let mut agent = Agent::new(settings.agent, now_unix_ms);
        let taken = spool.take(
            &sig,
            &state.work(),
            outpost_core::update::MAX_ARTIFACT_BYTES,
        );
        let file = sig.strip_suffix(SIG_SUFFIX).unwrap_or(&sig).to_owned();
        tracing::info!(message = "Update artifact taken from the spool.", %file);
        let verified = match (taken, &settings.unusable_config) {
            (Ok(taken), None) => plan(settings, host, &state, taken, now_unix_ms),
            (Ok(_), Some(why)) => Err(Refusal {
                file,
                from_version: host.installed_version(&settings.package),
                to_version: None,
                reason: format!(
                    "the gateway's configuration cannot be used ({why}): fix it (outpost check), \
                     then upload the update again"
                ),
            }),
            (Err(reason), _) => Err(Refusal {
                file,
                from_version: None,
                to_version: None,
                reason,
            }),
        };
        agent.handle_verified(host.now(), verified);
        reports.push(drive(&mut agent, host, &state, settings));
    }
    Ok(reports)
}

/// Checks a taken artifact every way it can be checked without installing it (at wall-clock
/// time `now_unix_ms`, for the manifest's expiry), keeps its version floor, and finds the
/// package to roll back to.
fn plan<H: Host>(
    settings: &Settings,
    host: &mut H,
    state: &StateDir,
    taken: Taken,
    now_unix_ms: i64,
) -> Result<Plan, Refusal> {
    let mut refusal = Refusal {
        file: taken.file.clone(),
        from_version: host.installed_version(&settings.package),
        to_version: None,
        reason: String::new(),
    };
    let refuse = |mut refusal: Refusal, reason: String| {
        refusal.reason = reason;
        Err(refusal)
    };
    let signed = match SignedManifest::parse(&taken.manifest) {
        Ok(signed) => signed,
        Err(e) => return refuse(refusal, format!("the manifest {}.sig: {e}", taken.file)),
    };
    refusal.to_version = Some(signed.manifest().artifact.version.clone());
    let trusted = match std::fs::read_to_string(&settings.pubkeys)
        .map_err(|e| e.to_string())
        .and_then(|text| PublicKey::parse_all(&text).map_err(|e| e.to_string()))
    {
        Ok(keys) => keys,
        Err(e) => {
            let keys = settings.pubkeys.display();
            return refuse(refusal, format!("cannot read the trusted keys {keys}: {e}"));
        }
    };
    let manifest = match signed.verify(&trusted, Role::GatewayUpdate, &taken.found, now_unix_ms) {
        Ok(manifest) => manifest,
        Err(e) => return refuse(refusal, format!("not trusted: {e}")),
    };
    let a = &manifest.artifact;
    if a.package != settings.package {
        let reason = format!(
            "the artifact is package {}, not {}",
            a.package, settings.package
        );
        return refuse(refusal, reason);
    }
    if let Err(reason) = hold_to_floor(host, state, &a.version, &manifest.validity.floor) {
        return refuse(refusal, reason);
    }
    // Signed, so the signer vouches for the control fields too; a mismatch is a signing
    // mistake that dpkg would act on, not the manifest.
    match host.deb_fields(&taken.copy) {
        Ok(fields)
            if fields.package == a.package
                && fields.version == a.version
                && fields.architecture == a.architecture => {}
        Ok(fields) => {
            let reason = format!(
                "the package's control fields ({} {} {}) differ from its manifest's ({} {} {})",
                fields.package,
                fields.version,
                fields.architecture,
                a.package,
                a.version,
                a.architecture
            );
            return refuse(refusal, reason);
        }
        Err(e) => return refuse(refusal, format!("not a readable package: {e}")),
    }
    match host.architecture() {
        Ok(arch) if arch == a.architecture || a.architecture == "all" => {}
        Ok(arch) => {
            let reason = format!(
                "the package is for {}, this gateway is {arch}",
                a.architecture
            );
            return refuse(refusal, reason);
        }
        Err(e) => {
            return refuse(
                refusal,
                format!("cannot tell this gateway's architecture: {e}"),
            );
        }
    }
    let Some(installed) = refusal.from_version.clone() else {
        let reason = format!("{} is not installed (or not configured)", settings.package);
        return refuse(refusal, reason);
    };
    if !host.is_newer(&a.version, &installed) {
        let reason = format!(
            "version {} is not newer than the installed {installed}",
            a.version
        );
        return refuse(refusal, reason);
    }
    let previous = match previous_package(settings, host, state, &installed) {
        Ok(previous) => previous,
        Err(reason) => return refuse(refusal, reason),
    };
    if let Err(reason) = raise_floor(host, state, &manifest.validity.floor) {
        return refuse(refusal, reason);
    }
    // The manifest goes beside the copy, for `current/` once confirmed.
    let sig = sig_path(&taken.copy);
    if let Err(e) = std::fs::write(&sig, &taken.manifest) {
        return refuse(refusal, format!("cannot write {}: {e}", sig.display()));
    }
    Ok(Plan {
        file: taken.file,
        artifact: taken.copy,
        from_version: installed,
        to_version: a.version.clone(),
        previous,
    })
}

/// Anti-rollback: a version below the floor kept from earlier manifests is refused, even when it
/// is newer than the installed one (a superseded 1.2 replayed to a unit still on 1.1 after 1.3
/// was planned there); a manifest's own floor must not be above its version. Raising the kept
/// floor is [`raise_floor`]'s, once every check passed.
fn hold_to_floor<H: Host>(
    host: &mut H,
    state: &StateDir,
    version: &str,
    floor: &str,
) -> Result<(), String> {
    if host.is_newer(floor, version) {
        return Err(format!(
            "the manifest's floor {floor} is above its own version {version} (a signing mistake)"
        ));
    }
    let kept = state.floor()?;
    if let Some(kept) = &kept {
        if host.is_newer(kept, version) {
            return Err(format!(
                "version {version} is below the version floor {kept} set by an earlier \
                 update: a superseded package is not installed again"
            ));
        }
    }
    Ok(())
}

/// Raises the kept floor to a planned manifest's `floor` (never lowers it). Done once every
/// check passed, right before the install: an artifact refused for this unit's own reasons (no
/// package to roll back to) leaves the floor where it was.
fn raise_floor<H: Host>(host: &mut H, state: &StateDir, floor: &str) -> Result<(), String> {
    let kept = state.floor()?;
    if kept
        .as_deref()
        .is_none_or(|kept| host.is_newer(floor, kept))
    {
        tracing::info!(message = "Version floor raised.", from = ?kept, to = floor);
        state
            .raise_floor(floor)
            .map_err(|e| format!("cannot keep the version floor {floor}: {e}"))?;
    }
    Ok(())
}

/// The installed version's .deb, in `current/`: already there (kept by the last update, or by
/// `outpost-update keep`), or from apt's cache, or rebuilt by dpkg-repack.
fn previous_package<H: Host>(
    settings: &Settings,
    host: &mut H,
    state: &StateDir,
    installed: &str,
) -> Result<PathBuf, String> {
    let is_installed = |host: &mut H, deb: &Path| {
        host.deb_fields(deb)
            .is_ok_and(|f| f.package == settings.package && f.version == installed)
    };
    let current = std::fs::read_dir(state.current())
        .map_err(|e| format!("cannot read {}: {e}", state.current().display()))?;
    for entry in current.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") && is_installed(host, &path) {
            return Ok(path);
        }
    }
    let arch = host.architecture().unwrap_or_default();
    // apt's cache names an epoch's ':' as "%3a".
    let cached = PathBuf::from(format!(
        "/var/cache/apt/archives/{}_{}_{arch}.deb",
        settings.package,
        installed.replace(':', "%3a")
    ));
    if cached.is_file() && is_installed(host, &cached) {
        return state
            .keep(&cached)
            .map_err(|e| format!("cannot keep {}: {e}", cached.display()));
    }
    let repacked = host.repack(&settings.package, &state.work());
    match repacked {
        Ok(deb) if is_installed(host, &deb) => state
            .keep(&deb)
            .map_err(|e| format!("cannot keep {}: {e}", deb.display())),
        Ok(deb) => Err(format!(
            "dpkg-repack made {}, which is not {} {installed}",
            deb.display(),
            settings.package
        )),
        Err(why) => Err(format!(
            "no package of the installed version {installed} to roll back to: none in {}, none \
             in apt's cache, and {why}; give it with `outpost-update keep FILE.deb`",
            state.current().display()
        )),
    }
}

/// Pumps `agent` until its report is written. See the module docs.
///
/// # Panics
///
/// If the agent waits for nothing while no dpkg runs: it always has a timer or an action
/// pending until it reports, so this is a bug in the agent.
pub fn drive<H: Host>(
    agent: &mut Agent,
    host: &mut H,
    state: &StateDir,
    settings: &Settings,
) -> UpdateReport {
    /// How often a running dpkg is looked at.
    const DPKG_POLL: Duration = Duration::from_millis(100);
    let mut running: Option<H::Install> = None;
    loop {
        while let Some(action) = agent.poll_action() {
            tracing::debug!(message = "Update action.", ?action);
            match action {
                Action::Probe => {
                    let probe = host.probe();
                    tracing::debug!(message = "Probe.", ?probe);
                    agent.handle_probe(host.now(), probe);
                }
                Action::Persist(pending) => {
                    if let Err(error) = state.persist(&pending) {
                        // The attempt goes on; only its recovery after a power cut is lost.
                        tracing::error!(message = "Cannot write the update marker.", %error);
                    }
                }
                Action::Install { artifact } | Action::Reinstall { artifact } => {
                    tracing::info!(message = "dpkg -i.", deb = %artifact.display());
                    match host.start_install(&artifact) {
                        Ok(install) => running = Some(install),
                        Err(why) => {
                            let installed_version = host.installed_version(&settings.package);
                            let exit = InstallExit {
                                result: Err(why),
                                installed_version,
                            };
                            agent.handle_install_exit(host.now(), exit);
                        }
                    }
                }
                Action::HoldService => {
                    tracing::warn!(
                        message = "Deadline passed with dpkg running: holding the service."
                    );
                    host.hold_service();
                }
                Action::ReleaseService => host.release_service(),
                Action::Keep { artifact } => {
                    if let Err(error) = state.keep(&artifact) {
                        tracing::error!(message = "Cannot keep the confirmed package for rollback.",
                            deb = %artifact.display(), %error);
                    }
                }
                Action::Report(report) => {
                    if let Err(error) = state.finish(&report) {
                        tracing::error!(message = "Cannot write the update report.", %error);
                    }
                    if report.outcome.is_alert() {
                        tracing::warn!(message = "Update finished.", summary = %report.summary());
                    } else {
                        tracing::info!(message = "Update finished.", summary = %report.summary());
                    }
                    return report;
                }
            }
        }
        if let Some(install) = &mut running {
            if let Some(result) = host.poll_install(install) {
                running = None;
                let installed_version = host.installed_version(&settings.package);
                tracing::info!(message = "dpkg done.", ?result, ?installed_version);
                let exit = InstallExit {
                    result,
                    installed_version,
                };
                agent.handle_install_exit(host.now(), exit);
                continue;
            }
        }
        let now = host.now();
        match (agent.poll_timeout(), running.is_some()) {
            (Some(at), _) if at <= now => agent.handle_timeout(now),
            (Some(at), dpkg) => {
                let until = Duration::from_millis(at.saturating_since(now));
                host.sleep(if dpkg { until.min(DPKG_POLL) } else { until });
            }
            (None, true) => host.sleep(DPKG_POLL),
            (None, false) => panic!("the update agent waits for nothing: {:?}", agent.phase()),
        }
    }
}

/// `outpost-update keep DEB`: makes `deb` the package to roll back to. It must be the installed
/// version of the package (root vouches for it: no signature needed).
pub fn keep<H: Host>(settings: &Settings, host: &mut H, deb: &Path) -> anyhow::Result<PathBuf> {
    let state = StateDir::create(&settings.state_dir)?;
    let _lock = state.lock()?;
    let fields = host.deb_fields(deb).map_err(anyhow::Error::msg)?;
    let installed = host
        .installed_version(&settings.package)
        .with_context(|| format!("{} is not installed", settings.package))?;
    anyhow::ensure!(
        fields.package == settings.package && fields.version == installed,
        "{} is {} {}, but {} {installed} is installed",
        deb.display(),
        fields.package,
        fields.version,
        settings.package
    );
    state.keep(deb).context("cannot copy it into current/")
}

#[cfg(test)]
mod tests;
