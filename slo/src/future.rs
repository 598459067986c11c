//! Future types, and the call a classifier counts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::budget::ErrorBudget;
use crate::classify::{Event, Settle};
use crate::error::Shed;
use crate::respond::Respond;

pin_project! {
    /// Response future of [`Slo`](crate::Slo): counts the call into the
    /// budget when it ends (or hands it to the response's body, for a
    /// classifier that decides at the body's end), as bad when it panics
    /// (or, dropped unfinished, when it had already run past the
    /// objective's latency threshold).
    #[derive(Debug)]
    pub struct ResponseFuture<F, C, R> {
        #[pin]
        kind: Kind<F, C, R>,
    }
}

pin_project! {
    #[project = Projection]
    #[derive(Debug)]
    enum Kind<F, C, R> {
        Called {
            #[pin]
            inner: F,
            pending: Option<Pending>,
            classifier: C,
            respond: R,
        },
        Shed {
            shed: Option<Shed>,
            respond: R,
        },
    }
}

/// A call under way, not yet counted: [`count`](Self::count) counts it
/// into its budget, bad whatever the event if it took longer than the
/// objective's latency threshold. A classifier of your own
/// ([`Settle`]) gets one with each result.
///
/// Dropped uncounted, it is counted as an unfinished call is: bad if its
/// service panicked (in its future, or in its response's body) or it had
/// already run past the threshold, not at all otherwise.
#[derive(Debug)]
pub struct Pending {
    budget: ErrorBudget,
    /// When it started, if the objective has a latency threshold.
    started: Option<Instant>,
    /// How the call ended; `None` while it has not.
    event: Option<Event>,
    /// Set while the inner future (or the response's body) is polled:
    /// still set when the call is dropped, it panicked.
    pub(crate) polling: bool,
}

impl Pending {
    /// Counts the call as `event` says (a good one that was too slow is
    /// bad; an excluded one is not counted).
    pub fn count(mut self, event: Event) {
        self.event = Some(event);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let ended = Instant::now();
        let slow = match (self.budget.objective().latency_threshold(), self.started) {
            (Some(threshold), Some(started)) => {
                ended.saturating_duration_since(started) > threshold
            }
            _ => false,
        };
        let good = match self.event {
            Some(Event::Good) => !slow,
            Some(Event::Bad) => false,
            // Unwound out of the inner future, or out of its response's
            // body (where it counts at the body's end): the service
            // panicked, a failure to its caller (a catch-panic layer's 500).
            None if self.polling => false,
            // Dropped unfinished: counted only when it was already too slow.
            None if slow => false,
            Some(Event::Excluded) | None => return,
        };
        self.budget.record_ms(good, self.budget.at(ended));
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) const fn called(
        inner: F,
        budget: ErrorBudget,
        classifier: C,
        respond: R,
        started: Option<Instant>,
    ) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                pending: Some(Pending {
                    budget,
                    started,
                    event: None,
                    polling: false,
                }),
                classifier,
                respond,
            },
        }
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) const fn shed(shed: Shed, respond: R) -> Self {
        Self {
            kind: Kind::Shed {
                shed: Some(shed),
                respond,
            },
        }
    }
}

impl<F, C, R, T, E> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    C: Settle<T, E>,
    R: Respond<C::Response, E>,
{
    type Output = Result<C::Response, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Projection::Called {
                inner,
                pending,
                classifier,
                respond,
            } => {
                let Some(call) = pending.as_mut() else {
                    panic!("ResponseFuture polled after it was ready");
                };
                call.polling = true;
                let polled = inner.poll(cx);
                call.polling = false;
                let result = ready!(polled);
                let call = pending.take().expect("the call under way");
                Poll::Ready(
                    classifier
                        .settle(result, call)
                        .map_err(|error| respond.error(error)),
                )
            }
            Projection::Shed { shed, respond } => Poll::Ready(
                respond.refused(
                    shed.take()
                        .expect("ResponseFuture polled after it was ready"),
                ),
            ),
        }
    }
}
