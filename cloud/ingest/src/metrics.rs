//! The ingest's counters and `/metrics` in Prometheus' text format. Counters are this replica's;
//! the per-gateway gauges come from the database, so every replica reports the same fleet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::db::GatewayFigures;

/// This replica's counters since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches_stored: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub readings_stored: AtomicU64,
    pub acks_sent: AtomicU64,
    pub database_errors: AtomicU64,
    pub broker_connections: AtomicU64,
    pub pull_errors: AtomicU64,
    /// Microseconds spent storing new batches, and how many: the commit latency's mean.
    pub store_micros: AtomicU64,
    /// Dead-lettered batches by reason label.
    pub dead_lettered: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn database_error(&self) {
        self.database_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_letter(&self, reason: &'static str) {
        *self
            .dead_lettered
            .lock()
            .expect("poisoned")
            .entry(reason)
            .or_default() += 1;
    }
}

/// The exposition: this replica's counters, then the fleet's gauges (`None` when the database
/// could not be asked; `outpost_ingest_database_up` says so).
#[must_use]
pub fn render(
    replica: &str,
    counters: &Counters,
    fleet: Option<&(Vec<GatewayFigures>, u64)>,
) -> String {
    let mut out = String::new();
    let replica = escape(replica);
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{replica=\"{replica}\"}} {value}\n"
        );
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let plain = [
        (
            "outpost_ingest_batches_stored_total",
            "Batches stored in the database by this replica.",
            &counters.batches_stored,
        ),
        (
            "outpost_ingest_batches_duplicate_total",
            "Batches delivered again that were already stored (nothing written).",
            &counters.batches_duplicate,
        ),
        (
            "outpost_ingest_readings_stored_total",
            "Readings stored by this replica.",
            &counters.readings_stored,
        ),
        (
            "outpost_ingest_acks_sent_total",
            "Acknowledgements sent to gateways after a commit.",
            &counters.acks_sent,
        ),
        (
            "outpost_ingest_database_errors_total",
            "Database errors (the batch is retried, never acknowledged meanwhile).",
            &counters.database_errors,
        ),
        (
            "outpost_ingest_broker_connections_total",
            "Connections made to the broker.",
            &counters.broker_connections,
        ),
        (
            "outpost_ingest_pull_errors_total",
            "Failed requests to gateways' pull API.",
            &counters.pull_errors,
        ),
    ];
    for (name, help, value) in plain {
        counter(name, help, load(value));
    }
    let _ = write!(
        out,
        "# HELP outpost_ingest_store_seconds_total Time spent storing new batches (with outpost_ingest_batches_stored_total: the mean).\n\
         # TYPE outpost_ingest_store_seconds_total counter\n\
         outpost_ingest_store_seconds_total{{replica=\"{replica}\"}} {}\n",
        load(&counters.store_micros) as f64 / 1e6
    );
    out += "# HELP outpost_ingest_decode_errors_total Batches that failed their checks and went to the dead-letter table, by reason.\n\
            # TYPE outpost_ingest_decode_errors_total counter\n";
    let dead = counters.dead_lettered.lock().expect("poisoned").clone();
    for reason in crate::REJECTION_LABELS {
        let n = dead.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "outpost_ingest_decode_errors_total{{replica=\"{replica}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = write!(
        out,
        "# HELP outpost_ingest_database_up Whether the database answered this scrape.\n\
         # TYPE outpost_ingest_database_up gauge\noutpost_ingest_database_up {}\n",
        u8::from(fleet.is_some())
    );
    let Some((gateways, dead_letters)) = fleet else {
        return out;
    };
    let _ = write!(
        out,
        "# HELP outpost_ingest_dead_letters Batches kept in the dead-letter table.\n\
         # TYPE outpost_ingest_dead_letters gauge\noutpost_ingest_dead_letters {dead_letters}\n"
    );
    type Gauge = fn(&GatewayFigures) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 4] = [
        (
            "outpost_ingest_gateway_acked_seq",
            "The gateway's acknowledgement point: every batch up to it is stored.",
            |g| Some(g.acked_upto as f64),
        ),
        (
            "outpost_ingest_gateway_newest_seq",
            "The newest batch stored of the gateway.",
            |g| Some(g.newest_seq as f64),
        ),
        (
            "outpost_ingest_gateway_pending_batches",
            "Batches stored above a gap in the gateway's sequence (a batch in flight, or lost).",
            |g| Some(g.newest_seq.saturating_sub(g.acked_upto) as f64),
        ),
        (
            "outpost_ingest_gateway_lag_seconds",
            "Age of the gateway's newest stored reading.",
            |g| g.reading_age_s,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for g in gateways {
            if let Some(v) = value(g) {
                let _ = writeln!(out, "{name}{{gateway=\"{}\"}} {v}", escape(&g.name));
            }
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_gateway_name_cannot_break_the_exposition() {
        let counters = Counters::default();
        counters.dead_letter("undecodable");
        let fleet = (
            vec![GatewayFigures {
                name: "evil\"} 1\nfake_metric 2".into(),
                acked_upto: 3,
                newest_seq: 5,
                reading_age_s: Some(1.5),
            }],
            1,
        );
        let text = render("r1", &counters, Some(&fleet));
        assert!(
            !text.lines().any(|l| l.starts_with("fake_metric")),
            "{text}"
        );
        assert!(text.contains(
            "outpost_ingest_gateway_pending_batches{gateway=\"evil\\\"} 1\\nfake_metric 2\"} 2"
        ));
        assert!(text.contains("reason=\"undecodable\"} 1"));
    }
}
