//! The HTTP layer on a real axum server on loopback: concurrent identical
//! GETs reach the origin once, and the origin's Cache-Control decides.
#![cfg(feature = "http")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_coalesce::http::{CachedResponse, CoalesceLayer};
use palisade_coalesce::{Cache, Freshness};
use tower::BoxError;

/// An origin whose `/slow` takes 200 ms and answers its call number, and
/// whose other routes answer with the Cache-Control in their path.
async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (slow, directive) = (calls.clone(), calls.clone());
    let cache: Cache<String, CachedResponse, BoxError> = Cache::new(
        1000,
        Freshness::new(Duration::from_secs(60)).early_refresh(0.0),
    );
    let app = Router::new()
        .route(
            "/slow",
            get(move || async move {
                let n = slow.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                format!("call {n}")
            })
            .post(|| async { "posted" }),
        )
        .route(
            "/with/{directive}",
            get(
                move |axum::extract::Path(value): axum::extract::Path<String>| async move {
                    let n = directive.fetch_add(1, Ordering::SeqCst) + 1;
                    ([("cache-control", value)], format!("call {n}"))
                },
            ),
        )
        .route(
            "/large",
            get(|| async { "a body larger than the cache keeps" }),
        )
        .layer(CoalesceLayer::new(cache).max_body(16).answer_failures());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, calls)
}

async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_gets_reach_the_origin_once() {
    let (address, calls) = serve().await;
    let requests: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { send(address, "GET", "/slow", &[]).await }))
        .collect();
    for request in requests {
        let (status, headers, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "call 1");
        assert!(headers.contains_key("age"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Later requests are served from the cache with their age.
    let (_, headers, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 1");
    assert!(headers["age"].to_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_requests_and_posts_go_to_the_origin() {
    let (address, calls) = serve().await;
    send(address, "GET", "/slow", &[]).await;
    let (_, _, body) = send(address, "GET", "/slow", &[("cache-control", "no-cache")]).await;
    assert_eq!(body, "call 2");
    let (_, _, body) = send(address, "GET", "/slow", &[("pragma", "no-cache")]).await;
    assert_eq!(body, "call 3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let (_, _, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 1", "the cached response is still served");
    let (_, _, body) = send(address, "POST", "/slow", &[]).await;
    assert_eq!(body, "posted");
    let (_, _, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 4", "a successful POST invalidated it");
}

/// A request asking that nothing of its exchange be stored (`Cache-Control:
/// no-store`, RFC 9111 §5.2.1.5: a cache must not store its response) goes
/// to the origin on its own. Its response was stored, and served to the
/// requests after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asking_no_store_leaves_its_response_unstored() {
    let (address, _) = serve().await;
    let (_, _, body) = send(address, "GET", "/slow", &[("cache-control", "no-store")]).await;
    assert_eq!(body, "call 1");
    let (_, _, body) = send(address, "GET", "/slow", &[]).await;
    assert_eq!(body, "call 2", "the no-store request's response was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_cache_control_decides_what_is_stored() {
    let (address, calls) = serve().await;
    for directive in ["no-store", "private", "max-age=0"] {
        let path = format!("/with/{directive}");
        let before = calls.load(Ordering::SeqCst);
        send(address, "GET", &path, &[]).await;
        send(address, "GET", &path, &[]).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before + 2,
            "{directive} is not stored"
        );
    }
    let before = calls.load(Ordering::SeqCst);
    let (_, headers, _) = send(address, "GET", "/with/max-age=60", &[]).await;
    assert_eq!(headers["cache-control"], "max-age=60");
    send(address, "GET", "/with/max-age=60", &[]).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "max-age=60 is stored"
    );
}

/// Two instances of one service, each with the layer on a `RedisCache` of
/// its own connections: concurrent GETs spread over both reach the origin
/// once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_reach_the_origin_once() {
    use palisade_coalesce::{RedisCache, RedisSettings};

    let url = palisade_testkit::servers::redis_url();
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let client = redis::Client::open(url.as_str()).unwrap();
        let connection = client.get_multiplexed_async_connection().await.unwrap();
        let cache: RedisCache<_, BoxError> =
            RedisCache::connect(&client, connection, settings.clone())
                .await
                .unwrap();
        let origin = calls.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || async move {
                    let n = origin.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    format!("call {n}")
                }),
            )
            .layer(CoalesceLayer::new(cache).answer_failures());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        instances.push(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    // Behind one name, as a load balancer's clients see them.
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let address = instances[i % 2];
            tokio::spawn(async move {
                send(address, "GET", "/slow", &[("host", "catalog.example")]).await
            })
        })
        .collect();
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("call 1")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A layer varying on `Authorization` keeps each user's response apart
/// without writing the credential to Redis: the key holds a digest of the
/// varying values (the bearer token was in the key's name, and in the
/// wake-up published to every process).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_varied_on_stay_out_of_redis() {
    use palisade_coalesce::{RedisCache, RedisSettings};
    use redis::AsyncCommands as _;

    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)).early_refresh(0.0))
        .prefix(&prefix);
    let client = redis::Client::open(palisade_testkit::servers::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let cache: RedisCache<_, BoxError> = RedisCache::connect(&client, connection.clone(), settings)
        .await
        .unwrap();
    // What the wake-ups carry, as another process hears them.
    let mut wake_ups = client.get_async_pubsub().await.unwrap();
    wake_ups
        .subscribe(format!("{prefix}:filled"))
        .await
        .unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let listening = {
        let heard = heard.clone();
        tokio::spawn(async move {
            let mut messages = wake_ups.into_on_message();
            while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                heard.lock().unwrap().push(message.get_payload().unwrap());
            }
        })
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = calls.clone();
    let app = Router::new()
        .route(
            "/me",
            get(move |headers: HeaderMap| async move {
                origin.fetch_add(1, Ordering::SeqCst);
                format!("hello {}", headers["authorization"].to_str().unwrap())
            }),
        )
        .layer(
            CoalesceLayer::new(cache)
                .vary([http::header::AUTHORIZATION])
                .answer_failures(),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for _ in 0..2 {
        for user in ["Bearer alice-secret", "Bearer bob-secret"] {
            let (status, _, body) = send(address, "GET", "/me", &[("authorization", user)]).await;
            assert_eq!(
                (status, body),
                (StatusCode::OK, Bytes::from(format!("hello {user}")))
            );
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one response a user, stored"
    );
    let keys: Vec<String> = connection.keys(format!("*{prefix}*")).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|key| !key.contains("secret") && !key.contains("Bearer")),
        "{keys:?}"
    );
    for _ in 0..1_000 {
        if heard.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listening.abort();
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 2, "a wake-up a stored response: {heard:?}");
    assert!(
        heard
            .iter()
            .all(|key| !key.contains("secret") && !key.contains("Bearer")),
        "{heard:?}"
    );
}

/// A `RedisCache` that refuses while Redis is down answers `503` with
/// `Retry-After` (the probe interval) and the refusal in the extensions,
/// as palisade layers answer what they refuse, and its origin is not
/// called.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_refusing_without_redis_answers_503_with_retry_after() {
    use palisade_coalesce::{FailurePolicy, RedisCache, RedisSettings};

    let (proxy, through) = palisade_testkit::servers::redis_proxy().await;
    let settings = RedisSettings::new(Freshness::new(Duration::from_secs(60)))
        .prefix(&format!("palisade-test:{}", fastrand::u64(..)))
        .on_failure(FailurePolicy::Refuse)
        .probe_interval(Duration::from_secs(2));
    let client = redis::Client::open(through.as_str()).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let cache: RedisCache<_, BoxError> = RedisCache::connect(&client, connection, settings)
        .await
        .unwrap();
    proxy.cut().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = calls.clone();
    let app = Router::new()
        .route(
            "/trending",
            get(move || async move {
                origin.fetch_add(1, Ordering::SeqCst);
                "[7, 3, 9]"
            }),
        )
        .layer(CoalesceLayer::new(cache).answer_failures());
    for _ in 0..3 {
        let request = Request::get("/trending")
            .header("host", "catalog.example")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "2");
        let refusal = response.extensions().get::<palisade_hints::Refusal>();
        assert_eq!(
            refusal.map(palisade_hints::Refusal::reason),
            Some(palisade_hints::RefusalReason::StoreDown)
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the origin is not called");
}

// The layer over an origin in process, under paused time: the faults where
// one user, one request or one origin answer meets another.

use std::convert::Infallible;
use std::pin::Pin;

use axum::http::{HeaderName, Response};
use palisade_coalesce::http::CoalesceBody;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// The layer over an [`Origin`], boxed.
type Layered = BoxCloneSyncService<Request<Empty<Bytes>>, Response<CoalesceBody<String>>, BoxError>;

type Answer = dyn Fn(&Request<Empty<Bytes>>, usize) -> Response<String> + Send + Sync;

/// An origin that takes a second and answers what `answer` makes of the
/// request and its call number.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    answer: Arc<Answer>,
}

impl Service<Request<Empty<Bytes>>> for Origin {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let response = (self.answer)(&request, n);
        // A second, or as long as the answer's `x-test-delay` says.
        let delay = response
            .headers()
            .get("x-test-delay")
            .and_then(|delay| delay.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(delay)).await;
            Ok(response)
        })
    }
}

/// A response with `fields` and `body`.
fn answer(fields: &[(&str, String)], body: String) -> Response<String> {
    let mut response = Response::new(body);
    for (name, value) in fields {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A header of the request, as text ("" when absent).
fn field(request: &Request<Empty<Bytes>>, name: &str) -> String {
    request
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect::<Vec<_>>()
        .join("+")
}

/// The layer (default lifetime 60 s, stale for 60 s more while
/// revalidating) over an origin answering with `answer`.
fn layered(
    vary: &[HeaderName],
    answer: impl Fn(&Request<Empty<Bytes>>, usize) -> Response<String> + Send + Sync + 'static,
) -> (Layered, Arc<AtomicUsize>) {
    let freshness = Freshness::new(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(60))
        .early_refresh(0.0);
    let cache: Cache<String, CachedResponse, BoxError> = Cache::new(1000, freshness);
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = Origin {
        calls: calls.clone(),
        answer: Arc::new(answer),
    };
    let layered = CoalesceLayer::new(cache)
        .vary(vary.iter().cloned())
        .layer(origin);
    (BoxCloneSyncService::new(layered), calls)
}

/// One request through the layer.
async fn call(
    service: &Layered,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .clone()
        .oneshot(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// Two requests at once: the first reaches the origin, then the second
/// arrives while the origin still works (paused time stands still until
/// both wait).
async fn together(
    service: &Layered,
    calls: &AtomicUsize,
    first: (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    ),
    second: (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    ),
) -> [(StatusCode, HeaderMap, Bytes); 2] {
    let before = calls.load(Ordering::SeqCst);
    let leader = {
        let service = service.clone();
        tokio::spawn(async move { call(&service, first.0, first.1, first.2).await })
    };
    while calls.load(Ordering::SeqCst) == before {
        tokio::task::yield_now().await;
    }
    let follower = {
        let service = service.clone();
        tokio::spawn(async move { call(&service, second.0, second.1, second.2).await })
    };
    [leader.await.unwrap(), follower.await.unwrap()]
}

fn body_of(response: &(StatusCode, HeaderMap, Bytes)) -> &str {
    std::str::from_utf8(&response.2).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_with_credentials_never_gets_another_users_response() {
    let (service, calls) = layered(&[], |request, n| {
        let who = format!(
            "{}{}",
            field(request, "authorization"),
            field(request, "cookie")
        );
        answer(
            &[("cache-control", "max-age=60".into())],
            format!("{who} {n}"),
        )
    });
    let [alice, bob] = together(
        &service,
        &calls,
        ("GET", "/me", &[("authorization", "Bearer alice")]),
        ("GET", "/me", &[("authorization", "Bearer bob")]),
    )
    .await;
    assert_eq!(body_of(&alice), "Bearer alice 1");
    assert_eq!(body_of(&bob), "Bearer bob 2", "not alice's response");
    let carol = call(&service, "GET", "/me", &[("cookie", "session=carol")]).await;
    assert_eq!(body_of(&carol), "session=carol 3");
    let anonymous = call(&service, "GET", "/me", &[]).await;
    assert_eq!(body_of(&anonymous), " 4", "no user's response is stored");
    let dave = call(&service, "GET", "/me", &[("cookie", "session=dave")]).await;
    assert_eq!(
        body_of(&dave),
        "session=dave 5",
        "nor the anonymous one served to a user"
    );

    // Opting in: a key that includes the credential.
    let (service, calls) = layered(&[http::header::AUTHORIZATION], |request, n| {
        let who = field(request, "authorization");
        answer(
            &[("cache-control", "max-age=60".into())],
            format!("{who} {n}"),
        )
    });
    let alice = [("authorization", "Bearer alice")];
    call(&service, "GET", "/me", &alice).await;
    let again = call(&service, "GET", "/me", &alice).await;
    assert_eq!(body_of(&again), "Bearer alice 1");
    let bob = call(&service, "GET", "/me", &[("authorization", "Bearer bob")]).await;
    assert_eq!(body_of(&bob), "Bearer bob 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_private_no_store_or_set_cookie_response_is_never_handed_to_other_waiters() {
    let (service, calls) = layered(&[], |request, n| {
        let fields: &[(&str, String)] = match request.uri().path() {
            "/private" => &[("cache-control", "private, max-age=60".into())],
            "/no-store" => &[("cache-control", "no-store".into())],
            _ => &[("set-cookie", format!("id={n}"))],
        };
        answer(fields, format!("call {n}"))
    });
    for path in ["/private", "/no-store", "/cookie"] {
        let before = calls.load(Ordering::SeqCst);
        let path: &'static str = path;
        let [first, second] =
            together(&service, &calls, ("GET", path, &[]), ("GET", path, &[])).await;
        assert_ne!(
            body_of(&first),
            body_of(&second),
            "{path}: one response each"
        );
        let third = call(&service, "GET", path, &[]).await;
        assert_eq!(
            body_of(&third),
            format!("call {}", before + 3),
            "{path}: not stored"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_host_is_part_of_the_key() {
    let (service, _) = layered(&[], |request, n| {
        let host = request
            .uri()
            .authority()
            .map_or_else(|| field(request, "host"), ToString::to_string);
        answer(&[], format!("{host} {n}"))
    });
    let a = call(&service, "GET", "/", &[("host", "a.example")]).await;
    let b = call(&service, "GET", "/", &[("host", "b.example")]).await;
    let c = call(&service, "GET", "http://c.example/", &[]).await;
    assert_eq!(
        [body_of(&a), body_of(&b), body_of(&c)],
        ["a.example 1", "b.example 2", "c.example 3"]
    );
    let again = call(&service, "GET", "/", &[("host", "A.example")]).await;
    assert_eq!(
        body_of(&again),
        "a.example 1",
        "host names are case-insensitive"
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaders_conditional_or_range_request_does_not_give_waiters_a_304_or_206() {
    // An origin that honours If-None-Match and Range itself.
    let (service, calls) = layered(&[], |request, n| {
        let fields = [
            ("etag", "\"v1\"".to_owned()),
            ("cache-control", "max-age=60".to_owned()),
        ];
        if field(request, "if-none-match") == "\"v1\"" {
            let mut response = answer(&fields, String::new());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        if field(request, "range") == "bytes=0-1" {
            let mut response = answer(&[("content-range", "bytes 0-1/6".into())], "ca".into());
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            return response;
        }
        answer(&fields, format!("call {n}"))
    });
    let [leader, waiter] = together(
        &service,
        &calls,
        ("GET", "/conditional", &[("if-none-match", "\"v1\"")]),
        ("GET", "/conditional", &[]),
    )
    .await;
    assert_eq!(
        leader.0,
        StatusCode::NOT_MODIFIED,
        "the leader's own condition holds"
    );
    assert_eq!((waiter.0, body_of(&waiter)), (StatusCode::OK, "call 1"));
    let revalidated = call(
        &service,
        "GET",
        "/conditional",
        &[("if-none-match", "W/\"v1\"")],
    )
    .await;
    assert_eq!(
        revalidated.0,
        StatusCode::NOT_MODIFIED,
        "answered from the cache"
    );
    let changed = call(
        &service,
        "GET",
        "/conditional",
        &[("if-none-match", "\"v0\"")],
    )
    .await;
    assert_eq!((changed.0, body_of(&changed)), (StatusCode::OK, "call 1"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let [ranged, whole] = together(
        &service,
        &calls,
        ("GET", "/range", &[("range", "bytes=0-1")]),
        ("GET", "/range", &[]),
    )
    .await;
    assert_eq!(
        (ranged.0, body_of(&ranged)),
        (StatusCode::PARTIAL_CONTENT, "ca")
    );
    assert_eq!((whole.0, body_of(&whole)), (StatusCode::OK, "call 3"));
}

#[tokio::test(start_paused = true)]
async fn the_origins_vary_is_honoured() {
    let (service, calls) = layered(&[], |request, n| {
        let vary = if request.uri().path() == "/star" {
            "*"
        } else {
            "accept-encoding"
        };
        answer(
            &[
                ("vary", vary.into()),
                ("cache-control", "max-age=60".into()),
            ],
            format!("{} {n}", field(request, "accept-encoding")),
        )
    });
    let [gzip, br] = together(
        &service,
        &calls,
        ("GET", "/", &[("accept-encoding", "gzip")]),
        ("GET", "/", &[("accept-encoding", "br")]),
    )
    .await;
    assert_eq!([body_of(&gzip), body_of(&br)], ["gzip 1", "br 2"]);
    let later = call(&service, "GET", "/", &[("accept-encoding", "br")]).await;
    assert_eq!(body_of(&later), "br 3", "never the gzip variant");
    let star = call(&service, "GET", "/star", &[]).await;
    let again = call(&service, "GET", "/star", &[]).await;
    assert_ne!(
        body_of(&star),
        body_of(&again),
        "Vary: * matches no other request"
    );

    // With the field in the layer's key, each variant is kept.
    let (service, calls) = layered(&[http::header::ACCEPT_ENCODING], |request, n| {
        answer(
            &[("vary", "Accept-Encoding".into())],
            format!("{} {n}", field(request, "accept-encoding")),
        )
    });
    for encoding in ["gzip", "br", "gzip", "br"] {
        call(&service, "GET", "/", &[("accept-encoding", encoding)]).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_no_cache_response_is_not_served_without_revalidation() {
    let (service, _) = layered(&[], |_, n| {
        answer(
            &[("cache-control", "no-cache, max-age=60".into())],
            format!("call {n}"),
        )
    });
    call(&service, "GET", "/", &[]).await;
    let again = call(&service, "GET", "/", &[]).await;
    assert_eq!(body_of(&again), "call 2");
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_proxy_revalidate_and_s_maxage_forbid_stale_serving() {
    let (service, _) = layered(&[], |request, n| {
        let directive = request.uri().path().trim_start_matches('/').to_owned();
        answer(&[("cache-control", directive)], format!("call {n}"))
    });
    for path in [
        "/max-age=10,must-revalidate",
        "/max-age=10,proxy-revalidate",
        "/s-maxage=10",
    ] {
        let first = call(&service, "GET", path, &[]).await;
        tokio::time::advance(Duration::from_secs(15)).await;
        let after = call(&service, "GET", path, &[]).await;
        assert_ne!(
            body_of(&first),
            body_of(&after),
            "{path}: no stale response"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_origins_age_counts_against_its_lifetime() {
    let (service, calls) = layered(&[], |_, n| {
        answer(
            &[("cache-control", "max-age=60".into()), ("age", "50".into())],
            format!("call {n}"),
        )
    });
    let first = call(&service, "GET", "/", &[]).await;
    assert_eq!(first.1["age"], "50", "the origin's Age is kept");
    tokio::time::advance(Duration::from_secs(5)).await;
    let cached = call(&service, "GET", "/", &[]).await;
    assert_eq!(
        (body_of(&cached), &cached.1["age"]),
        ("call 1", &"55".parse::<http::HeaderValue>().unwrap())
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let later = call(&service, "GET", "/", &[]).await;
    assert_eq!(later.1["age"], "65");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "65 s old: stale, so refreshed"
    );
}

/// An `Age` past what 64 bits hold is the longest age (RFC 9111 §1.2.2),
/// so the response is stale from the start. It was read as no age at all,
/// and the response was served fresh for its whole `max-age`.
#[tokio::test(start_paused = true)]
async fn an_age_past_64_bits_is_as_old_as_an_age_gets() {
    let (service, calls) = layered(&[], |_, n| {
        answer(
            &[
                ("cache-control", "max-age=60".into()),
                ("age", "99999999999999999999".into()),
            ],
            format!("call {n}"),
        )
    });
    call(&service, "GET", "/", &[]).await;
    call(&service, "GET", "/", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "stale from the start");
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_method_invalidates_the_cached_get_of_its_uri() {
    let (service, _) = layered(&[], |request, n| {
        let mut response = answer(
            &[("cache-control", "max-age=60".into())],
            format!("call {n}"),
        );
        if request.uri().query() == Some("fail") {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    });
    call(&service, "GET", "/orders", &[]).await;
    call(&service, "POST", "/orders?fail", &[]).await;
    let kept = call(&service, "GET", "/orders", &[]).await;
    assert_eq!(
        body_of(&kept),
        "call 1",
        "a failed POST to another URI changes nothing"
    );
    call(&service, "DELETE", "/orders", &[]).await;
    let after = call(&service, "GET", "/orders", &[]).await;
    assert_eq!(body_of(&after), "call 4", "the DELETE invalidated it");
}

#[tokio::test(start_paused = true)]
async fn a_write_its_caller_stopped_waiting_for_still_invalidates() {
    let (service, _) = layered(&[], |request, n| {
        let mut fields = vec![("cache-control", "max-age=60".to_owned())];
        if request.method() == "PUT" {
            fields.push(("x-test-delay", "5".to_owned()));
        }
        answer(&fields, format!("call {n}"))
    });
    call(&service, "GET", "/orders/7", &[]).await;
    // The origin applies the write; its caller gives up after a second.
    let cut = tokio::time::timeout(
        Duration::from_secs(1),
        call(&service, "PUT", "/orders/7", &[]),
    )
    .await;
    assert!(cut.is_err(), "the caller stopped waiting");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let after = call(&service, "GET", "/orders/7", &[]).await;
    assert_eq!(
        body_of(&after),
        "call 3",
        "the response from before the write is not served"
    );
}

/// A write lands while a refresh of its URI, which read the origin
/// before it, is still running: the `GET` after the write gets the new
/// representation, and the refresh does not store the old one over it.
#[tokio::test(start_paused = true)]
async fn a_write_during_a_refresh_of_its_uri_is_not_undone_by_the_refresh() {
    let (service, _) = layered(&[], |request, n| {
        // Every GET after the first (the refresh among them) is slow to
        // answer, so the refresh still runs when the PUT has landed.
        let delay = if request.method() == http::Method::GET && n > 1 {
            "5"
        } else {
            "1"
        };
        answer(
            &[
                ("cache-control", "max-age=60".into()),
                ("x-test-delay", delay.into()),
            ],
            format!("call {n}"),
        )
    });
    call(&service, "GET", "/orders", &[]).await;
    tokio::time::advance(Duration::from_secs(70)).await;
    let stale = call(&service, "GET", "/orders", &[]).await;
    assert_eq!(body_of(&stale), "call 1", "served stale while it refreshes");
    call(&service, "PUT", "/orders", &[]).await;
    let after = call(&service, "GET", "/orders", &[]).await;
    assert_eq!(
        body_of(&after),
        "call 4",
        "not the refresh that read before the PUT"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = call(&service, "GET", "/orders", &[]).await;
    assert_eq!(body_of(&later), "call 4", "the refresh stored nothing");
}

/// An origin's server error is an error, as RFC 5861 counts it: the
/// stored response stands, served while it revalidates and, within
/// `stale-if-error`, in place of the error (the 503 dropped it, and every
/// later request met the failing origin); with nothing stored, the 503 is
/// the answer.
#[tokio::test(start_paused = true)]
async fn an_origins_server_error_keeps_the_stored_response() {
    // A 429 too: the origin pacing its callers (it dropped the stored
    // response, not storable, and callers got the 429 in its place).
    for status in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let (service, calls) = stored_then(move |n| {
            let mut failed = answer(&[], format!("call {n} failed"));
            *failed.status_mut() = status;
            failed
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let unstored = call(&service, "GET", "/elsewhere", &[]).await;
        assert_eq!((unstored.0, body_of(&unstored)), (status, "call 4 failed"));
    }
}

/// The layer over an origin whose first answer is stored (fresh for 10 s,
/// served stale for 10 s more while it revalidates, and for 600 s in place
/// of an error) and whose later answers are `failing`'s: checks that the
/// refresh meets the failure and that the stored answer then stands in
/// for it.
async fn stored_then(
    failing: impl Fn(usize) -> Response<String> + Send + Sync + 'static,
) -> (Layered, Arc<AtomicUsize>) {
    let (service, calls) = layered(&[], move |_, n| {
        if n == 1 {
            let directives = "max-age=10, stale-while-revalidate=10, stale-if-error=600";
            return answer(&[("cache-control", directives.into())], "call 1".into());
        }
        failing(n)
    });
    call(&service, "GET", "/", &[]).await;
    tokio::time::advance(Duration::from_secs(15)).await;
    let stale = call(&service, "GET", "/", &[]).await;
    assert_eq!(body_of(&stale), "call 1", "stale while it revalidates");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh met the failure"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    let covered = call(&service, "GET", "/", &[]).await;
    assert_eq!(
        (covered.0, body_of(&covered)),
        (StatusCode::OK, "call 1"),
        "in place of the failure"
    );
    (service, calls)
}

/// A call a layer below refused (an open breaker's 503, a limiter's 429)
/// reaches the caller as that layer answered it, its `Refusal` marker
/// included, and the stored response stands and covers for it: the
/// marker was dropped, so a retry above took an open circuit for the
/// origin's 503 and spent its budget on it, and a limiter's 429, not
/// storable, dropped the stored response.
#[tokio::test(start_paused = true)]
async fn a_refusal_from_below_keeps_its_marker_and_the_stored_response() {
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;

    for (status, refusal) in [
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::circuit_open(Some(Duration::from_secs(2))),
        ),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Refusal::rate_limited(Some(Duration::from_secs(1))),
        ),
    ] {
        let (service, _) = stored_then(move |_| refusal_response(status, refusal)).await;
        let request = Request::get("/elsewhere").body(Empty::new()).unwrap();
        let refused = service.clone().oneshot(request).await.unwrap();
        assert_eq!(refused.status(), status);
        assert_eq!(
            refused.extensions().get::<Refusal>(),
            Some(&refusal),
            "the refusal's marker, for the layers above"
        );
    }
}

/// A refusal from below answers the request that was refused, not the
/// others of its flight: a caller over its own rate limit leads a flight
/// and gets its 429, and the two callers that joined it, under their
/// limits, get the origin's answer from one flight of their own (they got
/// the 429 with the leader's `Refusal`, refused without drawing on their
/// own limits).
#[tokio::test(start_paused = true)]
async fn a_leaders_refusal_from_below_is_not_handed_to_its_waiters() {
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;

    let refusal = Refusal::rate_limited(Some(Duration::from_secs(5)));
    let (service, calls) = layered(&[], move |request, n| {
        if field(request, "x-client") == "greedy" {
            refusal_response(StatusCode::TOO_MANY_REQUESTS, refusal)
        } else {
            answer(
                &[("cache-control", "max-age=60".into())],
                format!("{} {n}", field(request, "x-client")),
            )
        }
    });
    let greedy = {
        let service = service.clone();
        tokio::spawn(
            async move { call(&service, "GET", "/ranking", &[("x-client", "greedy")]).await },
        )
    };
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let polite = ["polite-1", "polite-2"].map(|client| {
        let service = service.clone();
        tokio::spawn(
            async move { call(&service, "GET", "/ranking", &[("x-client", client)]).await },
        )
    });
    let greedy = greedy.await.unwrap();
    assert_eq!(greedy.0, StatusCode::TOO_MANY_REQUESTS);
    let [first, second] = polite;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.0, StatusCode::OK, "{:?}", body_of(&first));
    assert_eq!(body_of(&first), body_of(&second), "one flight of their own");
    assert!(body_of(&first).ends_with(" 2"), "{:?}", body_of(&first));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Stored by the second flight: the next caller gets it.
    let later = call(&service, "GET", "/ranking", &[("x-client", "greedy")]).await;
    assert_eq!(body_of(&later), body_of(&first));
}

/// A refusal answering `x-client`'s request for its own sake (over its
/// rate limit), naming whom it refused.
fn refused_for(request: &Request<Empty<Bytes>>) -> Response<String> {
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;

    let refusal = Refusal::rate_limited(Some(Duration::from_secs(5)));
    let mut refused = refusal_response(StatusCode::TOO_MANY_REQUESTS, refusal);
    let client = field(request, "x-client");
    refused
        .headers_mut()
        .insert("x-refused", client.parse().unwrap());
    refused
}

/// `clients`' requests for one URI at once, the first reaching the origin
/// before the others are sent.
async fn all_at_once(
    service: &Layered,
    calls: &AtomicUsize,
    clients: &[&'static str],
) -> Vec<(StatusCode, HeaderMap, Bytes)> {
    let mut answers = Vec::new();
    for &client in clients {
        let service = service.clone();
        answers.push(tokio::spawn(async move {
            call(&service, "GET", "/ranking", &[("x-client", client)]).await
        }));
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut done = Vec::new();
    for answer in answers {
        done.push(answer.await.unwrap());
    }
    done
}

/// Each of `clients` got its own answer (`polite` served, the others
/// their own refusal), every request sent once.
fn each_its_own(clients: &[&str], answers: &[(StatusCode, HeaderMap, Bytes)], calls: &AtomicUsize) {
    for (client, answer) in clients.iter().zip(answers) {
        if *client == "polite" {
            assert_eq!(answer.0, StatusCode::OK);
            assert_eq!(body_of(answer), "served");
        } else {
            assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS, "{client}");
            assert_eq!(answer.1["x-refused"], *client, "its own refusal");
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        clients.len(),
        "each sent once"
    );
}

/// Callers whose flights' leaders are refused turn after turn each end
/// with their own answer, every request sent once: every caller but one
/// is over its limit, and the one under it is served.
#[tokio::test(start_paused = true)]
async fn callers_refused_turn_after_turn_each_end_with_their_own_answer() {
    let (service, calls) = layered(&[], |request, _| {
        if field(request, "x-client") == "polite" {
            answer(&[("cache-control", "no-store".into())], "served".into())
        } else {
            refused_for(request)
        }
    });
    let clients = [
        "greedy-0", "greedy-1", "greedy-2", "polite", "greedy-3", "greedy-4",
    ];
    let answers = all_at_once(&service, &calls, &clients).await;
    each_its_own(&clients, &answers, &calls);
}

/// Callers refused for their own sake in every flight they join end,
/// after three more flights, by sending their own requests on their own:
/// each gets its own refusal, and no caller waits for ever.
#[tokio::test(start_paused = true)]
async fn callers_refused_in_every_flight_send_their_own_after_three_more() {
    let (service, calls) = layered(&[], |request, _| refused_for(request));
    let started = tokio::time::Instant::now();
    let clients = ["a", "b", "c", "d", "e", "f", "g"];
    let answers = all_at_once(&service, &calls, &clients).await;
    each_its_own(&clients, &answers, &calls);
    // A second a flight: the first, three more, then their own.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

/// A refusal any caller would get (an open circuit) answers the whole
/// flight, as before: one call for all.
#[tokio::test(start_paused = true)]
async fn an_open_circuits_refusal_answers_the_whole_flight() {
    use palisade_hints::Refusal;
    use palisade_hints::http::refusal_response;

    let open = Refusal::circuit_open(Some(Duration::from_secs(5)));
    let (service, calls) = layered(&[], move |_, _| {
        refusal_response(StatusCode::SERVICE_UNAVAILABLE, open)
    });
    let answers = all_at_once(&service, &calls, &["a", "b", "c", "d"]).await;
    for answer in &answers {
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// What `poll_ready` took is given back at the call: a concurrency
/// limit's permit, taken when the layer's service readied, was kept by it
/// while the flight's clone waited for another, for ever with a limit of
/// one (timed out on the code before).
#[tokio::test(start_paused = true)]
async fn a_layer_kept_and_called_again_holds_no_permit_its_flight_needs() {
    let cache: Cache<String, CachedResponse, BoxError> =
        Cache::new(10, Freshness::new(Duration::from_secs(60)));
    let origin = Origin {
        calls: Arc::new(AtomicUsize::new(0)),
        answer: Arc::new(|_, n| answer(&[], format!("call {n}"))),
    };
    let limited = tower::limit::ConcurrencyLimit::new(origin, 1);
    let mut service = CoalesceLayer::new(cache).layer(limited);
    for n in 1..=2 {
        let request = Request::get(format!("/{n}")).body(Empty::new()).unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(3600), async {
            service.ready().await.unwrap().call(request).await
        })
        .await;
        let response = answered.expect("answered, not waiting for a permit");
        let body = response.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), format!("call {n}"));
    }
}

/// `Expires` less `Date` is the lifetime when no `max-age` says
/// otherwise, and an `Expires` that is no date has expired: both were
/// kept for the cache's default lifetime (60 s here) on the code before.
#[tokio::test(start_paused = true)]
async fn expires_gives_the_lifetime_when_max_age_does_not() {
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let (service, calls) = layered(&[], |request, n| {
        let fields = match request.uri().path() {
            "/expired" => vec![("expires", "0".to_owned())],
            "/overridden" => vec![
                ("expires", "0".to_owned()),
                ("cache-control", "max-age=60".to_owned()),
            ],
            _ => vec![
                ("date", DATE.to_owned()),
                ("expires", "Sun, 06 Nov 1994 08:49:47 GMT".to_owned()),
            ],
        };
        answer(&fields, format!("call {n}"))
    });
    for _ in 0..2 {
        call(&service, "GET", "/expired", &[]).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "an invalid Expires");
    for _ in 0..2 {
        call(&service, "GET", "/overridden", &[]).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "max-age wins");
    call(&service, "GET", "/ten-seconds", &[]).await;
    tokio::time::advance(Duration::from_secs(8)).await;
    call(&service, "GET", "/ten-seconds", &[]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "fresh for ten seconds");
    tokio::time::advance(Duration::from_secs(3)).await;
    call(&service, "GET", "/ten-seconds", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 5, "then refreshed");
}

#[tokio::test(start_paused = true)]
async fn vary_keys_tell_a_comma_in_a_value_from_two_lines() {
    let (service, calls) = layered(&[http::header::ACCEPT], |_, n| {
        answer(&[], format!("call {n}"))
    });
    call(&service, "GET", "/", &[("accept", "a,b")]).await;
    call(&service, "GET", "/", &[("accept", "a"), ("accept", "b")]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_now_says_no_store_drops_the_old_entry() {
    let (service, calls) = layered(&[], |_, n| {
        let directive = if n == 1 { "max-age=10" } else { "no-store" };
        answer(&[("cache-control", directive.into())], format!("call {n}"))
    });
    call(&service, "GET", "/", &[]).await;
    tokio::time::advance(Duration::from_secs(15)).await;
    let stale = call(&service, "GET", "/", &[]).await;
    assert_eq!(body_of(&stale), "call 1", "served stale while it refreshes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed");
    let after = call(&service, "GET", "/", &[]).await;
    assert_eq!(
        body_of(&after),
        "call 3",
        "the old response is not served again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_router_the_layers_own_failure_is_a_502_not_an_error() {
    let (address, _) = serve().await;
    let (status, _, body) = send(address, "GET", "/large", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.is_empty());
    // The connection and the router are still there for the next request.
    let (status, _, body) = send(address, "GET", "/with/max-age=60", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "call 1");
}

#[tokio::test]
async fn the_502_carries_the_failure() {
    use tower::ServiceExt;
    let cache: Cache<String, CachedResponse, BoxError> =
        Cache::new(10, Freshness::new(Duration::from_secs(60)));
    let app = Router::new()
        .route("/", get(|| async { "more than eight bytes" }))
        .layer(CoalesceLayer::new(cache).max_body(8).answer_failures());
    let response = app
        .oneshot(Request::get("/").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let failure = response
        .extensions()
        .get::<palisade_coalesce::http::SharedError>()
        .expect("the failure in the extensions");
    assert!(
        failure
            .to_string()
            .contains("larger than the cache's 8 bytes"),
        "{failure}"
    );
}

/// A request naming its resource in more than 8 KiB goes to the origin on
/// its own: its key (up to a megabyte, from a padded `Host` or query)
/// took memory the cache's count of entries does not bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_long_to_key_goes_to_the_origin() {
    let (address, calls) = serve().await;
    let long = format!("/slow?{}", "q".repeat(9_000));
    for call in ["call 1", "call 2"] {
        let (status, _, body) = send(address, "GET", &long, &[]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, call.as_bytes()));
    }
    let (_, _, body) = send(address, "GET", "/slow?q", &[]).await;
    assert_eq!(body, "call 3");
    let (_, _, body) = send(address, "GET", "/slow?q", &[]).await;
    assert_eq!(body, "call 3", "a short one is cached");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
