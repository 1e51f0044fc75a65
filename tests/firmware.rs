//! `outpost firmware` as a release engineer and a technician use it: a fleet key, a signed image,
//! and every refusal a gateway makes before a byte of an image goes to a node, each with its
//! reason on the command line (a bad signature, another hardware revision, below the floor, a
//! truncated image, a key of another role).

use std::path::Path;
use std::process::{Command, Output};

use outpost_e2e::bin;

fn outpost(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = Command::new(bin("outpost"));
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The command failed, and said why: its stderr.
fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_signed_image_verifies_and_every_refusal_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(outpost(&["firmware", "keygen", "--out"], &[&keys]));
    let secret = keys.join("firmware.key");
    let public = keys.join("firmware.pub");
    let image = dir.path().join("node-1.2.0.bin");
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&image, &bytes).unwrap();

    let said = ok(outpost(
        &[
            "firmware",
            "sign",
            "--version",
            "1.2.0",
            "--hw-rev",
            "2",
            "--floor",
            "1.1.0",
            "--key",
        ],
        &[&secret, &image],
    ));
    assert!(said.contains("firmware 1.2.0 for rp2040-hw2"), "{said}");
    let verify = |extra: &[&str]| {
        let mut args = vec!["firmware", "verify"];
        args.extend_from_slice(extra);
        args.push("--key");
        outpost(&args, &[&public, &image])
    };
    let said = ok(verify(&["--hw-rev", "2", "--floor", "1.1.0"]));
    assert!(
        said.contains("verified: firmware 1.2.0 for hardware revision 2"),
        "{said}"
    );

    // Another hardware revision; below the floor in force.
    let why = refused(verify(&["--hw-rev", "3"]));
    assert!(
        why.contains("wrong-hardware") && why.contains("revision 2"),
        "{why}"
    );
    let why = refused(verify(&["--floor", "1.3.0"]));
    assert!(
        why.contains("below-floor") && why.contains("1.3.0"),
        "{why}"
    );

    // A truncated image.
    std::fs::write(&image, &bytes[..bytes.len() - 100]).unwrap();
    let why = refused(verify(&[]));
    assert!(why.contains("damaged"), "{why}");
    std::fs::write(&image, &bytes).unwrap();
    ok(verify(&[]));

    // Signed by another fleet's key: refused by this fleet's.
    let other = dir.path().join("other");
    ok(outpost(&["firmware", "keygen", "--out"], &[&other]));
    ok(outpost(
        &[
            "firmware",
            "sign",
            "--version",
            "1.2.0",
            "--hw-rev",
            "2",
            "--key",
        ],
        &[&other.join("firmware.key"), &image],
    ));
    let why = refused(verify(&[]));
    assert!(why.contains("bad-signature"), "{why}");

    // A key of another role cannot sign an image at all.
    let operator = dir.path().join("operator");
    ok(Command::new(bin("outpost-sign"))
        .args(["keygen", "--role", "operator", "--out"])
        .arg(&operator)
        .output()
        .unwrap());
    let why = refused(outpost(
        &[
            "firmware",
            "sign",
            "--version",
            "1.2.0",
            "--hw-rev",
            "2",
            "--key",
        ],
        &[&operator.join("operator.key"), &image],
    ));
    assert!(why.contains("operator key"), "{why}");

    // The secret is never readable by others, and never overwritten.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    refused(outpost(&["firmware", "keygen", "--out"], &[&keys]));
}
