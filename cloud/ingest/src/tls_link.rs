//! The broker connection's TLS, made by the ingest rather than by the MQTT client: rumqttc
//! connects to a Unix socket in a private directory (0700, this process only) and each
//! connection there is bridged to a fresh TLS connection to the broker with this service's own
//! certificate. rumqttc's own TLS would bring an older rustls-webpki with open advisories.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UnixListener};

/// The bridge's socket; removed with its directory when dropped.
#[derive(Debug)]
pub struct TlsLink {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl TlsLink {
    /// Listens on a socket in a new private directory.
    pub fn bind() -> std::io::Result<TlsLink> {
        let dir = tempfile::Builder::new()
            .prefix("outpost-ingest-")
            .tempdir()?;
        let listener = UnixListener::bind(dir.path().join("mqtt.sock"))?;
        Ok(TlsLink { dir, listener })
    }

    #[must_use]
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("mqtt.sock")
    }

    /// Serves for ever: each accepted connection is bridged to `host:port` over TLS. A failure
    /// is logged and closes the client's side, which rumqttc reports and retries.
    pub async fn run(self, host: String, port: u16, tls: Arc<rustls::ClientConfig>) {
        let connector = tokio_rustls::TlsConnector::from(tls);
        loop {
            let Ok((mut local, _)) = self.listener.accept().await else {
                continue;
            };
            let connector = connector.clone();
            let host = host.clone();
            tokio::spawn(async move {
                let connect = async {
                    let tcp = TcpStream::connect((host.as_str(), port))
                        .await
                        .map_err(|e| format!("cannot reach broker {host}:{port}: {e}"))?;
                    let _ = tcp.set_nodelay(true);
                    let name = ServerName::try_from(host.clone())
                        .map_err(|e| format!("bad broker host name {host}: {e}"))?;
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with broker {host}:{port} failed: {e}"))
                };
                match connect.await {
                    Ok(mut remote) => {
                        if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut remote).await
                        {
                            tracing::debug!(message = "Broker connection closed.", error = %e);
                        }
                    }
                    Err(error) => tracing::warn!(message = "Broker connection failed.", %error),
                }
            });
        }
    }
}
