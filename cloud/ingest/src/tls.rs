//! The ingest's TLS client configurations (the broker's and the database's): rustls with the
//! ring provider, trusting only the configured CA, presenting this replica's own certificate
//! where one is configured.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client configuration that trusts the certificates in `ca_file` and, with `identity`
/// (`cert_file`, `key_file`), authenticates with that certificate chain and key.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(ca_file)? {
        roots
            .add(ca)
            .with_context(|| format!("{} holds a certificate rustls refuses", ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert_file, key_file)) => {
            let chain = read_certs(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .with_context(|| format!("cannot read the key {}", key_file.display()))?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "{} does not match {}",
                    key_file.display(),
                    cert_file.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    })
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}
