//! A breaker the fleet shares (feature `redis`).
//!
//! Each replica keeps its own lock-free [`CircuitBreaker`] on its calls'
//! path; what the replicas share through Redis is only the breaker's
//! transitions, carried by a task per breaker (its link) over one
//! connection and one subscription per [`Fleet`], however many breakers
//! (keys of a [`BreakerRegistry`](crate::BreakerRegistry), say) join it:
//!
//! - **Open together.** A replica whose own window trips publishes the
//!   open state (until when) to Redis; the others open on it as soon as
//!   they hear (pub/sub, with a poll as a fallback for a lost message),
//!   without waiting for failures of their own.
//! - **One probe per fleet.** When the open period ends, the replicas race
//!   for a lease on the probe in Redis; the winner's breaker turns
//!   half-open and probes, the others stay open. The winner publishes the
//!   verdict (closed, or open until when) under the lease's token, so a
//!   replica whose lease ran out cannot overwrite a newer verdict. The
//!   lease lasts the breaker's
//!   [`half_open_max_wait`](crate::ConfigBuilder::half_open_max_wait), from
//!   the race and again from the winner's first probe call, so a probe
//!   that starts late in its lease still has it to itself; a winner that
//!   dies mid-probe loses it then, and the others race again. Should the fleet's open state be gone from
//!   Redis with no verdict heard (evicted, lost in a failover), each
//!   replica probes on its own: none closes without a probe that
//!   succeeded. The winner's half-open is its breaker's own:
//!   with more than one half-open permit or success asked for, it makes
//!   them, alone, within that wait.
//! - **Redis away.** Calls never wait on Redis: a closed call touches no
//!   network, and the link works beside it. When Redis fails, each replica
//!   goes on with its breaker alone (a fleet's open period it was holding
//!   ends when its own would have), says so once in the log, and rejoins
//!   when Redis answers again.
//!
//! Clocks: open periods cross replicas as times on Redis's clock (its
//! `TIME`, read with each poll, run on by each replica's monotonic clock),
//! so replicas whose wall clocks disagree, or step, still hold an open
//! period for its length; they half-open within a round trip of each
//! other, and the probe lease keeps it to one probe all the same.
//!
//! What operators can watch: the channel `{prefix:name}` carries `open
//! UNTIL_MS REPLICA trip|probe` and `closed REPLICA` (`{prefix:name}:dbN`
//! on a database N other than 0: pub/sub is the server's, whatever the
//! database; a replica reads the words it knows and passes over any a
//! later version adds after them); the key `{prefix:name}:open` holds the fleet's open period
//! while it lasts, and `{prefix:name}:probe` the token of the replica
//! probing.
//!
//! A fleet is its Redis database, prefix and name: breakers that share
//! all three act as one, whatever they guard. Give each deployment that
//! shares a database (staging beside production) a prefix of its own, and
//! each dependency a name of its own.

mod hub;
mod link;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::breaker::CircuitBreaker;
use hub::HubSlot;
use link::Link;

/// Where a fleet's breakers meet: a Redis server, and the prefix of the
/// keys and channels they use there.
///
/// # Example
///
/// ```no_run
/// use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config};
/// use palisade_circuit_breaker::fleet::Fleet;
/// use tower::{BoxError, ServiceBuilder, service_fn};
///
/// # async fn run() -> Result<(), BoxError> {
/// let breaker = CircuitBreaker::new(Config::default());
/// // Every replica of the service joins the breaker by the same name.
/// let fleet = Fleet::new(redis::Client::open("redis://127.0.0.1:6379")?);
/// let member = fleet.join("card-processor", &breaker)?;
/// let service = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::from_breaker(breaker))
///     .service(service_fn(|request: u32| async move { Ok::<_, BoxError>(request) }));
/// # let _ = (service, member);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Fleet {
    prefix: Arc<str>,
    /// The connection and subscription the fleet's links share, with the
    /// settings they are made with.
    hub: HubSlot,
}

/// One breaker's place in its fleet, from [`Fleet::join`].
///
/// The link runs as long as the breaker lives, whether or not this is
/// kept; it tells whether the breaker is with its fleet now.
#[derive(Debug, Clone)]
pub struct Member {
    alone: Arc<AtomicBool>,
}

impl Member {
    /// Whether the breaker is going on alone (Redis does not answer, or
    /// has not yet), rather than with its fleet.
    #[must_use]
    pub fn is_alone(&self) -> bool {
        self.alone.load(Ordering::Acquire)
    }
}

/// [`Fleet::join`] was asked for a breaker that has joined a fleet already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyJoined;

impl std::fmt::Display for AlreadyJoined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this circuit breaker has joined a fleet already")
    }
}

impl std::error::Error for AlreadyJoined {}

impl Fleet {
    /// The fleet on `client`'s server, with keys and channels under
    /// `palisade:cb` until [`prefix`](Self::prefix) says otherwise.
    #[must_use]
    pub fn new(client: redis::Client) -> Self {
        Self {
            prefix: Arc::from("palisade:cb"),
            hub: HubSlot::new(client, Duration::from_secs(1), Duration::from_secs(1)),
        }
    }

    /// The prefix of the fleet's keys and channels: `{prefix:name}`. The
    /// breakers of every deployment that uses one Redis database and one
    /// prefix are one fleet: give staging and production prefixes of their
    /// own (`palisade:cb:staging`, say) when they share a database.
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// How often a link reads the fleet's state besides hearing it (a
    /// message lost with a connection is caught up then), and how soon it
    /// tries Redis again while alone: every second by default, every
    /// millisecond at most.
    #[must_use]
    pub fn poll_every(mut self, every: Duration) -> Self {
        // Settings are the hub's from its start: a changed fleet has its own.
        self.hub = self
            .hub
            .with(every.max(Duration::from_millis(1)), self.hub.timeout);
        self
    }

    /// How long one Redis command of the link may take before Redis is
    /// taken as away (one second by default, a millisecond at least).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.hub = self
            .hub
            .with(self.hub.poll, timeout.max(Duration::from_millis(1)));
        self
    }

    /// Where the keys of the breakers joined as `name` begin:
    /// `{prefix:name}`.
    fn keys(&self, name: &str) -> String {
        format!("{{{}:{name}}}", self.prefix)
    }

    /// The channel the breakers joined as `name` talk on, for a tool
    /// that listens: `{prefix:name}`, and `{prefix:name}:dbN` on a
    /// database N other than 0 (pub/sub is the server's, whatever the
    /// database, so fleets on two databases of one server would hear each
    /// other's transitions on one channel).
    #[must_use]
    pub fn channel(&self, name: &str) -> String {
        match self.hub.database() {
            0 => self.keys(name),
            database => format!("{}:db{database}", self.keys(name)),
        }
    }

    /// Shares `breaker`'s transitions with every breaker that joined as
    /// `name`, from a task spawned on the current tokio runtime, which
    /// ends when the breaker is dropped. Should that runtime shut down
    /// first, the breaker goes on alone (its [`Member`] says so). The
    /// fleet's connection runs on the runtime of the first breaker to
    /// join; once that runtime is gone, the next to join, or a link that
    /// still runs, starts it again on its own: a fleet may outlive
    /// runtimes (a `static` fleet in tests that each run their own, say).
    ///
    /// # Errors
    ///
    /// [`AlreadyJoined`] when the breaker has joined a fleet before.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn join(&self, name: &str, breaker: &CircuitBreaker) -> Result<Member, AlreadyJoined> {
        let (tell, told) = mpsc::unbounded_channel();
        if !breaker.join_fleet(tell) {
            return Err(AlreadyJoined);
        }
        let alone = Arc::new(AtomicBool::new(true));
        let (link, events) = Link::new(
            breaker,
            name,
            (self.keys(name), self.channel(name)),
            self.hub.clone(),
            Arc::clone(&alone),
        );
        tokio::spawn(link.run(told, events));
        Ok(Member { alone })
    }
}
