//! Layers built with closures (keys, classifiers, judges) still print
//! with `{:?}`: a user's config struct that derives `Debug` holds them.
#![cfg(all(
    feature = "breaker",
    feature = "rate-limit",
    feature = "retry",
    feature = "slo",
    feature = "traffic"
))]

use palisade::circuit_breaker::{CircuitBreakerLayer, Config as BreakerConfig, Outcome};
use palisade::rate_limit::{Bucket, LocalStore, RateLimitLayer};
use palisade::retry::{Config as RetryConfig, RetryLayer, Verdict};
use palisade::slo::{ErrorBudget, Event, KeyedBudgets, Objective, SloLayer};
use palisade::traffic::{Canary, CanaryPlan, CanarySplit};
use tower::{BoxError, service_fn};

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
    assert!(printed(&retry).starts_with("RetryLayer"));

    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    let slo = SloLayer::new(budget).classify(|_: &Result<u32, BoxError>| Event::Good);
    assert!(printed(&slo).starts_with("SloLayer"));
    let keyed = SloLayer::keyed(
        KeyedBudgets::new(Objective::new(0.99), 10).unwrap(),
        |user: &u64| Some(user.to_string()),
    );
    assert!(printed(&keyed).starts_with("SloLayer"));

    let side = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let split = CanarySplit::new(
        side,
        side,
        Canary::new(CanaryPlan::new()).unwrap(),
        |user: &u64| Some(*user),
    )
    .failures(|result: &Result<u64, BoxError>| result.is_err());
    assert!(printed(&split).starts_with("CanarySplit"));
}
