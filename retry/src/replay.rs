//! How a request is kept so it can be sent again.

/// Keeps what is needed to send a request again, and decides whether it may
/// be sent again at all.
///
/// [`prepare`](Self::prepare) runs once per request, before the first
/// attempt; returning no saved copy means the request is sent once and never
/// retried (a `POST` without an idempotency key, in HTTP mode).
/// [`replay`](Self::replay) makes each further attempt's request, or `None`
/// when it can no longer be made (a streamed body over its buffer cap).
pub trait Replay<Req> {
    /// The request the inner service receives.
    type Request;
    /// What is kept between attempts.
    type Saved;

    /// The first attempt's request, and what is kept for the others.
    fn prepare(&self, request: Req) -> (Self::Request, Option<Self::Saved>);

    /// Another attempt's request.
    fn replay(&self, saved: &Self::Saved) -> Option<Self::Request>;
}

/// The generic default: requests that are `Clone` are cloned for each
/// attempt, and every request may be retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> Replay<Req> for CloneRequest {
    type Request = Req;
    type Saved = Req;

    fn prepare(&self, request: Req) -> (Req, Option<Req>) {
        (request.clone(), Some(request))
    }

    fn replay(&self, saved: &Req) -> Option<Req> {
        Some(saved.clone())
    }
}
