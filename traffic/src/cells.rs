//! The cells and who goes where: an explicit table of slots, changed only
//! when an operator says so.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::key::{AsKey, KeyHash};

/// Slots a key space is cut into: a key's slot is its hash's top 12 bits,
/// and each slot belongs to one cell.
pub const SLOTS: u16 = 4_096;

/// The slot `key` falls in.
#[must_use]
pub const fn slot_of(key: KeyHash) -> u16 {
    // The top 12 bits: below 4,096.
    #[allow(clippy::cast_possible_truncation)]
    let slot = (key.get() >> 52) as u16;
    slot
}

/// The cells a [`CellRouter`](crate::CellRouter) routes to, and which
/// keys each serves: cheap to clone, every clone the same table.
///
/// Keys fall into [`SLOTS`] slots by their stable hash; each slot belongs
/// to one cell, and single keys may be pinned to a cell of their own. The
/// table changes only when told: adding a cell moves no key; moving slots
/// or pinning keys moves those keys and no other. A change takes effect
/// for the next request: requests already routed finish on the cell they
/// went to, and [`retire`](Self::retire) waits for the last of them.
///
/// Reading the table to route a request takes no lock: the table is
/// replaced whole on each change.
///
/// # Example
///
/// ```
/// use palisade_traffic::{Cells, SLOTS};
///
/// # fn main() -> Result<(), palisade_traffic::CellError> {
/// // Two cells, half the slots each.
/// let cells = Cells::new([("a", "service a"), ("b", "service b")])?;
/// let before = cells.cell_of("user-42");
/// // A third cell takes the upper quarter of the slots, and one key.
/// cells.add("c", "service c")?;
/// cells.assign(3 * SLOTS / 4..SLOTS, "c")?;
/// cells.pin("user-7", "c")?;
/// assert_eq!(cells.cell_of("user-7").as_deref(), Some("c"));
/// # let _ = before;
/// # Ok(()) }
/// ```
pub struct Cells<S> {
    shared: Arc<Shared<S>>,
}

/// The table requests read, and the lock changes take turns under.
struct Shared<S> {
    table: ArcSwap<Table<S>>,
    writer: Mutex<()>,
    /// Its OpenTelemetry gauge, once registered.
    #[cfg(feature = "otel")]
    instruments: std::sync::OnceLock<opentelemetry::metrics::ObservableGauge<u64>>,
}

impl<S> Clone for Cells<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Cells<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.shared.table.load();
        f.debug_struct("Cells")
            .field(
                "cells",
                &table
                    .cells
                    .iter()
                    .map(|cell| &*cell.name)
                    .collect::<Vec<_>>(),
            )
            .field("pinned", &table.pinned.len())
            .finish_non_exhaustive()
    }
}

/// One table: the cells, each slot's cell, the pinned keys.
pub(crate) struct Table<S> {
    pub(crate) cells: Vec<Cell<S>>,
    /// Each slot's cell, as an index into `cells`.
    slots: Box<[u16]>,
    pinned: HashMap<KeyHash, u16>,
    fallback: u16,
}

/// A cell: its name, its service, and its requests under way.
pub(crate) struct Cell<S> {
    pub(crate) name: Arc<str>,
    pub(crate) service: S,
    pub(crate) in_flight: Arc<InFlight>,
}

impl<S: Clone> Clone for Cell<S> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            service: self.service.clone(),
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

impl<S: Clone> Clone for Table<S> {
    fn clone(&self) -> Self {
        Self {
            cells: self.cells.clone(),
            slots: self.slots.clone(),
            pinned: self.pinned.clone(),
            fallback: self.fallback,
        }
    }
}

/// A cell's requests under way; once the cell is being retired, told
/// when the count falls to zero.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    /// Whether `retire` waits for `idle`: until then a request that ends
    /// wakes no one (waking takes `Notify`'s lock, a quarter of a routed
    /// call's cost).
    watched: AtomicBool,
    idle: Notify,
}

impl InFlight {
    /// A request under way on the cell, unless `retire` took the cell
    /// meanwhile (then `None`: route again). With `retire`'s table swap,
    /// store of `watched` and load of the count, all sequentially
    /// consistent: either it sees this count, and waits for it, or this
    /// sees it watching, and leaves.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Entered> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let entered = Entered(Arc::clone(self));
        (!self.watched.load(Ordering::SeqCst)).then_some(entered)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// A request under way on a cell, until dropped.
#[derive(Debug)]
pub(crate) struct Entered(Arc<InFlight>);

impl Drop for Entered {
    fn drop(&mut self) {
        // With `retire`'s store and load, both sequentially consistent:
        // either it sees the count at zero, or this sees it watching.
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.watched.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// What a change to the cells could not do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CellError {
    /// No cell by that name.
    Unknown(String),
    /// A cell by that name is there already.
    Exists(String),
    /// No cells were given.
    Empty,
    /// More than 4,096 cells.
    TooMany,
    /// Slots past [`SLOTS`], or an empty range.
    Slots(Range<u16>),
    /// The cell still serves keys (slots, pinned keys, or the fallback):
    /// move them first.
    Serving(String),
}

impl fmt::Display for CellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(name) => write!(f, "no cell named {name:?}"),
            Self::Exists(name) => write!(f, "a cell named {name:?} exists already"),
            Self::Empty => f.write_str("a router needs at least one cell"),
            Self::TooMany => f.write_str("at most 4,096 cells"),
            Self::Slots(range) => write!(
                f,
                "slots {}..{} are not a non-empty range within 0..{SLOTS}",
                range.start, range.end
            ),
            Self::Serving(name) => write!(
                f,
                "cell {name:?} still serves keys: move its slots and pinned keys, and the fallback, first"
            ),
        }
    }
}

impl std::error::Error for CellError {}

/// The cell of `slot` when `count` cells share the slots at first: runs
/// of `SLOTS / count` rounded up, unless that leaves a cell without a slot
/// (the runs were rounded up so far that the last cells got none: 65
/// cells left the 65th none), then runs that differ by one at most.
fn first_runs(count: u16, slot: u16) -> u16 {
    let (count, slot, slots) = (u32::from(count), u32::from(slot), u32::from(SLOTS));
    let run = slots.div_ceil(count);
    let cell = if run * (count - 1) < slots {
        slot / run
    } else {
        slot * count / slots
    };
    u16::try_from(cell).unwrap_or(u16::MAX)
}

impl<S: Clone> Cells<S> {
    /// The cells `cells` (name, service), the slots shared among them in
    /// runs in the order given, of `SLOTS / n` rounded up each and the
    /// last taking what is left, or, where that would leave the last cells
    /// none (65 cells or more, for most counts), of `SLOTS / n` rounded up
    /// or down; the first is the fallback for requests that name no key.
    ///
    /// # Errors
    ///
    /// [`CellError::Empty`] for no cell, [`CellError::Exists`] for a name
    /// given twice, [`CellError::TooMany`] past 4,096.
    pub fn new<N: Into<Arc<str>>>(
        cells: impl IntoIterator<Item = (N, S)>,
    ) -> Result<Self, CellError> {
        let mut made: Vec<Cell<S>> = Vec::new();
        for (name, service) in cells {
            let name = name.into();
            if made.iter().any(|cell| cell.name == name) {
                return Err(CellError::Exists(name.to_string()));
            }
            made.push(Cell {
                name,
                service,
                in_flight: Arc::default(),
            });
        }
        let count = u16::try_from(made.len()).map_err(|_| CellError::TooMany)?;
        if count == 0 {
            return Err(CellError::Empty);
        }
        if count > SLOTS {
            return Err(CellError::TooMany);
        }
        let slots = (0..SLOTS).map(|slot| first_runs(count, slot)).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                table: ArcSwap::from_pointee(Table {
                    cells: made,
                    slots,
                    pinned: HashMap::new(),
                    fallback: 0,
                }),
                writer: Mutex::new(()),
                #[cfg(feature = "otel")]
                instruments: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Changes the table with `change`, on a copy put in place whole;
    /// changes take turns, requests never wait for them.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Table<S>) -> Result<T, CellError>,
    ) -> Result<T, CellError> {
        let _turn = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Table::clone(&self.shared.table.load());
        let changed = change(&mut next)?;
        self.shared.table.store(Arc::new(next));
        Ok(changed)
    }

    /// Adds cell `name`, serving no key until slots are
    /// [assigned](Self::assign) or keys [pinned](Self::pin) to it.
    ///
    /// # Errors
    ///
    /// [`CellError::Exists`] when a cell has that name.
    pub fn add(&self, name: &str, service: S) -> Result<(), CellError> {
        self.change(|table| {
            if table.index(name).is_ok() {
                return Err(CellError::Exists(name.to_owned()));
            }
            if table.cells.len() >= usize::from(SLOTS) {
                return Err(CellError::TooMany);
            }
            table.cells.push(Cell {
                name: Arc::from(name),
                service,
                in_flight: Arc::default(),
            });
            Ok(())
        })
    }

    /// Moves the keys of `slots` to cell `name`; keys pinned elsewhere
    /// stay where they are pinned.
    ///
    /// # Errors
    ///
    /// [`CellError::Slots`] for a range that is empty or past [`SLOTS`],
    /// [`CellError::Unknown`] for no such cell.
    pub fn assign(&self, slots: Range<u16>, name: &str) -> Result<(), CellError> {
        if slots.is_empty() || slots.end > SLOTS {
            return Err(CellError::Slots(slots));
        }
        self.change(|table| {
            let cell = table.index(name)?;
            table.slots[usize::from(slots.start)..usize::from(slots.end)].fill(cell);
            Ok(())
        })
    }

    /// Pins `key` to cell `name`, whatever its slot's cell.
    ///
    /// # Errors
    ///
    /// [`CellError::Unknown`] for no such cell.
    pub fn pin(&self, key: impl AsKey, name: &str) -> Result<(), CellError> {
        let key = key.key_hash();
        self.change(|table| {
            let cell = table.index(name)?;
            table.pinned.insert(key, cell);
            Ok(())
        })
    }

    /// Lets `key` follow its slot again.
    pub fn unpin(&self, key: impl AsKey) {
        let key = key.key_hash();
        let _ = self.change(|table| {
            table.pinned.remove(&key);
            Ok(())
        });
    }

    /// Sends requests that name no key to cell `name`.
    ///
    /// # Errors
    ///
    /// [`CellError::Unknown`] for no such cell.
    pub fn fallback(&self, name: &str) -> Result<(), CellError> {
        self.change(|table| {
            table.fallback = table.index(name)?;
            Ok(())
        })
    }

    /// Removes cell `name` once it serves no key and its last request
    /// under way has finished; returns its service.
    ///
    /// The cell leaves the table at once; the wait is for its requests
    /// under way, and under
    /// [`CellRouter::new_for_http`](crate::CellRouter::new_for_http) for
    /// their response bodies too, which a stream that never ends (server
    /// events, a watch) holds for ever. Bound it with a timeout where
    /// that may be: dropped, `retire` drops the service with it (the
    /// requests under way keep their own clones), and the cell is gone.
    ///
    /// # Errors
    ///
    /// [`CellError::Serving`] while slots, pinned keys or the fallback
    /// are still the cell's; [`CellError::Unknown`] for no such cell.
    pub async fn retire(&self, name: &str) -> Result<S, CellError> {
        let removed = self.change(|table| {
            let cell = table.index(name)?;
            if table.serves(cell) {
                return Err(CellError::Serving(name.to_owned()));
            }
            let removed = table.cells.remove(usize::from(cell));
            // Indices past the removed cell move down one.
            let shift = |index: &mut u16| {
                if *index > cell {
                    *index -= 1;
                }
            };
            table.slots.iter_mut().for_each(shift);
            table.pinned.values_mut().for_each(shift);
            shift(&mut table.fallback);
            Ok(removed)
        })?;
        removed.in_flight.watched.store(true, Ordering::SeqCst);
        loop {
            let idle = removed.in_flight.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if removed.in_flight.count.load(Ordering::SeqCst) == 0 {
                return Ok(removed.service);
            }
            idle.await;
        }
    }
}

impl<S> Cells<S> {
    /// The name of the cell `key` is routed to now.
    #[must_use]
    pub fn cell_of(&self, key: impl AsKey) -> Option<Arc<str>> {
        let table = self.shared.table.load();
        let cell = table.route(Some(key.key_hash()));
        Some(Arc::clone(&table.cells.get(usize::from(cell))?.name))
    }

    /// Each cell's slots, as runs: what operators read before a move.
    #[must_use]
    pub fn assignments(&self) -> Vec<(Range<u16>, Arc<str>)> {
        let table = self.shared.table.load();
        let mut runs: Vec<(Range<u16>, Arc<str>)> = Vec::new();
        for (slot, &cell) in (0..SLOTS).zip(table.slots.iter()) {
            let name = &table.cells[usize::from(cell)].name;
            match runs.last_mut() {
                Some((range, last)) if Arc::ptr_eq(last, name) && range.end == slot => {
                    range.end = slot + 1;
                }
                _ => runs.push((slot..slot + 1, Arc::clone(name))),
            }
        }
        runs
    }

    /// Requests under way on cell `name` now.
    #[must_use]
    pub fn in_flight(&self, name: &str) -> Option<usize> {
        let table = self.shared.table.load();
        let cell = table.index(name).ok()?;
        Some(table.cells[usize::from(cell)].in_flight.count())
    }

    /// Reports each cell's requests under way with OpenTelemetry (feature
    /// `otel`); `name` becomes the `router` attribute. Once per cells and
    /// their clones; later calls change nothing. See the
    /// [`otel`](crate::otel) module for the names.
    #[cfg(feature = "otel")]
    pub fn instrument(&self, meter: &opentelemetry::metrics::Meter, name: impl Into<String>)
    where
        S: Send + Sync + 'static,
    {
        let shared = Arc::downgrade(&self.shared);
        let cells = move || {
            let shared = shared.upgrade()?;
            let table = shared.table.load();
            Some(
                table
                    .cells
                    .iter()
                    .map(|cell| (Arc::clone(&cell.name), cell.in_flight.count()))
                    .collect(),
            )
        };
        let _ = self
            .shared
            .instruments
            .get_or_init(|| crate::otel::in_flight_gauge(meter, name.into(), cells));
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Table<S>>> {
        self.shared.table.load()
    }
}

impl<S> Table<S> {
    fn index(&self, name: &str) -> Result<u16, CellError> {
        self.cells
            .iter()
            .position(|cell| &*cell.name == name)
            // Never more than `SLOTS` cells.
            .and_then(|index| u16::try_from(index).ok())
            .ok_or_else(|| CellError::Unknown(name.to_owned()))
    }

    fn serves(&self, cell: u16) -> bool {
        self.fallback == cell
            || self.slots.contains(&cell)
            || self.pinned.values().any(|&pinned| pinned == cell)
    }

    /// The cell a request with `key` goes to.
    pub(crate) fn route(&self, key: Option<KeyHash>) -> u16 {
        let Some(key) = key else {
            return self.fallback;
        };
        if !self.pinned.is_empty()
            && let Some(&cell) = self.pinned.get(&key)
        {
            return cell;
        }
        self.slots[usize::from(slot_of(key))]
    }
}
