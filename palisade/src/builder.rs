//! `ServiceBuilder` methods for each pattern's presets.

use tower::ServiceBuilder;
#[cfg(any(
    feature = "breaker",
    feature = "retry",
    feature = "rate-limit",
    all(feature = "coalesce", feature = "http"),
    feature = "slo",
    feature = "tracecontext"
))]
use tower::layer::util::Stack;

/// Each pattern's presets as `ServiceBuilder` methods, in tower-http's
/// style: `.circuit_breaker_for_http(config)` is
/// `.layer(CircuitBreakerLayer::new_for_http(config))`.
///
/// A method exists for each layer feature chosen; the cells and canaries
/// of `traffic` are services over other services, not layers, and are
/// used as such. The first layer added is the outermost, as with
/// `ServiceBuilder::layer`. To keep a handle on a
/// layer's shared state (a breaker to watch, a limiter's store), build the
/// layer and give it to `layer` instead.
///
/// Implemented for `tower::ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// A circuit breaker for generic services: `Err` is a failure (but a
    /// palisade layer's refusal beneath, which is neither), and an open
    /// breaker fails calls with
    /// [`Open`](palisade_circuit_breaker::Open) (feature `breaker`).
    #[cfg(feature = "breaker")]
    #[must_use]
    fn circuit_breaker(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<Stack<palisade_circuit_breaker::CircuitBreakerLayer, L>>;

    /// A circuit breaker for HTTP: 5xx and a 429 naming no wait are
    /// failures, and an open breaker answers 503 itself (features
    /// `breaker`, `http`).
    #[cfg(all(feature = "breaker", feature = "http"))]
    #[must_use]
    fn circuit_breaker_for_http(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_circuit_breaker::CircuitBreakerLayer<
                palisade_circuit_breaker::ServerErrorsAsFailures,
                palisade_circuit_breaker::ServiceUnavailable,
            >,
            L,
        >,
    >;

    /// A circuit breaker for gRPC: the `grpc-status` decides, from the
    /// headers or the trailers, and an open breaker answers `UNAVAILABLE`
    /// itself (features `breaker`, `grpc`).
    #[cfg(all(feature = "breaker", feature = "grpc"))]
    #[must_use]
    fn circuit_breaker_for_grpc(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_circuit_breaker::CircuitBreakerLayer<
                palisade_circuit_breaker::GrpcStatus,
                palisade_circuit_breaker::Unavailable,
            >,
            L,
        >,
    >;

    /// Retries for generic services: every error is retried but a
    /// palisade layer's refusal, which is retried only where it names a
    /// wait and after it (a rate limit's, a store's that is down), never an
    /// open circuit's (feature `retry`).
    #[cfg(feature = "retry")]
    #[must_use]
    fn retry(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>>;

    /// Retries for HTTP clients: 502, 503, 504 and transport errors, 429
    /// with a `Retry-After`, idempotent requests only (features `retry`,
    /// `http`).
    #[cfg(all(feature = "retry", feature = "http"))]
    #[must_use]
    fn retry_for_http(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_retry::RetryLayer<
                palisade_retry::http::RetryServerErrors,
                palisade_retry::http::HttpReplay<palisade_retry::http::CloneBody>,
            >,
            L,
        >,
    >;

    /// Retries for tonic clients: `UNAVAILABLE`, and `RESOURCE_EXHAUSTED`
    /// with a pushback, taking and passing on tonic's body (features
    /// `retry`, `tonic`).
    #[cfg(all(feature = "retry", feature = "tonic"))]
    #[must_use]
    fn retry_for_tonic(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_retry::RetryLayer<
                palisade_retry::grpc::RetryUnavailable,
                palisade_retry::http::HttpReplay<palisade_retry::http::TonicBody>,
            >,
            L,
        >,
    >;

    /// A rate limit for generic services: a refused call fails with
    /// [`RateLimited`](palisade_token_bucket::RateLimited) (feature
    /// `rate-limit`).
    #[cfg(feature = "rate-limit")]
    #[must_use]
    fn rate_limit<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<Stack<palisade_token_bucket::RateLimitLayer<St, K>, L>>;

    /// A rate limit for HTTP services: 429 with `Retry-After` and the
    /// RateLimit fields (features `rate-limit`, `http`).
    #[cfg(all(feature = "rate-limit", feature = "http"))]
    #[must_use]
    fn rate_limit_for_http<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<
        Stack<
            palisade_token_bucket::RateLimitLayer<
                St,
                K,
                palisade_token_bucket::key::OneToken,
                palisade_token_bucket::http::TooManyRequests,
            >,
            L,
        >,
    >;

    /// A rate limit for gRPC: a trailers-only `RESOURCE_EXHAUSTED` with
    /// `grpc-retry-pushback-ms` (features `rate-limit`, `grpc`).
    #[cfg(all(feature = "rate-limit", feature = "grpc"))]
    #[must_use]
    fn rate_limit_for_grpc<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<
        Stack<
            palisade_token_bucket::RateLimitLayer<
                St,
                K,
                palisade_token_bucket::key::OneToken,
                palisade_token_bucket::grpc::ResourceExhausted,
            >,
            L,
        >,
    >;

    /// Sends the current trace on with every request, as a new child span
    /// (feature `tracecontext`).
    #[cfg(feature = "tracecontext")]
    #[must_use]
    fn propagate_trace(self) -> ServiceBuilder<Stack<palisade_tracecontext::PropagateLayer, L>>;

    /// Continues an incoming trace or starts one, on a server (feature
    /// `tracecontext`).
    #[cfg(feature = "tracecontext")]
    #[must_use]
    fn trace_context(self) -> ServiceBuilder<Stack<palisade_tracecontext::TraceContextLayer, L>>;

    /// Counts every call against `budget`'s objective, for generic
    /// services: `Err` is bad (but a rate limiter's refusal of a caller
    /// over its own limit, not counted) (feature `slo`). Shedding is set
    /// on the layer: build it and give it to `layer`.
    #[cfg(feature = "slo")]
    #[must_use]
    fn error_budget(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<Stack<palisade_slo::SloLayer, L>>;

    /// Counts every call against `budget`'s objective, for HTTP servers:
    /// a 5xx, a transport error and a gRPC call that failed in its head
    /// are bad (features `slo`, `http`). For gRPC, whose status may come
    /// only in the trailers, `error_budget_for_grpc`.
    #[cfg(all(feature = "slo", feature = "http"))]
    #[must_use]
    fn error_budget_for_http(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<
        Stack<
            palisade_slo::SloLayer<
                palisade_slo::ServerErrorsAreBad,
                palisade_slo::ServiceUnavailable,
                palisade_slo::ShedNothing,
            >,
            L,
        >,
    >;

    /// Counts every call against `budget`'s objective, for gRPC servers
    /// and clients: the `grpc-status` decides, from the head or, when only
    /// the trailers carry it, at the end of the body (features `slo`,
    /// `grpc`).
    #[cfg(all(feature = "slo", feature = "grpc"))]
    #[must_use]
    fn error_budget_for_grpc(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<
        Stack<
            palisade_slo::SloLayer<
                palisade_slo::GrpcStatus,
                palisade_slo::Unavailable,
                palisade_slo::ShedNothing,
            >,
            L,
        >,
    >;

    /// Coalesces identical `GET`s to a router's routes into one handler
    /// call, through `cache`; a failed flight answers 502, so the stack
    /// goes on an axum `Router` as it is (features `coalesce`, `http`). For
    /// a client, whose errors are the caller's to see, give
    /// `CoalesceLayer::new(cache)` to `layer`.
    #[cfg(all(feature = "coalesce", feature = "http"))]
    #[must_use]
    fn coalesce<R: palisade_coalesce::http::ResponseCache>(
        self,
        cache: R,
    ) -> ServiceBuilder<
        Stack<palisade_coalesce::http::CoalesceLayer<R, palisade_coalesce::http::BadGateway>, L>,
    >;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "breaker")]
    fn circuit_breaker(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<Stack<palisade_circuit_breaker::CircuitBreakerLayer, L>> {
        self.layer(palisade_circuit_breaker::CircuitBreakerLayer::new(config))
    }

    #[cfg(all(feature = "breaker", feature = "http"))]
    fn circuit_breaker_for_http(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_circuit_breaker::CircuitBreakerLayer<
                palisade_circuit_breaker::ServerErrorsAsFailures,
                palisade_circuit_breaker::ServiceUnavailable,
            >,
            L,
        >,
    > {
        self.layer(palisade_circuit_breaker::CircuitBreakerLayer::new_for_http(
            config,
        ))
    }

    #[cfg(all(feature = "breaker", feature = "grpc"))]
    fn circuit_breaker_for_grpc(
        self,
        config: palisade_circuit_breaker::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_circuit_breaker::CircuitBreakerLayer<
                palisade_circuit_breaker::GrpcStatus,
                palisade_circuit_breaker::Unavailable,
            >,
            L,
        >,
    > {
        self.layer(palisade_circuit_breaker::CircuitBreakerLayer::new_for_grpc(
            config,
        ))
    }

    #[cfg(feature = "retry")]
    fn retry(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>> {
        self.layer(palisade_retry::RetryLayer::new(config))
    }

    #[cfg(all(feature = "retry", feature = "http"))]
    fn retry_for_http(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_retry::RetryLayer<
                palisade_retry::http::RetryServerErrors,
                palisade_retry::http::HttpReplay<palisade_retry::http::CloneBody>,
            >,
            L,
        >,
    > {
        self.layer(palisade_retry::RetryLayer::new_for_http(config))
    }

    #[cfg(all(feature = "retry", feature = "tonic"))]
    fn retry_for_tonic(
        self,
        config: palisade_retry::Config,
    ) -> ServiceBuilder<
        Stack<
            palisade_retry::RetryLayer<
                palisade_retry::grpc::RetryUnavailable,
                palisade_retry::http::HttpReplay<palisade_retry::http::TonicBody>,
            >,
            L,
        >,
    > {
        self.layer(palisade_retry::RetryLayer::new_for_tonic(config))
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limit<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<Stack<palisade_token_bucket::RateLimitLayer<St, K>, L>> {
        self.layer(palisade_token_bucket::RateLimitLayer::new(
            store, bucket, key,
        ))
    }

    #[cfg(all(feature = "rate-limit", feature = "http"))]
    fn rate_limit_for_http<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<
        Stack<
            palisade_token_bucket::RateLimitLayer<
                St,
                K,
                palisade_token_bucket::key::OneToken,
                palisade_token_bucket::http::TooManyRequests,
            >,
            L,
        >,
    > {
        self.layer(palisade_token_bucket::RateLimitLayer::new_for_http(
            store, bucket, key,
        ))
    }

    #[cfg(all(feature = "rate-limit", feature = "grpc"))]
    fn rate_limit_for_grpc<St: palisade_token_bucket::Store, K>(
        self,
        store: St,
        bucket: palisade_token_bucket::Bucket,
        key: K,
    ) -> ServiceBuilder<
        Stack<
            palisade_token_bucket::RateLimitLayer<
                St,
                K,
                palisade_token_bucket::key::OneToken,
                palisade_token_bucket::grpc::ResourceExhausted,
            >,
            L,
        >,
    > {
        self.layer(palisade_token_bucket::RateLimitLayer::new_for_grpc(
            store, bucket, key,
        ))
    }

    #[cfg(feature = "tracecontext")]
    fn propagate_trace(self) -> ServiceBuilder<Stack<palisade_tracecontext::PropagateLayer, L>> {
        self.layer(palisade_tracecontext::PropagateLayer::new())
    }

    #[cfg(feature = "tracecontext")]
    fn trace_context(self) -> ServiceBuilder<Stack<palisade_tracecontext::TraceContextLayer, L>> {
        self.layer(palisade_tracecontext::TraceContextLayer::new())
    }

    #[cfg(feature = "slo")]
    fn error_budget(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<Stack<palisade_slo::SloLayer, L>> {
        self.layer(palisade_slo::SloLayer::new(budget))
    }

    #[cfg(all(feature = "slo", feature = "http"))]
    fn error_budget_for_http(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<
        Stack<
            palisade_slo::SloLayer<
                palisade_slo::ServerErrorsAreBad,
                palisade_slo::ServiceUnavailable,
                palisade_slo::ShedNothing,
            >,
            L,
        >,
    > {
        self.layer(palisade_slo::SloLayer::new_for_http(budget))
    }

    #[cfg(all(feature = "slo", feature = "grpc"))]
    fn error_budget_for_grpc(
        self,
        budget: palisade_slo::ErrorBudget,
    ) -> ServiceBuilder<
        Stack<
            palisade_slo::SloLayer<
                palisade_slo::GrpcStatus,
                palisade_slo::Unavailable,
                palisade_slo::ShedNothing,
            >,
            L,
        >,
    > {
        self.layer(palisade_slo::SloLayer::new_for_grpc(budget))
    }

    #[cfg(all(feature = "coalesce", feature = "http"))]
    fn coalesce<R: palisade_coalesce::http::ResponseCache>(
        self,
        cache: R,
    ) -> ServiceBuilder<
        Stack<palisade_coalesce::http::CoalesceLayer<R, palisade_coalesce::http::BadGateway>, L>,
    > {
        self.layer(palisade_coalesce::http::CoalesceLayer::new(cache).answer_failures())
    }
}

mod sealed {
    /// Only `tower::ServiceBuilder` has the extension's methods.
    pub trait Sealed<L> {}

    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}
