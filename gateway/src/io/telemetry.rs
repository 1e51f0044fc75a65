//! The daemon's telemetry, shared by its tasks: `outpost_core::telemetry::Telemetry` behind one
//! lock, events in ([`TelemetryHub::record`]), one snapshot out ([`TelemetryHub::snapshot`]),
//! and a watch that wakes the uplink when an alert changes.

use std::sync::{Arc, Mutex, MutexGuard};

use outpost_core::telemetry::{Alert, Event, Snapshot, Telemetry};
use tokio::sync::watch;

/// See the module documentation. Cheap to clone; every clone is the same telemetry.
#[derive(Debug, Clone)]
pub struct TelemetryHub {
    telemetry: Arc<Mutex<Telemetry>>,
    /// The newest alert change's number.
    alert_changes: watch::Sender<u64>,
}

impl TelemetryHub {
    #[must_use]
    pub fn new(telemetry: Telemetry) -> TelemetryHub {
        let last = telemetry.alerts().last_change();
        TelemetryHub {
            telemetry: Arc::new(Mutex::new(telemetry)),
            alert_changes: watch::channel(last).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Telemetry> {
        self.telemetry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Something happened.
    pub fn record(&self, event: Event) {
        let last = {
            let mut telemetry = self.lock();
            telemetry.handle(event);
            telemetry.alerts().last_change()
        };
        self.alert_changes.send_if_modified(|seen| {
            let changed = *seen != last;
            *seen = last;
            changed
        });
    }

    /// Everything, for a reader.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot()
    }

    /// A look at one part without copying the rest.
    pub fn with<T>(&self, f: impl FnOnce(&Telemetry) -> T) -> T {
        f(&self.lock())
    }

    /// Wakes whoever forwards alerts when one changes.
    #[must_use]
    pub fn alert_changes(&self) -> watch::Receiver<u64> {
        self.alert_changes.subscribe()
    }

    /// Alerts raised, updated or resolved after change `after`, oldest first.
    #[must_use]
    pub fn alerts_changed_since(&self, after: u64) -> Vec<Alert> {
        self.lock().alerts().changed_since(after)
    }
}
