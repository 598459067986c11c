//! Property tests: every valid header round-trips through parse and
//! format, and no input makes a parser panic.

use palisade_tracecontext::{Propagator, TraceParent, TraceState};
use proptest::prelude::*;

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}")).unwrap()
}

fn valid_traceparent() -> impl Strategy<Value = String> {
    (
        hex(32),
        hex(16),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
    )
        .prop_filter("ids must not be all zeros", |(t, p, _)| {
            t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0')
        })
        .prop_map(|(t, p, f)| format!("00-{t}-{p}-{f:02x}"))
}

/// Level 2: `( lcalpha / DIGIT ) 0*255 ( keychar )`, `@` a `keychar`.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9][a-z0-9_*/@-]{0,20}",
        1 => "[a-z0-9][a-z0-9_*/@-]{230,255}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    "[ -+\\--<>-~]{0,30}[!-+\\--<>-~]"
}

fn valid_tracestate() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((key(), value()), 0..=32).prop_map(|members| {
        let mut seen = std::collections::HashSet::new();
        members
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect()
    })
}

proptest! {
    #[test]
    fn traceparent_round_trips(text in valid_traceparent()) {
        let parent = TraceParent::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(parent.to_string(), text);
    }

    #[test]
    fn future_versions_format_as_00(
        text in valid_traceparent(),
        version in 1u8..=0xfe,
        tail in proptest::option::of("-[ -~]{0,20}"),
    ) {
        let future = format!("{version:02x}{}{}", &text[2..], tail.unwrap_or_default());
        let parent = TraceParent::parse(future.as_bytes()).unwrap();
        prop_assert_eq!(parent.to_string(), text);
    }

    #[test]
    fn tracestate_round_trips(members in valid_tracestate(), spaces in "[ \t]{0,3}") {
        let header = members
            .iter()
            .map(|(k, v)| format!("{spaces}{k}={v}{spaces}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = TraceState::parse_lines([header.as_bytes()]).unwrap();
        let parsed: Vec<(String, String)> =
            state.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(&parsed, &members);
        let again = TraceState::parse_lines([state.to_string().as_bytes()]).unwrap();
        prop_assert_eq!(again, state);
    }

    #[test]
    fn repeated_keys_keep_their_first_member(
        members in proptest::collection::vec(("[a-c]", value()), 1..=32),
        split in 0usize..32,
    ) {
        let joined: Vec<String> = members.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let split = split.min(joined.len());
        let lines = [joined[..split].join(","), joined[split..].join(" , ")];
        let state = TraceState::parse_lines(lines.iter().map(|l| l.as_bytes())).unwrap();
        let mut expected: Vec<(String, String)> = Vec::new();
        for (k, v) in members {
            if expected.iter().all(|(seen, _)| *seen != k) {
                expected.push((k, v));
            }
        }
        let parsed: Vec<(String, String)> =
            state.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = TraceParent::parse(&bytes);
        let _ = TraceState::parse_lines([bytes.as_slice(), bytes.as_slice()]);
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
            headers.append("traceparent", value.clone());
            headers.append("tracestate", value);
        }
        let context = Propagator::new().continue_or_start(&headers);
        prop_assert!(context.trace_state().header_value().is_none_or(|v| !v.is_empty()));
    }

    #[test]
    fn nearly_valid_traceparents_never_panic(text in valid_traceparent(), at in 0usize..55, byte in any::<u8>()) {
        let mut bytes = text.into_bytes();
        bytes[at] = byte;
        if let Ok(parent) = TraceParent::parse(&bytes) {
            // Only a change that keeps the grammar may pass, and it must
            // then format back to what was parsed, but for the version (always
            // 00) and dropped flag bits.
            let formatted = parent.to_string();
            prop_assert_eq!(&formatted.as_bytes()[2..53], &bytes[2..53]);
        }
    }
}
