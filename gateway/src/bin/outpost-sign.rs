//! `outpost-sign`: makes role-bound Ed25519 keys, signs artifacts (a gateway .deb, a node
//! firmware image) with a manifest `ARTIFACT.sig`, and verifies them. Runs on the build or
//! release machine, never on a gateway (which holds public keys only). The formats are in
//! `outpost_core::update::signing`; the guide is docs/self-update.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use outpost::io::signing_files::{hash_file, keygen, private_key, public_keys, sig_path};
use outpost_core::update::signing::{Artifact, Role, SignedManifest, Validity};
use rand::TryRngCore as _;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-sign",
    version,
    about = "Sign and verify Outpost artifacts"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make a key pair for one role: DIR/ROLE.key (secret, mode 0600) and DIR/ROLE.pub.
    Keygen {
        /// gateway-update (the gateway's own .deb), firmware (node images), manufacturer (node
        /// manifests), operator (remote commands) or node-link (a gateway's own; it makes one
        /// itself on first start).
        #[arg(long)]
        role: Role,
        /// The folder to write the two files into (made if missing; existing keys are never
        /// overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign ARTIFACT: writes ARTIFACT.sig, the manifest, in the key's role.
    Sign {
        /// The private key file (mode 0600 or stricter).
        #[arg(long)]
        key: PathBuf,
        /// The package name [default for a .deb: its Package field].
        #[arg(long)]
        package: Option<String>,
        /// The version [default for a .deb: its Version field].
        #[arg(long = "artifact-version")]
        version: Option<String>,
        /// The architecture or board [default for a .deb: its Architecture field].
        #[arg(long)]
        arch: Option<String>,
        /// The lowest version a gateway accepts once it verified this manifest (anti-rollback;
        /// at most the artifact's version) [default: the artifact's version].
        #[arg(long)]
        floor: Option<String>,
        /// How long the manifest is valid from now (30 days when neither this nor --expires is
        /// given): an artifact delivered after that is refused.
        #[arg(long, value_parser = duration, conflicts_with = "expires")]
        valid_for: Option<std::time::Duration>,
        /// When the manifest expires, as RFC 3339 (`2027-01-31T00:00:00Z`) or Unix seconds.
        #[arg(long, value_parser = expiry)]
        expires: Option<u64>,
        artifact: PathBuf,
    },
    /// Sign a remote command for one gateway (docs/commands.md): prints the message to publish,
    /// QoS 1, on `outpost/GATEWAY/cmd/VERB`. Needs an `operator` key.
    Command {
        /// The operator's private key file (mode 0600 or stricter).
        #[arg(long)]
        key: PathBuf,
        /// The gateway it is for (its `gateway.id`).
        #[arg(long)]
        gateway: String,
        /// Names the result topic `outpost/GATEWAY/cmd/result/REQUEST` [default: random].
        #[arg(long)]
        request: Option<String>,
        /// How long the command may wait to be run (the gateway refuses one valid for longer
        /// than its `commands.max_lifetime`, 1 hour unless set).
        #[arg(long, value_parser = duration, default_value = "5m")]
        valid_for: std::time::Duration,
        /// Where the command goes [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
        /// The verb, e.g. `enroll-window`.
        verb: String,
        /// The verb's arguments, `NAME=VALUE`, e.g. `minutes=10`.
        args: Vec<String>,
    },
    /// Sign a node manifest for the `allowlist` enrollment policy (a manufacturing line's list of
    /// the nodes it made): LIST holds one node per line, `UID HW_REV LOT PUBLIC_KEY` (16 and 64
    /// hex digits; `#` comments and blank lines skipped). Needs a `manufacturer` key.
    NodeManifest {
        /// The manufacturer's private key file (mode 0600 or stricter).
        #[arg(long)]
        key: PathBuf,
        /// Where the signed manifest goes.
        #[arg(long)]
        out: PathBuf,
        list: PathBuf,
    },
    /// Verify ARTIFACT against ARTIFACT.sig and trusted public keys; prints the manifest.
    Verify {
        /// A public key file (one key or several); may be given more than once.
        #[arg(long, required = true)]
        pubkey: Vec<PathBuf>,
        /// The role the artifact must be signed for.
        #[arg(long)]
        role: Role,
        /// The manifest [default: ARTIFACT.sig].
        #[arg(long)]
        sig: Option<PathBuf>,
        artifact: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Keygen { role, out } => keygen(role, &out),
        Cmd::NodeManifest { key, out, list } => node_manifest(&key, &list, &out),
        Cmd::Command {
            key,
            gateway,
            request,
            valid_for,
            out,
            verb,
            args,
        } => command(
            &key,
            gateway,
            request,
            valid_for,
            out.as_deref(),
            &verb,
            &args,
        ),
        Cmd::Sign {
            key,
            package,
            version,
            arch,
            floor,
            valid_for,
            expires,
            artifact,
        } => {
            let now = now_unix_s();
            let expires_unix_s = expires.unwrap_or_else(|| {
                now + valid_for.map_or(Validity::DEFAULT_VALID_FOR_S, |d| d.as_secs())
            });
            sign(
                &key,
                [package, version, arch],
                floor,
                expires_unix_s,
                &artifact,
            )
        }
        Cmd::Verify {
            pubkey,
            role,
            sig,
            artifact,
        } => verify(&pubkey, role, sig, &artifact),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outpost-sign: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn expiry(text: &str) -> Result<u64, String> {
    if let Ok(unix_s) = text.parse::<u64>() {
        return Ok(unix_s);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e} (give RFC 3339, e.g. 2027-01-31T00:00:00Z, or Unix seconds)"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "before 1970".into())
}

fn now_unix_ms() -> i64 {
    outpost::io::wall_clock::unix_ms()
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn command(
    key_path: &Path,
    gateway: String,
    request: Option<String>,
    valid_for: std::time::Duration,
    out: Option<&Path>,
    verb: &str,
    args: &[String],
) -> anyhow::Result<()> {
    use outpost_core::command::{Command, Verb, sign};
    let key = private_key(key_path)?;
    let args = args
        .iter()
        .map(|arg| {
            arg.split_once('=')
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .with_context(|| format!("argument `{arg}` is not NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let verb = Verb::parse(verb, &args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut random = [0u8; 24];
    rand::rngs::OsRng
        .try_fill_bytes(&mut random)
        .context("cannot read the system's random source")?;
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&random[..16]);
    let issued = i64::try_from(now_unix_s()).context("the clock is past 2262")?;
    let command = Command {
        gateway,
        request: request
            .unwrap_or_else(|| format!("r-{}", outpost_core::hex::encode(&random[16..]))),
        nonce,
        issued,
        expires: issued.saturating_add(i64::try_from(valid_for.as_secs().max(1))?),
        verb,
    };
    let text = sign(&key, &command).map_err(|e| anyhow::anyhow!("{e}"))?;
    match out {
        Some(out) => {
            std::fs::write(out, &text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "{} for {} (request {}) into {}: publish it on outpost/{}/cmd/{}",
                command.verb.name(),
                command.gateway,
                command.request,
                out.display(),
                command.gateway,
                command.verb.name()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Signs the node list in `list` into a manifest at `out`.
fn node_manifest(key_path: &Path, list: &Path, out: &Path) -> anyhow::Result<()> {
    use outpost_core::enrollment::{Listed, sign};
    let key = private_key(key_path)?;
    let text =
        std::fs::read_to_string(list).with_context(|| format!("cannot read {}", list.display()))?;
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", list.display(), i + 1);
        let [uid, hw_rev, lot, public_key] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            bail!("{}: expected `UID HW_REV LOT PUBLIC_KEY`", at());
        };
        nodes.push(Listed {
            uid: outpost_core::hex::decode::<8>(&uid.to_ascii_lowercase())
                .with_context(|| format!("{}: the uid is not 16 hex digits", at()))?,
            hw_rev: hw_rev
                .parse()
                .with_context(|| format!("{}: HW_REV is not 0 to 255", at()))?,
            lot: lot.to_owned(),
            public_key: outpost_core::hex::decode::<32>(&public_key.to_ascii_lowercase())
                .with_context(|| format!("{}: the public key is not 64 hex digits", at()))?,
        });
    }
    let manifest = sign(&key, &nodes).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(out, manifest).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{} nodes signed by {} into {}",
        nodes.len(),
        key.public().id(),
        out.display()
    );
    Ok(())
}

/// Signs `artifact`; `[package, version, arch]` default to a .deb's control fields.
fn sign(
    key_path: &Path,
    [package, version, arch]: [Option<String>; 3],
    floor: Option<String>,
    expires_unix_s: u64,
    artifact: &Path,
) -> anyhow::Result<()> {
    let key = private_key(key_path)?;
    let found = hash_file(artifact)?;
    let is_deb = found.file.ends_with(".deb");
    let control = if is_deb && (package.is_none() || version.is_none() || arch.is_none()) {
        Some(deb_fields(artifact)?)
    } else {
        None
    };
    let pick = |given: Option<String>, index: usize, what: &str| match (given, &control) {
        (Some(v), _) => Ok(v),
        (None, Some(fields)) => Ok(fields[index].clone()),
        (None, None) => bail!("--{what} is needed for an artifact that is not a .deb"),
    };
    let artifact_facts = Artifact {
        file: found.file.clone(),
        size: found.size,
        sha256: found.sha256,
        package: pick(package, 0, "package")?,
        version: pick(version, 1, "artifact-version")?,
        architecture: pick(arch, 2, "arch")?,
    };
    artifact_facts.check()?;
    ensure!(
        expires_unix_s > now_unix_s(),
        "the manifest would already have expired ({expires_unix_s} Unix seconds)"
    );
    let validity = Validity {
        floor: floor.unwrap_or_else(|| artifact_facts.version.clone()),
        expires_unix_s,
    };
    validity.check()?;
    let signed = key.sign(artifact_facts, validity);
    let sig = sig_path(artifact);
    std::fs::write(&sig, signed.emit())
        .with_context(|| format!("cannot write {}", sig.display()))?;
    let m = signed.manifest();
    println!(
        "{}: {} {} {} signed for {} by key {}, floor {}, expires {}",
        sig.display(),
        m.artifact.package,
        m.artifact.version,
        m.artifact.architecture,
        m.role,
        m.key,
        m.validity.floor,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.validity.expires_unix_s)
        ),
    );
    Ok(())
}

fn verify(
    pubkeys: &[PathBuf],
    role: Role,
    sig: Option<PathBuf>,
    artifact: &Path,
) -> anyhow::Result<()> {
    let trusted = public_keys(pubkeys)?;
    let sig = sig.unwrap_or_else(|| sig_path(artifact));
    let bytes = std::fs::read(&sig).with_context(|| format!("cannot read {}", sig.display()))?;
    let signed = SignedManifest::parse(&bytes).with_context(|| format!("{}", sig.display()))?;
    let found = hash_file(artifact)?;
    let manifest = signed
        .verify(&trusted, role, &found, now_unix_ms())
        .with_context(|| format!("{} is not trusted", artifact.display()))?;
    print!("{}", manifest.signed_bytes());
    println!("verified: signed for {role} by key {}", manifest.key);
    Ok(())
}

/// A .deb's Package, Version and Architecture, from `dpkg-deb -f`.
fn deb_fields(deb: &Path) -> anyhow::Result<[String; 3]> {
    let output = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .args(["Package", "Version", "Architecture"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run dpkg-deb (give --package, --artifact-version and --arch instead)")?;
    ensure!(
        output.status.success(),
        "dpkg-deb -f {}: {}",
        deb.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .map(str::to_owned)
            .with_context(|| format!("{} has no {name} field", deb.display()))
    };
    Ok([field("Package")?, field("Version")?, field("Architecture")?])
}
