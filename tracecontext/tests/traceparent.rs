//! `traceparent` vectors: every rule, valid and invalid, with the reason.

use palisade_tracecontext::{SpanId, TraceFlags, TraceId, TraceParent, TraceParentError as E};

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn the_specification_example_parses() {
    let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
    assert_eq!(
        parent.trace_id(),
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
    );
    assert_eq!(
        parent.parent_id(),
        SpanId::from_hex("b7ad6b7169203331").unwrap()
    );
    assert_eq!(parent.flags(), TraceFlags::SAMPLED);
    assert_eq!(parent.to_string(), VALID);
}

#[test]
fn invalid_vectors_name_their_reason() {
    let long_version = format!("00{}", &VALID[2..]).replacen("00-", "000-", 1);
    let cases: &[(&str, E)] = &[
        ("", E::TooShort { len: 0 }),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            E::TooShort { len: 54 },
        ),
        (
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::TooShort { len: 54 },
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            E::TooShort { len: 54 },
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            E::TooShort { len: 54 },
        ),
        (&long_version, E::TrailingData),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.",
            E::TrailingData,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            E::TrailingData,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-001",
            E::TrailingData,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c0-b7ad6b7169203331-01",
            E::TrailingData,
        ),
        (
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::ForbiddenVersion,
        ),
        (
            "FF-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::InvalidVersion,
        ),
        (
            "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::InvalidVersion,
        ),
        (
            ".0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::InvalidVersion,
        ),
        (
            "+0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::InvalidVersion,
        ),
        (
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::MissingDelimiter,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            E::MissingDelimiter,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01",
            E::MissingDelimiter,
        ),
        (
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            E::InvalidTraceId,
        ),
        (
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            E::InvalidTraceId,
        ),
        (
            "00-0af7651916cd43dd8448eb211c8031 c-b7ad6b7169203331-01",
            E::InvalidTraceId,
        ),
        (
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            E::ZeroTraceId,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            E::InvalidParentId,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-+7ad6b7169203331-01",
            E::InvalidParentId,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            E::ZeroParentId,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0G",
            E::InvalidFlags,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-+1",
            E::InvalidFlags,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
            E::InvalidFlags,
        ),
        (
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.x",
            E::TrailingData,
        ),
        (
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01--",
            E::MissingDelimiter,
        ),
    ];
    for (value, reason) in cases {
        assert_eq!(
            TraceParent::parse(value.as_bytes()),
            Err(*reason),
            "{value:?}"
        );
    }
}

#[test]
fn future_versions_read_the_fixed_fields() {
    for value in [
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
        "fe-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-anything-at-all",
    ] {
        let parent = TraceParent::parse(value.as_bytes()).unwrap();
        assert_eq!(parent.to_string(), VALID, "always written as version 00");
    }
}

#[test]
fn optional_whitespace_is_trimmed_and_nothing_else() {
    for value in [
        format!(" {VALID}"),
        format!("{VALID}\t"),
        format!(" \t{VALID} \t"),
    ] {
        assert!(TraceParent::parse(value.as_bytes()).is_ok(), "{value:?}");
    }
    for value in [
        format!("\n{VALID}"),
        format!("{VALID}\r"),
        format!("\u{a0}{VALID}"),
    ] {
        assert!(TraceParent::parse(value.as_bytes()).is_err(), "{value:?}");
    }
}

#[test]
fn only_the_sampled_and_random_flags_are_kept() {
    let cases = [
        ("00", 0x00),
        ("01", 0x01),
        ("02", 0x02),
        ("03", 0x03),
        ("09", 0x01),
        ("fe", 0x02),
        ("ff", 0x03),
    ];
    for (flags, kept) in cases {
        let value = format!("{}{flags}", &VALID[..53]);
        let parent = TraceParent::parse(value.as_bytes()).unwrap();
        assert_eq!(parent.flags().to_wire(), kept, "{flags}");
        assert_eq!(&parent.to_string()[53..], format!("{kept:02x}"));
    }
}

#[test]
fn errors_read_as_sentences() {
    assert_eq!(E::ZeroTraceId.to_string(), "trace-id is all zeros");
    assert_eq!(
        E::TooShort { len: 3 }.to_string(),
        "traceparent has 3 characters, fewer than 55"
    );
}
