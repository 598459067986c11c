//! The relays' process: every service's outbox to the stream.

use std::time::Duration;

use super::{
    DATABASES, Process, ServeSettings, connect_jetstream, ensure_stream, internal, open, postgres,
    publisher, run_until_stopped, serve_http,
};
use palisade_circuit_breaker::CircuitBreaker;
use palisade_outbox::{BoxError, Relay};

/// The relays of every service's outbox, each woken by `LISTEN`, all
/// publishing through one circuit breaker in front of NATS (reported as
/// `nats`): once it finds the broker down, the four relays stop calling it
/// and wait for its probe instead of timing out a batch each.
pub(super) async fn relays(settings: &ServeSettings, process: Process<'_>) -> Result<(), BoxError> {
    let (listener, telemetry, mut tasks, stop) = process.into_parts();
    let context = connect_jetstream(settings).await?;
    let meter = telemetry.meter();
    let broker = CircuitBreaker::new(broker_breaker_config());
    broker.instrument(&meter, "nats");
    for (service, tables) in DATABASES {
        let db = open(settings, service, tables, 2).await?;
        let (outbox, _) = postgres(&db);
        outbox.listen().await?;
        ensure_stream(settings, &context, outbox.config()).await?;
        let relay = Relay::new(outbox.clone(), publisher(settings, &context, service))
            .circuit_breaker(broker.clone())
            .instrument(&meter, service);
        tasks.spawn(relay.run(stop.signal()));
    }
    tasks.spawn(serve_http(listener, internal(telemetry), stop.signal()));
    run_until_stopped(tasks, stop, settings.stop_grace).await;
    Ok(())
}

/// The relays' breaker in front of NATS: it opens once half of the last
/// publishes (5 at least) found the broker unavailable, and probes after
/// 1 s, then 2 s, 4 s, … up to 30 s while the outage lasts. A publish the
/// broker answers, refused or not, counts as a success.
fn broker_breaker_config() -> palisade_circuit_breaker::Config {
    palisade_circuit_breaker::Config::builder()
        .minimum_calls(5)
        .open_duration(Duration::from_secs(1))
        .open_backoff(2.0, Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| unreachable!("a valid breaker config"))
}
