//! OpenTelemetry gauges, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::Duration;

use palisade_slo::{BurnAlert, ErrorBudget, KeyedBudgets, Objective, Severity};
use palisade_testkit::MetricsProbe;

/// A budget of 90 % over an hour, paging on a burn of 5 over ten minutes
/// and one, reported to its probe as `orders`.
fn instrumented() -> (MetricsProbe, ErrorBudget) {
    let probe = MetricsProbe::default();
    let minute = Duration::from_secs(60);
    let budget = ErrorBudget::new(
        Objective::new(0.9)
            .over(60 * minute)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * minute, minute)]),
    )
    .unwrap();
    budget.instrument(&probe.meter(), "orders");
    (probe, budget)
}

/// Counts ten calls now, eight bad, and checks the gauge reports them.
fn eight_bad_and_two_good(budget: &ErrorBudget, probe: &MetricsProbe) {
    for call in 0..10 {
        budget.record(call >= 8, budget.now());
    }
    let mut calls = probe.points("palisade.slo.calls");
    calls.sort();
    assert_eq!(
        calls,
        [
            (vec!["objective=orders".into(), "result=bad".into()], 8),
            (vec!["objective=orders".into(), "result=good".into()], 2),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_its_burn_and_its_alerts_are_reported() {
    let (probe, budget) = instrumented();
    eight_bad_and_two_good(&budget, &probe);
    let remaining = probe.points_f64("palisade.slo.budget_remaining");
    assert_eq!(remaining.len(), 1);
    assert!(
        (remaining[0].1 - (1.0 - 0.8 / 0.1)).abs() < 1e-9,
        "{remaining:?}"
    );
    let burn = probe.points_f64("palisade.slo.burn_rate");
    for window in ["window=10m", "window=1m"] {
        let rate = burn
            .iter()
            .find(|(attributes, _)| attributes.iter().any(|a| a == window))
            .map(|(_, rate)| *rate);
        assert!(
            rate.is_some_and(|rate| (rate - 8.0).abs() < 1e-9),
            "{burn:?}"
        );
    }
    let firing = probe.points("palisade.slo.alert_firing");
    assert!(
        firing.contains(&(vec!["objective=orders".into(), "severity=page".into()], 1)),
        "{firing:?}"
    );
    assert!(
        firing.contains(&(vec!["objective=orders".into(), "severity=ticket".into()], 0)),
        "{firing:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_keys_budget_is_reported_under_its_key() {
    let probe = MetricsProbe::default();
    let budgets = KeyedBudgets::new(Objective::new(0.99), 1).unwrap();
    let acme = budgets.budget("acme");
    budgets.instrument(&probe.meter(), "reports");
    acme.record(false, acme.now());
    // Past the most keys: the others' budget, `key=""`.
    let globex = budgets.budget("globex");
    globex.record(true, globex.now());
    let mut calls = probe.points("palisade.slo.calls");
    calls.sort();
    let point = |key: &str, result: &str, calls: u64| {
        (
            // The SDK sorts the attributes by name.
            vec![
                format!("key={key}"),
                "objective=reports".to_owned(),
                format!("result={result}"),
            ],
            calls,
        )
    };
    assert_eq!(
        calls,
        [
            point("", "bad", 0),
            point("", "good", 1),
            point("acme", "bad", 1),
            point("acme", "good", 0),
        ]
    );
}

/// The gauges read the budget's clock as its calls are counted: paused
/// and two hours on, the calls just counted are reported (the exporter's
/// thread read the real clock, two hours behind them, and reported none).
#[tokio::test(start_paused = true)]
async fn the_gauges_read_the_clock_the_calls_are_counted_by() {
    let (probe, budget) = instrumented();
    tokio::time::advance(Duration::from_secs(2 * 3_600)).await;
    eight_bad_and_two_good(&budget, &probe);
}
