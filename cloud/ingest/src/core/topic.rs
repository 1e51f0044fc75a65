//! The broker's topics as the ingest sees them: `outpost/{gateway}/batch` in, `outpost/{gateway}/ack`
//! out with `{"upto": SEQ}`.

use outpost_batch::MAX_GATEWAY_ID_LEN;

/// The topic filter every replica shares: `$share/{group}/outpost/+/batch`.
#[must_use]
pub fn shared_batch_filter(group: &str) -> String {
    format!("$share/{group}/outpost/+/batch")
}

/// The gateway a batch topic names, or `None` for any other topic (which the ingest never
/// subscribed to, so it is acknowledged and ignored).
#[must_use]
pub fn batch_topic_gateway(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix("outpost/")?.strip_suffix("/batch")?;
    let valid = !id.is_empty()
        && id.len() <= MAX_GATEWAY_ID_LEN
        && !id.contains(['/', '+', '#'])
        && !id.contains('\0');
    valid.then_some(id)
}

/// Where a gateway's acknowledgement goes.
#[must_use]
pub fn ack_topic(gateway: &str) -> String {
    format!("outpost/{gateway}/ack")
}

/// The acknowledgement itself, as the gateway's uplink parses it.
#[must_use]
pub fn ack_payload(upto: u64) -> String {
    format!("{{\"upto\":{upto}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_topic_names_its_gateway_and_nothing_else_does() {
        assert_eq!(batch_topic_gateway("outpost/site-7/batch"), Some("site-7"));
        for other in [
            "outpost/site-7/ack",
            "outpost//batch",
            "outpost/a/b/batch",
            "outpost/+/batch",
            "other/site-7/batch",
            "outpost/site-7/batch/x",
        ] {
            assert_eq!(batch_topic_gateway(other), None, "{other}");
        }
        let long = format!("outpost/{}/batch", "g".repeat(MAX_GATEWAY_ID_LEN + 1));
        assert_eq!(batch_topic_gateway(&long), None);
    }

    #[test]
    fn the_ack_is_what_the_gateway_parses() {
        assert_eq!(ack_topic("site-7"), "outpost/site-7/ack");
        let v: serde_json::Value = serde_json::from_str(&ack_payload(42)).unwrap();
        assert_eq!(v["upto"], 42);
        assert_eq!(
            shared_batch_filter("ingest"),
            "$share/ingest/outpost/+/batch"
        );
    }
}
