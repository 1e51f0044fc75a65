//! Which MQTT version the uplink speaks, and the topic aliases it uses with MQTT 5.
//!
//! MQTT 5 saves bytes on every batch (a two-byte topic alias instead of the batch topic's name)
//! and bounds how long the broker keeps the gateway's session (the session expiry), and its
//! PUBACK says when the broker's ACL dropped a publish. Brokers that only speak 3.1.1 still exist
//! in the field, so `uplink.mqtt.protocol = "auto"` (the default) starts with 5 and falls back to
//! 3.1.1 when the broker will not take it: [`ProtocolChoice`] decides, from how each attempt
//! ended. [`TopicAliases`] decides, for each publish, whether it carries the topic, the topic and
//! a new alias, or the alias alone — and never an alias the broker does not know on the current
//! connection: aliases live only as long as one network connection (MQTT 5 §3.3.2.3.4).
//!
//! Both are IO-free; the adapter (`outpost::io::uplink::mqtt`) feeds them what happened.

use std::fmt;

/// An MQTT protocol version the uplink can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V5,
    V311,
}

impl MqttVersion {
    /// As the status page and the journal say it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            MqttVersion::V5 => "5",
            MqttVersion::V311 => "3.1.1",
        }
    }

    #[must_use]
    pub const fn other(self) -> MqttVersion {
        match self {
            MqttVersion::V5 => MqttVersion::V311,
            MqttVersion::V311 => MqttVersion::V5,
        }
    }
}

impl fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `uplink.mqtt.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolSetting {
    /// MQTT 5, falling back to 3.1.1 for a broker that does not take it.
    Auto,
    /// Only this version.
    Only(MqttVersion),
}

impl ProtocolSetting {
    /// Parses the config value: `auto`, `5` or `3.1.1`.
    #[must_use]
    pub fn parse(value: &str) -> Option<ProtocolSetting> {
        match value {
            "auto" => Some(ProtocolSetting::Auto),
            "5" => Some(ProtocolSetting::Only(MqttVersion::V5)),
            "3.1.1" => Some(ProtocolSetting::Only(MqttVersion::V311)),
            _ => None,
        }
    }
}

/// How a connection attempt ended before the broker accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// TCP or TLS failed: the broker never saw the CONNECT, so its version is not in question.
    Unreachable,
    /// The broker answered the CONNECT with a refusal for another reason (identity, server busy).
    Refused,
    /// The broker said it does not support this protocol version (5: reason 0x84; 3.1.1: return
    /// code 1).
    VersionRefused,
    /// The broker had the CONNECT and closed the connection, or answered something this version
    /// cannot parse (a 3.1.1 broker's CONNACK read as MQTT 5): what old brokers do with a
    /// version they do not know.
    NoAnswer,
}

/// The version for the next connection attempt.
///
/// With [`ProtocolSetting::Auto`], an attempt that reached the broker and got no CONNACK it
/// could use ([`AttemptFailure::VersionRefused`], [`AttemptFailure::NoAnswer`]) makes the next
/// attempt use the other version, until one connects; from then on that version is kept for the
/// rest of the run (a broker does not change versions while the gateway runs; the next start
/// tries 5 again). Alternating rather than switching once means a broker restart that drops a
/// single MQTT 5 attempt costs one 3.1.1 session, not the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolChoice {
    setting: ProtocolSetting,
    current: MqttVersion,
    settled: bool,
    switches: u32,
}

/// The next attempt speaks another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub to: MqttVersion,
    /// The first switch of the run is tried at once: a 3.1.1 broker is not an outage. Later
    /// ones wait for the back-off like any failed attempt (a broker that closes every
    /// connection must not be hammered in both versions).
    pub at_once: bool,
}

impl ProtocolChoice {
    #[must_use]
    pub fn new(setting: ProtocolSetting) -> ProtocolChoice {
        let current = match setting {
            ProtocolSetting::Auto => MqttVersion::V5,
            ProtocolSetting::Only(version) => version,
        };
        ProtocolChoice {
            setting,
            current,
            settled: false,
            switches: 0,
        }
    }

    /// The version to speak on the next attempt.
    #[must_use]
    pub fn current(&self) -> MqttVersion {
        self.current
    }

    /// The broker accepted a connection in [`ProtocolChoice::current`].
    pub fn connected(&mut self) {
        self.settled = true;
    }

    /// An attempt failed before the broker accepted it. Returns the version the next attempt
    /// switches to, if it switches.
    pub fn failed(&mut self, failure: AttemptFailure) -> Option<Switch> {
        let may_switch = self.setting == ProtocolSetting::Auto && !self.settled;
        let about_the_version = matches!(
            failure,
            AttemptFailure::VersionRefused | AttemptFailure::NoAnswer
        );
        if may_switch && about_the_version {
            self.current = self.current.other();
            self.switches += 1;
            Some(Switch {
                to: self.current,
                at_once: self.switches == 1,
            })
        } else {
            None
        }
    }
}

/// What a publish carries instead of (or with) its topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef {
    /// The topic name, no alias (MQTT 3.1.1, a topic not aliased, or no alias left).
    Name,
    /// The topic name and this alias: the broker maps the alias to the name from now on.
    NameAndAlias(u16),
    /// This alias alone, with an empty topic name.
    Alias(u16),
}

impl TopicRef {
    /// The alias this publish carries, if any.
    #[must_use]
    pub fn alias(self) -> Option<u16> {
        match self {
            TopicRef::Name => None,
            TopicRef::NameAndAlias(alias) | TopicRef::Alias(alias) => Some(alias),
        }
    }
}

/// The most aliases Outpost uses, whatever the broker allows: the gateway has a handful of
/// topics and only the frequent ones are worth an alias.
pub const MAX_ALIASES: u16 = 4;

/// The topic aliases of the current connection.
///
/// Rules kept (and checked by the property test): an [`TopicRef::Alias`] is only returned for a
/// topic whose [`TopicRef::NameAndAlias`] was returned earlier on the same connection; no alias
/// exceeds the broker's Topic Alias Maximum from its CONNACK or [`MAX_ALIASES`]; no two topics
/// share an alias; without a connection, or with a broker maximum of 0, every publish carries
/// its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicAliases {
    /// Aliases usable on this connection: min(broker's maximum, [`MAX_ALIASES`]); 0 when none.
    limit: u16,
    /// Alias `i + 1` stands for `defined[i]` on this connection.
    defined: Vec<String>,
    /// The previous connection's table, kept to restore publishes queued for it.
    previous: Vec<String>,
}

impl TopicAliases {
    #[must_use]
    pub fn new() -> TopicAliases {
        TopicAliases::default()
    }

    /// A connection was accepted; `broker_max` is its CONNACK's Topic Alias Maximum (0 or
    /// absent: none). Aliases start empty: none survive a reconnection.
    pub fn connected(&mut self, broker_max: u16) {
        self.limit = broker_max.min(MAX_ALIASES);
        self.defined.clear();
    }

    /// The connection ended. Its table is kept for [`TopicAliases::previous_topic`] until the
    /// next one ends.
    pub fn lost(&mut self) {
        self.limit = 0;
        self.previous = std::mem::take(&mut self.defined);
    }

    /// How a publish on `topic` refers to it. `aliased` says whether the topic deserves an alias
    /// (a frequent one); others always carry their name. Tell [`TopicAliases::queued`] once the
    /// client took the publish: a new alias counts only from then on.
    #[must_use]
    pub fn reference(&self, topic: &str, aliased: bool) -> TopicRef {
        if let Some(index) = self.defined.iter().position(|t| t == topic) {
            return TopicRef::Alias(alias_of(index));
        }
        if !aliased || self.defined.len() >= usize::from(self.limit) {
            return TopicRef::Name;
        }
        TopicRef::NameAndAlias(alias_of(self.defined.len()))
    }

    /// The client took a publish on `topic` made with `reference` (from
    /// [`TopicAliases::reference`], with no connection change in between): it goes on the wire
    /// in order, so publishes after it may use the alias alone.
    pub fn queued(&mut self, topic: &str, reference: TopicRef) {
        if let TopicRef::NameAndAlias(alias) = reference
            && usize::from(alias) == self.defined.len() + 1
            && alias <= self.limit
        {
            self.defined.push(topic.to_owned());
        }
    }

    /// The topic an alias stood for on the connection that just ended: a publish queued with
    /// the alias alone must be sent with its name on the next connection, where the alias
    /// means nothing.
    #[must_use]
    pub fn previous_topic(&self, alias: u16) -> Option<&str> {
        let index = usize::from(alias).checked_sub(1)?;
        self.previous.get(index).map(String::as_str)
    }
}

fn alias_of(index: usize) -> u16 {
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auto_falls_back_to_3_1_1_when_the_broker_does_not_answer_5_and_keeps_what_connected() {
        let mut choice = ProtocolChoice::new(ProtocolSetting::Auto);
        assert_eq!(choice.current(), MqttVersion::V5);
        assert_eq!(choice.failed(AttemptFailure::Unreachable), None);
        assert_eq!(choice.failed(AttemptFailure::Refused), None);
        assert_eq!(
            choice.failed(AttemptFailure::NoAnswer),
            Some(Switch {
                to: MqttVersion::V311,
                at_once: true
            })
        );
        choice.connected();
        assert_eq!(choice.failed(AttemptFailure::NoAnswer), None);
        assert_eq!(choice.current(), MqttVersion::V311);
    }

    #[test]
    fn auto_alternates_until_one_version_connects() {
        let mut choice = ProtocolChoice::new(ProtocolSetting::Auto);
        assert_eq!(
            choice.failed(AttemptFailure::VersionRefused),
            Some(Switch {
                to: MqttVersion::V311,
                at_once: true
            })
        );
        assert_eq!(
            choice.failed(AttemptFailure::NoAnswer),
            Some(Switch {
                to: MqttVersion::V5,
                at_once: false
            }),
            "later switches wait for the back-off"
        );
        choice.connected();
        assert_eq!(choice.current(), MqttVersion::V5);
    }

    #[test]
    fn a_configured_version_is_never_changed() {
        for version in [MqttVersion::V5, MqttVersion::V311] {
            let mut choice = ProtocolChoice::new(ProtocolSetting::Only(version));
            for failure in [
                AttemptFailure::NoAnswer,
                AttemptFailure::VersionRefused,
                AttemptFailure::Refused,
            ] {
                assert_eq!(choice.failed(failure), None);
                assert_eq!(choice.current(), version);
            }
        }
    }

    #[test]
    fn the_setting_parses_its_three_values_only() {
        assert_eq!(ProtocolSetting::parse("auto"), Some(ProtocolSetting::Auto));
        assert_eq!(
            ProtocolSetting::parse("5"),
            Some(ProtocolSetting::Only(MqttVersion::V5))
        );
        assert_eq!(
            ProtocolSetting::parse("3.1.1"),
            Some(ProtocolSetting::Only(MqttVersion::V311))
        );
        for bad in ["", "3", "3.1", "v5", "5.0", "AUTO"] {
            assert_eq!(ProtocolSetting::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_batch_topic_is_named_once_per_connection_then_aliased() {
        let mut aliases = TopicAliases::new();
        assert_eq!(
            publish(&mut aliases, "b", true),
            TopicRef::Name,
            "not connected"
        );
        aliases.connected(10);
        assert_eq!(aliases.reference("b", true), TopicRef::NameAndAlias(1));
        assert_eq!(
            aliases.reference("b", true),
            TopicRef::NameAndAlias(1),
            "the client did not take it: the alias is not defined"
        );
        assert_eq!(publish(&mut aliases, "b", true), TopicRef::NameAndAlias(1));
        assert_eq!(publish(&mut aliases, "b", true), TopicRef::Alias(1));
        assert_eq!(publish(&mut aliases, "status", false), TopicRef::Name);
        aliases.lost();
        assert_eq!(aliases.previous_topic(1), Some("b"));
        assert_eq!(aliases.previous_topic(0), None);
        assert_eq!(aliases.previous_topic(2), None);
        assert_eq!(
            publish(&mut aliases, "b", true),
            TopicRef::Name,
            "between connections"
        );
        aliases.connected(10);
        assert_eq!(publish(&mut aliases, "b", true), TopicRef::NameAndAlias(1));
    }

    fn publish(aliases: &mut TopicAliases, topic: &str, aliased: bool) -> TopicRef {
        let reference = aliases.reference(topic, aliased);
        aliases.queued(topic, reference);
        reference
    }

    #[test]
    fn a_broker_without_aliases_gets_names() {
        let mut aliases = TopicAliases::new();
        aliases.connected(0);
        assert_eq!(publish(&mut aliases, "b", true), TopicRef::Name);
        assert_eq!(publish(&mut aliases, "b", true), TopicRef::Name);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Connected(u16),
        Lost,
        /// `taken`: whether the client's queue took it (a full queue sends nothing).
        Publish {
            topic: u8,
            aliased: bool,
            taken: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u16..8).prop_map(Step::Connected),
            Just(Step::Lost),
            (0u8..8, any::<bool>(), prop::bool::weighted(0.9)).prop_map(
                |(topic, aliased, taken)| Step::Publish {
                    topic,
                    aliased,
                    taken
                }
            ),
        ]
    }

    proptest! {
        /// What the broker would make of every publish, modelled as the broker keeps aliases:
        /// a table per connection, filled by publishes carrying name and alias.
        #[test]
        fn the_broker_can_always_resolve_the_topic(steps in proptest::collection::vec(step(), 0..200)) {
            let mut aliases = TopicAliases::new();
            let mut broker: Option<(u16, std::collections::HashMap<u16, String>)> = None;
            for step in steps {
                match step {
                    Step::Connected(max) => {
                        aliases.connected(max);
                        broker = Some((max, std::collections::HashMap::new()));
                    }
                    Step::Lost => {
                        aliases.lost();
                        broker = None;
                    }
                    Step::Publish { topic, aliased, taken } => {
                        let name = format!("outpost/gw/{topic}");
                        let reference = aliases.reference(&name, aliased);
                        if !taken {
                            continue; // never reached the broker
                        }
                        aliases.queued(&name, reference);
                        let Some((max, table)) = broker.as_mut() else {
                            prop_assert_eq!(reference, TopicRef::Name);
                            continue;
                        };
                        if let Some(alias) = reference.alias() {
                            prop_assert!(alias >= 1 && alias <= *max && alias <= MAX_ALIASES);
                        }
                        match reference {
                            TopicRef::Name => {}
                            TopicRef::NameAndAlias(alias) => {
                                prop_assert!(!table.values().any(|t| *t == name), "{name} aliased twice");
                                table.insert(alias, name.clone());
                            }
                            TopicRef::Alias(alias) => {
                                prop_assert_eq!(table.get(&alias), Some(&name));
                            }
                        }
                    }
                }
            }
        }
    }
}
