//! The objective's window shared through a real Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`): budgets in one process stand for
//! the processes of a fleet, each under a name of its test's own.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use palisade_slo::{Counts, ErrorBudget, Objective, Report};
use palisade_testkit::servers::{redis_proxy, redis_url};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

const EVERY: Duration = Duration::from_millis(50);

async fn connect(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(1);
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .expect("a reachable Redis (run scripts/services)")
}

/// A budget shared as `name` on `url`, with `good` and `bad` calls.
async fn member(url: &str, name: &str, good: u64, bad: u64) -> ErrorBudget {
    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    for call in 0..good + bad {
        budget.record(call < good, budget.now());
    }
    budget.share(connect(url).await, name, EVERY);
    budget
}

fn report(budget: &ErrorBudget) -> Report {
    budget.report(budget.now())
}

/// Waits until `budget`'s report says so, or fails after ten seconds.
async fn eventually(budget: &ErrorBudget, what: &str, done: impl Fn(&Report) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = report(budget);
        if done(&report) {
            return;
        }
        assert!(Instant::now() < deadline, "never: {what}: {report:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn name() -> String {
    format!("test-{}", fastrand::u64(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_reads_the_fleets_window_and_a_newcomer_finds_it() {
    let name = name();
    let a = member(&redis_url(), &name, 10, 5).await;
    let b = member(&redis_url(), &name, 20, 0).await;
    let fleet = Counts { good: 30, bad: 5 };
    for budget in [&a, &b] {
        eventually(budget, "the fleet's counts", |report| {
            report.counts() == fleet && report.fleet_as_of().is_some()
        })
        .await;
    }
    // A call counted here is in this member's report at once, and in the
    // others' after a round.
    a.record(false, a.now());
    assert_eq!(report(&a).counts(), Counts { good: 30, bad: 6 });
    eventually(&b, "the new call", |report| report.counts().bad == 6).await;
    // A process that restarts (or joins) finds the window where the fleet
    // left it, its leavers' calls included.
    drop(a);
    let newcomer = member(&redis_url(), &name, 0, 0).await;
    eventually(&newcomer, "the fleet's window", |report| {
        report.counts() == Counts { good: 30, bad: 6 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_the_budget_is_the_processs_own_and_says_so() {
    let (proxy, url) = redis_proxy().await;
    let name = name();
    let other = member(&redis_url(), &name, 100, 0).await;
    let budget = member(&url, &name, 0, 3).await;
    eventually(&budget, "the fleet's counts", |report| {
        report.counts() == Counts { good: 100, bad: 3 }
    })
    .await;
    proxy.cut().await;
    eventually(&budget, "its own counts", |report| {
        report.fleet_as_of().is_none() && report.counts() == Counts { good: 0, bad: 3 }
    })
    .await;
    // Counted alone, added when Redis is back.
    budget.record(false, budget.now());
    proxy.resume().await;
    eventually(&other, "the calls counted alone", |report| {
        report.counts() == Counts { good: 100, bad: 4 }
    })
    .await;
}

/// A connection that stops answering (its commands never complete) while
/// `silent`, counting the commands sent meanwhile.
#[derive(Clone)]
struct Silenced {
    inner: ConnectionManager,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    unanswered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silenced {
    fn unanswered<'a, T: Send + 'a>(&self) -> redis::RedisFuture<'a, T> {
        self.unanswered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn is_silent(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl redis::aio::ConnectionLike for Silenced {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        if self.is_silent() {
            return self.unanswered();
        }
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        if self.is_silent() {
            return self.unanswered();
        }
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A Redis that stops answering holds up no round for good: each is
/// given up by the next, which asks again, and sharing resumes when it
/// answers. (A round waited for its answer for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_holds_up_no_round_for_good() {
    let name = name();
    let connection = Silenced {
        inner: connect(&redis_url()).await,
        silent: std::sync::Arc::default(),
        unanswered: std::sync::Arc::default(),
    };
    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    budget.record(true, budget.now());
    budget.share(connection.clone(), &name, EVERY);
    eventually(&budget, "the fleet's counts", |report| {
        report.fleet_as_of().is_some()
    })
    .await;
    connection
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection
        .unanswered
        .load(std::sync::atomic::Ordering::SeqCst)
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "rounds stopped at the first unanswered one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually(&budget, "its own counts", |report| {
        report.fleet_as_of().is_none()
    })
    .await;
    connection
        .silent
        .store(false, std::sync::atomic::Ordering::SeqCst);
    budget.record(false, budget.now());
    eventually(&budget, "the fleet's counts again", |report| {
        report.fleet_as_of().is_some() && report.counts() == Counts { good: 1, bad: 1 }
    })
    .await;
}

/// Sharing a budget twice shares it once: its counts are not the fleet's
/// twice over. (Each call made a replica of its own, each writing every
/// count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_shared_twice_counts_once() {
    let name = name();
    let budget = member(&redis_url(), &name, 10, 0).await;
    budget
        .clone()
        .share(connect(&redis_url()).await, &name, EVERY);
    let newcomer = member(&redis_url(), &name, 0, 0).await;
    eventually(&newcomer, "the fleet's counts", |report| {
        report.counts() == Counts { good: 10, bad: 0 }
    })
    .await;
    // Rounds enough for a second replica to have written its counts too.
    tokio::time::sleep(EVERY * 6).await;
    assert_eq!(report(&newcomer).counts(), Counts { good: 10, bad: 0 });
}

/// A budget whose sharing ended with its runtime can be shared again,
/// and its counts are the fleet's once. (The flag that keeps a budget
/// from being shared twice stayed set; then each sharing wrote the counts
/// under a replica name of its own, and the fleet counted them twice.)
#[test]
fn a_budget_can_be_shared_again_once_its_sharing_ended() {
    let name = name();
    let budget = ErrorBudget::new(Objective::new(0.99)).unwrap();
    budget.record(true, budget.now());
    let shared_once = |report: &Report| report.counts() == Counts { good: 1, bad: 0 };
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async {
        budget.share(connect(&redis_url()).await, &name, EVERY);
        eventually(&budget, "shared", |report| {
            report.fleet_as_of().is_some() && shared_once(report)
        })
        .await;
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        budget.share(connect(&redis_url()).await, &name, EVERY);
        let again = report(&budget).fleet_as_of();
        eventually(&budget, "shared again", |report| {
            report.fleet_as_of() > again
        })
        .await;
        // Rounds enough for a second replica's counts to show.
        tokio::time::sleep(EVERY * 6).await;
        assert_eq!(report(&budget).counts(), Counts { good: 1, bad: 0 });
    });
}
