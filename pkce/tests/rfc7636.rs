//! The worked example of RFC 7636 appendix B, end to end.

use palisade_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, ServerPolicy};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

#[test]
fn appendix_b_verifier_derives_its_s256_challenge() {
    let verifier = CodeVerifier::parse(VERIFIER).unwrap();
    let challenge = CodeChallenge::s256(&verifier);
    assert_eq!(challenge.as_str(), CHALLENGE);
    assert_eq!(challenge.method(), ChallengeMethod::S256);
    assert_eq!(challenge.to_string(), CHALLENGE);
}

#[test]
fn appendix_b_pair_passes_the_server_check() {
    let policy = ServerPolicy::new();
    let stored = policy.accept(Some(CHALLENGE), Some("S256")).unwrap();
    assert_eq!(stored.as_ref().map(CodeChallenge::as_str), Some(CHALLENGE));
    assert_eq!(policy.verify(stored.as_ref(), Some(VERIFIER)), Ok(()));
}

#[test]
fn appendix_b_verifier_comes_from_the_rfc_octets() {
    // The 32 octets listed in appendix B, base64url-encoded, are the verifier.
    let octets: [u8; 32] = [
        116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212, 37,
        77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
    ];
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(octets);
    assert_eq!(encoded, VERIFIER);
}

#[test]
fn plain_challenge_is_the_verifier() {
    let verifier = CodeVerifier::parse(VERIFIER).unwrap();
    let challenge = CodeChallenge::new(&verifier, ChallengeMethod::Plain);
    assert_eq!(challenge.as_str(), VERIFIER);
    assert_eq!(challenge.method(), ChallengeMethod::Plain);
    let policy = ServerPolicy::new().allow_plain(true);
    assert_eq!(policy.verify(Some(&challenge), Some(VERIFIER)), Ok(()));
}
