//! The remote command `gateway-restart`: the daemon stops as it does on SIGTERM (the store
//! committed, the uplink's `offline` said) and exits with [`RESTART_EXIT_STATUS`], on which the
//! service manager starts it again (`RestartForceExitStatus=75` in packaging/outpost.service).
//! The daemon runs unprivileged and never calls systemctl: an exit status is all it needs.

use std::sync::atomic::{AtomicBool, Ordering};

/// EX_TEMPFAIL (sysexits.h): "try again later", the status the unit restarts on.
pub const RESTART_EXIT_STATUS: u8 = 75;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks for a restart: `shutdown` stops the daemon, and `main` exits with
/// [`RESTART_EXIT_STATUS`].
pub fn request(shutdown: &tokio_util::sync::CancellationToken) {
    REQUESTED.store(true, Ordering::SeqCst);
    shutdown.cancel();
}

/// Whether a restart was asked for in this process.
#[must_use]
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
