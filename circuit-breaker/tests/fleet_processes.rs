//! A fleet of processes sharing one breaker through a real Redis
//! (`REDIS_URL`), in front of one dependency this test serves and kills.
//!
//! Three replicas (this test binary run again as children) call the
//! dependency through a breaker joined to one fleet: replica 0 every
//! millisecond, replicas 1 and 2 every 100 ms, so alone they would need
//! two seconds of failures each to trip. Their Redis goes through a proxy
//! the test cuts while all is well; then the dependency dies for three
//! seconds, and comes back.
#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use palisade_circuit_breaker::fleet::Fleet;
use palisade_circuit_breaker::{CircuitBreaker, Config, Outcome, SlidingWindow, State};
use palisade_testkit::servers::redis_proxy;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHILD: &str = "PALISADE_FLEET_CHILD";
const LINE: &str = "fleet-child";
const OPEN: Duration = Duration::from_millis(500);
const MINIMUM_CALLS: u32 = 20;

/// One call the dependency answered.
#[derive(Debug, Clone, Copy)]
struct Call {
    replica: usize,
    at: Instant,
    alive: bool,
    probe: bool,
}

/// The dependency: a line `call REPLICA PROBE` in, `ok` or `fail` out.
async fn dependency(alive: Arc<AtomicBool>, calls: Arc<Mutex<Vec<Call>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (alive, calls) = (alive.clone(), calls.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let words: Vec<&str> = line.split(' ').collect();
                    let alive = alive.load(Ordering::SeqCst);
                    calls.lock().unwrap().push(Call {
                        replica: words[1].parse().unwrap(),
                        at: Instant::now(),
                        alive,
                        probe: words[2] == "probe",
                    });
                    let answer: &[u8] = if alive { b"ok\n" } else { b"fail\n" };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// A child's lines, as they come.
struct Replica {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Replica {
    fn start(replica: usize, settings: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fleet_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{replica} {settings}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness may have begun the line (`test fleet_child ...`).
                if let Some((_, said)) = line.split_once(LINE) {
                    let _ = send.send(said.trim().to_owned());
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for the child to say `what`.
    fn expect(&self, what: &str) {
        loop {
            let said = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the child never said {what}"));
            if said == what {
                return;
            }
        }
    }

    fn stop(mut self) {
        // Its standard input closing is its signal to stop.
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a replica failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_open_together_and_send_one_probe_a_cycle() {
    let alive = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let address = dependency(alive.clone(), calls.clone()).await;
    let (proxy, redis) = redis_proxy().await;
    let prefix = format!("palisade-test:{}", fastrand::u64(..));
    let settings = format!("{address} {redis} {prefix}");
    let replicas: Vec<Replica> = (0..3).map(|n| Replica::start(n, &settings)).collect();
    // Off the runtime's threads: the dependency answers meanwhile.
    let wait_for = |what: &'static str| {
        tokio::task::block_in_place(|| {
            for replica in &replicas {
                replica.expect(what);
            }
        });
    };
    wait_for("joined");

    // Redis cut while all is well: the calls go on, closed.
    proxy.cut().await;
    let cut = Instant::now();
    wait_for("alone");
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.resume().await;
    let resumed = Instant::now();
    wait_for("joined");
    {
        let calls = calls.lock().unwrap();
        for replica in 0..3 {
            let during = calls
                .iter()
                .filter(|call| call.replica == replica && call.at > cut && call.at < resumed)
                .count();
            assert!(
                during > 0,
                "replica {replica} made no call while Redis was away"
            );
        }
    }

    // The dependency dies.
    alive.store(false, Ordering::SeqCst);
    let died = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    alive.store(true, Ordering::SeqCst);
    let revived = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for replica in replicas {
        replica.stop();
    }

    let calls = calls.lock().unwrap().clone();
    let dead: Vec<&Call> = calls
        .iter()
        .filter(|call| !call.alive && call.at > died)
        .collect();
    // The slow replicas opened on replica 0's trip, long before their own
    // windows could have.
    for replica in [1, 2] {
        let failed = dead
            .iter()
            .filter(|call| call.replica == replica && !call.probe)
            .count();
        assert!(
            failed < usize::try_from(MINIMUM_CALLS / 4).unwrap(),
            "replica {replica} failed {failed} calls before opening"
        );
    }
    // One probe a cycle for the whole fleet.
    let probes: Vec<&&Call> = dead.iter().filter(|call| call.probe).collect();
    assert!(probes.len() >= 2, "{probes:?}");
    for pair in probes.windows(2) {
        let apart = pair[1].at.duration_since(pair[0].at);
        assert!(
            apart >= OPEN - Duration::from_millis(50),
            "two probes {apart:?} apart"
        );
    }
    // Back: a probe closed the fleet, and every replica calls again.
    for replica in 0..3 {
        assert!(
            calls.iter().any(|call| call.replica == replica
                && call.alive
                && call.at > revived
                && !call.probe),
            "replica {replica} never closed"
        );
    }
}

/// The entry point of the replicas (this binary run again with the
/// settings in its environment), not a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by processes_open_together_and_send_one_probe_a_cycle in child processes"]
async fn fleet_child() {
    let settings = std::env::var(CHILD).expect("only run as a child of the fleet test");
    let fields: Vec<&str> = settings.split(' ').collect();
    let replica: usize = fields[0].parse().unwrap();
    let (dependency, redis, prefix) = (fields[1], fields[2], fields[3]);
    let every = if replica == 0 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(100)
    };
    let config = Config::builder()
        .sliding_window(SlidingWindow::Count(MINIMUM_CALLS))
        .minimum_calls(MINIMUM_CALLS)
        .open_duration(OPEN)
        .jitter(0.0)
        .half_open_permits(1)
        .half_open_successes(1)
        .half_open_max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    let member = Fleet::new(redis::Client::open(redis).unwrap())
        .prefix(prefix)
        .poll_every(Duration::from_millis(200))
        .join("dependency", &breaker)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        stopping.store(true, Ordering::SeqCst);
    });
    let (read, mut write) = TcpStream::connect(dependency).await.unwrap().into_split();
    let mut answers = tokio::io::BufReader::new(read).lines();
    let mut alone = true;
    while !stop.load(Ordering::SeqCst) {
        if member.is_alone() != alone {
            alone = !alone;
            println!("{LINE} {}", if alone { "alone" } else { "joined" });
            std::io::stdout().flush().unwrap();
        }
        let now = Instant::now();
        if let Ok(permit) = breaker.try_acquire(now) {
            let probe = if breaker.state() == State::HalfOpen {
                "probe"
            } else {
                "call"
            };
            write
                .write_all(format!("call {replica} {probe}\n").as_bytes())
                .await
                .unwrap();
            let answer = answers.next_line().await.unwrap().unwrap();
            let outcome = if answer == "ok" {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            permit.record(outcome, Instant::now());
        }
        tokio::time::sleep(every).await;
    }
}
