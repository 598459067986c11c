//! gRPC mode (feature `grpc`): a side's `grpc-status` judges its call,
//! whether it comes in the response headers (a trailers-only response) or
//! in the trailers at the end of the body.

use http::{HeaderMap, Response};
use palisade_hints::grpc::{self, AtEnd, Head, StatusBody};
use palisade_hints::{Refusal, RefusalReason};

use crate::settle::{Pending, Settle};

/// A gRPC response body that tells the canary how its call went when the
/// trailers arrive: failed when their `grpc-status` says the service is
/// unwell, or when the body ends without one (or with an error), or
/// panics; dropped before its end (a client that stopped reading a
/// stream, or cancelled it), for neither side.
pub type GrpcBody<B> = StatusBody<B, Pending>;

/// At the body's end: the trailers' `grpc-status` judges the call, and a
/// body that ends without one (or with an error) failed; a body that
/// panics while polled failed too. A drop between polls says nothing: a
/// client that stops reading, or cancels a stream while it waits for the
/// next message, looks the same to a server (whose reader polls again as
/// soon as a frame is sent) as a stream that hangs and is cut by a
/// timeout, and only the first is common.
impl AtEnd for Pending {
    fn polling(&mut self) {
        self.abandoned_fails = true;
    }

    fn polled(&mut self) {
        self.abandoned_fails = false;
    }

    fn ended(self, trailers: Option<&HeaderMap>) {
        self.judge(grpc::ended_failed(trailers));
    }
}

/// Tells the canary of a refusal by a palisade layer in a side's stack: a
/// caller over its rate limit counts for neither side; any other refusal
/// is the side's failure.
fn refused(call: Pending, refusal: &Refusal) {
    if refusal.reason() == RefusalReason::RateLimited {
        call.exclude();
    } else {
        call.judge(true);
    }
}

/// Judges gRPC calls, on servers and clients: `grpc-status` UNKNOWN,
/// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (naming no wait), INTERNAL and
/// UNAVAILABLE are failures, read from the headers or, when only the
/// trailers carry it (a stream that fails after its messages), at the end
/// of the body ([`GrpcBody`] carries the call there, and its latency is
/// the time to the trailers); a body that ends without a status, or with
/// an error, and a transport error are failures. A response whose HTTP
/// status is not 200 and that carries no `grpc-status` (a proxy answered)
/// counts as the status gRPC clients give it. A palisade rate limiter's
/// refusal counts for neither side; any other palisade refusal is a
/// failure. A body dropped before its end, once its head has come, counts
/// for neither side: a client that cancels a stream and a stream that
/// hangs after its head look alike, so a canary whose streams hang that
/// way is not halted for it.
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use palisade_traffic::{Canary, CanaryPlan, CanarySplit, GrpcStatus};
/// use tower::{BoxError, service_fn};
///
/// # fn main() -> Result<(), BoxError> {
/// let side = |version: &'static str| {
///     service_fn(move |_: Request<()>| async move {
///         Ok::<_, BoxError>(Response::new(tonic::body::Body::empty()))
///     })
/// };
/// let canary = Canary::new(CanaryPlan::new())?;
/// let split = CanarySplit::new(side("v1"), side("v2"), canary, |_: &Request<()>| None::<u64>)
///     .failures(GrpcStatus);
/// # let _ = split;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatus;

impl<B, E: 'static> Settle<Response<B>, E> for GrpcStatus {
    type Response = Response<GrpcBody<B>>;

    fn settle(
        &self,
        result: Result<Response<B>, E>,
        call: Pending,
    ) -> Result<Response<GrpcBody<B>>, E> {
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                match Refusal::in_error(&error) {
                    Some(refusal) => refused(call, refusal),
                    None => call.judge(true),
                }
                return Err(error);
            }
        };
        let waiting = match Head::of(&response) {
            Head::Refused(refusal) => {
                refused(call, refusal);
                None
            }
            Head::Status(code, fields) => {
                call.judge(grpc::failed(code, fields));
                None
            }
            Head::InTrailers => Some(call.into_body()),
        };
        Ok(response.map(|inner| StatusBody::new(inner, waiting)))
    }
}
