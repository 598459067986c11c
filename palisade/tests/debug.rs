//! Layers built with closures (keys, classifiers, judges) still print
//! with `{:?}`: a user's config struct that derives `Debug` holds them.
#![cfg(all(
    feature = "breaker",
    feature = "rate-limit",
    feature = "retry",
    feature = "slo",
    feature = "traffic"
))]

use palisade::circuit_breaker::{
    CircuitBreakerLayer, Config as BreakerConfig, KeyedCircuitBreakerLayer, Outcome,
};
use palisade::rate_limit::{Bucket, LocalStore, RateLimitLayer};
use palisade::retry::{Config as RetryConfig, RetryLayer, Verdict};
use palisade::slo::{ErrorBudget, Event, KeyedBudgets, Objective, SloLayer};
use palisade::traffic::{Canary, CanaryPlan, CanarySplit, CellRouter, Cells};
use tower::{BoxError, Layer, service_fn};

/// Formats `value`: this test compiles only if each layer is `Debug`.
fn printed(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

#[test]
fn layers_built_with_closures_print() {
    let breaker = CircuitBreakerLayer::new(BreakerConfig::default()).classify(
        |result: &Result<u32, BoxError>| {
            if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        },
    );
    assert!(printed(&breaker).starts_with("CircuitBreakerLayer"));

    let limit = RateLimitLayer::new(
        LocalStore::new(1_000),
        Bucket::new(10, 10.0).unwrap(),
        |user: &u64| Some(user.to_string()),
    );
    assert!(printed(&limit).starts_with("RateLimitLayer"));

    let retry =
        RetryLayer::new(RetryConfig::default()).classify(|result: &Result<u32, BoxError>| {
            if result.is_ok() {
                Verdict::Return
            } else {
                Verdict::Retry
            }
        });
    let shown = printed(&retry);
    assert!(
        shown.starts_with("RetryLayer") && shown.contains("config") && shown.contains("budget"),
        "{shown}"
    );

    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    let slo = SloLayer::new(budget).classify(|_: &Result<u32, BoxError>| Event::Good);
    assert!(printed(&slo).starts_with("SloLayer"));
    let budgets = KeyedBudgets::new(Objective::new(0.99), 10).unwrap();
    let acme = budgets.budget("acme");
    acme.record(true, acme.now());
    let keyed = SloLayer::keyed(budgets, |user: &u64| Some(user.to_string()));
    let shown = printed(&keyed);
    assert!(shown.starts_with("SloLayer"), "{shown}");
    assert!(
        !shown.contains("acme") && shown.len() < 1_000,
        "no tenant's key, nor thousands of buckets: {shown}"
    );

    let side = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let split = CanarySplit::new(
        side,
        side,
        Canary::new(CanaryPlan::new()).unwrap(),
        |user: &u64| Some(*user),
    )
    .failures(|result: &Result<u64, BoxError>| result.is_err());
    assert!(printed(&split).starts_with("CanarySplit"));

    let cells = Cells::new([("a", side), ("b", side)]).unwrap();
    let router = CellRouter::new(cells, |user: &u64| Some(*user));
    assert!(printed(&router).starts_with("CellRouter"));

    let keyed_breaker = KeyedCircuitBreakerLayer::new(BreakerConfig::default(), |user: &u64| *user)
        .classify(|result: &Result<u64, BoxError>| {
            if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        });
    assert!(printed(&keyed_breaker).starts_with("KeyedCircuitBreakerLayer"));
}

/// The services the layers make, over a service that prints, print too.
#[test]
fn services_built_with_closures_print() {
    #[derive(Debug, Clone)]
    struct Echo;

    impl tower::Service<u32> for Echo {
        type Response = u32;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u32, BoxError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            std::future::ready(Ok(n))
        }
    }

    let breaker = CircuitBreakerLayer::new(BreakerConfig::default())
        .classify(|_: &Result<u32, BoxError>| Outcome::Success)
        .layer(Echo);
    assert!(printed(&breaker).contains("Echo"));
    let retry = RetryLayer::new(RetryConfig::default())
        .classify(|_: &Result<u32, BoxError>| Verdict::Return)
        .layer(Echo);
    assert!(printed(&retry).contains("Echo"));
    let limit = RateLimitLayer::new(
        LocalStore::new(1_000),
        Bucket::new(10, 10.0).unwrap(),
        |n: &u32| Some(n.to_string()),
    )
    .layer(Echo);
    assert!(printed(&limit).contains("Echo"));
    let slo = SloLayer::new(ErrorBudget::new(Objective::new(0.99)).unwrap())
        .classify(|_: &Result<u32, BoxError>| Event::Good)
        .layer(Echo);
    assert!(printed(&slo).contains("Echo"));
}
