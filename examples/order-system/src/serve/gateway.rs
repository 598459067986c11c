//! The gateway's process: the API, the orders service, auth and the read
//! models (the catalog, the order history).

use std::time::Duration;

use palisade_coalesce::{Freshness, RedisCache, RedisSettings};
use palisade_outbox::BoxError;
use palisade_token_bucket::{FailurePolicy, Leasing, LeasingStore, LocalStore, RedisStore};
use tokio::net::TcpListener;

use super::{
    Process, ServeSettings, connect_redis, consumer, end_tasks, open, run_consumer, serve_http,
};
use crate::auth::{self, Sessions};
use crate::catalog::Catalog;
use crate::db::redact_url;
use crate::gateway::{self, Services, Shared};
use crate::history::History;
use crate::identity::Identity;
use crate::limits::Limited;
use crate::load::Gateway;
use crate::orders::Orders;
use crate::payment::cards::{RemoteVault, Tokenizer};
use crate::service::{Consumers, SagaService};

/// The gateway: the API, the orders service (placing orders, and its
/// consumer ending sagas), auth and the catalog; rate limits, the
/// catalog's cache and sign-in in Redis.
pub(super) async fn gateway(
    settings: &ServeSettings,
    process: Process<'_>,
) -> Result<(), BoxError> {
    let identity = Identity::load(settings.identity.as_deref().ok_or(
        "the gateway needs --identity FILE (or PALISADE_IDENTITY): who may sign in \
         (`order-system identity DIR` makes one with demo users)",
    )?)?;
    let cards = RemoteVault::new(settings.payment.as_deref().ok_or(
        "the gateway needs --payment URL (or PALISADE_PAYMENT): payment's HTTP address, \
         where card numbers are tokenized",
    )?)?;
    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|error| format!("--admin-listen {}: {error}", settings.admin_listen))?;
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    // This gateway's consumer wakes the requests waiting for the ends it
    // commits; the re-reads catch those another gateway's consumer
    // commits (its replicas share the durable consumer), a quarter of a
    // second late at most.
    let orders = Orders::new(open(settings, Orders::NAME, Orders::TABLES, 8).await?)
        .reread_ends(Duration::from_millis(250));
    let meter = telemetry.meter();
    let catalog =
        Catalog::new(open(settings, Catalog::NAME, Catalog::TABLES, 2).await?).instrument(&meter);
    let history =
        History::new(open(settings, History::NAME, History::TABLES, 2).await?).instrument(&meter);

    let (client, connection) = connect_redis(settings).await?;
    // Redis down: each gateway limits alone with the same bucket, rather
    // than refusing everyone or letting everyone through. Each bucket has
    // its keys under a prefix of its own.
    let limited = settings.limits.stored(|name, bucket| {
        RedisStore::new(
            connection.clone(),
            FailurePolicy::Fallback {
                store: LocalStore::default(),
                bucket,
            },
        )
        .prefix(&settings.redis_prefix(&format!("rl:{name}")))
        // Redis shares the gateway's cores: under full load a 10 ms answer
        // is late for reasons that are not Redis's; 50 ms still fails fast.
        .timeout(Duration::from_millis(50))
        .instrument(&meter, name)
    });
    // A user's requests through this gateway spend tokens it leased from
    // the user's bucket in Redis: a user busy here costs a round trip per
    // lease, not per request (at most a tenth of the bucket each).
    let per_user =
        LeasingStore::new(limited.per_user, Leasing::new())?.instrument(&meter, "per-user");
    let limits = Limited {
        per_user: per_user.clone(),
        per_address: limited.per_address,
        sign_in: limited.sign_in,
        buckets: limited.buckets,
    };
    let trending = RedisCache::<_, tower::BoxError>::connect(
        &client,
        connection.clone(),
        RedisSettings::new(Freshness::new(Duration::from_secs(5)))
            .prefix(&settings.redis_prefix("catalog")),
    )
    .await
    .map_err(|error| {
        format!(
            "Redis at {}: {error}",
            redact_url(&settings.infrastructure.redis)
        )
    })?;
    trending.instrument(&meter, "trending");

    // The read models are kept beside the API that serves them.
    let ranking = consumer(settings, catalog.clone()).await?;
    let histories = consumer(settings, history.clone()).await?;
    let consumer = consumer(settings, orders.clone()).await?;
    let consumers = Consumers::default();
    consumers.add(Orders::NAME, consumer.clone());
    consumers.add(Catalog::NAME, ranking.clone());
    consumers.add(History::NAME, histories.clone());
    let services = Services {
        telemetry,
        processor: None,
        breaker: None,
        auth: auth::Auth::new(
            identity,
            Sessions::redis(connection.clone(), &settings.sessions_prefix()),
        ),
        catalog,
        history,
        orders,
        // Inventory, payment and shipping run in processes of their own:
        // their books come from the peers.
        steps: None,
        cards: Tokenizer::Remote(Box::new(cards)),
        consumers,
        peers: settings.peers.iter().map(|url| Gateway::new(url)).collect(),
    };
    let shared = Shared {
        limits,
        trending,
        objectives: crate::objectives::Objectives::default(),
    };
    let admin = gateway::admin_router(services.clone());
    // Requests waiting for a saga's end are answered as the order stands
    // once stopping, so the server's graceful shutdown does not wait
    // them out.
    let (waited, stopping) = (services.orders.clone(), stop.signal());
    tasks.spawn(async move {
        stopping.await;
        waited.end_waits();
    });
    let app = gateway::router(services, shared, &meter);
    tasks.spawn(serve_http(listener, app, stop.signal()));
    tasks.spawn(serve_http(admin_listener, admin, stop.signal()));
    // Any consumer failing stops the process with its error, rather than
    // serving sagas or read models that no longer move.
    // (Boxed: three consumers' futures side by side are large.)
    let consumed = tokio::try_join!(
        Box::pin(run_consumer(&consumer, stop, settings.stop_grace)),
        Box::pin(run_consumer(&ranking, stop, settings.stop_grace)),
        Box::pin(run_consumer(&histories, stop, settings.stop_grace))
    )
    .map(drop);
    end_tasks(tasks, stop, settings.stop_grace).await;
    // The users' unspent leased tokens go back to the other gateways.
    per_user.give_back().await;
    consumed
}
