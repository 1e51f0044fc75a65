//! Remote commands: what an operator in the cloud may ask a gateway to do, signed.
//!
//! A command arrives on `outpost/{gateway_id}/cmd/{verb}` and its result goes out on
//! `outpost/{gateway_id}/cmd/result/{request}`. The broker's ACL decides who may publish there;
//! this module decides whether the gateway obeys: only a command signed by a configured
//! operator key (role `operator`, `outpost-sign keygen --role operator`), addressed to this
//! gateway and this verb, inside its validity, with a nonce never seen before (the store keeps
//! the nonces: [`Verified::nonce`]).
//!
//! ```text
//! outpost-command 1                   format and version (also the signed bytes' domain)
//! gateway gw-0042                     the one gateway it is for
//! verb enroll-window                  must equal the topic's last level
//! request r-7f3c9a10                  names the result topic; 1 to 64 of A-Z a-z 0-9 - _ .
//! nonce 0f1e2d3c4b5a69788796a5b4c3d2e1f0   16 random bytes: each is obeyed once
//! issued 1796200000                   Unix seconds
//! expires 1796200300                  Unix seconds, after issued, within the gateway's max lifetime
//! arg minutes 10                      zero or more, `arg NAME VALUE`, names in the verb's order
//! signed-by 1f2e3d4c5b6a7988          the operator key's id
//! signature <128 hex>                 Ed25519 over every byte above this line
//! ```
//!
//! Strict form, as the other signed files: LF line ends, lower-case hex, decimal without leading
//! zeros, single spaces, nothing else. The signature is checked before any field is believed.
//!
//! Design: IO-free. [`check`] takes the bytes, the topic's verb, the gateway's id, the keys and
//! the wall time (or `None` while the clock is not trusted: then no command runs, since neither
//! its expiry nor the nonce store's horizon could be held to) and answers [`Verified`] or a
//! [`Refusal`]. The adapter claims the nonce in the store, runs the verb, and reports.

use std::fmt;
use std::time::Duration;

use ed25519_dalek::Signer as _;

use crate::update::signing::{KeyId, PublicKey, Role, SigningKey, TrailerError, verify_trailer};

pub mod remedy;

const MAGIC: &str = "outpost-command 1";

/// The largest command accepted, bytes: far above any verb's needs, small enough that a flood of
/// them costs little.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// How far in the future `issued` may lie (the operator's clock runs ahead of the gateway's).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The most an enrollment window may be opened for, minutes (a day).
pub const MAX_WINDOW_MINUTES: u32 = 1440;

/// What a verified command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `enroll-window`, `arg minutes M`: nodes never enrolled may join for M minutes (policy
    /// `window`); 0 closes the window.
    EnrollWindow { minutes: u32 },
    /// `rollout-start`: a node firmware rollout of an image already in the gateway's library,
    /// named by its whole SHA-256 (`arg artifact`), with the plan's optional settings in this
    /// order: `canary`, `waves`, `soak`, `confirm-within`, `node` (a targeted update of one
    /// node). The bytes come to the library by the API or a file; the command only names them,
    /// and the gateway checks the image against the fleet keys and the nodes as for any start.
    RolloutStart(RolloutPlan),
    /// `rollout-halt`, `arg rollback yes|no`: halts the rollout in progress; with rollback, the
    /// nodes it updated get their previous image back.
    RolloutHalt { rollback: bool },
    /// `diagnostics`, optional `arg lines N` then `arg upload auto|force|no`: build a
    /// diagnostics bundle ([`crate::diagnostics`]), upload it in parts if the data budget
    /// allows (`force`: even beyond it; `no`: never), keep it for the page's download.
    Diagnostics(remedy::DiagnosticsArgs),
    /// `node-reboot`, `arg node UID`, `arg mode soft|hard`: restart a node over its link, or by
    /// pulsing the GPIO wired to its RUN pin.
    NodeReboot(remedy::NodeReboot),
    /// `node-health node=UID`: the node sends a HEALTH at once.
    NodeHealth { node: String },
    /// `gateway-restart`, no arguments: answer, then stop cleanly with the exit status the
    /// service manager restarts on.
    GatewayRestart,
    /// `modbus-read`, `arg device NAME`, `arg point NAME`: a point the device's map declares.
    ModbusRead(remedy::ModbusPoint),
    /// `modbus-write`, `arg device`, `arg point`, `arg value`: a point its map declares
    /// `writable`.
    ModbusWrite(remedy::ModbusWrite),
}

/// What `rollout-start` asks for. The values are checked for their form here and for their
/// meaning (durations, shares, nodes) where every rollout start is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolloutPlan {
    /// SHA-256 of the image, 64 lower-case hex digits.
    pub artifact: String,
    pub canary: Option<u32>,
    /// Cumulative shares, e.g. `25%,100%`.
    pub waves: Option<String>,
    /// e.g. `10m`.
    pub soak: Option<String>,
    /// e.g. `90s`.
    pub confirm_within: Option<String>,
    /// A node's uid, 16 lower-case hex digits.
    pub node: Option<String>,
}

/// The most canary nodes a command may ask for (more than a gateway's ports carry).
pub const MAX_CANARY: u32 = 10_000;

impl RolloutPlan {
    fn args(&self) -> Vec<(&'static str, String)> {
        let mut args = vec![("artifact", self.artifact.clone())];
        if let Some(n) = self.canary {
            args.push(("canary", n.to_string()));
        }
        let optional = [
            ("waves", &self.waves),
            ("soak", &self.soak),
            ("confirm-within", &self.confirm_within),
            ("node", &self.node),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                args.push((name, v.clone()));
            }
        }
        args
    }

    fn parse(args: &[(String, String)]) -> Result<RolloutPlan, Refusal> {
        let bad = |why: String| Refusal::BadArguments(why);
        let lower_hex = |v: &str, len: usize| {
            v.len() == len && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let mut rest = args.iter().peekable();
        let mut take = |name: &str| rest.next_if(|(n, _)| n == name).map(|(_, v)| v.clone());
        let artifact = take("artifact").ok_or_else(|| {
            bad("rollout-start takes `artifact` (the image's SHA-256) first".into())
        })?;
        if !lower_hex(&artifact, 64) {
            return Err(bad(format!(
                "artifact `{artifact}` is not a SHA-256 (64 lower-case hex digits)"
            )));
        }
        let canary = match take("canary") {
            None => None,
            Some(v) => Some(
                decimal(&v)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n <= MAX_CANARY)
                    .ok_or_else(|| bad(format!("canary `{v}` must be 0 to {MAX_CANARY}")))?,
            ),
        };
        let shaped = |v: Option<String>, name: &str, allowed: fn(u8) -> bool| match v {
            Some(v) if !v.bytes().all(allowed) => Err(bad(format!(
                "{name} `{v}` is not in the form the CLI takes"
            ))),
            v => Ok(v),
        };
        let waves = shaped(take("waves"), "waves", |b| {
            b.is_ascii_digit() || b == b'%' || b == b','
        })?;
        let duration = |b: u8| b.is_ascii_digit() || b.is_ascii_lowercase();
        let soak = shaped(take("soak"), "soak", duration)?;
        let confirm_within = shaped(take("confirm-within"), "confirm-within", duration)?;
        let node = take("node");
        if let Some(uid) = &node
            && !lower_hex(uid, 16)
        {
            return Err(bad(format!(
                "node `{uid}` is not a uid (16 lower-case hex digits)"
            )));
        }
        if let Some((name, _)) = rest.next() {
            return Err(bad(format!(
                "rollout-start does not take `{name}` there: artifact, then canary, waves, soak, \
                 confirm-within, node, each at most once, in that order"
            )));
        }
        if node.is_some() && (canary.is_some() || waves.is_some()) {
            return Err(bad(
                "a targeted update (`node`) has no canary or waves".into()
            ));
        }
        Ok(RolloutPlan {
            artifact,
            canary,
            waves,
            soak,
            confirm_within,
            node,
        })
    }
}

impl Verb {
    /// Every verb a gateway obeys, by its name on the topic.
    pub const NAMES: [&'static str; 8] = [
        "enroll-window",
        "rollout-start",
        "rollout-halt",
        "diagnostics",
        "node-reboot",
        "gateway-restart",
        "modbus-read",
        "modbus-write",
    ];

    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Verb::EnrollWindow { .. } => "enroll-window",
            Verb::RolloutStart(_) => "rollout-start",
            Verb::RolloutHalt { .. } => "rollout-halt",
            Verb::Diagnostics(_) => "diagnostics",
            Verb::NodeReboot(_) => "node-reboot",
            Verb::NodeHealth { .. } => "node-health",
            Verb::GatewayRestart => "gateway-restart",
            Verb::ModbusRead(_) => "modbus-read",
            Verb::ModbusWrite(_) => "modbus-write",
        }
    }

    /// The `arg` lines of this verb, in order.
    #[must_use]
    pub fn args(&self) -> Vec<(&'static str, String)> {
        match self {
            Verb::EnrollWindow { minutes } => vec![("minutes", minutes.to_string())],
            Verb::RolloutStart(plan) => plan.args(),
            Verb::RolloutHalt { rollback } => {
                vec![("rollback", if *rollback { "yes" } else { "no" }.to_owned())]
            }
            Verb::Diagnostics(args) => args.args(),
            Verb::NodeReboot(reboot) => reboot.args(),
            Verb::NodeHealth { node } => vec![("node", node.clone())],
            Verb::GatewayRestart => Vec::new(),
            Verb::ModbusRead(point) => point.args(),
            Verb::ModbusWrite(write) => write.args(),
        }
    }

    /// The verb `name` with its `args` (in order), or why not.
    pub fn parse(name: &str, args: &[(String, String)]) -> Result<Verb, Refusal> {
        let bad = |why: String| Refusal::BadArguments(why);
        match name {
            "enroll-window" => {
                let [(arg, value)] = args else {
                    return Err(bad("enroll-window takes one argument: minutes".into()));
                };
                if arg != "minutes" {
                    return Err(bad(format!("enroll-window takes `minutes`, not `{arg}`")));
                }
                let minutes = decimal(value)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|&m| m <= MAX_WINDOW_MINUTES)
                    .ok_or_else(|| {
                        bad(format!(
                            "minutes `{value}` must be 0 (close) to {MAX_WINDOW_MINUTES}"
                        ))
                    })?;
                Ok(Verb::EnrollWindow { minutes })
            }
            "rollout-start" => RolloutPlan::parse(args).map(Verb::RolloutStart),
            "rollout-halt" => match args {
                [(arg, value)] if arg == "rollback" && (value == "yes" || value == "no") => {
                    Ok(Verb::RolloutHalt {
                        rollback: value == "yes",
                    })
                }
                _ => Err(bad(
                    "rollout-halt takes one argument: rollback yes|no".into()
                )),
            },
            "diagnostics" => remedy::DiagnosticsArgs::parse(args).map(Verb::Diagnostics),
            "node-reboot" => remedy::NodeReboot::parse(args).map(Verb::NodeReboot),
            "node-health" => remedy::node_health(args).map(|node| Verb::NodeHealth { node }),
            "gateway-restart" => match args {
                [] => Ok(Verb::GatewayRestart),
                _ => Err(bad("gateway-restart takes no arguments".into())),
            },
            "modbus-read" => remedy::ModbusPoint::parse("modbus-read", args).map(Verb::ModbusRead),
            "modbus-write" => remedy::ModbusWrite::parse(args).map(Verb::ModbusWrite),
            other => Err(Refusal::UnknownVerb(other.to_owned())),
        }
    }
}

/// A command, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub gateway: String,
    pub request: String,
    pub nonce: [u8; 16],
    /// Unix seconds.
    pub issued: i64,
    /// Unix seconds.
    pub expires: i64,
    pub verb: Verb,
}

/// A command whose signature, addressee, verb and validity all hold. Its nonce has yet to be
/// claimed (the store does: a second claim is a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub command: Command,
    /// The operator key that signed it.
    pub key: KeyId,
}

impl Verified {
    /// The nonce as the store keeps it.
    #[must_use]
    pub fn nonce(&self) -> String {
        crate::hex::encode(&self.command.nonce)
    }
}

/// Why a command is not obeyed. Each is audited; [`Refusal::as_str`] is its short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("larger than {MAX_COMMAND_BYTES} bytes")]
    TooLarge,
    #[error("not signed: a command ends with `signed-by` and `signature` lines")]
    Unsigned,
    #[error("signed by key {0}, which is not a configured operator key")]
    UnknownKey(KeyId),
    #[error("the signature does not verify: the command was changed after it was signed")]
    BadSignature,
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
    #[error("addressed to gateway `{0}`, not this one")]
    OtherGateway(String),
    #[error("signed for verb `{signed}` but published on the `{topic}` topic")]
    VerbMismatch { signed: String, topic: String },
    #[error("expired at {expires} (Unix s); the gateway's time is {now}")]
    Expired { expires: i64, now: i64 },
    #[error("issued at {issued} (Unix s), in the future of the gateway's time {now}")]
    NotYetValid { issued: i64, now: i64 },
    #[error("valid for {0} s, longer than the gateway takes ({1} s)")]
    TooLongLived(i64, u64),
    #[error("the gateway's clock is not trusted yet, so no expiry can be held to")]
    ClockUntrusted,
    #[error("nonce already used: a replay")]
    Replayed,
    #[error("unknown verb `{0}`")]
    UnknownVerb(String),
    #[error("{0}")]
    BadArguments(String),
}

impl Refusal {
    /// The refusal's name in the audit log and the result.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "too-large",
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey(_) => "unknown-key",
            Refusal::BadSignature => "bad-signature",
            Refusal::Malformed { .. } => "malformed",
            Refusal::OtherGateway(_) => "other-gateway",
            Refusal::VerbMismatch { .. } => "verb-mismatch",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not-yet-valid",
            Refusal::TooLongLived(..) => "too-long-lived",
            Refusal::ClockUntrusted => "clock-untrusted",
            Refusal::Replayed => "replayed",
            Refusal::UnknownVerb(_) => "unknown-verb",
            Refusal::BadArguments(_) => "bad-arguments",
        }
    }
}

/// What the gateway holds a command to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest `expires - issued` accepted: also how long the store must remember a nonce.
    pub max_lifetime: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A valid request id: it becomes an MQTT topic level, so no `/`, `+` or `#`.
#[must_use]
pub fn valid_request(request: &str) -> bool {
    (1..=64).contains(&request.len())
        && request
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_gateway(gateway: &str) -> bool {
    valid_request(gateway)
}

/// Decimal without sign or leading zeros.
fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// The text of `command`, signed by `key` (an operator key).
pub fn sign(key: &SigningKey, command: &Command) -> Result<String, String> {
    if key.role() != Role::Operator {
        return Err(format!("a {} key cannot sign a command", key.role()));
    }
    if !valid_gateway(&command.gateway) {
        return Err(format!(
            "gateway `{}` must be 1 to 64 of A-Z a-z 0-9 - _ .",
            command.gateway
        ));
    }
    if !valid_request(&command.request) {
        return Err(format!(
            "request `{}` must be 1 to 64 of A-Z a-z 0-9 - _ .",
            command.request
        ));
    }
    if command.expires <= command.issued || command.issued < 0 {
        return Err("expires must come after issued".into());
    }
    let mut text = format!(
        "{MAGIC}\ngateway {}\nverb {}\nrequest {}\nnonce {}\nissued {}\nexpires {}\n",
        command.gateway,
        command.verb.name(),
        command.request,
        crate::hex::encode(&command.nonce),
        command.issued,
        command.expires
    );
    for (name, value) in command.verb.args() {
        text += &format!("arg {name} {value}\n");
    }
    text += &format!("signed-by {}\n", key.public().id());
    let signature = key.ed25519().sign(text.as_bytes());
    Ok(format!(
        "{text}signature {}\n",
        crate::hex::encode(&signature.to_bytes())
    ))
}

/// The request id a command names, read without believing anything else in it: where the
/// refusal of an unverified command may be answered. `None` when there is no well-formed one.
#[must_use]
pub fn claimed_request(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(MAX_COMMAND_BYTES))?).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("request "))
        .filter(|r| valid_request(r))
        .map(str::to_owned)
}

/// Everything [`check`] holds a command to.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The gateway's own id.
    pub gateway: &'a str,
    /// The verb the topic names (its last level).
    pub topic_verb: &'a str,
    /// The configured operator keys.
    pub keys: &'a [PublicKey],
    /// Wall time, Unix seconds; `None` while the clock is not trusted.
    pub now: Option<i64>,
    pub policy: Policy,
}

/// Checks a command's bytes: signature first, then every field. The nonce is left to the caller.
pub fn check(bytes: &[u8], expect: &Expect<'_>) -> Result<Verified, Refusal> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(Refusal::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::Malformed {
        line: 0,
        message: "not UTF-8".into(),
    })?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let field = |i: usize| -> Result<&str, Refusal> {
        lines[i].strip_suffix('\n').ok_or(Refusal::Malformed {
            line: i + 1,
            message: "the line does not end with LF".into(),
        })
    };
    let malformed = |line: usize, message: &str| Refusal::Malformed {
        line,
        message: message.into(),
    };
    if lines.first().map(|l| l.trim_end_matches('\n')) != Some(MAGIC) {
        return Err(malformed(1, "expected `outpost-command 1`"));
    }
    if lines.len() < 3 {
        return Err(Refusal::Unsigned);
    }
    let (signer, signed_by) =
        verify_trailer(text, &lines, expect.keys, Role::Operator).map_err(|e| match e {
            TrailerError::Missing { .. } => Refusal::Unsigned,
            TrailerError::Line { line, message } => malformed(line, message),
            TrailerError::UnknownKey(key) => Refusal::UnknownKey(key),
            TrailerError::BadSignature => Refusal::BadSignature,
        })?;
    let last = signed_by + 1;

    // Signed by an operator: now the fields, in their one order.
    let mut fields = (1..last - 1).map(|i| (i + 1, field(i)));
    let mut next = |name: &str| -> Result<(usize, &str), Refusal> {
        let Some((line, text)) = fields.next() else {
            return Err(malformed(
                last,
                &format!("expected `{name} …` before signed-by"),
            ));
        };
        let value = text?
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| malformed(line, &format!("expected `{name} …`")))?;
        Ok((line, value))
    };
    let (line, gateway) = next("gateway")?;
    if !valid_gateway(gateway) {
        return Err(malformed(
            line,
            "the gateway id is not 1 to 64 of A-Z a-z 0-9 - _ .",
        ));
    }
    let (_, verb) = next("verb")?;
    let verb = verb.to_owned();
    let (line, request) = next("request")?;
    if !valid_request(request) {
        return Err(malformed(
            line,
            "the request is not 1 to 64 of A-Z a-z 0-9 - _ .",
        ));
    }
    let (line, nonce) = next("nonce")?;
    let nonce = crate::hex::decode::<16>(nonce)
        .ok_or_else(|| malformed(line, "the nonce is not 32 lower-case hex digits"))?;
    let mut seconds = |name: &str| -> Result<i64, Refusal> {
        let (line, value) = next(name)?;
        decimal(value)
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| malformed(line, &format!("`{name}` is not Unix seconds")))
    };
    let issued = seconds("issued")?;
    let expires = seconds("expires")?;
    let mut args = Vec::new();
    for (line, text) in fields {
        let text = text?;
        let arg = text
            .strip_prefix("arg ")
            .and_then(|rest| rest.split_once(' '));
        let Some((name, value)) = arg else {
            return Err(malformed(line, "expected `arg NAME VALUE`"));
        };
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(name) || !printable(value) {
            return Err(malformed(
                line,
                "an argument's name and value are printable ASCII without spaces",
            ));
        }
        args.push((name.to_owned(), value.to_owned()));
    }
    if expires <= issued {
        return Err(malformed(last - 1, "expires must come after issued"));
    }

    if gateway != expect.gateway {
        return Err(Refusal::OtherGateway(gateway.to_owned()));
    }
    if verb != expect.topic_verb {
        return Err(Refusal::VerbMismatch {
            signed: verb,
            topic: expect.topic_verb.to_owned(),
        });
    }
    let max_lifetime = expect.policy.max_lifetime.as_secs();
    if u64::try_from(expires - issued).unwrap_or(u64::MAX) > max_lifetime {
        return Err(Refusal::TooLongLived(expires - issued, max_lifetime));
    }
    let now = expect.now.ok_or(Refusal::ClockUntrusted)?;
    if issued > now.saturating_add(MAX_CLOCK_SKEW.as_secs() as i64) {
        return Err(Refusal::NotYetValid { issued, now });
    }
    if expires <= now {
        return Err(Refusal::Expired { expires, now });
    }
    let verb = Verb::parse(&verb, &args)?;
    Ok(Verified {
        command: Command {
            gateway: gateway.to_owned(),
            request: request.to_owned(),
            nonce,
            issued,
            expires,
            verb,
        },
        key: signer,
    })
}

/// How a command ended, as its result and the audit log say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran; what it did, as JSON.
    Done(serde_json::Value),
    /// It was not obeyed.
    Refused(Refusal),
    /// It was obeyed but could not be carried out (e.g. the store failed).
    Failed(String),
}

impl Outcome {
    /// `ok`, `refused` or `failed`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The one-line detail the audit log keeps.
    #[must_use]
    pub fn detail(&self) -> String {
        match self {
            Outcome::Done(value) => value.to_string(),
            Outcome::Refused(why) => format!("{}: {why}", why.as_str()),
            Outcome::Failed(why) => why.clone(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.as_str(), self.detail())
    }
}

/// The result message for `request` (published on `outpost/{id}/cmd/result/{request}`).
#[must_use]
pub fn result_payload(request: &str, verb: &str, outcome: &Outcome, at_ms: i64) -> Vec<u8> {
    let mut result = serde_json::json!({
        "request": request,
        "verb": verb,
        "outcome": outcome.as_str(),
        "at_ms": at_ms,
    });
    match outcome {
        Outcome::Done(value) => result["result"] = value.clone(),
        Outcome::Refused(why) => {
            result["reason"] = why.as_str().into();
            result["detail"] = why.to_string().into();
        }
        Outcome::Failed(why) => result["detail"] = why.clone().into(),
    }
    serde_json::to_vec(&result).unwrap_or_default()
}

/// Answers to commands that were not verified are rate-limited: whoever can publish on the
/// command topic without an operator key must not be able to make the gateway talk (and spend
/// the data budget) as fast as it can publish. A token bucket: `BURST` answers, then one per
/// `REFILL`.
#[derive(Debug, Clone)]
pub struct RefusalAnswers {
    tokens: u32,
    last_ms: u64,
    /// Refusals left unanswered (still audited and counted).
    pub unanswered: u64,
}

impl RefusalAnswers {
    pub const BURST: u32 = 10;
    pub const REFILL: Duration = Duration::from_secs(6);

    #[must_use]
    pub fn new(now_ms: u64) -> RefusalAnswers {
        RefusalAnswers {
            tokens: Self::BURST,
            last_ms: now_ms,
            unanswered: 0,
        }
    }

    /// Whether a refusal at `now_ms` (monotonic) may be answered.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let refill = Self::REFILL.as_millis() as u64;
        let earned = now_ms.saturating_sub(self.last_ms) / refill;
        if earned > 0 {
            self.tokens = self
                .tokens
                .saturating_add(u32::try_from(earned).unwrap_or(u32::MAX))
                .min(Self::BURST);
            self.last_ms += earned * refill;
        }
        if self.tokens == 0 {
            self.unanswered += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests;
