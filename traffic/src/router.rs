//! The router: each request to its key's cell.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
#[derive(Debug, Clone)]
pub struct CellRouter<S, K> {
    cells: Cells<S>,
    key: K,
}

impl<S, K> CellRouter<S, K> {
    /// Routes by `key` to `cells`.
    pub const fn new(cells: Cells<S>, key: K) -> Self {
        Self { cells, key }
    }

    /// The cells routed to.
    pub const fn cells(&self) -> &Cells<S> {
        &self.cells
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
        // The key first: the user's function may take its time, and the
        // table is read just before the cell is entered.
        let key = self.key.key(&request);
        loop {
            let table = self.cells.load();
            let cell = &table.cells[usize::from(table.route(key))];
            // A cell retired since the table was read refuses the entry;
            // the next table no longer has it.
            if let Some(entered) = cell.in_flight.enter() {
                return CellFuture {
                    call: cell.service.clone().oneshot(request),
                    _entered: entered,
                };
            }
        }
    }
}

pin_project! {
    /// Response future of [`CellRouter`]: the call on its cell, counted
    /// as under way on the cell until it ends or is dropped.
    pub struct CellFuture<S: Service<Req>, Req> {
        #[pin]
        call: Oneshot<S, Req>,
        _entered: Entered,
    }
}

impl<S, Req> std::fmt::Debug for CellFuture<S, Req>
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
        self.project().call.poll(cx)
    }
}
