//! A `redis-server` of the test's own on a free loopback port (Debian's
//! `redis-server`), keeping nothing on disk; stopped when dropped. Never
//! the instance a machine runs on 6379. Also a three-node Redis Cluster
//! (`--cluster-enabled yes`, made with `redis-cli --cluster create`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis.
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not start.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut r = Self { port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[String]) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server (.ci/run does)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; its output.
    ///
    /// # Panics
    /// When `redis-cli` is missing.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli` against the Redis on `port`; its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is not installed: apt-get install redis-server (.ci/run does)");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port that is free, as is the cluster bus port 10,000 above it.
fn free_cluster_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let port = 20_000 + port % 30_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// A Redis Cluster of three primaries (no replicas), each the test's own,
/// with its cluster state in a temporary folder.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes, joins them and waits until the cluster is ok.
    ///
    /// # Panics
    /// When the cluster cannot be made.
    #[must_use]
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_cluster_port();
            if nodes.iter().any(|n: &Redis| n.port == port) {
                continue;
            }
            let mut r = Redis { port, child: None };
            r.spawn_with(&cluster_args(dir.path(), port));
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let made = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is not installed");
        assert!(
            made.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&made.stdout)
        );
        let c = Self { nodes, dir };
        c.wait_ok();
        c
    }

    /// Waits until every node says the cluster is ok.
    ///
    /// # Panics
    /// After 30 s.
    pub fn wait_ok(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        while !self
            .nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < until, "the Redis cluster is not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed URLs, as `[redis] cluster = [...]` takes them.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Kills node `i` (as a crash would).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again: it rejoins with its saved cluster state.
    pub fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let args = cluster_args(self.dir.path(), port);
        self.nodes[i].kill();
        self.nodes[i].spawn_with(&args);
        self.wait_ok();
    }
}

fn cluster_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        dir.join(format!("nodes-{port}.conf")).display().to_string(),
        "--cluster-node-timeout".into(),
        "2000".into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}
