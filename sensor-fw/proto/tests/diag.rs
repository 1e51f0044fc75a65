//! The diagnostics bodies carried in COMMAND/RESPONSE (`outpost_proto::diag`): byte fixtures as
//! `docs/node-link.md` §2 tables them, and round-trip properties.

use outpost_proto::diag::{
    LogEntry, LogEvent, LogPage, LogRead, MAX_LOG_PAGE, MAX_RESET_RECORDS, ResetHistory,
    ResetRecord,
};
use outpost_proto::wire::MAX_COMMAND_BODY;
use outpost_proto::{DecodeError, FwVersion, ResetReason};
use proptest::collection::vec;
use proptest::prelude::*;

#[test]
fn a_reset_history_answer_byte_by_byte() {
    let history = ResetHistory {
        records: heapless::Vec::from_slice(&[
            ResetRecord {
                boot: 3,
                reason: ResetReason::Software,
                fw: FwVersion {
                    major: 1,
                    minor: 4,
                    patch: 0,
                },
            },
            ResetRecord {
                boot: 2,
                reason: ResetReason::HardFault,
                fw: FwVersion {
                    major: 1,
                    minor: 3,
                    patch: 2,
                },
            },
        ])
        .unwrap(),
    };
    let bytes: &[u8] = &[
        0x02, // two records, newest first
        0x03, 0x00, 0x00, 0x00, // boot 3
        0x02, // reason software
        0x01, 0x04, 0x00, // firmware 1.4.0
        0x02, 0x00, 0x00, 0x00, // boot 2
        0x07, // reason hard_fault
        0x01, 0x03, 0x02, // firmware 1.3.2
    ];
    let mut out = heapless::Vec::new();
    history.emit(&mut out).unwrap();
    assert_eq!(&out[..], bytes);
    assert_eq!(history.buffer_len(), bytes.len());
    assert_eq!(ResetHistory::parse(bytes).unwrap(), history);
}

#[test]
fn a_log_page_byte_by_byte() {
    let page = LogPage {
        first: 5,
        next: 9,
        entries: heapless::Vec::from_slice(&[
            LogEntry {
                event: LogEvent::LinkUp,
                arg: 1,
                uptime_ms: 1_500,
            },
            LogEntry {
                event: LogEvent::AuthFailed,
                arg: 300,
                uptime_ms: 70_000,
            },
        ])
        .unwrap(),
    };
    let bytes: &[u8] = &[
        0x05, 0x00, 0x00, 0x00, // first: entry 5
        0x09, 0x00, 0x00, 0x00, // next: entry 9 (two more after this page)
        0x02, // two entries
        0x01, // link_up
        0x01, 0x00, // arg 1 (sessions)
        0xDC, 0x05, 0x00, 0x00, // uptime 1,500 ms
        0x03, // auth_failed
        0x2C, 0x01, // arg 300 (in a row)
        0x70, 0x11, 0x01, 0x00, // uptime 70,000 ms
    ];
    let mut out = heapless::Vec::new();
    page.emit(&mut out).unwrap();
    assert_eq!(&out[..], bytes);
    assert_eq!(LogPage::parse(bytes).unwrap(), page);
    assert!(page.more());
    assert_eq!(LogRead { from: 7 }.to_bytes(), [0x07, 0x00, 0x00, 0x00]);
}

#[test]
fn malformed_bodies_are_refused_with_a_reason() {
    assert_eq!(ResetHistory::parse(&[]), Err(DecodeError::Truncated));
    assert_eq!(ResetHistory::parse(&[8]), Err(DecodeError::TooMany));
    assert_eq!(ResetHistory::parse(&[1, 0, 0]), Err(DecodeError::Truncated));
    assert_eq!(
        ResetHistory::parse(&[0, 0]),
        Err(DecodeError::TrailingBytes)
    );
    assert_eq!(LogPage::parse(&[0; 8]), Err(DecodeError::Truncated));
    assert_eq!(
        LogPage::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 8]),
        Err(DecodeError::TooMany)
    );
    // One entry claimed where none was ever logged after `first`.
    let mut impossible = vec![4, 0, 0, 0, 4, 0, 0, 0, 1];
    impossible.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(LogPage::parse(&impossible), Err(DecodeError::BadValue));
    assert_eq!(LogRead::parse(&[1, 2, 3]), Err(DecodeError::Truncated));
    assert_eq!(
        LogRead::parse(&[1, 2, 3, 4, 5]),
        Err(DecodeError::TrailingBytes)
    );
    // Unknown codes are kept, not refused: newer firmware still reports.
    let history = ResetHistory::parse(&[1, 1, 0, 0, 0, 0xEE, 0, 0, 0]).unwrap();
    assert_eq!(history.records[0].reason, ResetReason::Other(0xEE));
}

fn record() -> impl Strategy<Value = ResetRecord> {
    (any::<u32>(), any::<u8>(), any::<[u8; 3]>()).prop_map(|(boot, reason, [a, b, c])| {
        ResetRecord {
            boot,
            reason: ResetReason::from_code(reason),
            fw: FwVersion {
                major: a,
                minor: b,
                patch: c,
            },
        }
    })
}

fn entry() -> impl Strategy<Value = LogEntry> {
    (any::<u8>(), any::<u16>(), any::<u32>()).prop_map(|(code, arg, uptime_ms)| LogEntry {
        event: LogEvent::from_code(code),
        arg,
        uptime_ms,
    })
}

proptest! {
    #[test]
    fn a_reset_history_round_trips(records in vec(record(), 0..=MAX_RESET_RECORDS)) {
        let history = ResetHistory { records: heapless::Vec::from_slice(&records).unwrap() };
        let mut out = heapless::Vec::<u8, MAX_COMMAND_BODY>::new();
        history.emit(&mut out).unwrap();
        prop_assert_eq!(out.len(), history.buffer_len());
        prop_assert_eq!(ResetHistory::parse(&out).unwrap(), history);
    }

    #[test]
    fn a_log_page_round_trips(
        first in any::<u32>(),
        extra in 0u32..1000,
        entries in vec(entry(), 0..=MAX_LOG_PAGE),
    ) {
        let next = first.wrapping_add(entries.len() as u32).wrapping_add(extra);
        let page = LogPage { first, next, entries: heapless::Vec::from_slice(&entries).unwrap() };
        let mut out = heapless::Vec::<u8, MAX_COMMAND_BODY>::new();
        page.emit(&mut out).unwrap();
        prop_assert_eq!(out.len(), page.buffer_len());
        prop_assert_eq!(LogPage::parse(&out).unwrap(), page);
    }

    #[test]
    fn any_body_parses_or_is_refused_and_what_parses_emits_the_same_bytes(
        body in vec(any::<u8>(), 0..=MAX_COMMAND_BODY),
    ) {
        if let Ok(history) = ResetHistory::parse(&body) {
            let mut out = heapless::Vec::<u8, MAX_COMMAND_BODY>::new();
            history.emit(&mut out).unwrap();
            prop_assert_eq!(&out[..], &body[..]);
        }
        if let Ok(page) = LogPage::parse(&body) {
            let mut out = heapless::Vec::<u8, MAX_COMMAND_BODY>::new();
            page.emit(&mut out).unwrap();
            prop_assert_eq!(&out[..], &body[..]);
        }
    }
}
