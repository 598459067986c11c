//! A saga service as its consumer's handler: what it consumes is applied,
//! the rest ignored unseen.

use palisade_order_system::db::{Emitting, ServiceDb, Statements};
use palisade_order_system::events::{Line, SagaEvent};
use palisade_order_system::service::{Consuming, SagaService};
use palisade_order_system::shipping::Shipping;
use palisade_outbox::{Handled, Handler};

mod support;

#[tokio::test]
async fn a_service_applies_what_it_consumes_and_ignores_the_rest_unseen() {
    let dir = std::env::temp_dir().join(format!("palisade-service-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let db = ServiceDb::open_sqlite(&dir, Shipping::NAME, Shipping::TABLES)
        .await
        .unwrap();
    let line = Line {
        order_id: "o-1".to_owned(),
        user_id: "alice".into(),
        sku: "sku-1".to_owned(),
        quantity: 2,
        amount_cents: 500,
        card_token: "t".to_owned(),
        card_last4: "4242".to_owned(),
    };
    let shipments = || async {
        let (count,): (i64,) = db
            .fetch_one("SELECT count(*) FROM shipments", &[])
            .await
            .unwrap();
        count
    };
    let ServiceDb::Sqlite { pool, outbox, .. } = db.clone() else {
        unreachable!("a SQLite file was opened")
    };
    let handler = Consuming(Shipping::new(db.clone()), outbox.clone());

    // `event` handed to the consumer's handler in a transaction of its own.
    let handle = async |event: SagaEvent| {
        let mut tx = pool.begin().await.unwrap();
        let handled = handler
            .handle(&mut *tx, &support::delivery(&event))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        handled
    };

    // Not a type shipping consumes: ignored before it is read.
    let created = SagaEvent::OrderCreated(line.clone());
    assert_eq!(handle(created).await, Handled::Ignored);
    assert_eq!(shipments().await, 0);

    let paid = SagaEvent::PaymentSucceeded(line.clone());
    assert_eq!(handle(paid.clone()).await, Handled::Applied);
    assert_eq!(shipments().await, 1);
    // Its message once more (its inbox record forgotten): nothing ships
    // again, and no second event goes out (it failed on the shipment's
    // key until it was dead-lettered).
    let mut tx = pool.begin().await.unwrap();
    let mut emitting = Emitting {
        connection: &mut *tx,
        outbox: &outbox,
    };
    Shipping::new(db.clone())
        .apply(&mut emitting, paid)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(shipments().await, 1);
    let (scheduled,): (i64,) = db
        .fetch_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap();
    assert_eq!(scheduled, 1);

    // Given anyway, an event it does not consume is an error, never a
    // silent success.
    let mut tx = pool.begin().await.unwrap();
    let mut emitting = Emitting {
        connection: &mut *tx,
        outbox: &outbox,
    };
    let error = Shipping::new(db.clone())
        .apply(&mut emitting, SagaEvent::OrderCreated(line))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "shipping does not consume OrderCreated");
    let _ = std::fs::remove_dir_all(dir);
}
