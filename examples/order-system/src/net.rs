//! The TCP settings every server and client of the system shares: no
//! Nagle delay on any connection. A request or an answer written in more
//! than one piece (HTTP/2's frames, a response's head and body) otherwise
//! waits for the peer's acknowledgement of the first: on loopback under
//! load, that was most of a charge's 19 ms at the card processor.

use axum::serve::{ListenerExt, TapIo};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// `listener` for `axum::serve`, each connection it accepts without
/// Nagle's delay.
pub fn http_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(no_delay)
}

fn no_delay(stream: &mut TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY not set");
    }
}

/// `listener` for a tonic server, each connection it accepts without
/// Nagle's delay (tonic leaves the accepted sockets as they come).
#[must_use]
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An HTTP client's connector whose connections go without Nagle's
/// delay.
#[must_use]
pub fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;
    use futures_util::StreamExt;

    use super::*;

    async fn bound() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    #[tokio::test]
    async fn the_http_listener_accepts_connections_without_nagle() {
        let (listener, address) = bound().await;
        let mut listener = http_listener(listener);
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn the_grpc_incoming_accepts_connections_without_nagle() {
        let (listener, address) = bound().await;
        let mut incoming = grpc_incoming(listener);
        let _client = TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// Tokio's default, which the two above change: the check is not
    /// vacuous.
    #[tokio::test]
    async fn a_plain_listener_accepts_connections_with_nagle() {
        let (listener, address) = bound().await;
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
    }
}
