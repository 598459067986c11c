//! An error budget under arbitrary objectives and call sequences: a bad
//! objective is a `ConfigError`, never a panic; a good one counts every
//! call it still spans, and reports finite, non-negative burn rates.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use palisade_slo::{BurnAlert, ErrorBudget, Objective, Severity};

fuzz_target!(|input: (u16, u32, Vec<(u8, u32, u32)>, Vec<(bool, u32)>)| {
    let (target, window_s, alerts, calls) = input;
    let target = f64::from(target) / f64::from(u16::MAX);
    let alerts = alerts.into_iter().take(4).map(|(factor, long_s, short_s)| {
        BurnAlert::new(
            if factor % 2 == 0 {
                Severity::Page
            } else {
                Severity::Ticket
            },
            f64::from(factor) / 4.0,
            Duration::from_secs(u64::from(long_s)),
            Duration::from_secs(u64::from(short_s)),
        )
    });
    let objective = Objective::new(target)
        .over(Duration::from_secs(u64::from(window_s)))
        .alerts(alerts);
    let Ok(budget) = ErrorBudget::new(objective) else {
        return;
    };
    let window = budget.objective().window();
    let mut now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut recorded: Vec<(SystemTime, bool)> = Vec::new();
    for (good, advance_ms) in calls.into_iter().take(500) {
        now += Duration::from_millis(u64::from(advance_ms % 600_000));
        budget.record(good, now);
        recorded.push((now, good));
    }
    let report = budget.report(now);
    let counted = report.counts();
    // Every call within the window but its oldest bucket is counted, and
    // nothing older than the window.
    let total = recorded.len() as u64;
    assert!(counted.total() <= total);
    let within = recorded
        .iter()
        .filter(|(at, _)| now.duration_since(*at).unwrap_or_default() < window / 2)
        .count() as u64;
    assert!(
        counted.total() >= within,
        "{counted:?}, {within} within half the window"
    );
    assert!(report.budget_remaining().is_finite());
    assert!(report.budget_remaining() <= 1.0);
    for burn in report.burns() {
        assert!(burn.long().is_finite() && burn.long() >= 0.0);
        assert!(burn.short().is_finite() && burn.short() >= 0.0);
    }
});
