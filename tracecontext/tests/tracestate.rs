//! `tracestate` vectors: every rule, valid and invalid, with the reason.

use palisade_tracecontext::{MAX_MEMBERS, TraceState, TraceStateError as E};

fn parse(lines: &[&str]) -> Result<TraceState, E> {
    TraceState::parse_lines(lines.iter().map(|l| l.as_bytes()))
}

#[test]
fn valid_headers_normalise() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"],
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        ),
        (&["a=1 , b=2", "c=3"], "a=1,b=2,c=3"),
        (&[",,a=1,, ,\t,b=2,"], "a=1,b=2"),
        (
            &["a= leading spaces are value"],
            "a= leading spaces are value",
        ),
        // A trailing space is optional whitespace, not part of the value.
        (&["a=1 \t"], "a=1"),
        (&["0tenant@system=1"], "0tenant@system=1"),
        (&["a/b*c_d-e=1"], "a/b*c_d-e=1"),
        (
            &["k=~!\"#$%&'()*+-./:;<>?@[\\]^_`{|}"],
            "k=~!\"#$%&'()*+-./:;<>?@[\\]^_`{|}",
        ),
    ];
    for (lines, expected) in cases {
        let state = parse(lines).unwrap();
        assert_eq!(state.header_value(), Some(*expected), "{lines:?}");
    }
}

#[test]
fn empty_headers_are_empty_and_never_written() {
    for lines in [&[][..], &[""], &[" , ,\t"], &["", ""]] {
        let state = parse(lines).unwrap();
        assert!(state.is_empty());
        assert_eq!(state.header_value(), None);
        assert_eq!(state.to_string(), "");
    }
}

#[test]
fn invalid_vectors_name_their_reason() {
    let long_key = format!("{}=1", "a".repeat(257));
    let long_value = format!("a={}", "v".repeat(257));
    let cases: &[(&str, E)] = &[
        ("foo", E::MissingEquals),
        ("foo=1,bar", E::MissingEquals),
        ("=1", E::InvalidKey),
        ("Foo=1", E::InvalidKey),
        ("foo.bar=1", E::InvalidKey),
        ("foo =1", E::InvalidKey),
        ("fo o=1", E::InvalidKey),
        ("@foo=1", E::InvalidKey),
        ("_foo@bar=1", E::InvalidKey),
        (&long_key, E::InvalidKey),
        ("ké=1", E::InvalidKey),
        ("foo=", E::InvalidValue),
        ("foo=bar=baz", E::InvalidValue),
        ("foo=a\u{7f}", E::InvalidValue),
        ("foo=a\u{1f}b", E::InvalidValue),
        ("foo=é", E::InvalidValue),
        (&long_value, E::InvalidValue),
    ];
    for (value, reason) in cases {
        assert_eq!(parse(&[value]), Err(*reason), "{value:?}");
    }
}

/// W3C Trace Context Level 2 (Candidate Recommendation Draft, and
/// w3c/trace-context main since #584): one key rule,
/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )` with `@` an ordinary
/// `keychar`; no separate tenant/system rule.
#[test]
fn at_sign_is_an_ordinary_key_character() {
    let valid = [
        "foo@=1".to_owned(),
        "foo@@bar=1".to_owned(),
        "foo@bar@baz=1".to_owned(),
        "foo@1bar=1".to_owned(),
        "1foo=1".to_owned(),
        "0=1".to_owned(),
        "0tenant@system=1".to_owned(),
        // 245 characters: longer than the old 241-character tenant.
        format!("{}@v=1", "t".repeat(242)),
        // A 15-character "system" after the `@`.
        format!("t@{}=1", "v".repeat(15)),
        // 256 characters, `@` the last.
        format!("{}@=1", "t".repeat(255)),
        format!("9{}=1", "@".repeat(255)),
    ];
    for member in &valid {
        let state = parse(&["foo2=0", member]).unwrap_or_else(|err| panic!("{member}: {err}"));
        let key = &member[..member.len() - 2];
        assert_eq!(state.get(key), Some("1"), "{member}");
        assert_eq!(state.len(), 2, "{member}");
    }
    let invalid = [
        "@foo=1".to_owned(),
        "@=1".to_owned(),
        "_foo@bar=1".to_owned(),
        "-foo=1".to_owned(),
        "Foo@bar=1".to_owned(),
        "foo@Bar=1".to_owned(),
        "foo@bar.baz=1".to_owned(),
        // 257 characters, with or without `@`.
        format!("{}@=1", "t".repeat(256)),
        format!("{}=1", "z".repeat(257)),
    ];
    for member in &invalid {
        assert_eq!(parse(&["foo2=0", member]), Err(E::InvalidKey), "{member}");
    }

    // The same rule for the keys we write.
    let mut state = TraceState::new();
    state.insert("1ours@vendor@x", "1").unwrap();
    assert_eq!(state.header_value(), Some("1ours@vendor@x=1"));
    assert_eq!(state.insert("@ours", "1"), Err(E::InvalidKey));
    assert_eq!(state.insert(&"o".repeat(257), "1"), Err(E::InvalidKey));
}

/// Level 2: a participant MAY discard duplicate keys it did not write; the
/// first (most recent) member is kept and the header survives.
#[test]
fn duplicate_keys_drop_the_later_member_not_the_header() {
    let cases: &[(&[&str], &str)] = &[
        (&["foo=1,foo=1"], "foo=1"),
        (&["foo=1,foo=2"], "foo=1"),
        (&["foo=1,bar=2,foo=3"], "foo=1,bar=2"),
        (&["foo=1", "foo=1"], "foo=1"),
        (&["foo=1", "foo=2"], "foo=1"),
        (&["a=1, foo=1", " foo=2 ,b=2"], "a=1,foo=1,b=2"),
    ];
    for (lines, expected) in cases {
        let state = parse(lines).unwrap_or_else(|err| panic!("{lines:?}: {err}"));
        assert_eq!(state.header_value(), Some(*expected), "{lines:?}");
    }
}

/// Dropping a duplicate is a change made after reading the header: the
/// header as received still may not have more than 32 members.
#[test]
fn duplicates_count_towards_the_member_limit() {
    let members: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
    let at_limit = format!("{},k0=w", members[..31].join(","));
    assert_eq!(parse(&[&at_limit]).unwrap().len(), 31);
    let over = format!("{},k0=w", members.join(","));
    assert_eq!(parse(&[&over]), Err(E::TooManyMembers));
}

#[test]
fn limits_at_their_edges() {
    let ok = [
        format!("{}=1", "a".repeat(256)),
        format!("a={}", "v".repeat(256)),
        format!("{}@{}=1", "t".repeat(241), "v".repeat(14)),
    ];
    for member in &ok {
        assert!(parse(&[member]).is_ok(), "{}", member.len());
    }
    let members: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
    assert_eq!(parse(&[&members.join(",")]).unwrap().len(), 32);
    let too_many = format!("{},k32=v", members.join(","));
    assert_eq!(parse(&[&too_many]), Err(E::TooManyMembers));
    // Split over lines counts the same.
    let (a, b) = members.split_at(16);
    assert_eq!(
        parse(&[&a.join(","), &b.join(","), "x=1"]),
        Err(E::TooManyMembers)
    );
}

#[test]
fn insert_moves_our_member_to_the_front() {
    let mut state = parse(&["a=1,ours=old,b=2"]).unwrap();
    state.insert("ours", "new").unwrap();
    assert_eq!(state.to_string(), "ours=new,a=1,b=2");
    assert_eq!(state.insert("Bad", "1"), Err(E::InvalidKey));
    assert_eq!(state.insert("ok", ""), Err(E::InvalidValue));
    assert_eq!(
        state.to_string(),
        "ours=new,a=1,b=2",
        "unchanged by a refused insert"
    );

    let mut empty = TraceState::new();
    empty.insert("ours", "1").unwrap();
    assert_eq!(empty.header_value(), Some("ours=1"));
}

#[test]
fn remove_drops_a_member_and_the_header_when_last() {
    let mut state = parse(&["a=1,b=2"]).unwrap();
    assert!(state.remove("a"));
    assert!(!state.remove("a"));
    assert_eq!(state.to_string(), "b=2");
    assert!(state.remove("b"));
    assert_eq!(state.header_value(), None);
}

#[test]
fn truncation_keeps_at_least_512_characters() {
    let members: Vec<String> = (0..32)
        .map(|i| format!("k{i:02}={}", "v".repeat(20)))
        .collect();
    let mut state = parse(&[&members.join(",")]).unwrap();
    let full = state.to_string().len();
    assert!(full > 512);
    state.truncate(100);
    let cut = state.to_string();
    assert!(cut.len() <= 512 && cut.len() > 512 - 25, "{}", cut.len());
    assert!(cut.starts_with("k00="));
    let mut untouched = parse(&[&members.join(",")]).unwrap();
    untouched.truncate(full);
    assert_eq!(untouched.to_string().len(), full);
}

#[test]
fn lookups() {
    let state = parse(&["rojo=1,congo=2"]).unwrap();
    assert_eq!(state.get("congo"), Some("2"));
    assert_eq!(state.get("nope"), None);
    assert_eq!(
        state.iter().collect::<Vec<_>>(),
        [("rojo", "1"), ("congo", "2")]
    );
    assert_eq!(format!("{state:?}"), r#"{"rojo": "1", "congo": "2"}"#);
}
