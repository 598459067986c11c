//! The W3C Trace Context test suite's cases, run against the conformance
//! example over real HTTP on loopback: this file plays the harness.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_tracecontext::{TraceParent, TraceState};

#[path = "../examples/tracecontext-conformance/service.rs"]
mod service;

type Received = Arc<Mutex<HashMap<String, Vec<(String, Vec<u8>)>>>>;

/// The conformance service and a harness server that records callbacks.
struct Harness {
    service: SocketAddr,
    harness: SocketAddr,
    received: Received,
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

async fn record(Path(id): Path<String>, State(received): State<Received>, headers: HeaderMap) {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    received.lock().unwrap().insert(id, headers);
}

impl Harness {
    async fn start() -> Self {
        let received = Received::default();
        let harness = serve(
            Router::new()
                .route("/callback/{id}", post(record))
                .with_state(received.clone()),
        )
        .await;
        let service = serve(service::router()).await;
        Self {
            service,
            harness,
            received,
        }
    }

    /// Sends `headers` (as given: repeated names, odd casing, whitespace)
    /// with `count` callbacks; returns the headers of each callback.
    async fn request(&self, headers: &[(&str, &str)], count: usize) -> Vec<Vec<(String, Vec<u8>)>> {
        let ids: Vec<String> = (0..count).map(|i| format!("{}-{i}", rand_id())).collect();
        let body = serde_json::to_vec(
            &ids.iter()
                .map(|id| serde_json::json!({"url": format!("http://{}/callback/{id}", self.harness), "arguments": []}))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut request = http::Request::post(format!("http://{}/test", self.service))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(
                *name,
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        let received = self.received.lock().unwrap();
        ids.iter()
            .map(|id| received.get(id).cloned().expect("the service called back"))
            .collect()
    }

    /// One callback's traceparent (exactly one must be sent) and tracestate.
    async fn single(&self, headers: &[(&str, &str)]) -> (TraceParent, TraceState) {
        let callback = self.request(headers, 1).await.remove(0);
        context_of(&callback)
    }
}

fn rand_id() -> String {
    palisade_tracecontext::SpanId::random().to_string()
}

fn context_of(headers: &[(String, Vec<u8>)]) -> (TraceParent, TraceState) {
    let parents: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(parents.len(), 1, "expected exactly one traceparent");
    // What we send must be the canonical version 00 form.
    let text = std::str::from_utf8(parents[0]).unwrap();
    assert!(text.len() == 55 && text.starts_with("00-"), "{text}");
    let parent = TraceParent::parse(parents[0]).unwrap();
    assert_eq!(parent.to_string(), text);
    let states: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("tracestate"))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert!(
        states.iter().all(|s| !s.is_empty()),
        "an empty tracestate was sent"
    );
    (parent, TraceState::parse_lines(states).unwrap())
}

const ID: &str = "12345678901234567890123456789012";
const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const TP00: &str = "00-12345678901234567890123456789012-1234567890123456-00";

async fn continues(h: &Harness, headers: &[(&str, &str)]) -> bool {
    h.single(headers).await.0.trace_id().to_string() == ID
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_headers_missing_starts_a_trace() {
    let h = Harness::start().await;
    let (parent, state) = h.single(&[]).await;
    assert_ne!(parent.trace_id().to_string(), ID);
    assert!(state.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_traceparent_is_continued_with_a_new_parent_id() {
    let h = Harness::start().await;
    let (parent, _) = h.single(&[("traceparent", TP)]).await;
    assert_eq!(parent.trace_id().to_string(), ID);
    assert_ne!(parent.parent_id().to_string(), "1234567890123456");
    assert!(parent.flags().is_sampled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_traceparent_starts_a_new_trace() {
    let h = Harness::start().await;
    let (parent, _) = h
        .single(&[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            ("traceparent", TP),
        ])
        .await;
    assert_ne!(
        parent.trace_id().to_string(),
        "12345678901234567890123456789011"
    );
    assert_ne!(parent.trace_id().to_string(), ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_are_exact_but_case_insensitive() {
    let h = Harness::start().await;
    for name in ["trace-parent", "trace.parent"] {
        assert!(!continues(&h, &[(name, TP)]).await, "{name}");
    }
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        assert!(continues(&h, &[(name, TP)]).await, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions() {
    let h = Harness::start().await;
    let refused = [
        "00-12345678901234567890123456789012-1234567890123456-01.",
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        "ff-12345678901234567890123456789012-1234567890123456-01",
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
    ];
    for value in refused {
        assert!(!continues(&h, &[("traceparent", value)]).await, "{value}");
    }
    for value in [
        "cc-12345678901234567890123456789012-1234567890123456-01",
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    ] {
        assert!(continues(&h, &[("traceparent", value)]).await, "{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_flags_start_a_new_trace() {
    let h = Harness::start().await;
    let refused = [
        "00-00000000000000000000000000000000-1234567890123456-01",
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
    ];
    for value in refused {
        let (parent, _) = h.single(&[("traceparent", value)]).await;
        let id = parent.trace_id().to_string();
        assert_ne!(id, ID, "{value}");
        assert_ne!(id, "00000000000000000000000000000000");
        assert_ne!(id, "23456789012345678901234567890123");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_whitespace_around_traceparent_is_ignored() {
    let h = Harness::start().await;
    for value in [
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ] {
        assert!(continues(&h, &[("traceparent", value)]).await, "{value:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_without_traceparent_is_discarded() {
    let h = Harness::start().await;
    let (_, one) = h.single(&[("tracestate", "foo=1")]).await;
    let (_, two) = h.single(&[("tracestate", "foo=1,bar=2")]).await;
    assert_eq!(one.len(), two.len());
    assert!(one.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_is_inherited_with_traceparent() {
    let h = Harness::start().await;
    let (parent, state) = h
        .single(&[("traceparent", TP00), ("tracestate", "foo=1,bar=2")])
        .await;
    assert_eq!(parent.trace_id().to_string(), ID);
    assert_eq!(state.get("foo"), Some("1"));
    assert_eq!(state.get("bar"), Some("2"));
    assert!(!parent.flags().is_sampled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_header_names() {
    let h = Harness::start().await;
    for name in ["trace-state", "trace.state"] {
        let (_, state) = h.single(&[("traceparent", TP00), (name, "foo=1")]).await;
        assert_eq!(state.get("foo"), None, "{name}");
    }
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        let (_, state) = h.single(&[("traceparent", TP00), (name, "foo=1")]).await;
        assert_eq!(state.get("foo"), Some("1"), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tracestate_lines_are_dropped() {
    let h = Harness::start().await;
    let (parent, state) = h.single(&[("traceparent", TP00), ("tracestate", "")]).await;
    assert_eq!(parent.trace_id().to_string(), ID);
    assert!(state.is_empty());
    for lines in [["foo=1", ""], ["", "foo=1"]] {
        let (_, state) = h
            .single(&[
                ("traceparent", TP00),
                ("tracestate", lines[0]),
                ("tracestate", lines[1]),
            ])
            .await;
        assert_eq!(state.get("foo"), Some("1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_lines_are_combined_in_order() {
    let h = Harness::start().await;
    let (_, state) = h
        .single(&[
            ("traceparent", TP00),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ])
        .await;
    assert_eq!(state.to_string(), "foo=1,bar=2,rojo=1,congo=2,baz=3");
}

/// Level 2: a participant MAY discard duplicate keys it did not write; the
/// harness (strict) expects `foo` inherited, one of its members dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_tracestate_keys_keep_one_member() {
    let h = Harness::start().await;
    for lines in [
        &["foo=1,foo=1"][..],
        &["foo=1,foo=2"],
        &["foo=1", "foo=1"],
        &["foo=1", "foo=2"],
    ] {
        let mut headers = vec![("traceparent", TP00)];
        headers.extend(lines.iter().map(|l| ("tracestate", *l)));
        let (parent, state) = h.single(&headers).await;
        assert_eq!(parent.trace_id().to_string(), ID);
        assert_eq!(state.to_string(), "foo=1", "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_allowed_character_survives() {
    let h = Harness::start().await;
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let vendor_key = format!("{key}@a-z0-9_-*/");
    let value: String = (0x20u8..=0x7e)
        .filter(|&b| b != b',' && b != b'=')
        .map(char::from)
        .collect();
    for key in [key.to_owned(), vendor_key] {
        let member = format!("{key}={value}");
        let (_, state) = h
            .single(&[("traceparent", TP00), ("tracestate", &member)])
            .await;
        assert_eq!(state.get(&key), Some(value.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_around_tracestate_members_is_ignored() {
    let h = Harness::start().await;
    for value in [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
    ] {
        let (_, state) = h
            .single(&[("traceparent", TP00), ("tracestate", value)])
            .await;
        assert_eq!(state.to_string(), "foo=1,bar=2,baz=3", "{value:?}");
    }
    for value in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        let (_, state) = h
            .single(&[("traceparent", TP00), ("tracestate", value)])
            .await;
        assert_eq!(state.get("foo"), Some("1"), "{value:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_keys_and_values_discard_the_header() {
    let h = Harness::start().await;
    for value in [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "@foo=1,bar=2",
        "foo=bar=baz",
        "foo=,bar=3",
    ] {
        let (parent, state) = h
            .single(&[("traceparent", TP00), ("tracestate", value)])
            .await;
        assert_eq!(parent.trace_id().to_string(), ID);
        assert!(state.is_empty(), "{value:?} kept {state}");
    }
}

/// Level 2 key grammar: `@` is an ordinary key character after the first
/// (the harness's `test_tracestate_key_illegal_vendor_format`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_signs_in_keys_are_inherited() {
    let h = Harness::start().await;
    for (value, key) in [
        ("foo@=1,bar=2", "foo@"),
        ("foo@@bar=1,bar=2", "foo@@bar"),
        ("foo@bar@baz=1,bar=2", "foo@bar@baz"),
    ] {
        let (parent, state) = h
            .single(&[("traceparent", TP00), ("tracestate", value)])
            .await;
        assert_eq!(parent.trace_id().to_string(), ID);
        assert_eq!(state.get(key), Some("1"), "{value}");
        assert_eq!(state.get("bar"), Some("2"), "{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_count_limit_is_32() {
    let h = Harness::start().await;
    let lines = |n: usize| -> Vec<String> {
        (1..=n)
            .collect::<Vec<_>>()
            .chunks(10)
            .map(|c| {
                c.iter()
                    .map(|i| format!("bar{i:02}={i:02}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    let ok = lines(32);
    let mut headers = vec![("traceparent", TP00)];
    headers.extend(ok.iter().map(|l| ("tracestate", l.as_str())));
    let (_, state) = h.single(&headers).await;
    assert_eq!(state.len(), 32);
    assert_eq!(state.get("bar01"), Some("01"));

    let too_many = lines(33);
    let mut headers = vec![("traceparent", TP00)];
    headers.extend(too_many.iter().map(|l| ("tracestate", l.as_str())));
    let (_, state) = h.single(&headers).await;
    assert_eq!(state.get("bar01"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_length_limits() {
    let h = Harness::start().await;
    // Level 2: one limit of 256 characters, wherever the `@` falls.
    let cases = [
        (format!("{}=1", "z".repeat(256)), true),
        (format!("{}=1", "z".repeat(257)), false),
        (format!("{}@{}=1", "t".repeat(241), "v".repeat(14)), true),
        (format!("{}@v=1", "t".repeat(242)), true),
        (format!("t@{}=1", "v".repeat(15)), true),
        (format!("{}@{}=1", "t".repeat(241), "v".repeat(15)), false),
    ];
    for (member, kept) in cases {
        let (_, state) = h
            .single(&[
                ("traceparent", TP00),
                ("tracestate", "foo=1"),
                ("tracestate", &member),
            ])
            .await;
        assert_eq!(state.get("foo").is_some(), kept, "{member}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_callback_is_a_new_child_span() {
    let h = Harness::start().await;
    let callbacks = h.request(&[("traceparent", TP)], 3).await;
    let parents: Vec<TraceParent> = callbacks.iter().map(|c| context_of(c).0).collect();
    assert!(parents.iter().all(|p| p.trace_id().to_string() == ID));
    let ids: std::collections::HashSet<_> = parents.iter().map(TraceParent::parent_id).collect();
    assert_eq!(ids.len(), 3);

    for headers in [
        &[][..],
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-1234567890123456-01",
        )],
    ] {
        let callbacks = h.request(headers, 3).await;
        let parents: Vec<TraceParent> = callbacks.iter().map(|c| context_of(c).0).collect();
        let traces: std::collections::HashSet<_> =
            parents.iter().map(TraceParent::trace_id).collect();
        assert_eq!(traces.len(), 1, "one new trace for the request");
        let ids: std::collections::HashSet<_> =
            parents.iter().map(TraceParent::parent_id).collect();
        assert_eq!(ids.len(), 3);
    }
}
