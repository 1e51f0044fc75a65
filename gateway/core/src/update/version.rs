//! Debian package versions as far as the update agent needs them. Ordering is dpkg's business
//! (`dpkg --compare-versions`, run by the adapter): it is not reimplemented here.

/// The upstream part of a Debian version `[epoch:]upstream[-revision]`: what the daemon reports
/// as its own version (`0.2.0` for `1:0.2.0-3`, and for `0.2.0-1+rebuild2`).
#[must_use]
pub fn upstream(version: &str) -> &str {
    let without_epoch = match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => version,
    };
    match without_epoch.rsplit_once('-') {
        Some((upstream, _revision)) => upstream,
        None => without_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::upstream;

    #[test]
    fn the_upstream_version_drops_epoch_and_revision() {
        for (version, expected) in [
            ("0.2.0", "0.2.0"),
            ("0.2.0-1", "0.2.0"),
            ("1:0.2.0-3", "0.2.0"),
            ("0.2.0-1+selfupdate2", "0.2.0"),
            ("0.2.0~rc1-1", "0.2.0~rc1"),
            ("2.0-beta-4", "2.0-beta"),
        ] {
            assert_eq!(upstream(version), expected, "{version}");
        }
    }
}
