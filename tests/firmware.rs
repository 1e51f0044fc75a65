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

/// `outpost firmware sign --version V --hw-rev R [extra] --key KEY IMAGE`.
fn sign(key: &Path, image: &Path, version: &str, hw_rev: &str, extra: &[&str]) -> Output {
    let mut args = vec!["firmware", "sign", "--version", version, "--hw-rev", hw_rev];
    args.extend_from_slice(extra);
    args.push("--key");
    outpost(&args, &[key, image])
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

    let said = ok(sign(&secret, &image, "1.2.0", "2", &["--floor", "1.1.0"]));
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
    ok(sign(&other.join("firmware.key"), &image, "1.2.0", "2", &[]));
    let why = refused(verify(&[]));
    assert!(why.contains("bad-signature"), "{why}");

    // A key of another role cannot sign an image at all.
    let operator = dir.path().join("operator");
    ok(Command::new(bin("outpost-sign"))
        .args(["keygen", "--role", "operator", "--out"])
        .arg(&operator)
        .output()
        .unwrap());
    let why = refused(sign(
        &operator.join("operator.key"),
        &image,
        "1.2.0",
        "2",
        &[],
    ));
    assert!(why.contains("operator key"), "{why}");

    // The secret is never readable by others, and never overwritten.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    refused(outpost(&["firmware", "keygen", "--out"], &[&keys]));
}

/// The gateway's firmware library: only admitted images go in, within the cap; a refused one
/// leaves nothing; a listing checks every image again.
#[test]
fn the_library_takes_only_admitted_images_within_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(outpost(&["firmware", "keygen", "--out"], &[&keys]));
    let secret = keys.join("firmware.key");
    let data = dir.path().join("data");
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"lib-test\"\ndata_dir = \"{}\"\n\n[ota]\nfirmware_keys = [\"{}\"]\nlibrary_max_bytes = {}\n",
            data.display(),
            keys.join("firmware.pub").display(),
            600 * 1024
        ),
    )
    .unwrap();
    let image = |name: &str, version: &str| {
        let path = dir.path().join(name);
        let bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        ok(sign(&secret, &path, version, "2", &[]));
        path
    };
    let library = |args: &[&str], path: Option<&Path>| {
        let mut all = vec!["firmware"];
        all.extend_from_slice(args);
        all.push("--config");
        let mut paths: Vec<&Path> = vec![&config];
        paths.extend(path);
        outpost(&all, &paths)
    };
    let first = image("node-1.0.0.bin", "1.0.0");
    let said = ok(library(&["add"], Some(&first)));
    assert!(
        said.contains("added node-1.0.0.bin: firmware 1.0.0"),
        "{said}"
    );
    let why = refused(library(&["add"], Some(&first)));
    assert!(why.contains("already in the library"), "{why}");

    // Over the cap: refused, nothing written.
    let second = image("node-1.1.0.bin", "1.1.0");
    let why = refused(library(&["add"], Some(&second)));
    assert!(why.contains("ota.library_max_bytes"), "{why}");

    // A changed image: refused, nothing written.
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&second, &bytes).unwrap();
    ok(library(&["remove", "node-1.0.0.bin"], None));
    let why = refused(library(&["add"], Some(&second)));
    assert!(why.contains("damaged"), "{why}");
    let listed = ok(library(&["list"], None));
    assert!(listed.contains("is empty"), "{listed}");

    ok(library(&["add"], Some(&first)));
    let listed = ok(library(&["list"], None));
    assert!(
        listed.contains("node-1.0.0.bin  firmware 1.0.0 for hardware revision 2"),
        "{listed}"
    );
    // A file changed in the library shows as refused at the next listing.
    let stored = data.join("firmware/node-1.0.0.bin");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&stored, &bytes).unwrap();
    let listed = ok(library(&["list"], None));
    assert!(
        listed.contains("node-1.0.0.bin  refused") && listed.contains("damaged"),
        "{listed}"
    );
    let why = refused(library(&["remove", "node-9.bin"], None));
    assert!(why.contains("not in the firmware library"), "{why}");
}

/// The gateway refuses an image larger than a node's slot before any transfer: its bound must be
/// the slot the node's flash layout gives the image (an image the node could not hold would go
/// out whole and be refused at the end).
#[test]
fn the_gateways_image_bound_is_the_nodes_active_slot() {
    assert_eq!(
        outpost_core::firmware::MAX_IMAGE_BYTES,
        u64::from(outpost_node::boot::layout::ACTIVE.size)
    );
}
