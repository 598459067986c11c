//! palisade-traffic's cell router against tower's `Steer`, and its canary
//! split against the bare service, in front of no-op services.
//!
//! Each is driven as users drive a tower service: `ready().await`, then
//! `call().await`, in one `block_on` of a current-thread runtime, and
//! built once outside the timed loop:
//!
//! - `steer`: tower's `Steer` over four cells, picking by the same stable
//!   key hash and slot the router uses (its `poll_ready` polls all four);
//! - `palisade_cells`: the router over four cells, by user id;
//! - `palisade_canary`: the canary split at 10%, by user id, every call
//!   timed and counted on its side.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_bench::{noop, ready_then_call};
use palisade_traffic::{AsKey, Canary, CanaryPlan, CanarySplit, CellRouter, Cells, slot_of};
use tower::service_fn;
use tower::steer::Steer;

fn route(c: &mut Criterion) {
    let cell = || service_fn(noop);
    let mut group = c.benchmark_group("traffic");
    let case = |name| BenchmarkId::new(name, "success_ready_call");
    ready_then_call(&mut group, case("bare"), cell());
    let steer = Steer::new(
        vec![cell(), cell(), cell(), cell()],
        |user: &u64, cells: &[_]| usize::from(slot_of(user.key_hash())) % cells.len(),
    );
    ready_then_call(&mut group, case("steer"), steer);
    let cells = Cells::new([("a", cell()), ("b", cell()), ("c", cell()), ("d", cell())])
        .expect("four cells");
    ready_then_call(
        &mut group,
        case("palisade_cells"),
        CellRouter::new(cells, |user: &u64| Some(*user)),
    );
    let canary =
        Canary::new(CanaryPlan::new().steps([0.1, 1.0]).min_calls(u64::MAX)).expect("a valid plan");
    ready_then_call(
        &mut group,
        case("palisade_canary"),
        CanarySplit::new(cell(), cell(), canary, |user: &u64| Some(*user)),
    );
    group.finish();
}

criterion_group!(traffic, route);
criterion_main!(traffic);
