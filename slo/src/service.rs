//! The layer's service.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use crate::budget::ErrorBudget;
use crate::classify::Settle;
use crate::error::Shed;
use crate::future::ResponseFuture;
use crate::keyed::SelectBudget;
use crate::respond::Respond;
use crate::shed::{Prioritize, Shedding};

/// The service made by [`SloLayer`](crate::SloLayer).
///
/// `poll_ready` is the inner service's; a shed call is answered from
/// `call` at once, without calling the inner service.
#[derive(Clone)]
pub struct Slo<S, C, R, P, B = ErrorBudget> {
    inner: S,
    budget: B,
    classifier: C,
    respond: R,
    shedding: Shedding<P>,
}

/// Its inner service and budget; not its classifier, answers or shedding,
/// which may be closures.
impl<S: std::fmt::Debug, C, R, P, B: std::fmt::Debug> std::fmt::Debug for Slo<S, C, R, P, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slo")
            .field("inner", &self.inner)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<S, C, R, P, B> Slo<S, C, R, P, B> {
    pub(crate) const fn new(
        inner: S,
        budget: B,
        classifier: C,
        respond: R,
        shedding: Shedding<P>,
    ) -> Self {
        Self {
            inner,
            budget,
            classifier,
            respond,
            shedding,
        }
    }

    /// The budget calls are counted into: the [`ErrorBudget`], or
    /// [`ByKey`](crate::ByKey) with its budgets.
    pub const fn budget(&self) -> &B {
        &self.budget
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the inner service back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C, R, P, B> Service<Req> for Slo<S, C, R, P, B>
where
    S: Service<Req>,
    B: SelectBudget<Req>,
    C: Settle<S::Response, S::Error> + Clone,
    R: Respond<C::Response, S::Error> + Clone,
    P: Prioritize<Req>,
{
    type Response = C::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| self.respond.error(error))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let budget = self.budget.select(&request).into_owned();
        if self.shedding.priority.is_low_priority(&request) {
            let signal = budget.signal_ms(budget.at(Instant::now()));
            if signal.is_firing(self.shedding.when) {
                let severity = signal.firing().unwrap_or(self.shedding.when);
                let shed = Shed::new(severity, self.shedding.retry_after);
                return ResponseFuture::shed(shed, self.respond.clone());
            }
        }
        // Timed only when the objective has a threshold; the call is
        // counted at the time it ends either way.
        let started = budget
            .objective()
            .latency_threshold()
            .map(|_| Instant::now());
        ResponseFuture::called(
            self.inner.call(request),
            budget,
            self.classifier.clone(),
            self.respond.clone(),
            started,
        )
    }
}
