//! Priority readings: a point marked `priority = true` in its map (an alarm or fault register)
//! is sent at once when its value changes, instead of waiting for the batch interval.
//!
//! The policy is the change, not the reading: an alarm register polled every second says the
//! same thing most of the time, and only a new value is news. The first reading of a run is not
//! a change (the run's first batch is sealed within seconds anyway, `batcher`). The adapter asks
//! [`PriorityWatch::handle_poll`] with each poll's values; `true` marks the poll's readings for a
//! prompt seal, which the batcher rate-limits.

use super::map::RegisterMap;
use super::value::Value;

/// The last value of each priority point of one device.
#[derive(Debug, Clone, Default)]
pub struct PriorityWatch {
    /// By point index; `None` until the point's first reading (and for points not priority).
    last: Vec<Option<Value>>,
}

impl PriorityWatch {
    #[must_use]
    pub fn new(map: &RegisterMap) -> PriorityWatch {
        PriorityWatch {
            last: vec![None; map.points().len()],
        }
    }

    /// One poll's values, as (point index, value); returns whether a priority point's value
    /// changed since its previous reading.
    pub fn handle_poll<'a>(
        &mut self,
        map: &RegisterMap,
        values: impl IntoIterator<Item = (usize, &'a Value)>,
    ) -> bool {
        let mut changed = false;
        for (point, value) in values {
            if !map.is_priority(point) {
                continue;
            }
            let Some(slot) = self.last.get_mut(point) else {
                continue;
            };
            if let Some(last) = slot.as_ref() {
                changed |= !same(last, value);
            }
            if !slot.as_ref().is_some_and(|last| same(last, value)) {
                *slot = Some(value.clone());
            }
        }
        changed
    }
}

/// Equal values; a float by its bits, so a NaN an alarm register keeps answering is not news at
/// every poll.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::modbus::map::parse_map;

    const MAP: &str = r#"
[[point]]
name = "power"
table = "holding"
address = 0
type = "u16"

[[point]]
name = "alarm"
table = "holding"
address = 1
type = "u16"
priority = true

[[point]]
name = "level"
table = "holding"
address = 2
type = "f32"
priority = true
"#;

    fn map() -> RegisterMap {
        parse_map(Path::new("m.toml"), MAP).unwrap()
    }

    #[test]
    fn only_a_change_of_a_priority_point_is_news() {
        let map = map();
        assert!(!map.is_priority(0));
        assert!(map.is_priority(1));
        let mut watch = PriorityWatch::new(&map);
        let poll = |power: u64, alarm: u64, level: f64| {
            [
                (0, Value::Uint(power)),
                (1, Value::Uint(alarm)),
                (2, Value::Float(level)),
            ]
        };
        // The first reading is not a change.
        assert!(!watch.handle_poll(&map, poll(1, 0, 1.5).iter().map(|(i, v)| (*i, v))));
        // An ordinary point's change is not news.
        assert!(!watch.handle_poll(&map, poll(2, 0, 1.5).iter().map(|(i, v)| (*i, v))));
        assert!(watch.handle_poll(&map, poll(2, 1, 1.5).iter().map(|(i, v)| (*i, v))));
        assert!(!watch.handle_poll(&map, poll(2, 1, 1.5).iter().map(|(i, v)| (*i, v))));
        assert!(watch.handle_poll(&map, poll(2, 1, 2.5).iter().map(|(i, v)| (*i, v))));
        // A NaN answered again and again is one change, not one a poll.
        assert!(watch.handle_poll(&map, poll(2, 1, f64::NAN).iter().map(|(i, v)| (*i, v))));
        assert!(!watch.handle_poll(&map, poll(2, 1, f64::NAN).iter().map(|(i, v)| (*i, v))));
        // A poll that missed the point (a failed request) forgets nothing.
        assert!(!watch.handle_poll(&map, [(0, &Value::Uint(3))]));
        assert!(watch.handle_poll(&map, poll(3, 0, f64::NAN).iter().map(|(i, v)| (*i, v))));
    }

    #[test]
    fn a_string_cannot_be_priority_and_the_error_is_located() {
        let text = "[[point]]\nname = \"serial\"\ntable = \"holding\"\naddress = 0\ntype = \"string\"\nlen = 4\npriority = true\n";
        let errors = parse_map(Path::new("m.toml"), text).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "point[0].priority");
        assert_eq!(errors[0].line, Some(7), "{}", errors[0]);
    }
}
