//! The manufacturing manifest: which nodes a site may enrol under the `allowlist` policy.
//!
//! A manufacturing line that flashes nodes records, for each, its uid (the RP2040's flash id),
//! board revision, lot and the public half of the key the node made for itself, and signs the
//! list with its manufacturer key (role `manufacturer`, `outpost-sign keygen --role
//! manufacturer`). The gateway takes a node under `allowlist` only if a manifest signed by a
//! configured manufacturer key lists it with the key it proves it holds and its board revision.
//!
//! ```text
//! outpost-node-manifest 1
//! node 0123456789abcdef hw 2 lot L2026-11 key 3d40…(64 hex)
//! node …
//! signed-by 1f2e3d4c5b6a7988
//! signature 9a…(128 hex)
//! ```
//!
//! The signature is Ed25519 over every byte before the `signature` line (`signed-by` included,
//! so a manifest names the key that vouches for it). Strict form: LF line ends, lower-case hex,
//! single spaces, no blank lines; anything else is refused with its line number.

use std::collections::BTreeMap;

use ed25519_dalek::Signer as _;

use crate::update::signing::{KeyId, PublicKey, Role, SigningKey, TrailerError, verify_trailer};

const MAGIC: &str = "outpost-node-manifest 1";

/// A node a manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub uid: [u8; 8],
    pub hw_rev: u8,
    pub lot: String,
    pub public_key: [u8; 32],
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("signed by key {0}, which is not a configured manufacturer key")]
    UnknownKey(KeyId),
    #[error("the signature does not verify: the manifest was changed after it was signed")]
    BadSignature,
    #[error("uid {0} is listed twice")]
    Duplicate(String),
}

fn line_error(line: usize, message: impl Into<String>) -> ManifestError {
    ManifestError::Line {
        line,
        message: message.into(),
    }
}

/// The body's text for `nodes`, ready to sign (everything before `signed-by`).
fn body(nodes: &[Listed]) -> String {
    let mut text = format!("{MAGIC}\n");
    for n in nodes {
        text += &format!(
            "node {} hw {} lot {} key {}\n",
            crate::hex::encode(&n.uid),
            n.hw_rev,
            n.lot,
            crate::hex::encode(&n.public_key)
        );
    }
    text
}

/// Signs `nodes` with a manufacturer key: the manifest file's text.
pub fn sign(key: &SigningKey, nodes: &[Listed]) -> Result<String, ManifestError> {
    if key.role() != Role::Manufacturer {
        return Err(line_error(
            0,
            format!("a {} key cannot sign a node manifest", key.role()),
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        check_lot(&n.lot).map_err(|m| line_error(i + 2, m))?;
    }
    let signed = format!("{}signed-by {}\n", body(nodes), key.public().id());
    let signature = key.ed25519().sign(signed.as_bytes());
    Ok(format!(
        "{signed}signature {}\n",
        crate::hex::encode(&signature.to_bytes())
    ))
}

fn check_lot(lot: &str) -> Result<(), String> {
    if lot.is_empty()
        || lot.len() > 16
        || !lot
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!("lot `{lot}` must be 1 to 16 of A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

/// Reads a manifest and checks its signature against `keys` (manufacturer keys only).
pub fn verify(text: &str, keys: &[PublicKey]) -> Result<Vec<Listed>, ManifestError> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines.len() < 3 {
        return Err(line_error(
            lines.len(),
            "too short: a manifest ends with signed-by and signature lines",
        ));
    }
    let field = |i: usize| -> Result<&str, ManifestError> {
        lines[i]
            .strip_suffix('\n')
            .ok_or_else(|| line_error(i + 1, "the line does not end with LF"))
    };
    if field(0)? != MAGIC {
        return Err(line_error(1, format!("expected `{MAGIC}`")));
    }
    let (_, signed_by) =
        verify_trailer(text, &lines, keys, Role::Manufacturer).map_err(|e| match e {
            TrailerError::Missing { line, expected } => line_error(line, expected),
            TrailerError::Line { line, message } => line_error(line, message),
            TrailerError::UnknownKey(key) => ManifestError::UnknownKey(key),
            TrailerError::BadSignature => ManifestError::BadSignature,
        })?;
    let mut nodes = BTreeMap::new();
    for (i, line) in lines.iter().enumerate().take(signed_by).skip(1) {
        let listed = parse_node(line.trim_end_matches('\n')).map_err(|m| line_error(i + 1, m))?;
        let uid = crate::hex::encode(&listed.uid);
        if nodes.insert(listed.uid, listed).is_some() {
            return Err(ManifestError::Duplicate(uid));
        }
    }
    Ok(nodes.into_values().collect())
}

fn parse_node(line: &str) -> Result<Listed, String> {
    let words: Vec<&str> = line.split(' ').collect();
    let ["node", uid, "hw", hw_rev, "lot", lot, "key", key] = words.as_slice() else {
        return Err("expected `node <uid> hw <rev> lot <lot> key <public key>`".into());
    };
    let uid = crate::hex::decode::<8>(uid).ok_or("the uid is not 16 lower-case hex digits")?;
    let hw_rev = hw_rev
        .parse::<u8>()
        .map_err(|_| format!("hw `{hw_rev}` is not 0 to 255"))?;
    check_lot(lot)?;
    let public_key =
        crate::hex::decode::<32>(key).ok_or("the key is not 64 lower-case hex digits")?;
    Ok(Listed {
        uid,
        hw_rev,
        lot: (*lot).to_owned(),
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(uid: u8) -> Listed {
        Listed {
            uid: [uid; 8],
            hw_rev: 2,
            lot: "L2026-11".into(),
            public_key: [uid ^ 0x55; 32],
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_lists_its_nodes() {
        let key = SigningKey::from_seed(Role::Manufacturer, &[7; 32]);
        let text = sign(&key, &[listed(1), listed(2)]).unwrap();
        assert_eq!(
            verify(&text, &[key.public()]).unwrap(),
            vec![listed(1), listed(2)]
        );
    }

    #[test]
    fn a_changed_byte_an_unknown_key_or_another_role_is_refused() {
        let key = SigningKey::from_seed(Role::Manufacturer, &[7; 32]);
        let text = sign(&key, &[listed(1)]).unwrap();
        // Another node's key swapped in after signing.
        let forged = text.replacen(
            &crate::hex::encode(&[0x54; 32]),
            &crate::hex::encode(&[0x99; 32]),
            1,
        );
        assert_ne!(forged, text);
        assert_eq!(
            verify(&forged, &[key.public()]),
            Err(ManifestError::BadSignature)
        );
        let other = SigningKey::from_seed(Role::Manufacturer, &[8; 32]);
        assert!(matches!(
            verify(&text, &[other.public()]),
            Err(ManifestError::UnknownKey(_))
        ));
        // A firmware key with the same seed is not a manufacturer key.
        let firmware = SigningKey::from_seed(Role::Firmware, &[7; 32]);
        assert!(sign(&firmware, &[listed(1)]).is_err());
        assert!(matches!(
            verify(&text, &[firmware.public()]),
            Err(ManifestError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_malformed_line_is_named() {
        let key = SigningKey::from_seed(Role::Manufacturer, &[7; 32]);
        let text = sign(&key, &[listed(1)])
            .unwrap()
            .replace(" hw 2 ", " hw two ");
        // The signature fails first: what was signed is checked before it is read.
        assert_eq!(
            verify(&text, &[key.public()]),
            Err(ManifestError::BadSignature)
        );
        assert!(matches!(
            verify("outpost-node-manifest 1\n", &[key.public()]),
            Err(ManifestError::Line { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics_on_any_text(text in "(?s).{0,400}") {
            let key = SigningKey::from_seed(Role::Manufacturer, &[7; 32]);
            let _ = verify(&text, &[key.public()]);
        }
    }
}
