//! The diagnostics bundle's policy: what of the configuration may leave the gateway, the
//! archive's container, and how a bundle is delivered (in parts on the result topic within the
//! data budget, or only from the page).
//!
//! Design: IO-free. The adapter (`io::diagnostics`) gathers the journal, the store's tables and
//! the configuration's text; this module redacts, packs and decides. The bundle is a way for
//! data to leave the site, so the rule is: **when in doubt, redact**, and say what was redacted
//! (the key's path and why, never the value).
//!
//! What is redacted ([`redact_toml`]):
//!
//! - every value under a key whose name says secret (`token`, `password`, `secret`, `private`,
//!   `credential`, `bearer`, `psk`, `passphrase`, `api_key`, a name that is `key` or ends in
//!   `_key`), whatever its type; keys naming a file or directory (`*_file`, `*_files`, `*_path`,
//!   `*_dir`) are paths, and stay unless their value has a secret's shape;
//! - every string, anywhere (keys of tables included), that has a secret's shape
//!   ([`secret_shape`]): a PEM block, an `Authorization` scheme (`Bearer …`, `Basic …`), a
//!   password hash in PHC form (`$argon2id$…`), or a credential-like word.
//!
//! Journal lines go through [`secret_shape`] word by word too ([`redact_line`]).

use std::fmt::Write as _;

use crate::command::remedy::Upload;

/// What stands in for a redacted value.
pub const REDACTED: &str = "[redacted]";

/// One redaction: where (a dotted key path, `[i]` for array elements) and why. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Redaction {
    pub key: String,
    pub why: &'static str,
}

/// Key names whose values are secrets, as substrings of the lower-cased name (`-` read as `_`).
const SECRET_NAMES: [&str; 11] = [
    "token",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "bearer",
    "private",
    "psk",
    "api_key",
    "apikey",
];

/// Key name endings that say the value is a path: kept unless the value has a secret's shape.
const PATH_SUFFIXES: [&str; 6] = ["_file", "_files", "_path", "_paths", "_dir", "_dirs"];

/// Whether a key's name says its value is a secret.
#[must_use]
pub fn secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    if PATH_SUFFIXES.iter().any(|s| key.ends_with(s)) {
        return false;
    }
    key == "key" || key.ends_with("_key") || SECRET_NAMES.iter().any(|s| key.contains(s))
}

/// The shortest run of credential characters judged by its shape (see [`secret_shape`]).
const CREDENTIAL_RUN: usize = 20;

/// Why `text` looks like it holds a secret, or `None`.
///
/// A credential-like word is a run of at least 20 characters of the base64/base64url/hex
/// alphabet (`A-Z a-z 0-9 + / = _ -`) that is not plainly a path or a name: a plain run has no
/// upper-case letter, no `+` or `=`, and splits on `/`, `_` and `-` into parts of at most 16
/// characters that are all letters or all digits (at most 8 when they mix both). Random tokens
/// and keys fail that almost surely; `/var/lib/outpost/keys/operator` passes. Some harmless
/// values fail it too (a `/dev/serial/by-id/…` path with the adapter's serial number): they are
/// redacted, and the redaction list names their key.
#[must_use]
pub fn secret_shape(text: &str) -> Option<&'static str> {
    if text.contains("-----BEGIN") || text.contains("PRIVATE KEY") {
        return Some("PEM block");
    }
    let lower = text.to_ascii_lowercase();
    if ["bearer ", "basic ", "authorization:"]
        .iter()
        .any(|s| lower.contains(s))
    {
        return Some("authorization credentials");
    }
    if let Some(rest) = text.trim_start().strip_prefix('$')
        && rest.contains('$')
    {
        return Some("password hash");
    }
    let credential_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-');
    text.split(|c: char| !credential_char(c))
        .any(|run| run.len() >= CREDENTIAL_RUN && !plain_run(run))
        .then_some("credential-like value")
}

fn plain_run(run: &str) -> bool {
    if run
        .bytes()
        .any(|b| b.is_ascii_uppercase() || b == b'+' || b == b'=')
    {
        return false;
    }
    run.split(['/', '_', '-']).all(|part| {
        let letters = part.bytes().any(|b| b.is_ascii_alphabetic());
        let digits = part.bytes().any(|b| b.is_ascii_digit());
        let limit = if letters && digits { 8 } else { 16 };
        part.len() <= limit
    })
}

/// `line` with every word of a secret's shape replaced, and how many were.
#[must_use]
pub fn redact_line(line: &str) -> (String, usize) {
    if let Some(why) = secret_shape(line)
        && why != "credential-like value"
    {
        // A PEM line, an Authorization header, a hash: the whole line goes.
        return (format!("{REDACTED} ({why})"), 1);
    }
    let mut out = String::with_capacity(line.len());
    let mut count = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if secret_shape(word).is_some() {
            out.push_str(REDACTED);
            count += 1;
        } else {
            out.push_str(word);
        }
    }
    (out, count)
}

/// Redacts a parsed TOML document in place; what was redacted, in document order.
pub fn redact_table(table: &mut toml::Table) -> Vec<Redaction> {
    let mut found = Vec::new();
    redact_in_table(table, "", &mut found);
    found
}

/// Parses `text` as TOML, redacts it and writes it back: the redacted text and the list.
pub fn redact_toml(text: &str) -> Result<(String, Vec<Redaction>), String> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let found = redact_table(&mut table);
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok((text, found))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn redact_in_table(table: &mut toml::Table, path: &str, found: &mut Vec<Redaction>) {
    // A key may itself be a secret (a table of tokens by value): renamed, in order.
    let keys: Vec<String> = table.keys().cloned().collect();
    for (i, key) in keys.into_iter().enumerate() {
        let shown = if let Some(why) = secret_shape(&key) {
            let value = table.remove(&key).unwrap_or(toml::Value::Boolean(false));
            let renamed = format!("{REDACTED}-key-{i}");
            let shown = join(path, &renamed);
            found.push(Redaction {
                key: shown.clone(),
                why,
            });
            table.insert(renamed.clone(), value);
            (renamed, shown)
        } else {
            (key.clone(), join(path, &key))
        };
        let (key, shown) = shown;
        let value = table.get_mut(&key).expect("the key was just listed");
        if secret_name(&key) {
            *value = toml::Value::String(REDACTED.into());
            found.push(Redaction {
                key: shown,
                why: "key name",
            });
        } else {
            redact_value(value, &shown, found);
        }
    }
}

fn redact_value(value: &mut toml::Value, path: &str, found: &mut Vec<Redaction>) {
    match value {
        toml::Value::String(text) => {
            if let Some(why) = secret_shape(text) {
                *text = REDACTED.into();
                found.push(Redaction {
                    key: path.to_owned(),
                    why,
                });
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                redact_value(item, &format!("{path}[{i}]"), found);
            }
        }
        toml::Value::Table(table) => redact_in_table(table, path, found),
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => {}
    }
}

/// A POSIX ustar archive written in memory: what `tar -x` reads. Regular files only, names of
/// at most 100 bytes, mode 0644, owner 0. (The container is this small writer rather than a
/// dependency: the bundle needs nothing more.)
#[derive(Debug, Default)]
pub struct Archive {
    bytes: Vec<u8>,
}

/// Why a file cannot enter an [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("file name `{0}` is empty, longer than 100 bytes or not plain ASCII")]
    Name(String),
}

const BLOCK: usize = 512;

impl Archive {
    #[must_use]
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds a file named `name` (relative, `/`-separated) with `data`, modified at `mtime_s`.
    pub fn add(&mut self, name: &str, data: &[u8], mtime_s: u64) -> Result<(), ArchiveError> {
        let plain = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('/')
            && name.bytes().all(|b| b.is_ascii_graphic());
        if !plain {
            return Err(ArchiveError::Name(name.to_owned()));
        }
        let mut header = [0u8; BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], 0o644);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], mtime_s);
        header[148..156].fill(b' '); // the checksum counts its own field as spaces
        header[156] = b'0'; // a regular file
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(field.as_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.bytes.extend(std::iter::repeat_n(0, pad));
        Ok(())
    }

    /// The archive, closed by its two zero blocks.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0, 2 * BLOCK));
        self.bytes
    }
}

/// `value` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// The largest part published, bytes, its header line included: MQTT brokers and cloud rules
/// take 64 KiB messages everywhere (AWS IoT's limit is 128 KiB).
pub const MAX_PART_BYTES: usize = 64 * 1024;

/// The most parts a bundle is uploaded in (3 MiB): the uplink's result queue holds 64
/// messages, and a bundle larger than this belongs on the page's download.
pub const MAX_UPLOAD_PARTS: usize = 48;

/// How a bundle leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Uploaded in this many parts.
    Parts(usize),
    /// Not uploaded: the command said `upload=no`.
    NotAsked,
    /// Not uploaded: the month's projected bytes and the bundle would pass the budget.
    OverBudget { projected_month: u64, budget: u64 },
    /// Not uploaded: more than [`MAX_UPLOAD_PARTS`] parts.
    TooLarge { parts: usize },
}

impl Delivery {
    /// The result's `delivery` word.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Delivery::Parts(_) => "uploaded",
            Delivery::NotAsked => "page",
            Delivery::OverBudget { .. } => "over-budget",
            Delivery::TooLarge { .. } => "too-large",
        }
    }

    /// Why it was not uploaded, as the result's `detail` says; `None` when it was, or was not
    /// asked to be.
    #[must_use]
    pub fn refusal(&self) -> Option<String> {
        match self {
            Delivery::Parts(_) | Delivery::NotAsked => None,
            Delivery::OverBudget {
                projected_month,
                budget,
            } => Some(format!(
                "over the data budget; download it from the page (the month is projected at \
                 {projected_month} bytes of {budget}; `upload=force` sends it anyway)"
            )),
            Delivery::TooLarge { parts } => Some(format!(
                "too large to upload ({parts} parts, at most {MAX_UPLOAD_PARTS}); download it \
                 from the page"
            )),
        }
    }
}

/// The number of parts `bundle_len` bytes take.
#[must_use]
pub fn part_count(bundle_len: usize) -> usize {
    bundle_len.div_ceil(MAX_PART_BYTES - MAX_PART_HEADER).max(1)
}

/// Room kept in each part for its header line.
const MAX_PART_HEADER: usize = 64;

/// Whether a bundle of `bundle_len` bytes is uploaded: `projected_month` and `budget` are the
/// cost meter's (`budget` 0: no budget set).
#[must_use]
pub fn decide_delivery(
    upload: Upload,
    bundle_len: usize,
    projected_month: u64,
    budget: u64,
) -> Delivery {
    let parts = part_count(bundle_len);
    match upload {
        Upload::No => Delivery::NotAsked,
        _ if parts > MAX_UPLOAD_PARTS => Delivery::TooLarge { parts },
        Upload::Force => Delivery::Parts(parts),
        Upload::Auto => {
            let after = projected_month.saturating_add(bundle_len as u64);
            if budget > 0 && after > budget {
                Delivery::OverBudget {
                    projected_month,
                    budget,
                }
            } else {
                Delivery::Parts(parts)
            }
        }
    }
}

/// The parts of `bundle` for the request `request`: each its result-topic suffix
/// (`{request}/part/{n}`) and its payload, a header line `outpost-part N of COUNT` (` last` on the
/// last one) and a slice of the bundle's bytes.
#[must_use]
pub fn parts(request: &str, bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
    let count = part_count(bundle.len());
    let size = MAX_PART_BYTES - MAX_PART_HEADER;
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let slice = &bundle[(n * size).min(bundle.len())..((n + 1) * size).min(bundle.len())];
        let mut header = format!("outpost-part {n} of {count}");
        if n + 1 == count {
            header += " last";
        }
        header.push('\n');
        let mut payload = Vec::with_capacity(header.len() + slice.len());
        payload.extend_from_slice(header.as_bytes());
        payload.extend_from_slice(slice);
        out.push((format!("{request}/part/{n}"), payload));
    }
    out
}

/// Reads a part back: its index, the count, whether it is marked last, and its bytes (what the
/// cloud does; the tests use it).
#[must_use]
pub fn read_part(payload: &[u8]) -> Option<(usize, usize, bool, &[u8])> {
    let end = payload.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&payload[..end]).ok()?;
    let mut words = header.split(' ');
    (words.next()? == "outpost-part").then_some(())?;
    let n = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let count = words.next()?.parse().ok()?;
    let last = words.next() == Some("last");
    Some((n, count, last, &payload[end + 1..]))
}

/// The bundle's `README.txt`: what each file holds.
#[must_use]
pub fn readme(gateway: &str, at_ms: i64, files: &[(&str, &str)]) -> String {
    let mut text = format!(
        "Outpost diagnostics bundle of gateway {gateway}, built at {at_ms} (Unix ms).\n\
         Every secret in the configuration is redacted (redactions.json lists where and why).\n\n"
    );
    for (name, what) in files {
        let _ = writeln!(text, "{name:<22} {what}");
    }
    text
}

#[cfg(test)]
mod tests;
