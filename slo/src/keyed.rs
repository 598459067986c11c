//! Error budgets by key: one objective, a budget per tenant, customer or
//! route, made at its key's first call.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::budget::ErrorBudget;
use crate::error::ConfigError;
use crate::objective::Objective;

/// The error budgets of one [`Objective`] by key: each key (a tenant, a
/// customer, an API key) counts into a budget of its own, made at the
/// key's first call, so one customer burning their budget shows as theirs
/// and not as a fraction of everyone's.
///
/// Memory is bounded: at most `max_keys` budgets are made (each the fixed
/// size of one [`ErrorBudget`] of the objective), and none is ever
/// dropped. The calls of keys past that, and of requests with no key (or
/// an empty one), count into one more budget, [`others`](Self::others).
/// Looking a key up takes no lock; making a key's budget takes turns
/// with the other keys being made.
///
/// Key by an identity the service has checked (a signed-in tenant), not
/// by a value any client may set: made-up keys would take every budget,
/// and the real keys would count with the others.
///
/// Clones share the budgets. Put it in a layer with
/// [`SloLayer::keyed`](crate::SloLayer::keyed).
///
/// ```
/// use palisade_slo::{KeyedBudgets, Objective};
///
/// # fn main() -> Result<(), palisade_slo::ConfigError> {
/// let budgets = KeyedBudgets::new(Objective::new(0.999), 2)?;
/// let acme = budgets.budget("acme");
/// acme.record(false, acme.now());
/// assert_eq!(budgets.get("acme").unwrap().report(acme.now()).counts().bad, 1);
///
/// budgets.budget("globex");
/// // Past the most keys: counted with the calls that name none.
/// let initech = budgets.budget("initech");
/// initech.record(true, initech.now());
/// assert!(budgets.get("initech").is_none());
/// assert_eq!(budgets.others().report(initech.now()).counts().good, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyedBudgets {
    inner: Arc<Inner>,
}

/// Its objective and how many keys it has, of how many; not the keys
/// (tenants, users), nor their budgets.
impl std::fmt::Debug for KeyedBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBudgets")
            .field("objective", &self.inner.objective)
            .field("keys", &self.inner.table.load().len())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

struct Inner {
    objective: Objective,
    max_keys: usize,
    /// Read by every call without a lock; replaced whole when a key is
    /// added.
    table: ArcSwap<HashMap<Arc<str>, ErrorBudget>>,
    /// Adding keys takes turns.
    adding: Mutex<()>,
    others: ErrorBudget,
    /// Where each key's budget reports, once instrumented.
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<(opentelemetry::metrics::Meter, String)>,
}

impl KeyedBudgets {
    /// Budgets of `objective`, for at most `max_keys` keys besides the
    /// others' budget.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an objective [`ErrorBudget::new`] refuses.
    pub fn new(objective: Objective, max_keys: usize) -> Result<Self, ConfigError> {
        let others = ErrorBudget::new(objective.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                objective,
                max_keys,
                table: ArcSwap::default(),
                adding: Mutex::new(()),
                others,
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The objective every budget is for.
    #[must_use]
    pub fn objective(&self) -> &Objective {
        &self.inner.objective
    }

    /// `key`'s budget, made now if it has none and there is room; the
    /// others' budget past the most keys, and for the empty key.
    #[must_use]
    pub fn budget(&self, key: &str) -> ErrorBudget {
        if key.is_empty() {
            return self.inner.others.clone();
        }
        let table = self.inner.table.load();
        if let Some(budget) = table.get(key) {
            return budget.clone();
        }
        // The table only grows: once full, a new key needs no turn.
        if table.len() >= self.inner.max_keys {
            return self.inner.others.clone();
        }
        drop(table);
        self.add(key)
    }

    /// `key`'s budget, if it has one.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<ErrorBudget> {
        if key.is_empty() {
            return None;
        }
        self.inner.table.load().get(key).cloned()
    }

    /// The budget of the calls that name no key, and of the keys past the
    /// most.
    #[must_use]
    pub fn others(&self) -> &ErrorBudget {
        &self.inner.others
    }

    /// The keys with a budget of their own.
    #[must_use]
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.inner.table.load().keys().cloned().collect()
    }

    /// Reports every key's budget with OpenTelemetry (feature `otel`), as
    /// [`ErrorBudget::instrument`] does, with a `key` attribute (`""` for
    /// [`others`](Self::others)); keys added later are reported from their
    /// first call. Once; later calls change nothing, and a budget of these
    /// already instrumented on its own keeps the attributes it had.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>) {
        let name = name.into();
        let _adding = self
            .inner
            .adding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self
            .inner
            .instruments
            .set((meter.clone(), name.clone()))
            .is_err()
        {
            return;
        }
        let attributes = |key: &str| {
            [
                opentelemetry::KeyValue::new("objective", name.clone()),
                opentelemetry::KeyValue::new("key", key.to_owned()),
            ]
        };
        self.inner.others.instrument_with(meter, &attributes(""));
        for (key, budget) in self.inner.table.load().iter() {
            budget.instrument_with(meter, &attributes(key));
        }
    }

    /// Makes `key`'s budget, unless another call just did or there is no
    /// room left.
    fn add(&self, key: &str) -> ErrorBudget {
        let inner = &*self.inner;
        let _adding = inner.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let table = inner.table.load();
        if let Some(budget) = table.get(key) {
            return budget.clone();
        }
        if table.len() >= inner.max_keys {
            return inner.others.clone();
        }
        let budget = ErrorBudget::new(inner.objective.clone())
            .unwrap_or_else(|error| unreachable!("the objective was checked: {error}"));
        #[cfg(feature = "otel")]
        if let Some((meter, name)) = inner.instruments.get() {
            budget.instrument_with(
                meter,
                &[
                    opentelemetry::KeyValue::new("objective", name.clone()),
                    opentelemetry::KeyValue::new("key", key.to_owned()),
                ],
            );
        }
        let mut grown = HashMap::clone(&table);
        grown.insert(Arc::from(key), budget.clone());
        inner.table.store(Arc::new(grown));
        budget
    }
}

/// Which key a request counts under, for [`SloLayer::keyed`](crate::SloLayer::keyed).
///
/// Implemented for closures `Fn(&Req) -> Option<String>` (a request with
/// none counts into [`KeyedBudgets::others`]); implement it yourself to
/// borrow the key from the request instead of copying it.
pub trait BudgetKey<Req> {
    /// `request`'s key, if it has one.
    fn key<'r>(&self, request: &'r Req) -> Option<Cow<'r, str>>;
}

impl<Req, F> BudgetKey<Req> for F
where
    F: Fn(&Req) -> Option<String>,
{
    fn key<'r>(&self, request: &'r Req) -> Option<Cow<'r, str>> {
        self(request).map(Cow::Owned)
    }
}

/// Which budget a request counts into: the layer's one
/// [`ErrorBudget`], or its key's in [`ByKey`].
pub trait SelectBudget<Req> {
    /// The budget `request` counts into.
    fn select(&self, request: &Req) -> Cow<'_, ErrorBudget>;
}

impl<Req> SelectBudget<Req> for ErrorBudget {
    fn select(&self, _request: &Req) -> Cow<'_, ErrorBudget> {
        Cow::Borrowed(self)
    }
}

/// A request's budget in [`KeyedBudgets`], by the key `K` gives
/// (what [`SloLayer::keyed`](crate::SloLayer::keyed) counts into).
#[derive(Clone)]
pub struct ByKey<K> {
    budgets: KeyedBudgets,
    key: K,
}

/// Its budgets; not its key, which may be a closure.
impl<K> std::fmt::Debug for ByKey<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByKey")
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

impl<K> ByKey<K> {
    pub(crate) const fn new(budgets: KeyedBudgets, key: K) -> Self {
        Self { budgets, key }
    }

    /// The budgets.
    pub const fn budgets(&self) -> &KeyedBudgets {
        &self.budgets
    }
}

impl<Req, K: BudgetKey<Req>> SelectBudget<Req> for ByKey<K> {
    fn select(&self, request: &Req) -> Cow<'_, ErrorBudget> {
        match self.key.key(request) {
            Some(key) if !key.is_empty() => Cow::Owned(self.budgets.budget(&key)),
            // An empty key is no key (and would read as the others' in
            // the metrics, `key=""`).
            _ => Cow::Borrowed(self.budgets.others()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_counts_alone_up_to_the_most_keys() {
        let budgets = KeyedBudgets::new(Objective::new(0.99), 3).unwrap();
        for (key, bad) in [("a", 1), ("b", 2), ("c", 3)] {
            let budget = budgets.budget(key);
            for _ in 0..bad {
                budget.record(false, budget.now());
            }
        }
        for (key, bad) in [("a", 1), ("b", 2), ("c", 3)] {
            let budget = budgets.get(key).unwrap();
            assert_eq!(budget.report(budget.now()).counts().bad, bad, "{key}");
        }
        let fourth = budgets.budget("d");
        fourth.record(false, fourth.now());
        assert!(budgets.get("d").is_none());
        let others = budgets.others();
        assert_eq!(others.report(others.now()).counts().bad, 1);
        let empty = budgets.budget("");
        empty.record(true, empty.now());
        assert!(budgets.get("").is_none(), "the empty key is no key");
        assert_eq!(others.report(others.now()).counts().good, 1);
        let mut keys = budgets.keys();
        keys.sort();
        assert_eq!(keys, [Arc::from("a"), Arc::from("b"), Arc::from("c")]);
    }

    #[test]
    fn threads_adding_one_key_make_one_budget() {
        let budgets = KeyedBudgets::new(Objective::new(0.99), 64).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let budgets = budgets.clone();
                scope.spawn(move || {
                    for call in 0..1_000 {
                        let key = format!("k{}", (call + thread) % 16);
                        let budget = budgets.budget(&key);
                        budget.record(true, budget.now());
                    }
                });
            }
        });
        assert_eq!(budgets.keys().len(), 16);
        let total: u64 = budgets
            .keys()
            .iter()
            .map(|key| {
                let budget = budgets.get(key).unwrap();
                budget.report(budget.now()).counts().good
            })
            .sum();
        assert_eq!(total, 8_000, "no call lost to a budget made twice");
    }
}
