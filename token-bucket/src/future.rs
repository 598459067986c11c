//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use crate::bucket::Decision;
use crate::events::Events;
use crate::respond::Respond;
use crate::store::Store;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the store's
    /// decision, then the inner service's answer.
    pub struct ResponseFuture<S, St, R, Req>
    where
        S: Service<Req>,
        St: Store,
    {
        #[pin]
        state: State<St::Future, S::Future, S, Req>,
        respond: R,
        events: Events,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<D, F, S, Req> {
        Deciding { #[pin] decision: D, service: Option<S>, request: Option<Req> },
        Calling { #[pin] future: F, decision: Option<Decision> },
    }
}

impl<S, St, R, Req> ResponseFuture<S, St, R, Req>
where
    S: Service<Req>,
    St: Store,
{
    pub(crate) const fn unlimited(future: S::Future, respond: R, events: Events) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: None,
            },
            respond,
            events,
        }
    }

    pub(crate) const fn deciding(
        decision: St::Future,
        service: S,
        request: Req,
        respond: R,
        events: Events,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                service: Some(service),
                request: Some(request),
            },
            respond,
            events,
        }
    }
}

impl<S, St, R, Req> Future for ResponseFuture<S, St, R, Req>
where
    S: Service<Req>,
    St: Store,
    R: Respond<S::Response, S::Error>,
{
    type Output = Result<S::Response, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding {
                    decision,
                    service,
                    request,
                } => {
                    let decision = match ready!(decision.poll(cx)) {
                        Ok(decision) => decision,
                        Err(error) => {
                            this.events.store_failed();
                            return Poll::Ready(this.respond.store_failed(error));
                        }
                    };
                    this.events.decided(&decision);
                    if !decision.is_allowed() {
                        return Poll::Ready(this.respond.refused(&decision));
                    }
                    let (Some(mut service), Some(request)) = (service.take(), request.take())
                    else {
                        unreachable!("a decision is taken once");
                    };
                    let future = service.call(request);
                    this.state.set(State::Calling {
                        future,
                        decision: Some(decision),
                    });
                }
                StateProj::Calling { future, decision } => {
                    let mut response =
                        ready!(future.poll(cx)).map_err(|error| this.respond.error(error))?;
                    if let Some(decision) = decision {
                        this.respond.admitted(&mut response, decision);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, St, R, Req> std::fmt::Debug for ResponseFuture<S, St, R, Req>
where
    S: Service<Req>,
    St: Store,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
