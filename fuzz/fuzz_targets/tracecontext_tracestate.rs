//! Arbitrary bytes as `tracestate` lines (split at newlines): no panic, the
//! verdict and the members kept agree with a plain reading of the W3C Trace
//! Context Level 2 text, and whatever parses is non-empty when written and
//! parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_tracecontext::{MAX_MEMBERS, TraceState};

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`,
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
fn is_key(key: &[u8]) -> bool {
    let keychar = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(b);
    match key {
        [first, rest @ ..] => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 255
                && rest.iter().all(keychar)
        }
        [] => false,
    }
}

/// `value = 0*255(chr) nblk-chr`, `chr = %x20 / nblk-chr`,
/// `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`.
fn is_value(value: &[u8]) -> bool {
    let chr = |b: &u8| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=';
    matches!(value.last(), Some(&last) if last != b' ')
        && value.len() <= 256
        && value.iter().all(chr)
}

/// The rules one by one, with no shared code: the members kept in order,
/// or `None` when the header is discarded. Lines are joined with `,`;
/// spaces and tabs around members are dropped, as are empty members; more
/// than 32 members received, or one bad member, discards the header; a
/// repeated key keeps its first (most recent) member.
fn reference(lines: &[&[u8]]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let mut received = 0;
    let mut kept: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for member in lines.iter().flat_map(|line| line.split(|&b| b == b',')) {
        let start = member.iter().position(|b| !ows(b)).unwrap_or(member.len());
        let end = member
            .iter()
            .rposition(|b| !ows(b))
            .map_or(start, |i| i + 1);
        let member = &member[start..end];
        if member.is_empty() {
            continue;
        }
        received += 1;
        let equals = member.iter().position(|&b| b == b'=')?;
        let (key, value) = (&member[..equals], &member[equals + 1..]);
        if received > 32 || !is_key(key) || !is_value(value) {
            return None;
        }
        if kept.iter().all(|(k, _)| k != key) {
            kept.push((key.to_vec(), value.to_vec()));
        }
    }
    Some(kept)
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let parsed = TraceState::parse_lines(lines.iter().copied());
    let members = parsed.as_ref().ok().map(|state| {
        state
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        members,
        reference(&lines),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(mut state) = parsed else {
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
