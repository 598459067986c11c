//! Connecting the tests to the real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`); each test keeps to its own key prefix.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection that gives up on a connect within 200 ms, so a cut proxy is
/// noticed; an answer may take seconds on a loaded machine (a cut proxy
/// resets at once, and stalls are cut by the stores' own timeouts).
pub(crate) async fn connect(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1);
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .expect("a reachable Redis (run scripts/services)")
}

/// A key prefix no other test uses.
pub(crate) fn prefix() -> String {
    format!("palisade-test:{}", fastrand::u64(..))
}
