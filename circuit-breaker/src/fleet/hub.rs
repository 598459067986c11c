//! What a fleet's links share: one multiplexed connection for their
//! commands, and one subscription for the channels of every breaker that
//! joined, kept by one task that reconnects when Redis fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::mpsc;

/// Where a fleet keeps its hub, and what starts one: the first breaker to
/// join starts it on its runtime, and once that runtime is gone the next
/// to join, or a link whose hub ended with it, starts another on its own.
#[derive(Debug, Clone)]
pub(super) struct HubSlot {
    hub: Arc<Mutex<Option<Hub>>>,
    client: redis::Client,
    /// The fleet's poll, which its hub and links keep.
    pub(super) poll: Duration,
    /// The fleet's command timeout, which its hub and links keep.
    pub(super) timeout: Duration,
}

impl HubSlot {
    /// An empty slot for a hub on `client`'s server with these settings.
    pub(super) fn new(client: redis::Client, poll: Duration, timeout: Duration) -> Self {
        Self {
            hub: Arc::default(),
            client,
            poll,
            timeout,
        }
    }

    /// The database number of the server's connections (pub/sub spans
    /// them all).
    pub(super) fn database(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// An empty slot for a hub on the same server with other settings.
    pub(super) fn with(&self, poll: Duration, timeout: Duration) -> Self {
        Self::new(self.client.clone(), poll, timeout)
    }

    /// The running hub, started on the current runtime if there is none.
    pub(super) fn hub(&self) -> Hub {
        let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
        match &*hub {
            Some(running) if running.is_running() => running.clone(),
            _ => hub
                .insert(Hub::start(self.client.clone(), self.poll, self.timeout))
                .clone(),
        }
    }
}

/// What a link hears from the hub.
#[derive(Clone)]
pub(super) enum Event {
    /// Redis answers: commands go through this connection, and the link's
    /// channel is subscribed.
    Up(ConnectionManager),
    /// A message on the link's channel.
    Message(Vec<u8>),
    /// Redis failed: nothing is heard until the next `Up`.
    Down(Arc<str>),
}

enum Command {
    Join {
        channel: String,
        link: u64,
        events: mpsc::UnboundedSender<Event>,
    },
    Leave {
        channel: String,
        link: u64,
    },
}

/// The handle links and the [`Fleet`](super::Fleet) hold; the task ends
/// when the last is dropped.
#[derive(Debug, Clone)]
pub(super) struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    /// Names the links, several of which may share a channel (replicas
    /// in one process, as in tests, or two breakers joined by one name).
    links: Arc<std::sync::atomic::AtomicU64>,
}

impl Hub {
    /// Starts the hub's task on the current tokio runtime.
    fn start(client: redis::Client, poll: Duration, timeout: Duration) -> Self {
        let (commands, received) = mpsc::unbounded_channel();
        tokio::spawn(run(client, poll, timeout, received));
        Self {
            commands,
            links: Arc::default(),
        }
    }

    /// Whether the task still runs: it is dropped with its runtime.
    pub(super) fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Subscribes `channel` for a new link, which hears of it through
    /// what this returns (an `Up` first when Redis answers), and is named
    /// by the number returned, to [`leave`](Self::leave).
    pub(super) fn join(&self, channel: &str) -> (u64, mpsc::UnboundedReceiver<Event>) {
        let link = self
            .links
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (events, heard) = mpsc::unbounded_channel();
        // The task lives as long as a handle does: this one.
        let _ = self.commands.send(Command::Join {
            channel: channel.to_owned(),
            link,
            events,
        });
        (link, heard)
    }

    /// Takes `link` off `channel`: its breaker is gone.
    pub(super) fn leave(&self, channel: &str, link: u64) {
        let _ = self.commands.send(Command::Leave {
            channel: channel.to_owned(),
            link,
        });
    }
}

/// The links on each channel.
type Routes = HashMap<String, Vec<(u64, mpsc::UnboundedSender<Event>)>>;

/// Adds `link` on `channel`; whether the channel is new.
fn add(
    routes: &mut Routes,
    channel: String,
    link: u64,
    events: mpsc::UnboundedSender<Event>,
) -> bool {
    let links = routes.entry(channel).or_default();
    links.push((link, events));
    links.len() == 1
}

/// Takes `link` off `channel`; whether no link is left on it.
fn remove(routes: &mut Routes, channel: &str, link: u64) -> bool {
    let Some(links) = routes.get_mut(channel) else {
        return false;
    };
    links.retain(|(joined, _)| *joined != link);
    let empty = links.is_empty();
    if empty {
        routes.remove(channel);
    }
    empty
}

async fn run(
    client: redis::Client,
    poll: Duration,
    timeout: Duration,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut routes = Routes::new();
    loop {
        let error = match within(timeout, connect(&client, &routes)).await {
            Ok((sink, stream, connection)) => {
                tell(&routes, &Event::Up(connection.clone()));
                match serve(
                    sink,
                    stream,
                    connection,
                    timeout,
                    &mut routes,
                    &mut commands,
                )
                .await
                {
                    Some(error) => error,
                    None => return,
                }
            }
            Err(error) => error,
        };
        let down = Event::Down(Arc::from(error.to_string()));
        tell(&routes, &down);
        // Away: links that join meanwhile hear so, and Redis is tried
        // again after a poll.
        let wait = tokio::time::sleep(poll);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Join { channel, link, events }) => {
                        let _ = events.send(down.clone());
                        add(&mut routes, channel, link, events);
                    }
                    Some(Command::Leave { channel, link }) => {
                        remove(&mut routes, &channel, link);
                    }
                },
            }
        }
    }
}

/// The subscription and the links' connection. The connection waits on
/// a reply as long as Redis takes: each link bounds its commands by the
/// fleet's timeout (redis-rs's own default, half a second, cut them short
/// of a longer one).
async fn connect(
    client: &redis::Client,
    routes: &Routes,
) -> Result<(PubSubSink, PubSubStream, ConnectionManager), RedisError> {
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    if !routes.is_empty() {
        sink.subscribe(routes.keys().collect::<Vec<_>>()).await?;
    }
    let config = ConnectionManagerConfig::new().set_response_timeout(None);
    let connection = client.get_connection_manager_with_config(config).await?;
    Ok((sink, stream, connection))
}

/// Routes messages and joins while Redis answers; the error that ended
/// it, or `None` when every handle is gone.
async fn serve(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    connection: ConnectionManager,
    timeout: Duration,
    routes: &mut Routes,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<RedisError> {
    loop {
        tokio::select! {
            command = commands.recv() => match command? {
                Command::Join { channel, link, events } => {
                    let subscribed = if add(routes, channel.clone(), link, events.clone()) {
                        within(timeout, sink.subscribe(&channel)).await
                    } else {
                        Ok(())
                    };
                    if let Err(error) = subscribed {
                        return Some(error);
                    }
                    let _ = events.send(Event::Up(connection.clone()));
                }
                Command::Leave { channel, link } => {
                    if remove(routes, &channel, link)
                        && let Err(error) = within(timeout, sink.unsubscribe(&channel)).await
                    {
                        return Some(error);
                    }
                }
            },
            message = stream.next() => match message {
                Some(message) => {
                    for (_, events) in routes.get(message.get_channel_name()).into_iter().flatten() {
                        let _ = events.send(Event::Message(message.get_payload_bytes().to_vec()));
                    }
                }
                None => {
                    return Some(RedisError::from((
                        redis::ErrorKind::Io,
                        "the subscription was lost",
                    )));
                }
            },
        }
    }
}

fn tell(routes: &Routes, event: &Event) {
    for (_, events) in routes.values().flatten() {
        let _ = events.send(event.clone());
    }
}

/// `future` within `timeout`, a timeout being a failure like any other.
pub(super) async fn within<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((redis::ErrorKind::Io, "timed out"))))
}
