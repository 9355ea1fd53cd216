//! Real brokers for the backplane tests: `redis-server` and `nats-server -js`, started on free
//! loopback ports with their data in a temporary directory, killed by PID when dropped.
//!
//! A missing server binary fails the test with a message saying how to install it: a backplane
//! test that cannot start its broker has not tested anything, so it must not pass. `.ci/run`
//! installs both.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis-server`, with an append-only file synced on every write, so a restart keeps
    /// everything that was acknowledged.
    Redis,
    /// `nats-server -js`, JetStream storing in files.
    Nats,
}

impl Kind {
    /// The server binary.
    fn binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
        }
    }
}

/// A broker process this test started.
#[derive(Debug)]
pub struct Broker {
    /// Which broker.
    kind: Kind,
    /// The server binary.
    binary: PathBuf,
    /// The running process, if running.
    child: Option<Child>,
    /// The loopback port.
    pub port: u16,
    /// Its data directory (removed on drop).
    dir: PathBuf,
}

/// Finds `name` on `PATH` or in the usual system directories.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port free on 127.0.0.1 right now, below the kernel's ephemeral range: an outgoing
/// connection of another test can never be given it as its local port between this check and the
/// broker's bind (or while the broker is down for a restart), and a reconnecting client can never
/// connect to itself on it.
fn free_port() -> u16 {
    let (low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32768, 60999));
    // Ports from 10,000 up to the ephemeral range, tried from a point that differs per process
    // and per call, so test binaries running side by side rarely try the same one first.
    let span = u32::from(low.saturating_sub(10_000)).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for step in 0..span {
        let port = 10_000 + ((seed.wrapping_add(step.wrapping_mul(7_919))) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}")
}

impl Broker {
    /// Starts a broker. Fails the test, saying how to install it, when its binary is missing.
    pub fn start(kind: Kind) -> Broker {
        let binary = find(kind.binary()).unwrap_or_else(|| {
            panic!(
                "{binary} is not installed, so this backplane test cannot run: install it \
                 (Debian: `apt-get install redis-server nats-server`; `.ci/run` does) or run \
                 the tests without the redis and nats features",
                binary = kind.binary()
            )
        });
        let dir = std::env::temp_dir().join(format!(
            "ssehub-{}-{}-{}",
            kind.binary(),
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut broker = Broker { kind, binary, child: None, port: free_port(), dir };
        // A port can still be taken between the check and the broker's bind (by another test's
        // broker): then the process exits, and a first start moves to another port.
        for _ in 0..5 {
            if broker.spawn() {
                return broker;
            }
            broker.port = free_port();
        }
        panic!("{} did not start on five ports", kind.binary())
    }

    /// The broker's URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Sends `signal` (e.g. `STOP` to freeze it, `CONT` to let it go on) to this broker's
    /// process only.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} the broker");
    }

    /// Starts the process again, on the same port and data, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        // The port is outside the ephemeral range, so nothing but another broker can hold it;
        // a failed bind is retried in case the old process's socket is still being torn down.
        for _ in 0..5 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{} did not restart on port {}", self.kind.binary(), self.port)
    }

    /// Spawns the process and waits until it accepts connections: `true` once it does while
    /// still running (so the listener is ours, not another process's), `false` if it exited.
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().to_string();
        let mut command = Command::new(&self.binary);
        match self.kind {
            Kind::Redis => {
                command.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir,
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--daemonize",
                    "no",
                ]);
            }
            Kind::Nats => {
                command.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir]);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = |child: &mut Child| !matches!(child.try_wait(), Ok(None));
        loop {
            if exited(&mut child) {
                let _ = child.wait();
                return false;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not open port {} in 10 s", self.kind.binary(), self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // JetStream answers a moment after the port opens; and a process that lost the port to
        // another has exited by then, so the check below does not take a stranger for ours.
        std::thread::sleep(Duration::from_millis(match self.kind {
            Kind::Nats => 300,
            Kind::Redis => 100,
        }));
        if exited(&mut child) {
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    /// Kills the process (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the (stopped) broker's data, as a lost disk would.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("create the data directory");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
