//! The live dashboard in a real browser: headless Chromium (Debian's
//! `chromium-headless-shell`, or `chromium`; `scripts/services` installs
//! the first when neither is there) loads `/dashboard` from the admin
//! address of an embedded system under load, runs its script, and the test
//! reads what the page drew: the numbers move as sagas end, and the
//! breaker shows `open` while the card processor is down.

use std::path::PathBuf;
use std::time::Duration;

use palisade_order_system::books::read_books;
use palisade_order_system::db::Statements;
use palisade_order_system::embedded::System;
use palisade_order_system::load;
use palisade_order_system::service::SagaService;

mod support;
use support::{load_settings, start};

/// The headless browser on `PATH`.
fn browser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium-headless-shell", "chromium"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .expect("a headless Chromium on PATH (run scripts/services, which installs it)")
}

/// What the page shows once its script has read `/metrics` a few times:
/// the text of the element with each id, and how many readings it drew.
struct Page {
    dom: String,
}

impl Page {
    async fn load(system: &System) -> Self {
        let url = format!("http://{}/dashboard", system.admin_address);
        let output = tokio::process::Command::new(browser())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                // Runs the page's timers (it asks for new readings every
                // second) for three seconds of its time before the DOM is
                // dumped.
                "--virtual-time-budget=3000",
                "--dump-dom",
                &url,
            ])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(120), output)
            .await
            .expect("Chromium answered")
            .expect("Chromium ran");
        assert!(output.status.success(), "{output:?}");
        Self {
            dom: String::from_utf8(output.stdout).unwrap(),
        }
    }

    /// The text of the element `id`.
    fn text(&self, id: &str) -> &str {
        let at = self
            .dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in:\n{}", self.dom));
        let rest = &self.dom[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest[start..].find('<').unwrap();
        &rest[start..start + end]
    }

    fn number(&self, id: &str) -> u64 {
        let text = self.text(id);
        text.parse()
            .unwrap_or_else(|_| panic!("#{id} shows {text:?}, not a number"))
    }

    /// How many readings of `/metrics` the page drew: none while its
    /// first fetch is still out.
    fn readings(&self) -> u64 {
        let Some(at) = self.dom.find("data-readings=\"") else {
            return 0;
        };
        let rest = &self.dom[at + 15..];
        let end = rest.find('"').unwrap();
        rest[..end].parse().unwrap()
    }
}

/// Loads the page until it has drawn a reading and shows what `shows` looks
/// for: the server reads the metrics once a second, so a change shows within
/// a reading or two.
async fn page_showing(system: &System, shows: impl Fn(&Page) -> bool) -> Page {
    for _ in 0..60 {
        let page = Page::load(system).await;
        if page.readings() >= 1 && shows(&page) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the page never showed it: {}", Page::load(system).await.dom);
}

/// Waits until the books say the breaker is (or is not) open.
async fn breaker_open(system: &System, open: bool) {
    for _ in 0..600 {
        let books = read_books(&system.services).await;
        if books.breaker_state.contains("Open") == open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the breaker never became {}",
        if open { "open" } else { "closed" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_sagas_ending_and_the_breaker_opening() {
    let (system, dir) = start().await;
    let summary = load::run(&load_settings(&system, 40, 8)).await.unwrap();
    assert_eq!(summary.unfinished, 0);

    // The first request starts the readings; the page draws the first.
    let before = page_showing(&system, |_| true).await;
    assert_eq!(before.number("sagas-ended"), 40);
    assert_eq!(before.text("breaker-state"), "closed");
    let latency = before.text("latency");
    assert!(
        latency.ends_with(" ms") && !latency.contains('–'),
        "{latency}"
    );

    // The processor goes down while orders keep coming: payment's breaker
    // opens, and the page says so.
    let processor = system.services.processor.as_ref().unwrap();
    processor.faults().set_unavailable(true);
    let more = {
        let settings = load_settings(&system, 40, 8);
        tokio::spawn(async move { load::run(&settings).await.unwrap() })
    };
    breaker_open(&system, true).await;
    let outage = page_showing(&system, |page| page.text("breaker-state") == "open").await;
    assert!(outage.number("breaker-opens") >= 1);
    assert!(outage.readings() > before.readings(), "it kept reading");

    // Back up: every order ends, the next orders' payments close the
    // breaker again, and the numbers have moved on.
    processor.faults().set_unavailable(false);
    assert_eq!(more.await.unwrap().unfinished, 0);
    assert_eq!(
        load::run(&load_settings(&system, 10, 8))
            .await
            .unwrap()
            .unfinished,
        0
    );
    breaker_open(&system, false).await;
    let after = page_showing(&system, |page| page.number("sagas-ended") == 90).await;
    assert_eq!(after.text("breaker-state"), "closed");
    assert!(after.dom.contains("data-state=\"closed\""));
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// While payment's books cannot be read, `/metrics` leaves the breaker's
/// figures out, and the page says it does not know: it drew the breaker
/// closed, never opened, from their absence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_breaker_unknown_while_payments_books_are_unread() {
    let (system, dir) = start().await;
    let steps = system.services.steps.as_ref().unwrap();
    Statements::close(SagaService::db(&steps.payment)).await;
    let page = page_showing(&system, |_| true).await;
    assert_eq!(page.text("breaker-state"), "unknown");
    assert_eq!(page.text("breaker-opens"), "–");
    assert_eq!(page.number("sagas-ended"), 0, "the orders' books are read");
    system.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
