//! Signed artifacts: Ed25519 keys that carry a role, and the signed manifest (`ARTIFACT.sig`)
//! that binds an artifact's name, size, SHA-256, package, version and architecture to a key.
//!
//! Design: this module only parses, emits, signs and checks values. It never reads a file or a
//! clock (the `outpost-sign` and `outpost-update` binaries do, and hand it bytes and digests), so
//! every refusal below is a plain unit or property test.
//!
//! # Roles
//!
//! A key is made for one [`Role`] and the role is written into the key files and into every
//! manifest it signs. A verifier asks for a role: a manifest of another role, or one signed by a
//! trusted key of another role, is refused. The gateway's own update key therefore cannot
//! authorise node firmware, and a firmware key cannot install a package as root.
//!
//! # Key files (text, one field per line, in this order)
//!
//! ```text
//! outpost-key 1                  format and version
//! role gateway-update            the key's role
//! id 1f0c9a2e4b7d3c55            first 8 bytes of SHA-256(public key), hex: names the key
//! public <64 hex>                the Ed25519 public key
//! secret <64 hex>                the Ed25519 seed (private key files only, mode 0600)
//! ```
//!
//! A public key file may hold several keys, one block each, separated by a blank line: that
//! is how a key is rotated (see docs/self-update.md).
//!
//! # Manifest (`ARTIFACT.sig`)
//!
//! ```text
//! outpost-manifest 2             format and version (also separates the signed bytes' domain)
//! role gateway-update
//! key 1f0c9a2e4b7d3c55           the signing key's id
//! file outpost_0.2.0-1_arm64.deb the artifact's file name
//! size 2911234                   bytes, decimal
//! sha256 <64 hex>
//! package outpost
//! version 0.2.0-1
//! architecture arm64
//! floor 0.2.0-1                  the lowest version to accept from now on (anti-rollback)
//! expires 1798761600             Unix seconds after which the manifest is refused
//! signature <128 hex>            Ed25519 over every byte above this line
//! ```
//!
//! # Replay: expiry and floor ([`Validity`])
//!
//! A signature alone never goes stale: a superseded package (1.2, with a known flaw, after 1.3
//! was published) would stay installable forever on a unit still on 1.1. So every manifest
//! carries an expiry (checked against the verifier's wall clock, [`SignedManifest::verify`])
//! and a version floor, which the update agent keeps (the highest it has verified) and holds
//! every later artifact to, whatever its expiry. Format 1, which had neither, is refused.
//!
//! Canonical form only: lowercase hex, decimal without leading zeros, `\n` line ends, no extra
//! whitespace or lines. A parsed manifest is emitted again and must equal the input byte for
//! byte, so there is exactly one accepted encoding of each manifest and any changed byte is
//! refused (by the parser, or by the signature).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// What a key may sign. Written into key files and manifests as [`Role::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A Debian package of the gateway itself, installed as root by `outpost-update`.
    GatewayUpdate,
    /// A sensor node firmware image, proxied to the nodes by the gateway.
    Firmware,
    /// The gateway's own node-link identity: it signs handshakes with its nodes (a CHALLENGE),
    /// never a manifest. Made by the gateway itself on first start and kept on its disk.
    NodeLink,
    /// A manufacturing line's list of the nodes it made (uid, board, lot, public key): the
    /// `allowlist` enrollment policy takes only nodes a manifest signed by such a key lists.
    Manufacturer,
    /// An operator in the cloud: it signs remote commands to gateways (`outpost/{id}/cmd/{verb}`,
    /// `outpost_core::command`), never an artifact.
    Operator,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::GatewayUpdate,
        Role::Firmware,
        Role::NodeLink,
        Role::Manufacturer,
        Role::Operator,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::GatewayUpdate => "gateway-update",
            Role::Firmware => "firmware",
            Role::NodeLink => "node-link",
            Role::Manufacturer => "manufacturer",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (gateway-update, firmware, node-link, manufacturer or operator)")
            })
    }
}

/// A key's name: the first 8 bytes of SHA-256 over its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl KeyId {
    fn of(public: &VerifyingKey) -> KeyId {
        KeyId::of_bytes(public.as_bytes())
    }

    /// The id of a public key given as its bytes (e.g. a node's key as the store holds it).
    #[must_use]
    pub fn of_bytes(public: &[u8]) -> KeyId {
        let digest = Sha256::digest(public);
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

/// A private key with its role. Its `Debug` shows the role and id, never the secret.
pub struct SigningKey {
    role: Role,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("role", &self.role)
            .field("id", &self.public().id())
            .finish_non_exhaustive()
    }
}

/// A public key with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    role: Role,
    key: VerifyingKey,
}

/// Why a key file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("line {line}: expected `{expected}`")]
    Field { line: usize, expected: &'static str },
    #[error("line {line}: `{value}` is not {what}")]
    Value {
        line: usize,
        value: String,
        what: &'static str,
    },
    #[error("the key id does not match the public key (expected {expected})")]
    IdMismatch { expected: KeyId },
    #[error("the public key does not belong to the secret key")]
    PairMismatch,
    #[error("this is a public key file, not a private key")]
    NotSecret,
    #[error("no key in the file")]
    Empty,
    #[error("the key file is not in its canonical form (stray spaces, upper-case hex, CR?)")]
    NotCanonical,
}

impl SigningKey {
    /// The key made from a 32-byte Ed25519 seed (from the OS's random source in `keygen`).
    #[must_use]
    pub fn from_seed(role: Role, seed: &[u8; 32]) -> SigningKey {
        SigningKey {
            role,
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The Ed25519 key itself, for the one use its role allows outside manifests: the node-link
    /// handshake.
    #[must_use]
    pub fn ed25519(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }

    #[must_use]
    pub fn public(&self) -> PublicKey {
        PublicKey {
            role: self.role,
            key: self.key.verifying_key(),
        }
    }

    /// The private key file's text.
    #[must_use]
    pub fn emit(&self) -> String {
        format!(
            "{}secret {}\n",
            self.public().emit(),
            crate::hex::encode(self.key.as_bytes())
        )
    }

    /// Reads a private key file.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        let mut lines = Lines::new(text);
        let public = PublicKey::parse_block(&mut lines)?.ok_or(KeyError::Empty)?;
        let (line, value) = lines.field("secret").map_err(|e| match e {
            KeyError::Field { .. } if lines.at_end() => KeyError::NotSecret,
            other => other,
        })?;
        let seed = crate::hex::decode::<32>(value).ok_or_else(|| KeyError::Value {
            line,
            value: value.to_owned(),
            what: "32 bytes of lowercase hex",
        })?;
        let key = SigningKey::from_seed(public.role, &seed);
        if key.public() != public {
            return Err(KeyError::PairMismatch);
        }
        if !lines.at_end() || key.emit() != text {
            return Err(KeyError::NotCanonical);
        }
        Ok(key)
    }

    /// Signs an artifact's facts and how long they hold: the manifest takes this key's role and
    /// id.
    #[must_use]
    pub fn sign(&self, artifact: Artifact, validity: Validity) -> SignedManifest {
        let manifest = Manifest {
            role: self.role,
            key: self.public().id(),
            artifact,
            validity,
        };
        let signature = self.key.sign(manifest.signed_bytes().as_bytes());
        SignedManifest {
            manifest,
            signature: signature.to_bytes(),
        }
    }
}

impl PublicKey {
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The Ed25519 key itself, for what its role verifies outside update manifests (a node
    /// manifest).
    #[must_use]
    pub fn ed25519(&self) -> &VerifyingKey {
        &self.key
    }

    #[must_use]
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.key)
    }

    /// The public key file's text (one block).
    #[must_use]
    pub fn emit(&self) -> String {
        format!(
            "outpost-key 1\nrole {}\nid {}\npublic {}\n",
            self.role,
            self.id(),
            crate::hex::encode(self.key.as_bytes())
        )
    }

    /// Reads a public key file: one key or several, each block separated by one blank line.
    /// A private key file is refused (it is not something to hand out or to trust from).
    pub fn parse_all(text: &str) -> Result<Vec<PublicKey>, KeyError> {
        let mut lines = Lines::new(text);
        let mut keys = Vec::new();
        while let Some(key) = PublicKey::parse_block(&mut lines)? {
            if lines.peek_key() == Some("secret") {
                return Err(KeyError::Field {
                    line: lines.number + 1,
                    expected: "a public key file (this one holds a secret: keep it off the gateway)",
                });
            }
            keys.push(key);
            if lines.at_end() {
                break;
            }
            lines.blank()?;
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let canonical = keys
            .iter()
            .map(PublicKey::emit)
            .collect::<Vec<_>>()
            .join("\n");
        if canonical != text {
            return Err(KeyError::NotCanonical);
        }
        Ok(keys)
    }

    fn parse_block(lines: &mut Lines<'_>) -> Result<Option<PublicKey>, KeyError> {
        if lines.at_end() {
            return Ok(None);
        }
        let (line, format) = lines.field("outpost-key")?;
        if format != "1" {
            return Err(KeyError::Value {
                line,
                value: format.to_owned(),
                what: "a known key format (1)",
            });
        }
        let (line, role) = lines.field("role")?;
        let role = role.parse::<Role>().map_err(|_| KeyError::Value {
            line,
            value: role.to_owned(),
            what: "a role (gateway-update or firmware)",
        })?;
        let (id_line, id) = lines.field("id")?;
        let id = crate::hex::decode::<8>(id)
            .map(KeyId)
            .ok_or_else(|| KeyError::Value {
                line: id_line,
                value: id.to_owned(),
                what: "8 bytes of lowercase hex",
            })?;
        let (line, public) = lines.field("public")?;
        let key = crate::hex::decode::<32>(public)
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .ok_or_else(|| KeyError::Value {
                line,
                value: public.to_owned(),
                what: "an Ed25519 public key in lowercase hex",
            })?;
        let key = PublicKey { role, key };
        if key.id() != id {
            return Err(KeyError::IdMismatch { expected: key.id() });
        }
        Ok(Some(key))
    }
}

/// Why a text's signature trailer does not vouch for it ([`verify_trailer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailerError {
    /// The `signed-by` or `signature` line is not there.
    Missing {
        line: usize,
        expected: &'static str,
    },
    /// A line is there but malformed.
    Line {
        line: usize,
        message: &'static str,
    },
    /// The key id is not one of the trusted keys of the role.
    UnknownKey(KeyId),
    BadSignature,
}

/// Checks a text that ends with `signed-by <key id>` and `signature <128 hex>` lines (the node
/// manifest, a remote command): the key must be one of `keys` in `role`, and the signature
/// Ed25519 (strict) over every byte before the `signature` line. `lines` is the text split after
/// each LF, at least three of them. Returns the signer and the index of the `signed-by` line:
/// the signed fields are the lines between the first and it.
pub fn verify_trailer(
    text: &str,
    lines: &[&str],
    keys: &[PublicKey],
    role: Role,
) -> Result<(KeyId, usize), TrailerError> {
    let last = lines.len() - 1;
    let field = |i: usize| {
        lines[i].strip_suffix('\n').ok_or(TrailerError::Line {
            line: i + 1,
            message: "the line does not end with LF",
        })
    };
    let signature_hex = field(last)?
        .strip_prefix("signature ")
        .ok_or(TrailerError::Missing {
            line: last + 1,
            expected: "expected `signature <128 hex>`",
        })?;
    let signer_hex = field(last - 1)?
        .strip_prefix("signed-by ")
        .ok_or(TrailerError::Missing {
            line: last,
            expected: "expected `signed-by <key id>`",
        })?;
    let signature = crate::hex::decode::<64>(signature_hex).ok_or(TrailerError::Line {
        line: last + 1,
        message: "the signature is not 128 lower-case hex digits",
    })?;
    let signer = crate::hex::decode::<8>(signer_hex)
        .map(KeyId)
        .ok_or(TrailerError::Line {
            line: last,
            message: "the key id is not 16 lower-case hex digits",
        })?;
    let key = keys
        .iter()
        .find(|k| k.role == role && k.id() == signer)
        .ok_or(TrailerError::UnknownKey(signer))?;
    let signed_len: usize = lines[..last].iter().map(|l| l.len()).sum();
    key.key
        .verify_strict(
            &text.as_bytes()[..signed_len],
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| TrailerError::BadSignature)?;
    Ok((signer, last - 1))
}

/// What the signer vouches for about one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file name (no folders): the manifest is `FILE.sig` beside it.
    pub file: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// `outpost` for the gateway's package; the firmware's name for an image.
    pub package: String,
    /// A Debian version for packages (`0.2.0-1`); the firmware's version for an image.
    pub version: String,
    /// A Debian architecture (`arm64`, `amd64`); the board for an image.
    pub architecture: String,
}

impl Artifact {
    /// Checks that every field can be written into a manifest (one token per line, no spaces).
    pub fn check(&self) -> Result<(), ManifestError> {
        check_token("file", &self.file, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | '~' | '%')
        })?;
        if self.file.starts_with('.') {
            return Err(ManifestError::Token {
                field: "file",
                value: self.file.clone(),
            });
        }
        check_token("package", &self.package, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '+' | '-')
        })?;
        check_token("version", &self.version, version_char)?;
        check_token("architecture", &self.architecture, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })
    }
}

fn check_token(
    field: &'static str,
    value: &str,
    ok: impl Fn(char) -> bool,
) -> Result<(), ManifestError> {
    if value.is_empty() || value.len() > 200 || !value.chars().all(ok) {
        return Err(ManifestError::Token {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// How long, and above which version, a signature holds: what makes an old signed artifact
/// refusable after a newer one was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// The lowest version any artifact may have once this manifest was verified (a Debian
    /// version for packages; at most the artifact's own version). The agent keeps the highest
    /// floor it has verified; comparing versions is dpkg's business, so it is done there.
    pub floor: String,
    /// Unix seconds from which the manifest is refused.
    pub expires_unix_s: u64,
}

impl Validity {
    /// How long `outpost-sign sign` makes a manifest valid unless told otherwise: a fleet
    /// rollout (gateways on a monthly cellular window included) fits, and a superseded signed
    /// package stops being installable a month after it was signed.
    pub const DEFAULT_VALID_FOR_S: u64 = 30 * 24 * 3600;

    /// Checks that the floor can be written into a manifest.
    pub fn check(&self) -> Result<(), ManifestError> {
        check_token("floor", &self.floor, version_char)
    }
}

/// Before this (2026-11-01T00:00:00Z, when this code was written), a wall clock is not set: a
/// Raspberry Pi has no RTC and boots at 1970 (or at the time `fake-hwclock` saved) until NTP
/// answers. Expiry cannot be judged on such a clock, so an artifact is refused, not waved
/// through: a clock the attacker can hold back must not turn expiry off.
pub const CLOCK_SET_AFTER_UNIX_S: u64 = 1_793_491_200;

fn version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '~' | ':')
}

/// The signed facts: an artifact, how long they hold, the role it is for and the key that
/// signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub role: Role,
    pub key: KeyId,
    pub artifact: Artifact,
    pub validity: Validity,
}

impl Manifest {
    /// The exact bytes the signature covers.
    #[must_use]
    pub fn signed_bytes(&self) -> String {
        let a = &self.artifact;
        format!(
            "outpost-manifest 2\nrole {}\nkey {}\nfile {}\nsize {}\nsha256 {}\npackage {}\nversion {}\narchitecture {}\nfloor {}\nexpires {}\n",
            self.role,
            self.key,
            a.file,
            a.size,
            crate::hex::encode(&a.sha256),
            a.package,
            a.version,
            a.architecture,
            self.validity.floor,
            self.validity.expires_unix_s,
        )
    }
}

/// A manifest and its signature: the content of `ARTIFACT.sig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    manifest: Manifest,
    signature: [u8; 64],
}

/// The largest `.sig` file read (a manifest is ~450 bytes).
pub const MAX_MANIFEST_BYTES: usize = 4096;

/// Why a `.sig` file could not be read as a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("the manifest is not UTF-8 text")]
    NotText,
    #[error("line {line}: expected `{expected}`")]
    Field { line: usize, expected: &'static str },
    #[error("line {line}: `{value}` is not {what}")]
    Value {
        line: usize,
        value: String,
        what: &'static str,
    },
    #[error("`{value}` cannot be the manifest's {field}")]
    Token { field: &'static str, value: String },
    #[error(
        "manifest format 1 has no expiry and no version floor, so it could be replayed forever: \
         re-sign the artifact with a current outpost-sign"
    )]
    Format1,
    #[error(
        "the manifest is not in its canonical form (extra lines or spaces, upper-case hex, CR?)"
    )]
    NotCanonical,
}

impl SignedManifest {
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The `.sig` file's text.
    #[must_use]
    pub fn emit(&self) -> String {
        format!(
            "{}signature {}\n",
            self.manifest.signed_bytes(),
            crate::hex::encode(&self.signature)
        )
    }

    /// Reads a `.sig` file. Only the canonical encoding is accepted. This checks the form
    /// alone: trust comes from [`SignedManifest::verify`].
    pub fn parse(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotText)?;
        let mut lines = Lines::new(text);
        fn field<'a>(
            lines: &mut Lines<'a>,
            name: &'static str,
        ) -> Result<(usize, &'a str), ManifestError> {
            lines.field(name).map_err(|e| match e {
                KeyError::Field { line, expected } => ManifestError::Field { line, expected },
                _ => ManifestError::NotCanonical,
            })
        }
        let bad = |line: usize, value: &str, what: &'static str| ManifestError::Value {
            line,
            value: value.to_owned(),
            what,
        };
        let (line, format) = field(&mut lines, "outpost-manifest")?;
        if format == "1" {
            return Err(ManifestError::Format1);
        }
        if format != "2" {
            return Err(bad(line, format, "a known manifest format (2)"));
        }
        let (line, role) = field(&mut lines, "role")?;
        let role = role
            .parse::<Role>()
            .map_err(|_| bad(line, role, "a role"))?;
        let (line, key) = field(&mut lines, "key")?;
        let key = crate::hex::decode::<8>(key)
            .map(KeyId)
            .ok_or_else(|| bad(line, key, "a key id (8 bytes of lowercase hex)"))?;
        let (_, file) = field(&mut lines, "file")?;
        let (line, size) = field(&mut lines, "size")?;
        let size = size
            .parse::<u64>()
            .map_err(|_| bad(line, size, "a size in bytes"))?;
        let (line, sha256) = field(&mut lines, "sha256")?;
        let sha256 = crate::hex::decode::<32>(sha256)
            .ok_or_else(|| bad(line, sha256, "a SHA-256 (32 bytes of lowercase hex)"))?;
        let (_, package) = field(&mut lines, "package")?;
        let (_, version) = field(&mut lines, "version")?;
        let (_, architecture) = field(&mut lines, "architecture")?;
        let (_, floor) = field(&mut lines, "floor")?;
        let (line, expires) = field(&mut lines, "expires")?;
        let expires_unix_s = expires
            .parse::<u64>()
            .map_err(|_| bad(line, expires, "a time in Unix seconds"))?;
        let (line, signature) = field(&mut lines, "signature")?;
        let signature = crate::hex::decode::<64>(signature)
            .ok_or_else(|| bad(line, signature, "a signature (64 bytes of lowercase hex)"))?;
        let artifact = Artifact {
            file: file.to_owned(),
            size,
            sha256,
            package: package.to_owned(),
            version: version.to_owned(),
            architecture: architecture.to_owned(),
        };
        artifact.check()?;
        let validity = Validity {
            floor: floor.to_owned(),
            expires_unix_s,
        };
        validity.check()?;
        let signed = SignedManifest {
            manifest: Manifest {
                role,
                key,
                artifact,
                validity,
            },
            signature,
        };
        if !lines.at_end() || signed.emit() != text {
            return Err(ManifestError::NotCanonical);
        }
        Ok(signed)
    }

    /// Checks the manifest against the artifact that was found beside it: it is for `role`,
    /// signed by one of the `trusted` keys of that role, names this file with this size and
    /// digest, and has not expired at `now_unix_ms` (the verifier's wall clock; a clock before
    /// [`CLOCK_SET_AFTER_UNIX_S`] is not set, and nothing is trusted on it). Returns the trusted
    /// facts. The floor is the caller's to enforce: it needs the floor kept from earlier
    /// manifests and a version comparison.
    pub fn verify(
        &self,
        trusted: &[PublicKey],
        role: Role,
        found: &Found,
        now_unix_ms: i64,
    ) -> Result<&Manifest, VerifyError> {
        let manifest = &self.manifest;
        if manifest.role != role {
            return Err(VerifyError::WrongRole {
                expected: role,
                found: manifest.role,
            });
        }
        let by_id: Vec<&PublicKey> = trusted.iter().filter(|k| k.id() == manifest.key).collect();
        let Some(key) = by_id.iter().find(|k| k.role == role) else {
            return Err(match by_id.first() {
                Some(other) => VerifyError::KeyOfWrongRole {
                    key: manifest.key,
                    role: other.role,
                    expected: role,
                },
                None => VerifyError::UnknownKey { key: manifest.key },
            });
        };
        let signature = Signature::from_bytes(&self.signature);
        key.key
            .verify_strict(manifest.signed_bytes().as_bytes(), &signature)
            .map_err(|_| VerifyError::BadSignature { key: manifest.key })?;
        let a = &manifest.artifact;
        if a.file != found.file {
            return Err(VerifyError::NameMismatch {
                manifest: a.file.clone(),
                found: found.file.clone(),
            });
        }
        if a.size != found.size {
            return Err(VerifyError::SizeMismatch {
                manifest: a.size,
                found: found.size,
            });
        }
        if a.sha256 != found.sha256 {
            return Err(VerifyError::DigestMismatch);
        }
        let now_s = u64::try_from(now_unix_ms / 1000).unwrap_or(0);
        if now_s < CLOCK_SET_AFTER_UNIX_S {
            return Err(VerifyError::ClockNotSet { now_unix_s: now_s });
        }
        if now_s >= manifest.validity.expires_unix_s {
            return Err(VerifyError::Expired {
                expires_unix_s: manifest.validity.expires_unix_s,
                now_unix_s: now_s,
            });
        }
        Ok(manifest)
    }
}

/// The artifact as found on disk: what the manifest is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub file: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Found {
    /// The facts of an artifact held in memory.
    #[must_use]
    pub fn of_bytes(file: &str, bytes: &[u8]) -> Found {
        Found {
            file: file.to_owned(),
            size: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        }
    }
}

/// Why a signed manifest does not vouch for an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the manifest is for role {found}, not {expected}")]
    WrongRole { expected: Role, found: Role },
    #[error("signed by key {key}, which is a {role} key, not a {expected} key")]
    KeyOfWrongRole {
        key: KeyId,
        role: Role,
        expected: Role,
    },
    #[error("signed by key {key}, which is not a trusted key")]
    UnknownKey { key: KeyId },
    #[error("the signature by key {key} does not match the manifest")]
    BadSignature { key: KeyId },
    #[error("the manifest names `{manifest}`, not `{found}`")]
    NameMismatch { manifest: String, found: String },
    #[error("the artifact has {found} bytes, the manifest says {manifest}")]
    SizeMismatch { manifest: u64, found: u64 },
    #[error("the artifact's SHA-256 does not match the manifest's")]
    DigestMismatch,
    #[error(
        "the manifest expired at {expires_unix_s} (Unix seconds); the clock says {now_unix_s}: \
         a superseded artifact, or one held back too long (re-sign it to send it again)"
    )]
    Expired {
        expires_unix_s: u64,
        now_unix_s: u64,
    },
    #[error(
        "the wall clock is not set (it says {now_unix_s} Unix seconds, before \
         {CLOCK_SET_AFTER_UNIX_S}), so the manifest's expiry cannot be checked: send the \
         artifact again once the clock is synchronised"
    )]
    ClockNotSet { now_unix_s: u64 },
}

/// `name value` lines, read in a fixed order.
struct Lines<'a> {
    rest: &'a str,
    /// The number of the line last read (1-based).
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            rest: text,
            number: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    fn next_line(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = self.rest.split_once('\n').unwrap_or((self.rest, ""));
        self.rest = rest;
        self.number += 1;
        Some(line)
    }

    fn peek_key(&self) -> Option<&'a str> {
        let line = self.rest.split('\n').next()?;
        line.split_once(' ').map(|(k, _)| k)
    }

    /// The next line, which must be `name value`.
    fn field(&mut self, name: &'static str) -> Result<(usize, &'a str), KeyError> {
        let expected = name;
        let line = self.next_line().ok_or(KeyError::Field {
            line: self.number + 1,
            expected,
        })?;
        match line.split_once(' ') {
            Some((key, value)) if key == name => Ok((self.number, value)),
            _ => Err(KeyError::Field {
                line: self.number,
                expected,
            }),
        }
    }

    fn blank(&mut self) -> Result<(), KeyError> {
        match self.next_line() {
            Some("") => Ok(()),
            _ => Err(KeyError::Field {
                line: self.number,
                expected: "a blank line between keys",
            }),
        }
    }
}

#[cfg(test)]
mod tests;
