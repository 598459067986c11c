//! The tower layer.

use palisade_hints::share::Shared;
use tower::Layer;

use crate::budget::RetryBudget;
use crate::classify::RetryErrors;
use crate::config::Config;
use crate::events::Events;
use crate::replay::CloneRequest;
use crate::service::Retry;

/// Retries failed calls with backoff, within a budget shared by every
/// service it makes.
///
/// `C` decides which results are worth retrying ([`RetryErrors`] by
/// default) and `R` how requests are kept for another attempt
/// ([`CloneRequest`] by default). The retry budget is created with the
/// layer, so every service it makes (axum makes one per connection) and
/// every clone of those draws on one account.
#[derive(Clone)]
pub struct RetryLayer<C = RetryErrors, R = CloneRequest> {
    pub(crate) config: Config,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classify: C,
    pub(crate) replay: R,
    pub(crate) events: Events,
}

/// Its config and budget; not its classifier or replay, which may be
/// closures.
impl<C, R> std::fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A layer retrying errors of `Clone` requests; see [`RetryErrors`].
    #[must_use]
    pub fn new(config: Config) -> Self {
        // A `Config` is only made by `ConfigBuilder::build`, which validated it.
        let budget = config.budget.map(RetryBudget::from_valid);
        Self {
            config,
            budget,
            classify: RetryErrors,
            replay: CloneRequest,
            events: Events::default(),
        }
    }
}

impl<C, R> RetryLayer<C, R> {
    /// Decides with `classify` which results are retried.
    #[must_use]
    pub fn classify<C2>(self, classify: C2) -> RetryLayer<C2, R> {
        RetryLayer {
            config: self.config,
            budget: self.budget,
            classify,
            replay: self.replay,
            events: self.events,
        }
    }

    /// Keeps requests for another attempt with `replay`.
    #[must_use]
    pub fn replay<R2>(self, replay: R2) -> RetryLayer<C, R2> {
        RetryLayer {
            config: self.config,
            budget: self.budget,
            classify: self.classify,
            replay,
            events: self.events,
        }
    }

    /// Draws on `budget` instead of the layer's own, so several layers
    /// (say, one per route to the same dependency) share one account.
    #[must_use]
    pub fn share_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The layer's retry budget, if it has one.
    #[must_use]
    pub const fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// Gives the layer the process's lifetime, for a layer built once at
    /// start-up: the services it makes, and every call, then reach its
    /// configuration and budget by a plain reference.
    ///
    /// A layer kept as it is hands each retryable call's response future
    /// a counted reference to its state: two atomic read-modify-writes a
    /// call. They are on the layer's one count for a service cloned per
    /// request (as axum's router does), and on a count of the service's own
    /// from its second retryable call on (see [`Retry`]). A leaked layer's
    /// calls touch no reference count, but for a retried call's hold on its
    /// budget from the retry's decision to its attempt. Its memory (the layer, a few hundred
    /// bytes with its classifier and replay) is never freed, so leak a layer
    /// once, not one per request or per test case.
    ///
    /// # Example
    ///
    /// ```
    /// use palisade_retry::{Config, RetryLayer};
    /// use tower::ServiceBuilder;
    /// # use tower::service_fn;
    /// # async fn call(request: u32) -> Result<u32, std::convert::Infallible> { Ok(request) }
    ///
    /// let retry = RetryLayer::new(Config::default()).leak();
    /// let service = ServiceBuilder::new().layer(retry).service(service_fn(call));
    /// // Every service made from `retry` draws on one budget, as before.
    /// let another = ServiceBuilder::new().layer(retry).service(service_fn(call));
    /// # drop((service, another));
    /// ```
    #[must_use]
    pub fn leak(self) -> LeakedRetryLayer<C, R>
    where
        C: 'static,
        R: 'static,
    {
        LeakedRetryLayer(Box::leak(Box::new(self)))
    }
}

impl<S, C: Clone + 'static, R: Clone + 'static> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Shared::new(self.clone()))
    }
}

/// A [`RetryLayer`] given the process's lifetime by
/// [`RetryLayer::leak`]: the services it makes share it by reference.
/// Copy it freely; every copy is the same layer, with one budget.
pub struct LeakedRetryLayer<C: 'static = RetryErrors, R: 'static = CloneRequest>(
    &'static RetryLayer<C, R>,
);

impl<C, R> std::fmt::Debug for LeakedRetryLayer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeakedRetryLayer").field(self.0).finish()
    }
}

impl<C, R> Clone for LeakedRetryLayer<C, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, R> Copy for LeakedRetryLayer<C, R> {}

impl<C, R> std::ops::Deref for LeakedRetryLayer<C, R> {
    type Target = RetryLayer<C, R>;

    fn deref(&self) -> &RetryLayer<C, R> {
        self.0
    }
}

impl<S, C, R> Layer<S> for LeakedRetryLayer<C, R> {
    type Service = Retry<S, C, R, &'static RetryLayer<C, R>>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.0)
    }
}
