//! The hub server's settings from outside: the `--config` TOML file (and `SSEHUB_CONFIG`), its
//! precedence under flags and environment variables, its errors, `--version`, and `--backlog`
//! sizing the accept queue. The compiled example is started as a process and driven over real
//! TCP; every wait is bounded; only the processes started here are signalled or killed.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hub_process::*;

/// A config file holding `text`, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir()
            .join(format!("ssehub-hub-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write the config file");
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The status of `POST /publish?topic=t` with `token` as its bearer token, if any.
fn publish_status(addr: SocketAddr, token: Option<&str>) -> u16 {
    let auth = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> =
        auth.as_deref().map(|value| ("Authorization", value)).into_iter().collect();
    request(addr, "POST", "/publish?topic=t", &headers, r#"{"data":"x"}"#).status
}

/// Reads `stream` until a heartbeat comment arrives; panics if it ends or none comes in time.
fn await_heartbeat(stream: &mut Stream) {
    let deadline = Instant::now() + WAIT;
    while !stream.raw.windows(13).any(|w| w == b": keep-alive\n") {
        assert!(Instant::now() < deadline, "no heartbeat");
        assert!(stream.fill(), "the stream ended");
    }
}

#[test]
fn a_config_file_sets_what_the_flags_set() {
    let file = ConfigFile::new(
        "settings",
        "heartbeat = 0.2\npublish-token = \"from-file\"\nallow-disconnect = true\n",
    );
    let server = Server::start(&["--config", file.path()]);
    assert_eq!(publish_status(server.addr, None), 401);
    assert_eq!(publish_status(server.addr, Some("from-file")), 200);
    let auth = [("Authorization", "Bearer from-file")];
    let ended = request(server.addr, "POST", "/disconnect?topic=t", &auth, "");
    assert_eq!(ended.status, 200, "allow-disconnect from the file: {}", ended.body);
    let mut stream = Stream::connected(server.addr, "/events?topic=quiet", &[]);
    await_heartbeat(&mut stream);

    // The same file named by SSEHUB_CONFIG.
    let server = Server::start_with_env(&[], &[("SSEHUB_CONFIG", file.path())]);
    assert_eq!(publish_status(server.addr, None), 401);
    assert_eq!(publish_status(server.addr, Some("from-file")), 200);
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let file = ConfigFile::new("precedence", "publish-token = \"from-file\"\n");
    let env = [("SSEHUB_PUBLISH_TOKEN", "from-env")];
    let server = Server::start_with_env(&["--config", file.path()], &env);
    assert_eq!(publish_status(server.addr, Some("from-file")), 401);
    assert_eq!(publish_status(server.addr, Some("from-env")), 200);

    let args = ["--config", file.path(), "--publish-token", "from-flag"];
    let server = Server::start_with_env(&args, &env);
    assert_eq!(publish_status(server.addr, Some("from-env")), 401);
    assert_eq!(publish_status(server.addr, Some("from-flag")), 200);
}

#[test]
fn a_bad_config_file_exits_2_naming_the_file_the_key_and_why() {
    for (name, text, expected) in [
        ("unknown", "heartbaet = 1\n", "key `heartbaet`: unknown key"),
        ("value", "heartbeat = \"soon\"\n", "key `heartbeat`: invalid value \"soon\""),
        ("syntax", "heartbeat = \n", ""),
    ] {
        let file = ConfigFile::new(name, text);
        // A flag overriding the key does not hide the file's bad value.
        let output = hub_command()
            .args(["--config", file.path(), "--heartbeat", "1"])
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("config file {}: ", file.path())), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let output =
        hub_command().args(["--config", "/nonexistent/ssehub.toml"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/ssehub.toml"));
}

#[test]
fn version_prints_the_name_and_version() {
    let output = hub_command().arg("--version").output().expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("ssehub 0.") || stdout.starts_with("ssehub 1."), "{stdout}");
}

/// How many connections a stopped server's accept queue takes: connects that complete (the
/// kernel answers them from the queue) before one times out (its SYN dropped on a full queue).
#[cfg(target_os = "linux")]
fn queued_connections(addr: SocketAddr, at_most: usize) -> Vec<TcpStream> {
    let mut queued = Vec::new();
    while queued.len() < at_most {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }
    queued
}

/// Linux queues `backlog + 1` completed connections on a listener nobody accepts from, then
/// drops further SYNs: a stopped server shows its backlog.
#[cfg(target_os = "linux")]
#[test]
fn the_backlog_flag_sizes_the_accept_queue() {
    let file = ConfigFile::new("backlog", "backlog = 3\n");
    for (args, expected) in [
        (vec!["--backlog", "5"], 6),
        (vec!["--config", file.path()], 4),
        // The default (4,096) takes all of them.
        (vec![], 40),
    ] {
        let server = Server::start(&args);
        server.signal("STOP");
        let queued = queued_connections(server.addr, 40);
        server.signal("CONT");
        assert_eq!(queued.len(), expected, "{args:?}");
    }
}

/// The nice value of each of `pid`'s threads, by thread name (from `/proc`).
#[cfg(target_os = "linux")]
fn thread_nice_values(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    let mut out = Vec::new();
    for task in tasks.map_while(Result::ok) {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // `pid (comm) state ...`: the name may hold spaces, so fields count after its `)`;
        // nice is field 19, the 17th after the name.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let nice = stat[close + 1..].split_whitespace().nth(16).and_then(|n| n.parse().ok());
        out.push((name, nice.expect("a nice field")));
    }
    out
}

/// Whether this process may lower a nice value (CAP_SYS_NICE in its effective set).
#[cfg(target_os = "linux")]
fn may_raise_priority() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let caps = status.lines().find_map(|line| line.strip_prefix("CapEff:"));
    let caps = caps.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).unwrap_or(0);
    const CAP_SYS_NICE: u32 = 23;
    caps & (1 << CAP_SYS_NICE) != 0
}

#[cfg(target_os = "linux")]
#[test]
fn the_publish_thread_runs_ahead_of_the_stream_workers() {
    let server = Server::start(&["--publish-nice", "-5", "--fanout-nice", "7"]);
    // The publish API answers, so its thread is up and has set its priority.
    assert_eq!(publish_status(server.addr, None), 200);
    let threads = thread_nice_values(server.child.id());
    let publish: Vec<_> = threads.iter().filter(|(name, _)| name == "ssehub-publish").collect();
    assert_eq!(publish.len(), 1, "{threads:?}");
    // Without CAP_SYS_NICE the raise is refused (and logged) and the hub runs on.
    let expected = if may_raise_priority() { -5 } else { 0 };
    assert_eq!(publish[0].1, expected, "{threads:?}");
    let workers: Vec<_> = threads.iter().filter(|(name, _)| name == "tokio-rt-worker").collect();
    assert!(!workers.is_empty(), "{threads:?}");
    assert!(workers.iter().all(|(_, nice)| *nice == 7), "{threads:?}");
    // The flags' ranges are checked: a worker may not be raised, nothing goes past -20.
    for bad in [["--fanout-nice", "-1"], ["--publish-nice", "-21"]] {
        let mut command = hub_command();
        let output = command.args(bad).output().expect("run the hub");
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
    }
}
