//! How a request is kept so it can be sent again.

/// Keeps what is needed to send a request again, and decides whether it may
/// be sent again at all.
///
/// [`prepare`](Self::prepare) runs once per request, before the first
/// attempt; returning no saved copy means the request is sent once and never
/// retried (a `POST` without an idempotency key, in HTTP mode).
/// [`can_replay`](Self::can_replay) is asked when a retry is considered,
/// before the backoff wait, and [`replay`](Self::replay) makes the retry's
/// request after the wait (an earlier attempt's transport may have let go
/// of the body meanwhile), or `None` when it cannot be made: then the last
/// result goes back to the caller.
pub trait Replay<Req> {
    /// The request the inner service receives.
    type Request;
    /// What is kept between attempts.
    type Saved;

    /// The first attempt's request, and what is kept for the others.
    fn prepare(&self, request: Req) -> (Self::Request, Option<Self::Saved>);

    /// Another attempt's request, made when the backoff wait is over.
    fn replay(&self, saved: &Self::Saved) -> Option<Self::Request>;

    /// Whether another attempt's request may still be made, asked before
    /// the backoff wait: `false` returns the result at once, without a
    /// wait or a withdrawal from the retry budget (a body already over its
    /// buffer cap). `true`, the default, leaves the decision to
    /// [`replay`](Self::replay), after the wait.
    fn can_replay(&self, saved: &Self::Saved) -> bool {
        let _ = saved;
        true
    }

    /// When the request's own time is up, if it carries one (a gRPC
    /// call's `grpc-timeout`, read by the buffered HTTP modes): no retry
    /// starts at or past it, and none waits a backoff that ends there
    /// (a give-up for the deadline). `None`, the default, leaves the
    /// deadline to [`Config::deadline`](crate::ConfigBuilder::deadline).
    fn deadline(&self, saved: &Self::Saved) -> Option<tokio::time::Instant> {
        let _ = saved;
        None
    }
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
