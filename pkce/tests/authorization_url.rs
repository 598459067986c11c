//! The authorization request URL helper.

use palisade_pkce::{AuthorizationUrl, AuthorizationUrlError, CodeChallenge, CodeVerifier, State};

fn pairs(url: &palisade_pkce::Url) -> Vec<(String, String)> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[test]
fn adds_every_parameter_in_order() {
    let verifier = CodeVerifier::parse("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
    let state = State::from_stored("xyz");
    let url = AuthorizationUrl::new("https://auth.example.com/authorize", "my app")
        .unwrap()
        .redirect_uri("https://app.example.com/cb?a=1&b=2")
        .scope("openid profile")
        .param("nonce", "n-0S6_WzA2Mj")
        .unwrap()
        .build(&CodeChallenge::s256(&verifier), &state);
    assert_eq!(
        url.as_str(),
        "https://auth.example.com/authorize?response_type=code&client_id=my+app\
         &redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fa%3D1%26b%3D2\
         &scope=openid+profile&nonce=n-0S6_WzA2Mj\
         &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
         &code_challenge_method=S256&state=xyz"
    );
}

#[test]
fn values_round_trip_through_decoding() {
    let awkward = "a b+c&d=e%f/g?h#i~ü";
    let url = AuthorizationUrl::new("http://127.0.0.1:8080/oauth/authorize?x=%20y", awkward)
        .unwrap()
        .redirect_uri(awkward)
        .scope(awkward)
        .build(
            &CodeChallenge::s256(&CodeVerifier::generate()),
            &State::from_stored(awkward),
        );
    let pairs = pairs(&url);
    assert_eq!(pairs[0], ("x".to_owned(), " y".to_owned()));
    for name in ["client_id", "redirect_uri", "scope", "state"] {
        let value = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        assert_eq!(value, Some(awkward), "{name}");
    }
    assert!(url.fragment().is_none());
}

#[test]
fn endpoints_that_cannot_carry_the_request_are_refused() {
    assert!(matches!(
        AuthorizationUrl::new("/authorize", "c"),
        Err(AuthorizationUrlError::Parse(_))
    ));
    assert_eq!(
        AuthorizationUrl::new("ftp://auth.example.com/authorize", "c").unwrap_err(),
        AuthorizationUrlError::UnsupportedScheme
    );
    assert_eq!(
        AuthorizationUrl::new("https://auth.example.com/authorize#x", "c").unwrap_err(),
        AuthorizationUrlError::Fragment
    );
    assert_eq!(
        AuthorizationUrl::new("https://auth.example.com/authorize?state=1", "c").unwrap_err(),
        AuthorizationUrlError::ReservedParameter {
            name: "state".to_owned()
        }
    );
}

#[test]
fn reserved_parameters_cannot_be_given_twice() {
    let builder = AuthorizationUrl::new("https://auth.example.com/authorize", "c").unwrap();
    for name in [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ] {
        assert_eq!(
            builder.clone().param(name, "x").unwrap_err(),
            AuthorizationUrlError::ReservedParameter {
                name: name.to_owned()
            }
        );
    }
}
