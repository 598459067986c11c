//! `throttled!` lets one event through an interval at each place it is
//! written, or for each throttle it is given, and logs the rest at debug
//! level.

use std::sync::{Arc, Mutex};

/// Log lines, as written.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn lines(&self, level: &str, message: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(level) && line.contains(message))
            .count()
    }
}

fn origin_failed() {
    palisade_hints::throttled!(warn, target: "test", attempt = 1, "origin failed");
}

fn store_failed() {
    palisade_hints::throttled!(error, target: "test", "store failed");
}

/// A layer keeping its own throttle.
struct Layer {
    warnings: palisade_hints::Throttle,
}

impl Layer {
    fn failed(&self, name: &str) {
        palisade_hints::throttled!(warn, by: &self.warnings, target: "test", name, "dependency failed");
    }
}

#[test]
fn each_place_warns_once_an_interval_and_the_rest_go_to_debug() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let layers = ["inventory", "payment"].map(|name| {
        (
            name,
            Layer {
                warnings: palisade_hints::Throttle::new(palisade_hints::Throttle::DEFAULT_INTERVAL),
            },
        )
    });
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..100 {
            origin_failed();
            store_failed();
            for (name, layer) in &layers {
                layer.failed(name);
            }
        }
    });
    for (level, message) in [("WARN", "origin failed"), ("ERROR", "store failed")] {
        assert_eq!(logs.lines(level, message), 1, "{message}");
        assert_eq!(logs.lines("DEBUG", message), 99, "{message}");
    }
    for name in ["inventory", "payment"] {
        let message = format!("dependency failed name=\"{name}\"");
        assert_eq!(
            logs.lines("WARN", &message),
            1,
            "each layer its own: {name}"
        );
        assert_eq!(logs.lines("DEBUG", &message), 99, "{name}");
    }
}
