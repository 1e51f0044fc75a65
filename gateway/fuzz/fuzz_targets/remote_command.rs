//! Any bytes on the command topic: `check` never panics, and accepts nothing but what the
//! operator key signed. Input: the topic's verb length (1 byte), the verb, then the payload.
//! A corpus seed worth adding is a real command from `outpost-sign command`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::command::{Expect, Policy, check, claimed_request};
use outpost_core::update::signing::{Role, SigningKey};

fuzz_target!(|data: &[u8]| {
    let Some((&verb_len, rest)) = data.split_first() else {
        return;
    };
    let (verb, payload) = rest.split_at(usize::from(verb_len).min(rest.len()));
    let verb = String::from_utf8_lossy(verb);
    let operator = SigningKey::from_seed(Role::Operator, &[3; 32]);
    let keys = [operator.public()];
    let expect = Expect {
        gateway: "gw-0042",
        topic_verb: &verb,
        keys: &keys,
        now: Some(1_796_200_000),
        policy: Policy::default(),
    };
    // No input the fuzzer makes carries a valid signature by this key.
    assert!(check(payload, &expect).is_err());
    let _ = claimed_request(payload);
});
