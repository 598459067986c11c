//! The embedded default (`order-system run`) through crashes: the process
//! is killed with `SIGKILL` at random moments under load, or stopped with
//! Ctrl-C (`SIGINT`), and started again on the same data directory. Once it
//! has settled, every order placed before is confirmed or cancelled, stock
//! balances with nothing left reserved, no compensation ran twice, and
//! every outbox is drained with nothing dead.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_order_system::books::Books;
use palisade_order_system::identity::Credentials;
use palisade_order_system::load::{self, Gateway, LoadSettings, Progress};

/// How long the system may take to settle after its last start: the
/// events a killed relay had claimed wait out their lease (5 s) first, and
/// the payments it had claimed theirs (10 s).
const SETTLE: Duration = Duration::from_secs(180);

/// `order-system run` on a data directory of its own.
struct Embedded {
    dir: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    child: Option<Child>,
}

impl Embedded {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-crash-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        // A loopback address of its own (127.2.0.0/16 and up: the load's
        // clients use 127.1.x.y), so no port the system, the other test or
        // anything on 127.0.0.1 picks can be one of its two, whose ports
        // are picked while both are held (so they differ).
        let host = std::net::Ipv4Addr::new(
            127,
            fastrand::u8(2..=254),
            fastrand::u8(..),
            fastrand::u8(1..=254),
        );
        let pick =
            || TcpListener::bind((host, 0)).expect("a free port on its own loopback address");
        let (listener, admin_listener) = (pick(), pick());
        Self {
            dir,
            listen: listener.local_addr().unwrap(),
            admin_listen: admin_listener.local_addr().unwrap(),
            child: None,
        }
    }

    /// What the system logged, to go with a failure.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("order-system.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "{} (last lines of {}):\n{}",
            self.dir.display(),
            self.dir.join("order-system.log").display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn gateway(&self) -> Gateway {
        Gateway::new(&format!("http://{}", self.listen))
    }

    fn admin(&self) -> Gateway {
        Gateway::new(&format!("http://{}", self.admin_listen))
    }

    /// Starts the system on its data directory and waits for `/healthz`.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("order-system.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_order-system"))
            .args(["run", "--data"])
            .arg(&self.dir)
            .args(["--listen", &self.listen.to_string()])
            .args(["--admin-listen", &self.admin_listen.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answered = self
                .gateway()
                .send(http::Method::GET, "/healthz", &[], bytes::Bytes::new())
                .await;
            if matches!(answered, Ok((status, _)) if status.is_success()) {
                return;
            }
            if let Ok(Some(exit)) = self.child.as_mut().unwrap().try_wait() {
                panic!("exited ({exit}) while starting; {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not healthy after 60 s; {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SIGKILL`: no shutdown of any kind (of a process still running:
    /// one that ended by itself under the load is a failure).
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("exited ({exit}) under load; {}", self.log());
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Ctrl-C (`SIGINT`); waits for the process to end on its own.
    async fn interrupt(&mut self) {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "still running 60 s after Ctrl-C; {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            exit.success(),
            "Ctrl-C ended it with {exit}; {}",
            self.log()
        );
    }

    /// A load that runs until it is aborted (the process dies under it).
    fn load(&self) -> tokio::task::JoinHandle<()> {
        let settings = LoadSettings {
            gateway: format!("http://{}", self.listen),
            admin: format!("http://{}", self.admin_listen),
            orders: 1_000_000,
            concurrency: 32,
            decline_rate: 0.2,
            progress: Progress::Hidden,
            credentials: Credentials::load(&self.dir.join("credentials.json")).unwrap(),
            processor_outage: None,
            processor_admin: None,
        };
        tokio::spawn(async move {
            // Fails once the system is gone; the crash is the point.
            let _ = load::run(&settings).await;
        })
    }

    /// The books once every invariant holds with every saga ended and
    /// every outbox drained; panics with the violations after `SETTLE`.
    async fn settled(&self) -> Books {
        let deadline = Instant::now() + SETTLE;
        loop {
            let (status, body) = self
                .admin()
                .send(http::Method::GET, "/books", &[], bytes::Bytes::new())
                .await
                .unwrap_or_else(|error| panic!("GET /books: {error}; {}", self.log()));
            assert!(status.is_success(), "GET /books: {status}; {}", self.log());
            let books: Books = serde_json::from_slice(&body).unwrap();
            let violations = books.violations(true);
            if violations.is_empty() {
                return books;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after {} s: {violations:#?}\n{books:?}\n{}",
                SETTLE.as_secs(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Orders in the books, whatever their status.
fn orders(books: &Books) -> i64 {
    books.orders.iter().map(|(_, _, count)| count).sum()
}

/// Compensations run: one per payment declined.
fn declined(books: &Books) -> i64 {
    books
        .orders
        .iter()
        .filter(|(_, reason, _)| reason.as_deref() == Some("payment_declined"))
        .map(|(_, _, count)| count)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_saga() {
    let seed = fastrand::u64(..);
    println!("crash seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut system = Embedded::new();
    for round in 0..5 {
        system.start().await;
        let load = system.load();
        let after = Duration::from_millis(rng.u64(300..3000));
        tokio::time::sleep(after).await;
        println!("round {round}: SIGKILL after {after:?} of load");
        system.kill();
        load.abort();
    }
    system.start().await;
    let books = system.settled().await;
    println!("{books:?}");
    assert!(orders(&books) > 0, "no order was placed");
    assert_eq!(books.compensations, declined(&books), "one per decline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_under_load_loses_no_saga() {
    let seed = fastrand::u64(..);
    println!("ctrl-c seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut system = Embedded::new();
    for round in 0..3 {
        system.start().await;
        let load = system.load();
        let after = Duration::from_millis(rng.u64(300..3000));
        tokio::time::sleep(after).await;
        println!("round {round}: Ctrl-C after {after:?} of load");
        system.interrupt().await;
        load.abort();
    }
    system.start().await;
    let books = system.settled().await;
    println!("{books:?}");
    assert!(orders(&books) > 0, "no order was placed");
    assert_eq!(books.compensations, declined(&books), "one per decline");
}
