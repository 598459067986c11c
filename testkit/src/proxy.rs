//! A TCP proxy a test can cut or stall, to take a server away mid-run, or
//! leave it connected but silent, and bring it back (Redis, PostgreSQL,
//! NATS).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Forwards connections on a loopback port to `target` until
/// [`cut`](Self::cut) or [`stall`](Self::stall).
#[derive(Debug, Clone)]
pub struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    /// Whether bytes are forwarded (`false` while stalled).
    flowing: Arc<watch::Sender<bool>>,
    /// The accepting task; it owns the listener and every connection.
    accepting: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts forwarding a fresh loopback port to `target`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let proxy = Self {
            address: listener.local_addr().expect("bound"),
            target,
            flowing: Arc::new(watch::Sender::new(true)),
            accepting: Arc::new(Mutex::new(None)),
        };
        proxy.serve(listener);
        proxy
    }

    /// Where clients connect.
    #[must_use]
    pub const fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every forwarded connection and the listening socket: clients
    /// see resets, then refused connections. Returns once the port is free.
    pub async fn cut(&self) {
        let accepting = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(accepting) = accepting {
            accepting.abort();
            let _ = accepting.await;
        }
    }

    /// Forwards nothing either way until [`resume`](Self::resume), but
    /// keeps every connection open and accepts new ones: a server that
    /// stopped answering, which clients only notice by their timeouts.
    /// What clients send meanwhile is held, and forwarded on resuming.
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Forwards again after a [`stall`](Self::stall), and accepts again,
    /// on the same port, after a [`cut`](Self::cut).
    ///
    /// # Panics
    ///
    /// When the port cannot be bound again.
    pub async fn resume(&self) {
        self.flowing.send_replace(true);
        let accepting = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if !accepting {
            let listener = TcpListener::bind(self.address)
                .await
                .expect("the same port");
            self.serve(listener);
        }
    }

    fn serve(&self, listener: TcpListener) {
        let (target, flowing) = (self.target, self.flowing.clone());
        let accepting = tokio::spawn(async move {
            // Dropped with this task: aborts every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                connections.spawn(pipe(from_client, to_server, flowing.subscribe()));
                connections.spawn(pipe(from_server, to_client, flowing.subscribe()));
            }
        });
        *self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(accepting);
    }
}

/// Forwards `from` to `to` while the proxy flows; while it stalls, reads
/// nothing (a read already waiting is dropped: reads are cancel safe).
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flowing: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if flowing.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        // A stall first: bytes already readable when it began stay held.
        let read = tokio::select! {
            biased;
            _ = flowing.wait_for(|flowing| !*flowing) => continue,
            read = from.read(&mut buffer) => read,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
