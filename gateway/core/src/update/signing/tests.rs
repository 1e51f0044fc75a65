use proptest::prelude::*;

use super::*;

fn key(role: Role, seed: u8) -> SigningKey {
    SigningKey::from_seed(role, &[seed; 32])
}

const PACKAGE: &[u8] = b"!<arch>\ndebian-binary   a stand-in for a .deb's bytes";

fn artifact_of(bytes: &[u8]) -> Artifact {
    let found = Found::of_bytes("outpost_0.2.0-1_arm64.deb", bytes);
    Artifact {
        file: found.file,
        size: found.size,
        sha256: found.sha256,
        package: "outpost".into(),
        version: "0.2.0-1".into(),
        architecture: "arm64".into(),
    }
}

/// A wall clock inside [`validity`]'s window, in Unix milliseconds.
const NOW_MS: i64 = 1_800_000_000_000;

/// Valid for a day from [`NOW_MS`]'s day, floor at the artifact's version.
fn validity() -> Validity {
    Validity {
        floor: "0.2.0-1".into(),
        expires_unix_s: 1_800_050_000,
    }
}

fn found(bytes: &[u8]) -> Found {
    Found::of_bytes("outpost_0.2.0-1_arm64.deb", bytes)
}

/// The `.sig` text for [`PACKAGE`], signed by the gateway-update key with seed 1.
fn signed_text() -> String {
    key(Role::GatewayUpdate, 1)
        .sign(artifact_of(PACKAGE), validity())
        .emit()
}

fn verify_text(
    sig: &[u8],
    trusted: &[PublicKey],
    role: Role,
    artifact: &[u8],
) -> Result<Manifest, String> {
    let signed = SignedManifest::parse(sig).map_err(|e| format!("parse: {e}"))?;
    signed
        .verify(trusted, role, &found(artifact), NOW_MS)
        .cloned()
        .map_err(|e| format!("verify: {e}"))
}

#[test]
fn a_signed_artifact_verifies_with_its_public_key() {
    let signer = key(Role::GatewayUpdate, 1);
    let manifest = verify_text(
        signed_text().as_bytes(),
        &[signer.public()],
        Role::GatewayUpdate,
        PACKAGE,
    )
    .unwrap();
    assert_eq!(manifest.role, Role::GatewayUpdate);
    assert_eq!(manifest.key, signer.public().id());
    assert_eq!(manifest.artifact, artifact_of(PACKAGE));
}

#[test]
fn the_manifest_is_line_per_field_text_in_a_fixed_order() {
    let text = signed_text();
    let keys: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().0).collect();
    assert_eq!(
        keys,
        [
            "outpost-manifest",
            "role",
            "key",
            "file",
            "size",
            "sha256",
            "package",
            "version",
            "architecture",
            "floor",
            "expires",
            "signature"
        ]
    );
    assert!(text.starts_with("outpost-manifest 2\nrole gateway-update\n"));
    assert!(text.contains("\nfloor 0.2.0-1\nexpires 1800050000\nsignature "));
    assert!(text.contains(&format!("\nsize {}\n", PACKAGE.len())));
}

#[test]
fn signing_is_deterministic() {
    // Ed25519 signatures need no randomness: the same key and facts give the same file.
    assert_eq!(signed_text(), signed_text());
}

#[test]
fn a_manifest_for_another_role_is_refused() {
    // A firmware key, trusted as a firmware key, signs a package: not a gateway update.
    let firmware = key(Role::Firmware, 2);
    let sig = firmware.sign(artifact_of(PACKAGE), validity()).emit();
    let err = verify_text(
        sig.as_bytes(),
        &[firmware.public(), key(Role::GatewayUpdate, 1).public()],
        Role::GatewayUpdate,
        PACKAGE,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "verify: the manifest is for role firmware, not gateway-update"
    );
}

#[test]
fn a_trusted_key_of_another_role_is_refused() {
    // The same key pair written once as gateway-update (signing) and once as firmware (the
    // only key the verifier holds): the role in the trusted key file decides.
    let signer = key(Role::GatewayUpdate, 3);
    let as_firmware = key(Role::Firmware, 3).public();
    assert_eq!(as_firmware.id(), signer.public().id());
    let sig = signer.sign(artifact_of(PACKAGE), validity()).emit();
    let err =
        verify_text(sig.as_bytes(), &[as_firmware], Role::GatewayUpdate, PACKAGE).unwrap_err();
    assert!(err.contains("which is a firmware key"), "{err}");
}

#[test]
fn a_manifest_by_an_unknown_key_is_refused() {
    let err = verify_text(
        signed_text().as_bytes(),
        &[key(Role::GatewayUpdate, 9).public()],
        Role::GatewayUpdate,
        PACKAGE,
    )
    .unwrap_err();
    assert!(err.contains("not a trusted key"), "{err}");
}

#[test]
fn a_manifest_for_another_file_name_is_refused() {
    let signed = SignedManifest::parse(signed_text().as_bytes()).unwrap();
    let mut elsewhere = found(PACKAGE);
    elsewhere.file = "outpost_0.1.0-1_arm64.deb".into();
    let err = signed
        .verify(
            &[key(Role::GatewayUpdate, 1).public()],
            Role::GatewayUpdate,
            &elsewhere,
            NOW_MS,
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::NameMismatch { .. }), "{err}");
}

#[test]
fn an_expired_manifest_is_refused_and_one_still_valid_is_not() {
    let signed = SignedManifest::parse(signed_text().as_bytes()).unwrap();
    let trusted = [key(Role::GatewayUpdate, 1).public()];
    let at = |unix_s: i64| {
        signed
            .verify(
                &trusted,
                Role::GatewayUpdate,
                &found(PACKAGE),
                unix_s * 1000,
            )
            .map(|_| ())
    };
    assert_eq!(at(1_800_049_999), Ok(()), "the last valid second");
    assert_eq!(
        at(1_800_050_000),
        Err(VerifyError::Expired {
            expires_unix_s: 1_800_050_000,
            now_unix_s: 1_800_050_000
        })
    );
    let err = at(1_900_000_000).unwrap_err().to_string();
    assert!(err.contains("expired at 1800050000"), "{err}");
}

#[test]
fn on_a_clock_that_is_not_set_nothing_is_trusted() {
    // A Pi without RTC before NTP answered: 1970, or a saved time older than this code.
    let signed = SignedManifest::parse(signed_text().as_bytes()).unwrap();
    let trusted = [key(Role::GatewayUpdate, 1).public()];
    for now_ms in [0, 5_000, (CLOCK_SET_AFTER_UNIX_S as i64 - 1) * 1000, -1] {
        let err = signed
            .verify(&trusted, Role::GatewayUpdate, &found(PACKAGE), now_ms)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::ClockNotSet { .. }),
            "{now_ms}: {err}"
        );
    }
}

#[test]
fn a_format_1_manifest_without_expiry_or_floor_is_refused() {
    // What an older outpost-sign wrote: the same fields, no floor, no expiry, signed as such.
    let signer = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let a = artifact_of(PACKAGE);
    let body = format!(
        "outpost-manifest 1\nrole gateway-update\nkey {}\nfile {}\nsize {}\nsha256 {}\npackage {}\nversion {}\narchitecture {}\n",
        key(Role::GatewayUpdate, 1).public().id(),
        a.file,
        a.size,
        crate::hex::encode(&a.sha256),
        a.package,
        a.version,
        a.architecture
    );
    let signature = signer.sign(body.as_bytes()).to_bytes();
    let old = format!("{body}signature {}\n", crate::hex::encode(&signature));
    assert_eq!(
        SignedManifest::parse(old.as_bytes()).unwrap_err(),
        ManifestError::Format1
    );
}

#[test]
fn a_lowered_floor_or_a_later_expiry_breaks_the_signature() {
    let trusted = [key(Role::GatewayUpdate, 1).public()];
    for text in [
        signed_text().replace("floor 0.2.0-1", "floor 0.1.0-1"),
        signed_text().replace("expires 1800050000", "expires 1900050000"),
    ] {
        let err = verify_text(text.as_bytes(), &trusted, Role::GatewayUpdate, PACKAGE).unwrap_err();
        assert!(err.contains("signature"), "{err}");
    }
    let mut bad = validity();
    bad.floor = "0.1 0".into();
    assert!(bad.check().is_err());
}

#[test]
fn a_forged_signature_with_a_rewritten_field_is_refused() {
    // Version bumped in the text (still canonical): the signature no longer covers it.
    let text = signed_text().replace("version 0.2.0-1", "version 9.9.9-1");
    let err = verify_text(
        text.as_bytes(),
        &[key(Role::GatewayUpdate, 1).public()],
        Role::GatewayUpdate,
        PACKAGE,
    )
    .unwrap_err();
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn only_the_canonical_encoding_parses() {
    let text = signed_text();
    for variant in [
        text.replace('\n', "\r\n"),
        text.replace("size ", "size  "),
        format!("{text}\n"),
        format!("# comment\n{text}"),
        text.to_uppercase(),
        text.replace(
            &format!("size {}", PACKAGE.len()),
            &format!("size 0{}", PACKAGE.len()),
        ),
        text.trim_end().to_owned(),
    ] {
        assert!(
            SignedManifest::parse(variant.as_bytes()).is_err(),
            "accepted:\n{variant}"
        );
    }
    assert!(SignedManifest::parse(&vec![b'a'; MAX_MANIFEST_BYTES + 1]).is_err());
}

#[test]
fn key_files_round_trip_and_hold_their_role() {
    let signer = key(Role::Firmware, 4);
    let secret = signer.emit();
    assert!(secret.starts_with("outpost-key 1\nrole firmware\nid "));
    let back = SigningKey::parse(&secret).unwrap();
    assert_eq!(back.public(), signer.public());
    assert_eq!(back.role(), Role::Firmware);
    let public = signer.public().emit();
    assert!(!public.contains("secret"));
    assert_eq!(PublicKey::parse_all(&public).unwrap(), [signer.public()]);
    // A private key file is not a public key file, and the other way round.
    assert!(PublicKey::parse_all(&secret).is_err());
    assert_eq!(SigningKey::parse(&public).unwrap_err(), KeyError::NotSecret);
    // Debug never shows the secret.
    let debug = format!("{signer:?}");
    assert!(!debug.contains(&crate::hex::encode(&[4; 32])), "{debug}");
}

#[test]
fn a_public_key_file_may_hold_several_keys_for_rotation() {
    let old = key(Role::GatewayUpdate, 5).public();
    let new = key(Role::GatewayUpdate, 6).public();
    let file = format!("{}\n{}", old.emit(), new.emit());
    assert_eq!(PublicKey::parse_all(&file).unwrap(), [old, new.clone()]);
    // Signed by the new key: verified against the file holding both.
    let sig = key(Role::GatewayUpdate, 6)
        .sign(artifact_of(PACKAGE), validity())
        .emit();
    let trusted = PublicKey::parse_all(&file).unwrap();
    verify_text(sig.as_bytes(), &trusted, Role::GatewayUpdate, PACKAGE).unwrap();
}

#[test]
fn a_key_file_with_a_wrong_id_is_refused() {
    let public = key(Role::GatewayUpdate, 7).public().emit();
    let id = key(Role::GatewayUpdate, 7).public().id().to_string();
    let wrong = public.replace(&id, "0000000000000000");
    assert!(matches!(
        PublicKey::parse_all(&wrong),
        Err(KeyError::IdMismatch { .. })
    ));
}

#[test]
fn artifact_fields_with_spaces_or_line_breaks_cannot_be_signed() {
    for (field, value) in [
        ("file", "outpost 1.deb"),
        ("file", ".hidden.deb"),
        ("file", "../outpost.deb"),
        ("version", "1.0\nrole firmware"),
        ("package", ""),
        ("architecture", "ARM64"),
    ] {
        let mut a = artifact_of(PACKAGE);
        match field {
            "file" => a.file = value.into(),
            "version" => a.version = value.into(),
            "package" => a.package = value.into(),
            _ => a.architecture = value.into(),
        }
        assert!(a.check().is_err(), "{field} = {value:?} accepted");
    }
    assert!(artifact_of(PACKAGE).check().is_ok());
}

#[test]
fn every_single_bit_flip_anywhere_in_the_manifest_is_refused() {
    // Exhaustive over the manifest: each byte, each bit (the property tests below sample any
    // byte value; this one covers every position).
    let trusted = [key(Role::GatewayUpdate, 1).public()];
    let text = signed_text().into_bytes();
    for index in 0..text.len() {
        for bit in 0..8 {
            let mut sig = text.clone();
            sig[index] ^= 1 << bit;
            assert!(
                verify_text(&sig, &trusted, Role::GatewayUpdate, PACKAGE).is_err(),
                "byte {index} bit {bit} accepted"
            );
        }
    }
}

proptest! {
    #[test]
    fn any_changed_byte_in_the_artifact_is_refused(index in 0..PACKAGE.len(), flip in 1..=255u8) {
        let mut artifact = PACKAGE.to_vec();
        artifact[index] ^= flip;
        let result = verify_text(
            signed_text().as_bytes(),
            &[key(Role::GatewayUpdate, 1).public()],
            Role::GatewayUpdate,
            &artifact,
        );
        prop_assert!(result.is_err());
    }

    #[test]
    fn any_changed_byte_in_the_manifest_is_refused(index in 0..450usize, flip in 1..=255u8) {
        let mut sig = signed_text().into_bytes();
        let index = index % sig.len();
        sig[index] ^= flip;
        let result = verify_text(
            &sig,
            &[key(Role::GatewayUpdate, 1).public()],
            Role::GatewayUpdate,
            PACKAGE,
        );
        prop_assert!(result.is_err(), "byte {} ^ {:#04x} accepted", index, flip);
    }

    #[test]
    fn a_truncated_or_extended_artifact_is_refused(cut in 0..PACKAGE.len(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let trusted = [key(Role::GatewayUpdate, 1).public()];
        prop_assert!(verify_text(signed_text().as_bytes(), &trusted, Role::GatewayUpdate, &PACKAGE[..cut]).is_err());
        let mut longer = PACKAGE.to_vec();
        longer.extend(extra);
        prop_assert!(verify_text(signed_text().as_bytes(), &trusted, Role::GatewayUpdate, &longer).is_err());
    }

    #[test]
    fn the_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedManifest::parse(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = PublicKey::parse_all(text);
            let _ = SigningKey::parse(text);
        }
    }
}
