//! HTTP mode (feature `http`): 5xx responses are bad, a shed call is
//! answered 503 with `Retry-After`, and a request marked [`LowPriority`]
//! may be shed.

use std::borrow::Cow;

use http::{HeaderName, Request, Response, StatusCode};
use palisade_hints::{Refusal, RefusalReason, grpc};

use crate::budget::ErrorBudget;
use crate::classify::{Classify, Event, Settle, settle_at_once};
use crate::error::Shed;
use crate::future::Pending;
use crate::keyed::{BudgetKey, ByKey, KeyedBudgets};
use crate::layer::SloLayer;
use crate::respond::Respond;
use crate::shed::{Prioritize, ShedNothing};

/// Classifies HTTP responses: a 5xx is bad (a breaker's 503 too: the
/// caller got no answer), a transport error is bad, and every other status
/// is good, except a palisade rate limiter's 429 to a caller over its own
/// limit, which is excluded. A response a palisade layer refused for any
/// other reason is bad whatever its status: a rate limiter failing closed
/// while its store is away answers 429 too, with a `StoreDown` refusal,
/// and that is the limiter's outage, not the caller's doing.
///
/// A gRPC call that failed in its head (a tonic handler's `Err(Status)`,
/// answered trailers-only: HTTP 200 with its `grpc-status`) is bad when
/// its code says the service is unwell
/// ([`DEPENDENCY_FAILURES`](palisade_hints::grpc::DEPENDENCY_FAILURES):
/// UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
/// UNAVAILABLE), good otherwise, a RESOURCE_EXHAUSTED naming its wait
/// (a caller over its quota, as a 429 is) included. A status that comes
/// only in the trailers, after a streamed body, is not seen (the call
/// counts as its head says): for gRPC servers and clients,
/// `SloLayer::new_for_grpc` (feature `grpc`) reads it there.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAreBad;

impl<B, E> Settle<Response<B>, E> for ServerErrorsAreBad {
    type Response = Response<B>;

    fn settle(&self, result: Result<Response<B>, E>, call: Pending) -> Result<Response<B>, E> {
        settle_at_once(self, result, call)
    }
}

impl<B, E> Classify<Response<B>, E> for ServerErrorsAreBad {
    fn classify(&self, result: &Result<Response<B>, E>) -> Event {
        match result {
            Ok(response) => match response.extensions().get::<Refusal>() {
                Some(refusal) if refusal.reason() == RefusalReason::RateLimited => Event::Excluded,
                Some(_) => Event::Bad,
                None if grpc::head_failed(response.status(), response.headers()) => Event::Bad,
                None => Event::Good,
            },
            Err(_) => Event::Bad,
        }
    }
}

/// Answers a shed call with `503 Service Unavailable`, `Retry-After`
/// (whole seconds, rounded up) and an empty body; the response's
/// extensions hold the [`Shed`] and its [`Refusal`], so a retry layer
/// further out knows the 503 is the shedding's, not the service's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceUnavailable;

impl<B: Default, E> Respond<Response<B>, E> for ServiceUnavailable {
    type Error = E;

    fn refused(&self, shed: Shed) -> Result<Response<B>, E> {
        let mut response =
            palisade_hints::http::refusal_response(StatusCode::SERVICE_UNAVAILABLE, shed.refusal());
        response.extensions_mut().insert(shed);
        Ok(response)
    }

    fn error(&self, error: E) -> E {
        error
    }
}

/// The marker of a low-priority request, put in its extensions by an
/// earlier layer or the router (a report, a prefetch, a batch job's
/// call); [`Marked`] sheds the requests that carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LowPriority;

/// Requests whose extensions hold [`LowPriority`] are low priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marked;

impl<B> Prioritize<Request<B>> for Marked {
    fn is_low_priority(&self, request: &Request<B>) -> bool {
        request.extensions().get::<LowPriority>().is_some()
    }
}

impl SloLayer<ServerErrorsAreBad, ServiceUnavailable, ShedNothing> {
    /// An objective for HTTP services (feature `http`): 5xx responses and
    /// transport errors are bad, a caller over its rate limit is not
    /// counted, and shed calls (with [`shed`](Self::shed)) are answered
    /// 503 with `Retry-After`, keeping the inner service's error type.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::post};
    /// use palisade_slo::{ErrorBudget, Marked, Objective, Shedding, SloLayer};
    ///
    /// # fn main() -> Result<(), palisade_slo::ConfigError> {
    /// // 99.5% of orders answered 2xx within 500 ms; requests marked
    /// // `LowPriority` wait while the budget pages.
    /// let budget = ErrorBudget::new(
    ///     Objective::new(0.995).latency(Duration::from_millis(500)),
    /// )?;
    /// let app: Router = Router::new()
    ///     .route("/orders", post(|| async { "placed" }))
    ///     .layer(SloLayer::new_for_http(budget.clone()).shed(Shedding::low_priority(Marked)));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new_for_http(budget: ErrorBudget) -> Self {
        SloLayer::new(budget)
            .classify(ServerErrorsAreBad)
            .respond_with(ServiceUnavailable)
    }
}

impl<K> SloLayer<ServerErrorsAreBad, ServiceUnavailable, ShedNothing, ByKey<K>> {
    /// [`new_for_http`](SloLayer::new_for_http)'s classification and
    /// answers, counting each request into its key's budget
    /// ([`SloLayer::keyed`]); [`HeaderKey`] keys requests by a header
    /// without copying it.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use palisade_slo::{HeaderKey, KeyedBudgets, Objective, SloLayer};
    ///
    /// # fn main() -> Result<(), palisade_slo::ConfigError> {
    /// // 99.9% for each of up to 500 tenants, named by `X-Tenant`.
    /// let budgets = KeyedBudgets::new(Objective::new(0.999), 500)?;
    /// let app: Router = Router::new()
    ///     .route("/reports", get(|| async { "report" }))
    ///     .layer(SloLayer::keyed_for_http(
    ///         budgets.clone(),
    ///         HeaderKey::new(http::HeaderName::from_static("x-tenant")),
    ///     ));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn keyed_for_http(budgets: KeyedBudgets, key: K) -> Self {
        SloLayer::keyed(budgets, key)
            .classify(ServerErrorsAreBad)
            .respond_with(ServiceUnavailable)
    }
}

/// A request's key in one of its headers (feature `http`), borrowed from
/// the request; a request without the header, or with a value that is
/// empty or not visible ASCII, names none. Use a header the service sets
/// or checks (a gateway's tenant header after authentication), not one any
/// client may invent (see [`KeyedBudgets`]).
#[derive(Debug, Clone)]
pub struct HeaderKey(HeaderName);

impl HeaderKey {
    /// The key in header `name`.
    #[must_use]
    pub const fn new(name: HeaderName) -> Self {
        Self(name)
    }
}

impl<B> BudgetKey<Request<B>> for HeaderKey {
    fn key<'r>(&self, request: &'r Request<B>) -> Option<Cow<'r, str>> {
        let value = request.headers().get(&self.0)?.to_str().ok()?;
        Some(Cow::Borrowed(value))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::RETRY_AFTER;

    use super::*;
    use crate::objective::Severity;

    #[test]
    fn the_503_carries_the_wait_and_the_refusal_marker() {
        let shed = Shed::new(Severity::Page, Duration::from_millis(2_500));
        let response: Response<String> =
            Respond::<Response<String>, ()>::refused(&ServiceUnavailable, shed).unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert_eq!(response.extensions().get::<Shed>(), Some(&shed));
        assert_eq!(
            response.extensions().get::<Refusal>().map(Refusal::reason),
            Some(RefusalReason::Shed)
        );
    }

    #[test]
    fn server_errors_are_bad_and_a_caller_over_its_limit_is_excluded() {
        let event = |status: StatusCode, refusal: Option<Refusal>| {
            let mut response = Response::new(());
            *response.status_mut() = status;
            if let Some(refusal) = refusal {
                response.extensions_mut().insert(refusal);
            }
            ServerErrorsAreBad.classify(&Ok::<_, ()>(response))
        };
        assert_eq!(event(StatusCode::OK, None), Event::Good);
        assert_eq!(event(StatusCode::NOT_FOUND, None), Event::Good);
        assert_eq!(event(StatusCode::INTERNAL_SERVER_ERROR, None), Event::Bad);
        let open = Refusal::circuit_open(Some(Duration::from_secs(1)));
        assert_eq!(
            event(StatusCode::SERVICE_UNAVAILABLE, Some(open)),
            Event::Bad
        );
        let limited = Refusal::rate_limited(Some(Duration::from_secs(1)));
        assert_eq!(
            event(StatusCode::TOO_MANY_REQUESTS, Some(limited)),
            Event::Excluded
        );
        // A limiter failing closed while its store is away: its outage.
        let store_down = Refusal::store_down(Some(Duration::from_secs(1)));
        assert_eq!(
            event(StatusCode::TOO_MANY_REQUESTS, Some(store_down)),
            Event::Bad
        );
        let mut exhausted = Response::new(());
        exhausted
            .headers_mut()
            .insert("grpc-status", "8".parse().unwrap());
        exhausted
            .headers_mut()
            .insert("grpc-retry-pushback-ms", "1000".parse().unwrap());
        exhausted.extensions_mut().insert(store_down);
        assert_eq!(
            ServerErrorsAreBad.classify(&Ok::<_, ()>(exhausted)),
            Event::Bad,
            "a RESOURCE_EXHAUSTED naming its wait, refused for the store"
        );
        assert_eq!(
            ServerErrorsAreBad.classify(&Err::<Response<()>, _>("reset")),
            Event::Bad
        );
    }
}
