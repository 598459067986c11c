//! The breaker's service.

use std::borrow::Cow;
use std::task::{Context, Poll};

use tower::Service;

use crate::breaker::CircuitBreaker;
use crate::classify::Settle;
use crate::future::ResponseFuture;
use crate::respond::Respond;

/// Which breaker a request goes through: the one breaker of a
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), or its key's breaker
/// for a [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer).
pub trait SelectBreaker<Req> {
    /// The breaker `request` goes through.
    fn select(&self, request: &Req) -> Cow<'_, CircuitBreaker>;

    /// The breaker `request` goes through, for a call through the service
    /// holding `self`: [`select`](Self::select), by default. A
    /// [`CircuitBreaker`] gives the service a reference count of its own
    /// here once it keeps calling, so that services on different threads
    /// do not write one count on every call.
    fn select_for_call(&mut self, request: &Req) -> Cow<'_, CircuitBreaker> {
        self.select(request)
    }
}

impl<Req> SelectBreaker<Req> for CircuitBreaker {
    fn select(&self, _request: &Req) -> Cow<'_, CircuitBreaker> {
        Cow::Borrowed(self)
    }

    #[inline(always)]
    fn select_for_call(&mut self, _request: &Req) -> Cow<'_, CircuitBreaker> {
        self.called();
        Cow::Borrowed(self)
    }
}

/// The service made by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)
/// (with `B` a [`CircuitBreaker`]) and by
/// [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer).
///
/// `poll_ready` is the inner service's; an open breaker answers from `call`
/// at once, without calling the inner service. What the inner service's
/// readiness took (a `ConcurrencyLimit` permit, a `Buffer` slot) then
/// stays with this service until its next call or its drop, as with
/// tower's `Filter`: call a clone per request, as axum and hyper do (or
/// `ServiceExt::oneshot`), rather than one service kept across calls,
/// where a refused call would hold back the capacity other keys' calls
/// wait for.
#[derive(Clone)]
pub struct CircuitBreakerService<S, B, C, R> {
    inner: S,
    breakers: B,
    classifier: C,
    respond: R,
}

/// Its inner service and breaker; not its classifier or answers, which
/// may be closures.
impl<S: std::fmt::Debug, B: std::fmt::Debug, C, R> std::fmt::Debug
    for CircuitBreakerService<S, B, C, R>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl<S, B, C, R> CircuitBreakerService<S, B, C, R> {
    pub(crate) const fn new(inner: S, breakers: B, classifier: C, respond: R) -> Self {
        Self {
            inner,
            breakers,
            classifier,
            respond,
        }
    }

    /// Where the breakers come from: the breaker itself, or the keyed
    /// breakers with their registry.
    pub const fn breakers(&self) -> &B {
        &self.breakers
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

impl<S, Req, B, C, R> Service<Req> for CircuitBreakerService<S, B, C, R>
where
    S: Service<Req>,
    B: SelectBreaker<Req>,
    C: Settle<S::Response, S::Error> + Clone,
    R: Respond<C::Response, S::Error> + Clone,
{
    type Response = C::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|err| self.respond.error(err))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.breakers.select_for_call(&request);
        let inner = &mut self.inner;
        ResponseFuture::through(
            breaker,
            || inner.call(request),
            &self.classifier,
            &self.respond,
        )
    }
}
