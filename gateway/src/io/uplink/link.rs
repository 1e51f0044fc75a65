//! The uplink's TLS connection, made by Outpost rather than by the MQTT client, so that every
//! byte on the socket is metered ([`Metered`]) and a TLS refusal is reported as what it is.
//!
//! rumqttc connects to a Unix socket in a private directory (`Transport::Unix`); each connection
//! there is bridged to a fresh TLS connection to the broker, with the gateway's own certificate.
//! Only this process can reach the socket (the directory is 0700), and it serves one client.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;

use super::meter::{Meter, Metered};

/// How long a stopping link forwards the client's last bytes before it closes regardless.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client TLS configuration: the broker's CA, the gateway's certificate and key.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    fn read(
        what: &'static str,
        path: &Path,
    ) -> impl Fn(rustls::pki_types::pem::Error) -> TlsSetupError {
        let path = path.to_owned();
        move |source| TlsSetupError::Read {
            what,
            path: path.clone(),
            source,
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_file_iter(ca).map_err(read("CA file", ca))? {
        roots.add(ca_cert.map_err(read("CA file", ca))?)?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: ca.to_owned(),
        });
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(read("certificate", cert))?
        .collect::<Result<_, _>>()
        .map_err(read("certificate", cert))?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(read("private key", key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// What the link tells the MQTT adapter: why the last connection failed, and how many TLS
/// handshakes with the broker completed (an attempt during which this grew reached the broker,
/// so its failure is the broker's answer, not the network's).
#[derive(Debug, Default)]
pub struct LinkReport {
    last_error: Mutex<Option<String>>,
    handshakes: AtomicU64,
}

impl LinkReport {
    fn failed(&self, why: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }

    /// The last failure, once.
    pub fn take_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

/// The bridge between rumqttc's Unix socket and TLS to the broker.
#[derive(Debug)]
pub struct TlsLink {
    socket_path: PathBuf,
    listener: UnixListener,
}

impl TlsLink {
    /// Listens on `dir/uplink.sock`; `dir` is created private to this user.
    pub fn bind(dir: &Path) -> std::io::Result<TlsLink> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let socket_path = dir.join("uplink.sock");
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path)?;
        Ok(TlsLink {
            socket_path,
            listener,
        })
    }

    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Serves until `stop`: each accepted connection is bridged to `host:port` over TLS.
    /// TLS and TCP failures go to `report` (and the debug log: the MQTT adapter reports the
    /// outage, once); the MQTT client then sees its connection close and retries. On `stop`, a
    /// bridged connection gets [`STOP_GRACE`] to forward what the client sent last (its
    /// goodbye) and close TLS.
    pub async fn run(
        self,
        host: String,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        meter: Arc<Meter>,
        report: Arc<LinkReport>,
        stop: CancellationToken,
    ) {
        let connector = tokio_rustls::TlsConnector::from(tls);
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((mut local, _)) = accepted else {
                continue;
            };
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("cannot reach broker {host}:{port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("bad broker host name {host}: {e}"))?;
                connector
                    .connect(name, Metered::new(tcp, Arc::clone(&meter)))
                    .await
                    .map_err(|e| format!("TLS with broker {host}:{port} failed: {e}"))
            };
            let mut remote = match connect.await {
                Ok(remote) => remote,
                Err(error) => {
                    tracing::debug!(message = "Uplink connection failed.", %error);
                    report.failed(error);
                    continue; // dropping `local` closes rumqttc's side
                }
            };
            report.handshakes.fetch_add(1, Ordering::Relaxed);
            let bridge = tokio::io::copy_bidirectional(&mut local, &mut remote);
            tokio::pin!(bridge);
            let result = tokio::select! {
                result = &mut bridge => result,
                () = stop.cancelled() => match tokio::time::timeout(STOP_GRACE, bridge).await {
                    Ok(result) => result,
                    Err(_) => break,
                },
            };
            if let Err(error) = result {
                tracing::debug!(message = "Uplink connection closed.", %error);
                report.failed(format!(
                    "connection to broker {host}:{port} closed: {error}"
                ));
            }
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}
