//! A throwaway Redis Cluster of three local `redis-server` processes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three masters on loopback, stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

/// A port free now, whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + u16::try_from(fastrand::u32(0..10_000)).expect("in range");
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

impl LocalCluster {
    /// Starts three `redis-server` processes in cluster mode and joins them
    /// with `redis-cli --cluster create`, then waits until the cluster
    /// reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing (`scripts/services`
    /// installs them) or the cluster does not form within 30 s.
    #[must_use]
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-cluster-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{port}.conf"))
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server (run scripts/services)")
            })
            .collect();
        let cluster = Self { nodes, ports, dir };
        cluster.wait_for(|port| cli(port, &["PING"]).contains("PONG"));
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(created.status.success(), "cluster create: {created:?}");
        cluster.wait_for(|port| cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The hash slot of `key`, as the cluster computes it.
    ///
    /// # Panics
    ///
    /// When the cluster does not answer with a number.
    #[must_use]
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot")
    }

    fn wait_for(&self, ready: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ports.iter().all(|port| ready(*port)) {
            assert!(
                Instant::now() < deadline,
                "the local cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
