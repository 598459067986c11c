//! The gateway's objectives on `/metrics`: a card processor outage leaves
//! sagas pending, which burns the sagas' error budget until its alert
//! fires; once the processor is back and sagas end in time again, the
//! alert clears.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use palisade_order_system::embedded::System;
use palisade_slo::{BurnAlert, Objective, Severity};

mod support;
use support::{admin, place, place_and_wait, set_processor, signed_in};

/// Whether `/metrics` says the sagas' page alert fires.
async fn sagas_page_fires(system: &System) -> bool {
    let (status, text) = admin(system)
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await
        .unwrap();
    assert!(status.is_success());
    let text = String::from_utf8(text.to_vec()).unwrap();
    let series = "palisade_slo_alert_firing{objective=\"sagas\",severity=\"page\"} ";
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .unwrap_or_else(|| panic!("{series} in {text}"));
    value.trim() == "1"
}

/// A system whose sagas objective judges a saga late after a second, and
/// pages at twice the sustainable burn over a minute, confirmed over ten
/// seconds: short windows, so a test sees the alert fire and clear.
async fn started() -> (System, std::path::PathBuf) {
    let (mut settings, dir) = support::settings();
    settings.objectives.sagas = Objective::new(0.99).alerts([BurnAlert::new(
        Severity::Page,
        2.0,
        Duration::from_secs(60),
        Duration::from_secs(10),
    )]);
    settings.objectives.saga_within = Duration::from_secs(1);
    (System::start(settings).await.unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_outage_fires_the_sagas_alert_which_clears_after() {
    let (system, dir) = started().await;
    let operator = signed_in(&system, "operator").await;
    let alice = signed_in(&system, "alice").await;
    assert!(!sagas_page_fires(&system).await);

    set_processor(&operator, serde_json::json!({ "unavailable": true })).await;
    for _ in 0..3 {
        let status = place_and_wait(&alice, Duration::from_secs(1)).await;
        assert_eq!(status, "pending", "payment waits the outage out");
    }
    assert!(sagas_page_fires(&system).await, "three sagas late of three");

    set_processor(&operator, serde_json::json!({ "unavailable": false })).await;
    // Sagas end in time again; once the short window holds only them, the
    // alert clears.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sagas_page_fires(&system).await {
        assert!(Instant::now() < deadline, "the alert never cleared");
        place_and_wait(&alice, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits their clients give up on, in an outage, past the time a saga may
/// take: the late sagas are judged so. Their reads never answered, so the
/// objective counted nothing, and the page never fired for clients whose
/// timeouts are shorter than their `wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_given_up_on_late_sagas_fire_the_sagas_alert() {
    let (system, dir) = started().await;
    let operator = signed_in(&system, "operator").await;
    let alice = signed_in(&system, "alice").await;
    let orders = system.services.orders.clone();
    set_processor(&operator, serde_json::json!({ "unavailable": true })).await;
    for _ in 0..3 {
        let path = format!("/orders/{}?wait_ms=30000", place(&alice).await);
        let alice = alice.clone();
        let wait =
            tokio::spawn(async move { alice.send(Method::GET, &path, &[], Bytes::new()).await });
        let deadline = Instant::now() + Duration::from_secs(30);
        while orders.waiting() == 0 {
            assert!(Instant::now() < deadline, "the read never waited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Past the second a saga may take, the client gives up.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        wait.abort();
        while orders.waiting() > 0 {
            assert!(Instant::now() < deadline, "the given-up wait stayed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sagas_page_fires(&system).await {
        assert!(
            Instant::now() < deadline,
            "three sagas late of three, unjudged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    set_processor(&operator, serde_json::json!({ "unavailable": false })).await;
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
