//! Who may sign in and what they may do, through the embedded system's
//! gateway: passwords, registered clients and their exact redirect URIs,
//! `state`, the bearer scheme, and roles as data.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use palisade_order_system::embedded::System;
use palisade_order_system::identity::{CLI_CLIENT_ID, CLI_REDIRECT_URI, Credential, hash_password};
use palisade_order_system::load::Gateway;
use palisade_pkce::{CodeChallenge, CodeVerifier};
use palisade_token_bucket::Bucket;

mod support;
use support::{credentials, settings, signed_in, start};

/// The CLI client's sign-in form fields, `overrides` replacing or
/// removing (an empty value) some.
fn sign_in_form(overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let challenge = CodeChallenge::s256(&CodeVerifier::generate());
    let mut fields: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", CLI_CLIENT_ID),
        ("redirect_uri", CLI_REDIRECT_URI),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "s-1"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    for (name, value) in overrides {
        fields.retain(|(field, _)| field != name);
        if !value.is_empty() {
            fields.push(((*name).to_owned(), (*value).to_owned()));
        }
    }
    fields
}

fn encoded(fields: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// `POST /authorize` with `fields`.
async fn post_authorize(system: &System, fields: &[(String, String)]) -> http::Response<Bytes> {
    Gateway::new(&format!("http://{}", system.address))
        .exchange(
            Method::POST,
            "/authorize",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(encoded(fields)),
        )
        .await
        .unwrap()
}

/// `GET /authorize?fields`.
async fn get_authorize(system: &System, fields: &[(String, String)]) -> http::Response<Bytes> {
    Gateway::new(&format!("http://{}", system.address))
        .exchange(
            Method::GET,
            &format!("/authorize?{}", encoded(fields)),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap()
}

/// The query of a redirect's `Location`, if it redirected.
fn redirected_to(response: &http::Response<Bytes>) -> Option<Vec<(String, String)>> {
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    let url = url::Url::parse(location).unwrap();
    Some(url.query_pairs().into_owned().collect())
}

async fn stop(system: System, dir: std::path::PathBuf) {
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_without_or_with_a_wrong_password_is_refused() {
    let (system, dir) = start().await;
    let alice = credentials(&system).of("alice").unwrap().clone();
    let bob = credentials(&system).of("bob").unwrap().clone();
    for (username, password) in [
        ("alice", ""),
        ("alice", "wrong"),
        ("alice", bob.password.as_str()),
        ("", alice.password.as_str()),
        ("nobody", alice.password.as_str()),
    ] {
        let form = sign_in_form(&[("username", username), ("password", password)]);
        let refused = post_authorize(&system, &form).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{username}");
        assert_eq!(redirected_to(&refused), None, "no code for {username}");
        let page = String::from_utf8_lossy(refused.body());
        assert!(page.contains("wrong user name or password"), "{page}");
    }
    let mut gateway = Gateway::new(&format!("http://{}", system.address));
    let error = gateway
        .sign_in(&Credential {
            password: "wrong".to_owned(),
            ..alice.clone()
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("may not sign in"), "{error}");
    assert_eq!(gateway.authorization(), None);

    let form = sign_in_form(&[("username", "alice"), ("password", &alice.password)]);
    let signed_in = post_authorize(&system, &form).await;
    assert_eq!(signed_in.status(), StatusCode::FOUND);
    let query = redirected_to(&signed_in).unwrap();
    assert!(query.iter().any(|(name, _)| name == "code"), "{query:?}");
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_client_or_redirect_gets_no_code_and_no_redirect() {
    let (system, dir) = start().await;
    let alice = credentials(&system).of("alice").unwrap().clone();
    let password = alice.password.as_str();
    for (name, value) in [
        ("client_id", "someone-else"),
        ("client_id", ""),
        ("redirect_uri", "http://evil.example/callback"),
        ("redirect_uri", "http://localhost/callback/../evil"),
        (
            "redirect_uri",
            "http://localhost/callback?next=http://evil.example",
        ),
        ("redirect_uri", "http://localhost/callback#x"),
        ("redirect_uri", "http://LOCALHOST/callback"),
        ("redirect_uri", ""),
    ] {
        let fields = sign_in_form(&[(name, value), ("username", "alice"), ("password", password)]);
        for response in [
            get_authorize(&system, &fields).await,
            post_authorize(&system, &fields).await,
        ] {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}={value}");
            assert_eq!(redirected_to(&response), None, "{name}={value}");
            assert!(response.headers().get(header::LOCATION).is_none());
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(body["error"], "invalid_request", "{name}={value}");
        }
    }
    // The registered client and redirect get the form.
    let form = get_authorize(&system, &sign_in_form(&[])).await;
    assert_eq!(form.status(), StatusCode::OK);
    let page = String::from_utf8_lossy(form.body());
    assert!(
        page.contains(r#"<form method="post" action="/authorize">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"name="password" type="password""#),
        "{page}"
    );
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_round_trips_through_the_form_and_the_redirect() {
    let (system, dir) = start().await;
    let alice = credentials(&system).of("alice").unwrap().clone();
    let state = r#"a b&c=d/é?"<x>"#;
    // The form carries it over, escaped.
    let form = get_authorize(&system, &sign_in_form(&[("state", state)])).await;
    let page = String::from_utf8_lossy(form.body());
    assert!(
        page.contains(r#"name="state" value="a b&amp;c=d/é?&quot;&lt;x&gt;""#),
        "{page}"
    );
    let fields = sign_in_form(&[
        ("state", state),
        ("username", "alice"),
        ("password", &alice.password),
    ]);
    let query = redirected_to(&post_authorize(&system, &fields).await).unwrap();
    let returned: Vec<&str> = query
        .iter()
        .filter(|(name, _)| name == "state")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(returned, [state]);
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let token = alice
        .authorization()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let anonymous = Gateway::new(&format!("http://{}", system.address));
    for (scheme, expected) in [
        ("Bearer", StatusCode::NOT_FOUND),
        ("bearer", StatusCode::NOT_FOUND),
        ("BEARER", StatusCode::NOT_FOUND),
        ("Basic", StatusCode::UNAUTHORIZED),
        ("Bearerx", StatusCode::UNAUTHORIZED),
    ] {
        let authorization = format!("{scheme} {token}");
        let (status, _) = anonymous
            .send(
                Method::GET,
                "/orders/none",
                &[("authorization", authorization.as_str())],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, expected, "{scheme}");
    }
    let (status, _) = anonymous
        .send(
            Method::GET,
            "/orders/none",
            &[("authorization", token.as_str())],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token without its scheme"
    );
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_sets_the_processor_faults() {
    let (system, dir) = start().await;
    let (alice, operator) = (
        signed_in(&system, "alice").await,
        signed_in(&system, "operator").await,
    );
    let anonymous = Gateway::new(&format!("http://{}", system.address));
    let faults = Bytes::from_static(br#"{"unavailable":true,"delay_ms":5}"#);
    let json = [("content-type", "application/json")];
    for (who, gateway, expected) in [
        ("nobody", &anonymous, StatusCode::UNAUTHORIZED),
        ("alice", &alice, StatusCode::FORBIDDEN),
    ] {
        for method in [Method::GET, Method::PUT] {
            let (status, _) = gateway
                .send(method.clone(), "/admin/processor", &json, faults.clone())
                .await
                .unwrap();
            assert_eq!(status, expected, "{who} {method}");
        }
    }
    let processor = system.services.processor.as_ref().unwrap();
    assert!(!processor.faults().settings().unavailable, "nothing set");
    let (status, body) = operator
        .send(Method::PUT, "/admin/processor", &json, faults)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let shown: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        shown["faults"],
        serde_json::json!({"unavailable": true, "delay_ms": 5})
    );
    // Out of range, or misspelt: refused, and the outage stays (a
    // misspelt field read as "no fault" ended it).
    for bad in [
        &br#"{"delay_ms":600000}"#[..],
        &br#"{"unavailble":true}"#[..],
    ] {
        let (status, _) = operator
            .send(
                Method::PUT,
                "/admin/processor",
                &json,
                Bytes::from_static(bad),
            )
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert!(processor.faults().settings().unavailable);
    }
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_data_not_names() {
    // An identity file where `carol` is the operator and the user named
    // `operator` is not.
    let (mut settings, dir) = settings();
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("people.json");
    let user = |name: &str, roles: &str| {
        let hash = hash_password(&format!("pw-of-{name}")).unwrap();
        format!(r#"{{"name":"{name}","password_hash":"{hash}","roles":{roles}}}"#)
    };
    std::fs::write(
        &identity,
        format!(
            r#"{{"users":[{},{}],"clients":[{{"client_id":"{CLI_CLIENT_ID}","redirect_uris":["{CLI_REDIRECT_URI}"]}}]}}"#,
            user("carol", r#"["operator"]"#),
            user("operator", "[]")
        ),
    )
    .unwrap();
    settings.identity = Some(identity);
    let system = System::start(settings).await.unwrap();
    assert!(
        system.demo.is_none(),
        "no demo users beside an identity file"
    );
    assert!(!dir.join("credentials.json").exists());
    let base = format!("http://{}", system.address);
    let faults = Bytes::from_static(br#"{"delay_ms":1}"#);
    for (name, expected) in [
        ("carol", StatusCode::OK),
        ("operator", StatusCode::FORBIDDEN),
    ] {
        let mut gateway = Gateway::new(&base);
        gateway
            .sign_in(&Credential {
                name: name.to_owned(),
                password: format!("pw-of-{name}"),
                roles: Vec::new(),
            })
            .await
            .unwrap();
        let (status, _) = gateway
            .send(Method::PUT, "/admin/processor", &[], faults.clone())
            .await
            .unwrap();
        assert_eq!(status, expected, "{name}");
    }
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_identity_file_stops_the_start_with_a_clear_error() {
    let (mut settings, dir) = settings();
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("people.json");
    std::fs::write(
        &identity,
        r#"{"users":[{"name":"a","password_hash":"$argon2id$x","roles":["root"]}],"clients":[]}"#,
    )
    .unwrap();
    settings.identity = Some(identity.clone());
    let error = System::start(settings).await.unwrap_err().to_string();
    assert!(error.contains(&identity.display().to_string()), "{error}");
    assert!(error.contains("unknown variant `root`"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passwords_are_generated_and_kept_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let (system, dir) = start().await;
    let demo = system.demo.clone().unwrap();
    assert!(demo.created, "made on first start");
    for file in [&demo.credentials, &demo.identity] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let credentials = credentials(&system);
    let identity = std::fs::read_to_string(&demo.identity).unwrap();
    for credential in &credentials.0 {
        assert_eq!(credential.password.len(), 32, "128 random bits");
        assert!(!identity.contains(&credential.password), "only hashes");
    }
    let operator = credentials.of("operator").unwrap();
    assert_ne!(operator.password, credentials.of("alice").unwrap().password);
    // A second start keeps them.
    system.stop().await;
    let (mut again, _) = settings();
    again.data_dir.clone_from(&dir);
    let system = System::start(again).await.unwrap();
    assert!(!system.demo.as_ref().unwrap().created);
    assert_eq!(support::credentials(&system), credentials);
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_signs_in_with_the_demo_credentials() {
    let (system, dir) = start().await;
    let gateway = format!("http://{}", system.address);
    let token = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_order-system"))
            .args(["token", "--gateway", &gateway, "--user", "bob"])
            .args(extra)
            .output()
            .unwrap()
    };
    let credentials = system
        .demo
        .as_ref()
        .unwrap()
        .credentials
        .display()
        .to_string();
    let signed_in = token(&["--credentials", &credentials]);
    assert!(signed_in.status.success(), "{signed_in:?}");
    let bearer = format!(
        "bearer {}",
        String::from_utf8(signed_in.stdout).unwrap().trim()
    );
    let (status, _) = Gateway::new(&gateway)
        .send(
            Method::GET,
            "/orders/none",
            &[("authorization", bearer.as_str())],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "signed in as bob");

    let refused = token(&["--password", "guess"]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("bob may not sign in"), "{said}");
    assert!(refused.stdout.is_empty());
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_follows_the_user_not_the_token() {
    // Five requests, then one every 1,000 s, per user: a second token of
    // the same user (a fresh sign-in) draws on the same bucket.
    let (system, dir) = support::start_with(Some(Bucket::new(5, 0.001).unwrap())).await;
    let (first, second) = (
        signed_in(&system, "alice").await,
        signed_in(&system, "alice").await,
    );
    assert_ne!(first.authorization(), second.authorization());
    let mut statuses = Vec::new();
    for gateway in [&first, &second, &first, &second, &first, &second] {
        let (status, _) = gateway
            .send(Method::GET, "/orders/none", &[], Bytes::new())
            .await
            .unwrap();
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429]);
    stop(system, dir).await;
}
