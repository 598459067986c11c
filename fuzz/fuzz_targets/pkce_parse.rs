//! Arbitrary bytes into every parser of palisade-pkce: none may panic, and
//! each must agree with the reference grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

#[path = "reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = CodeVerifier::parse(&text);
    assert_eq!(parsed.is_ok(), reference::is_verifier(&text), "{text:?}");
    if let Ok(verifier) = parsed {
        assert_eq!(verifier.expose_secret(), text);
    }
    assert_eq!(
        CodeVerifier::try_from(text.to_string()).is_ok(),
        reference::is_verifier(&text)
    );

    assert_eq!(
        CodeChallenge::parse(&text, ChallengeMethod::S256).is_ok(),
        reference::is_s256_challenge(&text),
        "{text:?}"
    );
    assert_eq!(
        CodeChallenge::parse(&text, ChallengeMethod::Plain).is_ok(),
        reference::is_verifier(&text)
    );
    let method = text.parse::<ChallengeMethod>();
    assert_eq!(method.is_ok(), text == "S256" || text == "plain");
});
