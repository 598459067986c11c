//! OpenTelemetry metrics (feature `otel`).
//!
//! [`ErrorBudget::instrument`] reports, at each collection, what the
//! budget's windows say then:
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `palisade.slo.calls` | gauge | `objective`, `result` (`good`, `bad`): calls over the objective's window |
//! | `palisade.slo.budget_remaining` | gauge (f64) | `objective`: 1 untouched, 0 spent, below 0 overspent |
//! | `palisade.slo.burn_rate` | gauge (f64) | `objective`, `severity`, `factor`, `window` (`5m`, `1h`, …): each alert's burn rate over each of its windows |
//! | `palisade.slo.alert_firing` | gauge | `objective`, `severity`: 1 while an alert of that severity fires |
//!
//! [`KeyedBudgets::instrument`](crate::KeyedBudgets::instrument) reports
//! each key's budget the same way, with a `key` attribute after
//! `objective` (`key="…"`; the budget of the calls with no key, or past
//! the most keys, is `key=""`).

use std::sync::Weak;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableGauge};

use crate::budget::{ErrorBudget, Inner};
use crate::objective::Severity;

/// A budget's gauges, kept while the budget lives.
#[derive(Debug)]
pub(crate) struct Instruments {
    _calls: ObservableGauge<u64>,
    _remaining: ObservableGauge<f64>,
    _burn: ObservableGauge<f64>,
    _firing: ObservableGauge<u64>,
}

/// `window` as operators write it: `5m`, `1h`, `3d`, `90s`.
fn window_label(window: Duration) -> String {
    let seconds = window.as_secs();
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Instruments {
    /// The gauges of `budget`, each point with `base` (the objective's
    /// name, and a keyed budget's key) before its own attributes.
    pub(crate) fn new(meter: &Meter, base: &[KeyValue], budget: &Weak<Inner>) -> Self {
        let with =
            |own: &[KeyValue]| -> Vec<KeyValue> { base.iter().chain(own).cloned().collect() };
        // The reader collects on a thread of its own, outside the runtime,
        // where tokio's clock is the real one: the budget's clock is read
        // in the runtime the budget was instrumented in (paused, in tests).
        let runtime = tokio::runtime::Handle::try_current().ok();
        let report = {
            let budget = budget.clone();
            move || {
                let budget = ErrorBudget::from_inner(budget.upgrade()?);
                let _clock = runtime.as_ref().map(tokio::runtime::Handle::enter);
                Some(budget.report(budget.now()))
            }
        };
        let calls = {
            let report = report.clone();
            let result = |value: &'static str| with(&[KeyValue::new("result", value)]);
            let (good, bad) = (result("good"), result("bad"));
            meter
                .u64_observable_gauge("palisade.slo.calls")
                .with_description("Calls over the objective's window, good and bad")
                .with_callback(move |observer| {
                    if let Some(report) = report() {
                        observer.observe(report.counts().good, &good);
                        observer.observe(report.counts().bad, &bad);
                    }
                })
                .build()
        };
        let remaining = {
            let report = report.clone();
            let attributes = with(&[]);
            meter
                .f64_observable_gauge("palisade.slo.budget_remaining")
                .with_description("The share of the error budget left over the objective's window")
                .with_callback(move |observer| {
                    if let Some(report) = report() {
                        observer.observe(report.budget_remaining(), &attributes);
                    }
                })
                .build()
        };
        let burn = {
            let report = report.clone();
            let base = with(&[]);
            meter
                .f64_observable_gauge("palisade.slo.burn_rate")
                .with_description("Each burn-rate alert's rate over its long and short windows")
                .with_callback(move |observer| {
                    let Some(report) = report() else { return };
                    for burn in report.burns() {
                        let alert = burn.alert();
                        for (window, rate) in [
                            (alert.long_window(), burn.long()),
                            (alert.short_window(), burn.short()),
                        ] {
                            let mut attributes = base.clone();
                            attributes.extend([
                                KeyValue::new("severity", alert.severity().as_str()),
                                KeyValue::new("factor", alert.factor().to_string()),
                                KeyValue::new("window", window_label(window)),
                            ]);
                            observer.observe(rate, &attributes);
                        }
                    }
                })
                .build()
        };
        let firing = {
            let severity = |severity: Severity| {
                (
                    severity,
                    with(&[KeyValue::new("severity", severity.as_str())]),
                )
            };
            let severities = [severity(Severity::Ticket), severity(Severity::Page)];
            meter
                .u64_observable_gauge("palisade.slo.alert_firing")
                .with_description("1 while a burn-rate alert of the severity fires")
                .with_callback(move |observer| {
                    let Some(report) = report() else { return };
                    for (severity, attributes) in &severities {
                        let firing = report
                            .burns()
                            .iter()
                            .any(|burn| burn.is_firing() && burn.alert().severity() == *severity);
                        observer.observe(u64::from(firing), attributes);
                    }
                })
                .build()
        };
        Self {
            _calls: calls,
            _remaining: remaining,
            _burn: burn,
            _firing: firing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_labelled_as_operators_write_them() {
        let label = |seconds| window_label(Duration::from_secs(seconds));
        assert_eq!(label(300), "5m");
        assert_eq!(label(3_600), "1h");
        assert_eq!(label(3 * 86_400), "3d");
        assert_eq!(label(90), "90s");
    }
}
