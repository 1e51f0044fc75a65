use super::*;
use crate::update::signing::{Artifact, SigningKey, Validity};

const NOW_MS: i64 = 1_796_200_000_000;

fn fleet() -> SigningKey {
    SigningKey::from_seed(Role::Firmware, &[5; 32])
}

fn image() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8).collect()
}

fn signed(key: &SigningKey, version: &str, floor: &str, board: &str) -> (SignedManifest, Found) {
    let found = Found::of_bytes("node-1.2.0.bin", &image());
    let manifest = key.sign(
        Artifact {
            file: found.file.clone(),
            size: found.size,
            sha256: found.sha256,
            package: PACKAGE.into(),
            version: version.into(),
            architecture: board.into(),
        },
        Validity {
            floor: floor.into(),
            expires_unix_s: 1_796_300_000,
        },
    );
    // What goes over the wire is the text: read it back as the gateway does.
    (
        SignedManifest::parse(manifest.emit().as_bytes()).unwrap(),
        found,
    )
}

fn expect(keys: &[PublicKey]) -> Expect<'_> {
    Expect {
        keys,
        hw_rev: Some(2),
        floor: Some(FwVersion {
            major: 1,
            minor: 1,
            patch: 0,
        }),
        now_unix_ms: NOW_MS,
    }
}

#[test]
fn a_signed_image_for_this_board_above_the_floor_is_admitted() {
    let key = fleet();
    let keys = [key.public()];
    let (manifest, found) = signed(&key, "1.2.0", "1.1.5", "rp2040-hw2");
    let firmware = admit(&manifest, &found, &expect(&keys)).unwrap();
    assert_eq!(firmware.version.to_string(), "1.2.0");
    assert_eq!(firmware.floor.to_string(), "1.1.5");
    assert_eq!(firmware.hw_rev, 2);
    assert_eq!(firmware.size, 4096);
}

#[test]
fn each_refusal_is_named_before_any_byte_moves() {
    let key = fleet();
    let keys = [key.public()];
    let refusal = |version: &str, floor: &str, board: &str| {
        let (manifest, found) = signed(&key, version, floor, board);
        admit(&manifest, &found, &expect(&keys)).unwrap_err()
    };
    assert_eq!(
        refusal("1.2.0", "1.2.0", "rp2040-hw3"),
        Refusal::WrongHardware {
            image: 3,
            wanted: 2
        }
    );
    assert_eq!(
        refusal("1.0.9", "1.0.9", "rp2040-hw2").as_str(),
        "below-floor"
    );
    assert_eq!(
        refusal("1.3.0", "1.4.0", "rp2040-hw2").as_str(),
        "below-floor"
    );
    assert_eq!(refusal("1.2", "1.2", "rp2040-hw2").as_str(), "not-firmware");
    assert_eq!(refusal("1.2.0", "1.2.0", "arm64").as_str(), "not-firmware");
    assert_eq!(
        refusal("1.2.0", "1.2.0", "rp2040-hw02").as_str(),
        "not-firmware"
    );

    // A truncated image: its size and digest no longer match what was signed.
    let (manifest, mut found) = signed(&key, "1.2.0", "1.2.0", "rp2040-hw2");
    let bytes = image();
    found = Found::of_bytes(&found.file, &bytes[..bytes.len() - 1]);
    let truncated = admit(&manifest, &found, &expect(&keys)).unwrap_err();
    assert_eq!(truncated.as_str(), "damaged", "{truncated}");

    // Another fleet's key; a gateway-update key with the same seed.
    let other = SigningKey::from_seed(Role::Firmware, &[6; 32]);
    let (manifest, found) = signed(&other, "1.2.0", "1.2.0", "rp2040-hw2");
    assert_eq!(
        admit(&manifest, &found, &expect(&keys))
            .unwrap_err()
            .as_str(),
        "bad-signature"
    );
    let update_key = SigningKey::from_seed(Role::GatewayUpdate, &[5; 32]);
    let (manifest, found) = signed(&update_key, "1.2.0", "1.2.0", "rp2040-hw2");
    let update_keys = [update_key.public()];
    assert_eq!(
        admit(&manifest, &found, &expect(&update_keys))
            .unwrap_err()
            .as_str(),
        "bad-signature"
    );

    // Expired by the gateway's clock.
    let (manifest, found) = signed(&key, "1.2.0", "1.2.0", "rp2040-hw2");
    let late = Expect {
        now_unix_ms: 1_796_300_000_000,
        ..expect(&keys)
    };
    assert_eq!(
        admit(&manifest, &found, &late).unwrap_err().as_str(),
        "expired"
    );

    // Larger than a slot: refused before hashing matters.
    let big = Found {
        size: MAX_IMAGE_BYTES + 1,
        ..found
    };
    assert_eq!(
        admit(&manifest, &big, &expect(&keys)).unwrap_err().as_str(),
        "too-large"
    );
}

#[test]
fn versions_and_boards_have_one_spelling() {
    assert_eq!(parse_version("0.10.255").unwrap().to_string(), "0.10.255");
    for bad in ["1.2", "1.2.3.4", "01.2.3", "1.2.256", "1.-2.3", "", "a.b.c"] {
        assert!(parse_version(bad).is_err(), "{bad}");
    }
    assert_eq!(hw_rev_of(&board(0)), Some(0));
    assert_eq!(hw_rev_of(&board(255)), Some(255));
    assert_eq!(hw_rev_of("rp2040-hw256"), None);
    assert_eq!(hw_rev_of("rp2040-hw"), None);
}
