//! OpenTelemetry counters, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::Duration;

use palisade_hints::Refusal;
use palisade_retry::{Backoff, Budget, Config, RetryLayer};
use palisade_testkit::MetricsProbe;
use tower::{BoxError, Layer, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn attempts_retries_exhaustions_and_give_ups_are_counted() {
    let probe = MetricsProbe::default();
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(Budget::new(0.0).min_per_second(2).max_banked(0))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config).instrument(&probe.meter(), "inventory");
    let failing = layer.layer(service_fn(|open: bool| async move {
        if open {
            Err::<(), BoxError>(Box::new(Refusal::circuit_open(None)))
        } else {
            Err("reset".into())
        }
    }));
    // Three attempts, two retries from the floor, then out of attempts.
    failing.clone().oneshot(false).await.unwrap_err();
    // The floor is spent: one attempt, then the budget refuses.
    failing.clone().oneshot(false).await.unwrap_err();
    // An open circuit: one attempt, returned at once, no give-up counted.
    failing.oneshot(true).await.unwrap_err();

    let client = || vec!["client=inventory".to_owned()];
    assert_eq!(probe.points("palisade.retry.attempts"), [(client(), 5)]);
    assert_eq!(probe.points("palisade.retry.retries"), [(client(), 2)]);
    assert_eq!(
        probe.points("palisade.retry.budget_exhausted"),
        [(client(), 1)]
    );
    let mut give_ups = probe.points("palisade.retry.give_ups");
    give_ups.sort();
    let reason = |r: &str| vec!["client=inventory".to_owned(), format!("reason={r}")];
    assert_eq!(give_ups, [(reason("attempts"), 1), (reason("budget"), 1)]);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_the_deadline_is_a_give_up_for_the_deadline() {
    let probe = MetricsProbe::default();
    let config = Config::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config).instrument(&probe.meter(), "payment");
    // The first attempt fails at once; the second never answers.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let hanging = layer.layer(service_fn(move |(): ()| {
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            if call == 0 {
                return Err::<(), BoxError>("reset".into());
            }
            std::future::pending().await
        }
    }));
    deadline_exceeded_once(hanging.oneshot(()).await, &probe);
}

/// Sends each request once: none is kept to send again.
#[derive(Clone, Copy)]
struct Once;

impl palisade_retry::Replay<()> for Once {
    type Request = ();
    type Saved = ();

    fn prepare(&self, request: ()) -> ((), Option<()>) {
        (request, None)
    }

    fn replay(&self, (): &()) -> Option<()> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_once_and_cut_by_the_deadline_is_a_give_up_for_it_too() {
    let probe = MetricsProbe::default();
    let config = Config::builder()
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config)
        .replay(Once)
        .instrument(&probe.meter(), "payment");
    let hanging = layer.layer(service_fn(|(): ()| {
        std::future::pending::<Result<(), BoxError>>()
    }));
    deadline_exceeded_once(hanging.oneshot(()).await, &probe);
}

/// `answered` is the deadline's error, counted as the one give-up, for
/// the deadline, of client `payment`.
fn deadline_exceeded_once(answered: Result<(), BoxError>, probe: &MetricsProbe) {
    let err = answered.unwrap_err();
    assert!(err.is::<palisade_retry::DeadlineExceeded>(), "{err}");
    let reason = |r: &str| vec!["client=payment".to_owned(), format!("reason={r}")];
    assert_eq!(
        probe.points("palisade.retry.give_ups"),
        [(reason("deadline"), 1)]
    );
}
