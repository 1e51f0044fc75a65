use super::*;

const NOW: i64 = 1_796_200_000;

fn operator() -> SigningKey {
    SigningKey::from_seed(Role::Operator, &[3; 32])
}

fn command(verb: Verb) -> Command {
    Command {
        gateway: "gw-0042".into(),
        request: "r-1".into(),
        nonce: [9; 16],
        issued: NOW - 10,
        expires: NOW + 290,
        verb,
    }
}

fn window(minutes: u32) -> Command {
    command(Verb::EnrollWindow { minutes })
}

fn expect<'a>(keys: &'a [PublicKey], now: Option<i64>) -> Expect<'a> {
    Expect {
        gateway: "gw-0042",
        topic_verb: "enroll-window",
        keys,
        now,
        policy: Policy::default(),
    }
}

#[test]
fn a_signed_command_for_this_gateway_verifies() {
    let key = operator();
    let text = sign(&key, &window(10)).unwrap();
    let keys = [key.public()];
    let verified = check(text.as_bytes(), &expect(&keys, Some(NOW))).unwrap();
    assert_eq!(verified.command, window(10));
    assert_eq!(verified.key, key.public().id());
    assert_eq!(verified.nonce(), "09".repeat(16));
    assert_eq!(claimed_request(text.as_bytes()).as_deref(), Some("r-1"));
}

#[test]
fn the_documented_layout_is_what_is_signed() {
    let text = sign(&operator(), &window(10)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "outpost-command 1");
    assert_eq!(lines[1], "gateway gw-0042");
    assert_eq!(lines[2], "verb enroll-window");
    assert_eq!(lines[3], "request r-1");
    assert_eq!(lines[4], format!("nonce {}", "09".repeat(16)));
    assert_eq!(lines[5], format!("issued {}", NOW - 10));
    assert_eq!(lines[6], format!("expires {}", NOW + 290));
    assert_eq!(lines[7], "arg minutes 10");
    assert!(lines[8].starts_with("signed-by "));
    assert!(lines[9].starts_with("signature "));
    assert_eq!(lines.len(), 10);
}

#[test]
fn unsigned_forged_or_foreign_keyed_commands_are_refused() {
    let key = operator();
    let keys = [key.public()];
    let text = sign(&key, &window(10)).unwrap();
    let unsigned: String = text.lines().take(8).map(|l| format!("{l}\n")).collect();
    assert_eq!(
        check(unsigned.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::Unsigned)
    );
    let forged = text.replace("arg minutes 10", "arg minutes 99");
    assert_eq!(
        check(forged.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::BadSignature)
    );
    let stranger = SigningKey::from_seed(Role::Operator, &[4; 32]);
    let theirs = sign(&stranger, &window(10)).unwrap();
    assert!(matches!(
        check(theirs.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::UnknownKey(_))
    ));
    // The same seed made for another role is another key, and cannot sign commands at all.
    let firmware = SigningKey::from_seed(Role::Firmware, &[3; 32]);
    assert!(sign(&firmware, &window(10)).is_err());
    let firmware_keys = [firmware.public()];
    assert!(matches!(
        check(text.as_bytes(), &expect(&firmware_keys, Some(NOW))),
        Err(Refusal::UnknownKey(_))
    ));
}

#[test]
fn another_gateway_another_verb_or_a_stale_command_is_refused() {
    let key = operator();
    let keys = [key.public()];
    let mut other = window(10);
    other.gateway = "gw-0043".into();
    let text = sign(&key, &other).unwrap();
    assert_eq!(
        check(text.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::OtherGateway("gw-0043".into()))
    );

    let text = sign(&key, &window(10)).unwrap();
    let on_other_topic = Expect {
        topic_verb: "reboot",
        ..expect(&keys, Some(NOW))
    };
    assert!(matches!(
        check(text.as_bytes(), &on_other_topic),
        Err(Refusal::VerbMismatch { .. })
    ));
    assert_eq!(
        check(text.as_bytes(), &expect(&keys, Some(NOW + 290))),
        Err(Refusal::Expired {
            expires: NOW + 290,
            now: NOW + 290
        })
    );
    assert!(matches!(
        check(text.as_bytes(), &expect(&keys, Some(NOW - 400))),
        Err(Refusal::NotYetValid { .. })
    ));
    // Issued a little ahead of the gateway's clock: within the skew it is taken.
    assert!(check(text.as_bytes(), &expect(&keys, Some(NOW - 200))).is_ok());
    assert_eq!(
        check(text.as_bytes(), &expect(&keys, None)),
        Err(Refusal::ClockUntrusted)
    );

    let mut long = window(10);
    long.expires = long.issued + 7200;
    let text = sign(&key, &long).unwrap();
    assert_eq!(
        check(text.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::TooLongLived(7200, 3600))
    );
}

#[test]
fn arguments_are_checked_after_the_signature() {
    let key = operator();
    let keys = [key.public()];
    let text = sign(&key, &window(MAX_WINDOW_MINUTES)).unwrap();
    assert!(check(text.as_bytes(), &expect(&keys, Some(NOW))).is_ok());
    // A verb's arguments out of range, signed: refused by name.
    let signed_by = |body: &str| {
        let body = format!("{body}signed-by {}\n", key.public().id());
        let signature = key.ed25519().sign(body.as_bytes());
        format!(
            "{body}signature {}\n",
            crate::hex::encode(&signature.to_bytes())
        )
    };
    let head = format!(
        "outpost-command 1\ngateway gw-0042\nverb enroll-window\nrequest r-1\nnonce {}\nissued {}\nexpires {}\n",
        "09".repeat(16),
        NOW - 10,
        NOW + 290
    );
    let too_long = signed_by(&format!("{head}arg minutes 1441\n"));
    assert!(matches!(
        check(too_long.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::BadArguments(_))
    ));
    let leading_zero = signed_by(&format!("{head}arg minutes 010\n"));
    assert!(matches!(
        check(leading_zero.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::BadArguments(_))
    ));
    let none = signed_by(&head);
    assert!(matches!(
        check(none.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::BadArguments(_))
    ));
    let unknown = signed_by(&head.replace("verb enroll-window", "verb format-disk"));
    let on_its_topic = Expect {
        topic_verb: "format-disk",
        ..expect(&keys, Some(NOW))
    };
    assert_eq!(
        check(unknown.as_bytes(), &on_its_topic),
        Err(Refusal::UnknownVerb("format-disk".into()))
    );
    let crlf = signed_by(&head.replace("request r-1\n", "request r-1\r\n"));
    assert!(matches!(
        check(crlf.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::Malformed { line: 4, .. })
    ));
    let uppercase = signed_by(&head.replace(&"09".repeat(16), &"0A".repeat(16)));
    assert!(matches!(
        check(uppercase.as_bytes(), &expect(&keys, Some(NOW))),
        Err(Refusal::Malformed { line: 5, .. })
    ));
}

#[test]
fn oversize_and_non_utf8_commands_are_refused_before_any_work() {
    let keys = [operator().public()];
    let big = vec![b'a'; MAX_COMMAND_BYTES + 1];
    assert_eq!(
        check(&big, &expect(&keys, Some(NOW))),
        Err(Refusal::TooLarge)
    );
    assert!(matches!(
        check(&[0xff, 0xfe], &expect(&keys, Some(NOW))),
        Err(Refusal::Malformed { .. })
    ));
    assert_eq!(claimed_request(&[0xff]), None);
    assert_eq!(claimed_request(b"request a/b\n"), None);
    assert_eq!(claimed_request(b"request #\n"), None);
}

#[test]
fn results_say_what_happened() {
    let done = result_payload(
        "r-1",
        "enroll-window",
        &Outcome::Done(serde_json::json!({"window_until_ms": 5})),
        7,
    );
    let done: serde_json::Value = serde_json::from_slice(&done).unwrap();
    assert_eq!(done["outcome"], "ok");
    assert_eq!(done["result"]["window_until_ms"], 5);
    let refused = result_payload(
        "r-1",
        "enroll-window",
        &Outcome::Refused(Refusal::Replayed),
        7,
    );
    let refused: serde_json::Value = serde_json::from_slice(&refused).unwrap();
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["reason"], "replayed");
}

#[test]
fn refusal_answers_are_rate_limited_and_refill() {
    let mut answers = RefusalAnswers::new(1_000);
    let burst = (0..100).filter(|_| answers.allow(1_000)).count();
    assert_eq!(burst, RefusalAnswers::BURST as usize);
    assert_eq!(answers.unanswered, 100 - u64::from(RefusalAnswers::BURST));
    assert!(!answers.allow(1_000 + 5_999));
    assert!(answers.allow(1_000 + 6_000));
    assert!(!answers.allow(1_000 + 6_001));
    // A long quiet spell refills the burst, no more.
    let later = (0..100).filter(|_| answers.allow(10_000_000)).count();
    assert_eq!(later, RefusalAnswers::BURST as usize);
}

proptest::proptest! {
    #[test]
    fn check_never_panics_and_never_accepts_a_changed_byte(
        at in 0usize..400,
        byte in proptest::prelude::any::<u8>(),
    ) {
        let key = operator();
        let keys = [key.public()];
        let text = sign(&key, &window(10)).unwrap();
        let mut bytes = text.into_bytes();
        let at = at % bytes.len();
        proptest::prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        proptest::prop_assert!(check(&bytes, &expect(&keys, Some(NOW))).is_err());
    }

    #[test]
    fn check_never_panics_on_any_text(text in "(?s).{0,600}") {
        let keys = [operator().public()];
        let _ = check(text.as_bytes(), &expect(&keys, Some(NOW)));
        let _ = claimed_request(text.as_bytes());
    }
}

fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn rollout_verbs_sign_verify_and_parse_back_to_the_same_plan() {
    let key = operator();
    let keys = [key.public()];
    let plan = RolloutPlan {
        artifact: "ab".repeat(32),
        canary: Some(2),
        waves: Some("25%,100%".into()),
        soak: Some("10m".into()),
        confirm_within: Some("90s".into()),
        node: None,
    };
    for verb in [
        Verb::RolloutStart(plan.clone()),
        Verb::RolloutStart(RolloutPlan {
            artifact: "01".repeat(32),
            node: Some("e2e0000000000001".into()),
            ..RolloutPlan::default()
        }),
        Verb::RolloutHalt { rollback: true },
        Verb::RolloutHalt { rollback: false },
    ] {
        let name = verb.name();
        let text = sign(&key, &command(verb.clone())).unwrap();
        let expect = Expect {
            topic_verb: name,
            ..expect(&keys, Some(NOW))
        };
        assert_eq!(check(text.as_bytes(), &expect).unwrap().command.verb, verb);
    }
    let text = sign(&key, &command(Verb::RolloutStart(plan))).unwrap();
    let arg_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("arg ")).collect();
    assert_eq!(
        arg_lines,
        [
            format!("arg artifact {}", "ab".repeat(32)).as_str(),
            "arg canary 2",
            "arg waves 25%,100%",
            "arg soak 10m",
            "arg confirm-within 90s",
        ]
    );
}

#[test]
fn rollout_arguments_out_of_form_or_order_are_refused() {
    let sha = "ab".repeat(32);
    let cases: Vec<Vec<(String, String)>> = vec![
        args(&[]),
        args(&[("artifact", "node-1.2.0.bin")]),
        args(&[("artifact", &"AB".repeat(32))]),
        args(&[("artifact", &sha), ("canary", "-1")]),
        args(&[("artifact", &sha), ("canary", "10001")]),
        args(&[("artifact", &sha), ("waves", "25%;100%")]),
        args(&[("artifact", &sha), ("soak", "10 m")]),
        args(&[("artifact", &sha), ("node", "e2e000000000001")]),
        args(&[("artifact", &sha), ("soak", "1m"), ("canary", "1")]),
        args(&[("artifact", &sha), ("canary", "1"), ("canary", "2")]),
        args(&[("artifact", &sha), ("colour", "red")]),
        args(&[
            ("artifact", &sha),
            ("canary", "1"),
            ("node", "e2e0000000000001"),
        ]),
    ];
    for case in cases {
        assert!(
            matches!(
                Verb::parse("rollout-start", &case),
                Err(Refusal::BadArguments(_))
            ),
            "{case:?}"
        );
    }
    for case in [
        args(&[]),
        args(&[("rollback", "true")]),
        args(&[("rollback", "yes"), ("rollback", "no")]),
    ] {
        assert!(
            matches!(
                Verb::parse("rollout-halt", &case),
                Err(Refusal::BadArguments(_))
            ),
            "{case:?}"
        );
    }
}

#[test]
fn remedy_verbs_sign_verify_and_parse_back() {
    use remedy::*;
    let key = operator();
    let keys = [key.public()];
    let verbs = [
        Verb::Diagnostics(DiagnosticsArgs::default()),
        Verb::Diagnostics(DiagnosticsArgs {
            journal_lines: 2000,
            upload: Upload::Force,
        }),
        Verb::NodeReboot(NodeReboot {
            node: "e2e0000000000001".into(),
            mode: RebootMode::Hard,
        }),
        Verb::GatewayRestart,
        Verb::ModbusRead(ModbusPoint {
            device: "meter-1".into(),
            point: "voltage".into(),
        }),
        Verb::ModbusWrite(ModbusWrite {
            target: ModbusPoint {
                device: "meter-1".into(),
                point: "setpoint".into(),
            },
            value: "21.5".into(),
        }),
    ];
    for verb in verbs {
        assert!(Verb::NAMES.contains(&verb.name()));
        let text = sign(&key, &command(verb.clone())).unwrap();
        let expect = Expect {
            topic_verb: verb.name(),
            ..expect(&keys, Some(NOW))
        };
        assert_eq!(check(text.as_bytes(), &expect).unwrap().command.verb, verb);
    }
}

#[test]
fn remedy_arguments_out_of_form_or_order_are_refused_by_name() {
    let refused = |verb: &str, pairs: &[(&str, &str)]| match Verb::parse(verb, &args(pairs)) {
        Err(Refusal::BadArguments(why)) => why,
        other => panic!("{verb} {pairs:?}: {other:?}"),
    };
    assert!(refused("diagnostics", &[("lines", "0")]).contains("lines `0` must be 1 to 10000"));
    assert!(refused("diagnostics", &[("lines", "010")]).contains("lines"));
    assert!(refused("diagnostics", &[("upload", "yes")]).contains("auto, force or no"));
    assert!(refused("diagnostics", &[("upload", "no"), ("lines", "5")]).contains("in that order"));
    assert!(refused("diagnostics", &[("lines", "5"), ("lines", "6")]).contains("at most once"));
    assert!(refused("node-reboot", &[("node", "e2e0000000000001")]).contains("two arguments"));
    assert!(
        refused(
            "node-reboot",
            &[("node", "E2E0000000000001"), ("mode", "hard")]
        )
        .contains("not a uid")
    );
    assert!(
        refused(
            "node-reboot",
            &[("node", "e2e0000000000001"), ("mode", "warm")]
        )
        .contains("soft or hard")
    );
    assert!(
        refused(
            "node-reboot",
            &[("mode", "hard"), ("node", "e2e0000000000001")]
        )
        .contains("in that order")
    );
    assert!(refused("gateway-restart", &[("now", "yes")]).contains("no arguments"));
    assert!(refused("modbus-read", &[("device", "m")]).contains("takes `point`"));
    assert!(refused("modbus-read", &[("point", "p"), ("device", "m")]).contains("in that order"));
    assert!(
        refused(
            "modbus-read",
            &[("device", &"m".repeat(65)), ("point", "p")]
        )
        .contains("longer than 64")
    );
    assert!(refused("modbus-write", &[("device", "m"), ("point", "p")]).contains("`value`"));
    // Defaults parse from no arguments.
    assert_eq!(
        Verb::parse("diagnostics", &[]).unwrap(),
        Verb::Diagnostics(remedy::DiagnosticsArgs::default())
    );
}

#[test]
fn a_write_value_is_read_exactly() {
    use crate::modbus::value::Value;
    use remedy::parse_value;
    assert_eq!(parse_value("true"), Value::Bool(true));
    assert_eq!(parse_value("-12"), Value::Int(-12));
    assert_eq!(parse_value("18446744073709551615"), Value::Uint(u64::MAX));
    assert_eq!(
        parse_value("21.5"),
        Value::Decimal {
            mantissa: 215,
            exp: -1
        }
    );
    assert_eq!(
        parse_value("-0.05"),
        Value::Decimal {
            mantissa: -5,
            exp: -2
        }
    );
    assert_eq!(parse_value("1."), Value::Text("1.".into()));
    assert_eq!(parse_value("auto"), Value::Text("auto".into()));
}

proptest::proptest! {
    /// `outpost-sign` hands the CLI's arguments (any UTF-8) to `Verb::parse`: it answers, it
    /// never panics, and what it accepts signs back to the same arguments.
    #[test]
    fn remedy_verbs_parse_any_arguments_without_panicking(
        verb in proptest::sample::select(&Verb::NAMES[..]),
        pairs in proptest::collection::vec(
            (
                proptest::sample::select(vec!["lines", "upload", "node", "mode", "device", "point", "value", "x"]),
                "\\PC{0,80}",
            ),
            0..4,
        ),
    ) {
        let args: Vec<(String, String)> =
            pairs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        if let Ok(parsed) = Verb::parse(verb, &args) {
            let again: Vec<(String, String)> = parsed
                .args()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect();
            proptest::prop_assert_eq!(Verb::parse(verb, &again).unwrap(), parsed);
        }
    }
}
