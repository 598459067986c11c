//! A TCP proxy a test can cut, to take a server away mid-run and bring it
//! back (Redis, PostgreSQL, NATS).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Forwards connections on a loopback port to `target` until
/// [`cut`](Self::cut).
#[derive(Debug, Clone)]
pub struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
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

    /// Accepts and forwards again, on the same port.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound again.
    pub async fn resume(&self) {
        let listener = TcpListener::bind(self.address)
            .await
            .expect("the same port");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let accepting = tokio::spawn(async move {
            // Dropped with this task: aborts every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    continue;
                };
                connections.spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        *self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(accepting);
    }
}
