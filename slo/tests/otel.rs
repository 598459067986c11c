//! OpenTelemetry gauges, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use std::time::Duration;

use palisade_slo::{BurnAlert, ErrorBudget, Objective, Severity};
use palisade_testkit::MetricsProbe;

#[tokio::test(start_paused = true)]
async fn the_budget_its_burn_and_its_alerts_are_reported() {
    let probe = MetricsProbe::default();
    let minute = Duration::from_secs(60);
    let budget = ErrorBudget::new(
        Objective::new(0.9)
            .over(60 * minute)
            .alerts([BurnAlert::new(Severity::Page, 5.0, 10 * minute, minute)]),
    )
    .unwrap();
    budget.instrument(&probe.meter(), "orders");
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
