//! One breaker's link with its fleet: what it publishes, what it hears,
//! and the race for the probe.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_hints::clock::ServerClock;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use tokio::sync::mpsc;

use super::hub::{Event, Hub, HubSlot, within};
use crate::breaker::{CircuitBreaker, Inner, Own};

/// The scripts, hashed once; run with `EVALSHA`, loaded again on
/// `NOSCRIPT`.
static OPEN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(OPEN));
static PROBE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PROBE));
static VERDICT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(VERDICT));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));

/// A replica opened on its own: `KEYS[1]` holds the fleet's open state
/// (until when, in Unix milliseconds). The later of its until and the one
/// standing wins, is published on `ARGV[4]` when it is the new one, and
/// is returned.
const OPEN: &str = r"
local standing = tonumber(redis.call('GET', KEYS[1]) or '0')
local asked = tonumber(ARGV[1])
if standing >= asked then return standing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return asked
";

/// The race for the probe: `1` when this replica's token (`ARGV[1]`) now
/// holds `KEYS[2]` for `ARGV[2]` ms, `0` when another replica's does, `-1`
/// when the fleet is no longer open (`KEYS[1]` is gone). A lease this
/// replica (tokens begin with `ARGV[3]`) took before it lost Redis for a
/// while is its own to take again: nobody else could give its verdict.
/// The fleet's open state then lives at least `ARGV[4]` ms more, so it
/// outlasts the lease: the others wait for the verdict, not for the key.
const PROBE: &str = r"
if not redis.call('GET', KEYS[1]) then return -1 end
local holder = redis.call('GET', KEYS[2])
if holder and string.sub(holder, 1, #ARGV[3]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
";

/// The probe's verdict, only under its token (`ARGV[1]` must still hold
/// `KEYS[2]`) and only on the open period it probed (`KEYS[1]` still holds
/// `ARGV[6]`): `ARGV[2]` is `closed` or the new until. `{1, 0}` when
/// given, `{0, 0}` when the lease had run out, `{2, until}` when a trip
/// newer than the period probed stands: not the probe's to end.
const VERDICT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0, 0} end
redis.call('DEL', KEYS[2])
local standing = redis.call('GET', KEYS[1])
if standing and standing ~= ARGV[6] then return {2, tonumber(standing)} end
if ARGV[2] == 'closed' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[4])
return {1, 0}
";

/// The probe has started: its lease (`KEYS[2]`, still under `ARGV[1]`)
/// runs `ARGV[2]` ms from now, and the fleet's open state at least
/// `ARGV[3]`; `1` when renewed, `0` when the lease had run out.
const RENEW: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
";

/// What became of a probe's verdict.
enum Verdict {
    Given,
    /// The lease had run out: another replica may probe.
    LeaseGone,
    /// A replica tripped since the open period probed began: its open
    /// period, until then, stands.
    NewerOpen(u64),
}

/// Why the link stopped working with its fleet.
enum Left {
    /// The breaker is gone: nothing left to share.
    Gone,
    /// The hub ended with the runtime it ran in: another is to be joined.
    HubGone,
    /// A command failed; the connection may serve again after a poll.
    Failed(RedisError),
    /// The hub lost Redis: nothing is heard until it is back.
    Down(Arc<str>),
}

impl From<RedisError> for Left {
    fn from(error: RedisError) -> Self {
        Self::Failed(error)
    }
}

/// A message on the fleet's channel: `open UNTIL REPLICA WHY` (`trip`: its
/// own window tripped; `probe`: the fleet's probe failed) or `closed
/// REPLICA` (the fleet's probe succeeded), for operators to watch too.
///
/// Replicas of other versions share the channel during a rolling upgrade:
/// an `open` is read by its first three words (earlier versions wrote no
/// `WHY`) and a `closed` by its first two, so words a later version adds
/// after them are passed over rather than the message ignored.
#[derive(Debug, PartialEq, Eq)]
enum Heard<'a> {
    Open { until_ms: u64, replica: &'a str },
    Closed { replica: &'a str },
}

impl<'a> Heard<'a> {
    fn parse(message: &'a str) -> Option<Self> {
        let mut words = message.split(' ').filter(|word| !word.is_empty());
        match (words.next()?, words.next()?, words.next()) {
            ("open", until, Some(replica)) => Some(Self::Open {
                until_ms: until.parse().ok()?,
                replica,
            }),
            ("closed", replica, _) => Some(Self::Closed { replica }),
            _ => None,
        }
    }
}

/// One breaker's link with its fleet, run by one task.
pub(super) struct Link {
    /// Where the fleet's hub is, to join another should this one end.
    slot: HubSlot,
    hub: Hub,
    /// This link's number at the hub.
    link: u64,
    breaker: Weak<Inner>,
    name: Arc<str>,
    channel: String,
    open_key: String,
    probe_key: String,
    /// This link's name in messages and tokens.
    replica: String,
    /// Probe leases this link has raced for, to make each token unique.
    probes: u64,
    /// How long a probe lease lasts: the breaker's half-open max wait.
    lease: Duration,
    /// The longest open period the breaker may have: one heard to last
    /// longer (a replica's clock far ahead) is held no longer.
    longest: Duration,
    /// How long past the fleet's open period the breaker is held open
    /// waiting for the probe's verdict before it half-opens on its own.
    grace: Duration,
    poll: Duration,
    timeout: Duration,
    alone: Arc<AtomicBool>,
    /// The fleet's time, by which open periods are told.
    clock: FleetClock,
    /// The fleet's open period this breaker is in, until then (fleet
    /// time, Unix ms).
    fleet_until: Option<u64>,
    /// When to race for the probe.
    probe_at: Option<tokio::time::Instant>,
    /// The probe lease this link holds.
    token: Option<String>,
    /// Whether it said it goes on alone, and has not said it is back.
    warned: bool,
    /// The breaker's last transition while alone, for the fleet to hear
    /// when Redis is back (a probe's verdict above all).
    unsaid: Option<Own>,
}

/// However the task ends (its breaker gone, its runtime shut down), the
/// link leaves its channel and its member is alone.
impl Drop for Link {
    fn drop(&mut self) {
        self.hub.leave(&self.channel, self.link);
        self.alone.store(true, Ordering::Release);
    }
}

impl Link {
    /// The link of `breaker`, joined to the hub in `slot` (started there if
    /// need be), with its keys under `keys` and its messages on `channel`,
    /// and what it hears from the hub.
    pub(super) fn new(
        breaker: &CircuitBreaker,
        name: &str,
        (keys, channel): (String, String),
        slot: HubSlot,
        alone: Arc<AtomicBool>,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        // As the breaker counts it: whole milliseconds, rounded up.
        let lease = Duration::from_millis(breaker.config().half_open_max_wait_ms());
        let longest = breaker.config().max_open_duration();
        let (poll, timeout) = (slot.poll, slot.timeout);
        let hub = slot.hub();
        let (link, events) = hub.join(&channel);
        let link = Self {
            slot,
            hub,
            link,
            breaker: breaker.downgrade(),
            name: Arc::from(name),
            open_key: format!("{keys}:open"),
            probe_key: format!("{keys}:probe"),
            channel,
            replica: format!("{:016x}", fastrand::u64(..)),
            probes: 0,
            lease,
            longest,
            grace: lease.saturating_add(poll),
            poll,
            timeout,
            alone,
            clock: FleetClock::default(),
            fleet_until: None,
            probe_at: None,
            token: None,
            warned: false,
            unsaid: None,
        };
        (link, events)
    }

    /// Joins the fleet's running hub (started on this runtime if need be)
    /// once the one it had ended with its runtime: what it hears now;
    /// `None` when its breaker is gone, or no hub runs even so (this
    /// runtime shutting down too), and the link is to end.
    fn rejoin(&mut self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.breaker().ok()?;
        self.hub = self.slot.hub();
        if !self.hub.is_running() {
            return None;
        }
        let (link, events) = self.hub.join(&self.channel);
        self.link = link;
        Some(events)
    }

    /// Works with the fleet while Redis answers, alone while it does not,
    /// until the breaker is gone.
    pub(super) async fn run(
        mut self,
        mut told: mpsc::UnboundedReceiver<Own>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut connection = None;
        loop {
            if let Some(up) = connection.clone() {
                match self.serve(up, &mut events, &mut told).await {
                    Left::Gone => return,
                    Left::HubGone => {
                        connection = None;
                        self.go_alone(&"the fleet's connection ended with its runtime");
                        let Some(rejoined) = self.rejoin() else {
                            return;
                        };
                        events = rejoined;
                    }
                    Left::Failed(error) => self.go_alone(&error),
                    Left::Down(error) => {
                        connection = None;
                        self.go_alone(&error);
                    }
                }
            }
            // Alone: the hub says when Redis is back; a connection that
            // failed a command is tried again after a poll.
            let wait = tokio::time::sleep(self.poll);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait, if connection.is_some() => break,
                    event = events.recv() => match event {
                        Some(Event::Up(up)) => {
                            connection = Some(up);
                            break;
                        }
                        Some(Event::Down(error)) => {
                            connection = None;
                            self.go_alone(&error);
                        }
                        Some(Event::Message(_)) => {}
                        None => {
                            connection = None;
                            let Some(rejoined) = self.rejoin() else { return };
                            events = rejoined;
                        }
                    },
                    own = told.recv() => match own {
                        // Only a probe's verdict waits for Redis; the
                        // breaker's own open period is caught up with.
                        Some(own) if self.token.is_some() => self.unsaid = Some(own),
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        }
    }

    async fn serve(
        &mut self,
        mut connection: ConnectionManager,
        events: &mut mpsc::UnboundedReceiver<Event>,
        told: &mut mpsc::UnboundedReceiver<Own>,
    ) -> Left {
        // What was missed while away: what this breaker did (a probe it
        // won before, its verdict), the fleet's state, and this breaker's
        // own open period, which the fleet has not heard of.
        if let Some(own) = self.unsaid.take()
            && let Err(left) = self.on_own(own, &mut connection).await
        {
            return left;
        }
        if let Err(left) = self.catch_up(&mut connection).await {
            return left;
        }
        self.alone.store(false, Ordering::Release);
        if std::mem::take(&mut self.warned) {
            tracing::info!(
                target: "palisade_circuit_breaker",
                breaker = %self.name,
                "redis answers again; the breaker is with its fleet"
            );
        }
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let probe_at = self.probe_at;
            let race = async move {
                match probe_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                own = told.recv() => match own {
                    Some(own) => self.on_own(own, &mut connection).await,
                    None => Err(Left::Gone),
                },
                event = events.recv() => match event {
                    Some(Event::Message(payload)) => self.on_message(&payload),
                    Some(Event::Up(up)) => {
                        connection = up;
                        self.catch_up(&mut connection).await
                    }
                    Some(Event::Down(error)) => Err(Left::Down(error)),
                    None => Err(Left::HubGone),
                },
                () = race => self.race_for_probe(&mut connection).await,
                _ = poll.tick() => self.catch_up(&mut connection).await,
            };
            if let Err(left) = step {
                return left;
            }
        }
    }

    fn breaker(&self) -> Result<CircuitBreaker, Left> {
        CircuitBreaker::upgrade(&self.breaker).ok_or(Left::Gone)
    }

    /// This breaker opened or closed on its own calls.
    async fn on_own(&mut self, own: Own, connection: &mut ConnectionManager) -> Result<(), Left> {
        match (own, self.token.take()) {
            (Own::Opened(until), Some(token)) => {
                let until_ms = self.clock.unix_ms(until);
                match self
                    .give_verdict(own, &token, Some(until_ms), connection)
                    .await?
                {
                    Verdict::Given => self.hold_open(until_ms)?,
                    // The lease ran out before the probe failed, or a
                    // newer trip stands: its failure is a trip all the
                    // same (the later open period wins), never a reason
                    // to follow a fleet that may have let its state go.
                    Verdict::LeaseGone | Verdict::NewerOpen(_) => {
                        self.publish_trip(until_ms, connection).await?;
                    }
                }
            }
            (Own::Opened(until), None) => {
                self.publish_trip(self.clock.unix_ms(until), connection)
                    .await?;
            }
            (Own::Closed, Some(token)) => {
                match self.give_verdict(own, &token, None, connection).await? {
                    Verdict::NewerOpen(until_ms) => self.hold_open(until_ms)?,
                    Verdict::Given | Verdict::LeaseGone => self.leave_open_period(),
                }
            }
            // A cycle of its own while the fleet was away: nothing the
            // fleet is waiting to hear.
            (Own::Closed, None) => self.leave_open_period(),
            // The probe starts now, maybe long after the race was won: its
            // lease runs from now, so no other replica probes beside it.
            (Own::HalfOpened, Some(token)) => {
                let renewed: Result<i64, Left> = self
                    .command(
                        RENEW_SCRIPT
                            .key(&self.open_key)
                            .key(&self.probe_key)
                            .arg(&token)
                            .arg(px(self.lease))
                            .arg(px(self.grace))
                            .invoke_async(connection),
                    )
                    .await;
                self.token = Some(token);
                if renewed? == 0 {
                    tracing::debug!(
                        target: "palisade_circuit_breaker",
                        breaker = %self.name,
                        "probe started after its lease ran out"
                    );
                }
            }
            (Own::HalfOpened, None) => {}
        }
        Ok(())
    }

    /// Publishes this breaker's own trip, open until `until_ms` (or
    /// later, when a later open period stands), and holds it open. Any
    /// open period of the fleet's it was held in is over for it first:
    /// should Redis fail the command, the link goes on alone with the
    /// breaker's own period, where it held it until the fleet's period
    /// probed (past), cutting the breaker's short.
    async fn publish_trip(
        &mut self,
        until_ms: u64,
        connection: &mut ConnectionManager,
    ) -> Result<(), Left> {
        self.leave_open_period();
        let message = format!("open {until_ms} {} trip", self.replica);
        let standing: u64 = self
            .command(
                OPEN_SCRIPT
                    .key(&self.open_key)
                    .arg(until_ms)
                    .arg(self.px(until_ms))
                    .arg(message)
                    .arg(&self.channel)
                    .invoke_async(connection),
            )
            .await?;
        self.hold_open(standing)
    }

    /// [`verdict`](Self::verdict), for what this breaker did (`own`).
    /// A command that fails keeps the lease and the verdict, to be given
    /// once Redis answers: they were lost, and with them the breaker's
    /// closing (the link left the fleet holding it open until the period
    /// probed, now past) or its backed-off open period.
    async fn give_verdict(
        &mut self,
        own: Own,
        token: &str,
        until_ms: Option<u64>,
        connection: &mut ConnectionManager,
    ) -> Result<Verdict, Left> {
        let given = self.verdict(connection, token, until_ms).await;
        if given.is_err() {
            self.token = Some(token.to_owned());
            self.unsaid = Some(own);
        }
        given
    }

    /// Publishes the probe's verdict under `token`: `Some(until)` open
    /// again, `None` closed.
    async fn verdict(
        &self,
        connection: &mut ConnectionManager,
        token: &str,
        until_ms: Option<u64>,
    ) -> Result<Verdict, Left> {
        let (verdict, message) = match until_ms {
            Some(until) => (
                until.to_string(),
                format!("open {until} {} probe", self.replica),
            ),
            None => ("closed".to_owned(), format!("closed {}", self.replica)),
        };
        let probed = self.fleet_until.map(|until| until.to_string());
        let (given, standing): (i64, u64) = self
            .command(
                VERDICT_SCRIPT
                    .key(&self.open_key)
                    .key(&self.probe_key)
                    .arg(token)
                    .arg(verdict)
                    .arg(self.px(until_ms.unwrap_or(0)))
                    .arg(message)
                    .arg(&self.channel)
                    .arg(probed.unwrap_or_default())
                    .invoke_async(connection),
            )
            .await?;
        Ok(match given {
            1 => Verdict::Given,
            2 => Verdict::NewerOpen(standing),
            _ => Verdict::LeaseGone,
        })
    }

    /// What another replica published.
    fn on_message(&mut self, payload: &[u8]) -> Result<(), Left> {
        let Some(heard) = std::str::from_utf8(payload).ok().and_then(Heard::parse) else {
            tracing::debug!(target: "palisade_circuit_breaker", breaker = %self.name, "unreadable fleet message ignored");
            return Ok(());
        };
        match heard {
            Heard::Open { replica, .. } | Heard::Closed { replica } if replica == self.replica => {
                Ok(())
            }
            Heard::Open { until_ms, .. } => self.hold_open(until_ms),
            Heard::Closed { .. } => self.close(),
        }
    }

    /// The fleet is open until `until_ms`: this breaker stays open past it
    /// until the probe's verdict, and races for the probe then.
    fn hold_open(&mut self, until_ms: u64) -> Result<(), Left> {
        self.fleet_until = Some(until_ms);
        let until_ms = self.held_until(until_ms);
        if until_ms <= self.clock.now_ms() && self.token.is_none() {
            // Over already: the race for the probe is now.
            self.probe_at = Some(tokio::time::Instant::now());
        } else {
            self.probe_at = Some(tokio::time::Instant::from_std(
                self.clock.instant_of(until_ms),
            ));
        }
        self.breaker()?
            .open_for_fleet(later(self.clock.instant_of(until_ms), self.grace));
        Ok(())
    }

    /// How long this breaker holds an open period heard to last until
    /// `until_ms`: no longer than its own longest from now (a replica's
    /// clock far ahead, or a stray message, holds it no longer).
    fn held_until(&self, until_ms: u64) -> u64 {
        until_ms.min(self.clock.now_ms().saturating_add(millis(self.longest)))
    }

    /// A probe elsewhere succeeded.
    fn close(&mut self) -> Result<(), Left> {
        self.leave_open_period();
        self.breaker()?.close_for_fleet();
        Ok(())
    }

    fn leave_open_period(&mut self) {
        self.fleet_until = None;
        self.probe_at = None;
        self.token = None;
    }

    /// The fleet's open period is over: one replica wins the lease on the
    /// probe and half-opens; the others wait for its verdict.
    async fn race_for_probe(&mut self, connection: &mut ConnectionManager) -> Result<(), Left> {
        self.probes += 1;
        let token = format!("{}:{}", self.replica, self.probes);
        let won: i64 = self
            .command(
                PROBE_SCRIPT
                    .key(&self.open_key)
                    .key(&self.probe_key)
                    .arg(&token)
                    .arg(px(self.lease))
                    .arg(format!("{}:", self.replica))
                    .arg(px(self.grace))
                    .invoke_async(connection),
            )
            .await?;
        match won {
            1 => {
                self.token = Some(token);
                self.probe_at = None;
                // Half-opens with the next call, which is the probe.
                self.breaker()?.open_for_fleet(Instant::now());
            }
            0 => {
                // Another replica probes: its verdict comes, or its lease
                // runs out and the race is on again; the breaker is held
                // open until then, and a poll past it.
                let now = Instant::now();
                self.probe_at = Some(later(now, self.lease).into());
                self.breaker()?.open_for_fleet(later(now, self.grace));
            }
            _ => self.probe_alone()?,
        }
        Ok(())
    }

    /// Nobody holds the fleet open any more and no verdict was heard (its
    /// state ran out, or was evicted or lost in a failover): this breaker
    /// probes on its own, never closes on its own.
    fn probe_alone(&mut self) -> Result<(), Left> {
        self.leave_open_period();
        self.breaker()?.open_for_fleet(Instant::now());
        Ok(())
    }

    /// Reads the fleet's state and follows it: what a lost message or a
    /// time away from Redis missed.
    async fn catch_up(&mut self, connection: &mut ConnectionManager) -> Result<(), Left> {
        let sent = Instant::now();
        let (standing, time): (Option<u64>, (u64, u64)) = self
            .command(
                redis::pipe()
                    .cmd("GET")
                    .arg(&self.open_key)
                    .cmd("TIME")
                    .query_async(connection),
            )
            .await?;
        self.clock.read(time, sent, Instant::now());
        let breaker = self.breaker()?;
        match standing {
            Some(until_ms) if self.fleet_until != Some(until_ms) && self.token.is_none() => {
                self.hold_open(until_ms)?;
            }
            Some(_) => {}
            None if self.fleet_until.is_some() && self.token.is_none() => self.probe_alone()?,
            None => {
                // Open on its own while away, and still within its open
                // period: the fleet hears of it now. (One whose period
                // has passed half-opens with its next call, its own
                // business.)
                if let (Some(until), None) = (breaker.open_until(), self.fleet_until)
                    && until > Instant::now()
                {
                    return Box::pin(self.on_own(Own::Opened(until), connection)).await;
                }
            }
        }
        Ok(())
    }

    /// Redis is away: the breaker goes on alone, and an open period the
    /// fleet held it in ends when the fleet's would have. A probe lease it
    /// won stays its own: the verdict is given when Redis is back, if the
    /// lease still runs then.
    fn go_alone(&mut self, error: &dyn std::fmt::Display) {
        self.alone.store(true, Ordering::Release);
        if !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(
                target: "palisade_circuit_breaker",
                breaker = %self.name,
                %error,
                "redis failed; the breaker goes on alone until it answers again"
            );
        }
        if self.token.is_some() {
            // Its breaker probes (or will, with its next call): left as
            // it is, its verdict still to give.
            self.probe_at = None;
            return;
        }
        if let (Some(until_ms), Some(breaker)) =
            (self.fleet_until, CircuitBreaker::upgrade(&self.breaker))
        {
            breaker.open_for_fleet(self.clock.instant_of(self.held_until(until_ms)));
        }
        self.leave_open_period();
    }

    /// How long the fleet's open state lives in Redis: its open period,
    /// then the grace for the probe's verdict.
    fn px(&self, until_ms: u64) -> u64 {
        px(
            Duration::from_millis(until_ms.saturating_sub(self.clock.now_ms()))
                .saturating_add(self.grace),
        )
    }

    /// `reply` within the link's timeout; a failure of Redis's leaves
    /// the fleet for now.
    async fn command<T>(
        &self,
        reply: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Left> {
        within(self.timeout, reply).await.map_err(Left::Failed)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The longest expiry the link sets in Redis: ten years, where the
/// settings say "never" (`Duration::MAX`).
const LONGEST_PX: u64 = 10 * 365 * 86_400_000;

/// `duration` as a Redis expiry: a whole millisecond at least (`PX 0` is
/// an error), ten years at most.
fn px(duration: Duration) -> u64 {
    millis(duration).clamp(1, LONGEST_PX)
}

/// `duration` after `instant`, or ten years after it where that is past
/// what an instant can hold.
fn later(instant: Instant, duration: Duration) -> Instant {
    instant
        .checked_add(duration)
        .unwrap_or_else(|| instant + Duration::from_millis(LONGEST_PX))
}

/// The fleet's clock, in Unix milliseconds: Redis's (its `TIME`, read
/// with every catch-up), run on from there by this process's monotonic
/// clock ([`ServerClock`]); this process's wall clock until Redis is first
/// read. Open periods cross replicas as times on it: on each replica's own
/// wall clock, one 40 s behind the others published open periods already
/// over for them (they raced for the probe at once, and its success closed
/// the whole fleet), and a wall clock stepped back or forward moved them.
#[derive(Debug, Clone, Copy)]
struct FleetClock(ServerClock);

impl Default for FleetClock {
    fn default() -> Self {
        let now = Instant::now();
        let wall = millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        Self(ServerClock::read(wall, now, now))
    }
}

impl FleetClock {
    /// Redis's `TIME` (`seconds`, `microseconds`), asked at `sent` and
    /// answered at `answered`.
    fn read(&mut self, (seconds, micros): (u64, u64), sent: Instant, answered: Instant) {
        let ms = seconds.saturating_mul(1_000).saturating_add(micros / 1_000);
        self.0 = ServerClock::read(ms, sent, answered);
    }

    fn now_ms(self) -> u64 {
        self.0.at(Instant::now())
    }

    /// An instant on this process's monotonic clock as fleet time.
    fn unix_ms(self, instant: Instant) -> u64 {
        self.0.at(instant)
    }

    /// Fleet time as an instant on this process's monotonic clock (ten
    /// years from now, or now, past what an instant can hold).
    fn instant_of(self, unix_ms: u64) -> Instant {
        let now = Instant::now();
        self.0.instant_of(unix_ms).unwrap_or_else(|| {
            if unix_ms >= self.0.at(now) {
                later(now, Duration::from_millis(LONGEST_PX))
            } else {
                now
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_as_written_and_nothing_else() {
        assert_eq!(
            Heard::parse("open 1700000000000 ab12 trip"),
            Some(Heard::Open {
                until_ms: 1_700_000_000_000,
                replica: "ab12"
            })
        );
        assert_eq!(
            Heard::parse("closed ab12"),
            Some(Heard::Closed { replica: "ab12" })
        );
        for garbage in [
            "",
            "open",
            "open soon ab12",
            "open 17",
            "closed",
            "opened 1 a",
        ] {
            assert_eq!(Heard::parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn messages_of_earlier_and_later_versions_are_read() {
        let open = Some(Heard::Open {
            until_ms: 1_700_000_000_000,
            replica: "ab12",
        });
        // Before open messages said why.
        assert_eq!(Heard::parse("open 1700000000000 ab12"), open);
        // A later version's words after those read here.
        assert_eq!(Heard::parse("open 1700000000000 ab12 drain 3"), open);
        assert_eq!(
            Heard::parse("closed ab12 by-operator"),
            Some(Heard::Closed { replica: "ab12" })
        );
    }

    #[test]
    fn fleet_time_and_instants_round_trip_to_the_millisecond() {
        let mut clock = FleetClock::default();
        for _ in 0..2 {
            let later = Instant::now() + Duration::from_secs(5);
            let back = clock.instant_of(clock.unix_ms(later));
            let apart = back.max(later) - back.min(later);
            assert!(apart <= Duration::from_millis(2), "{apart:?}");
            let now = Instant::now();
            clock.read((1_700_000_000, 0), now, now);
        }
    }

    /// A replica 40 s behind this one trips for 30 s: its open period,
    /// told on Redis's clock, lasts 30 s here. On the wall clocks it was
    /// over 10 s before it began.
    #[test]
    fn an_open_period_lasts_its_length_whatever_this_machines_clock_says() {
        let redis_ms = FleetClock::default().now_ms() - 40_000;
        let mut clock = FleetClock::default();
        let sent = Instant::now();
        clock.read(
            (redis_ms / 1_000, redis_ms % 1_000 * 1_000),
            sent,
            Instant::now(),
        );
        let until_ms = redis_ms + 30_000;
        let held = clock
            .instant_of(until_ms)
            .saturating_duration_since(Instant::now());
        assert!(
            held > Duration::from_secs(20) && held <= Duration::from_secs(30),
            "{held:?}"
        );
    }
}
