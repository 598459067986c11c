//! The cost of palisade-slo's layer per call, against the bare no-op
//! service (no tower crate keeps an error budget to compare with).
//!
//! Every case is driven as users drive a tower service: `ready().await`,
//! then `call().await`, in one `block_on` of a current-thread runtime. The
//! layer is built once, outside the timed loop, on the workbook's alerts
//! over 30 days:
//!
//! - `palisade`: every call counted (two clock reads, two atomic adds);
//! - `palisade_latency`: with a latency threshold, so each call is timed;
//! - `palisade_shedding`: with a shedding rule that finds every call low
//!   priority while nothing fires, so each call also reads the budget's
//!   signal;
//! - `palisade_keyed`: `SloLayer::keyed` over 1,000 keys, each call
//!   looking its key's budget up (the key borrowed, as `HeaderKey` does).
//!
//! `budget` measures the core alone: `ErrorBudget::record`, and
//! `ErrorBudget::report` over the workbook's six windows.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_bench::{noop, ready_then_call};
use std::borrow::Cow;
use std::sync::LazyLock;

use palisade_slo::{BudgetKey, ErrorBudget, KeyedBudgets, Objective, Shedding, SloLayer};
use tower::{Layer, service_fn};

/// 1,000 tenants' names.
static TENANTS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..1_000).map(|n| format!("tenant-{n}")).collect());

/// Request `n` is tenant `n % 1000`'s, its name borrowed.
#[derive(Clone)]
struct Tenant;

impl BudgetKey<u64> for Tenant {
    fn key<'r>(&self, request: &'r u64) -> Option<Cow<'r, str>> {
        let index = usize::try_from(*request % 1_000).unwrap_or(0);
        Some(Cow::Borrowed(TENANTS[index].as_str()))
    }
}

fn layer(c: &mut Criterion) {
    let budget = || ErrorBudget::new(Objective::new(0.999)).expect("a valid objective");
    let slow = || {
        ErrorBudget::new(Objective::new(0.999).latency(Duration::from_millis(100)))
            .expect("a valid objective")
    };
    let mut group = c.benchmark_group("slo");
    let case = |name| BenchmarkId::new(name, "success_ready_call");
    ready_then_call(&mut group, case("bare"), service_fn(noop));
    ready_then_call(
        &mut group,
        case("palisade"),
        SloLayer::new(budget()).layer(service_fn(noop)),
    );
    ready_then_call(
        &mut group,
        case("palisade_latency"),
        SloLayer::new(slow()).layer(service_fn(noop)),
    );
    ready_then_call(
        &mut group,
        case("palisade_shedding"),
        SloLayer::new(budget())
            .shed(Shedding::low_priority(|_: &u64| true))
            .layer(service_fn(noop)),
    );
    let budgets = KeyedBudgets::new(Objective::new(0.999), 1_000).expect("a valid objective");
    for tenant in TENANTS.iter() {
        let _ = budgets.budget(tenant);
    }
    ready_then_call(
        &mut group,
        case("palisade_keyed"),
        SloLayer::keyed(budgets, Tenant).layer(service_fn(noop)),
    );
    group.finish();

    let mut group = c.benchmark_group("slo-budget");
    let budget = budget();
    let now = SystemTime::now();
    group.bench_function("record", |b| {
        let mut call = 0_u64;
        b.iter(|| {
            call += 1;
            budget.record(black_box(!call.is_multiple_of(1_000)), black_box(now));
        });
    });
    group.bench_function("report", |b| {
        b.iter(|| black_box(budget.report(black_box(now))));
    });
    group.finish();
}

criterion_group!(slo, layer);
criterion_main!(slo);
