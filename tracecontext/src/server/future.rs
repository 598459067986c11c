//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;

use crate::carrier::TRACERESPONSE_HEADER;
use crate::context::TraceContext;

pin_project! {
    /// Response future of [`TraceContextService`](super::TraceContextService):
    /// the handler's future with the context current and the span entered.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<TaskLocalFuture<TraceContext, F>>,
        traceresponse: Option<HeaderValue>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) const fn new(
        inner: Instrumented<TaskLocalFuture<TraceContext, F>>,
        traceresponse: Option<HeaderValue>,
    ) -> Self {
        Self {
            inner,
            traceresponse,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(value) = this.traceresponse.take() {
            response
                .headers_mut()
                .insert(TRACERESPONSE_HEADER.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}
