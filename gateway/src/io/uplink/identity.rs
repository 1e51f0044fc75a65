//! The gateway's own identity on disk: its private key (made here, never sent anywhere), its
//! certificate, and what provisioning said of it (`provisioned.json` in the data directory).
//!
//! Every file is written the same way: a hidden temporary file in the same directory (the key's
//! created 0600 before a byte is written), fsync, rename over the target, fsync the directory.
//! A crash leaves the old file or the new one, never a torn one. The process runs as the service
//! user, so the files are owned by it.
//!
//! The key is made once: a start that finds a key but no certificate (a crash, or a claim that
//! was refused) reuses it. Renewal certifies the same key again, so a renewal swaps one file, the
//! certificate, with one rename (rotating the key as well would need two renames that a crash
//! could separate).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use outpost_core::config::MqttConfig;
use outpost_core::provisioning::{CertificateInfo, Issued};
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData as _};

/// Where the identity's files are.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `provisioned.json`: thing name, certificate id, device configuration.
    pub record: PathBuf,
}

/// Why the identity's files could not be read or written. Never holds key material: a key that
/// cannot be parsed is named by its path alone.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a private key this gateway can use (PEM, PKCS#8, ECDSA P-256 or Ed25519)"
    )]
    BadKey { path: PathBuf },
    #[error("cannot make a key or a certificate signing request: {0}")]
    Crypto(String),
}

/// What provisioning said of the gateway, kept for the next start.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub certificate_id: String,
    pub thing_name: Option<String>,
    #[serde(default)]
    pub device_configuration: serde_json::Value,
}

impl IdentityFiles {
    #[must_use]
    pub fn new(mqtt: &MqttConfig, data_dir: &Path) -> IdentityFiles {
        IdentityFiles {
            cert: mqtt.cert_file.clone(),
            key: mqtt.key_file.clone(),
            record: data_dir.join("provisioned.json"),
        }
    }

    /// Whether the gateway has a certificate of its own.
    #[must_use]
    pub fn has_certificate(&self) -> bool {
        self.cert.is_file()
    }

    /// The certificate's facts, if it is there and readable.
    ///
    /// # Errors
    /// Why it cannot be read or parsed.
    pub fn certificate(&self) -> Result<CertificateInfo, String> {
        let pem = fs::read_to_string(&self.cert)
            .map_err(|e| format!("cannot read {}: {e}", self.cert.display()))?;
        CertificateInfo::from_pem(&pem).map_err(|e| format!("{}: {e}", self.cert.display()))
    }

    /// The key, made (ECDSA P-256) and written 0600 if there is none yet.
    ///
    /// # Errors
    /// The key cannot be read, parsed, made or written.
    pub fn load_or_make_key(&self) -> Result<KeyPair, IdentityError> {
        match fs::read_to_string(&self.key) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|_| IdentityError::BadKey {
                path: self.key.clone(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(|e| IdentityError::Crypto(e.to_string()))?;
                if let Some(dir) = self.key.parent() {
                    make_private_dir(dir)?;
                }
                write_atomically(
                    &self.key,
                    key.serialize_pem().as_bytes(),
                    0o600,
                    "write key",
                )?;
                tracing::info!(
                    message = "Made the gateway's own private key (ECDSA P-256); it never leaves this device.",
                    path = %self.key.display()
                );
                Ok(key)
            }
            Err(source) => Err(IdentityError::Io {
                what: "read key",
                path: self.key.clone(),
                source,
            }),
        }
    }

    /// Stores an issued certificate over the old one (if any), then the record.
    ///
    /// # Errors
    /// Why a file could not be written; the certificate is then the old one (or none).
    pub fn store(&self, issued: &Issued) -> Result<(), IdentityError> {
        if let Some(dir) = self.cert.parent() {
            make_private_dir(dir)?;
        }
        write_atomically(
            &self.cert,
            issued.certificate_pem.as_bytes(),
            0o644,
            "write certificate",
        )?;
        let record = Record {
            certificate_id: issued.certificate_id.clone(),
            thing_name: issued.thing_name.clone(),
            device_configuration: issued.device_configuration.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        write_atomically(&self.record, &json, 0o644, "write")
    }

    /// What provisioning said last, if it ran.
    #[must_use]
    pub fn record(&self) -> Option<Record> {
        let bytes = fs::read(&self.record).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The key's public part as a certificate holds it (the subjectPublicKey bits).
#[must_use]
pub fn public_key(key: &KeyPair) -> Vec<u8> {
    key.der_bytes().to_vec()
}

/// A PKCS#10 request for `key`, subject CN `common_name` (PEM).
///
/// # Errors
/// rcgen could not make it.
pub fn csr(key: &KeyPair, common_name: &str) -> Result<String, IdentityError> {
    let mut params =
        CertificateParams::new(Vec::new()).map_err(|e| IdentityError::Crypto(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IdentityError::Crypto(e.to_string()))
}

fn make_private_dir(dir: &Path) -> Result<(), IdentityError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|source| IdentityError::Io {
            what: "create directory",
            path: dir.to_owned(),
            source,
        })
}

/// [`crate::io::files::write_atomically`], its error saying what was written.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    what: &'static str,
) -> Result<(), IdentityError> {
    crate::io::files::write_atomically(path, bytes, mode).map_err(|source| IdentityError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// `outpost identity show`: the gateway's certificate, or where provisioning stands. Never the
/// private key (only its path, and whether it is there).
#[must_use]
pub fn describe(config: &outpost_core::config::Config, now_unix_s: i64) -> String {
    use std::fmt::Write as _;
    let Some(mqtt) = &config.mqtt else {
        return "no [uplink.mqtt] in the configuration: this gateway has no MQTT identity\n".into();
    };
    let files = IdentityFiles::new(mqtt, &config.data_dir);
    let mut out = String::new();
    let _ = writeln!(out, "gateway id: {}", config.gateway_id);
    if files.has_certificate() {
        let _ = writeln!(out, "certificate: {}", files.cert.display());
        match files.certificate() {
            Ok(info) => {
                describe_certificate(&mut out, &info, now_unix_s);
                if let Some(p) = &mqtt.provisioning {
                    let due = outpost_core::provisioning::renewal_due_at(
                        info.not_before_unix_s,
                        info.not_after_unix_s,
                        p.renew_before,
                    );
                    let _ = writeln!(out, "  renewal due: {}", when(due, now_unix_s));
                    if p.claim_cert_file.exists() {
                        let _ = writeln!(
                            out,
                            "  claim certificate {}: not used any more (it may be removed)",
                            p.claim_cert_file.display()
                        );
                    }
                }
            }
            Err(error) => {
                let _ = writeln!(out, "  unreadable: {error}");
            }
        }
        if let Some(record) = files.record() {
            let _ = writeln!(
                out,
                "  provisioned: certificate id {}, thing name {}",
                record.certificate_id,
                record.thing_name.as_deref().unwrap_or("(none given)")
            );
        }
    } else {
        let _ = write!(out, "certificate: not provisioned yet");
        match &mqtt.provisioning {
            None => {
                let _ = writeln!(
                    out,
                    "; {} is missing and no [uplink.mqtt.provisioning] is configured",
                    files.cert.display()
                );
            }
            Some(p) => match fs::read_to_string(&p.claim_cert_file)
                .map_err(|e| e.to_string())
                .and_then(|pem| CertificateInfo::from_pem(&pem))
            {
                Ok(claim) => {
                    let _ = writeln!(
                        out,
                        "; claim certificate present ({}), template {}",
                        p.claim_cert_file.display(),
                        p.template
                    );
                    let _ = writeln!(out, "claim certificate:");
                    describe_certificate(&mut out, &claim, now_unix_s);
                    let _ = writeln!(
                        out,
                        "the running gateway obtains its own certificate into {}",
                        files.cert.display()
                    );
                }
                Err(error) => {
                    let _ = writeln!(
                        out,
                        "; no usable claim certificate at {} either: {error}",
                        p.claim_cert_file.display()
                    );
                }
            },
        }
    }
    let _ = writeln!(
        out,
        "private key: {} ({})",
        files.key.display(),
        if files.key.is_file() {
            "present, not shown"
        } else {
            "not made yet"
        }
    );
    out
}

fn describe_certificate(out: &mut String, info: &CertificateInfo, now_unix_s: i64) {
    use std::fmt::Write as _;
    let fingerprint = info
        .sha256_fingerprint
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let _ = writeln!(out, "  subject: {}", info.subject);
    let _ = writeln!(out, "  issuer: {}", info.issuer);
    let _ = writeln!(out, "  serial: {}", info.serial);
    let _ = writeln!(out, "  sha256 fingerprint: {fingerprint}");
    let _ = writeln!(
        out,
        "  not before: {}",
        when(info.not_before_unix_s, now_unix_s)
    );
    let expiry = if info.not_after_unix_s <= now_unix_s {
        format!("{} (EXPIRED)", when(info.not_after_unix_s, now_unix_s))
    } else {
        when(info.not_after_unix_s, now_unix_s)
    };
    let _ = writeln!(out, "  not after: {expiry}");
}

/// A Unix time as RFC 3339 (UTC), with how far from now.
fn when(unix_s: i64, now_unix_s: i64) -> String {
    let time = u64::try_from(unix_s).map_or(std::time::UNIX_EPOCH, |s| {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
    });
    let stamp = humantime::format_rfc3339_seconds(time);
    let delta = std::time::Duration::from_secs(unix_s.abs_diff(now_unix_s));
    let delta = humantime::format_duration(delta).to_string();
    let rough = delta.split(' ').take(2).collect::<Vec<_>>().join(" ");
    if unix_s >= now_unix_s {
        format!("{stamp} (in {rough})")
    } else {
        format!("{stamp} ({rough} ago)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn files(dir: &Path) -> IdentityFiles {
        IdentityFiles {
            cert: dir.join("identity/gateway.crt"),
            key: dir.join("identity/gateway.key"),
            record: dir.join("provisioned.json"),
        }
    }

    #[test]
    fn the_key_is_made_once_0600_in_a_private_directory_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let first = files.load_or_make_key().unwrap();
        let meta = fs::metadata(&files.key).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir_meta = fs::metadata(files.key.parent().unwrap()).unwrap();
        assert_eq!(dir_meta.mode() & 0o777, 0o700);
        let again = files.load_or_make_key().unwrap();
        assert_eq!(public_key(&first), public_key(&again));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(files.key.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("gateway.key")]);
    }

    #[test]
    fn an_unreadable_key_is_named_by_path_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        fs::create_dir_all(files.key.parent().unwrap()).unwrap();
        fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = files.load_or_make_key().unwrap_err().to_string();
        assert!(error.contains("gateway.key"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }

    #[test]
    fn a_csr_carries_the_keys_public_part_and_the_common_name() {
        let key = KeyPair::generate().unwrap();
        let pem = csr(&key, "gw-9").unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!pem.contains("PRIVATE"));
    }
}
