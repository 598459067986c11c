//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::budget::ErrorBudget;
use crate::classify::{Classify, Event};
use crate::error::Shed;
use crate::respond::Respond;

pin_project! {
    /// Response future of [`Slo`](crate::Slo): counts the call into the
    /// budget when it ends, as bad when it panics (or, dropped unfinished,
    /// when it had already run past the objective's latency threshold).
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
            call: Option<Call<C>>,
            respond: R,
        },
        Shed {
            shed: Option<Shed>,
            respond: R,
        },
    }
}

/// A call under way: counted when dropped, as `event` says by then.
#[derive(Debug)]
struct Call<C> {
    budget: ErrorBudget,
    classifier: C,
    /// When it started, if the objective has a latency threshold.
    started: Option<Instant>,
    /// How the call ended; `None` while it has not.
    event: Option<Event>,
    /// Set while the inner future is polled: still set when the call is
    /// dropped, it panicked.
    polling: bool,
}

impl<C> Drop for Call<C> {
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
            // Unwound out of the inner future: it panicked, a failure to
            // its caller (a catch-panic layer's 500).
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
                call: Some(Call {
                    budget,
                    classifier,
                    started,
                    event: None,
                    polling: false,
                }),
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
    C: Classify<T, E>,
    R: Respond<T, E>,
{
    type Output = Result<T, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Projection::Called {
                inner,
                call,
                respond,
            } => {
                if let Some(call) = call.as_mut() {
                    call.polling = true;
                }
                let polled = inner.poll(cx);
                if let Some(call) = call.as_mut() {
                    call.polling = false;
                }
                let result = ready!(polled);
                if let Some(mut call) = call.take() {
                    call.event = Some(call.classifier.classify(&result));
                }
                Poll::Ready(result.map_err(|error| respond.error(error)))
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
