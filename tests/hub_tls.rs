//! The hub server over HTTPS (`--tls-cert`/`--tls-key`, `--tls-self-signed`): curl over
//! HTTP/2 streaming and publishing, certificate reload on SIGHUP, and bad certificate files
//! refused at start. Every wait is bounded; only the processes started here are signalled or
//! killed. Needs `curl` (with HTTP/2) on the PATH: without it these tests fail saying so.

#[path = "support/hub_process.rs"]
mod hub_process;
#[path = "support/tls.rs"]
mod tls;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use hub_process::*;

/// `curl` with `args`, failing the test with a clear message when curl is not installed.
fn curl(args: &[&str]) -> Command {
    let found = Command::new("curl").arg("--version").output();
    let version = found.unwrap_or_else(|e| panic!("these tests need curl on the PATH: {e}"));
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains("HTTP2"), "these tests need a curl with HTTP/2: {text}");
    let mut command = Command::new("curl");
    command.args(["--silent", "--show-error", "--max-time", "20"]).args(args);
    command
}

/// One request with curl over HTTP/2: the exit status and what it printed (`-w` appends the
/// HTTP version and the status).
fn fetch(cacert: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--http2", "--cacert", cacert, "-w", "\n%{http_version} %{http_code}"];
    all.extend_from_slice(args);
    let output = curl(&all).output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// A `curl -N` stream: its output lines, as they come; killed on drop.
struct CurlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CurlStream {
    /// `curl --http2 -N -i --cacert CACERT URL`.
    fn open(cacert: &str, url: &str) -> CurlStream {
        let mut child = curl(&["--http2", "-N", "-i", "--cacert", cacert, url])
            .arg("--max-time")
            .arg("60")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        CurlStream { child, lines }
    }

    /// Reads lines until one is `wanted`; panics after `WAIT` or at the end of the output.
    fn expect_line(&self, wanted: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => {
                    let found = line.trim_end() == wanted;
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no line {wanted:?}; read {seen:?}"),
            }
        }
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's output until a line contains `wanted`; returns that line.
fn server_line(server: &Server, wanted: &str) -> String {
    loop {
        match server.lines.recv_timeout(WAIT) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(_) => continue,
            Err(_) => panic!("the server printed no line with {wanted:?}"),
        }
    }
}

/// Waits (bounded) until `/stats` over curl shows `n` subscribers.
fn subscribers(cacert: &str, base: &str, n: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = fetch(cacert, &[&format!("{base}/stats")]);
        let json = text.lines().next().unwrap_or_default();
        let stats: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        if stats["subscribers"] == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never {n} subscribers: {text}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn curl_streams_and_publishes_over_http2() {
    let dir = tls::ScratchDir::new("hub-tls-curl");
    let (cert, key) = tls::Certificate::new().write(&dir.0, "server");
    let server = Server::start(&["--heartbeat", "0", "--tls-cert", &cert, "--tls-key", &key]);
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let stream = CurlStream::open(&cert, &format!("{base}/events?topic=t"));
    let head = stream.expect_line("");
    assert_eq!(head[0].trim_end(), "HTTP/2 200", "{head:?}");
    assert!(head.iter().any(|h| h.trim_end() == "content-type: text/event-stream"), "{head:?}");
    subscribers(&cert, &base, 1);

    let body = r#"{"data":"over h2"}"#;
    let url = format!("{base}/publish?topic=t");
    let (status, answer) = fetch(&cert, &["-X", "POST", "--data", body, &url]);
    assert_eq!(status, Some(0), "{answer}");
    assert!(answer.ends_with("\n2 200"), "the publish went over HTTP/2: {answer}");
    assert!(answer.contains(r#""receivers":1"#), "{answer}");
    stream.expect_line("data: over h2");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_open_streams_go_on() {
    let dir = tls::ScratchDir::new("hub-tls-reload");
    let (first, second) = (tls::Certificate::new(), tls::Certificate::new());
    let (cert, key) = first.write(&dir.0, "server");
    let (first_ca, _) = first.write(&dir.0, "first");
    let (second_ca, _) = second.write(&dir.0, "second");
    let server = Server::start(&["--heartbeat", "0", "--tls-cert", &cert, "--tls-key", &key]);
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let stream = CurlStream::open(&first_ca, &format!("{base}/events?topic=t"));
    stream.expect_line("");
    subscribers(&first_ca, &base, 1);

    // New files, then SIGHUP: new connections get the new certificate.
    second.write(&dir.0, "server");
    server.signal("HUP");
    let line = server_line(&server, "SIGHUP");
    assert!(line.contains("reloaded the certificate from"), "{line}");
    let (status, text) = fetch(&second_ca, &[&format!("{base}/stats")]);
    assert_eq!(status, Some(0), "the new certificate is served: {text}");
    let (status, text) = fetch(&first_ca, &[&format!("{base}/stats")]);
    assert_ne!(status, Some(0), "the old certificate is no longer served: {text}");

    // A bad file keeps the certificate in use, and says so.
    std::fs::write(&cert, "not a certificate").expect("write");
    server.signal("HUP");
    let line = server_line(&server, "SIGHUP");
    assert!(line.contains("reload failed, the previous certificate is kept"), "{line}");
    assert!(line.contains(&cert), "the line names the file: {line}");
    let (status, text) = fetch(&second_ca, &[&format!("{base}/stats")]);
    assert_eq!(status, Some(0), "still the second certificate: {text}");

    // The stream opened under the first certificate still receives.
    let body = r#"{"data":"after the reload"}"#;
    let (status, text) =
        fetch(&second_ca, &["-X", "POST", "--data", body, &format!("{base}/publish?topic=t")]);
    assert_eq!(status, Some(0), "{text}");
    stream.expect_line("data: after the reload");
}

#[test]
fn a_self_signed_server_says_where_its_certificate_is() {
    let mut server = Server::start(&["--heartbeat", "0", "--tls-self-signed"]);
    let line = server_line(&server, "self-signed certificate");
    let path = line
        .split(" written to ")
        .nth(1)
        .and_then(|rest| rest.split(" (SHA-256 ").next())
        .unwrap_or_else(|| panic!("no path in {line:?}"));
    let fingerprint = line.rsplit("SHA-256 ").next().unwrap_or_default().trim_end_matches(')');
    assert_eq!(fingerprint.len(), 95, "32 bytes as AB:CD:..: {line}");
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let (status, text) = fetch(path, &[&format!("{base}/stats")]);
    assert_eq!(status, Some(0), "{text}");
    assert!(text.ends_with("\n2 200"), "{text}");
    // A graceful stop removes the file.
    server.signal("INT");
    let status = wait_bounded(&mut server.child, WAIT).expect("stopped");
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(path).exists(), "{path} removed at stop");
}

#[test]
fn missing_or_bad_certificate_files_exit_2_naming_them() {
    let dir = tls::ScratchDir::new("hub-tls-bad");
    let (cert, key) = tls::Certificate::new().write(&dir.0, "good");
    let garbage = dir.0.join("garbage.pem").display().to_string();
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let missing = dir.0.join("missing.pem").display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["--tls-cert", &missing, "--tls-key", &key], &missing),
        (&["--tls-cert", &cert, "--tls-key", &missing], &missing),
        (&["--tls-cert", &garbage, "--tls-key", &key], &garbage),
        (&["--tls-cert", &cert, "--tls-key", &cert], &cert),
        (&["--tls-cert", &cert], "--tls-cert needs --tls-key"),
    ];
    for (args, named) in cases {
        let mut child = hub_command()
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the hub");
        let status = wait_bounded(&mut child, WAIT).expect("exits");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
    }
}
