//! HTTP responses (feature `http`): a request counts as under way on its
//! cell until its response's body ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Service;

use crate::cells::{Cells, Entered};
use crate::key::Key;
use crate::router::{CellFuture, CellRouter};

/// A request counts as under way on its cell until its response's body
/// ends or is dropped: [`CellRouter::new_for_http`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UntilBodyEnds;

impl<S, K> CellRouter<S, K, UntilBodyEnds> {
    /// Routes HTTP requests by `key` to `cells` (feature `http`): a
    /// request counts as under way on its cell until its response's body
    /// ends or is dropped, so [`Cells::retire`] waits for the downloads,
    /// event streams and gRPC streams under way on a cell, and
    /// [`Cells::in_flight`] counts them. The responses' bodies are
    /// [`CellBody`].
    ///
    /// # Example
    ///
    /// ```
    /// use http::{HeaderName, Request, Response};
    /// use palisade_traffic::{CellRouter, Cells, key};
    /// use tower::{BoxError, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let cell = |name: &'static str| {
    ///     service_fn(move |_: Request<String>| async move {
    ///         Ok::<_, BoxError>(Response::new(format!("a report from {name}")))
    ///     })
    /// };
    /// let cells = Cells::new([("a", cell("a")), ("b", cell("b"))])?;
    /// let tenant = key::header(HeaderName::from_static("x-tenant"));
    /// let router = CellRouter::new_for_http(cells.clone(), tenant);
    ///
    /// let request = Request::builder().header("x-tenant", "acme").body(String::new())?;
    /// let response = router.oneshot(request).await?;
    /// // Under way on its cell until its body is read to the end or dropped.
    /// let cell = cells.cell_of("acme").unwrap();
    /// assert_eq!(cells.in_flight(&cell), Some(1));
    /// drop(response);
    /// assert_eq!(cells.in_flight(&cell), Some(0));
    /// # Ok(()) }
    /// ```
    pub const fn new_for_http(cells: Cells<S>, key: K) -> Self {
        Self::with_until(cells, key, UntilBodyEnds)
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for CellRouter<S, K, UntilBodyEnds>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: Key<Request<ReqBody>>,
{
    type Response = Response<CellBody<ResBody>>;
    type Error = S::Error;
    type Future = CellFuture<S, Request<ReqBody>, UntilBodyEnds>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (call, entered) = self.enter(request);
        CellFuture::new(call, entered)
    }
}

impl<S, ReqBody, ResBody> Future for CellFuture<S, Request<ReqBody>, UntilBodyEnds>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<CellBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (result, entered) = ready!(self.poll_entered(cx));
        // The entry moves into the body; an error ends it here.
        Poll::Ready(result.map(|response| response.map(|inner| CellBody { inner, entered })))
    }
}

pin_project! {
    /// A response body that keeps its request counted as under way on its
    /// cell until it ends (its last frame, or an error) or is dropped.
    #[derive(Debug)]
    pub struct CellBody<B> {
        #[pin]
        inner: B,
        entered: Option<Entered>,
    }
}

impl<B: Body> Body for CellBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            drop(this.entered.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
