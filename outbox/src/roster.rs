//! Which event types the running instances of one durable consumer take,
//! so that an instance leaves to the others the types they take and it
//! does not.
//!
//! Instances of one durable share its messages. One whose
//! [`only`](crate::JetStreamConsumer::only) leaves a type out acknowledges
//! that type's messages unapplied; in a rolling deploy of a version that
//! takes a new type, the old instances would take about half of that
//! type's messages and drop them. So each running instance keeps an entry
//! in the JetStream key-value bucket [`BUCKET`], under
//! `<stream>.<durable>.<run>`: the types it takes (a JSON array of them,
//! or `"*"` for every type). An instance meeting a type it does not take
//! hands the message back when another entry of its durable takes it, and
//! acknowledges it only when none does.
//!
//! An entry is a lease: the bucket keeps it [`LEASE`] after its last write
//! (the bucket's `max_age`), each instance writes its own again every
//! third of that, and removes it when it stops. Each instance reads its
//! durable's entries when it starts, before it takes any message, and
//! watches them: it knows of a new instance's types as soon as that
//! instance has written them. The bucket drops an entry that ran out
//! without a word to the watches, so each instance reads them all again
//! each time it writes its own, and forgets an entry that was neither
//! written again nor removed [`GRACE`] after its lease (after its lease
//! as this instance first saw it: up to a lease more when that was in a
//! read): an instance whose
//! writes fail for a while (a partition, a stalled process) keeps its
//! types meanwhile, and one that died holds them that long. Until a run
//! has read the entries (for up to [`GRACE`]), it hands back every type
//! it does not take.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::consume::EventTypes;

/// The key-value bucket of the instances' entries, one for the account.
pub(crate) const BUCKET: &str = "palisade_consumers";

/// How long the bucket keeps an entry after its last write, when this
/// crate makes the bucket.
const LEASE: Duration = Duration::from_secs(30);

/// How long past its lease an entry gone without a removal keeps its
/// types, and how long an instance that could not read the entries yet
/// hands back what it does not take.
const GRACE: Duration = Duration::from_secs(60);

/// How long an instance waits for the entries already written when it
/// reads them.
const PATIENCE: Duration = Duration::from_secs(5);

/// The types one instance takes, as its entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Takes {
    Every,
    These(BTreeSet<String>),
}

impl Takes {
    fn read(entry: &[u8]) -> Self {
        match serde_json::from_slice::<serde_json::Value>(entry) {
            Ok(serde_json::Value::Array(types)) => Self::These(
                types
                    .into_iter()
                    .filter_map(|taken| match taken {
                        serde_json::Value::String(taken) => Some(taken),
                        _ => None,
                    })
                    .collect(),
            ),
            // `"*"`, and anything this version cannot read: taken for
            // every type, so nothing is dropped for a writer it does not
            // understand.
            _ => Self::Every,
        }
    }

    fn take(&self, event_type: &str) -> bool {
        match self {
            Self::Every => true,
            Self::These(types) => types.contains(event_type),
        }
    }
}

/// An entry as seen.
#[derive(Debug)]
struct Seen {
    takes: Takes,
    revision: u64,
    at: Instant,
}

/// What an instance knows of its durable's entries.
#[derive(Debug)]
struct Known {
    /// Each entry's types, its revision, and when that revision was
    /// first seen.
    entries: HashMap<String, Seen>,
    /// How long an entry is kept after it was last seen written.
    kept: Duration,
    /// When the entries were last read whole; `None` before.
    read: Option<Instant>,
    /// When the latest run began (entries read before it may be stale:
    /// nothing watched them between runs).
    since: Instant,
}

impl Known {
    fn new(lease: Duration, now: Instant) -> Self {
        Self {
            entries: HashMap::new(),
            kept: lease.saturating_add(GRACE),
            read: None,
            since: now,
        }
    }

    /// Takes in an entry written or removed.
    fn saw(&mut self, entry: kv::Entry, now: Instant) {
        match entry.operation {
            kv::Operation::Put => self.written(entry.key, &entry.value, entry.revision, now),
            kv::Operation::Delete | kv::Operation::Purge => self.removed(&entry.key),
        }
    }

    /// An entry written: seen now unless this revision was seen before
    /// (read again, not written again: its lease runs from its write).
    fn written(&mut self, key: String, value: &[u8], revision: u64, now: Instant) {
        if self
            .entries
            .get(&key)
            .is_some_and(|seen| seen.revision == revision)
        {
            return;
        }
        let takes = Takes::read(value);
        self.entries.insert(
            key,
            Seen {
                takes,
                revision,
                at: now,
            },
        );
    }

    fn removed(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Whether some instance of the durable takes `event_type`: some
    /// entry seen within its lease and grace takes it. Before the entries
    /// were read in the latest run, any type may be taken (for [`GRACE`]
    /// at most; then what is known stands).
    fn taken(&self, event_type: &str, now: Instant) -> bool {
        if self.read.is_none_or(|read| read < self.since)
            && now.saturating_duration_since(self.since) < GRACE
        {
            return true;
        }
        self.entries.values().any(|seen| {
            now.saturating_duration_since(seen.at) < self.kept && seen.takes.take(event_type)
        })
    }

    /// Forgets the entries past their lease and grace.
    fn forget_stale(&mut self, now: Instant) {
        let kept = self.kept;
        self.entries
            .retain(|_, seen| now.saturating_duration_since(seen.at) < kept);
    }
}

/// One instance's view of its durable's entries.
#[derive(Debug)]
pub(crate) struct Roster {
    context: jetstream::Context,
    store: kv::Store,
    /// `<stream>.<durable>.`, its names made key-safe.
    prefix: String,
    /// How long the bucket keeps an entry after its last write.
    lease: Duration,
    known: Mutex<Known>,
}

impl Roster {
    /// Opens (or makes) the bucket for an instance of `durable` on
    /// `stream`. `Err` says why it could not: the account may not be
    /// allowed key-value buckets.
    pub(crate) async fn open(
        context: &jetstream::Context,
        stream: &str,
        durable: &str,
    ) -> Result<Self, String> {
        if context.get_key_value(BUCKET).await.is_err() {
            make_bucket(context).await?;
        }
        let store = context
            .get_key_value(BUCKET)
            .await
            .map_err(|error| error.to_string())?;
        let lease = store.stream.cached_info().config.max_age;
        if lease.is_zero() {
            return Err(format!(
                "the bucket {BUCKET} keeps entries for ever (no max_age): an instance that \
                 died would hold its types for ever"
            ));
        }
        Ok(Self {
            context: context.clone(),
            store,
            prefix: format!("{}.{}.", key_safe(stream), key_safe(durable)),
            lease,
            known: Mutex::new(Known::new(lease, Instant::now())),
        })
    }

    /// Enters a run of this instance: writes its entry (the types `only`
    /// admits) and reads every entry of its durable; the watch of them
    /// from there, if they could be read. The entry is removed when the
    /// run [leaves](Enlisted::leave), or when the returned handle is
    /// dropped.
    pub(crate) async fn enlist(
        self: &Arc<Self>,
        only: &EventTypes,
    ) -> (Enlisted, Option<kv::Watch>) {
        self.lock().since = Instant::now();
        let enlisted = Enlisted {
            roster: Arc::clone(self),
            key: format!("{}{}", self.prefix, uuid::Uuid::now_v7().simple()),
            runtime: tokio::runtime::Handle::current(),
            left: false,
        };
        let watch = enlisted.renew(only).await;
        (enlisted, watch)
    }

    /// Whether some running instance of the durable takes `event_type`.
    pub(crate) fn taken(&self, event_type: &str) -> bool {
        self.lock().taken(event_type, Instant::now())
    }

    /// Reads every entry of the durable, and watches them from there.
    /// `None`, what was known kept, when they could not all be read.
    async fn watch(&self) -> Option<kv::Watch> {
        let mut watch = match self
            .store
            .watch_with_history(format!("{}>", self.prefix))
            .await
        {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(target: "palisade_outbox", bucket = BUCKET, %error, "could not read which types the other instances of this durable take; going by what was read before");
                return None;
            }
        };
        // Each entry is taken in as it comes; the entries count as read
        // once the last has come. (The history holds this run's own entry
        // at the least, once written.)
        let read = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(entry)) = watch.next().await {
                let last = entry.delta == 0;
                self.lock().saw(entry, Instant::now());
                if last {
                    return true;
                }
            }
            false
        })
        .await;
        if read != Ok(true) {
            tracing::warn!(target: "palisade_outbox", bucket = BUCKET, "the entries of this durable's instances were not all read in time; going by what was read before");
            return None;
        }
        let mut known = self.lock();
        let now = Instant::now();
        known.read = Some(now);
        known.forget_stale(now);
        Some(watch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A run of an instance, its entry written: removed when it leaves, or
/// (by a task of its own) when dropped without leaving.
#[derive(Debug)]
pub(crate) struct Enlisted {
    roster: Arc<Roster>,
    key: String,
    /// The runtime the run is on, where a dropped run's entry is removed.
    runtime: tokio::runtime::Handle,
    left: bool,
}

impl Enlisted {
    /// Keeps this run's entry, and what it knows of the others', fresh
    /// until dropped: takes in every entry written or removed through
    /// `watch`, writes its own again every third of the lease, and then
    /// reads them all again (the bucket drops an entry that ran out
    /// without a word to the watches), watching from there.
    pub(crate) async fn keep(
        &self,
        only: &EventTypes,
        mut watch: Option<kv::Watch>,
    ) -> std::convert::Infallible {
        let every = self.roster.lease / 3;
        let mut write_at = Instant::now() + every;
        loop {
            let seen = async {
                match &mut watch {
                    Some(watching) => watching.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(write_at) => {
                    write_at = Instant::now() + every;
                    if let Some(renewed) = self.renew(only).await {
                        watch = Some(renewed);
                    }
                }
                seen = seen => match seen {
                    Some(Ok(entry)) => self.roster.lock().saw(entry, Instant::now()),
                    // Read and watched again at the next write; what is
                    // known stands meanwhile. (A watch that failed once is
                    // not polled again: its connection may be gone.)
                    Some(Err(error)) => {
                        tracing::debug!(target: "palisade_outbox", bucket = BUCKET, %error, "watching the other instances' entries failed; reading them again at the next write");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    /// Removes this run's entry.
    pub(crate) async fn leave(mut self) {
        self.roster.remove(&self.key).await;
        self.left = true;
    }

    /// Writes this run's entry, and reads and watches the durable's.
    async fn renew(&self, only: &EventTypes) -> Option<kv::Watch> {
        self.roster.write(&self.key, only).await;
        self.roster.watch().await
    }
}

impl Drop for Enlisted {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        // The run was dropped (its task aborted, or `leave` cut short):
        // its entry would otherwise hold its types until it ran out. (A
        // runtime shutting down runs no new task: then it runs out.)
        let roster = Arc::clone(&self.roster);
        let key = std::mem::take(&mut self.key);
        self.runtime.spawn(async move { roster.remove(&key).await });
    }
}

impl Roster {
    async fn write(&self, key: &str, only: &EventTypes) {
        let entry: bytes::Bytes = match only.named() {
            Some(types) => serde_json::to_vec(types),
            None => serde_json::to_vec("*"),
        }
        .unwrap_or_default()
        .into();
        if self.store.put(key, entry.clone()).await.is_ok() {
            return;
        }
        // The bucket may have been removed: made again, and tried once
        // more.
        let written = match make_bucket(&self.context).await {
            Ok(()) => self
                .store
                .put(key, entry)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::warn!(target: "palisade_outbox", key, %error, "could not write this instance's entry in {BUCKET}; the other instances of its durable keep its types {GRACE:?} past their lease, then may drop them");
        }
    }

    async fn remove(&self, key: &str) {
        if let Err(error) = self.store.delete(key).await {
            tracing::debug!(target: "palisade_outbox", key, %error, "could not remove this instance's entry; it runs out with its lease");
        }
    }
}

/// Makes the bucket as a key-value bucket is made, but not by
/// `create_key_value`: it asks the account's limits first, in a form NATS
/// servers before 2.10 do not answer.
async fn make_bucket(context: &jetstream::Context) -> Result<(), String> {
    context
        .get_or_create_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some(
                "palisade-outbox: the event types each running instance of a durable consumer \
                 takes"
                    .to_owned(),
            ),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: LEASE,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

/// `name` as a key-value key's token: letters, digits, `-` and `_` kept,
/// any other byte written `=` and its two hex digits (`=` itself too), so
/// two names never share a key.
fn key_safe(name: &str) -> String {
    let mut safe = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            safe.push(char::from(byte));
        } else {
            let _ = write!(safe, "={byte:02X}");
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_distinct_keys() {
        assert_eq!(key_safe("ORDERS"), "ORDERS");
        assert_eq!(key_safe("orders:v1"), "orders=3Av1");
        assert_eq!(key_safe("a=3A"), "a=3D3A");
        assert_ne!(key_safe("a:"), key_safe("a=3A"));
    }

    #[test]
    fn entries_read_as_their_types_and_anything_unreadable_as_every_type() {
        let takes = Takes::read(br#"["A","B"]"#);
        assert!(takes.take("A") && takes.take("B") && !takes.take("C"));
        assert_eq!(Takes::read(br#""*""#), Takes::Every);
        assert!(
            Takes::read(b"{not json").take("anything"),
            "a writer not understood keeps all"
        );
    }

    #[test]
    fn before_the_first_read_every_type_is_handed_back_for_the_grace() {
        let start = Instant::now();
        let known = Known::new(LEASE, start);
        assert!(known.taken("Any", start));
        assert!(known.taken("Any", start + GRACE - Duration::from_millis(1)));
        assert!(!known.taken("Any", start + GRACE), "the bucket unreadable");
    }

    #[test]
    fn a_new_run_hands_back_until_it_has_read_the_entries_again() {
        let start = Instant::now();
        let mut known = Known::new(LEASE, start);
        known.read = Some(start);
        assert!(!known.taken("New", start), "read: no one takes it");
        // A later run, whose first read has not come (or failed): an
        // instance may have joined since, unwatched.
        let rerun = start + Duration::from_secs(100);
        known.since = rerun;
        assert!(known.taken("New", rerun));
        known.read = Some(rerun);
        assert!(!known.taken("New", rerun), "read again");

        // Never read in a run: after the grace, what an earlier run read
        // stands.
        known.written("s.d.a".to_owned(), br#"["Old"]"#, 3, rerun);
        let later = rerun + Duration::from_secs(10);
        known.since = later;
        assert!(known.taken("New", later + GRACE - Duration::from_millis(1)));
        assert!(known.taken("Old", later + GRACE));
        assert!(!known.taken("New", later + GRACE));
    }

    #[test]
    fn an_entry_gone_without_removal_keeps_its_types_for_the_grace() {
        let start = Instant::now();
        let mut known = Known::new(LEASE, start);
        known.written("s.d.a".to_owned(), br#"["New"]"#, 7, start);
        known.read = Some(start);
        assert!(known.taken("New", start) && !known.taken("Other", start));
        // Read again, not written again: its lease runs from its write.
        known.written("s.d.a".to_owned(), br#"["New"]"#, 7, start + LEASE);
        // Not written again (its writes fail, or it died): kept through
        // its lease and the grace, then forgotten.
        let last = start + LEASE + GRACE - Duration::from_millis(1);
        assert!(known.taken("New", last));
        assert!(!known.taken("New", last + Duration::from_millis(1)));
        known.forget_stale(last + Duration::from_millis(1));
        assert!(known.entries.is_empty());
    }

    #[test]
    fn a_removed_entry_is_forgotten_at_once() {
        let start = Instant::now();
        let mut known = Known::new(LEASE, start);
        known.written("s.d.a".to_owned(), br#"["New"]"#, 7, start);
        known.read = Some(start);
        known.removed("s.d.a");
        assert!(!known.taken("New", start));
    }
}
