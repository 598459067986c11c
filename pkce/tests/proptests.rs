//! Property tests against a straightforward reference model of RFC 7636.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, ServerPolicy, VerifyError};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// The reference: the RFC's grammar and transform, written as plainly as
/// possible.
mod reference {
    use super::*;

    pub(crate) fn is_verifier(s: &str) -> bool {
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        (43..=128).contains(&s.chars().count()) && s.chars().all(unreserved)
    }

    pub(crate) fn s256(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }
}

fn verifier_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{43,128}"
}

/// Strings near the grammar: mostly valid characters, lengths around the
/// bounds, a few characters from outside.
fn near_verifier_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~-]{0,140}",
        "[A-Za-z0-9._~ +/=%é\u{0}-]{38,135}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn every_generated_verifier_parses(len in 43usize..=128) {
        let verifier = CodeVerifier::generate_with_length(len).unwrap();
        let text = verifier.expose_secret();
        prop_assert_eq!(text.len(), len);
        prop_assert!(reference::is_verifier(text));
        prop_assert_eq!(CodeVerifier::parse(text).unwrap(), verifier);
    }

    #[test]
    fn parse_agrees_with_the_reference(text in near_verifier_text()) {
        prop_assert_eq!(CodeVerifier::parse(&text).is_ok(), reference::is_verifier(&text));
    }

    #[test]
    fn every_s256_challenge_is_43_base64url_characters(text in verifier_text()) {
        let challenge = CodeChallenge::s256(&CodeVerifier::parse(&text).unwrap());
        prop_assert_eq!(challenge.as_str().len(), 43);
        prop_assert!(challenge
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(challenge.as_str(), reference::s256(&text));
    }

    #[test]
    fn a_verifier_verifies_its_own_challenge(text in verifier_text()) {
        let verifier = CodeVerifier::parse(&text).unwrap();
        let policy = ServerPolicy::new().allow_plain(true);
        for method in [ChallengeMethod::S256, ChallengeMethod::Plain] {
            let challenge = CodeChallenge::new(&verifier, method);
            let accepted = policy
                .accept(Some(challenge.as_str()), Some(method.as_str()))
                .unwrap();
            prop_assert_eq!(accepted.as_ref(), Some(&challenge));
            prop_assert_eq!(policy.verify(accepted.as_ref(), Some(&text)), Ok(()));
        }
    }

    #[test]
    fn no_other_verifier_verifies_a_challenge(a in verifier_text(), b in verifier_text()) {
        prop_assume!(a != b);
        let policy = ServerPolicy::new().allow_plain(true);
        for method in [ChallengeMethod::S256, ChallengeMethod::Plain] {
            let challenge = CodeChallenge::new(&CodeVerifier::parse(&a).unwrap(), method);
            prop_assert_eq!(
                policy.verify(Some(&challenge), Some(&b)),
                Err(VerifyError::Mismatch)
            );
        }
    }

    #[test]
    fn verify_agrees_with_the_reference(
        stored in verifier_text(),
        presented in near_verifier_text(),
        same in any::<bool>(),
    ) {
        let presented = if same { stored.clone() } else { presented };
        let challenge = CodeChallenge::s256(&CodeVerifier::parse(&stored).unwrap());
        let expected = reference::is_verifier(&presented)
            && reference::s256(&presented) == challenge.as_str();
        let verdict = ServerPolicy::new().verify(Some(&challenge), Some(&presented));
        prop_assert_eq!(verdict.is_ok(), expected);
    }

    #[test]
    fn s256_challenge_parsing_accepts_exactly_digest_encodings(text in "[A-Za-z0-9_-]{42,44}") {
        let decodes_to_digest = URL_SAFE_NO_PAD
            .decode(&text)
            .is_ok_and(|octets| octets.len() == 32);
        let parsed = CodeChallenge::parse(&text, ChallengeMethod::S256);
        prop_assert_eq!(parsed.is_ok(), decodes_to_digest);
    }
}
