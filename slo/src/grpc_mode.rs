//! gRPC mode (feature `grpc`): the `grpc-status` decides, whether it comes
//! in the response headers (a trailers-only response) or in the trailers
//! at the end of the body; a shed call is answered `UNAVAILABLE`.
//!
//! When the status is only in the trailers, the call moves into the
//! response body ([`GrpcBody`]) and is counted when the trailers arrive; a
//! body dropped before its end is a call dropped unfinished.

use http::{HeaderMap, Response};
use palisade_hints::grpc::{self, AtEnd, Head, StatusBody};
use palisade_hints::{Refusal, RefusalReason};

use crate::budget::ErrorBudget;
use crate::classify::{Event, Settle};
use crate::error::Shed;
use crate::future::Pending;
use crate::keyed::{ByKey, KeyedBudgets};
use crate::layer::SloLayer;
use crate::respond::Respond;
use crate::shed::ShedNothing;

/// A gRPC response body that counts its call when the trailers arrive:
/// bad when their `grpc-status` says the service is unwell, or when the
/// body ends without one. It tells no end of stream before that poll
/// (hyper's server stops at a body that says it ended).
pub type GrpcBody<B> = StatusBody<B, Pending>;

/// How a `grpc-status` `code`, in `fields`, counts: bad when it says the
/// service is unwell, good otherwise.
fn event_of(code: u32, fields: &HeaderMap) -> Event {
    if grpc::failed(code, fields) {
        Event::Bad
    } else {
        Event::Good
    }
}

/// How a refusal by a palisade layer beneath counts: a caller over its
/// rate limit is not counted; any other refusal (an open breaker, a
/// limiter whose store is away) is bad, the caller got no answer.
fn event_of_refusal(refusal: &Refusal) -> Event {
    if refusal.reason() == RefusalReason::RateLimited {
        Event::Excluded
    } else {
        Event::Bad
    }
}

/// At the body's end: the trailers' `grpc-status` counts the call, and a
/// body that ends without one (or with an error) is bad; a body that
/// panics while polled is bad, as a future that panics is.
impl AtEnd for Pending {
    fn polling(&mut self) {
        self.polling = true;
    }

    fn polled(&mut self) {
        self.polling = false;
    }

    fn ended(self, trailers: Option<&HeaderMap>) {
        self.count(if grpc::ended_failed(trailers) {
            Event::Bad
        } else {
            Event::Good
        });
    }
}

/// Classifies gRPC calls, for servers and clients (a tonic `Server` or
/// `Channel`): `grpc-status` UNKNOWN, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED (naming no wait), INTERNAL and UNAVAILABLE are bad,
/// read from the headers or, when only the trailers carry it, at the end
/// of the body ([`GrpcBody`] carries the call there); every other code is
/// good, and a body that ends without a status, or with an error, is bad,
/// as is a transport error.
///
/// A response whose HTTP status is not 200 and that carries no
/// `grpc-status` (a proxy answered) counts as the status gRPC clients
/// give it ([`status_of_http`](palisade_hints::grpc::status_of_http)). A
/// palisade rate limiter's refusal of a caller over its own limit, and a
/// RESOURCE_EXHAUSTED naming its wait in `grpc-retry-pushback-ms` (a
/// quota), say nothing of the service: the first is not counted, the
/// second is good, as in HTTP mode. Any other palisade refusal is bad.
///
/// A call whose status comes in the trailers is counted when they arrive:
/// its latency runs to the end of its body (for a unary call on a server,
/// the flush of its answer too), so with a latency threshold a long
/// stream is slow; give streaming services an objective without one.
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
                call.count(Refusal::in_error(&error).map_or(Event::Bad, event_of_refusal));
                return Err(error);
            }
        };
        let waiting = match Head::of(&response) {
            Head::Refused(refusal) => {
                call.count(event_of_refusal(refusal));
                None
            }
            Head::Status(code, fields) => {
                call.count(event_of(code, fields));
                None
            }
            Head::InTrailers => Some(call),
        };
        Ok(response.map(|inner| StatusBody::new(inner, waiting)))
    }
}

/// Answers a shed call with a trailers-only `UNAVAILABLE` and the wait as
/// `grpc-retry-pushback-ms`, without calling the inner service; keeps the
/// inner service's error type. The response's extensions hold the
/// [`Shed`] and its [`Refusal`], so a retry layer further out knows the
/// answer is the shedding's, not the service's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unavailable;

impl<B: Default, E> Respond<Response<B>, E> for Unavailable {
    type Error = E;

    fn refused(&self, shed: Shed) -> Result<Response<B>, E> {
        let mut response = grpc::refusal_response(grpc::UNAVAILABLE, "shed", shed.refusal());
        response.extensions_mut().insert(shed);
        Ok(response)
    }

    fn error(&self, error: E) -> E {
        error
    }
}

impl SloLayer<GrpcStatus, Unavailable, ShedNothing> {
    /// An objective for gRPC servers and clients (feature `grpc`): calls
    /// classified by [`GrpcStatus`], from the head or the trailers, and
    /// shed calls (with [`shed`](Self::shed)) answered by
    /// [`Unavailable`]. The service keeps the inner service's error type;
    /// its responses' bodies are [`GrpcBody`], which tonic takes as it is.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_slo::{ErrorBudget, Objective, SloLayer};
    /// use tower::ServiceBuilder;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // 99.9% of health checks answered without a failure status.
    /// let budget = ErrorBudget::new(Objective::new(0.999))?;
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let channel = ServiceBuilder::new()
    ///     .layer(SloLayer::new_for_grpc(budget.clone()))
    ///     .service(channel);
    /// let health = tonic_health::pb::health_client::HealthClient::new(channel);
    /// # let _ = health;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_grpc(budget: ErrorBudget) -> Self {
        SloLayer::new(budget)
            .classify(GrpcStatus)
            .respond_with(Unavailable)
    }
}

impl<K> SloLayer<GrpcStatus, Unavailable, ShedNothing, ByKey<K>> {
    /// [`new_for_grpc`](SloLayer::new_for_grpc)'s classification and
    /// answers, counting each call into its key's budget
    /// ([`SloLayer::keyed`]), a key from the request's metadata with
    /// [`HeaderKey`](crate::HeaderKey), say.
    #[must_use]
    pub fn keyed_for_grpc(budgets: KeyedBudgets, key: K) -> Self {
        SloLayer::keyed(budgets, key)
            .classify(GrpcStatus)
            .respond_with(Unavailable)
    }
}
