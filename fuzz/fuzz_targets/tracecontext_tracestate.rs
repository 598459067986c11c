//! Arbitrary bytes as `tracestate` lines (split at newlines): no panic,
//! and whatever parses is non-empty when written and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_tracecontext::{MAX_MEMBERS, TraceState};

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|&b| b == b'\n');
    let Ok(mut state) = TraceState::parse_lines(lines) else {
        return;
    };
    assert!(state.len() <= MAX_MEMBERS);
    match state.header_value() {
        Some(value) => {
            assert!(!value.is_empty());
            assert!(!value.contains(' ') || value.split(',').all(|m| !m.ends_with(' ')));
            let again = TraceState::parse_lines([value.as_bytes()]).expect("our output parses");
            assert_eq!(again, state);
        }
        None => assert!(state.is_empty()),
    }
    let before = state.len();
    state.truncate(0);
    assert!(state.header_value().is_none_or(|v| v.len() <= 512));
    assert!(state.len() <= before);
});
