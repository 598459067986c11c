//! A budget's window shared by the fleet through Redis (feature `redis`).
//!
//! Each process adds what it counted, bucket by bucket, to hashes in
//! Redis (`{prefix:name}:<bucket>`, fields `good` and `bad`, expiring with
//! the window) and reads the whole window back, so every process's budget
//! is the fleet's, and a process that restarts finds the window where the
//! fleet left it. Only the objective's window is shared; the burn-rate
//! alerts stay each process's own (a rate is the same seen from any
//! replica that takes its share of the traffic).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::time::Instant;

use crate::budget::ErrorBudget;
use crate::window::Counts;

/// What the budget last read of the fleet's window.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The fleet's counts over the window, as of `as_of_ms`; this
    /// process's written counts included.
    fleet: Counts,
    as_of_ms: u64,
    /// How stale the view may be before the budget stops trusting it.
    fresh_for_ms: u64,
    /// What this process had written of each bucket.
    flushed: HashMap<u64, Counts>,
}

/// The objective's counts: the fleet's, and what this process counted
/// since it last wrote its own, while the view is fresh; `local`
/// otherwise. With when the fleet's were read.
pub(crate) fn counts(budget: &ErrorBudget, local: Counts, at_ms: u64) -> (Counts, Option<u64>) {
    let view = budget
        .inner()
        .fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(view) = view.as_ref() else {
        return (local, None);
    };
    if at_ms.saturating_sub(view.as_of_ms) > view.fresh_for_ms {
        return (local, None);
    }
    let (ring, buckets) = budget.objective_ring();
    let last = ring.bucket_of(at_ms);
    let mut counts = view.fleet;
    for bucket in last.saturating_sub(buckets as u64 - 1)..=last {
        let here = ring.bucket_counts(bucket);
        let added = view.flushed.get(&bucket).copied().unwrap_or_default();
        counts.good = counts
            .good
            .saturating_add(here.good.saturating_sub(added.good));
        counts.bad = counts
            .bad
            .saturating_add(here.bad.saturating_sub(added.bad));
    }
    (counts, Some(view.as_of_ms))
}

impl ErrorBudget {
    /// Shares the objective's window with every budget shared as `name`
    /// on `redis` (under the `palisade:slo` prefix): every `every`, a task
    /// adds this process's new counts to Redis and reads the fleet's
    /// window back, until the budget is dropped. Reports are then the
    /// fleet's ([`Report::fleet_as_of`](crate::Report::fleet_as_of)) and
    /// outlive a restart; while Redis does not answer (for three rounds),
    /// they are this process's own again, and what it counted meanwhile
    /// is added when Redis is back. A round that Redis has not answered
    /// within three periods (when the fleet's counts it would read are
    /// stale anyway) is given up, and the next starts a period after.
    ///
    /// `name` alone says which budgets are one: deployments sharing a
    /// Redis (staging beside production, two tenants' systems) need names
    /// of their own, such as `staging:checkout`, or each burns the other's
    /// budget.
    ///
    /// Once per budget and its clones while its sharing runs: a second
    /// call shares nothing more (it would add this process's counts to
    /// the fleet's twice), and says so in a warning.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or when `every` is zero.
    pub fn share<C>(&self, redis: C, name: &str, every: Duration)
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        assert!(!every.is_zero(), "a sharing round needs a period");
        let runtime = tokio::runtime::Handle::current();
        if self
            .inner()
            .shared
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::warn!(target: "palisade_slo", name, "this budget is shared already; not shared again");
            return;
        }
        let budget = self.downgrade();
        let prefix = format!("{{palisade:slo:{name}}}");
        let replica = format!("{:016x}", self.inner().replica);
        let give_up_after = every.saturating_mul(3);
        let fresh_for_ms = u64::try_from(give_up_after.as_millis()).unwrap_or(u64::MAX);
        // However the task ends (the budget dropped, its runtime shut
        // down, even before it first ran), the budget may be shared again.
        let sharing = Sharing(budget.clone());
        runtime.spawn(async move {
            let _sharing = sharing;
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                ticks.tick().await;
                let Some(inner) = budget.upgrade() else {
                    return;
                };
                let budget = ErrorBudget::from_shared(inner);
                let round = round(&budget, redis.clone(), (&prefix, &replica), fresh_for_ms);
                let done = tokio::time::timeout(give_up_after, round)
                    .await
                    .unwrap_or_else(|_| {
                        // The next round a period from now, not at once.
                        ticks.reset();
                        Err((redis::ErrorKind::Io, "no answer within a sharing round").into())
                    });
                match done {
                    Ok(()) if std::mem::take(&mut warned) => tracing::info!(
                        target: "palisade_slo",
                        budget = %prefix,
                        "redis answers again; the budget is the fleet's"
                    ),
                    Ok(()) => {}
                    Err(error) if !std::mem::replace(&mut warned, true) => tracing::warn!(
                        target: "palisade_slo",
                        budget = %prefix,
                        %error,
                        "redis failed; the budget counts this process's calls alone until it answers"
                    ),
                    Err(_) => {}
                }
            }
        });
    }
}

/// A budget's sharing, under way until dropped.
struct Sharing(std::sync::Weak<crate::budget::Inner>);

impl Drop for Sharing {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner
                .shared
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// One round: writes this process's counts of each bucket it has counts
/// in (its own fields: rewriting them is harmless, so a round that failed
/// half-way is simply done again), then reads the window.
async fn round<C: ConnectionLike>(
    budget: &ErrorBudget,
    mut redis: C,
    (prefix, replica): (&str, &str),
    fresh_for_ms: u64,
) -> redis::RedisResult<()> {
    let at_ms = budget.at(Instant::now());
    let (ring, buckets) = budget.objective_ring();
    let last = ring.bucket_of(at_ms);
    let first = last.saturating_sub(buckets as u64 - 1);
    let keep_ms = ring.resolution_ms().saturating_mul(buckets as u64 + 1);
    let (good, bad) = (format!("{replica}.good"), format!("{replica}.bad"));
    let mut written = HashMap::new();
    // One transaction: a count is never left without its expiry (a
    // failover or a cut between the two commands kept the key for good).
    let mut write = redis::pipe();
    write.atomic();
    for bucket in first..=last {
        let here = ring.bucket_counts(bucket);
        if here.total() == 0 {
            continue;
        }
        let key = format!("{prefix}:{bucket}");
        write
            .hset_multiple(&key, &[(&good, here.good), (&bad, here.bad)])
            .ignore()
            .pexpire(&key, i64::try_from(keep_ms).unwrap_or(i64::MAX))
            .ignore();
        written.insert(bucket, here);
    }
    if !written.is_empty() {
        write.query_async::<()>(&mut redis).await?;
    }
    let mut names = redis::pipe();
    for bucket in first..=last {
        names.hgetall(format!("{prefix}:{bucket}"));
    }
    let hashes: Vec<HashMap<String, u64>> = names.query_async(&mut redis).await?;
    let mut fleet = Counts::default();
    for hash in &hashes {
        for (field, count) in hash {
            // Saturating: a count edited by hand (or a faulty replica's)
            // near 2^64 must not wrap into a small one.
            if field.ends_with(".good") {
                fleet.good = fleet.good.saturating_add(*count);
            } else if field.ends_with(".bad") {
                fleet.bad = fleet.bad.saturating_add(*count);
            }
        }
    }
    let mut view = budget
        .inner()
        .fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *view = Some(View {
        fleet,
        as_of_ms: at_ms,
        fresh_for_ms,
        flushed: written,
    });
    Ok(())
}
