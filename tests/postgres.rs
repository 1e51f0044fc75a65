//! A private PostgreSQL cluster for the cloud ingest's tests: `initdb` into a temporary folder,
//! the server on a free loopback port (its socket in that folder too), stopped by PID on drop.
//! Debian's `postgresql` package (scripts/test.sh installs it) puts the binaries in
//! /usr/lib/postgresql/<version>/bin, off PATH. PostgreSQL refuses to run as root, so as root the
//! cluster belongs to the package's `postgres` user.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};

use crate::broker::Pki;
use crate::{Proc, free_port, run_ok, wait_for};

/// A running cluster; dropped, it is shut down (SIGINT, PostgreSQL's fast shutdown) by PID.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
    /// The role clients connect as over TCP.
    user: &'static str,
}

/// The role a TLS cluster's clients log in as, by a client certificate with this CN.
pub const TLS_CLIENT_ROLE: &str = "ingest";

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .finish()
    }
}

/// The folder of the newest installed PostgreSQL's binaries.
pub fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql): run scripts/test.sh, which installs it")?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin: run scripts/test.sh")
}

impl Postgres {
    /// A new cluster with the database `outpost`, server settings `settings` (`name=value`) on
    /// top of the defaults; TCP clients log in as `postgres` without a password.
    pub fn start(settings: &[&str]) -> Result<Postgres> {
        Postgres::start_with(settings, None)
    }

    /// A cluster that takes TCP clients over TLS only: its certificate is `pki`'s server
    /// certificate (127.0.0.1, localhost), and a client logs in by a certificate of `pki` whose
    /// CN is its role (`cert` in pg_hba.conf; [`TLS_CLIENT_ROLE`] owns `outpost`). A plain TCP
    /// connection is rejected.
    pub fn start_with_tls(settings: &[&str], pki: &Pki) -> Result<Postgres> {
        Postgres::start_with(settings, Some(pki))
    }

    fn start_with(settings: &[&str], tls: Option<&Pki>) -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("outpost-pg-").tempdir()?;
        // The server's user must reach its folder.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        let owner = server_user()?;
        fs::create_dir(&data)?;
        if let Some(user) = &owner {
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
            nix::unistd::chown(&data, Some(user.uid), Some(user.gid))?;
        }
        let as_owner = |cmd: &mut Command| {
            if let Some(user) = &owner {
                cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        as_owner(&mut initdb);
        run_ok(&mut initdb).context("initdb")?;
        let mut tls_settings = Vec::new();
        if let Some(pki) = tls {
            let (cert, key) = pki.server_paths();
            let owned = |name: &str, from: &Path, mode: u32| -> Result<()> {
                let to = data.join(name);
                fs::copy(from, &to)?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
                if let Some(user) = &owner {
                    nix::unistd::chown(&to, Some(user.uid), Some(user.gid))?;
                }
                Ok(())
            };
            owned("server.crt", &cert, 0o644)?;
            owned("server.key", &key, 0o600)?;
            owned("root.crt", &pki.ca_path(), 0o644)?;
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 cert\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )?;
            tls_settings = vec![
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
                "ssl_ca_file=root.crt",
            ];
        }
        let port = free_port();
        let log = fs::File::create(dir.path().join("postgres.log"))?;
        if let Some(user) = &owner {
            nix::unistd::chown(
                &dir.path().join("postgres.log"),
                Some(user.uid),
                Some(user.gid),
            )?;
        }
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for setting in tls_settings.iter().chain(settings) {
            server.args(["-c", setting]);
        }
        server.stdout(log.try_clone()?).stderr(log);
        as_owner(&mut server);
        let mut proc = Proc::spawn("postgres", &mut server)?;
        let psql = bin.join("psql");
        let ready = wait_for(
            Duration::from_secs(30),
            "PostgreSQL to accept connections",
            || {
                if proc.try_wait().is_some() {
                    return Some(false);
                }
                Command::new(&psql)
                    .arg("-h")
                    .arg(dir.path())
                    .args(["-p", &port.to_string(), "-U", "postgres", "-c", "SELECT 1"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| true)
            },
        );
        let log_text = || fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
        match ready {
            Ok(true) => {}
            Ok(false) => bail!("postgres exited on start:\n{}", log_text()),
            Err(e) => return Err(e.context(log_text())),
        }
        let mut pg = Postgres {
            dir,
            port,
            proc: Some(proc),
            user: "postgres",
        };
        if tls.is_some() {
            pg.user = TLS_CLIENT_ROLE;
            pg.psql("postgres", &format!("CREATE ROLE {TLS_CLIENT_ROLE} LOGIN"))?;
            pg.psql(
                "postgres",
                &format!("CREATE DATABASE outpost OWNER {TLS_CLIENT_ROLE}"),
            )?;
        } else {
            pg.psql("postgres", "CREATE DATABASE outpost")?;
        }
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP connection string for the `outpost` database (tokio-postgres' and libpq's
    /// syntax); a TLS cluster's needs the client's TLS settings besides.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname=outpost",
            self.port, self.user
        )
    }

    /// Runs SQL with psql on `database` as the superuser, over the cluster's Unix socket; its
    /// output, unaligned, tuples only, `|`-separated.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = run_ok(
            Command::new(bin_dir()?.join("psql"))
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-X",
                    "-A",
                    "-t",
                    "-c",
                    sql,
                ]),
        )
        .with_context(|| format!("psql: {sql}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// CPU seconds the server has used so far: the postmaster, the backends that ended (its
    /// children's time) and the ones still running.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(proc) = &self.proc else {
            return 0.0;
        };
        let postmaster = proc.pid().as_raw();
        let mut total = crate::cpu_seconds_with_children(postmaster);
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
            let ppid = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                total += crate::cpu_seconds(pid);
            }
        }
        total
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = kill(proc.pid(), Signal::SIGINT);
            let _ = wait_for(Duration::from_secs(20), "postgres to stop", || {
                proc.try_wait().map(|_| ())
            });
        }
    }
}

/// The user the server runs as: `postgres` when this process is root, else this user.
fn server_user() -> Result<Option<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    nix::unistd::User::from_name("postgres")?
        .context("running as root, PostgreSQL needs the `postgres` user (Debian's postgresql package makes it)")
        .map(Some)
}
