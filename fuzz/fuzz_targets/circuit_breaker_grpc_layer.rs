//! The circuit breaker's gRPC layer, driven with arbitrary answers: errors,
//! trailers-only statuses with or without a pushback, HTTP errors from a
//! proxy, and streamed bodies that end in trailers (with or without a
//! status), in an error, or are dropped part way, on a paused clock.
//!
//! Invariants: nothing panics; a call the breaker refuses never reaches the
//! inner service and is a trailers-only UNAVAILABLE carrying the refusal;
//! every response keeps its status and frames; and once every body has
//! ended or been dropped, no permit is left behind: past the longest open
//! duration, a call is let through.
#![no_main]

use std::collections::VecDeque;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_circuit_breaker::{CircuitBreakerLayer, Config, Open, SlidingWindow};
use palisade_hints::Refusal;
use tower::{Layer, ServiceExt};

#[path = "paused.rs"]
mod paused;

#[derive(Debug, Clone, Arbitrary)]
enum Answer {
    /// A transport error.
    Error,
    /// A trailers-only status, perhaps with a pushback in milliseconds.
    TrailersOnly { code: u8, pushback: Option<u16> },
    /// A proxy's HTTP error, with no grpc-status.
    Proxy { status: u16 },
    /// Messages, then trailers with this status (or none), an error, or the
    /// caller dropping the body after reading `read` frames.
    Streamed { frames: u8, end: End, read: u8 },
}

#[derive(Debug, Clone, Arbitrary)]
enum End {
    Trailers(Option<u8>),
    Error,
}

#[derive(Debug, Arbitrary)]
struct Step {
    answer: Answer,
    /// Milliseconds of the paused clock before the call.
    wait_ms: u16,
}

/// A body of `frames` data frames, then its end.
#[derive(Default)]
struct Scripted {
    frames: u8,
    end: Option<End>,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        if self.frames > 0 {
            self.frames -= 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))));
        }
        Poll::Ready(match self.end.take() {
            Some(End::Trailers(code)) => {
                let mut trailers = HeaderMap::new();
                if let Some(code) = code {
                    trailers.insert("grpc-status", http::HeaderValue::from(u16::from(code % 17)));
                }
                Some(Ok(Frame::trailers(trailers)))
            }
            Some(End::Error) => Some(Err("stream reset")),
            None => None,
        })
    }
}

fn respond(answer: &Answer) -> Result<Response<Scripted>, &'static str> {
    match answer {
        Answer::Error => Err("connection refused"),
        Answer::TrailersOnly { code, pushback } => {
            let mut response = Response::new(Scripted::default());
            let headers = response.headers_mut();
            headers.insert("grpc-status", http::HeaderValue::from(u16::from(code % 17)));
            if let Some(ms) = pushback {
                headers.insert("grpc-retry-pushback-ms", http::HeaderValue::from(*ms));
            }
            Ok(response)
        }
        Answer::Proxy { status } => {
            let mut response = Response::new(Scripted::default());
            *response.status_mut() =
                StatusCode::from_u16(200 + status % 400).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok(response)
        }
        Answer::Streamed { frames, end, .. } => Ok(Response::new(Scripted {
            frames: frames % 8,
            end: Some(end.clone()),
        })),
    }
}

/// Polls `future`, which never waits on anything but the paused clock's
/// own timers (none here), to its end.
fn finish<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

/// Reads `body` to its end, or drops it after `read` frames.
fn consume<B: Body + Unpin>(mut body: B, read: Option<u8>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = 0_u8;
    loop {
        if read.is_some_and(|read| frames >= read % 10) {
            return;
        }
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(_))) => frames = frames.saturating_add(1),
            Poll::Ready(Some(Err(_)) | None) => return,
            Poll::Pending => unreachable!("a scripted body is always ready"),
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    paused::run(async move {
        let config = Config::builder()
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(3)
            .open_duration(Duration::from_millis(100))
            .max_open_duration(Duration::from_secs(1))
            .half_open_max_wait(Duration::from_secs(3600))
            .build()
            .unwrap();
        let layer = CircuitBreakerLayer::new_for_grpc(config);
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let called = Arc::new(AtomicUsize::new(0));
        let (queue, count) = (script.clone(), called.clone());
        let service = layer.layer(tower::service_fn(move |_: Request<()>| {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = queue
                .lock()
                .unwrap()
                .pop_front()
                .expect("an answer per call");
            std::future::ready(respond(&answer))
        }));
        for step in steps.iter().take(64) {
            tokio::time::advance(Duration::from_millis(u64::from(step.wait_ms % 2_000))).await;
            script.lock().unwrap().push_back(step.answer.clone());
            let before = called.load(Ordering::SeqCst);
            let result = finish(service.clone().oneshot(Request::new(())));
            let reached = called.load(Ordering::SeqCst) > before;
            if !reached {
                // Refused: the answer was not used.
                script.lock().unwrap().pop_back();
                let response = result.expect("a refusal is a response");
                assert_eq!(response.headers()["grpc-status"], "14");
                assert!(response.extensions().get::<Open>().is_some());
                assert!(response.extensions().get::<Refusal>().is_some());
                continue;
            }
            match (&step.answer, result) {
                (Answer::Error, Err(error)) => assert_eq!(error, "connection refused"),
                (Answer::Error, Ok(_)) => panic!("an error became a response"),
                (_, Err(error)) => panic!("a response became an error: {error}"),
                (Answer::Streamed { read, .. }, Ok(response)) => {
                    consume(response.into_body(), (read % 3 == 0).then_some(*read));
                }
                (_, Ok(response)) => consume(response.into_body(), None),
            }
        }
        // Every body has ended or been dropped: past the longest open
        // duration, the breaker lets a call through.
        tokio::time::advance(Duration::from_secs(2)).await;
        script.lock().unwrap().push_back(Answer::TrailersOnly {
            code: 0,
            pushback: None,
        });
        let before = called.load(Ordering::SeqCst);
        let response = finish(service.clone().oneshot(Request::new(()))).unwrap();
        assert!(
            called.load(Ordering::SeqCst) > before,
            "no permit for a call after every body ended: {:?}",
            response.headers()
        );
    });
});
