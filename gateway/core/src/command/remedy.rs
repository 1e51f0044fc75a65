//! The arguments of the diagnostics and remediation verbs (`diagnostics`, `node-reboot`,
//! `modbus-read`, `modbus-write`): each parsed strictly, in one order, every refusal naming the
//! argument and what it takes. What the verbs do is the adapter's (`io::commands`).

use super::{Refusal, decimal};
use crate::modbus::value::Value;

/// Journal lines a bundle holds unless the command says otherwise.
pub const DEFAULT_JOURNAL_LINES: u32 = 500;
/// The most journal lines a command may ask for.
pub const MAX_JOURNAL_LINES: u32 = 10_000;

fn bad(why: String) -> Refusal {
    Refusal::BadArguments(why)
}

/// Takes the arguments named in `order`, each at most once, in that order; anything else is
/// refused naming the order.
fn ordered<'a>(
    verb: &str,
    args: &'a [(String, String)],
    order: &[&str],
) -> Result<Vec<Option<&'a str>>, Refusal> {
    let mut rest = args.iter().peekable();
    let mut taken = Vec::with_capacity(order.len());
    for name in order {
        taken.push(rest.next_if(|(n, _)| n == name).map(|(_, v)| v.as_str()));
    }
    if let Some((name, _)) = rest.next() {
        return Err(bad(format!(
            "{verb} does not take `{name}` there: {}, each at most once, in that order",
            order.join(", ")
        )));
    }
    Ok(taken)
}

/// How a bundle leaves the gateway besides the page's download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upload {
    /// In parts on the result topic when it fits the month's data budget.
    #[default]
    Auto,
    /// In parts even beyond the budget (the operator pays for it knowingly).
    Force,
    /// Never: built and kept for the page's download only.
    No,
}

impl Upload {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Upload::Auto => "auto",
            Upload::Force => "force",
            Upload::No => "no",
        }
    }
}

/// `diagnostics`: `arg lines N` (1 to [`MAX_JOURNAL_LINES`], default
/// [`DEFAULT_JOURNAL_LINES`]), then `arg upload auto|force|no` (default `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagnosticsArgs {
    pub journal_lines: u32,
    pub upload: Upload,
}

impl Default for DiagnosticsArgs {
    fn default() -> DiagnosticsArgs {
        DiagnosticsArgs {
            journal_lines: DEFAULT_JOURNAL_LINES,
            upload: Upload::Auto,
        }
    }
}

impl DiagnosticsArgs {
    pub(super) fn args(&self) -> Vec<(&'static str, String)> {
        let mut args = Vec::new();
        if self.journal_lines != DEFAULT_JOURNAL_LINES {
            args.push(("lines", self.journal_lines.to_string()));
        }
        if self.upload != Upload::Auto {
            args.push(("upload", self.upload.as_str().to_owned()));
        }
        args
    }

    pub(super) fn parse(args: &[(String, String)]) -> Result<DiagnosticsArgs, Refusal> {
        let taken = ordered("diagnostics", args, &["lines", "upload"])?;
        let journal_lines = match taken[0] {
            None => DEFAULT_JOURNAL_LINES,
            Some(v) => decimal(v)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_JOURNAL_LINES).contains(n))
                .ok_or_else(|| bad(format!("lines `{v}` must be 1 to {MAX_JOURNAL_LINES}")))?,
        };
        let upload = match taken[1] {
            None | Some("auto") => Upload::Auto,
            Some("force") => Upload::Force,
            Some("no") => Upload::No,
            Some(v) => return Err(bad(format!("upload `{v}` must be auto, force or no"))),
        };
        Ok(DiagnosticsArgs {
            journal_lines,
            upload,
        })
    }
}

/// How a node is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// Asked over the node link: the node's firmware restarts itself.
    Soft,
    /// The RUN pin pulled low by a gateway GPIO: works on a node whose firmware hangs.
    Hard,
}

impl RebootMode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RebootMode::Soft => "soft",
            RebootMode::Hard => "hard",
        }
    }
}

/// `node-reboot`: `arg node UID` (16 lower-case hex digits), `arg mode soft|hard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReboot {
    pub node: String,
    pub mode: RebootMode,
}

impl NodeReboot {
    pub(super) fn args(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node", self.node.clone()),
            ("mode", self.mode.as_str().to_owned()),
        ]
    }

    pub(super) fn parse(args: &[(String, String)]) -> Result<NodeReboot, Refusal> {
        let taken = ordered("node-reboot", args, &["node", "mode"])?;
        let (Some(node), Some(mode)) = (taken[0], taken[1]) else {
            return Err(bad(
                "node-reboot takes two arguments: node (a uid), then mode soft|hard".into(),
            ));
        };
        let node = uid(node)?;
        let mode = match mode {
            "soft" => RebootMode::Soft,
            "hard" => RebootMode::Hard,
            other => return Err(bad(format!("mode `{other}` must be soft or hard"))),
        };
        Ok(NodeReboot { node, mode })
    }
}

/// A node's uid as a command names it: 16 lower-case hex digits.
fn uid(node: &str) -> Result<String, Refusal> {
    if node.len() == 16 && node.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(node.to_owned())
    } else {
        Err(bad(format!(
            "node `{node}` is not a uid (16 lower-case hex digits)"
        )))
    }
}

/// `node-health`: `arg node UID`.
pub(super) fn node_health(args: &[(String, String)]) -> Result<String, Refusal> {
    match ordered("node-health", args, &["node"])?[..] {
        [Some(node)] => uid(node),
        _ => Err(bad("node-health takes one argument: node (a uid)".into())),
    }
}

/// The longest device or point name a command may carry (config names are far shorter).
pub const MAX_NAME: usize = 64;

fn name(verb: &str, what: &str, value: Option<&str>) -> Result<String, Refusal> {
    let value = value.ok_or_else(|| bad(format!("{verb} takes `{what}`")))?;
    if value.len() > MAX_NAME {
        let start: String = value.chars().take(16).collect();
        return Err(bad(format!(
            "{what} `{start}…` is longer than {MAX_NAME} characters"
        )));
    }
    Ok(value.to_owned())
}

/// `modbus-read`: `arg device NAME`, `arg point NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusPoint {
    pub device: String,
    pub point: String,
}

impl ModbusPoint {
    pub(super) fn args(&self) -> Vec<(&'static str, String)> {
        vec![
            ("device", self.device.clone()),
            ("point", self.point.clone()),
        ]
    }

    pub(super) fn parse(verb: &str, args: &[(String, String)]) -> Result<ModbusPoint, Refusal> {
        let taken = ordered(verb, args, &["device", "point"])?;
        Ok(ModbusPoint {
            device: name(verb, "device", taken[0])?,
            point: name(verb, "point", taken[1])?,
        })
    }
}

/// `modbus-write`: `arg device`, `arg point`, `arg value` (`true`/`false`, an integer, a
/// decimal such as `21.5`, or text without spaces). The point's map decides whether the value
/// fits: its type, range and `writable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusWrite {
    pub target: ModbusPoint,
    /// As the command carries it; [`ModbusWrite::value`] reads it.
    pub value: String,
}

impl ModbusWrite {
    pub(super) fn args(&self) -> Vec<(&'static str, String)> {
        let mut args = self.target.args();
        args.push(("value", self.value.clone()));
        args
    }

    pub(super) fn parse(args: &[(String, String)]) -> Result<ModbusWrite, Refusal> {
        let taken = ordered("modbus-write", args, &["device", "point", "value"])?;
        let target = ModbusPoint {
            device: name("modbus-write", "device", taken[0])?,
            point: name("modbus-write", "point", taken[1])?,
        };
        let value = taken[2]
            .ok_or_else(|| bad("modbus-write takes `value` after device and point".into()))?;
        Ok(ModbusWrite {
            target,
            value: value.to_owned(),
        })
    }

    /// The value to write: a boolean, an integer, an exact decimal, or else text.
    #[must_use]
    pub fn value(&self) -> Value {
        parse_value(&self.value)
    }
}

/// `true`/`false`, a decimal integer, a decimal with a fraction (exactly: `21.5` is 215 × 10⁻¹),
/// or the text itself.
#[must_use]
pub fn parse_value(text: &str) -> Value {
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let numeric = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(digits.contains('.') && fraction.is_empty());
    if numeric {
        if fraction.is_empty() {
            if negative {
                if let Ok(n) = text.parse::<i64>() {
                    return Value::Int(n);
                }
            } else if let Ok(n) = whole.parse::<i64>() {
                return Value::Int(n);
            } else if let Ok(n) = whole.parse::<u64>() {
                return Value::Uint(n);
            }
        } else if let (Ok(exp), Ok(mantissa)) = (
            i8::try_from(fraction.len()),
            format!("{}{whole}{fraction}", if negative { "-" } else { "" }).parse::<i64>(),
        ) {
            return Value::Decimal {
                mantissa,
                exp: -exp,
            };
        }
    }
    Value::Text(text.to_owned())
}
