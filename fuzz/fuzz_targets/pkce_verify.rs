//! Arbitrary authorization and token requests through `ServerPolicy`: no
//! panic, and every verdict agrees with a straightforward reference.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_pkce::ServerPolicy;

#[path = "reference.rs"]
mod reference;

#[derive(Debug, Arbitrary)]
struct Exchange<'a> {
    require_pkce: bool,
    allow_plain: bool,
    challenge: Option<&'a str>,
    method: Option<&'a str>,
    /// Present the verifier the challenge was derived from instead of
    /// `verifier`, so matching pairs are reached as often as not.
    derive_challenge: bool,
    verifier: Option<&'a str>,
}

/// The reference verdict of the authorization endpoint.
fn reference_accept(
    x: &Exchange<'_>,
    challenge: Option<&str>,
) -> Result<Option<(bool, String)>, ()> {
    let Some(value) = challenge else {
        return match (x.method, x.require_pkce) {
            (None, false) => Ok(None),
            _ => Err(()),
        };
    };
    let plain = match x.method {
        None | Some("plain") => true,
        Some("S256") => false,
        Some(_) => return Err(()),
    };
    if plain && !x.allow_plain {
        return Err(());
    }
    let well_formed = if plain {
        reference::is_verifier(value)
    } else {
        reference::is_s256_challenge(value)
    };
    if well_formed {
        Ok(Some((plain, value.to_owned())))
    } else {
        Err(())
    }
}

/// The reference verdict of the token endpoint.
fn reference_verify(x: &Exchange<'_>, stored: Option<&(bool, String)>) -> bool {
    match (stored, x.verifier) {
        (None, None) => !x.require_pkce,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((plain, value)), Some(verifier)) => {
            (!plain || x.allow_plain)
                && reference::is_verifier(verifier)
                && if *plain {
                    verifier == value
                } else {
                    reference::s256(verifier) == *value
                }
        }
    }
}

fuzz_target!(|x: Exchange<'_>| {
    let policy = ServerPolicy::new()
        .require_pkce(x.require_pkce)
        .allow_plain(x.allow_plain);
    let derived;
    let challenge = match (x.derive_challenge, x.verifier, x.method) {
        (true, Some(verifier), Some("S256")) => {
            derived = reference::s256(verifier);
            Some(derived.as_str())
        }
        (true, Some(verifier), _) => Some(verifier),
        _ => x.challenge,
    };

    let accepted = policy.accept(challenge, x.method);
    let expected = reference_accept(&x, challenge);
    assert_eq!(accepted.is_ok(), expected.is_ok(), "{x:?} {accepted:?}");
    let (Ok(stored), Ok(expected)) = (accepted, expected) else {
        return;
    };
    assert_eq!(
        stored.as_ref().map(|c| c.as_str()),
        expected.as_ref().map(|(_, v)| v.as_str())
    );

    let verdict = policy.verify(stored.as_ref(), x.verifier);
    assert_eq!(
        verdict.is_ok(),
        reference_verify(&x, expected.as_ref()),
        "{x:?} {verdict:?}"
    );
});
