//! The router: each request to its key's cell.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;
use tower::util::{Oneshot, ServiceExt};

use crate::cells::{Cells, Entered};
use crate::key::Key;

/// Routes each request to the cell its key is assigned to in [`Cells`].
///
/// One cell's trouble stays its own: the router is always ready, and each
/// request waits for its own cell's readiness (on a clone of the cell's
/// service), so a cell that is slow to become ready, or whose breaker is
/// open, holds up and refuses only its own keys. (tower's `Steer` waits
/// for every service to be ready before any call.) Give each cell a
/// breaker of its own by stacking one in its service.
///
/// A request that names no key goes to the fallback cell (the first, or
/// as [`Cells::fallback`] says). Routing takes no lock and allocates
/// nothing beyond what the key function and the cell's service clone do.
///
/// A request counts as under way on its cell ([`Cells::in_flight`], and
/// what [`Cells::retire`] waits for) until its response is ready. An HTTP
/// response may go on long after its head (a download, server-sent
/// events, a gRPC stream whose status comes in the trailers):
/// [`new_for_http`](CellRouter::new_for_http) (feature `http`) counts
/// such a request until its body ends or is dropped.
///
/// # Example
///
/// ```
/// use palisade_traffic::{CellRouter, Cells};
/// use tower::{BoxError, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// struct Order { user: u64 }
///
/// let cell = |name: &'static str| {
///     service_fn(move |_order: Order| async move { Ok::<_, BoxError>(name) })
/// };
/// let cells = Cells::new([("a", cell("a")), ("b", cell("b"))])?;
/// let router = CellRouter::new(cells.clone(), |order: &Order| Some(order.user));
///
/// let served = router.oneshot(Order { user: 42 }).await?;
/// assert_eq!(Some(served), cells.cell_of(42_u64).as_deref());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CellRouter<S, K, U = UntilResponse> {
    cells: Cells<S>,
    key: K,
    _until: U,
}

/// Its cells; not its key, which may be a closure.
impl<S, K, U> std::fmt::Debug for CellRouter<S, K, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellRouter")
            .field("cells", &self.cells)
            .finish_non_exhaustive()
    }
}

/// A request counts as under way on its cell until its response is
/// ready: [`CellRouter::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UntilResponse;

impl<S, K> CellRouter<S, K> {
    /// Routes by `key` to `cells`; a request counts as under way on its
    /// cell until its response is ready.
    pub const fn new(cells: Cells<S>, key: K) -> Self {
        Self::with_until(cells, key, UntilResponse)
    }
}

impl<S, K, U> CellRouter<S, K, U> {
    pub(crate) const fn with_until(cells: Cells<S>, key: K, until: U) -> Self {
        Self {
            cells,
            key,
            _until: until,
        }
    }

    /// The cells routed to.
    pub const fn cells(&self) -> &Cells<S> {
        &self.cells
    }

    /// Enters `request`'s cell: the call on it, and the entry that counts
    /// it as under way there.
    pub(crate) fn enter<Req>(&self, request: Req) -> (Oneshot<S, Req>, Entered)
    where
        S: Service<Req> + Clone,
        K: Key<Req>,
    {
        // The key first: the user's function may take its time, and the
        // table is read just before the cell is entered.
        let key = self.key.key(&request);
        loop {
            let table = self.cells.load();
            let cell = &table.cells[usize::from(table.route(key))];
            // A cell retired since the table was read refuses the entry;
            // the next table no longer has it.
            if let Some(entered) = cell.in_flight.enter() {
                return (cell.service.clone().oneshot(request), entered);
            }
        }
    }
}

impl<S, K, Req> Service<Req> for CellRouter<S, K>
where
    S: Service<Req> + Clone,
    K: Key<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CellFuture<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (call, entered) = self.enter(request);
        CellFuture::new(call, entered)
    }
}

pin_project! {
    /// Response future of [`CellRouter`]: the call on its cell, counted
    /// as under way on the cell until it ends or is dropped (and, from
    /// [`CellRouter::new_for_http`], then in the response's body).
    pub struct CellFuture<S: Service<Req>, Req, U = UntilResponse> {
        #[pin]
        call: Oneshot<S, Req>,
        entered: Option<Entered>,
        _until: PhantomData<fn() -> U>,
    }
}

/// A call's result, and its entry on the cell (if not ended yet).
pub(crate) type Ended<T, E> = (Result<T, E>, Option<Entered>);

impl<S: Service<Req>, Req, U> CellFuture<S, Req, U> {
    pub(crate) const fn new(call: Oneshot<S, Req>, entered: Entered) -> Self {
        Self {
            call,
            entered: Some(entered),
            _until: PhantomData,
        }
    }

    /// The call's result, and its entry on the cell.
    pub(crate) fn poll_entered(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Ended<S::Response, S::Error>> {
        let this = self.project();
        let result = ready!(this.call.poll(cx));
        Poll::Ready((result, this.entered.take()))
    }
}

impl<S, Req, U> std::fmt::Debug for CellFuture<S, Req, U>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellFuture").finish_non_exhaustive()
    }
}

impl<S: Service<Req>, Req> Future for CellFuture<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The entry ends here, with the response.
        self.poll_entered(cx).map(|(result, _entered)| result)
    }
}
