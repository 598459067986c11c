//! The retry layer's HTTP preset with replayable bodies, driven with
//! arbitrary request bodies (chunked, over or under the buffer cap),
//! attempts that read all or part of their body, and arbitrary answers
//! (503, 502, 429 with or without Retry-After, 200, transport errors), on
//! a paused clock.
//!
//! Invariants: nothing panics; no more attempts than configured; each
//! attempt reads a prefix of the caller's body, byte for byte, and one that
//! reads to the end reads all of it; a body over the cap is sent once; the
//! caller gets the last attempt's answer; over several calls, the retry
//! budget never goes below zero (no more retries than the calls paid for).
#![no_main]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palisade_retry::http::ReplayBody;
use palisade_retry::{Backoff, Budget, Config, RetryLayer};
use tower::{BoxError, Layer, ServiceExt};

#[path = "paused.rs"]
mod paused;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum Answer {
    Ok,
    Unavailable,
    BadGateway,
    TooManyRequests { retry_after: Option<u8> },
    Refused,
}

#[derive(Debug, Arbitrary)]
struct Attempt {
    /// Frames of the body read before answering; `None`: all of it.
    read: Option<u8>,
    answer: Answer,
}

#[derive(Debug, Arbitrary)]
struct Input {
    chunks: Vec<Vec<u8>>,
    /// Whether the body says its length up front.
    sized: bool,
    cap: u8,
    attempts: Vec<Attempt>,
    /// Calls made one after another through the same service (1 to 4).
    calls: u8,
    /// The retry budget's ratio, in tenths (0 to 2.0).
    ratio: u8,
}

/// The caller's body: its chunks, one frame each; not `Clone`.
struct Chunks {
    chunks: VecDeque<Bytes>,
    sized: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.chunks.iter().map(|chunk| chunk.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

/// What each attempt read of its body, whether it read to the end, and
/// how it was answered.
type Seen = Arc<Mutex<Vec<(Vec<u8>, bool, Answer)>>>;

fuzz_target!(|input: Input| {
    paused::run(async move {
        let chunks: Vec<Bytes> = input
            .chunks
            .iter()
            .take(8)
            .map(|chunk| Bytes::copy_from_slice(&chunk[..chunk.len().min(64)]))
            .collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.to_vec()).collect();
        let cap = usize::from(input.cap);
        let script: Arc<Mutex<VecDeque<Attempt>>> =
            Arc::new(Mutex::new(input.attempts.into_iter().take(8).collect()));
        let seen: Seen = Arc::default();
        let (queue, record) = (script.clone(), seen.clone());
        let origin = tower::service_fn(move |request: Request<ReplayBody<Chunks>>| {
            let attempt = queue.lock().unwrap().pop_front();
            let record = record.clone();
            async move {
                let Attempt { read, answer } = attempt.unwrap_or(Attempt {
                    read: None,
                    answer: Answer::Ok,
                });
                let mut body = request.into_body();
                let mut bytes = Vec::new();
                let mut frames = 0_u8;
                let mut ended = false;
                loop {
                    if read.is_some_and(|read| frames >= read % 10) {
                        break;
                    }
                    match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                        Some(Ok(frame)) => {
                            if let Ok(mut data) = frame.into_data() {
                                bytes.extend_from_slice(&data.copy_to_bytes(data.remaining()));
                            }
                            frames = frames.saturating_add(1);
                        }
                        Some(Err(_)) | None => {
                            ended = true;
                            break;
                        }
                    }
                }
                record.lock().unwrap().push((bytes, ended, answer));
                let status = match answer {
                    Answer::Refused => return Err(BoxError::from("connection refused")),
                    Answer::Ok => StatusCode::OK,
                    Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    Answer::BadGateway => StatusCode::BAD_GATEWAY,
                    Answer::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
                };
                let mut response = Response::new(());
                *response.status_mut() = status;
                if let Answer::TooManyRequests {
                    retry_after: Some(seconds),
                } = answer
                {
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, u16::from(seconds % 5).into());
                }
                Ok::<_, BoxError>(response)
            }
        });
        // No floor: every retry is paid for by the calls' deposits.
        let ratio = f64::from(input.ratio % 21) / 10.0;
        let config = Config::builder()
            .backoff(Backoff::full_jitter(
                Duration::from_millis(1),
                Duration::from_secs(5),
            ))
            .budget(Budget::new(ratio).min_per_second(0).max_banked(100))
            .build()
            .unwrap();
        let attempts = config.max_attempts();
        let service = RetryLayer::new_for_http(config)
            .buffer_bodies(cap)
            .layer(origin);
        let calls = u32::from(input.calls % 4) + 1;
        let mut retries = 0;
        for _ in 0..calls {
            seen.lock().unwrap().clear();
            let request = Request::builder()
                .method(Method::PUT)
                .uri("/resource")
                .body(Chunks {
                    chunks: chunks.iter().cloned().collect(),
                    sized: input.sized,
                })
                .unwrap();
            let result = service.clone().oneshot(request).await;

            let seen = seen.lock().unwrap();
            assert!(!seen.is_empty(), "the first attempt is always made");
            assert!(seen.len() <= attempts as usize, "{} attempts", seen.len());
            retries += seen.len() - 1;
            for (bytes, ended, _) in seen.iter() {
                assert!(whole.starts_with(bytes), "an attempt read other bytes");
                if *ended {
                    assert_eq!(bytes, &whole, "an attempt read to the end, not all of it");
                }
            }
            if input.sized && whole.len() > cap {
                assert_eq!(seen.len(), 1, "a body announced over the cap is sent once");
            }
            // The last attempt's answer is the caller's.
            let last = seen.last().map(|(_, _, answer)| *answer);
            match (last, result) {
                (Some(Answer::Refused), Err(error)) => {
                    assert_eq!(error.to_string(), "connection refused")
                }
                (Some(Answer::Refused), Ok(response)) => {
                    panic!("an error became {:?}", response.status())
                }
                (Some(answer), Ok(response)) => {
                    let status = match answer {
                        Answer::Ok => StatusCode::OK,
                        Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                        Answer::BadGateway => StatusCode::BAD_GATEWAY,
                        Answer::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
                        Answer::Refused => unreachable!(),
                    };
                    assert_eq!(response.status(), status);
                }
                (_, Err(error)) => panic!("a response became an error: {error}"),
                (None, Ok(_)) => unreachable!("the first attempt is always made"),
            }
        }
        // The budget never goes below zero: the retries taken are at most
        // what the calls deposited (ratio of a retry each, in millionths).
        let deposited = u64::from(calls) * (ratio * 1_000_000.0).round() as u64;
        assert!(
            retries as u64 * 1_000_000 <= deposited,
            "{retries} retries on {calls} calls at {ratio}"
        );
    });
});
