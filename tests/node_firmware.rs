//! The real RP2040 firmware against the real gateway: the images `sensor-fw/build.sh` makes
//! (bootloader and application), run by the rp2040js emulator with the node's flash in a file,
//! its UART0 on a pseudo-terminal the gateway opens as a serial port at 115,200 baud.
//!
//! The node enrolls with the key it made at its first boot, sends telemetry and HEALTH, takes a
//! signed update into its other slot through embassy-boot's swap and confirms it; an image that
//! never confirms is reverted by the bootloader after the reset, and the node says `ota_revert`;
//! a power cut in the middle of the swap still boots a whole image.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use outpost_e2e::board::{self, EmulatedNode, FIRST, Firmware, NEVER_CONFIRMS, SECOND, tail};
use outpost_e2e::{Site, bin, latest_health, run_ok, wait_for};

const TOKEN: &str = "rp2040-technician-token-0123456789";

/// The flash chip's unique id in the emulator: the node's uid at the gateway.
const UID: &str = "e2ef0000000020a0";

/// A site with no simulated node and one serial port, at the emulated node's pty.
fn site(firmware: &Firmware, link: &Path) -> Result<Site> {
    board::site(firmware, &[link], Vec::new(), TOKEN)
}

/// `outpost <subcommand...> --config <site> <rest...>`.
fn outpost(site: &Site, subcommand: &[&str], rest: &[&str]) -> Command {
    let mut cmd = Command::new(bin("outpost"));
    cmd.args(subcommand)
        .arg("--config")
        .arg(site.config_path())
        .args(rest);
    cmd
}

/// The node's firmware version and last reset reason in the gateway's registry.
fn node_row(site: &Site) -> Option<(String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        site.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT fw_version, reset_reason FROM nodes WHERE uid = ?1",
        [UID],
        |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        },
    )
    .ok()
}

/// Waits until the registry shows the node on `version` after a reset for `reason`.
fn wait_for_node(site: &Site, node: &EmulatedNode, version: &str, reason: &str) -> Result<()> {
    wait_for(
        Duration::from_secs(120),
        &format!("the node on {version} after a reset for {reason}"),
        || {
            let (fw, why) = node_row(site)?;
            (fw == version && why == reason).then_some(())
        },
    )
    .with_context(|| {
        format!(
            "registry: {:?}\nemulator:\n{}",
            node_row(site),
            tail(&node.log(), 40)
        )
    })
}

#[test]
fn the_real_image_enrolls_reports_and_takes_a_signed_update_then_a_bad_one_is_reverted()
-> Result<()> {
    let firmware = Firmware::get()?;
    let tmp = tempfile::tempdir()?;
    let flash = tmp.path().join("flash.bin");
    let link = tmp.path().join("ttyNODE");
    let log = tmp.path().join("emulator.log");
    firmware.factory_flash(FIRST, &flash)?;
    let node = EmulatedNode::start(&flash, UID, &link, &log, &[])?;
    let mut site = site(firmware, &link)?;
    site.start_gateway()?;

    // Enrollment (the key the node made at its first boot), HEALTH and telemetry.
    wait_for_node(&site, &node, FIRST, "power_on")?;
    site.wait_for_node_samples(UID, 8, Duration::from_secs(90))
        .with_context(|| tail(&node.log(), 30))?;
    wait_for(Duration::from_secs(60), "the node's HEALTH", || {
        latest_health(&site.store_path(), UID).ok().flatten()
    })?;
    ensure!(site.assert_seq_contiguous_per_boot()? >= 8);

    // A signed update, through the gateway's rollout to this node: transferred, verified by the
    // node against the fleet key built into it, swapped in by the bootloader, confirmed.
    let second = firmware.signed_image(SECOND, tmp.path())?;
    let out = run_ok(
        outpost(&site, &["rollout", "start"], &[])
            .args(["--node", UID, "--soak", "2s", "--confirm-within", "20s"])
            .arg("--artifact")
            .arg(&second),
    )
    .with_context(|| tail(&node.log(), 40))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("started"),
        "{out:?}"
    );
    wait_for_node(&site, &node, SECOND, "ota_apply")?;
    let view = site.get("/api/v1/rollout")?;
    ensure!(view["rollout"]["state"] == "done", "{view:#}");

    // An image that never confirms its trial: the node resets into the old slot by itself and
    // reports the revert.
    let bad = firmware.signed_image(NEVER_CONFIRMS, tmp.path())?;
    let out = outpost(&site, &["rollout", "start"], &[])
        .args(["--node", UID, "--soak", "2s", "--confirm-within", "10s"])
        .arg("--artifact")
        .arg(&bad)
        .output()?;
    ensure!(
        !out.status.success(),
        "the bad image's rollout did not halt"
    );
    wait_for_node(&site, &node, SECOND, "ota_revert")?;

    // Every sample of every boot arrived once.
    let before = site.assert_seq_contiguous_per_boot()?;
    site.wait_for_node_samples(UID, before + 3, Duration::from_secs(60))?;
    site.assert_seq_contiguous_per_boot()?;
    drop(node);
    site.gateway.take();
    Ok(())
}

#[test]
fn a_power_cut_in_the_middle_of_the_swap_still_boots_a_whole_image() -> Result<()> {
    let firmware = Firmware::get()?;
    let tmp = tempfile::tempdir()?;
    let flash = tmp.path().join("flash.bin");
    let link = tmp.path().join("ttyNODE");
    let log = tmp.path().join("emulator.log");
    firmware.factory_flash(FIRST, &flash)?;
    // The power goes at the node's first reset: the one into the bootloader's swap.
    let mut node = EmulatedNode::start(&flash, UID, &link, &log, &["--power-cut-at-reset", "1"])?;
    let mut site = site(firmware, &link)?;
    site.start_gateway()?;
    wait_for_node(&site, &node, FIRST, "power_on")?;

    let second = firmware.signed_image(SECOND, tmp.path())?;
    let mut rollout = outpost(&site, &["rollout", "start"], &[])
        .args(["--node", UID, "--soak", "2s", "--confirm-within", "30s"])
        .arg("--artifact")
        .arg(&second)
        .spawn()?;
    let status = node.wait_exit(Duration::from_secs(180))?;
    ensure!(
        status.code() == Some(75),
        "{status:?}\n{}",
        tail(&node.log(), 20)
    );
    drop(node);
    // Its name went with it (see EmulatedNode): a name left behind points at a pty number the
    // next pty opened on this machine gets.
    ensure!(
        std::fs::symlink_metadata(&link).is_err(),
        "the powered-off node's pty link was left behind"
    );

    // Power back on, and off again in the middle of the swap. The emulator counts each 4 KiB
    // erase and each 256-byte page program: the swap moves 128 pages between ACTIVE and DFU,
    // about 34 operations a page with its STATE marks, so 1,500 is about a third of the way.
    let mut node = EmulatedNode::start(
        &flash,
        UID,
        &link,
        &log,
        &["--power-cut-after-flash-ops", "1500"],
    )?;
    let status = node.wait_exit(Duration::from_secs(120))?;
    ensure!(
        status.code() == Some(75),
        "{status:?}\n{}",
        tail(&node.log(), 20)
    );
    ensure!(
        node.log().contains("power cut"),
        "{}",
        tail(&node.log(), 20)
    );
    drop(node);

    // Power on for good: the swap resumes where it stopped and the new image runs its trial.
    let node = EmulatedNode::start(&flash, UID, &link, &log, &[])?;
    wait_for_node(&site, &node, SECOND, "ota_apply")?;
    let before = site.assert_seq_contiguous_per_boot()?;
    site.wait_for_node_samples(UID, before + 3, Duration::from_secs(60))?;
    let _ = rollout.wait();
    drop(node);
    site.gateway.take();
    Ok(())
}

#[test]
fn a_production_image_has_no_console_and_refuses_development_features() -> Result<()> {
    let firmware = Firmware::get()?;
    let production = std::fs::read(firmware.app(FIRST, "bin"))?;
    let development = std::fs::read(firmware.app(NEVER_CONFIRMS, "bin"))?;
    // The console's command words are in the development image and nowhere in production.
    let has = |image: &[u8], text: &str| image.windows(text.len()).any(|w| w == text.as_bytes());
    for word in ["forget-identity", "unknown command"] {
        ensure!(has(&development, word), "the dev image lacks {word:?}");
        ensure!(
            !has(&production, word),
            "the production image holds {word:?}"
        );
    }
    // The build refuses a development feature in a production image, before compiling.
    let out = Command::new(outpost_e2e::workspace_dir().join("sensor-fw/build.sh"))
        .arg("--fleet-keys")
        .arg(firmware.public_key())
        .args(["--features", "cycle-marks"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--profile dev"),
        "{stderr}"
    );
    Ok(())
}
