//! Load shedding: low-priority calls refused while the budget burns.

use std::time::Duration;

use crate::objective::Severity;

/// Which calls are low priority: the ones shed while the budget burns.
///
/// Implemented for closures `Fn(&Req) -> bool` (true: low priority), and
/// by [`ShedNothing`], the default. In HTTP mode,
/// [`Marked`](crate::Marked) reads a [`LowPriority`](crate::LowPriority)
/// marker an earlier layer put in the request's extensions.
pub trait Prioritize<Req> {
    /// Whether `request` may be shed.
    fn is_low_priority(&self, request: &Req) -> bool;
}

impl<Req, F> Prioritize<Req> for F
where
    F: Fn(&Req) -> bool,
{
    fn is_low_priority(&self, request: &Req) -> bool {
        self(request)
    }
}

/// No call is low priority: nothing is shed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShedNothing;

impl<Req> Prioritize<Req> for ShedNothing {
    fn is_low_priority(&self, _request: &Req) -> bool {
        false
    }
}

/// When and what an [`SloLayer`](crate::SloLayer) sheds: low-priority
/// calls (as `P` says) while a burn-rate alert of `when` or more urgent
/// fires, answered with a wait of `retry_after`.
///
/// Shed calls are not counted against the objective: they are the
/// layer's own choice, and counting them would make the burn it answers
/// look worse.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_slo::{Severity, Shedding};
///
/// // Reports (`GET /reports/...`) wait while the budget pages.
/// let shedding = Shedding::low_priority(|path: &String| path.starts_with("/reports/"))
///     .when(Severity::Page)
///     .retry_after(Duration::from_secs(60));
/// # let _ = shedding;
/// ```
#[derive(Clone, Copy)]
pub struct Shedding<P> {
    pub(crate) priority: P,
    pub(crate) when: Severity,
    pub(crate) retry_after: Duration,
}

/// When it sheds and the wait it answers; not what it sheds by, which may
/// be a closure.
impl<P> std::fmt::Debug for Shedding<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shedding")
            .field("when", &self.when)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl Default for Shedding<ShedNothing> {
    fn default() -> Self {
        Self::low_priority(ShedNothing)
    }
}

impl<P> Shedding<P> {
    /// Sheds the calls `priority` says are low priority while a page
    /// fires, answering with a wait of 30 s.
    pub const fn low_priority(priority: P) -> Self {
        Self {
            priority,
            when: Severity::Page,
            retry_after: Duration::from_secs(30),
        }
    }

    /// Sheds while an alert of `severity` or more urgent fires.
    #[must_use]
    pub const fn when(mut self, severity: Severity) -> Self {
        self.when = severity;
        self
    }

    /// The wait a shed call is answered with.
    #[must_use]
    pub const fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }
}
