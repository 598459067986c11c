//! How the services a layer makes, and their calls, reach the state they
//! share (a breaker's window, a retry layer's budget): by a reference
//! count, or by a plain reference once the state is leaked for the
//! process's lifetime.
//!
//! A count shared by threads is one cache line that every clone and drop
//! writes. A call that keeps a clone of it for as long as it runs makes
//! threads calling at once take turns owning that line, and a call that
//! should cost nanoseconds then costs several times as much. So a
//! [`Shared`] handle that a service calls through a second time gets a
//! count of its own, on a line of its own, and the [`Held`] handles its
//! calls keep raise and lower that count instead.
//!
//! # Example
//!
//! ```
//! use palisade_hints::share::{Handle, Shared};
//!
//! struct Budget { limit: u32 }
//!
//! // A layer's state, and a service's handle on it.
//! let layer = Shared::new(Budget { limit: 10 });
//! let mut service = layer.clone();
//! for _ in 0..3 {
//!     // Each call says it is one, and keeps what it needs for as long
//!     // as it runs; from the second on, that is on the service's own
//!     // count.
//!     service.called();
//!     let call = service.held();
//!     assert_eq!(call.limit, 10);
//! }
//! ```

use std::fmt;
use std::ops::Deref;

#[cfg(palisade_loom)]
use loom::sync::Arc;
#[cfg(not(palisade_loom))]
use std::sync::Arc;

/// A value alone on its cache line: written by every call, it must not
/// make the readers of its neighbours miss, nor share a line with another
/// such value.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OwnLine<T>(pub T);

impl<T> Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A handle on state shared by every clone: what a layer's services keep.
///
/// A clone is a new holder: it counts on the state's own count (or, once
/// [leaked](Self::leak), counts nothing), never on the count of its own
/// that the handle it was cloned from may have. A service cloned for one
/// call (as axum's router does per request) never allocates one; a clone
/// called through again (a retry layer's, per request) allocates one,
/// once.
pub struct Shared<T: 'static> {
    /// The state, counted or leaked: what the handle itself reads through,
    /// one pointer away.
    root: Root<T>,
    /// The count of its own, once a second call went through the handle.
    own: Option<Arc<OwnLine<Arc<T>>>>,
    /// A call went through this handle: see [`Handle::called`].
    called: bool,
}

/// What a call keeps of a [`Shared`] handle for as long as it runs: on
/// the handle's own count if it has one.
pub struct Held<T: 'static>(Reach<T>);

/// How a [`Shared`] handle itself reaches the state.
enum Root<T: 'static> {
    /// On the state's own count.
    Counted(Arc<T>),
    /// The state's `Arc`, leaked: nothing counted.
    Leaked(&'static Arc<T>),
}

impl<T> Root<T> {
    const fn arc(&self) -> &Arc<T> {
        match self {
            Self::Counted(arc) => arc,
            Self::Leaked(arc) => arc,
        }
    }
}

/// How a [`Held`] handle reaches the state.
enum Reach<T: 'static> {
    /// The state's own count.
    Counted(Arc<T>),
    /// A count of one handle's own, holding one of the state's. The
    /// allocation is aligned to a cache line, so its counts, at its start,
    /// share a line with no other handle's.
    Own(Arc<OwnLine<Arc<T>>>),
    /// The state's `Arc`, leaked: nothing counted.
    Leaked(&'static Arc<T>),
}

impl<T> Reach<T> {
    fn arc(&self) -> &Arc<T> {
        match self {
            Self::Counted(arc) => arc,
            Self::Own(own) => own,
            Self::Leaked(arc) => arc,
        }
    }
}

impl<T> Shared<T> {
    /// A handle on `value`, counted.
    #[must_use]
    pub fn new(value: T) -> Self {
        Self::from_arc(Arc::new(value))
    }

    /// A handle counting on `arc`.
    #[must_use]
    pub const fn from_arc(arc: Arc<T>) -> Self {
        Self::from_root(Root::Counted(arc))
    }

    /// A handle on state leaked already: nothing counted.
    const fn leaked(arc: &'static Arc<T>) -> Self {
        Self::from_root(Root::Leaked(arc))
    }

    const fn from_root(root: Root<T>) -> Self {
        Self {
            root,
            own: None,
            called: false,
        }
    }

    /// Gives the state the process's lifetime: this handle, its clones and
    /// their calls reach it by reference, touching no count. Its memory is
    /// never freed, so leak state built once at start-up, not per request.
    #[must_use]
    pub fn leak(self) -> Self {
        match self.root {
            Root::Leaked(arc) => Self::leaked(arc),
            Root::Counted(arc) => Self::leaked(Box::leak(Box::new(arc))),
        }
    }

    /// The state's own `Arc` (to count its holders, or take a `Weak`).
    #[must_use]
    pub const fn as_arc(&self) -> &Arc<T> {
        self.root.arc()
    }

    /// What a call keeps, taken from a handle made for that one call (a
    /// clone looked up per call, say): no count raised.
    #[inline(always)]
    #[must_use]
    pub fn into_held(self) -> Held<T> {
        Held(match (self.own, self.root) {
            (Some(own), _) => Reach::Own(own),
            (None, Root::Counted(arc)) => Reach::Counted(arc),
            (None, Root::Leaked(arc)) => Reach::Leaked(arc),
        })
    }

    #[cold]
    fn own(&mut self) {
        self.own = Some(Arc::new(OwnLine(Arc::clone(self.root.arc()))));
    }
}

/// How a service reaches the state it shares with its calls, and what
/// each call keeps of it: a [`Shared`] handle, or a `&'static` reference
/// to state leaked for the process's lifetime (whose calls keep the same
/// reference and count nothing).
pub trait Handle: Deref {
    /// What a call keeps of the handle for as long as it runs.
    type Held: Deref<Target = Self::Target>;

    /// A call goes through this handle. A [`Shared`] handle's second gives
    /// it a count of its own, which the [`held`](Self::held) handles of its
    /// later calls raise and lower.
    fn called(&mut self);

    /// What a call keeps for as long as it runs: on this handle's own
    /// count, if it has one.
    #[must_use]
    fn held(&self) -> Self::Held;
}

impl<T: ?Sized> Handle for &'static T {
    type Held = Self;

    #[inline(always)]
    fn called(&mut self) {}

    #[inline(always)]
    fn held(&self) -> Self {
        self
    }
}

impl<T> Handle for Shared<T> {
    type Held = Held<T>;

    #[inline(always)]
    fn called(&mut self) {
        if !self.called {
            self.called = true;
        } else if self.own.is_none() && matches!(self.root, Root::Counted(_)) {
            self.own();
        }
    }

    #[inline(always)]
    fn held(&self) -> Held<T> {
        Held(match (&self.own, &self.root) {
            (Some(own), _) => Reach::Own(Arc::clone(own)),
            (None, Root::Counted(arc)) => Reach::Counted(Arc::clone(arc)),
            (None, Root::Leaked(arc)) => Reach::Leaked(arc),
        })
    }
}

/// A new holder: on the state's own count, or leaked as the original is.
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        match self.root {
            Root::Counted(ref arc) => Self::from_arc(Arc::clone(arc)),
            Root::Leaked(arc) => Self::leaked(arc),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.root.arc()
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counted_on = match (&self.own, &self.root) {
            (Some(_), _) => "its own count",
            (None, Root::Counted(_)) => "the state's count",
            (None, Root::Leaked(_)) => "nothing (leaked)",
        };
        f.debug_struct("Shared")
            .field("state", &**self)
            .field("counted_on", &counted_on)
            .field("called", &self.called)
            .finish()
    }
}

impl<T> Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.arc()
    }
}

impl<T: fmt::Debug> fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.0 {
            Reach::Counted(_) => "Counted",
            Reach::Own(_) => "Own",
            Reach::Leaked(_) => "Leaked",
        };
        f.debug_tuple(how).field(&**self).finish()
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use super::*;

    /// The state's own count of holders.
    fn holders<T>(shared: &Shared<T>) -> usize {
        Arc::strong_count(shared.as_arc())
    }

    #[test]
    fn a_handle_that_keeps_calling_holds_its_calls_on_a_count_of_its_own() {
        let layer = Shared::new(7_u32);
        let mut service = layer.clone();
        assert_eq!(holders(&layer), 2);
        service.called();
        let first = service.held();
        assert_eq!(holders(&layer), 3, "the first call holds the state's");
        drop(first);
        service.called();
        assert_eq!(holders(&layer), 3, "its own count holds one of the state's");
        let calls: Vec<_> = (0..5).map(|_| service.held()).collect();
        assert_eq!(holders(&layer), 3, "its calls hold its own");
        assert!(calls.iter().all(|call| **call == 7));
        let clone = service.clone();
        assert!(clone.own.is_none() && !clone.called);
        assert_eq!(holders(&layer), 4, "a clone counts on the state's");
        drop((service, clone));
        assert_eq!(holders(&layer), 2, "the calls keep the own count");
        drop(calls);
        assert_eq!(holders(&layer), 1);

        let taken = layer.clone().into_held();
        assert_eq!(holders(&layer), 2, "a handle taken is its call's, no more");
        drop(taken);
        let mut service = layer.clone();
        service.called();
        service.called();
        let taken = service.into_held();
        assert!(matches!(taken.0, Reach::Own(_)), "its own count goes along");
        assert_eq!(holders(&layer), 2);
        drop(taken);
        assert_eq!(holders(&layer), 1);
    }

    #[test]
    fn a_leaked_handle_and_its_clones_and_calls_count_nothing() {
        let layer = Shared::new(String::from("state"));
        let arc = Arc::clone(layer.as_arc());
        let mut leaked = layer.leak();
        let before = Arc::strong_count(&arc);
        for _ in 0..3 {
            leaked.called();
            let call = leaked.held();
            assert_eq!(*call, "state");
            assert!(matches!(call.0, Reach::Leaked(_)));
        }
        assert!(leaked.own.is_none(), "no count of its own to make");
        let clone = leaked.clone();
        assert_eq!(Arc::strong_count(&arc), before);
        assert!(Arc::ptr_eq(clone.as_arc(), &arc));
        assert!(matches!(clone.leak().root, Root::Leaked(_)));
        assert!(matches!(leaked.into_held().0, Reach::Leaked(_)));
    }
}
