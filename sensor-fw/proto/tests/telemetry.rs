//! TELEMETRY's layout byte by byte (docs/node-link.md §2, "TELEMETRY"): the three varints, the
//! age's precision, and the readings that fill the message to its end.

use outpost_proto::wire::{MAX_READINGS, age_on_wire};
use outpost_proto::{ChannelId, DecodeError, Message, Reading, Telemetry};

fn telemetry(seq: u32, back: u32, age_ms: u32, readings: &[(u8, i32)]) -> Telemetry {
    Telemetry {
        seq,
        window_start: seq.wrapping_sub(back),
        age_ms,
        readings: readings
            .iter()
            .map(|&(c, value)| Reading {
                channel: ChannelId(c),
                value,
            })
            .collect(),
    }
}

fn emit(t: &Telemetry) -> String {
    let mut buf = [0u8; outpost_proto::wire::MAX_MESSAGE_LEN];
    let n = Message::Telemetry(t.clone()).emit(&mut buf).unwrap();
    hex::encode(&buf[..n])
}

fn parse(hex_bytes: &str) -> Result<Message, DecodeError> {
    Message::parse(&hex::decode(hex_bytes.replace(' ', "")).unwrap())
}

#[test]
fn the_readings_follow_the_varints_without_a_count() {
    let t = telemetry(300, 10, 1500, &[(1, 2150), (4, 300)]);
    assert_eq!(emit(&t), "0204ac020adc0b0166080000042c010000");
    assert_eq!(
        parse("0204ac020adc0b0166080000042c010000"),
        Ok(Message::Telemetry(t))
    );
    // None at all: 5 bytes.
    assert_eq!(emit(&telemetry(1, 0, 0, &[])), "0204010000");
    // Every one the protocol allows, and one more.
    let eight = "01020304 05".repeat(MAX_READINGS);
    assert!(
        matches!(parse(&format!("0204010000 {eight}")), Ok(Message::Telemetry(t)) if t.readings.len() == MAX_READINGS)
    );
    assert_eq!(
        parse(&format!("0204010000 {eight} 0102030405")),
        Err(DecodeError::TooMany)
    );
    // A reading cut short, or a byte after the last one.
    assert_eq!(parse("0204010000 01020304"), Err(DecodeError::Truncated));
    assert_eq!(
        parse("0204010000 0102030405 06"),
        Err(DecodeError::Truncated)
    );
    assert_eq!(parse("0204 0100"), Err(DecodeError::Truncated));
}

#[test]
fn ages_are_exact_below_8192_ms_then_in_steps_of_8_ms_rounded_down() {
    let age = |age_ms| {
        // After version, type, seq 1 and back 0.
        emit(&telemetry(1, 0, age_ms, &[]))[8..].to_owned()
    };
    assert_eq!(age(0), "00");
    assert_eq!(age(127), "7f");
    assert_eq!(age(1500), "dc0b");
    assert_eq!(age(8191), "ff3f"); // the last exact age: code 8191
    assert_eq!(age(8192), "8040"); // code 8192
    assert_eq!(age(8199), "8040"); // the same step: sent as 8192
    assert_eq!(age(8200), "8140"); // code 8193
    assert_eq!(age(30_000), "a655"); // code 8192 + 21,808 / 8 = 10,918
    assert_eq!(age(73_727), "ff7f"); // the last age in 2 bytes (code 16,383), exactly 3 before
    assert_eq!(age(73_728), "808001");
    assert_eq!(age(u32::MAX), "ffb7808002"); // code 536,878,079
    assert_eq!(age_on_wire(8199), 8192);
    assert_eq!(age_on_wire(u32::MAX), u32::MAX - 7);
    let parsed_age = |hex_age: &str| match parse(&format!("020401 00 {hex_age}")) {
        Ok(Message::Telemetry(t)) => Ok(t.age_ms),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(parsed_age("ff3f"), Ok(8191));
    assert_eq!(parsed_age("8140"), Ok(8200));
    assert_eq!(parsed_age("a655"), Ok(30_000));
    assert_eq!(parsed_age("ffb7808002"), Ok(u32::MAX - 7));
    // The next code would be an age past u32::MAX: refused, not wrapped or saturated.
    assert_eq!(parsed_age("80b8808002"), Err(DecodeError::BadVarint));
}

#[test]
fn varints_not_in_their_shortest_form_or_beyond_32_bits_are_refused() {
    // seq 1 spelt with a needless zero group.
    assert_eq!(parse("0204 8100 00 00"), Err(DecodeError::BadVarint));
    // An age of 0 spelt in two bytes.
    assert_eq!(parse("0204 01 00 8000"), Err(DecodeError::BadVarint));
    // A fifth byte above 0x0f, and a sixth byte.
    assert_eq!(parse("0204 ffffffff10 00 00"), Err(DecodeError::BadVarint));
    assert_eq!(
        parse("0204 ffffffff8f01 00 00"),
        Err(DecodeError::BadVarint)
    );
    // The largest seq is 5 bytes; `back` wraps like seq - window_start.
    assert!(matches!(
        parse("0204 ffffffff0f 01 00"),
        Ok(Message::Telemetry(t)) if t.seq == u32::MAX && t.window_start == u32::MAX - 1
    ));
}
