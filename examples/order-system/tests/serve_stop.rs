//! `serve` asked to stop lets the work under way finish, within its grace,
//! on real PostgreSQL, NATS JetStream and Redis: a payment process
//! stopping while a charge is at the card processor records what came of
//! it (the charge was cut short, its intent left claimed until its lease
//! ran out and no payment written, though the processor had charged the
//! card), and a client that never finishes its request holds the stop no
//! longer than the grace.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use palisade_order_system::card::CardNumber;
use palisade_order_system::db::{Param, ServiceDb, Statements};
use palisade_order_system::events::Line;
use palisade_order_system::payment::Payment;
use palisade_order_system::payment::vault::{Vault, VaultKey};
use palisade_order_system::processor::{ChargeStore, GOOD_CARD, ProcessorServer, Simulator};
use palisade_order_system::serve::{Infrastructure, Role, ServeSettings, remove_namespace, serve};
use palisade_order_system::service::SagaService;
use palisade_testkit::servers::{database_url, nats_url, redis_url};

/// A free port on loopback (the process binds it a moment later).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
}

/// A process `serve` runs until told to stop.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), palisade_outbox::BoxError>>,
}

impl Serving {
    fn start(settings: ServeSettings) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(settings, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Fails the test, with its error, if the process has ended unasked.
    async fn still_running(&mut self) {
        if self.task.is_finished() {
            panic!("the process ended: {:?}", (&mut self.task).await);
        }
    }

    /// Tells the process to stop; fails the test unless it ends cleanly
    /// within `limit`.
    async fn stop_within(self, limit: Duration) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(limit, self.task)
            .await
            .expect("the process stops in time")
            .unwrap()
            .unwrap();
    }
}

fn infrastructure() -> Infrastructure {
    Infrastructure {
        postgres: database_url(),
        nats: nats_url(),
        redis: redis_url(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_payment_process_records_the_charge_under_way() {
    let namespace = format!("stop{}", fastrand::u32(..));
    let dir = std::env::temp_dir().join(format!("palisade-{namespace}"));
    std::fs::create_dir_all(&dir).unwrap();

    // The card processor, answering each charge after a while.
    let simulator = Simulator::new(ChargeStore::open_sqlite(&dir).await.unwrap());
    simulator.faults().set_delay(Duration::from_millis(500));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let processor = format!("http://{}", grpc.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProcessorServer::new(simulator.clone()))
            .serve_with_incoming(palisade_order_system::net::grpc_incoming(grpc)),
    );

    // An intent due, its card in the vault, as payment's consumer leaves it.
    let key = VaultKey::generate();
    let db = ServiceDb::open_postgres(
        &database_url(),
        &format!("{namespace}_{}", Payment::NAME),
        Payment::TABLES,
        2,
    )
    .await
    .unwrap();
    let card = Vault::open(db.clone(), &key)
        .await
        .unwrap()
        .tokenize(&CardNumber::parse(GOOD_CARD).unwrap())
        .await
        .unwrap();
    let line = Line {
        order_id: "o-1".to_owned(),
        user_id: "alice".to_owned(),
        sku: "sku-1".to_owned(),
        quantity: 1,
        amount_cents: 1_000,
        card_token: card.token,
        card_last4: card.last4,
    };
    db.execute(
        "INSERT INTO payment_intents (order_id, line, due_ms) VALUES ($1, $2, 0)",
        &[
            Param::Text(&line.order_id),
            Param::Text(&serde_json::to_string(&line).unwrap()),
        ],
    )
    .await
    .unwrap();

    let mut settings = ServeSettings::new(Role::Payment, infrastructure(), free_address());
    settings.processor = processor;
    settings.vault_key = Some(key);
    settings.namespace.clone_from(&namespace);
    let mut serving = Serving::start(settings);
    // Stopped while the charge is at the processor.
    while simulator.calls() == 0 {
        serving.still_running().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serving.stop_within(Duration::from_secs(30)).await;

    let paid: Vec<(String, String)> = db
        .fetch_all("SELECT order_id, status FROM payments", &[])
        .await
        .unwrap();
    let waiting: Vec<(String,)> = db
        .fetch_all("SELECT order_id FROM payment_intents", &[])
        .await
        .unwrap();
    assert_eq!(
        (paid, waiting),
        (vec![("o-1".to_owned(), "succeeded".to_owned())], vec![]),
        "the charge the processor made is recorded, its intent settled"
    );

    server.abort();
    db.close().await;
    remove_namespace(infrastructure(), &namespace)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that sends half a request body and no more held a stopping
/// process for good: the HTTP server's graceful shutdown waits for every
/// request under way, here payment's `/cards` reading its body. The
/// stop's grace ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_finished_holds_a_stop_no_longer_than_its_grace() {
    let namespace = format!("grace{}", fastrand::u32(..));
    let listen = free_address();
    let mut settings = ServeSettings::new(Role::Payment, infrastructure(), listen);
    settings.processor = "http://127.0.0.1:1".to_owned();
    settings.vault_key = Some(VaultKey::generate());
    settings.namespace.clone_from(&namespace);
    settings.stop_grace = Duration::from_secs(1);
    let mut serving = Serving::start(settings);
    // One whole request answered on the connection, so it is served;
    // then the start of another.
    let mut client = loop {
        if let Ok(client) = tokio::net::TcpStream::connect(listen).await {
            break client;
        }
        serving.still_running().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0; 12];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    client
        .write_all(b"POST /cards HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"number\"")
        .await
        .unwrap();
    // Well under the default grace (25 s): the one set is kept.
    serving.stop_within(Duration::from_secs(10)).await;
    drop(client);
    remove_namespace(infrastructure(), &namespace)
        .await
        .unwrap();
}
