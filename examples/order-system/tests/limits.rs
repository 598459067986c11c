//! The gateway's abuse limits, through the embedded system on loopback:
//! every request draws on its client address's bucket before its token is
//! looked up, signing in on a tighter one, and the clients of other
//! addresses are not held back by a flood from one (each client here has
//! an address of its own in `127.0.0.0/8`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::embedded::System;
use palisade_order_system::identity::{CLI_CLIENT_ID, CLI_REDIRECT_URI};
use palisade_order_system::load::Gateway;
use palisade_pkce::{CodeChallenge, CodeVerifier};
use palisade_token_bucket::Bucket;

mod support;
use support::{credentials, settings, signed_in};

/// A bucket of `capacity` that refills one token every 1,000 s: nothing
/// comes back while a test runs, whatever the machine's speed.
fn no_refill(capacity: u32) -> Bucket {
    Bucket::new(capacity, 0.001).unwrap()
}

fn client(system: &System, last_byte: u8) -> Gateway {
    Gateway::from_address(
        &format!("http://{}", system.address),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_byte)),
    )
}

/// Sends `n` requests made by `request` from `gateway`, 32 at a time; the
/// count of each status.
async fn flood<F, Fut>(gateway: &Gateway, n: usize, request: F) -> Vec<(StatusCode, usize)>
where
    F: Fn(Gateway) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = StatusCode> + Send,
{
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (gateway, sent, request) = (gateway.clone(), sent.clone(), request.clone());
        senders.spawn(async move {
            let mut statuses = Vec::new();
            while sent.fetch_add(1, Ordering::Relaxed) < n {
                statuses.push(request(gateway.clone()).await);
            }
            statuses
        });
    }
    let mut counts: Vec<(StatusCode, usize)> = Vec::new();
    for status in senders.join_all().await.into_iter().flatten() {
        match counts.iter_mut().find(|(seen, _)| *seen == status) {
            Some((_, count)) => *count += 1,
            None => counts.push((status, 1)),
        }
    }
    counts.sort();
    counts
}

/// Checks that the signed-in `gateway` is let through to the API (a
/// lookup of an order that does not exist: `404`, not `401` or `429`).
async fn assert_served(gateway: &Gateway) {
    let (status, _) = gateway
        .send(Method::GET, "/orders/none", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn stop(system: System, dir: std::path::PathBuf) {
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_bearer_tokens_from_one_address_are_limited_by_the_address() {
    let (mut settings, dir) = settings();
    settings.limits.per_address = no_refill(50);
    let system = System::start(settings).await.unwrap();

    let counts = flood(&client(&system, 2), 10_000, |gateway| async move {
        let token = format!("Bearer {:032x}", fastrand::u128(..));
        let (status, _) = gateway
            .with_authorization(Some(&token))
            .send(Method::GET, "/orders/none", &[], Bytes::new())
            .await
            .unwrap();
        status
    })
    .await;
    // 50 tokens were looked up (and refused); the address's bucket
    // refused the rest before any lookup.
    assert_eq!(
        counts,
        [
            (StatusCode::UNAUTHORIZED, 50),
            (StatusCode::TOO_MANY_REQUESTS, 9_950)
        ]
    );
    // A user at another address is not held back.
    assert_served(&signed_in(&system, "alice").await).await;
    stop(system, dir).await;
}

/// `POST /authorize` as the CLI client, for `username` with `password`.
async fn authorize(gateway: Gateway, username: &str, password: &str) -> StatusCode {
    authorize_with_state(gateway, username, password, "s-1")
        .await
        .status()
}

/// [`authorize`], with `state`; the whole answer.
async fn authorize_with_state(
    gateway: Gateway,
    username: &str,
    password: &str,
    state: &str,
) -> http::Response<Bytes> {
    let challenge = CodeChallenge::s256(&CodeVerifier::generate());
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", CLI_CLIENT_ID)
        .append_pair("redirect_uri", CLI_REDIRECT_URI)
        .append_pair("code_challenge", challenge.as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("username", username)
        .append_pair("password", password)
        .append_pair("state", state)
        .finish();
    gateway
        .exchange(
            Method::POST,
            "/authorize",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(form),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_authorize_from_one_address_leaves_a_real_user_able_to_sign_in() {
    let (mut settings, dir) = settings();
    settings.limits.sign_in = no_refill(10);
    let system = System::start(settings).await.unwrap();
    let flooder = client(&system, 3);

    // Guessing alice's password: ten guesses are checked, the rest refused
    // by the address before any password hash is computed.
    let counts = flood(&flooder, 300, |gateway| async move {
        authorize(gateway, "alice", "guess").await
    })
    .await;
    assert_eq!(
        counts,
        [
            (StatusCode::UNAUTHORIZED, 10),
            (StatusCode::TOO_MANY_REQUESTS, 290)
        ]
    );
    // Even the right password, from the flooding address.
    let password = credentials(&system).of("alice").unwrap().password.clone();
    assert_eq!(
        authorize(flooder, "alice", &password).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // alice, from her own address, signs in and is served.
    let mut alice = client(&system, 4);
    alice
        .sign_in(credentials(&system).of("alice").unwrap())
        .await
        .unwrap();
    assert_served(&alice).await;
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_sign_in_parameters_are_refused_and_nothing_is_issued() {
    let (system, dir) = support::start().await;
    let password = credentials(&system).of("alice").unwrap().password.clone();
    let gateway = client(&system, 5);
    // The right password, with a 2 KiB state: refused, no code.
    let refused =
        authorize_with_state(gateway.clone(), "alice", &password, &"s".repeat(2048)).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(!refused.headers().contains_key(http::header::LOCATION));
    let body = String::from_utf8_lossy(refused.body()).into_owned();
    assert!(body.contains("longer than 1024 bytes"), "{body}");
    // A form of 20 KiB is not read at all.
    let (status, _) = gateway
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(format!("code={}", "c".repeat(20 * 1024))),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Within the bounds, the same sign-in is let in.
    let accepted = authorize_with_state(gateway, "alice", &password, &"s".repeat(1024)).await;
    assert_eq!(accepted.status(), StatusCode::FOUND);
    stop(system, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_and_metrics_answer_on_the_admin_listener_only() {
    let (system, dir) = support::start().await;
    assert_ne!(system.admin_address, system.address);
    let public = client(&system, 6);
    let admin = support::admin(&system);
    for path in ["/books", "/metrics", "/books?stuck_after_ms=0"] {
        let (status, _) = public
            .send(Method::GET, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "public {path}");
        let (status, _) = admin
            .send(Method::GET, path, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "admin {path}");
    }
    // The API is not on the admin listener.
    for (gateway, expected) in [(&public, StatusCode::OK), (&admin, StatusCode::NOT_FOUND)] {
        let (status, _) = gateway
            .send(Method::GET, "/catalog/trending", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, expected);
    }
    stop(system, dir).await;
}
