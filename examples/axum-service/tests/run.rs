//! The example as a user runs it: the program on loopback, and real HTTP
//! requests to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The running program, stopped when dropped, and its base URL.
struct Service(Child, String);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    Service(child, url)
}

/// GET `path` from the service at `service` with `headers`: the status,
/// the headers and the body.
async fn get(
    service: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::get(format!("{service}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_the_ranking_computes_it_once() {
    let service = start();
    let crowd: Vec<_> = (0..5)
        .map(|n| {
            let url = service.1.clone();
            tokio::spawn(async move {
                let user = format!("user-{n}");
                get(&url, "/ranking", &[("x-user", user.as_str())]).await
            })
        })
        .collect();
    for answer in crowd {
        let (status, _, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[7, 3, 9] (computed 1 time(s))");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_limit_of_her_own() {
    let service = start();
    // 5 at once, then one a second: alice runs out long before a hundred.
    let mut served = 0;
    let refused = loop {
        let (status, headers, _) = get(&service.1, "/hello", &[("x-user", "alice")]).await;
        match status {
            StatusCode::OK if served < 100 => served += 1,
            _ => break (status, headers),
        }
    };
    assert!(served >= 5, "{served}");
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.1.contains_key(http::header::RETRY_AFTER));
    let (status, _, body) = get(&service.1, "/hello", &[("x-user", "bob")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_continues_its_callers_trace() {
    let service = start();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, headers, _) = get(
        &service.1,
        "/hello",
        &[("x-user", "carol"), ("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answered = headers["traceresponse"].to_str().unwrap();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    assert!(!answered.contains("00f067aa0ba902b7"), "a span of its own");
}
