//! `examples/tail.rs` against a hub over real TCP: `--json --max-events N` prints exactly the
//! events, one JSON object per line, and exits.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ssehub::{Endpoint, Event, Hub};

/// The example binary `cargo test` built next to this test's binary (built here if this test
/// runs alone).
fn tail_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = profile_dir.join("examples").join("tail");
    if !path.exists() {
        let status =
            std::process::Command::new(env!("CARGO")).args(["build", "--example", "tail"]).status();
        assert!(status.is_ok_and(|s| s.success()), "could not build the tail example");
    }
    path
}

#[tokio::test]
async fn tail_prints_json_lines_and_stops_after_max_events() {
    let binary = tail_binary();
    let hub = Hub::builder().with_heartbeat(None).build();
    let app =
        axum::Router::new().route("/events", ssehub::axum::events(Endpoint::new(hub.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let child = tokio::process::Command::new(binary)
        .args(["--json", "--max-events", "3", &format!("http://{addr}/events?topic=t")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if hub.topic_subscriber_count("t") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.publish("t", Event::new("plain").with_id("1")).unwrap();
    hub.publish("t", Event::new("two\nlines é 🚀").with_event("tick").with_id("2")).unwrap();
    hub.publish("t", Event::new("")).unwrap();
    hub.publish("t", Event::new("never printed")).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"id": "1", "event": "message", "data": "plain"}),
            serde_json::json!({"id": "2", "event": "tick", "data": "two\nlines é 🚀"}),
            serde_json::json!({"id": "2", "event": "message", "data": ""}),
        ]
    );
}
