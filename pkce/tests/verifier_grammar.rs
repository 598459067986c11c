//! The verifier grammar of RFC 7636 section 4.1, at its edges.

use palisade_pkce::{
    CodeVerifier, GenerateError, MAX_VERIFIER_LEN, MIN_VERIFIER_LEN, VerifierError,
};

#[test]
fn lengths_43_and_128_are_accepted() {
    for len in [MIN_VERIFIER_LEN, MAX_VERIFIER_LEN] {
        let input = "a".repeat(len);
        assert_eq!(CodeVerifier::parse(&input).unwrap().expose_secret(), input);
    }
}

#[test]
fn length_42_is_too_short() {
    assert_eq!(
        CodeVerifier::parse(&"a".repeat(42)).unwrap_err(),
        VerifierError::TooShort { len: 42 }
    );
}

#[test]
fn length_129_is_too_long() {
    assert_eq!(
        CodeVerifier::parse(&"a".repeat(129)).unwrap_err(),
        VerifierError::TooLong { len: 129 }
    );
}

#[test]
fn empty_input_is_too_short() {
    assert_eq!(
        CodeVerifier::parse("").unwrap_err(),
        VerifierError::TooShort { len: 0 }
    );
}

#[test]
fn every_unreserved_character_is_accepted() {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    CodeVerifier::parse(alphabet).unwrap();
}

#[test]
fn every_other_ascii_character_is_refused_where_it_stands() {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    for byte in (0u8..=127).filter(|&b| !unreserved(b)) {
        let mut input = "a".repeat(50).into_bytes();
        input[17] = byte;
        let input = String::from_utf8(input).unwrap();
        assert_eq!(
            CodeVerifier::parse(&input).unwrap_err(),
            VerifierError::InvalidCharacter {
                index: 17,
                ch: char::from(byte)
            },
            "byte {byte:#04x}"
        );
    }
}

#[test]
fn non_ascii_is_refused() {
    let input = format!("{}ü{}", "a".repeat(20), "b".repeat(30));
    assert_eq!(
        CodeVerifier::parse(&input).unwrap_err(),
        VerifierError::InvalidCharacter {
            index: 20, ch: 'ü'
        }
    );
    // Counted in bytes, 43 characters of which one is two bytes long are 44
    // bytes, and still refused for the character.
    let input = format!("é{}", "a".repeat(42));
    assert!(matches!(
        CodeVerifier::parse(&input),
        Err(VerifierError::InvalidCharacter { index: 0, ch: 'é' })
    ));
}

#[test]
fn a_percent_encoded_or_padded_value_is_refused() {
    let base = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    for bad in [format!("{base}="), format!("{base}%2B"), format!("{base}+")] {
        assert!(matches!(
            CodeVerifier::parse(&bad),
            Err(VerifierError::InvalidCharacter { index: 43, .. })
        ));
    }
}

#[test]
fn try_from_string_and_from_str_agree_with_parse() {
    let good = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let from_string = CodeVerifier::try_from(good.to_owned()).unwrap();
    let from_str: CodeVerifier = good.parse().unwrap();
    assert_eq!(from_string, from_str);
    assert_eq!(
        CodeVerifier::try_from("short".to_owned()).unwrap_err(),
        VerifierError::TooShort { len: 5 }
    );
}

#[test]
fn generated_verifiers_have_the_default_length() {
    let verifier = CodeVerifier::generate();
    assert_eq!(verifier.expose_secret().len(), 43);
    assert_eq!(
        CodeVerifier::try_generate().unwrap().expose_secret().len(),
        43
    );
}

#[test]
fn generate_with_length_refuses_lengths_outside_the_range() {
    assert_eq!(
        CodeVerifier::generate_with_length(42).unwrap_err(),
        GenerateError::InvalidLength { len: 42 }
    );
    assert_eq!(
        CodeVerifier::generate_with_length(129).unwrap_err(),
        GenerateError::InvalidLength { len: 129 }
    );
}

#[test]
fn debug_never_shows_the_secret() {
    let verifier = CodeVerifier::parse("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
    let debug = format!("{verifier:?} {verifier:#?}");
    assert!(!debug.contains("dBjf"), "{debug}");
    assert_eq!(
        format!("{verifier:?}"),
        "CodeVerifier(<redacted, 43 chars>)"
    );
}

#[test]
fn errors_describe_the_problem() {
    assert_eq!(
        VerifierError::TooShort { len: 42 }.to_string(),
        "code verifier has 42 characters, fewer than the 43 required"
    );
    assert_eq!(
        VerifierError::InvalidCharacter { index: 3, ch: ' ' }.to_string(),
        "code verifier has ' ' at byte 3, outside [A-Za-z0-9-._~]"
    );
}
