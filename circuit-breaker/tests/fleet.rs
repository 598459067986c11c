//! Breakers sharing their transitions through a real Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`): replicas here are breakers in one
//! process, each with its own link (a replica of its own to the others),
//! under a prefix of its test's own. `tests/fleet_processes.rs` runs them
//! as processes.
#![cfg(feature = "redis")]

use std::future::Future;
use std::time::{Duration, Instant};

use palisade_circuit_breaker::fleet::{AlreadyJoined, Fleet, Member};
use palisade_circuit_breaker::{
    CircuitBreaker, Config, KeyedCircuitBreakerLayer, Outcome, Permit, SlidingWindow, State,
};
use palisade_testkit::proxy::Proxy;
use palisade_testkit::servers::{redis_proxy, redis_url};

/// Ten failures open it for 300 ms; one probe, whose success closes it.
fn config(max_wait: Duration) -> Config {
    Config::builder()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .open_duration(Duration::from_millis(300))
        .jitter(0.0)
        .half_open_permits(1)
        .half_open_successes(1)
        .half_open_max_wait(max_wait)
        .build()
        .unwrap()
}

/// A fleet on `url` under a prefix of the test's own.
fn fleet(url: &str) -> Fleet {
    fleet_under(url, &format!("palisade-test:{}", fastrand::u64(..)))
}

fn fleet_under(url: &str, prefix: &str) -> Fleet {
    Fleet::new(redis::Client::open(url).unwrap())
        .prefix(prefix)
        .poll_every(Duration::from_millis(200))
}

/// `replicas` breakers joined to one fleet, once every link is up.
async fn replicas(
    fleet: &Fleet,
    replicas: usize,
    max_wait: Duration,
) -> Vec<(CircuitBreaker, Member)> {
    let joined: Vec<_> = (0..replicas)
        .map(|_| {
            let breaker = CircuitBreaker::new(config(max_wait));
            let member = fleet.join("dependency", &breaker).unwrap();
            (breaker, member)
        })
        .collect();
    for (_, member) in &joined {
        eventually("every link is up", || !member.is_alone()).await;
    }
    joined
}

/// One breaker joined to `fleet`, once its link is up.
async fn replica(fleet: &Fleet) -> (CircuitBreaker, Member) {
    let mut joined = replicas(fleet, 1, Duration::from_secs(1)).await;
    joined.pop().unwrap()
}

/// Waits until `done` says so, or fails the test after ten seconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection of the test's own to Redis.
async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The value of `key`, if Redis holds one.
async fn get(
    redis: &mut redis::aio::MultiplexedConnection,
    key: impl redis::ToRedisArgs,
) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(redis).await.unwrap()
}

/// The first permit `breaker` gives, asked every few milliseconds; fails
/// the test, saying `what`, after ten seconds.
async fn first_permit(breaker: &CircuitBreaker, what: &str) -> Permit {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(permit) = breaker.try_acquire(Instant::now()) {
            return permit;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Failed calls through `breaker` until its own window trips.
fn trip(breaker: &CircuitBreaker) {
    while breaker.state() == State::Closed {
        let now = Instant::now();
        breaker
            .try_acquire(now)
            .expect("closed")
            .record(Outcome::Failure, now);
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_tripping_opens_the_fleet() {
    let fleet = fleet(&redis_url());
    let joined = replicas(&fleet, 3, Duration::from_secs(5)).await;
    trip(&joined[0].0);
    for (breaker, _) in &joined[1..] {
        eventually("the others open", || breaker.state() == State::Open).await;
        let counts = breaker.metrics(Instant::now()).counts;
        assert_eq!(counts.calls, 0, "opened without a failure of its own");
        assert!(breaker.try_acquire(Instant::now()).is_err());
    }
}

/// Every replica asks for a permit every few milliseconds; a permit is a
/// probe (the fleet is open), which `outcome` settles. Returns when each
/// replica's task has seen `probes` probes in all, with who probed when.
async fn probe_until(
    joined: &[(CircuitBreaker, Member)],
    probes: usize,
    outcome: Outcome,
) -> Vec<(usize, Instant)> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = joined
        .iter()
        .enumerate()
        .map(|(replica, (breaker, _))| {
            let (breaker, seen) = (breaker.clone(), seen.clone());
            tokio::spawn(async move {
                while seen.lock().unwrap().len() < probes {
                    let now = Instant::now();
                    if let Ok(permit) = breaker.try_acquire(now) {
                        seen.lock().unwrap().push((replica, now));
                        permit.record(outcome, now);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        within(Duration::from_secs(30), task).await.unwrap();
    }
    std::sync::Arc::into_inner(seen)
        .expect("every task has ended")
        .into_inner()
        .unwrap()
}

async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future).await.expect("in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_reaches_the_dependency_per_half_open_cycle() {
    let fleet = fleet(&redis_url());
    let joined = replicas(&fleet, 3, Duration::from_secs(10)).await;
    trip(&joined[0].0);
    for (breaker, _) in &joined {
        eventually("all open", || breaker.state() == State::Open).await;
    }
    // The dependency stays down: each probe fails and opens the fleet for
    // another 300 ms. Three replicas asking all the time get one probe
    // a cycle between them, never two in one open period.
    let probes = probe_until(&joined, 4, Outcome::Failure).await;
    assert_eq!(probes.len(), 4, "{probes:?}");
    for pair in probes.windows(2) {
        let apart = pair[1].1.duration_since(pair[0].1);
        assert!(
            apart >= Duration::from_millis(250),
            "two probes {apart:?} apart: {probes:?}"
        );
    }
    // It comes back: the next probe closes every replica.
    let closing = probe_until(&joined, 1, Outcome::Success).await;
    assert_eq!(closing.len(), 1);
    for (breaker, _) in &joined {
        eventually("all closed", || breaker.state() == State::Closed).await;
        assert!(breaker.try_acquire(Instant::now()).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_replica_went_away_is_taken_over_after_its_lease() {
    let fleet = fleet(&redis_url());
    let mut joined = replicas(&fleet, 2, Duration::from_millis(500)).await;
    trip(&joined[0].0);
    let (survivor, _) = joined.pop().unwrap();
    eventually("the survivor opens", || survivor.state() == State::Open).await;
    // The replica that tripped wins the first race (the survivor heard of
    // the open period later, so races later) and takes no call: it is
    // gone, and its lease runs out.
    let (gone, _) = joined.pop().unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    drop(gone);
    let permit = first_permit(&survivor, "the survivor never probed").await;
    assert_eq!(survivor.state(), State::HalfOpen);
    permit.record(Outcome::Success, Instant::now());
    assert_eq!(survivor.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cut_a_replica_goes_on_alone_and_rejoins() {
    let (proxy, url) = redis_proxy().await;
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    // Open 300 ms, then a minute once its probe fails: the open period is
    // still on when it rejoins, however long that takes.
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .open_duration(Duration::from_millis(300))
        .open_backoff(200.0, Duration::from_secs(60))
        .max_open_duration(Duration::from_secs(60))
        .jitter(0.0)
        .build()
        .unwrap();
    let breaker = &CircuitBreaker::new(config);
    let member = &fleet_under(&url, &prefix)
        .join("dependency", breaker)
        .unwrap();
    eventually("the link is up", || !member.is_alone()).await;
    proxy.cut().await;
    // Closed calls never wait on Redis.
    for _ in 0..1_000 {
        let now = Instant::now();
        breaker
            .try_acquire(now)
            .expect("closed")
            .record(Outcome::Success, now);
    }
    eventually("the link notices", || member.is_alone()).await;
    // Alone, it opens and half-opens on its own.
    trip(breaker);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probe = breaker.try_acquire(Instant::now()).expect("its own probe");
    probe.record(Outcome::Failure, Instant::now());
    assert_eq!(breaker.state(), State::Open);

    // Back with the fleet, which hears of its open period: a replica
    // joining now starts open.
    proxy.resume().await;
    eventually("the link is back", || !member.is_alone()).await;
    let newcomer = replicas(
        &fleet_under(&redis_url(), &prefix),
        1,
        Duration::from_secs(5),
    )
    .await;
    eventually("the newcomer opens", || {
        newcomer[0].0.state() == State::Open
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_replica_keeps_an_open_period_that_has_passed_to_itself() {
    let (proxy, url) = redis_proxy().await;
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let joined = replicas(&fleet_under(&url, &prefix), 1, Duration::from_secs(5)).await;
    let (breaker, member) = &joined[0];
    proxy.cut().await;
    eventually("the link notices", || member.is_alone()).await;
    // Alone, it trips; its 300 ms pass with no call, so it is still open
    // (it half-opens with its next call) when Redis comes back.
    trip(breaker);
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.resume().await;
    // Back only once it has read the fleet's state and said its own.
    eventually("the link is back", || !member.is_alone()).await;
    assert_eq!(breaker.state(), State::Open);
    let mut redis = redis().await;
    let open = get(&mut redis, format!("{{{prefix}:dependency}}:open")).await;
    assert_eq!(open, None, "an open period over already opens no one");
}

#[tokio::test]
async fn a_breaker_joins_one_fleet() {
    let fleet = fleet(&redis_url());
    let breaker = CircuitBreaker::new(config(Duration::from_secs(1)));
    let _member = fleet.join("dependency", &breaker).unwrap();
    assert_eq!(fleet.join("other", &breaker).unwrap_err(), AlreadyJoined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_breakers_share_each_key_alone() {
    // Two replicas' registries of breakers by host, sharing as "hosts".
    let fleet = fleet(&redis_url());
    let layers: Vec<_> = (0..2)
        .map(|_| {
            let layer =
                KeyedCircuitBreakerLayer::new(config(Duration::from_secs(5)), |host: &String| {
                    host.clone()
                });
            layer.registry().share(&fleet, "hosts").unwrap();
            layer
        })
        .collect();
    let key = |name: &str| name.to_owned();
    let (here, there) = (layers[0].registry(), layers[1].registry());
    let healthy = there.get(&key("b.example"));
    let before = there.get(&key("a.example"));
    // Whether or not the links are up yet: one that comes up tells the
    // fleet of its breaker's open period, and one that joins reads it.
    trip(&here.get(&key("a.example")));
    eventually("a.example opens there too", || {
        before.state() == State::Open
    })
    .await;
    assert_eq!(healthy.state(), State::Closed, "another key is not touched");
    // A replica that makes the key's breaker only now starts it open.
    let third =
        KeyedCircuitBreakerLayer::new(config(Duration::from_secs(5)), |host: &String| host.clone());
    third.registry().share(&fleet, "hosts").unwrap();
    let late = third.registry().get(&key("a.example"));
    eventually("a late replica opens a.example", || {
        late.state() == State::Open
    })
    .await;
    assert!(
        third.registry().share(&fleet, "hosts").is_err(),
        "shares once"
    );
}

/// Samples every breaker for `how_long`: none may close, since no probe
/// succeeded.
async fn none_closes(breakers: &[&CircuitBreaker], how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        for breaker in breakers {
            assert_ne!(
                breaker.state(),
                State::Closed,
                "closed with no probe succeeding"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_outlives_the_fleets_open_state_and_fails_closes_no_one() {
    let fleet = fleet(&redis_url());
    let joined = replicas(&fleet, 2, Duration::from_millis(300)).await;
    trip(&joined[0].0);
    for (breaker, _) in &joined {
        eventually("all open", || breaker.state() == State::Open).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (prober, permit) = 'won: loop {
        for (breaker, _) in &joined {
            if let Ok(permit) = breaker.try_acquire(Instant::now()) {
                break 'won (breaker, permit);
            }
        }
        assert!(Instant::now() < deadline, "nobody probed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // The probe hangs past its lease and the fleet's open state (300 ms
    // and the 200 ms poll after it), then fails.
    tokio::time::sleep(Duration::from_millis(700)).await;
    permit.record(Outcome::Failure, Instant::now());
    assert_eq!(prober.state(), State::Open);
    none_closes(&[&joined[0].0, &joined[1].0], Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_open_state_gone_from_redis_closes_no_one() {
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let joined = replicas(
        &fleet_under(&redis_url(), &prefix),
        2,
        Duration::from_secs(5),
    )
    .await;
    trip(&joined[0].0);
    for (breaker, _) in &joined {
        eventually("all open", || breaker.state() == State::Open).await;
    }
    // Evicted, lost in a failover: no verdict was given.
    let mut redis = redis().await;
    let deleted: u32 = redis::cmd("DEL")
        .arg(format!("{{{prefix}:dependency}}:open"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    none_closes(&[&joined[0].0, &joined[1].0], Duration::from_secs(1)).await;
    // Each probes on its own instead: a success closes it.
    for (breaker, _) in &joined {
        let permit = breaker.try_acquire(Instant::now()).expect("a probe");
        permit.record(Outcome::Success, Instant::now());
        assert_eq!(breaker.state(), State::Closed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_period_heard_far_in_the_future_is_held_no_longer_than_the_longest() {
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let config = Config::builder()
        .open_duration(Duration::from_millis(300))
        .max_open_duration(Duration::from_millis(500))
        .half_open_max_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    let fleet = fleet_under(&redis_url(), &prefix);
    let member = fleet.join("dependency", &breaker).unwrap();
    eventually("the link is up", || !member.is_alone()).await;
    // A replica an hour ahead of this one's clock, or anyone on the channel.
    let mut redis = redis().await;
    let hour_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    let () = redis::cmd("SET")
        .arg(format!("{{{prefix}:dependency}}:open"))
        .arg(hour_ahead.to_string())
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: u32 = redis::cmd("PUBLISH")
        .arg(fleet.channel("dependency"))
        .arg(format!("open {hour_ahead} 00ff trip"))
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually("it opens", || breaker.state() == State::Open).await;
    eventually("it probes within its longest open period and grace", || {
        breaker.try_acquire(Instant::now()).is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_settings_neither_panic_nor_leave_the_fleet() {
    // A fleet that polls all the time; one that never polls nor times
    // out; then no wait limit on a probe.
    let endless = Config::builder()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .half_open_max_wait(Duration::MAX)
        .build()
        .unwrap();
    for (fleet, config) in [
        (
            fleet(&redis_url()).poll_every(Duration::ZERO),
            config(Duration::from_secs(5)),
        ),
        (
            fleet(&redis_url())
                .poll_every(Duration::MAX)
                .timeout(Duration::MAX),
            config(Duration::from_secs(5)),
        ),
        (fleet(&redis_url()), endless),
    ] {
        let joined: Vec<_> = (0..2)
            .map(|_| {
                let breaker = CircuitBreaker::new(config.clone());
                let member = fleet.join("dependency", &breaker).unwrap();
                (breaker, member)
            })
            .collect();
        for (_, member) in &joined {
            eventually("every link is up", || !member.is_alone()).await;
        }
        trip(&joined[0].0);
        eventually("the other opens", || joined[1].0.state() == State::Open).await;
        assert!(joined.iter().all(|(_, member)| !member.is_alone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_probe_does_not_end_a_newer_trip() {
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let joined = replicas(
        &fleet_under(&redis_url(), &prefix),
        1,
        Duration::from_secs(5),
    )
    .await;
    let breaker = &joined[0].0;
    trip(breaker);
    let permit = first_permit(breaker, "it never probed").await;
    // Meanwhile another replica, outside this open period, tripped; its
    // message is not heard yet.
    let mut redis = redis().await;
    let newer = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let open_key = format!("{{{prefix}:dependency}}:open");
    let () = redis::cmd("SET")
        .arg(&open_key)
        .arg(newer.to_string())
        .arg("PX")
        .arg(120_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    permit.record(Outcome::Success, Instant::now());
    eventually("it follows the newer trip", || {
        breaker.state() == State::Open
    })
    .await;
    let standing = get(&mut redis, &open_key).await;
    assert_eq!(standing, Some(newer.to_string()), "the newer trip stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_started_late_in_its_lease_keeps_the_others_from_probing() {
    // Open 300 ms; a probe may run two seconds.
    let fleet = fleet(&redis_url());
    let joined = replicas(&fleet, 2, Duration::from_secs(2)).await;
    let tripped = Instant::now();
    trip(&joined[0].0);
    for (breaker, _) in &joined {
        eventually("all open", || breaker.state() == State::Open).await;
    }
    // The race is won at about 300 ms; the winner's first call comes
    // 700 ms into its lease, 1.3 s before it runs out (the time its
    // renewal has to reach Redis).
    tokio::time::sleep_until((tripped + Duration::from_millis(1_000)).into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (winner, _probe) = 'won: loop {
        for (replica, (breaker, _)) in joined.iter().enumerate() {
            if let Ok(permit) = breaker.try_acquire(Instant::now()) {
                break 'won (replica, permit);
            }
        }
        assert!(Instant::now() < deadline, "nobody probed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let started = Instant::now();
    let other = &joined[1 - winner].0;
    // Its lease runs from the probe's start: the other replica does not
    // probe beside it, though the lease taken at the race has run out.
    while started.elapsed() < Duration::from_millis(1_900) {
        assert!(
            other.try_acquire(Instant::now()).is_err(),
            "a second probe {:?} into the first",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One replica joined through a proxy to Redis, tripped and probing
/// (for up to 30 s): the proxy, the fleet's prefix, the replica and its
/// probe.
async fn one_replica_probing() -> (Proxy, String, (CircuitBreaker, Member), Permit) {
    let (proxy, url) = redis_proxy().await;
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let mut joined = replicas(&fleet_under(&url, &prefix), 1, Duration::from_secs(30)).await;
    let replica = joined.remove(0);
    trip(&replica.0);
    let permit = first_permit(&replica.0, "it never probed").await;
    (proxy, prefix, replica, permit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_reached_while_redis_was_away_is_given_when_it_is_back() {
    let (proxy, prefix, (breaker, member), permit) = one_replica_probing().await;
    // Redis goes away mid-probe; the probe succeeds meanwhile.
    proxy.cut().await;
    eventually("the link notices", || member.is_alone()).await;
    permit.record(Outcome::Success, Instant::now());
    assert_eq!(breaker.state(), State::Closed);
    proxy.resume().await;
    eventually("the link is back", || !member.is_alone()).await;
    none_opens(&breaker, Duration::from_millis(600)).await;
    let mut redis = redis().await;
    let open = get(&mut redis, format!("{{{prefix}:dependency}}:open")).await;
    assert_eq!(open, None, "the fleet heard the verdict: closed");
}

/// A probe's verdict whose command fails (Redis stalled, its connections
/// open: no outage heard) is given once Redis answers. It was lost with
/// the probe's lease: the link, gone alone, opened the breaker that had
/// just closed until the open period probed (past), and the fleet never
/// heard it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_whose_command_fails_is_given_when_redis_answers() {
    let (proxy, prefix, (breaker, member), permit) = one_replica_probing().await;
    proxy.stall();
    permit.record(Outcome::Success, Instant::now());
    assert_eq!(breaker.state(), State::Closed);
    eventually("the link gives up on Redis", || member.is_alone()).await;
    // Its commands time out after a second, and are tried again after a
    // poll: the verdict's has failed within four.
    none_opens(&breaker, Duration::from_secs(4)).await;
    // The commands held so far are dropped, not sent late: the verdict
    // reaches the fleet only if the link gives it again.
    proxy.cut().await;
    proxy.resume().await;
    let mut redis = redis().await;
    let open_key = format!("{{{prefix}:dependency}}:open");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut redis, &open_key).await.is_some() {
        assert!(Instant::now() < deadline, "the fleet never heard it closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(breaker.state(), State::Closed);
}

/// A probe that failed after its lease ran out is a trip of the
/// breaker's own; when Redis fails the command that publishes it, the
/// breaker keeps its own open period. The link, going on alone, held it
/// open only until the fleet's period it probed, already past: it probed
/// again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_redis_fails_to_publish_keeps_its_open_period() {
    let (_proxy, prefix, (breaker, member), permit) = one_replica_probing().await;
    let mut redis = redis().await;
    let (open_key, probe_key) = (
        format!("{{{prefix}:dependency}}:open"),
        format!("{{{prefix}:dependency}}:probe"),
    );
    // The lease gone, and an open state the publishing script fails on.
    let () = redis::cmd("DEL")
        .arg(&probe_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(&open_key)
        .arg("not a time")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let failed_at = Instant::now();
    permit.record(Outcome::Failure, failed_at);
    eventually("the link gives up on Redis", || member.is_alone()).await;
    assert!(
        breaker.try_acquire(failed_at).is_err(),
        "open for its own 300 ms from the failure"
    );
    let () = redis::cmd("DEL")
        .arg(&open_key)
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Samples `breaker` for `how_long`: it must stay closed.
async fn none_opens(breaker: &CircuitBreaker, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        assert_eq!(breaker.state(), State::Closed, "opened again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fleet kept across runtimes (a `static` one, with tests that each run
/// their own) starts its connection again on the runtime of the next
/// breaker to join: the task of the first was gone with its runtime, and
/// every later join was taken silently, its breaker alone for good. The
/// breaker whose link ended with its runtime says it is alone.
#[test]
fn a_fleet_outlives_the_runtime_its_connection_started_in() {
    let fleet = fleet(&redis_url());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (breaker, member) = first.block_on(replica(&fleet));
    drop(first);
    assert!(member.is_alone(), "its link ended with its runtime");
    runtime().block_on(async {
        let joined = replicas(&fleet, 2, Duration::from_secs(1)).await;
        trip(&joined[0].0);
        eventually("the other replica opens with it", || {
            joined[1].0.state() == State::Open
        })
        .await;
    });
    drop(breaker);
}

/// A breaker that joined from another runtime than the one the fleet's
/// connection ran in goes on with its fleet once that runtime is gone: its
/// link starts the connection again on its own (it ended with the
/// connection, and its breaker could never join again).
#[test]
fn a_link_outlives_the_runtime_its_fleets_connection_ran_in() {
    let fleet = fleet(&redis_url());
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let second = runtime();
    let started = first.block_on(replica(&fleet));
    let (breaker, member) = second.block_on(replica(&fleet));
    drop(first);
    second.block_on(async {
        let (other, _other_member) = replica(&fleet).await;
        eventually("the link is with its fleet again", || !member.is_alone()).await;
        trip(&breaker);
        eventually("the other replica opens with it", || {
            other.state() == State::Open
        })
        .await;
    });
    drop(started);
}

/// The fleet's timeout is how long a link waits on Redis: a reply slower
/// than half a second, within that timeout, keeps it with its fleet. The
/// link's connection gave up at redis-rs's own default of 500 ms whatever
/// the timeout said, and the breaker went on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_within_the_fleets_timeout_keeps_the_link_with_its_fleet() {
    let (proxy, url) = redis_proxy().await;
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let fleet = fleet_under(&url, &prefix).timeout(Duration::from_secs(60));
    let (breaker, member) = replica(&fleet).await;
    proxy.stall();
    trip(&breaker);
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_millis(1_500) {
        assert!(
            !member.is_alone(),
            "gone alone {:?} into the stall",
            stalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.resume().await;
    let mut redis = redis().await;
    let open_key = format!("{{{prefix}:dependency}}:open");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut redis, &open_key).await.is_none() {
        assert!(Instant::now() < deadline, "the fleet never heard the trip");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!member.is_alone());
}

/// `redis_url()`'s server, on database `database`.
fn on_database(database: i64) -> redis::ConnectionInfo {
    let info = redis::IntoConnectionInfo::into_connection_info(redis_url()).unwrap();
    let settings = info.redis_settings().clone().set_db(database);
    info.set_redis_settings(settings)
}

/// Fleets on two databases of one server, under one prefix (staging and
/// production with the default prefix, say), stay apart: pub/sub spans
/// every database, and a trip on database 1 held database 0's breakers
/// open for its whole open period too (here an hour, where database 0's
/// own trip opens for a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleets_on_two_databases_of_one_server_stay_apart() {
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let on = |database| {
        Fleet::new(redis::Client::open(on_database(database)).unwrap())
            .prefix(&prefix)
            .poll_every(Duration::from_millis(200))
    };
    let (zero, one) = (on(0), on(1));
    assert_eq!(
        zero.channel("dependency"),
        format!("{{{prefix}:dependency}}")
    );
    assert_eq!(
        one.channel("dependency"),
        format!("{{{prefix}:dependency}}:db1")
    );
    let open_for = |open: Duration| {
        Config::builder()
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(10)
            .open_duration(open)
            .max_open_duration(open)
            .half_open_max_wait(Duration::from_secs(1))
            .jitter(0.0)
            .build()
            .unwrap()
    };
    let (hour, minute) = (
        open_for(Duration::from_secs(3_600)),
        open_for(Duration::from_secs(60)),
    );
    let joined = |fleet: &Fleet, config: &Config| {
        let breaker = CircuitBreaker::new(config.clone());
        let member = fleet.join("dependency", &breaker).unwrap();
        (breaker, member)
    };
    let (tripping, tripping_member) = joined(&one, &hour);
    let (peer, peer_member) = joined(&one, &hour);
    // It would hold an hour heard, as its own longest is an hour.
    let (watched, watched_member) = joined(&zero, &hour);
    let (second, second_member) = joined(&zero, &minute);
    for member in [
        &tripping_member,
        &peer_member,
        &watched_member,
        &second_member,
    ] {
        eventually("every link is up", || !member.is_alone()).await;
    }

    trip(&tripping);
    eventually("database 1's peer opens", || peer.state() == State::Open).await;
    // Database 0's fleet hears its own trip after anything published
    // before it on a channel it subscribes (one subscription, in order).
    trip(&second);
    eventually("database 0's peer opens", || watched.state() == State::Open).await;
    let wait = watched
        .try_acquire(Instant::now())
        .unwrap_err()
        .retry_after()
        .unwrap();
    assert!(
        wait <= Duration::from_secs(600),
        "held open for {wait:?}: database 1's hour, not its own peer's minute"
    );
}
