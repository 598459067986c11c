//! How far a load run is, on standard error: a bar with the rate and the
//! time left on a terminal, a line every tenth of the orders elsewhere (a
//! log, a CI job), or nothing.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// How a load run shows its progress on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    Hidden,
    /// A bar redrawn in place, with the orders ended, their rate and the
    /// time left.
    Bar,
    /// A line each time another tenth of the orders has ended, with the
    /// same figures.
    Lines,
}

impl Progress {
    /// [`Bar`](Self::Bar) when standard error is a terminal, else
    /// [`Lines`](Self::Lines).
    #[must_use]
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }

    /// Starts counting `total` orders.
    pub(super) fn start(self, total: usize) -> Meter {
        let total = total.max(1);
        match self {
            Self::Hidden => Meter::Hidden,
            Self::Bar => {
                let bar = ProgressBar::new(total as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "orders {pos}/{len} [{bar:40}] {percent}%  {rate}  {elapsed} elapsed, about {eta} left",
                    )
                    .expect("the template is valid")
                    .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
                        let _ = write!(out, "{:.0}/s", state.per_sec());
                    })
                    .progress_chars("=> "),
                );
                Meter::Bar(bar)
            }
            Self::Lines => Meter::Lines(Arc::new(Lines {
                ended: AtomicUsize::new(0),
                total,
                started: Instant::now(),
            })),
        }
    }
}

/// A run's count of ended orders, shared by its workers.
#[derive(Debug, Clone)]
pub(super) enum Meter {
    Hidden,
    Bar(ProgressBar),
    Lines(Arc<Lines>),
}

#[derive(Debug)]
pub(super) struct Lines {
    ended: AtomicUsize,
    total: usize,
    started: Instant,
}

impl Meter {
    /// One more order ended.
    pub(super) fn ended(&self) {
        match self {
            Self::Hidden => {}
            Self::Bar(bar) => bar.inc(1),
            Self::Lines(lines) => {
                let ended = lines.ended.fetch_add(1, Ordering::Relaxed) + 1;
                let tenth = lines.total.div_ceil(10);
                if ended % tenth == 0 || ended == lines.total {
                    eprintln!("{}", lines.line(ended));
                }
            }
        }
    }

    /// Every order ended: the bar stays on the screen with its last
    /// figures, and what follows starts on a line of its own.
    pub(super) fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish();
            if !bar.is_hidden() {
                eprintln!();
            }
        }
    }
}

impl Lines {
    /// `orders 3000/10000 (30%), 412/s, 7.3 s elapsed, about 17.0 s left`.
    fn line(&self, ended: usize) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = ended as f64 / elapsed.max(f64::EPSILON);
        let left = self.total.saturating_sub(ended) as f64 / rate.max(f64::EPSILON);
        format!(
            "orders {ended}/{} ({}%), {rate:.0}/s, {elapsed:.1} s elapsed, about {left:.1} s left",
            self.total,
            ended * 100 / self.total,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_many_ended_of_how_many() {
        let lines = Lines {
            ended: AtomicUsize::new(0),
            total: 10_000,
            started: Instant::now(),
        };
        let line = lines.line(3_000);
        assert!(line.starts_with("orders 3000/10000 (30%), "), "{line}");
        assert!(line.ends_with(" s left"), "{line}");
    }
}
