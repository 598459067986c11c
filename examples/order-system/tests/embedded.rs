//! The order system on its embedded defaults (SQLite files, the in-process
//! broker), driven through its gateway on loopback.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_order_system::auth::{Auth, Sessions, digest};
use palisade_order_system::catalog::Trending;
use palisade_order_system::db::Statements;
use palisade_order_system::embedded::System;
use palisade_order_system::identity::{Identity, hash_password};
use palisade_order_system::load::{self, Gateway, LoadSettings};
use palisade_order_system::service::SagaService;
use palisade_token_bucket::Bucket;

mod support;
use support::{load_settings, place_directly, settings, signed_in, start, start_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_orders_end_confirmed_or_cancelled_with_the_books_straight() {
    let (system, dir) = start().await;
    let summary = load::run(&load_settings(&system, 300, 32)).await.unwrap();
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!(summary.placed, 300);
    assert_eq!(summary.unfinished, 0);
    let cancelled: usize = summary.cancelled.values().sum();
    assert_eq!(summary.confirmed + cancelled, 300);
    let declined = summary
        .cancelled
        .get("payment_declined")
        .copied()
        .unwrap_or(0);
    assert!(declined > 0, "about 60 declined cards: {summary:?}");
    let books = summary.books.unwrap();
    assert_eq!(
        books.compensations,
        i64::try_from(declined).unwrap(),
        "one release per declined order"
    );
    let shipped: i64 = books.stock.iter().map(|level| level.shipped).sum();
    assert!(shipped > 0);

    // The catalog's ranking, a read model of the shipments, catches up
    // with inventory's books.
    let mut expected: Vec<Trending> = books
        .stock
        .iter()
        .filter(|level| level.shipped > 0)
        .map(|level| Trending {
            sku: level.sku.clone(),
            shipped: level.shipped,
        })
        .collect();
    expected.sort_by(|a, b| b.shipped.cmp(&a.shipped).then_with(|| a.sku.cmp(&b.sku)));
    let mut ranking = system.services.catalog.trending().await.unwrap();
    for _ in 0..300 {
        if ranking == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ranking = system.services.catalog.trending().await.unwrap();
    }
    assert_eq!(ranking, expected);

    // The same books, scraped as Prometheus metrics.
    let (status, text) = support::admin(&system)
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.contains(&format!(
            "palisade_orders{{reason=\"\",status=\"confirmed\"}} {}\n",
            summary.confirmed
        )),
        "{text}"
    );
    assert!(text.contains(&format!("palisade_compensations_total {declined}\n")));
    // And the crates' own metrics: the relays, the rate limiter, the
    // breaker and the retries in front of the card processor.
    for family in [
        "palisade_outbox_published_total{relay=\"orders\"}",
        "palisade_token_bucket_decisions_total{",
        "palisade_circuit_breaker_calls_total{",
        "palisade_retry_attempts_total{",
        "palisade_read_model_lag_seconds_count{read_model=\"catalog\"}",
        // Bucketed for seconds, not the SDK's milliseconds.
        "palisade_read_model_lag_seconds_bucket{read_model=\"catalog\",le=\"0.005\"}",
        "palisade_outbox_publish_latency_seconds_bucket{relay=\"orders\",le=\"0.005\"}",
        "palisade_slo_budget_remaining{objective=\"orders\"}",
        "palisade_slo_burn_rate{",
        "palisade_slo_alert_firing{",
    ] {
        assert!(text.contains(family), "{family} in {text}");
    }
    // Every order placed went through the objective of `POST /orders`.
    let counted = |result: &str| -> u64 {
        let series = format!("palisade_slo_calls{{objective=\"orders\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0, |value| value.parse().unwrap())
    };
    assert!(counted("good") + counted("bad") >= 300, "{text}");
    let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let distinct: std::collections::HashSet<&&str> = families.iter().collect();
    assert_eq!(families.len(), distinct.len(), "each family once");
    system.stop().await;

    // Where the sagas spent their time, read from the stopped system's
    // files as `scripts/order-system-load --hops` does: every saga, and
    // every order's placement and first hop, are counted.
    let hops = hops_of(&dir);
    for step in [
        "placement",
        "OrderCreated → inventory/inventory",
        "saga (placement → end)",
    ] {
        assert_eq!(hops.get(step), Some(&300), "{step} in {hops:?}");
    }
    assert_eq!(
        hops.get("payment/payment: InventoryReserved → PaymentFailed"),
        Some(&declined),
        "{hops:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `scripts/order-system-hops` on a stopped system's data: each step's
/// count, by the step's name.
fn hops_of(data: &std::path::Path) -> HashMap<String, usize> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/order-system-hops"
    );
    let output = std::process::Command::new(script)
        .arg(data)
        .output()
        .expect("scripts/order-system-hops runs (it needs python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A row is the step's name, then its count, mean, p50, p95 and p99.
    stdout
        .lines()
        .skip(1)
        .filter_map(|row| {
            let words: Vec<&str> = row.split_whitespace().collect();
            let name = words.len().checked_sub(5)?;
            Some((words[..name].join(" "), words[name].parse().ok()?))
        })
        .collect()
}

async fn post_order(
    gateway: &Gateway,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    let (status, body) = gateway
        .send(
            Method::POST,
            "/orders",
            &headers,
            Bytes::from(body.to_owned()),
        )
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_places_one_order_and_bad_requests_are_refused() {
    let (system, dir) = start().await;
    let base = format!("http://{}", system.address);
    let order = r#"{"sku":"sku-1","quantity":2,"card":"4242424242424242"}"#;

    let anonymous = Gateway::new(&base);
    let (status, _) = post_order(&anonymous, Some("key-1"), order).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token, no order");

    let alice = signed_in(&system, "alice").await;
    let (first, placed) = post_order(&alice, Some("key-1"), order).await;
    let (again, replayed) = post_order(&alice, Some("key-1"), order).await;
    assert_eq!((first.as_u16(), again.as_u16()), (201, 200));
    assert_eq!(placed["id"], replayed["id"], "the same order");
    assert_eq!(placed["amount_cents"], 2500);

    // Another user's key is their own, and alice's order is not theirs.
    let bob = signed_in(&system, "bob").await;
    let (status, bobs) = post_order(&bob, Some("key-1"), order).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(bobs["id"], placed["id"]);
    let path = format!("/orders/{}", placed["id"].as_str().unwrap());
    let (status, _) = bob
        .send(Method::GET, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, problem) = post_order(&alice, None, order).await;
    assert_eq!(status.as_u16(), 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    for bad in [
        "not json",
        r#"{"sku":"sku-1","quantity":0,"card":"4242424242424242"}"#,
        r#"{"sku":"nope","quantity":1,"card":"4242424242424242"}"#,
        r#"{"sku":"sku-1","quantity":1,"card":"12ab"}"#,
    ] {
        let (status, _) = post_order(&alice, Some("key-bad"), bad).await;
        assert_eq!(status.as_u16(), 422, "{bad}");
    }
    let books = palisade_order_system::books::read_books(&system.services).await;
    let placed_orders: i64 = books.orders.iter().map(|(_, _, n)| n).sum();
    assert_eq!(
        placed_orders, 2,
        "alice's two requests with one key made one order, bob's one"
    );
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_works_once_and_only_with_its_verifier() {
    a_code_works_once_and_only_with_its_verifier_in(&Auth::new(identity(), Sessions::default()))
        .await;
}

/// An identity with the user `alice` (password `pw`) and the client
/// `app` (redirect URI `http://localhost/cb`).
fn identity() -> Identity {
    Identity::from_json(&format!(
        r#"{{"users":[{{"name":"alice","password_hash":"{}"}}],
            "clients":[{{"client_id":"app","redirect_uris":["http://localhost/cb"]}}]}}"#,
        hash_password("pw").unwrap()
    ))
    .unwrap()
}

/// The user a token stands for, in `auth`.
async fn user_of(auth: &Auth, token: &str) -> Option<String> {
    auth.principal(token)
        .await
        .unwrap()
        .map(|principal| principal.user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_and_tokens_in_redis_keep_the_same_rules_for_every_gateway() {
    let client = redis::Client::open(palisade_testkit::servers::redis_url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("palisade:test:auth:{}", fastrand::u64(..));
    let identity = identity();
    let in_redis = |connection| Auth::new(identity.clone(), Sessions::redis(connection, &prefix));
    a_code_works_once_and_only_with_its_verifier_in(&in_redis(connection.clone())).await;

    // Signed in through one gateway, known to another.
    let (one, another) = (in_redis(connection.clone()), in_redis(connection.clone()));
    let verifier = palisade_pkce::CodeVerifier::generate();
    let challenge = palisade_pkce::CodeChallenge::s256(&verifier);
    let callback = one.authorize(&query(challenge.as_str())).await.unwrap();
    let code = code_of(&callback);
    let token = another
        .token(&form(&code, verifier.expose_secret()))
        .await
        .unwrap();
    assert_eq!(
        user_of(&one, &token.access_token).await.as_deref(),
        Some("alice")
    );

    // Redis holds the token and the code under their digests only.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection.clone())
        .await
        .unwrap();
    assert!(
        keys.contains(&format!("{prefix}:token:{}", digest(&token.access_token))),
        "{keys:?}"
    );
    for key in &keys {
        assert!(
            !key.contains(&token.access_token) && !key.contains(&code),
            "{key}"
        );
    }

    // Redis gone: no sign-in and no token check, said as such; back, the
    // token works again.
    let (proxy, url) = palisade_testkit::servers::redis_proxy().await;
    let through = redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap())
        .await
        .unwrap();
    let cut = in_redis(through);
    proxy.cut().await;
    assert_eq!(
        cut.principal(&token.access_token).await.unwrap_err().error,
        "temporarily_unavailable"
    );
    assert_eq!(
        cut.authorize(&query(challenge.as_str()))
            .await
            .unwrap_err()
            .error,
        "temporarily_unavailable"
    );
    proxy.resume().await;
    let mut back = None;
    for _ in 0..100 {
        if let Ok(principal) = cut.principal(&token.access_token).await {
            back = principal.map(|principal| principal.user);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(back.as_deref(), Some("alice"));
}

fn query(challenge: &str) -> HashMap<String, String> {
    [
        ("response_type", "code"),
        ("client_id", "app"),
        ("redirect_uri", "http://localhost/cb"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "s1"),
        ("username", "alice"),
        ("password", "pw"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn code_of(url: &palisade_pkce::Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn form(code: &str, verifier: &str) -> HashMap<String, String> {
    [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", "http://localhost/cb"),
        ("client_id", "app"),
        ("code_verifier", verifier),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The OAuth error `auth` answers for redeeming `code` with `verifier`
/// (which must fail).
async fn refusal(auth: &Auth, code: &str, verifier: &str) -> &'static str {
    auth.token(&form(code, verifier)).await.unwrap_err().error
}

async fn a_code_works_once_and_only_with_its_verifier_in(auth: &Auth) {
    let verifier = palisade_pkce::CodeVerifier::generate();
    let challenge = palisade_pkce::CodeChallenge::s256(&verifier);
    // PKCE is required.
    let mut without = query("x");
    without.remove("code_challenge");
    without.remove("code_challenge_method");
    assert_eq!(
        auth.authorize(&without).await.unwrap_err().error,
        "invalid_request"
    );

    let code = code_of(&auth.authorize(&query(challenge.as_str())).await.unwrap());
    let token = auth
        .token(&form(&code, verifier.expose_secret()))
        .await
        .unwrap();
    assert_eq!(
        user_of(auth, &token.access_token).await.as_deref(),
        Some("alice")
    );
    assert_eq!(
        refusal(auth, &code, verifier.expose_secret()).await,
        "invalid_grant",
        "a code works once"
    );
    // A stolen code with another verifier is refused, and revoked.
    let code = code_of(&auth.authorize(&query(challenge.as_str())).await.unwrap());
    let thief = palisade_pkce::CodeVerifier::generate();
    assert_eq!(
        refusal(auth, &code, thief.expose_secret()).await,
        "invalid_grant"
    );
    assert_eq!(
        refusal(auth, &code, verifier.expose_secret()).await,
        "invalid_grant",
        "revoked by the wrong verifier"
    );
    assert_eq!(auth.principal("not-a-token").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_rate_limit_of_their_own() {
    // Five requests, then one every 1,000 s: the sixth is refused.
    let (system, dir) = start_with(Some(Bucket::new(5, 0.001).unwrap())).await;
    let (alice, bob) = (
        signed_in(&system, "alice").await,
        signed_in(&system, "bob").await,
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = alice
            .exchange(Method::GET, "/orders/none", &[], Bytes::new())
            .await
            .unwrap();
        statuses.push(reply.status().as_u16());
        if reply.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = reply.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after > 900, "{retry_after}");
        }
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429]);
    let (status, _) = bob
        .send(Method::GET, "/orders/none", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "bob has his own bucket");
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `n` concurrent `GET /catalog/trending`, each from an address of its
/// own (a crowd, as the gateway's limits by address see it): the statuses
/// and bodies.
async fn crowd(system: &System, n: usize) -> Vec<(StatusCode, Bytes)> {
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let [third, fourth] = [i / 200, i % 200 + 1].map(|byte| u8::try_from(byte).unwrap());
        let gateway = Gateway::from_address(
            &format!("http://{}", system.address),
            std::net::Ipv4Addr::new(127, 2, third, fourth).into(),
        );
        requests.spawn(async move {
            gateway
                .send(Method::GET, "/catalog/trending", &[], Bytes::new())
                .await
                .unwrap()
        });
    }
    requests.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_for_trending_cost_one_query() {
    let (system, dir) = start().await;
    let answers = crowd(&system, 500).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    assert!(
        answers.iter().all(|(_, body)| *body == answers[0].1),
        "one answer for all"
    );
    let ranking: Vec<serde_json::Value> = serde_json::from_slice(&answers[0].1).unwrap();
    assert_eq!(
        ranking,
        Vec::<serde_json::Value>::new(),
        "nothing shipped yet"
    );
    assert_eq!(system.services.catalog.queries(), 1);
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_bypass_the_trending_cache_into_the_slow_query() {
    let (mut settings, dir) = settings();
    settings.catalog = |catalog| {
        catalog.freshness(
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(600),
        )
    };
    let system = System::start(settings).await.unwrap();
    let gateway = Gateway::new(&format!("http://{}", system.address));
    let (status, first) = gateway
        .send(Method::GET, "/catalog/trending", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // What the route does not use: each would be a query of its own if it
    // reached the cache as sent.
    let tries: [(&str, &[(&str, &str)]); 10] = [
        ("/catalog/trending?page=1", &[]),
        ("/catalog/trending?x=907134", &[]),
        ("/catalog/trending", &[("cache-control", "no-cache")]),
        ("/catalog/trending", &[("pragma", "no-cache")]),
        ("/catalog/trending", &[("authorization", "Bearer 0x5eed")]),
        ("/catalog/trending", &[("cookie", "session=1")]),
        ("/catalog/trending", &[("range", "bytes=0-9")]),
        ("/catalog/trending", &[("if-match", "*")]),
        ("/catalog/trending", &[("host", "elsewhere.example")]),
        (
            "/catalog/trending",
            &[("if-unmodified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
        ),
    ];
    for (path, headers) in tries {
        let (status, body) = gateway
            .send(Method::GET, path, headers, Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            (status, &body),
            (StatusCode::OK, &first),
            "{path} {headers:?}"
        );
    }
    assert_eq!(system.services.catalog.queries(), 1, "one query in all");
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_at_expiry_is_served_stale_while_one_query_refreshes() {
    let (mut settings, dir) = settings();
    settings.catalog = |catalog| {
        catalog
            .delay(std::time::Duration::from_millis(20))
            .freshness(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(600),
            )
    };
    let system = System::start(settings).await.unwrap();
    let catalog = &system.services.catalog;
    assert_eq!(crowd(&system, 1).await[0].0, StatusCode::OK);
    assert_eq!(catalog.queries(), 1);
    // Past max-age, within stale-while-revalidate.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;

    // The refresh hangs: the whole crowd is served the stale ranking, and
    // no second refresh starts while the first runs.
    let held = catalog.hold().await;
    let answers = crowd(&system, 500).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    let mut waited = 0;
    while catalog.queries() < 2 {
        waited += 1;
        assert!(waited < 1_000, "the refresh never started");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(catalog.queries(), 2, "one refresh for the whole crowd");
    drop(held);
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_outage_opens_the_breaker_and_every_order_still_ends() {
    let (system, dir) = start().await;
    let settings = LoadSettings {
        // Through the admin endpoint, once 50 orders are placed.
        processor_outage: Some(std::time::Duration::from_secs(2)),
        ..load_settings(&system, 200, 16)
    };
    let summary = load::run(&settings).await.unwrap();
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!((summary.placed, summary.unfinished), (200, 0));
    let books = summary.books.unwrap();
    assert!(books.breaker_opens >= 1, "{books:?}");
    assert_eq!(books.breaker_state, "Closed", "recovered");
    assert!(
        !support::processor_faults(&system.services)
            .settings()
            .unavailable
    );
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A Luhn-valid number of `len` digits: `4`, zeros, and its check digit.
fn luhn_valid(len: usize) -> String {
    let body = format!("4{}", "0".repeat(len - 2));
    (0..10)
        .map(|digit| format!("{body}{digit}"))
        .find(|number| palisade_order_system::card::luhn(number))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_a_card_number_failing_luhn_or_of_20_digits_without_echoing_it() {
    let (system, dir) = start().await;
    let alice = signed_in(&system, "alice").await;
    let (twenty, eleven) = (luhn_valid(20), luhn_valid(11));
    let refused = [
        ("a bad Luhn check digit", r#""4242424242424241""#.to_owned()),
        ("20 digits", format!("\"{twenty}\"")),
        ("11 digits", format!("\"{eleven}\"")),
        ("a number, not a string", "4242424242424241".to_owned()),
        ("spaces", r#""4242 4242 4242 4242""#.to_owned()),
    ];
    for (n, (what, card)) in refused.iter().enumerate() {
        let body = format!(r#"{{"sku":"sku-1","quantity":1,"card":{card}}}"#);
        let (status, problem) = post_order(&alice, Some(&format!("bad-{n}")), &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("card must be"), "{what}: {detail}");
        let digits: String = card.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !problem.to_string().contains(&digits[..11]),
            "{what}: the number echoed in {problem}"
        );
    }
    // Nothing was placed, nothing went to the vault.
    let books = palisade_order_system::books::read_books(&system.services).await;
    assert_eq!(books.orders, Vec::new());
    assert_eq!(cards_in_vault(&system).await, 0);

    // 12 and 19 digits passing the check are card numbers.
    for (n, len) in [12, 19].into_iter().enumerate() {
        let body = format!(
            r#"{{"sku":"sku-1","quantity":1,"card":"{}"}}"#,
            luhn_valid(len)
        );
        let (status, order) = post_order(&alice, Some(&format!("good-{n}")), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{len} digits: {order}");
    }
    assert_eq!(cards_in_vault(&system).await, 2);
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The cards in payment's vault.
async fn cards_in_vault(system: &System) -> i64 {
    let (cards,): (i64,) = system
        .steps
        .payment
        .db()
        .fetch_one("SELECT count(*) FROM cards", &[])
        .await
        .unwrap();
    cards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_token_the_vault_does_not_hold_fails_the_payment() {
    use palisade_order_system::db::Param;
    use palisade_order_system::events::Line;

    let (system, dir) = start().await;
    // An order placed as the gateway places one, with a token no card was
    // stored under.
    let line = Line {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: "alice".into(),
        sku: "sku-1".to_owned(),
        quantity: 1,
        amount_cents: palisade_order_system::orders::UNIT_PRICE_CENTS,
        card_token: "card_00000000000000000000000000000000".to_owned(),
        card_last4: "4242".to_owned(),
    };
    place_directly(system.services.orders.db(), &line, 0).await;

    // The saga ends, compensated, once: not a panic, not retried forever.
    let order = system
        .services
        .orders
        .wait_for_end("alice", &line.order_id, std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (order.status.as_str(), order.reason.as_deref()),
        ("cancelled", Some("payment_declined"))
    );
    let (status, reason): (String, Option<String>) = system
        .steps
        .payment
        .db()
        .fetch_one(
            "SELECT status, reason FROM payments WHERE order_id = $1",
            &[Param::Text(&line.order_id)],
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("card_unknown"))
    );
    let books = palisade_order_system::books::read_books(&system.services).await;
    assert_eq!(books.violations(false), Vec::<String>::new());
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
