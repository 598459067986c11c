//! The authorization server's checks: what `ServerPolicy` accepts and
//! refuses at the authorization and token endpoints.

use palisade_pkce::{
    ChallengeError, ChallengeMethod, CodeChallenge, CodeVerifier, ServerPolicy, VerifierError,
    VerifyError,
};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const OTHER_VERIFIER: &str = "xBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn s256() -> CodeChallenge {
    CodeChallenge::parse(CHALLENGE, ChallengeMethod::S256).unwrap()
}

fn plain() -> CodeChallenge {
    CodeChallenge::parse(VERIFIER, ChallengeMethod::Plain).unwrap()
}

#[test]
fn the_default_requires_pkce_and_s256() {
    assert_eq!(ServerPolicy::default(), ServerPolicy::new());
    let policy = ServerPolicy::new();
    assert_eq!(policy.accept(None, None), Err(ChallengeError::Missing));
    assert_eq!(
        policy.accept(Some(VERIFIER), Some("plain")),
        Err(ChallengeError::PlainNotAllowed)
    );
    assert_eq!(
        policy.accept(Some(CHALLENGE), Some("S256")),
        Ok(Some(s256()))
    );
}

#[test]
fn a_missing_method_means_plain() {
    assert_eq!(
        ServerPolicy::new().accept(Some(VERIFIER), None),
        Err(ChallengeError::PlainNotAllowed)
    );
    assert_eq!(
        ServerPolicy::new()
            .allow_plain(true)
            .accept(Some(VERIFIER), None),
        Ok(Some(plain()))
    );
}

#[test]
fn method_names_are_case_sensitive_and_closed() {
    let policy = ServerPolicy::new().allow_plain(true);
    for method in ["s256", "S-256", "PLAIN", "Plain", "", "S256 ", "sha256"] {
        assert_eq!(
            policy.accept(Some(CHALLENGE), Some(method)),
            Err(ChallengeError::UnknownMethod),
            "{method:?}"
        );
    }
}

#[test]
fn a_method_without_a_challenge_is_refused_even_when_pkce_is_optional() {
    let policy = ServerPolicy::new().require_pkce(false);
    assert_eq!(
        policy.accept(None, Some("S256")),
        Err(ChallengeError::MethodWithoutChallenge)
    );
    assert_eq!(policy.accept(None, None), Ok(None));
}

#[test]
fn malformed_s256_challenges_are_refused() {
    let policy = ServerPolicy::new();
    let method = ChallengeMethod::S256;
    assert_eq!(
        policy.accept(Some(&CHALLENGE[..42]), Some("S256")),
        Err(ChallengeError::InvalidLength { method, len: 42 })
    );
    assert_eq!(
        policy.accept(Some(&format!("{CHALLENGE}=")), Some("S256")),
        Err(ChallengeError::InvalidLength { method, len: 44 })
    );
    let with_plus = CHALLENGE.replace('-', "+");
    assert_eq!(
        policy.accept(Some(&with_plus), Some("S256")),
        Err(ChallengeError::InvalidCharacter {
            method,
            index: 40,
            ch: '+'
        })
    );
    // `.` and `~` are unreserved but not base64url.
    let with_dot = format!("{}.", &CHALLENGE[..42]);
    assert!(matches!(
        policy.accept(Some(&with_dot), Some("S256")),
        Err(ChallengeError::InvalidCharacter { ch: '.', .. })
    ));
    // `N` in place of the final `M` sets a bit past the 256th: no digest
    // encodes so.
    let non_canonical = format!("{}N", &CHALLENGE[..42]);
    assert_eq!(
        policy.accept(Some(&non_canonical), Some("S256")),
        Err(ChallengeError::NonCanonical)
    );
}

#[test]
fn malformed_plain_challenges_are_refused() {
    let policy = ServerPolicy::new().allow_plain(true);
    let method = ChallengeMethod::Plain;
    assert_eq!(
        policy.accept(Some("short"), Some("plain")),
        Err(ChallengeError::InvalidLength { method, len: 5 })
    );
    assert_eq!(
        policy.accept(Some(&format!("{VERIFIER}/")), Some("plain")),
        Err(ChallengeError::InvalidCharacter {
            method,
            index: 43,
            ch: '/'
        })
    );
}

#[test]
fn a_matching_verifier_passes_and_any_other_fails() {
    let policy = ServerPolicy::new();
    assert_eq!(policy.verify(Some(&s256()), Some(VERIFIER)), Ok(()));
    assert_eq!(
        policy.verify(Some(&s256()), Some(OTHER_VERIFIER)),
        Err(VerifyError::Mismatch)
    );
    // The challenge itself is no verifier for S256.
    assert_eq!(
        policy.verify(Some(&s256()), Some(CHALLENGE)),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn downgrade_is_refused_both_ways() {
    for policy in [ServerPolicy::new(), ServerPolicy::new().require_pkce(false)] {
        assert_eq!(
            policy.verify(None, Some(VERIFIER)),
            Err(VerifyError::UnexpectedVerifier)
        );
        assert_eq!(
            policy.verify(Some(&s256()), None),
            Err(VerifyError::MissingVerifier)
        );
    }
}

#[test]
fn a_code_without_challenge_redeems_only_while_pkce_is_optional() {
    assert_eq!(
        ServerPolicy::new().require_pkce(false).verify(None, None),
        Ok(())
    );
    assert_eq!(
        ServerPolicy::new().verify(None, None),
        Err(VerifyError::MissingVerifier)
    );
}

#[test]
fn malformed_verifiers_are_refused_before_hashing() {
    let policy = ServerPolicy::new();
    let cases = [
        ("", VerifierError::TooShort { len: 0 }),
        (&VERIFIER[..42], VerifierError::TooShort { len: 42 }),
        (
            "ab cdefghijklmnopqrstuvwxyzabcdefghijklmnopq",
            VerifierError::InvalidCharacter { index: 2, ch: ' ' },
        ),
    ];
    for (verifier, expected) in cases {
        assert_eq!(
            policy.verify(Some(&s256()), Some(verifier)),
            Err(VerifyError::MalformedVerifier(expected))
        );
    }
    let long = "a".repeat(129);
    assert_eq!(
        policy.verify(Some(&s256()), Some(&long)),
        Err(VerifyError::MalformedVerifier(VerifierError::TooLong {
            len: 129
        }))
    );
}

#[test]
fn plain_verifies_only_while_allowed() {
    let allowed = ServerPolicy::new().allow_plain(true);
    assert_eq!(allowed.verify(Some(&plain()), Some(VERIFIER)), Ok(()));
    assert_eq!(
        allowed.verify(Some(&plain()), Some(OTHER_VERIFIER)),
        Err(VerifyError::Mismatch)
    );
    // Turned off after the code was issued: refused at once.
    assert_eq!(
        ServerPolicy::new().verify(Some(&plain()), Some(VERIFIER)),
        Err(VerifyError::PlainNotAllowed)
    );
}

#[test]
fn a_stored_challenge_round_trips_through_its_text() {
    let verifier = CodeVerifier::generate();
    for method in [ChallengeMethod::S256, ChallengeMethod::Plain] {
        let challenge = CodeChallenge::new(&verifier, method);
        let method_name: ChallengeMethod = challenge.method().as_str().parse().unwrap();
        let restored = CodeChallenge::parse(challenge.as_str(), method_name).unwrap();
        assert_eq!(restored, challenge);
        assert_eq!(
            ServerPolicy::new()
                .allow_plain(true)
                .verify(Some(&restored), Some(verifier.expose_secret())),
            Ok(())
        );
    }
}

#[test]
fn errors_name_their_oauth_code() {
    assert_eq!(ChallengeError::Missing.oauth_error(), "invalid_request");
    assert_eq!(
        ChallengeError::PlainNotAllowed.oauth_error(),
        "invalid_request"
    );
    assert_eq!(VerifyError::Mismatch.oauth_error(), "invalid_grant");
    assert_eq!(
        VerifyError::UnexpectedVerifier.oauth_error(),
        "invalid_grant"
    );
    assert_eq!(
        VerifyError::Mismatch.to_string(),
        "code_verifier does not match the code_challenge"
    );
    let malformed = VerifyError::MalformedVerifier(VerifierError::TooShort { len: 1 });
    assert!(std::error::Error::source(&malformed).is_some());
}
