//! What the order system's HTTP tests share: a system in a fresh data
//! directory, and clients signed in as its demo users.
#![allow(dead_code, unreachable_pub)]

use palisade_order_system::embedded::{Settings, System};
use palisade_order_system::identity::Credentials;
use palisade_order_system::load::Gateway;
use palisade_token_bucket::Bucket;

/// Settings for a system in a fresh data directory, with 16 demo load
/// users (each hash costs tens of milliseconds).
pub fn settings() -> (Settings, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("palisade-order-system-{}", fastrand::u64(..)));
    let mut settings = Settings::new(dir.clone(), ([127, 0, 0, 1], 0).into());
    settings.demo_load_users = 16;
    (settings, dir)
}

pub async fn start_with(per_user: Option<Bucket>) -> (System, std::path::PathBuf) {
    let (mut settings, dir) = settings();
    if let Some(bucket) = per_user {
        settings.per_user = bucket;
    }
    (System::start(settings).await.unwrap(), dir)
}

pub async fn start() -> (System, std::path::PathBuf) {
    start_with(None).await
}

/// The demo users' passwords the system wrote on its first start.
pub fn credentials(system: &System) -> Credentials {
    Credentials::load(&system.demo.as_ref().unwrap().credentials).unwrap()
}

/// A client of `system`'s gateway signed in as the demo user `name`.
pub async fn signed_in(system: &System, name: &str) -> Gateway {
    let mut gateway = Gateway::new(&format!("http://{}", system.address));
    gateway
        .sign_in(credentials(system).of(name).unwrap())
        .await
        .unwrap();
    gateway
}
