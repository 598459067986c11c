//! Keeping HTTP requests for another attempt, behind the idempotency gate.

use std::time::Duration;

use http::Request;
use http::request::Parts;
use http_body::Body;
use palisade_hints::grpc;
use tokio::time::Instant;
use tower::BoxError;

use super::body::{Recording, ReplayBody};
use super::idempotency::Idempotency;
use crate::replay::Replay;

/// The buffer cap of [`RetryLayer::buffer_bodies`](crate::RetryLayer::buffer_bodies)
/// when none is given: 64 KiB.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// Keeps HTTP requests that pass the [`Idempotency`] gate for another
/// attempt; `K` says how the body is kept ([`CloneBody`] or
/// [`BufferBody`]).
#[derive(Debug, Clone)]
pub struct HttpReplay<K = CloneBody> {
    pub(crate) gate: Idempotency,
    pub(crate) keep: K,
}

/// Bodies that are `Clone` (`String`, `Full<Bytes>`, ...) are cloned; the
/// inner service receives the caller's request type unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

/// Bodies are recorded as the first attempt streams them, up to a byte
/// cap, and replayed from the record; the inner service receives
/// `Request<ReplayBody<B>>`.
#[derive(Debug, Clone, Copy)]
pub struct BufferBody {
    pub(crate) cap: usize,
}

impl<B: Clone> Replay<Request<B>> for HttpReplay<CloneBody> {
    type Request = Request<B>;
    type Saved = Request<B>;

    fn prepare(&self, request: Request<B>) -> (Request<B>, Option<Request<B>>) {
        if self.gate.allows(&request) {
            (request.clone(), Some(request))
        } else {
            (request, None)
        }
    }

    fn replay(&self, saved: &Request<B>) -> Option<Request<B>> {
        Some(saved.clone())
    }
}

/// What [`HttpReplay<BufferBody>`] keeps between attempts: the request
/// head and the body's recording, and when a gRPC caller's time is up.
#[derive(Debug)]
pub struct RecordedRequest<B> {
    head: Parts,
    recording: Recording<B>,
    /// The end of the time the request's `grpc-timeout` gave the whole
    /// call, retries included.
    deadline: Option<Instant>,
}

impl<B> Replay<Request<B>> for HttpReplay<BufferBody>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Request = Request<ReplayBody<B>>;
    type Saved = RecordedRequest<B>;

    fn prepare(&self, request: Request<B>) -> (Request<ReplayBody<B>>, Option<RecordedRequest<B>>) {
        record(&self.gate, self.keep.cap, request)
    }

    fn replay(&self, saved: &RecordedRequest<B>) -> Option<Request<ReplayBody<B>>> {
        saved.replay()
    }

    fn can_replay(&self, saved: &RecordedRequest<B>) -> bool {
        saved.can_replay()
    }

    fn deadline(&self, saved: &RecordedRequest<B>) -> Option<Instant> {
        saved.deadline
    }
}

/// The first attempt's request, recording its body when the gate allows a
/// retry and the body announces no more than `cap` bytes.
fn record<B: Body>(
    gate: &Idempotency,
    cap: usize,
    request: Request<B>,
) -> (Request<ReplayBody<B>>, Option<RecordedRequest<B>>) {
    let too_long = request.body().size_hint().lower() > cap as u64;
    if too_long || !gate.allows(&request) {
        return (request.map(ReplayBody::once), None);
    }
    let (head, body) = request.into_parts();
    let (body, recording) = ReplayBody::recorded(body, cap);
    let deadline = grpc::timeout(&head.headers).and_then(|left| Instant::now().checked_add(left));
    let saved = RecordedRequest {
        head: head.clone(),
        recording,
        deadline,
    };
    (Request::from_parts(head, body), Some(saved))
}

impl<B: Body> RecordedRequest<B> {
    /// Another attempt, telling the server the time the caller has left in
    /// its `grpc-timeout` (gRPC's deadline is the whole call's: each
    /// attempt sent the first one's again, and a call retried twice ran
    /// for three times what its caller gave it); none once that is up.
    fn replay(&self) -> Option<Request<ReplayBody<B>>> {
        let left = self.time_left();
        if left == Some(Duration::ZERO) {
            return None;
        }
        let body = self.recording.replay()?;
        let mut head = self.head.clone();
        if let Some(left) = left {
            head.headers
                .insert("grpc-timeout", grpc::timeout_value(left));
        }
        Some(Request::from_parts(head, body))
    }

    fn can_replay(&self) -> bool {
        !self.recording.is_spoiled()
    }

    /// What is left of the gRPC caller's time, if it gave one.
    fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}

/// Bodies are recorded as with [`BufferBody`], and each attempt's body is
/// tonic's own around the replayable one: the retry layer takes and passes
/// on `Request<tonic::body::Body>`, so it goes straight in front of a tonic
/// `Channel` (feature `tonic`).
#[cfg(feature = "tonic")]
#[derive(Debug, Clone, Copy)]
pub struct TonicBody {
    pub(crate) cap: usize,
}

#[cfg(feature = "tonic")]
impl Replay<Request<tonic::body::Body>> for HttpReplay<TonicBody> {
    type Request = Request<tonic::body::Body>;
    type Saved = RecordedRequest<tonic::body::Body>;

    fn prepare(
        &self,
        request: Request<tonic::body::Body>,
    ) -> (Request<tonic::body::Body>, Option<Self::Saved>) {
        let (first, saved) = record(&self.gate, self.keep.cap, request);
        (first.map(tonic::body::Body::new), saved)
    }

    fn replay(&self, saved: &Self::Saved) -> Option<Request<tonic::body::Body>> {
        Some(saved.replay()?.map(tonic::body::Body::new))
    }

    fn can_replay(&self, saved: &Self::Saved) -> bool {
        saved.can_replay()
    }

    fn deadline(&self, saved: &Self::Saved) -> Option<Instant> {
        saved.deadline
    }
}

/// Bodies are recorded as with [`BufferBody`], and each attempt's body is
/// `into`'s wrapping of the replayable one, so the inner service receives
/// its own body type: `axum::body::Body::new` for an axum `Router`, say.
/// Made by [`RetryLayer::buffer_bodies_into`](crate::RetryLayer::buffer_bodies_into).
#[derive(Debug, Clone, Copy)]
pub struct BufferInto<F> {
    pub(crate) cap: usize,
    pub(crate) into: F,
}

impl<B, B2, F> Replay<Request<B>> for HttpReplay<BufferInto<F>>
where
    B: Body,
    B::Error: Into<BoxError>,
    F: Fn(ReplayBody<B>) -> B2,
{
    type Request = Request<B2>;
    type Saved = RecordedRequest<B>;

    fn prepare(&self, request: Request<B>) -> (Request<B2>, Option<RecordedRequest<B>>) {
        let (first, saved) = record(&self.gate, self.keep.cap, request);
        (first.map(&self.keep.into), saved)
    }

    fn replay(&self, saved: &RecordedRequest<B>) -> Option<Request<B2>> {
        Some(saved.replay()?.map(&self.keep.into))
    }

    fn can_replay(&self, saved: &RecordedRequest<B>) -> bool {
        saved.can_replay()
    }

    fn deadline(&self, saved: &RecordedRequest<B>) -> Option<Instant> {
        saved.deadline
    }
}
