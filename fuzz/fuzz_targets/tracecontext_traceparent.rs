//! Arbitrary bytes as a `traceparent`: no panic, the verdict agrees with a
//! plain reading of the specification, and what parses formats back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_tracecontext::TraceParent;

fn lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The specification's rules, one by one, with no shared code.
fn reference(value: &[u8]) -> bool {
    let mut value = value;
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    if value.len() < 55 || !lower_hex(&value[..2]) || &value[..2] == b"ff" {
        return false;
    }
    let tail_ok = if &value[..2] == b"00" {
        value.len() == 55
    } else {
        value.len() == 55 || value[55] == b'-'
    };
    tail_ok
        && value[2] == b'-'
        && value[35] == b'-'
        && value[52] == b'-'
        && lower_hex(&value[3..35])
        && lower_hex(&value[36..52])
        && lower_hex(&value[53..55])
        && value[3..35].iter().any(|&b| b != b'0')
        && value[36..52].iter().any(|&b| b != b'0')
}

fuzz_target!(|data: &[u8]| {
    let parsed = TraceParent::parse(data);
    assert_eq!(
        parsed.is_ok(),
        reference(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    if let Ok(parent) = parsed {
        let encoded = parent.encode();
        assert_eq!(TraceParent::parse(&encoded), Ok(parent));
        assert_eq!(&encoded[..3], b"00-");
    }
});
