//! The gateway's abuse limits: token buckets by client address before a
//! request is authenticated, and by user after.
//!
//! - **Every request** draws first on its client address's bucket
//!   ([`Limits::per_address`]), before its bearer token is looked up: a
//!   flood of random or stolen-and-revoked tokens is refused by the
//!   address (`429`), and never costs the token store more than the
//!   address's rate.
//! - **Signing in** (`/authorize`, `/token`) draws besides on a tighter
//!   bucket of the address ([`Limits::sign_in`]): each `POST /authorize`
//!   checks a password with Argon2id, and a flood from one address must
//!   neither burn the gateway's cores nor queue ahead of other people's
//!   sign-ins.
//! - **Signed-in requests** then draw on their user's bucket
//!   ([`Limits::per_user`]), keyed by the user the token stands for, never
//!   by the token: signing in again earns no fresh burst.
//!
//! The address buckets are each gateway's own, in process, whatever
//! store the user buckets are in: the gate in front of the token lookup
//! and the password check costs no round trip, so a flood is refused
//! before it becomes load on the shared store. With several gateways
//! behind a balancer an address gets up to that many times its rate;
//! the user buckets, in a shared store, are the fleet's. On real
//! infrastructure each gateway leases a busy user's tokens from Redis (a
//! `LeasingStore`, at most a tenth of the bucket a lease), so a user may
//! get up to that much more per gateway over an interval.
//!
//! The client address is the connection's peer (axum's `ConnectInfo`); an
//! IPv6 client is its `/64`, the block one subscriber is given, so cycling
//! through the addresses of one block earns nothing. A request whose
//! connection carries no address (one routed in process) draws on one
//! bucket shared by all such requests. Behind a reverse proxy every client
//! has the proxy's address: limit there, or key by the address it
//! forwards, which only a proxy you run may be trusted to set.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use palisade_token_bucket::key;
use palisade_token_bucket::{Bucket, LocalStore};

/// The gateway's buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Every request, by client address, before authentication: by default
    /// 200 at once, then 100 a second.
    pub per_address: Bucket,
    /// `/authorize` and `/token`, by client address: by default 20 at
    /// once, then one a second.
    pub sign_in: Bucket,
    /// Signed-in requests, by user: by default 100 at once, then 50 a
    /// second.
    pub per_user: Bucket,
}

impl Default for Limits {
    fn default() -> Self {
        let bucket = |capacity, per_second| {
            Bucket::new(capacity, per_second).unwrap_or_else(|_| unreachable!("a valid bucket"))
        };
        Self {
            per_address: bucket(200, 100.0),
            sign_in: bucket(20, 1.0),
            per_user: bucket(100, 50.0),
        }
    }
}

impl Limits {
    /// The buckets with their stores: the address buckets in process
    /// (one [`LocalStore`] each, since they are keyed alike), the user
    /// buckets in the store `store` makes from the bucket's name
    /// (`per-user`) and the bucket.
    pub fn stored<St>(self, store: impl FnOnce(&'static str, Bucket) -> St) -> Limited<St> {
        Limited {
            per_address: LocalStore::default(),
            sign_in: LocalStore::default(),
            per_user: store("per-user", self.per_user),
            buckets: self,
        }
    }
}

/// The gateway's buckets and their stores.
#[derive(Debug, Clone)]
pub struct Limited<St> {
    /// The store of [`Limits::per_address`]: this gateway's.
    pub per_address: LocalStore,
    /// The store of [`Limits::sign_in`]: this gateway's.
    pub sign_in: LocalStore,
    /// The store of [`Limits::per_user`].
    pub per_user: St,
    /// The buckets.
    pub buckets: Limits,
}

/// The rate-limit key of a request's client: its peer address (an IPv6
/// address's `/64`), or one shared key when the connection has none.
#[must_use]
pub fn client_address() -> ClientAddress {
    key::or(
        key::extension(peer_key as fn(&ConnectInfo<SocketAddr>) -> String),
        key::global("no-address"),
    )
}

/// The key [`client_address`] makes.
pub type ClientAddress = key::Or<
    key::Extension<ConnectInfo<SocketAddr>, fn(&ConnectInfo<SocketAddr>) -> String>,
    key::Global,
>;

fn peer_key(ConnectInfo(peer): &ConnectInfo<SocketAddr>) -> String {
    key::address_block(peer.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_token_bucket::key::Key;

    #[test]
    fn a_request_without_an_address_draws_on_one_shared_bucket() {
        let by_address = client_address();
        let bare = http::Request::new(());
        let mut from = http::Request::new(());
        from.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 5000))));
        assert!(by_address.key(&bare).is_some());
        assert_ne!(by_address.key(&bare), by_address.key(&from));
    }
}
