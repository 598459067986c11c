//! The catalog's ranking, a read model, on PostgreSQL: rebuilt while its
//! consumer keeps applying events, it loses none and counts none twice.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use palisade_order_system::catalog::{Catalog, Trending};
use palisade_order_system::db::{ServiceDb, Statements};
use palisade_order_system::events::{Line, SagaEvent};
use palisade_order_system::read_model::{REBUILT_AT_ONCE, rebuild};
use palisade_order_system::service::{Consuming, SagaService};
use palisade_outbox::{BoxError, Delivery, Handler, InboxStore};

mod support;

/// `ShippingScheduled` for `quantity` of `sku`, as the stream delivers it.
fn shipped(sku: &str, quantity: i64) -> Delivery {
    let event = SagaEvent::ShippingScheduled(Line {
        order_id: uuid::Uuid::now_v7().to_string(),
        user_id: "alice".into(),
        sku: sku.to_owned(),
        quantity,
        amount_cents: 1250 * quantity,
        card_token: "card_0123456789abcdef0123456789abcdef".to_owned(),
        card_last4: "4242".to_owned(),
    });
    support::delivery(&event)
}

/// What the catalog's consumer does with `delivery`: the inbox check and
/// the handler in one transaction.
async fn consume(catalog: &Catalog, delivery: &Delivery) {
    let (outbox, inbox) = catalog.db().as_postgres().unwrap();
    let mut tx = inbox.begin().await.unwrap();
    let first_time = inbox
        .process_all(&mut tx, Catalog::NAME, &[delivery.envelope.id.as_str()])
        .await
        .unwrap();
    if first_time[0] {
        Consuming(catalog.clone(), outbox.clone())
            .handle(&mut *tx, delivery)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// `deliveries` as a replay brings them.
fn history_of(deliveries: Vec<Delivery>) -> impl Stream<Item = Result<Delivery, BoxError>> + Send {
    futures_util::stream::iter(deliveries.into_iter().map(Ok))
}

fn ranking(pairs: &[(&str, i64)]) -> Vec<Trending> {
    pairs
        .iter()
        .map(|(sku, shipped)| Trending {
            sku: (*sku).to_owned(),
            shipped: *shipped,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_the_consumer_runs_loses_nothing_and_counts_nothing_twice() {
    let url = palisade_testkit::servers::database_url();
    let schema = format!("catalog_rebuild_{}", fastrand::u64(..));
    let db = ServiceDb::open_postgres(&url, &schema, Catalog::TABLES, 4)
        .await
        .unwrap();
    let catalog = Catalog::new(db.clone()).delay(Duration::ZERO);
    let (a, b, c) = (
        shipped("sku-1", 2),
        shipped("sku-2", 1),
        shipped("sku-1", 3),
    );
    consume(&catalog, &a).await;
    consume(&catalog, &b).await;

    // C reaches the consumer after the rebuild took its lock, and is not
    // in the history it reads: the consumer's transaction waits for the
    // rebuild, then applies C on top of it.
    let (live, late) = (catalog.clone(), c.clone());
    let (started, consumer) = tokio::sync::oneshot::channel();
    let history = vec![a.clone(), b.clone()];
    let blocked = format!("INSERT INTO {schema}.inbox%");
    let applied = rebuild(&catalog, async move {
        let _ = started.send(tokio::spawn(async move { consume(&live, &late).await }));
        let mut watcher = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        assert!(
            support::wait_for_lock_waiters(&mut watcher, &blocked, 1).await,
            "the consumer waits for the rebuild"
        );
        Ok(history_of(history))
    })
    .await
    .unwrap();
    consumer.await.unwrap().await.unwrap();
    assert_eq!(applied, 2);
    let trending = catalog.trending().await.unwrap();
    assert_eq!(trending, ranking(&[("sku-1", 5), ("sku-2", 1)]), "C kept");

    // Rebuilt again from a history that holds C, and an event no one can
    // read (the consumer gave up on it: left out); C delivered again is
    // a duplicate.
    let mut unreadable = shipped("sku-2", 7);
    unreadable.payload = bytes::Bytes::from_static(b"not an event");
    let everything = vec![a.clone(), unreadable, b.clone(), c.clone()];
    let applied = rebuild(&catalog, async { Ok(history_of(everything)) })
        .await
        .unwrap();
    assert_eq!(applied, 3);
    consume(&catalog, &c).await;
    assert_eq!(
        catalog.trending().await.unwrap(),
        ranking(&[("sku-1", 5), ("sku-2", 1)]),
        "nothing counted twice"
    );

    db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}

/// A history longer than what a rebuild applies at once is applied in
/// parts within one transaction: an event delivered twice in two parts
/// counts once, and a history failing on the way leaves the projection as
/// it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_applied_in_parts_all_or_nothing() {
    let url = palisade_testkit::servers::database_url();
    let schema = format!("catalog_parts_{}", fastrand::u64(..));
    let db = ServiceDb::open_postgres(&url, &schema, Catalog::TABLES, 2)
        .await
        .unwrap();
    let catalog = Catalog::new(db.clone()).delay(Duration::ZERO);
    let shipments: Vec<Delivery> = (0..=REBUILT_AT_ONCE).map(|_| shipped("sku-1", 1)).collect();
    let mut history = shipments.clone();
    history.push(shipments[0].clone());
    let applied = rebuild(&catalog, async { Ok(history_of(history)) })
        .await
        .unwrap();
    let count = i64::try_from(shipments.len()).unwrap();
    assert_eq!(applied, u64::try_from(count).unwrap());
    assert_eq!(
        catalog.trending().await.unwrap(),
        ranking(&[("sku-1", count)])
    );

    // Failing after a first part: nothing of it is kept.
    let mut again = vec![shipped("sku-2", 4)];
    again.extend(shipments);
    let failing = history_of(again).chain(futures_util::stream::once(async {
        Err("the stream went away".into())
    }));
    let failed = rebuild(&catalog, async { Ok(failing) }).await;
    assert_eq!(failed.unwrap_err().to_string(), "the stream went away");
    assert_eq!(
        catalog.trending().await.unwrap(),
        ranking(&[("sku-1", count)]),
        "the projection as it was"
    );

    db.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}
