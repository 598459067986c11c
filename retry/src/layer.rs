//! The tower layer.

use std::sync::Arc;

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
#[derive(Debug, Clone)]
pub struct RetryLayer<C = RetryErrors, R = CloneRequest> {
    pub(crate) config: Config,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classify: C,
    pub(crate) replay: R,
    pub(crate) events: Events,
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
}

impl<S, C: Clone, R: Clone> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::new(self.clone()))
    }
}
