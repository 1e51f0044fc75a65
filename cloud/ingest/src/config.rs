//! `ingest.toml`: where batches come from (a broker's shared subscription, gateways' pull API, or
//! both), the database, retention and the metrics listener. Unknown keys are errors, and every
//! error names the file, the line and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::partition::Window;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This replica's name: its MQTT client id (so its session survives a restart) and the
    /// `batches.replica` column. Unique per replica and stable across restarts.
    pub replica: String,
    pub database: Database,
    #[serde(default)]
    pub mqtt: Option<Mqtt>,
    #[serde(default)]
    pub pull: Option<Pull>,
    #[serde(default)]
    pub metrics: Metrics,
    /// Folder of the zstd dictionaries gateways seal with (`{id}.zdict`, from a gateway's
    /// `/api/v1/dictionaries/{id}`); a batch naming one not there is dead-lettered until it is.
    #[serde(default)]
    pub dictionaries: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// A libpq-style connection string or `postgresql://` URL (tokio-postgres' syntax).
    pub url: String,
    /// Connections, and so batches committed at once.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Days of readings kept; older daily partitions are dropped. Absent: kept for ever.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Days ahead of today that get their partition made in advance.
    #[serde(default = "default_ahead_days")]
    pub partition_ahead_days: u32,
    /// TLS to the database; absent, the connection is plain (a database on this host or a
    /// private network only).
    #[serde(default)]
    pub tls: Option<DatabaseTls>,
}

/// `[database.tls]`: every connection is TLS (`sslmode=require`, never a plain fallback), the
/// server's certificate checked against `ca_file` and its host name; with `cert_file` and
/// `key_file`, this replica authenticates with its own certificate (PostgreSQL's `cert` method).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTls {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl DatabaseTls {
    /// This replica's certificate and key, when it has them.
    #[must_use]
    pub fn identity(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

impl Database {
    /// The connection settings of `url`, with `[database.tls]` applied: TLS required when it is
    /// there; a `url` asking for TLS without it is refused rather than left unchecked.
    pub fn postgres_config(&self) -> Result<tokio_postgres::Config, (&'static str, String)> {
        use tokio_postgres::config::SslMode;
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| ("database.url", format!("not a connection string: {e}")))?;
        match (&self.tls, config.get_ssl_mode()) {
            (Some(_), SslMode::Disable) => {
                return Err((
                    "database.url",
                    "sslmode=disable contradicts [database.tls]: remove one".into(),
                ));
            }
            (Some(_), _) => {
                config.ssl_mode(SslMode::Require);
            }
            (None, SslMode::Require) => {
                return Err((
                    "database.url",
                    "sslmode=require needs [database.tls] with the server's ca_file".into(),
                ));
            }
            // `prefer` without a TLS setup never tries TLS: the link is plain, as documented.
            (None, _) => {
                config.ssl_mode(SslMode::Disable);
            }
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// `host:port` of the broker (TLS).
    pub broker: String,
    pub ca_file: PathBuf,
    /// This service's own certificate and key (its broker identity).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The shared-subscription group every replica joins.
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// How long the broker keeps this replica's session (and the batches sent to it but not
    /// acknowledged) while it is away.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Batches the broker may send before the first is acknowledged.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pull {
    #[serde(default = "default_pull_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<PullGateway>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullGateway {
    /// The gateway's id, as its batches carry it.
    pub id: String,
    /// Its local API, e.g. `http://10.20.0.7:8080`.
    pub url: String,
    /// The gateway's `[uplink.pull] token`.
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where `/metrics` (Prometheus text) and `/healthz` are served.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            listen: default_metrics_listen(),
        }
    }
}

fn default_connections() -> usize {
    4
}
fn default_ahead_days() -> u32 {
    2
}
fn default_group() -> String {
    "outpost-ingest".into()
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(3600)
}
fn default_receive_maximum() -> u16 {
    64
}
fn default_pull_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

/// A config file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let line = span.map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().to_owned()))?;
        config.validate().map_err(|(key, why)| {
            let at = key_position(text, key);
            invalid(at.map(|s| s..s), format!("{key}: {why}"))
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.replica.is_empty() || self.replica.len() > 64 {
            return Err(("replica", "must be 1 to 64 characters".into()));
        }
        if self.mqtt.is_none() && self.pull.as_ref().is_none_or(|p| p.gateways.is_empty()) {
            return Err((
                "mqtt",
                "nothing to ingest from: set [mqtt] or at least one [[pull.gateway]]".into(),
            ));
        }
        self.database.postgres_config()?;
        if let Some(tls) = &self.database.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err((
                "database.tls.cert_file",
                "cert_file and key_file go together".into(),
            ));
        }
        if !(1..=64).contains(&self.database.connections) {
            return Err(("database.connections", "must be 1 to 64".into()));
        }
        if let Some(mqtt) = &self.mqtt {
            if mqtt.group.is_empty() || mqtt.group.contains(['/', '+', '#']) {
                return Err((
                    "mqtt.group",
                    "must be a plain name (no '/', '+', '#')".into(),
                ));
            }
            if mqtt.receive_maximum == 0 {
                return Err(("mqtt.receive_maximum", "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// The partition window the database keeps.
    #[must_use]
    pub fn window(&self) -> Window {
        Window {
            retention_days: self.database.retention_days,
            ahead_days: self.database.partition_ahead_days,
        }
    }
}

/// Where `key` (`table.sub.name`) is set in `text`: its name after its table's header, so a
/// name used in two tables (`cert_file`) points at the right one.
fn key_position(text: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    let from = if table.is_empty() {
        0
    } else {
        text.find(&format!("[{table}]"))?
    };
    let mut at = from;
    for (n, line) in text[from..].split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if n > 0 && !table.is_empty() && trimmed.starts_with('[') {
            // Not set in its table: the table's header.
            return Some(from);
        }
        if trimmed
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(at + (line.len() - trimmed.len()));
        }
        at += line.len();
    }
    text.find(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"replica = "ingest-1"

[database]
url = "host=127.0.0.1 user=outpost"

[mqtt]
broker = "127.0.0.1:8883"
ca_file = "ca.pem"
cert_file = "ingest.pem"
key_file = "ingest.key"
"#;

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cloud/ingest.toml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = Config::parse(Path::new("ingest.toml"), GOOD).unwrap();
        assert_eq!(c.database.connections, 4);
        assert_eq!(c.mqtt.unwrap().group, "outpost-ingest");
    }

    #[test]
    fn an_error_names_the_file_the_line_and_the_key() {
        let bad = GOOD.replace("ca_file", "ca_fle");
        let e = Config::parse(Path::new("/etc/outpost/ingest.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/outpost/ingest.toml:8: "), "{e}");
        assert!(e.contains("ca_fle"), "{e}");
        let bad = GOOD.replace("[database]\n", "[database]\nconnections = 0\n");
        let e = Config::parse(Path::new("i.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("i.toml:4: database.connections"), "{e}");
    }

    #[test]
    fn database_tls_is_required_once_configured_and_never_asked_for_without_it() {
        use tokio_postgres::config::SslMode;
        let path = Path::new("i.toml");
        let plain = Config::parse(path, GOOD).unwrap();
        assert_eq!(
            plain.database.postgres_config().unwrap().get_ssl_mode(),
            SslMode::Disable
        );
        let tls = GOOD.replace(
            "[mqtt]\n",
            "[database.tls]\nca_file = \"db-ca.pem\"\n\n[mqtt]\n",
        );
        let c = Config::parse(path, &tls).unwrap();
        assert_eq!(
            c.database.postgres_config().unwrap().get_ssl_mode(),
            SslMode::Require
        );
        assert!(c.database.tls.unwrap().identity().is_none());

        // Asking for TLS without saying whom to trust, or refusing it while configuring it.
        let e = Config::parse(
            path,
            &GOOD.replace("user=outpost", "user=outpost sslmode=require"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("i.toml:4: database.url: sslmode=require needs"),
            "{e}"
        );
        let e = Config::parse(
            path,
            &tls.replace("user=outpost", "user=outpost sslmode=disable"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("i.toml:4: database.url: sslmode=disable"),
            "{e}"
        );
        let e = Config::parse(
            path,
            &GOOD.replace("host=127.0.0.1", "host=127.0.0.1 port=x"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("i.toml:4: database.url: not a connection string"),
            "{e}"
        );
    }

    #[test]
    fn a_key_set_in_two_tables_is_found_in_its_own() {
        let path = Path::new("i.toml");
        // [database.tls] with a key but no certificate: the error points into that table, not
        // at [mqtt]'s key_file further down.
        let text = GOOD.replace(
            "[mqtt]\n",
            "[database.tls]\nca_file = \"db-ca.pem\"\nkey_file = \"db.key\"\n\n[mqtt]\n",
        );
        let e = Config::parse(path, &text).unwrap_err().to_string();
        assert!(
            e.starts_with("i.toml:6: database.tls.cert_file: cert_file and key_file go together"),
            "{e}"
        );
        let text = text.replace("key_file = \"db.key\"", "cert_file = \"db.pem\"");
        let e = Config::parse(path, &text).unwrap_err().to_string();
        assert!(e.starts_with("i.toml:8: database.tls.cert_file"), "{e}");
    }
}
