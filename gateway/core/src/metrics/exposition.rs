//! The Prometheus text exposition format, version 0.0.4: what `/metrics` answers.
//!
//! Hand-written rather than the `prometheus-client` crate: the format is a few lines of grammar,
//! and what matters in it (escaping label values that come from the nodes, the counter and
//! gauge rules, HELP and TYPE before every family, each family once) is easier to check in
//! forty lines we own than through a registry of `Arc`ed metric objects the gateway would have
//! to keep in step with its telemetry. The renderer builds the text from a snapshot on each
//! scrape; nothing is registered and nothing lives between scrapes.
//!
//! The rules kept here (<https://prometheus.io/docs/instrumenting/exposition_formats/>):
//! - every family has `# HELP` and `# TYPE` lines before its samples, and appears once;
//! - a counter's name ends in `_total` (the convention `promtool check metrics` asks for);
//! - label values escape `\` as `\\`, `"` as `\"` and a line feed as `\n`; HELP text escapes
//!   `\` and line feeds;
//! - values are integers or floats, with `NaN`, `+Inf` and `-Inf` spelt as Go parses them.

use std::fmt::Write as _;

/// A family's type. Info facts (strings) are gauges of value 1 named `…_info`: 0.0.4 has no
/// info type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows while the process lives (a restart starts it again from what it counts).
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(u64::from(v))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// The text being built, one family after another.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// The families written so far: a name written twice is a bug in the renderer.
    names: Vec<&'static str>,
}

impl Exposition {
    #[must_use]
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
            names: Vec::new(),
        }
    }

    /// Starts family `name`: its HELP and TYPE lines. Its samples follow through the returned
    /// writer, before the next family starts.
    ///
    /// # Panics
    /// When `name` is not a metric name, a counter's name does not end in `_total`, or the
    /// family was written before: the renderer's names are constants, so this is a bug there,
    /// caught by its tests.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        assert!(is_metric_name(name), "{name:?} is not a metric name");
        assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        assert!(!self.names.contains(&name), "family {name} written twice");
        self.names.push(name);
        let out = &mut self.out;
        let _ = write!(out, "# HELP {name} ");
        escape_help(out, help);
        let _ = writeln!(out, "\n# TYPE {name} {}", kind.as_str());
        Family { out, name }
    }

    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

/// Writes the samples of one family.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample: `name{label="value",…} value`. Label names are constants of the renderer;
    /// label values are escaped, whatever they hold.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) {
        let out = &mut *self.out;
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(name), "{name:?} is not a label name");
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape_label_value(out, value);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        write_value(out, value.into());
        out.push('\n');
    }
}

fn write_value(out: &mut String, value: Value) {
    match value {
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) if v.is_nan() => out.push_str("NaN"),
        Value::Float(v) if v.is_infinite() => {
            out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        }
        // Rust prints finite floats without an exponent, which Go's ParseFloat reads.
        Value::Float(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// `\` → `\\`, `"` → `\"`, line feed → `\n`; everything else as it is (UTF-8 is allowed).
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` → `\\`, line feed → `\n`.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_escapes_backslash_quote_and_line_feed_and_keeps_the_rest() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd\té");
        assert_eq!(out, r#"a\\b\"c\nd	é"#);
    }

    #[test]
    fn a_family_writes_help_and_type_then_its_samples() {
        let mut e = Exposition::default();
        let mut f = e.family("outpost_x_total", Kind::Counter, "Things.\nMore \\ things.");
        f.sample(&[], 3u64);
        f.sample(&[("port", "/dev/tty\"0")], 4u64);
        let mut g = e.family("outpost_y_celsius", Kind::Gauge, "A float.");
        g.sample(&[], 21.5);
        g.sample(&[("node", "a")], f64::NAN);
        g.sample(&[("node", "b")], f64::INFINITY);
        g.sample(&[("node", "c")], f64::NEG_INFINITY);
        g.sample(&[("node", "d")], 1e-7);
        assert_eq!(
            e.finish(),
            "# HELP outpost_x_total Things.\\nMore \\\\ things.\n\
             # TYPE outpost_x_total counter\n\
             outpost_x_total 3\n\
             outpost_x_total{port=\"/dev/tty\\\"0\"} 4\n\
             # HELP outpost_y_celsius A float.\n\
             # TYPE outpost_y_celsius gauge\n\
             outpost_y_celsius 21.5\n\
             outpost_y_celsius{node=\"a\"} NaN\n\
             outpost_y_celsius{node=\"b\"} +Inf\n\
             outpost_y_celsius{node=\"c\"} -Inf\n\
             outpost_y_celsius{node=\"d\"} 0.0000001\n"
        );
    }

    #[test]
    #[should_panic(expected = "must end in _total")]
    fn a_counter_without_total_is_refused() {
        let mut e = Exposition::default();
        e.family("outpost_commits", Kind::Counter, "x");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_cannot_be_written_twice() {
        let mut e = Exposition::default();
        e.family("outpost_a", Kind::Gauge, "x");
        e.family("outpost_a", Kind::Gauge, "x");
    }

    #[test]
    fn names_follow_the_grammar() {
        assert!(is_metric_name("outpost_a:b_1"));
        assert!(!is_metric_name("1outpost"));
        assert!(!is_metric_name("outpost-a"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("hw_rev"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("hw-rev"));
    }
}
