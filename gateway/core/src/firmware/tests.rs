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

mod the_node_agrees {
    //! A node checks the manifest again with its own no_std parser
    //! (`outpost_proto::manifest::check`): whatever was signed, the two answer alike.
    use super::*;
    use outpost_proto::manifest::{self, ManifestRefusal};
    use proptest::prelude::*;

    fn version_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u16..=300, 0u16..=300, 0u16..=300).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
            Just("01.2.3".to_string()),
            Just("1.2".to_string()),
            Just("1.2.3.4".to_string()),
            Just("1.2.3-rc1".to_string()),
        ]
    }

    fn board_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u16..=300).prop_map(|r| format!("rp2040-hw{r}")),
            Just("rp2040-hw02".to_string()),
            Just("rp2040".to_string()),
            Just("esp32-hw1".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn gateway_and_node_take_and_refuse_the_same_manifests(
            version in version_text(),
            floor in version_text(),
            board in board_text(),
            package in prop_oneof![Just(PACKAGE.to_string()), Just("outpost".to_string())],
            role in prop_oneof![Just(Role::Firmware), Just(Role::GatewayUpdate)],
            stranger in any::<bool>(),
        ) {
            let fleet = fleet();
            let signer = if stranger {
                SigningKey::from_seed(role, &[9; 32])
            } else {
                SigningKey::from_seed(role, &[5; 32])
            };
            let found = Found::of_bytes("node.bin", &image());
            let text = signer
                .sign(
                    Artifact {
                        file: found.file.clone(),
                        size: found.size,
                        sha256: found.sha256,
                        package,
                        version,
                        architecture: board,
                    },
                    Validity { floor, expires_unix_s: 1_796_300_000 },
                )
                .emit();
            let keys = [fleet.public()];
            let gateway = SignedManifest::parse(text.as_bytes())
                .map_err(|_| "bad-signature")
                .and_then(|m| {
                    admit(&m, &found, &Expect { keys: &keys, hw_rev: None, floor: None, now_unix_ms: NOW_MS })
                        .map_err(|r| r.as_str())
                });
            let node_keys = [fleet.public().ed25519().to_bytes()];
            let node = manifest::check(text.as_bytes(), &node_keys);
            match (gateway, node) {
                (Ok(g), Ok(n)) => {
                    prop_assert_eq!(u64::from(n.size), g.size);
                    prop_assert_eq!(n.sha256, g.sha256);
                    prop_assert_eq!(n.version, g.version);
                    prop_assert_eq!(n.floor, g.floor);
                    prop_assert_eq!(n.hw_rev, g.hw_rev);
                }
                (Err(g), Err(n)) => prop_assert_eq!(g, n.as_str()),
                (g, n) => prop_assert!(false, "gateway {:?}, node {:?}", g, n),
            }
        }
    }

    #[test]
    fn a_manifest_wrong_in_form_and_in_floor_is_refused_for_its_form_by_both() {
        let key = fleet();
        // A floor above the version, and a board spelled with a leading zero.
        let (manifest, found) = signed(&key, "0.0.0", "0.0.1", "rp2040-hw02");
        let keys = [key.public()];
        let gateway = admit(&manifest, &found, &expect(&keys)).unwrap_err();
        let node = manifest::check(
            manifest.emit().as_bytes(),
            &[key.public().ed25519().to_bytes()],
        )
        .unwrap_err();
        assert_eq!(
            (gateway.as_str(), node.as_str()),
            ("not-firmware", "not-firmware")
        );
    }

    #[test]
    fn a_changed_byte_is_refused_by_the_node() {
        let key = fleet();
        let (manifest, _) = signed(&key, "1.2.0", "1.1.5", "rp2040-hw2");
        let text = manifest.emit().into_bytes();
        let node_keys = [key.public().ed25519().to_bytes()];
        assert!(manifest::check(&text, &node_keys).is_ok());
        for i in 0..text.len() {
            let mut changed = text.clone();
            changed[i] ^= 0x01;
            assert_eq!(
                manifest::check(&changed, &node_keys),
                Err(ManifestRefusal::BadSignature),
                "byte {i}"
            );
        }
        assert_eq!(
            manifest::check(&text, &[[7; 32]]),
            Err(ManifestRefusal::BadSignature)
        );
    }
}
