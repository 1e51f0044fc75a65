//! `outpost check --self-test`: can this machine run the gateway? Tried, not assumed.
//!
//! Each check exercises the code path the daemon uses, in a temporary directory, with no network
//! and no hardware, in well under a second (also under qemu-user, where the arm64 package's
//! binary is tested):
//!
//! | check    | what it does |
//! |----------|--------------|
//! | `store`  | opens a store ([`Store::open`]: SQLite, WAL, migrations), commits readings, reads them back with a [`Reader`], seals them into a batch and decodes it |
//! | `zstd`   | seals a batch of typical telemetry with `outpost-batch` (zstd) and decodes it reading by reading |
//! | `tls`    | a mutually authenticated TLS handshake, in memory, between the uplink's own client config ([`client_config`]: rustls with ring) and a rustls server, with certificates made on the spot (rcgen) |
//! | `serial` | opens a pseudo-terminal as a serial port with tokio-serial, as a port task does, and passes bytes both ways |
//!
//! A check that needs what the kernel under it does not implement (ENOSYS) is `SKIPPED`, not
//! `FAILED`: qemu-user 7.2 (Debian 12) lacks the `TCGETS2` ioctl serialport sets baud rates
//! with, which every Linux kernel the gateway runs on has.
//!
//! Never enumerates serial ports: without udev, serialport's enumeration reads /sys and panics
//! where it is missing (a bare chroot).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use outpost_batch::{BatchBuilder, Dictionaries, GatewayId, Value};

use crate::io::store::{Reader, SeriesReading, Store};
use crate::io::uplink::link::client_config;

/// The longest any one step may wait for bytes.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// A check needs what this kernel (or the emulator under the binary) does not implement:
/// nothing the gateway's own machine lacks, so the check is skipped rather than failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(String);

/// One check's outcome.
#[derive(Debug)]
pub struct CheckOutcome {
    pub name: &'static str,
    /// What was done, or why it failed (an [`Unsupported`] error: why it was skipped).
    pub result: anyhow::Result<String>,
    pub took: Duration,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Skipped,
    Failed,
}

impl CheckOutcome {
    #[must_use]
    pub fn verdict(&self) -> Verdict {
        match &self.result {
            Ok(_) => Verdict::Ok,
            Err(e) if e.is::<Unsupported>() => Verdict::Skipped,
            Err(_) => Verdict::Failed,
        }
    }

    /// Not failed: done, or skipped for want of kernel support.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.verdict() != Verdict::Failed
    }
}

impl std::fmt::Display for CheckOutcome {
    /// One line: `store   OK      …  (12 ms)`, `serial  FAILED  …` or `serial  SKIPPED …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verdict, detail) = match (&self.result, self.verdict()) {
            (Ok(detail), _) => ("OK", detail.clone()),
            (Err(error), Verdict::Skipped) => ("SKIPPED", format!("{error:#}")),
            (Err(error), _) => ("FAILED", format!("{error:#}")),
        };
        write!(
            f,
            "{:<7} {verdict:<7} {detail} ({} ms)",
            self.name,
            self.took.as_millis()
        )
    }
}

/// Runs every check, in order; each in its own temporary directory.
pub async fn run() -> Vec<CheckOutcome> {
    let mut outcomes = Vec::new();
    outcomes.push(timed("store", || in_temp_dir(check_store)));
    outcomes.push(timed("zstd", check_zstd));
    outcomes.push(timed("tls", || in_temp_dir(check_tls)));
    let start = Instant::now();
    let result = check_serial().await;
    outcomes.push(CheckOutcome {
        name: "serial",
        result,
        took: start.elapsed(),
    });
    outcomes
}

fn timed(name: &'static str, check: impl FnOnce() -> anyhow::Result<String>) -> CheckOutcome {
    let start = Instant::now();
    let result = check();
    CheckOutcome {
        name,
        result,
        took: start.elapsed(),
    }
}

fn in_temp_dir(check: impl FnOnce(&Path) -> anyhow::Result<String>) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("outpost-self-test-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    check(dir.path())
}

/// Readings as a meter gives them: a decimal and a float point, `n` polls one second apart.
fn meter_readings(n: usize) -> Vec<(i64, [SeriesReading; 2])> {
    (0..n)
        .map(|i| {
            let i = i as i64;
            (
                1_767_225_600_000 + i * 1000,
                [
                    SeriesReading {
                        channel: "voltage".into(),
                        value: Value::decimal(23_000 + (i * 7) % 40, -2),
                    },
                    SeriesReading {
                        channel: "power".into(),
                        value: Value::float(1500.0 + (i % 13) as f64 * 0.25),
                    },
                ],
            )
        })
        .collect()
}

fn check_store(dir: &Path) -> anyhow::Result<String> {
    const POLLS: usize = 50;
    let path = dir.join("outpost.db");
    let mut store = Store::open(&path).context("cannot open a new store")?;
    let polls = meter_readings(POLLS);
    let written = store
        .transaction(|tx| {
            let mut n = 0;
            for (ts_ms, readings) in &polls {
                n += tx.ingest_series("self-test", *ts_ms, readings)?;
            }
            Ok(n)
        })
        .context("cannot commit readings")?;
    ensure!(
        written == 2 * POLLS as u64,
        "stored {written} of {} readings",
        2 * POLLS
    );
    let reader = Reader::open(&path).context("cannot open a reader")?;
    let stored = reader
        .totals()
        .context("cannot read totals")?
        .readings_stored;
    ensure!(
        stored == written,
        "a reader sees {stored} of {written} readings"
    );
    let sealed = store
        .transaction(|tx| {
            tx.seal_batch("self-test", crate::io::wall_clock::unix_ms(), 10_000, None)
        })
        .context("cannot seal a batch")?
        .context("nothing to seal after a commit")?;
    ensure!(
        sealed.readings == written,
        "sealed {} of {written} readings",
        sealed.readings
    );
    let bytes = reader
        .batch_bytes(sealed.seq)
        .context("cannot read the sealed batch")?
        .context("the sealed batch is not in the outbox")?;
    let batch = outpost_batch::decode(&bytes, &Dictionaries::new())
        .context("the sealed batch does not decode")?;
    ensure!(
        batch.readings().count() as u64 == written,
        "the sealed batch holds {} of {written} readings",
        batch.readings().count()
    );
    Ok(format!(
        "{written} readings committed, read back and sealed into batch {} ({} bytes)",
        sealed.seq, sealed.size_bytes
    ))
}

fn check_zstd() -> anyhow::Result<String> {
    const POLLS: usize = 2000;
    let polls = meter_readings(POLLS);
    let mut builder = BatchBuilder::new(GatewayId::new("self-test")?, 1);
    for (ts_ms, readings) in &polls {
        for r in readings {
            builder.push("meter", &r.channel, *ts_ms, r.value)?;
        }
    }
    let bytes = builder.seal(None).context("cannot compress")?;
    let batch = outpost_batch::decode(&bytes, &Dictionaries::new()).context("cannot decompress")?;
    let header = batch.header();
    // Readings come back by channel name, each channel in push order.
    let mut expected: Vec<(&str, i64, Value)> = polls
        .iter()
        .flat_map(|(ts, rs)| rs.iter().map(|r| (r.channel.as_str(), *ts, r.value)))
        .collect();
    expected.sort_by_key(|&(channel, ts, _)| (channel, ts));
    let mut got: Vec<(&str, i64, Value)> = batch
        .readings()
        .map(|r| (r.channel, r.ts_ms, r.value))
        .collect();
    got.sort_by_key(|&(channel, ts, _)| (channel, ts));
    ensure!(
        got == expected,
        "decoded readings differ from the ones compressed"
    );
    Ok(format!(
        "{} readings: {} bytes raw, {} compressed, round trip exact",
        expected.len(),
        header.raw_body_len,
        header.body_len
    ))
}

/// Certificates for a CA, a server (`outpost-self-test.invalid`) and a client, as PEM files
/// in `dir`; returns the CA's, server's and client's (certificate, key) paths.
fn make_pki(dir: &Path) -> anyhow::Result<[std::path::PathBuf; 5]> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Outpost self-test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let paths = [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .map(|name| dir.join(name));
    std::fs::write(&paths[0], ca_cert.pem())?;
    for (name, usage, cert_path, key_path) in [
        (
            "outpost-self-test.invalid",
            ExtendedKeyUsagePurpose::ServerAuth,
            &paths[1],
            &paths[2],
        ),
        (
            "self-test",
            ExtendedKeyUsagePurpose::ClientAuth,
            &paths[3],
            &paths[4],
        ),
    ] {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(cert_path, cert.pem())?;
        std::fs::write(key_path, key.serialize_pem())?;
    }
    Ok(paths)
}

fn check_tls(dir: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read as _, Write as _};

    let [ca, server_cert, server_key, client_cert, client_key] =
        make_pki(dir).context("cannot make certificates")?;
    let client = client_config(&ca, &client_cert, &client_key)
        .context("the uplink's TLS client config refused the certificates")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca)?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&server_cert)?],
            PrivateKeyDer::from_pem_file(&server_key)?,
        )?;

    let name = ServerName::try_from("outpost-self-test.invalid")?;
    let mut client =
        rustls::Connection::from(rustls::ClientConnection::new(Arc::new(client), name)?);
    let mut server = rustls::Connection::from(rustls::ServerConnection::new(Arc::new(server))?);
    for _ in 0..8 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        transfer(&mut client, &mut server).context("handshake: server side")?;
        transfer(&mut server, &mut client).context("handshake: client side")?;
    }
    ensure!(
        !client.is_handshaking() && !server.is_handshaking(),
        "the handshake did not finish"
    );
    ensure!(
        server.peer_certificates().is_some_and(|c| !c.is_empty()),
        "the server saw no client certificate"
    );

    let message = b"outpost self-test";
    client.writer().write_all(message)?;
    transfer(&mut client, &mut server)?;
    let mut got = [0u8; 32];
    let n = server.reader().read(&mut got)?;
    ensure!(
        &got[..n] == message,
        "the server read other bytes than sent"
    );
    server.writer().write_all(message)?;
    transfer(&mut server, &mut client)?;
    let n = client.reader().read(&mut got)?;
    ensure!(
        &got[..n] == message,
        "the client read other bytes than sent"
    );

    let version = client
        .protocol_version()
        .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
    let suite = client
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
    Ok(format!(
        "mutual handshake and data both ways, {version} {suite} (ring)"
    ))
}

/// Moves everything `from` has to send into `to`.
fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) -> anyhow::Result<()> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire)?;
    }
    let mut rest = wire.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
        to.process_new_packets()?;
    }
    Ok(())
}

async fn check_serial() -> anyhow::Result<String> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_serial::SerialPortBuilderExt as _;

    const BAUD: u32 = 115_200;
    // The slave's name from the master (TIOCGPTN), not from /proc.
    let mut master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("cannot open a pseudo-terminal")?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let path = ptsname_r(&master).context("cannot name the pseudo-terminal")?;
    fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;

    // As a port task opens its port.
    let mut port = match tokio_serial::new(&path, BAUD)
        .timeout(Duration::from_secs(1))
        .open_native_async()
    {
        Ok(port) => port,
        Err(error) if error.description == nix::errno::Errno::ENOSYS.desc() => {
            return Err(Unsupported(format!(
                "tokio-serial cannot open {path}: {error}: this kernel or emulator lacks an \
                 ioctl serialport needs (qemu-user 7.2 has no TCGETS2); a Linux kernel has it"
            ))
            .into());
        }
        Err(error) => {
            return Err(error).with_context(|| format!("tokio-serial cannot open {path}"));
        }
    };

    let message = b"outpost self-test\n";
    write_all_nonblocking(&mut master, message).context("cannot write to the pty master")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    tokio::time::timeout(STEP_TIMEOUT, async {
        while got.len() < message.len() {
            let n = port.read(&mut buf).await?;
            if n == 0 {
                bail!("end of file on the port");
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await
    .context("nothing arrived on the port")??;
    ensure!(got == message, "the port read {got:?}");

    port.write_all(message).await?;
    port.flush().await?;
    let got = read_nonblocking(&mut master, message.len())
        .await
        .context("cannot read back from the pty master")?;
    ensure!(got == message, "the pty master read {got:?}");
    Ok(format!(
        "{path} opened at {BAUD} baud, bytes passed both ways"
    ))
}

fn write_all_nonblocking(file: &mut impl std::io::Write, mut bytes: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads `len` bytes from a non-blocking file, polling every millisecond up to [`STEP_TIMEOUT`].
async fn read_nonblocking(file: &mut impl std::io::Read, len: usize) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < len {
        match file.read(&mut buf) {
            Ok(0) => bail!("end of file"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("timed out after {STEP_TIMEOUT:?} with {} bytes", got.len());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[tokio::test]
    async fn every_check_passes_on_this_machine() {
        for outcome in run().await {
            assert!(outcome.passed(), "{outcome}");
        }
    }

    #[test]
    fn a_check_the_kernel_cannot_support_is_skipped_not_failed() {
        let outcome = CheckOutcome {
            name: "serial",
            result: Err(Unsupported("no TCGETS2 here".into()).into()),
            took: Duration::from_millis(1),
        };
        assert_eq!(outcome.verdict(), Verdict::Skipped);
        assert!(outcome.passed());
        assert_eq!(
            outcome.to_string(),
            "serial  SKIPPED no TCGETS2 here (1 ms)"
        );
    }

    #[test]
    fn a_failed_check_prints_its_reason_on_one_line() {
        let outcome = CheckOutcome {
            name: "serial",
            result: Err(anyhow!("no such device").context("tokio-serial cannot open /dev/pts/9")),
            took: Duration::from_millis(3),
        };
        assert_eq!(
            outcome.to_string(),
            "serial  FAILED  tokio-serial cannot open /dev/pts/9: no such device (3 ms)"
        );
    }
}
