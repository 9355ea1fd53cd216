//! Real brokers for the backplane tests: `redis-server` and `nats-server -js`, started on free
//! loopback ports with their data in a temporary directory, killed by PID when dropped.
//!
//! A missing server binary skips the test with a plain message, except under `CI`, where it is a
//! failure: CI installs both (see `.ci/run`).
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

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

impl Broker {
    /// Starts a broker, or returns `None` (after saying so) when its binary is not installed
    /// outside CI. Under `CI`, a missing binary fails the test.
    pub fn start(kind: Kind) -> Option<Broker> {
        let Some(binary) = find(kind.binary()) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is required in CI (.ci/run installs it)",
                kind.binary()
            );
            eprintln!(
                "SKIPPED: {} is not installed; this backplane test did not run",
                kind.binary()
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "ssehub-{}-{}-{}",
            kind.binary(),
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut broker = Broker { kind, binary, child: None, port: free_port(), dir };
        broker.restart();
        Some(broker)
    }

    /// The broker's URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the process (again, on the same port and data), and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
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
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", self.kind.binary());
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.kind == Kind::Nats {
            // JetStream answers a moment after the port opens.
            std::thread::sleep(Duration::from_millis(300));
        }
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
