//! Card data is never in clear past payment: after a full run of the
//! embedded system, no file of its data directory (SQLite files, their
//! write-ahead logs, the vault's key) and no line the run logged holds a
//! card number that was paid with. A test binary of its own: it installs
//! the process's global log subscriber.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use palisade_order_system::db::Statements;
use palisade_order_system::load;
use palisade_order_system::processor::{DECLINED_CARD, GOOD_CARD};
use palisade_order_system::service::SagaService;

mod support;
use support::{load_settings, start};

/// Where the run's log lines go.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every event of every crate at debug level and above, from now on, as
/// the text `order-system` would print.
fn capture_logs() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    captured
}

fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The card numbers `bytes` hold, of the two the load pays with.
fn card_numbers_in(bytes: &[u8]) -> Vec<&'static str> {
    [GOOD_CARD, DECLINED_CARD]
        .into_iter()
        .filter(|card| bytes.windows(card.len()).any(|at| at == card.as_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_is_stored_or_logged_in_clear_by_a_full_run() {
    let logs = capture_logs();
    let (system, dir) = start().await;
    let orders = 200;
    let summary = load::run(&load_settings(&system, orders, 16))
        .await
        .unwrap();
    println!("{}", summary.table());
    assert_eq!(summary.violations, Vec::<String>::new());
    assert_eq!((summary.placed, summary.unfinished), (orders, 0));
    // The load still pays with both cards: about a fifth declined.
    let declined = summary
        .cancelled
        .get("payment_declined")
        .copied()
        .unwrap_or(0);
    assert!(
        (10..=80).contains(&declined),
        "{declined} of {orders} declined"
    );
    assert!(summary.confirmed > 100, "{summary:?}");

    // What the services kept of the cards: the vault's two rows, and in
    // the orders their tokens and last four digits.
    let kept: Vec<(String, String)> = system
        .services
        .orders
        .db()
        .fetch_all(
            "SELECT DISTINCT card_token, card_last4 FROM orders ORDER BY card_last4",
            &[],
        )
        .await
        .unwrap();
    let last4: Vec<&str> = kept.iter().map(|(_, last4)| last4.as_str()).collect();
    assert_eq!(last4, ["0002", "4242"], "{kept:?}");
    assert!(kept.iter().all(|(token, _)| token.starts_with("card_")));
    let (cards,): (i64,) = system
        .steps
        .payment
        .db()
        .fetch_one("SELECT count(*) FROM cards", &[])
        .await
        .unwrap();
    assert_eq!(cards, 2, "one vault row per card");
    // Its pools held open while the files are read: none closes (and
    // folds its write-ahead log into the database, deleting it) meanwhile.
    let services = system.services.clone();
    system.stop().await;

    // Every byte of every file the run left.
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let names: Vec<String> = files
        .iter()
        .filter_map(|file| file.file_name()?.to_str().map(str::to_owned))
        .collect();
    for expected in [
        "orders.db",
        "payment.db",
        "processor.db",
        "payment-vault.key",
    ] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(
            card_numbers_in(&bytes),
            Vec::<&str>::new(),
            "{} holds a card number in clear",
            file.display()
        );
    }

    drop(services);

    // Every line the run logged.
    let logged = logs
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let text = String::from_utf8_lossy(&logged);
    assert!(
        text.contains("saga step"),
        "the run's debug lines were captured"
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !card_numbers_in(line.as_bytes()).is_empty())
        .collect();
    assert_eq!(lines, Vec::<&str>::new(), "log lines with a card number");
    let _ = std::fs::remove_dir_all(dir);
}
