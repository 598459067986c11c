//! OpenTelemetry metrics, read back through the SDK's in-memory exporter.
#![cfg(feature = "otel")]

use palisade_testkit::MetricsProbe;
use palisade_traffic::{Canary, CanaryPlan, CanarySplit, CellRouter, Cells};
use tower::{BoxError, ServiceExt, service_fn};

#[tokio::test]
async fn the_canarys_calls_decisions_and_share_are_counted() {
    let probe = MetricsProbe::default();
    let canary = Canary::new(CanaryPlan::new().steps([0.5, 1.0])).unwrap();
    canary.instrument(&probe.meter(), "checkout-v2");
    let ok = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let split = CanarySplit::new(ok, ok, canary.clone(), |user: &u64| Some(*user));
    for user in 0..100 {
        split.clone().oneshot(user).await.unwrap();
    }
    canary.promote().unwrap();
    canary.halt();
    let calls = probe.points("palisade.traffic.canary_calls");
    let total: u64 = calls.iter().map(|(_, count)| count).sum();
    assert_eq!(total, 100, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|(attributes, _)| attributes.contains(&"result=ok".to_owned()))
    );
    let decisions = probe.points("palisade.traffic.canary_decisions");
    assert!(decisions.contains(&(
        vec!["canary=checkout-v2".into(), "decision=promoted".into()],
        1
    )));
    assert!(decisions.contains(&(
        vec![
            "canary=checkout-v2".into(),
            "decision=halted".into(),
            "reason=operator".into()
        ],
        1
    )));
    assert_eq!(
        probe.points_f64("palisade.traffic.canary_share"),
        [(vec!["canary=checkout-v2".to_owned()], 0.0)]
    );
}

#[tokio::test]
async fn each_cells_requests_under_way_are_reported() {
    let probe = MetricsProbe::default();
    let ok = service_fn(|user: u64| async move { Ok::<_, BoxError>(user) });
    let cells = Cells::new([("a", ok), ("b", ok)]).unwrap();
    cells.instrument(&probe.meter(), "orders");
    CellRouter::new(cells.clone(), |user: &u64| Some(*user))
        .oneshot(1)
        .await
        .unwrap();
    let mut in_flight = probe.points("palisade.traffic.cell_in_flight");
    in_flight.sort();
    assert_eq!(
        in_flight,
        [
            (vec!["cell=a".to_owned(), "router=orders".into()], 0),
            (vec!["cell=b".to_owned(), "router=orders".into()], 0)
        ]
    );
}
