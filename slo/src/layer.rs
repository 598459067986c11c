//! The tower layer.

use tower::Layer;

use crate::budget::ErrorBudget;
use crate::classify::ErrorsAreBad;
use crate::keyed::{ByKey, KeyedBudgets};
use crate::respond::BoxErrors;
use crate::service::Slo;
use crate::shed::{ShedNothing, Shedding};

/// Counts every call into an [`ErrorBudget`], and sheds low-priority calls
/// while the budget burns (when told to, with [`shed`](Self::shed)).
///
/// The budget is shared by every service the layer makes and their clones,
/// and by every clone of the [`ErrorBudget`] handle, so a `/metrics`
/// handler reads the same windows the layer counts into.
///
/// A call is counted when its response future ends, as its classifier
/// says ([`ErrorsAreBad`] by default), or, in gRPC mode
/// (`SloLayer::new_for_grpc`, feature `grpc`), when its response's body
/// ends if only the trailers carry its status; bad if it took longer than the
/// objective's latency threshold. A call whose service panicked is bad
/// (its caller sees a failure: a catch-panic layer's 500). A call dropped
/// before it ended (a client gone, a timeout further out) is counted bad
/// if it had already run past the threshold, and not at all otherwise.
///
/// # Example
///
/// ```
/// use palisade_slo::{ErrorBudget, Objective, SloLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// # fn main() -> Result<(), palisade_slo::ConfigError> {
/// let budget = ErrorBudget::new(Objective::new(0.999))?;
/// let service = ServiceBuilder::new()
///     .layer(SloLayer::new(budget.clone()))
///     .service(service_fn(|query: String| async move {
///         Ok::<_, std::io::Error>(query.len())
///     }));
/// # let _ = service;
/// # Ok(()) }
/// ```
///
/// Per key (a tenant, a customer), [`keyed`](Self::keyed) counts each
/// key's calls into a budget of its own.
#[derive(Clone)]
pub struct SloLayer<C = ErrorsAreBad, R = BoxErrors, P = ShedNothing, B = ErrorBudget> {
    budget: B,
    classifier: C,
    respond: R,
    shedding: Shedding<P>,
}

/// Its budget and shedding; not its classifier or answers, which may be
/// closures.
impl<C, R, P, B: std::fmt::Debug> std::fmt::Debug for SloLayer<C, R, P, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloLayer")
            .field("budget", &self.budget)
            .field("shedding", &self.shedding)
            .finish_non_exhaustive()
    }
}

impl SloLayer {
    /// Counts calls into `budget`: `Ok` good, `Err` bad; sheds nothing.
    #[must_use]
    pub fn new(budget: ErrorBudget) -> Self {
        Self {
            budget,
            classifier: ErrorsAreBad,
            respond: BoxErrors,
            shedding: Shedding::default(),
        }
    }
}

impl<K> SloLayer<ErrorsAreBad, BoxErrors, ShedNothing, ByKey<K>> {
    /// Counts each call into its key's budget in `budgets`, the key given
    /// by `key` ([`BudgetKey`](crate::BudgetKey): a closure
    /// `Fn(&Req) -> Option<String>`, say); a call with no key counts into
    /// [`KeyedBudgets::others`]. Low-priority calls are shed while their
    /// own key's budget burns.
    ///
    /// ```
    /// use palisade_slo::{KeyedBudgets, Objective, SloLayer};
    /// use tower::{ServiceBuilder, service_fn};
    ///
    /// struct Query { tenant: String }
    ///
    /// # fn main() -> Result<(), palisade_slo::ConfigError> {
    /// let budgets = KeyedBudgets::new(Objective::new(0.999), 1_000)?;
    /// let service = ServiceBuilder::new()
    ///     .layer(SloLayer::keyed(budgets.clone(), |query: &Query| Some(query.tenant.clone())))
    ///     .service(service_fn(|query: Query| async move {
    ///         Ok::<_, std::io::Error>(query.tenant.len())
    ///     }));
    /// # let _ = service;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn keyed(budgets: KeyedBudgets, key: K) -> Self {
        Self {
            budget: ByKey::new(budgets, key),
            classifier: ErrorsAreBad,
            respond: BoxErrors,
            shedding: Shedding::default(),
        }
    }
}

impl<C, R, P, B> SloLayer<C, R, P, B> {
    /// Decides with `classifier` how a call counts: a closure
    /// `Fn(&Result<T, E>) -> Event`, a preset, or a
    /// [`Classify`](crate::Classify) of your own as
    /// [`AtOnce`](crate::AtOnce)`(classifier)` (see [`Settle`](crate::Settle)).
    #[must_use]
    pub fn classify<C2>(self, classifier: C2) -> SloLayer<C2, R, P, B> {
        SloLayer {
            budget: self.budget,
            classifier,
            respond: self.respond,
            shedding: self.shedding,
        }
    }

    /// Answers shed calls, and maps the inner service's errors, with
    /// `respond`.
    #[must_use]
    pub fn respond_with<R2>(self, respond: R2) -> SloLayer<C, R2, P, B> {
        SloLayer {
            budget: self.budget,
            classifier: self.classifier,
            respond,
            shedding: self.shedding,
        }
    }

    /// Sheds low-priority calls while the budget burns, as `shedding`
    /// says.
    #[must_use]
    pub fn shed<P2>(self, shedding: Shedding<P2>) -> SloLayer<C, R, P2, B> {
        SloLayer {
            budget: self.budget,
            classifier: self.classifier,
            respond: self.respond,
            shedding,
        }
    }

    /// The budget calls are counted into: the [`ErrorBudget`], or
    /// [`ByKey`] with its budgets.
    #[must_use]
    pub const fn budget(&self) -> &B {
        &self.budget
    }
}

impl<S, C: Clone, R: Clone, P: Clone, B: Clone> Layer<S> for SloLayer<C, R, P, B> {
    type Service = Slo<S, C, R, P, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Slo::new(
            inner,
            self.budget.clone(),
            self.classifier.clone(),
            self.respond.clone(),
            self.shedding.clone(),
        )
    }
}
