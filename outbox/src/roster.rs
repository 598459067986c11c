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
//! `<stream>.<durable>.<instance>`: the types it takes (a JSON array of
//! them, or `"*"` for every type). An instance meeting a type it does not
//! take hands the message back when another entry of its durable takes
//! it, and acknowledges it only when none does.
//!
//! An entry is a lease: the bucket keeps it [`LEASE`] after its last write
//! (the bucket's `max_age`), each instance writes its own again every
//! third of that, and removes it when it stops; one that dies holds its
//! types until its entry runs out. Each instance reads its durable's
//! entries when it starts, before it takes any message, and watches
//! them: it knows of a new instance's types as soon as that instance has
//! written them. The bucket drops an entry that ran out without a word
//! to the watches, so each instance reads them all again each time it
//! writes its own; should a read fail, it goes by what it read before.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::consume::EventTypes;

/// The key-value bucket of the instances' entries, one for the account.
pub(crate) const BUCKET: &str = "palisade_consumers";

/// How long the bucket keeps an entry after its last write, when this
/// crate makes the bucket.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

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

/// One instance's view of its durable's entries, and its own entry.
#[derive(Debug)]
pub(crate) struct Roster {
    store: kv::Store,
    /// `<stream>.<durable>.`, its names made key-safe.
    prefix: String,
    /// This instance's key.
    key: String,
    /// How long the bucket keeps an entry after its last write.
    lease: Duration,
    /// The durable's entries by key, as last read and watched since.
    entries: Mutex<HashMap<String, Takes>>,
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
            // Made as a key-value bucket is, but not by
            // `create_key_value`: it asks the account's limits first, in a
            // form NATS servers before 2.10 do not answer.
            context
                .get_or_create_stream(stream::Config {
                    name: format!("KV_{BUCKET}"),
                    description: Some(
                        "palisade-outbox: the event types each running instance of a durable \
                         consumer takes"
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
                .map_err(|error| error.to_string())?;
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
        let prefix = format!("{}.{}.", key_safe(stream), key_safe(durable));
        let key = format!("{prefix}{}", uuid::Uuid::now_v7().simple());
        Ok(Self {
            store,
            prefix,
            key,
            lease,
            entries: Mutex::default(),
        })
    }

    /// Writes this instance's entry (the types `only` admits), and reads
    /// every entry of its durable; the watch of them from there, if they
    /// could be read.
    pub(crate) async fn enlist(&self, only: &EventTypes) -> Option<kv::Watch> {
        self.write(only).await;
        self.watch().await
    }

    /// Keeps this instance's entry, and what it knows of the others',
    /// fresh until dropped: takes in every entry written or removed
    /// through `watch`, writes its own again every third of the lease,
    /// and then reads them all again (the bucket drops an entry that ran
    /// out without a word to the watches), watching from there.
    pub(crate) async fn keep(
        &self,
        only: &EventTypes,
        mut watch: Option<kv::Watch>,
    ) -> std::convert::Infallible {
        let every = self.lease / 3;
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
                    if let Some(renewed) = self.enlist(only).await {
                        watch = Some(renewed);
                    }
                }
                seen = seen => match seen {
                    Some(Ok(entry)) => saw(&mut self.lock(), entry),
                    // Watched again at the next write; what is known
                    // stands meanwhile.
                    Some(Err(error)) => {
                        tracing::warn!(target: "palisade_outbox", bucket = BUCKET, %error, "watching the other instances' entries failed; reading them again shortly");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    /// Reads every entry of the durable, and watches them from there.
    /// `None`, what was known kept, when they could not all be read.
    async fn watch(&self) -> Option<kv::Watch> {
        let mut watch = match self.store.watch_with_history(self.subjects()).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(target: "palisade_outbox", bucket = BUCKET, %error, "could not read which types the other instances of this durable take; going by what was read before");
                return None;
            }
        };
        let mut entries = HashMap::new();
        let read = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(entry)) = watch.next().await {
                let last = entry.delta == 0;
                saw(&mut entries, entry);
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
        *self.lock() = entries;
        Some(watch)
    }

    /// Removes this instance's entry.
    pub(crate) async fn leave(&self) {
        if let Err(error) = self.store.delete(&self.key).await {
            tracing::debug!(target: "palisade_outbox", key = %self.key, %error, "could not remove this instance's entry; it runs out with its lease");
        }
    }

    /// Whether some running instance of the durable takes `event_type`.
    pub(crate) fn taken(&self, event_type: &str) -> bool {
        self.lock().values().any(|takes| takes.take(event_type))
    }

    async fn write(&self, only: &EventTypes) {
        let entry = match only.named() {
            Some(types) => serde_json::to_vec(types),
            None => serde_json::to_vec("*"),
        }
        .unwrap_or_default();
        if let Err(error) = self.store.put(&self.key, entry.into()).await {
            tracing::warn!(target: "palisade_outbox", key = %self.key, %error, "could not write this instance's entry in {BUCKET}; the other instances of its durable may drop the types it takes");
        }
    }

    /// The subjects of the durable's entries, as a watch takes them.
    fn subjects(&self) -> String {
        format!("{}>", self.prefix)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Takes>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes `entry` into `entries`: written, or removed.
fn saw(entries: &mut HashMap<String, Takes>, entry: kv::Entry) {
    match entry.operation {
        kv::Operation::Put => {
            entries.insert(entry.key, Takes::read(&entry.value));
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            entries.remove(&entry.key);
        }
    }
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
}
