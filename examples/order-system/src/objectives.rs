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
//!   so this is the objective an outage burns.

use std::time::Duration;

use axum::response::Response;
use palisade_slo::{Classify, Event, Objective};

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
    /// How long the read waited for the saga's end (less than the client
    /// asked for when the saga ended, or the server stopped, before).
    pub waited: Duration,
    /// How long the saga took, if it ended.
    pub took: Option<Duration>,
}

/// Classifies waited reads of orders for the `sagas` objective (see the
/// module's docs); every other answer is excluded, but a 5xx or a
/// transport error, which is bad.
#[derive(Debug, Clone, Copy)]
pub struct SagasEndInTime {
    /// How long a saga may take and still be good.
    pub within: Duration,
}

impl<E> Classify<Response, E> for SagasEndInTime {
    fn classify(&self, result: &Result<Response, E>) -> Event {
        let Ok(response) = result else {
            return Event::Bad;
        };
        if response.status().is_server_error() {
            return Event::Bad;
        }
        match response.extensions().get::<SagaRead>() {
            Some(SagaRead {
                took: Some(took), ..
            }) if *took <= self.within => Event::Good,
            Some(SagaRead { took: Some(_), .. }) => Event::Bad,
            Some(SagaRead { waited, took: None }) if *waited >= self.within => Event::Bad,
            Some(SagaRead { took: None, .. }) | None => Event::Excluded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saga_is_judged_by_how_long_it_took_or_was_waited_for() {
        let sagas = SagasEndInTime {
            within: Duration::from_secs(5),
        };
        let read = |read: Option<SagaRead>| {
            let mut response = Response::new(axum::body::Body::empty());
            if let Some(read) = read {
                response.extensions_mut().insert(read);
            }
            sagas.classify(&Ok::<_, ()>(response))
        };
        let secs = Duration::from_secs;
        let ended = |took| {
            Some(SagaRead {
                waited: secs(30),
                took: Some(took),
            })
        };
        assert_eq!(read(ended(secs(1))), Event::Good);
        assert_eq!(read(ended(secs(6))), Event::Bad);
        assert_eq!(
            read(Some(SagaRead {
                waited: secs(5),
                took: None
            })),
            Event::Bad
        );
        assert_eq!(
            read(Some(SagaRead {
                waited: secs(1),
                took: None
            })),
            Event::Excluded
        );
        assert_eq!(read(None), Event::Excluded, "a read that did not wait");
    }
}
