//! What the gateway promises its users, as service level objectives
//! (`palisade-slo`), with their error budgets, burn rates and alerts on
//! `/metrics` (`palisade_slo_*`):
//!
//! - `orders`: `POST /orders` answered well (no 5xx) within 500 ms, 99.5%
//!   of the time. A request the per-user rate limit refuses never reaches
//!   it.
//! - `sagas`: an order's saga ends within [`Objectives::saga_within`] of
//!   its placement (5 s), 99% of the time, as clients see it when they
//!   wait for it (`GET /orders/{id}?wait_ms=N`): an ended saga that took
//!   longer, or a wait at least that long that ends with the saga still
//!   pending, is bad; a shorter wait that ends pending says nothing. A card
//!   processor that is down leaves sagas pending (payment waits it out),
//!   so this is the objective an outage burns. A wait its client gives
//!   up on counts as it would have ended: bad once it had waited that long
//!   ([`GivenUp`]). A gateway judges each saga once, however often it is
//!   read ([`Judged`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::Response;
use palisade_slo::{Classify, ErrorBudget, Event, Objective};

/// The gateway's objectives.
#[derive(Debug, Clone, PartialEq)]
pub struct Objectives {
    /// `POST /orders`.
    pub orders: Objective,
    /// Sagas, as waited for.
    pub sagas: Objective,
    /// How long a saga may take and still be good.
    pub saga_within: Duration,
}

impl Default for Objectives {
    /// Both over 30 days with the SRE workbook's burn-rate alerts.
    fn default() -> Self {
        Self {
            orders: Objective::new(0.995).latency(Duration::from_millis(500)),
            sagas: Objective::new(0.99),
            saga_within: Duration::from_secs(5),
        }
    }
}

/// What a waited read of an order saw, put in its response's extensions
/// by the gateway for [`SagasEndInTime`] to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaRead {
    /// The order read.
    pub order: uuid::Uuid,
    /// How long the read waited for the saga's end (less than the client
    /// asked for when the saga ended, or the server stopped, before).
    pub waited: Duration,
    /// How long the saga took, if it ended.
    pub took: Option<Duration>,
}

/// Classifies waited reads of orders for the `sagas` objective (see the
/// module's docs); every other answer is excluded, but a 5xx or a
/// transport error, which is bad.
#[derive(Debug, Clone)]
pub struct SagasEndInTime {
    /// How long a saga may take and still be good.
    pub within: Duration,
    /// The sagas judged already.
    pub judged: Judged,
}

impl<E> Classify<Response, E> for SagasEndInTime {
    fn classify(&self, result: &Result<Response, E>) -> Event {
        let Ok(response) = result else {
            return Event::Bad;
        };
        if response.status().is_server_error() {
            return Event::Bad;
        }
        let Some(read) = response.extensions().get::<SagaRead>() else {
            return Event::Excluded;
        };
        let event = match read.took {
            Some(took) if took <= self.within => Event::Good,
            Some(_) => Event::Bad,
            None if read.waited >= self.within => Event::Bad,
            None => Event::Excluded,
        };
        if event != Event::Excluded && !self.judged.first_time(read.order) {
            return Event::Excluded;
        }
        event
    }
}

/// The `sagas` objective's judgement of waits their clients gave up on.
/// A client gone drops its read before it answers, so the objective's
/// layer saw no answer and counted nothing: in an outage whose clients
/// time out before their `wait_ms`, the late sagas burned no budget and
/// the page never fired. A wait given up after waiting
/// [`within`](SagasEndInTime::within) or longer, its saga pending at its
/// last look, judges the saga bad (once, with the reads' judgements).
#[derive(Debug, Clone)]
pub struct GivenUp {
    budget: ErrorBudget,
    sagas: SagasEndInTime,
}

impl GivenUp {
    /// Judges into `budget` (the `sagas` objective's) as `sagas` judges
    /// the reads that answer.
    #[must_use]
    pub const fn new(budget: ErrorBudget, sagas: SagasEndInTime) -> Self {
        Self { budget, sagas }
    }

    /// A waited read of `order` (the user's, seen pending), begun at
    /// `started`, to be judged should it be dropped before it answers
    /// ([`Waiting::answered`]).
    #[must_use]
    pub fn waiting(&self, order: uuid::Uuid, started: tokio::time::Instant) -> Waiting {
        Waiting {
            given_up: Some(self.clone()),
            order,
            started,
        }
    }
}

/// A waited read under way (see [`GivenUp`]).
#[derive(Debug)]
pub struct Waiting {
    /// `None` once answered.
    given_up: Option<GivenUp>,
    order: uuid::Uuid,
    started: tokio::time::Instant,
}

impl Waiting {
    /// The read answers: the objective's layer judges its answer.
    pub fn answered(mut self) {
        self.given_up = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(GivenUp { budget, sagas }) = self.given_up.take() else {
            return;
        };
        // Counted by the objective's layer: a read that panicked, or one
        // dropped past a latency threshold the objective was given.
        if std::thread::panicking() || budget.objective().latency_threshold().is_some() {
            return;
        }
        if self.started.elapsed() >= sagas.within && sagas.judged.first_time(self.order) {
            budget.record(false, budget.now());
        }
    }
}

/// How many judged sagas a gateway remembers: the last 100,000 (about
/// 4 MB), minutes of orders at the load command's pace.
const JUDGED_KEPT: usize = 100_000;

/// The orders whose saga a gateway has judged, the latest 100,000: each
/// saga counts once however often it is read. A client polling one late
/// saga counted it bad at every read (50 a second within its rate limit),
/// and one polling a quick saga hid an outage under good reads. A saga
/// read through several gateways counts once in each.
#[derive(Debug, Clone, Default)]
pub struct Judged(Arc<Mutex<Remembered>>);

#[derive(Debug, Default)]
struct Remembered {
    orders: HashSet<u128>,
    /// In the order they were judged: the first goes when room is needed.
    oldest_first: VecDeque<u128>,
}

impl Judged {
    /// Whether `order`'s saga is judged for the first time (remembered
    /// from now on).
    fn first_time(&self, order: uuid::Uuid) -> bool {
        let order = order.as_u128();
        let mut remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !remembered.orders.insert(order) {
            return false;
        }
        remembered.oldest_first.push_back(order);
        if remembered.oldest_first.len() > JUDGED_KEPT
            && let Some(oldest) = remembered.oldest_first.pop_front()
        {
            remembered.orders.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sagas() -> SagasEndInTime {
        SagasEndInTime {
            within: Duration::from_secs(5),
            judged: Judged::default(),
        }
    }

    fn read(sagas: &SagasEndInTime, read: Option<SagaRead>) -> Event {
        let mut response = Response::new(axum::body::Body::empty());
        if let Some(read) = read {
            response.extensions_mut().insert(read);
        }
        sagas.classify(&Ok::<_, ()>(response))
    }

    fn saga_read(waited: u64, took: Option<u64>) -> Option<SagaRead> {
        Some(SagaRead {
            order: uuid::Uuid::now_v7(),
            waited: Duration::from_secs(waited),
            took: took.map(Duration::from_secs),
        })
    }

    #[test]
    fn a_saga_is_judged_by_how_long_it_took_or_was_waited_for() {
        let sagas = sagas();
        assert_eq!(read(&sagas, saga_read(30, Some(1))), Event::Good);
        assert_eq!(read(&sagas, saga_read(30, Some(6))), Event::Bad);
        assert_eq!(read(&sagas, saga_read(5, None)), Event::Bad);
        assert_eq!(read(&sagas, saga_read(1, None)), Event::Excluded);
        assert_eq!(
            read(&sagas, None),
            Event::Excluded,
            "a read that did not wait"
        );
    }

    /// A saga counts once however often it is read: a client polling a
    /// late saga counted it bad at every read, one polling a quick saga
    /// good at every read.
    #[test]
    fn a_saga_read_again_is_not_judged_again() {
        let sagas = sagas();
        let late = saga_read(30, Some(6));
        assert_eq!(read(&sagas, late), Event::Bad);
        assert_eq!(read(&sagas, late), Event::Excluded);
        let quick = saga_read(30, Some(1));
        assert_eq!(read(&sagas, quick), Event::Good);
        assert_eq!(read(&sagas, quick), Event::Excluded);

        // Waited out pending, then read ended: judged at the first.
        let mut stuck = saga_read(5, None).unwrap();
        assert_eq!(read(&sagas, Some(stuck)), Event::Bad);
        stuck.took = Some(Duration::from_secs(9));
        assert_eq!(read(&sagas, Some(stuck)), Event::Excluded);

        // A short wait that says nothing does not use up the judgement.
        let pending = saga_read(1, None).unwrap();
        assert_eq!(read(&sagas, Some(pending)), Event::Excluded);
        let ended = SagaRead {
            took: Some(Duration::from_secs(2)),
            ..pending
        };
        assert_eq!(read(&sagas, Some(ended)), Event::Good);
    }

    /// A wait given up once it had waited as long as a saga may take
    /// judges the saga bad, once; one given up sooner, or answered,
    /// judges nothing.
    #[tokio::test(start_paused = true)]
    async fn a_wait_given_up_late_judges_its_saga_bad_once() {
        let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
        let sagas = sagas();
        let given_up = GivenUp::new(budget.clone(), sagas.clone());
        let bad = || budget.report(budget.now()).counts().bad;
        let (late, early) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let started = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(given_up.waiting(early, tokio::time::Instant::now()));
        given_up.waiting(late, started).answered();
        assert_eq!(bad(), 0, "given up early, or answered");
        drop(given_up.waiting(late, started));
        assert_eq!(bad(), 1);
        drop(given_up.waiting(late, started));
        assert_eq!(
            read(
                &sagas,
                Some(SagaRead {
                    order: late,
                    waited: Duration::from_secs(30),
                    took: None
                })
            ),
            Event::Excluded
        );
        assert_eq!(bad(), 1, "judged once");
    }

    /// An objective given a latency threshold counts a read dropped past
    /// it in its own layer: the wait given up is not counted again.
    #[tokio::test(start_paused = true)]
    async fn a_wait_given_up_is_left_to_an_objective_with_a_threshold() {
        let objective = Objective::new(0.99).latency(Duration::from_secs(5));
        let budget = ErrorBudget::new(objective).unwrap();
        let given_up = GivenUp::new(budget.clone(), sagas());
        let started = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(given_up.waiting(uuid::Uuid::now_v7(), started));
        assert_eq!(budget.report(budget.now()).counts().bad, 0);
    }

    /// The judged sagas are bounded: the oldest is forgotten first.
    #[test]
    fn the_judged_sagas_kept_are_bounded() {
        let judged = Judged::default();
        let first = uuid::Uuid::now_v7();
        assert!(judged.first_time(first));
        for _ in 0..JUDGED_KEPT {
            assert!(judged.first_time(uuid::Uuid::now_v7()));
        }
        let remembered = judged.0.lock().unwrap();
        assert_eq!(remembered.orders.len(), JUDGED_KEPT);
        assert_eq!(remembered.oldest_first.len(), JUDGED_KEPT);
        drop(remembered);
        assert!(judged.first_time(first), "forgotten, the oldest");
    }
}
