//! Future types.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_hints::share::{Handle, Shared};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use crate::budget::{RetryBudget, Withdrawal};
use crate::classify::{Classify, Verdict};
use crate::error::DeadlineExceeded;
use crate::events::{Events, GiveUp};
use crate::layer::RetryLayer;
use crate::replay::Replay;

/// Where a deadline too far to hold in an `Instant` is put: about 30 years
/// ahead, as tokio's `sleep` does with a duration it cannot add.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

pin_project! {
    /// The response future of [`Retry`](crate::Retry): the current attempt,
    /// the backoff wait, or the inner service getting ready again.
    ///
    /// `L` is how the service reaches the layer (see
    /// [`Retry`](crate::Retry)); the future keeps what a call holds of it.
    pub struct ResponseFuture<S, C, R, Req, L = Shared<RetryLayer<C, R>>>
    where
        L: Handle,
        R: Replay<Req>,
        S: Service<R::Request>,
    {
        #[pin]
        attempt: Attempt<S::Future, S::Response>,
        // Boxed, as the backoff wait is: a tokio `Sleep` is large, and only
        // a call under a deadline pays for it (and for its total and its
        // attempt's start); every other call's future stays small enough
        // to build and move cheaply.
        deadline: Option<Pin<Box<Deadline>>>,
        retrying: Option<RetryingFor<S, R, Req, L>>,
        classify: PhantomData<fn() -> C>,
    }
}

pin_project! {
    /// A call's deadline: its timer, the total it was set from, when
    /// the current attempt started (the estimate of the next), and where
    /// a give-up for it is reported (a request sent once has no retry
    /// state to report it through).
    pub(crate) struct Deadline {
        #[pin]
        sleep: Sleep,
        total: Duration,
        started: Instant,
        events: Events,
    }
}

pin_project! {
    #[project = AttemptProj]
    enum Attempt<F, T> {
        Calling { #[pin] future: F },
        // The failed attempt's result is kept through the wait and the
        // readiness: it goes back to the caller if the request cannot be
        // made again after all.
        // The wait is boxed: a tokio `Sleep` is large, and only a call that
        // is retried pays for it, not every call's future.
        Waiting { sleep: Pin<Box<Sleep>>, last: Option<Result<T, BoxError>> },
        // `until`: the request's own time (a gRPC caller's), when it has
        // one, so a service that stays unready cannot hold the call past it.
        Readying { last: Option<Result<T, BoxError>>, until: Option<Pin<Box<Sleep>>> },
    }
}

/// [`Retrying`] for the requests `R` keeps, holding the layer as a call
/// holds it.
pub(crate) type RetryingFor<S, R, Req, L> =
    Retrying<S, <L as Handle>::Held, <R as Replay<Req>>::Saved, <R as Replay<Req>>::Request>;

/// What a retryable request keeps between attempts.
///
/// Only what every retryable call needs, so that its future is cheap to
/// build and move: a value written field by field (a `Duration`, a `u32`,
/// an `Option`) and then copied whole, as a future is, waits for each
/// write to land (measured with `perf annotate`). What only a retried call
/// needs is boxed at its first retry, as its backoff wait is.
pub(crate) struct Retrying<S, L, Saved, Request> {
    service: S,
    /// The layer, as the call holds it (see [`Handle`]).
    shared: L,
    saved: Saved,
    retried: Option<Box<Retried<Request>>>,
}

/// How far a retried call has gone.
struct Retried<Request> {
    /// Attempts started.
    attempts: u32,
    previous_delay: Duration,
    /// How long the next attempt is expected to take: as long as the one
    /// before it.
    estimate: Duration,
    /// The next attempt's request, made when the wait is over.
    next: Option<Request>,
    /// The retry the budget gave for the next attempt, until it is made:
    /// given back if it never is.
    unspent: Unspent,
    /// The retry the budget gave for the attempt under way, until its
    /// result is known: given back if a layer below refused it.
    paid: Option<(RetryBudget, Withdrawal)>,
}

/// A retry taken from the budget for an attempt not made yet. Apart from
/// [`Retried`], so that the drop that gives it back puts no bound on the
/// request type.
#[derive(Default)]
struct Unspent(Option<(RetryBudget, Withdrawal)>);

impl Unspent {
    /// Gives the retry back: its attempt will not be made.
    fn give_back(&mut self) {
        if let Some((budget, withdrawal)) = self.0.take() {
            budget.give_back(withdrawal, Instant::now());
        }
    }

    /// The attempt is made: the retry is spent, unless the attempt turns
    /// out refused below (the caller keeps what this returns till then).
    fn spend(&mut self) -> Option<(RetryBudget, Withdrawal)> {
        self.0.take()
    }
}

impl Drop for Unspent {
    // A call dropped in its wait (its caller gone, a timeout above), cut
    // by its deadline before the attempt, or whose service failed to get
    // ready: the retry was not made.
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<S, L, Saved, Request> Retrying<S, L, Saved, Request> {
    pub(crate) const fn new(service: S, shared: L, saved: Saved) -> Self {
        Self {
            service,
            shared,
            saved,
            retried: None,
        }
    }

    /// Attempts started so far.
    fn attempts(&self) -> u32 {
        self.retried.as_ref().map_or(1, |retried| retried.attempts)
    }

    /// The wait before the next attempt, or `None` when `result` goes back
    /// to the caller. The request itself is made after the wait
    /// ([`Self::replay`]).
    fn next_attempt<C, R, Req, Res>(
        &mut self,
        result: &Result<Res, BoxError>,
        deadline: Option<&Deadline>,
    ) -> Option<Duration>
    where
        L: Deref<Target = RetryLayer<C, R>>,
        C: Classify<Res>,
        R: Replay<Req, Saved = Saved, Request = Request>,
    {
        let shared = &*self.shared;
        let verdict = shared.classify.classify(result);
        // The attempt just made: paid for, unless it never reached the
        // dependency.
        if let Some((budget, withdrawal)) = self.retried.as_mut().and_then(|r| r.paid.take())
            && matches!(verdict, Verdict::Refused | Verdict::RetryRefused(_))
        {
            budget.give_back(withdrawal, Instant::now());
        }
        let (hint, refused) = match verdict {
            Verdict::Return | Verdict::Refused => return None,
            Verdict::Retry => (None, false),
            Verdict::RetryAfter(wait) => (Some(wait), false),
            Verdict::RetryRefused(wait) => (Some(wait), true),
        };
        let attempts = self.attempts();
        let previous_delay = self
            .retried
            .as_ref()
            .map_or(Duration::ZERO, |retried| retried.previous_delay);
        let give_up = |reason| {
            shared.events.gave_up(reason, attempts);
            None
        };
        if attempts >= shared.config.max_attempts {
            return give_up(GiveUp::Attempts);
        }
        let backoff = shared.config.backoff;
        let drawn = || backoff.delay(attempts, previous_delay, &mut fastrand::Rng::new());
        let delay = match hint {
            Some(wait) if wait > backoff.cap() => return give_up(GiveUp::HintOverCap),
            // No sooner than asked, and no sooner than the backoff's own
            // draw: a hint of zero (`Retry-After: 0`, a date already past
            // by the server's clock) would send every client back at once.
            Some(wait) => wait.max(drawn()),
            None => drawn(),
        };
        let now = Instant::now();
        // The attempt just finished is the estimate of the next one.
        let estimate = deadline.map_or(Duration::ZERO, |deadline| {
            now.saturating_duration_since(deadline.started)
        });
        if deadline.is_some_and(|deadline| !deadline.leaves(now, delay.saturating_add(estimate))) {
            return give_up(GiveUp::Deadline);
        }
        // The request's own time (a gRPC caller's): the next attempt must
        // start before it is up.
        if shared
            .replay
            .deadline(&self.saved)
            .is_some_and(|end| now.checked_add(delay).is_none_or(|start| start >= end))
        {
            return give_up(GiveUp::Deadline);
        }
        if !shared.replay.can_replay(&self.saved) {
            return give_up(GiveUp::NotReplayable);
        }
        let unspent = match &shared.budget {
            Some(budget) if !refused => match budget.take(now) {
                Some(withdrawal) => Some((budget.clone(), withdrawal)),
                None => return give_up(GiveUp::Budget),
            },
            _ => None,
        };
        let retried = self.retried.get_or_insert_with(|| {
            Box::new(Retried {
                attempts,
                previous_delay,
                estimate,
                next: None,
                unspent: Unspent::default(),
                paid: None,
            })
        });
        retried.previous_delay = delay;
        retried.estimate = estimate;
        debug_assert!(
            retried.unspent.0.is_none(),
            "spent before a new retry is taken"
        );
        retried.unspent = Unspent(unspent);
        shared.events.retrying(attempts + 1, delay);
        Some(delay)
    }

    /// Makes the next attempt's request once the wait is over (an earlier
    /// attempt's transport may have let go of the body meanwhile); `false`
    /// when it cannot be made and the last result goes back to the caller.
    fn replay<C, R, Req>(&mut self) -> bool
    where
        L: Deref<Target = RetryLayer<C, R>>,
        R: Replay<Req, Saved = Saved, Request = Request>,
    {
        let time_is_up = self.time_is_up::<C, R, Req>();
        let shared = &*self.shared;
        let retried = self
            .retried
            .as_mut()
            .expect("a retry was decided before its wait");
        if time_is_up {
            retried.unspent.give_back();
            shared.events.gave_up(GiveUp::Deadline, retried.attempts);
            return false;
        }
        retried.next = shared.replay.replay(&self.saved);
        if retried.next.is_none() {
            retried.unspent.give_back();
            shared
                .events
                .gave_up(GiveUp::NotReplayable, retried.attempts);
        }
        retried.next.is_some()
    }

    /// Whether the request's own time ([`Replay::deadline`]) is up.
    fn time_is_up<C, R, Req>(&self) -> bool
    where
        L: Deref<Target = RetryLayer<C, R>>,
        R: Replay<Req, Saved = Saved, Request = Request>,
    {
        self.own_deadline::<C, R, Req>()
            .is_some_and(|end| Instant::now() >= end)
    }

    /// The request's own deadline ([`Replay::deadline`]), if it has one.
    fn own_deadline<C, R, Req>(&self) -> Option<Instant>
    where
        L: Deref<Target = RetryLayer<C, R>>,
        R: Replay<Req, Saved = Saved, Request = Request>,
    {
        self.shared.replay.deadline(&self.saved)
    }
}

impl<S, C, R, Req, L> ResponseFuture<S, C, R, Req, L>
where
    L: Handle,
    R: Replay<Req>,
    S: Service<R::Request>,
{
    // Always inlined, as `Retry::call` is: the future is then built where
    // the caller keeps it instead of being copied there (measured with
    // callgrind: 213 against 170 instructions a call).
    #[inline(always)]
    pub(crate) const fn new(
        future: S::Future,
        deadline: Option<Pin<Box<Deadline>>>,
        retrying: Option<RetryingFor<S, R, Req, L>>,
    ) -> Self {
        Self {
            attempt: Attempt::Calling { future },
            deadline,
            retrying,
            classify: PhantomData,
        }
    }
}

impl Deadline {
    /// Whether work of `length` starting `now` ends by the deadline. A
    /// server's hint can be as long as it likes: an end past what an
    /// `Instant` holds is past any deadline.
    fn leaves(&self, now: Instant, length: Duration) -> bool {
        now.checked_add(length)
            .is_some_and(|end| end <= self.sleep.deadline())
    }

    /// A deadline `total` from now, its first attempt starting now, its
    /// give-up reported to `events`.
    pub(crate) fn after(total: Duration, events: &Events) -> Pin<Box<Self>> {
        let started = Instant::now();
        // A deadline past what an `Instant` holds is as good as none: it
        // becomes the farthest future tokio's own `sleep` uses.
        let end = started
            .checked_add(total)
            .unwrap_or_else(|| started + FAR_FUTURE);
        Box::pin(Self {
            sleep: tokio::time::sleep_until(end),
            total,
            started,
            events: events.clone(),
        })
    }
}

impl<S, C, R, Req, L> Future for ResponseFuture<S, C, R, Req, L>
where
    L: Handle<Target = RetryLayer<C, R>>,
    R: Replay<Req>,
    S: Service<R::Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.attempt.as_mut().project() {
                AttemptProj::Calling { future } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => {
                            return past_deadline(this.deadline, cx, this.retrying.as_ref());
                        }
                    };
                    let Some(retrying) = this.retrying.as_mut() else {
                        return Poll::Ready(result);
                    };
                    let deadline = this.deadline.as_deref();
                    let Some(delay) = retrying.next_attempt(&result, deadline) else {
                        return Poll::Ready(result);
                    };
                    this.attempt.set(Attempt::Waiting {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                        last: Some(result),
                    });
                }
                AttemptProj::Waiting { sleep, last } => {
                    ready!(sleep.as_mut().poll(cx));
                    let retrying = this
                        .retrying
                        .as_mut()
                        .expect("only a retryable request waits for another attempt");
                    if !retrying.replay() {
                        let last = last.take().expect("kept until the wait is over");
                        return Poll::Ready(last);
                    }
                    let last = last.take();
                    let until = retrying
                        .own_deadline::<C, R, Req>()
                        .map(|end| Box::pin(tokio::time::sleep_until(end)));
                    this.attempt.set(Attempt::Readying { last, until });
                }
                AttemptProj::Readying { last, until } => {
                    let retrying = this
                        .retrying
                        .as_mut()
                        .expect("only a retryable request waits for another attempt");
                    match retrying.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                        Poll::Pending => {
                            let past: Poll<Self::Output> =
                                past_deadline(this.deadline, cx, Some(retrying));
                            let time_up = until
                                .as_mut()
                                .is_some_and(|until| until.as_mut().poll(cx).is_ready());
                            if past.is_pending() && !time_up {
                                return Poll::Pending;
                            }
                            // Reported here when the request's own time
                            // ended the wait (the overall deadline's is
                            // reported as it passes).
                            if time_up
                                && past.is_pending()
                                && let Some(retried) = retrying.retried.as_ref()
                            {
                                retrying
                                    .shared
                                    .events
                                    .gave_up(GiveUp::Deadline, retried.attempts);
                            }
                            // No attempt is under way: the last one's
                            // result is the answer, not the deadline.
                            if let Some(retried) = retrying.retried.as_mut() {
                                retried.unspent.give_back();
                            }
                            return Poll::Ready(
                                last.take().expect("kept until the attempt is made"),
                            );
                        }
                    }
                    let time_is_up = retrying.time_is_up::<C, R, Req>();
                    let retried = retrying
                        .retried
                        .as_mut()
                        .expect("a retry was decided before its wait");
                    // The wait for readiness may have taken the time the
                    // attempt needs: none starts that is not expected to
                    // finish in time, nor once the request's own time is
                    // up.
                    if time_is_up
                        || this.deadline.as_deref().is_some_and(|deadline| {
                            !deadline.leaves(Instant::now(), retried.estimate)
                        })
                    {
                        retried.unspent.give_back();
                        retrying
                            .shared
                            .events
                            .gave_up(GiveUp::Deadline, retried.attempts);
                        return Poll::Ready(last.take().expect("kept until the attempt is made"));
                    }
                    let request = retried.next.take().expect("made after the wait");
                    retried.attempts += 1;
                    retried.paid = retried.unspent.spend();
                    retrying.shared.events.attempt();
                    if let Some(deadline) = this.deadline {
                        *deadline.as_mut().project().started = Instant::now();
                    }
                    let future = retrying.service.call(request);
                    this.attempt.set(Attempt::Calling { future });
                }
            }
        }
    }
}

/// `Pending`, unless the deadline has passed: then the attempt is
/// abandoned with [`DeadlineExceeded`], a give-up for the deadline
/// (whether or not the request could have been sent again).
fn past_deadline<T, S, L, Saved, Request>(
    deadline: &mut Option<Pin<Box<Deadline>>>,
    cx: &mut Context<'_>,
    retrying: Option<&Retrying<S, L, Saved, Request>>,
) -> Poll<Result<T, BoxError>> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    let deadline = deadline.as_mut().project();
    ready!(deadline.sleep.poll(cx));
    let attempts = retrying.map_or(1, Retrying::attempts);
    deadline.events.gave_up(GiveUp::Deadline, attempts);
    Poll::Ready(Err(DeadlineExceeded::new(*deadline.total, attempts).into()))
}

impl<S, C, R, Req, L> std::fmt::Debug for ResponseFuture<S, C, R, Req, L>
where
    L: Handle,
    R: Replay<Req>,
    S: Service<R::Request>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "attempts",
                &self.retrying.as_ref().map_or(1, Retrying::attempts),
            )
            .field("retryable", &self.retrying.is_some())
            .finish_non_exhaustive()
    }
}
