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
    let failing = service_fn(|_: u64| async move { Err::<u64, BoxError>("down".into()) });
    let split = CanarySplit::new(ok, failing, canary.clone(), |user: &u64| Some(*user));
    let mut answered = [0, 0];
    for user in 0..100 {
        answered[usize::from(split.clone().oneshot(user).await.is_err())] += 1;
    }
    canary.promote().unwrap();
    canary.halt();
    let calls = probe.points("palisade.traffic.canary_calls");
    let counted = |side: &str, result: &str| {
        let attributes = [
            "canary=checkout-v2".to_owned(),
            format!("result={result}"),
            format!("side={side}"),
        ];
        calls
            .iter()
            .filter(|(named, _)| attributes.iter().all(|a| named.contains(a)))
            .map(|(_, count)| count)
            .sum::<u64>()
    };
    // Each side's calls under its own side and result: the stable's all
    // answered, the canary's all failed.
    assert_eq!(counted("stable", "ok"), answered[0], "{calls:?}");
    assert_eq!(counted("canary", "failure"), answered[1], "{calls:?}");
    assert!(answered[0] > 0 && answered[1] > 0, "{answered:?}");
    assert_eq!(counted("stable", "failure") + counted("canary", "ok"), 0);
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
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = {
        let gate = gate.clone();
        service_fn(move |user: u64| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, BoxError>(user)
            }
        })
    };
    let cells = Cells::new([("a", held.clone()), ("b", held)]).unwrap();
    cells.instrument(&probe.meter(), "orders");
    let router = CellRouter::new(cells.clone(), |user: &u64| Some(*user));
    let call = tokio::spawn(router.oneshot(1));
    // The request under way is reported, in its cell alone.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let in_flight = probe.points("palisade.traffic.cell_in_flight");
        let counts: Vec<u64> = in_flight.iter().map(|(_, count)| *count).collect();
        if counts.iter().sum::<u64>() == 1 {
            assert!(counts.contains(&0), "one cell idle: {in_flight:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported: {in_flight:?}"
        );
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    call.await.unwrap().unwrap();
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
