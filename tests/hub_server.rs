//! The hub server example (`examples/hub.rs`) over real TCP: the compiled example is started
//! on a port of its choosing, then driven with a small HTTP/1.1 client and the crate's own SSE
//! parser. Every wait is bounded; only the processes started here are signalled or killed.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::thread;
use std::time::{Duration, Instant};

use hub_process::*;
use serde_json::Value;

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn a_published_event_reaches_the_stream_exactly() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=chat&pattern=room:*", &[]);
    assert_eq!(stream.status, 200);
    let content_type = stream.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    assert_eq!(content_type.map(|(_, v)| v.as_str()), Some("text/event-stream"));

    let data = "line one\nline two — déjà vu, naïve café 🎉🚀\n\n  indented after a blank line";
    let response = post(
        server.addr,
        "/publish?topic=chat",
        &serde_json::json!({ "data": data, "event": "note" }).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let answer = response.json();
    assert_eq!(answer["receivers"], 1);
    let event = stream.next_message().expect("the published event");
    assert_eq!(event.event, "note");
    assert_eq!(event.data, data);
    assert_eq!(event.id, answer["id"].as_str().expect("a hub-assigned id"));

    // CRLF becomes LF; a publisher's id goes on the wire exactly; retry rides in the frame;
    // patterns match; data starting with a space keeps it.
    let id = publish(
        server.addr,
        "room:1",
        &serde_json::json!({ "data": " a\r\nb", "id": "my id 1", "retry": 1500 }),
    );
    assert_eq!(id, "my id 1");
    let event = stream.next_message().expect("the second event");
    assert_eq!(
        (event.event.as_str(), event.data.as_str(), event.id.as_str()),
        ("message", " a\nb", "my id 1")
    );
    assert_eq!(event.retry, Some(1500));
}

#[test]
fn bad_publishes_get_400_with_a_reason() {
    let server = Server::start(&["--heartbeat", "0"]);
    let cases: [(&str, &str, &str); 12] = [
        ("/publish?topic=t", "not json", "invalid body"),
        ("/publish?topic=t", "{}", "missing field `data`"),
        ("/publish?topic=t", r#"{"data": 5}"#, "invalid type"),
        ("/publish?topic=t", r#"{"data": "x", "extra": 1}"#, "unknown field `extra`"),
        ("/publish?topic=t", r#"{"data": "x", "retry": -1}"#, "invalid value"),
        ("/publish?topic=t", r#"{"data": "x", "id": "a\nb"}"#, "line break"),
        ("/publish?topic=t", r#"{"data": "x", "id": "a\u0000b"}"#, "NUL"),
        ("/publish?topic=t", r#"{"data": "x", "event": "a\rb"}"#, "line break"),
        ("/publish", r#"{"data": "x"}"#, "missing query parameter: topic"),
        ("/publish?topic=", r#"{"data": "x"}"#, "empty"),
        ("/publish?topic=a*b", r#"{"data": "x"}"#, "'*'"),
        ("/publish?topic=a&topic=b", r#"{"data": "x"}"#, "exactly one topic"),
    ];
    for (target, body, reason) in cases {
        let response = post(server.addr, target, body);
        assert_eq!(response.status, 400, "{target} {body}: {}", response.body);
        let error = response.json()["error"].as_str().expect("an error string").to_string();
        assert!(error.contains(reason), "{target} {body}: {error:?} lacks {reason:?}");
    }
    assert_eq!(get(server.addr, "/publish?topic=t").status, 405);
    assert_eq!(get(server.addr, "/events?topic=a*b").status, 400);
    // Nothing refused was published.
    assert_eq!(get(server.addr, "/stats").json()["events_published"], 0);
}

#[test]
fn the_publish_token_is_required_when_set() {
    let server = Server::start(&["--heartbeat", "0", "--publish-token", "s3cret"]);
    let publish_as = |auth: &[(&str, &str)]| {
        request(server.addr, "POST", "/publish?topic=t", auth, r#"{"data": "x"}"#)
    };
    let none = publish_as(&[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    for wrong in ["Bearer nope", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
        let response = publish_as(&[("Authorization", wrong)]);
        assert_eq!(response.status, 401, "{wrong}");
        assert!(!response.body.contains("s3cret"), "the token is never echoed");
    }
    // The scheme is case-insensitive.
    for right in ["Bearer s3cret", "bearer s3cret"] {
        let response = publish_as(&[("Authorization", right)]);
        assert_eq!(response.status, 200, "{right}: {}", response.body);
    }
    // Disconnect is off unless enabled, token or not.
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(request(server.addr, "POST", "/disconnect?topic=t", &auth, "").status, 403);

    // With it enabled, the token guards it too.
    let admin =
        Server::start(&["--heartbeat", "0", "--publish-token", "s3cret", "--allow-disconnect"]);
    assert_eq!(post(admin.addr, "/disconnect?topic=t", "").status, 401);
    let ended = request(admin.addr, "POST", "/disconnect?topic=t", &auth, "");
    assert_eq!((ended.status, ended.json()["disconnected"].as_u64()), (200, Some(0)));
}

#[test]
fn disconnect_then_resume_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let server = Server::start(&["--heartbeat", "0", "--allow-disconnect"]);
    let addr = server.addr;
    let target = "/events?topic=feed&pattern=side:*";
    let mut stream = Stream::connected(addr, target, &[]);

    // A publisher keeps going through the disconnect, the gap and the replay, across two
    // topics of the subscription.
    const TOTAL: usize = 300;
    let publisher = thread::spawn(move || {
        for n in 0..TOTAL {
            let topic = if n % 3 == 0 { "side:x" } else { "feed" };
            publish(addr, topic, &serde_json::json!({ "data": n.to_string() }));
            thread::sleep(Duration::from_millis(3));
        }
    });

    let mut seen: Vec<usize> = Vec::new();
    let mut last_id = String::new();
    while seen.len() < 60 {
        let event = stream.next_message().expect("live events");
        seen.push(event.data.parse().expect("a number"));
        last_id = event.id;
    }
    let ended = post(addr, "/disconnect?topic=feed", "");
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["disconnected"], 1);
    for event in stream.until_end() {
        seen.push(event.data.parse().expect("a number"));
        last_id = event.id;
    }
    // Away for a while: events pile up in the history.
    thread::sleep(Duration::from_millis(150));

    let mut resumed = Stream::connected(addr, target, &[("Last-Event-ID", &last_id)]);
    while seen.len() < TOTAL {
        let event = resumed.next_message().expect("replayed and live events");
        assert_ne!(event.event, "reset", "{}", event.data);
        seen.push(event.data.parse().expect("a number"));
    }
    publisher.join().expect("publisher");
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>(), "every event once, in order");

    // The query parameter resumes too (for clients that cannot set headers); a stale id that
    // we never issued gets a reset, never silence.
    let mut from_query = Stream::connected(addr, &format!("{target}&lastEventId={last_id}"), &[]);
    assert!(from_query.next_message().is_some_and(|e| e.event == "message"));
    let mut unknown = Stream::connected(addr, "/events?topic=feed&lastEventId=nonsense", &[]);
    let reset = unknown.next().expect("a reset event");
    assert_eq!((reset.event.as_str(), reset.id.as_str()), ("reset", ""));
}

#[test]
fn stats_and_metrics_describe_the_hub() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=news", &[]);
    for n in 0..3 {
        publish(server.addr, "news", &serde_json::json!({ "data": format!("item {n}") }));
    }
    for _ in 0..3 {
        stream.next_message().expect("an event");
    }

    let stats = get(server.addr, "/stats");
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let stats = stats.json();
    assert_eq!(stats["subscribers"], 1);
    assert_eq!(stats["events_published"], 3);
    assert_eq!(stats["frames_delivered"], 3);
    for key in ["topics", "frames_dropped", "slow_disconnects", "heartbeats"] {
        assert!(stats[key].is_u64(), "{key} in {stats}");
    }
    for key in ["events_per_second", "frames_per_second", "uptime_seconds"] {
        assert!(stats[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {stats}");
    }
    assert_eq!(stats["demo"], false);
    let top = stats["top_topics"].as_array().expect("top_topics");
    assert!(top.iter().any(|t| t["topic"] == "news" && t["subscribers"] == 1), "{stats}");

    let metrics = get(server.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let text = metrics.body;
    for line in [
        "ssehub_subscribers 1",
        "ssehub_events_published_total 3",
        "ssehub_frames_delivered_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
    }
    assert!(text.contains("ssehub_topic_subscribers{topic=\"news\"} 1"), "{text}");
    // Every sample is `name{labels} value`, in a family announced by HELP and TYPE (blank
    // lines between families are part of the format).
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.starts_with("ssehub_"), "{line:?}");
        // A histogram's series are its family's name with `_bucket`, `_sum` or `_count`.
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|family| text.contains(&format!("# TYPE {family} histogram\n")))
            .unwrap_or(name);
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
    }
}

#[test]
fn the_demo_page_and_feed_are_served() {
    let server = Server::start(&["--heartbeat", "0", "--demo", "--demo-rate", "50"]);
    let page = get(server.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(page.body.contains("/app.js"));
    let script = get(server.addr, "/app.js");
    assert!(script.body.contains("new EventSource"));
    let style = get(server.addr, "/style.css");
    assert_eq!(style.status, 200);
    // Everything is served from here: no CDN, no web font, no remote image.
    for text in [&page.body, &script.body, &style.body] {
        for remote in ["src=\"http", "href=\"http", "url(http", "@import", "fetch(\"http"] {
            assert!(!text.contains(remote), "a remote resource: {remote}");
        }
    }

    // The snapshot names the last event it includes; a stream resuming from it replays the
    // ticks since (no reset).
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        let snapshot = get(server.addr, "/demo/market");
        assert_eq!(snapshot.status, 200);
        let snapshot = snapshot.json();
        if snapshot["last_id"].is_string() {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "no tick published");
        thread::sleep(Duration::from_millis(50));
    };
    let symbols = snapshot["symbols"].as_array().expect("symbols");
    assert!(symbols.len() >= 24, "{} symbols", symbols.len());
    assert!(symbols.iter().all(|s| s["recent"].as_array().is_some_and(|r| !r.is_empty())));
    let last_id = snapshot["last_id"].as_str().unwrap_or_default();

    let target = format!("/events?pattern=price:*&lastEventId={last_id}");
    let mut prices = Stream::connected(server.addr, &target, &[]);
    let event = prices.next_message().expect("a price");
    assert_eq!(event.event, "price");
    assert!(!event.id.is_empty());
    let quote: Value = serde_json::from_str(&event.data).expect("JSON data");
    assert!(quote["symbol"].is_string() && quote["price"].is_f64() && quote["change"].is_number());
    assert!(quote["time"].is_u64());
    assert_eq!(get(server.addr, "/stats").json()["demo"], true);

    // Without --demo the snapshot is a 404 (the page then shows its "no feed" state).
    let plain = Server::start(&["--heartbeat", "0"]);
    assert_eq!(get(plain.addr, "/demo/market").status, 404);
}

#[test]
fn idle_streams_get_keep_alive_comments() {
    let server = Server::start(&["--heartbeat", "0.2"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=quiet", &[]);
    let deadline = Instant::now() + WAIT;
    while !stream.raw.windows(13).any(|w| w == b": keep-alive\n") {
        assert!(Instant::now() < deadline, "no heartbeat");
        assert!(stream.fill(), "the stream ended");
    }
    assert!(!String::from_utf8_lossy(&stream.raw).contains(": keep-alive\n\n"));
}

#[test]
fn the_connection_limit_answers_503() {
    let server = Server::start(&["--heartbeat", "0", "--max-connections", "1"]);
    let _first = Stream::connected(server.addr, "/events?topic=t", &[]);
    let second = get(server.addr, "/events?topic=t");
    assert_eq!(second.status, 503);
    assert!(second.header("retry-after").is_some());
}

#[test]
fn a_fixed_send_buffer_still_streams_every_event() {
    let server = Server::start(&["--heartbeat", "0", "--send-buffer", "16384"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=t", &[]);
    assert_eq!(stream.status, 200);
    // 400 KB published before the client reads: more than its socket buffers hold, so the
    // stream waits on a full socket and goes on as it drains.
    let data = "b".repeat(4000);
    let ids: Vec<String> =
        (0..100).map(|_| publish(server.addr, "t", &serde_json::json!({ "data": data }))).collect();
    for id in ids {
        let event = stream.next_message().expect("every event");
        assert_eq!((event.id.as_str(), event.data.len()), (id.as_str(), data.len()));
    }
}

#[test]
fn help_and_bad_flags() {
    let help = hub_command().arg("--help").output().expect("--help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in
        ["--addr", "--demo", "--heartbeat", "--allow-disconnect", "--publish-token", "SSEHUB_ADDR"]
    {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    for args in [
        &["--bogus"][..],
        &["--heartbeat", "soon"],
        &["--addr"],
        &["--addr", "nowhere"],
        &["--send-buffer", "lots"],
    ] {
        let output = hub_command().args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
    let output = hub_command().env("SSEHUB_HEARTBEAT", "-1").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_end_open_streams_and_exit() {
    for signal in ["INT", "TERM"] {
        let mut server =
            Server::start(&["--heartbeat", "0", "--retry", "2", "--retry-jitter", "1"]);
        let mut stream = Stream::connected(server.addr, "/events?topic=t", &[]);
        server.signal(signal);
        // The stream gets the final retry hint, then ends cleanly.
        stream.until_end();
        let hint = stream.parser.reconnection_time().expect("a retry hint");
        assert!((2000..=3000).contains(&hint), "{hint}");
        let raw = String::from_utf8_lossy(&stream.raw);
        assert_eq!(
            raw.matches("retry: ").count(),
            2,
            "the connect hint and the final one: {raw:?}"
        );
        let status = wait_bounded(&mut server.child, WAIT).expect("the server exited");
        assert!(status.success(), "SIG{signal}: {status}");
        // Every stream ended by itself: the server did not give up on one at its grace period.
        let output = server.output();
        assert_eq!(output.last().map(String::as_str), Some("stopped"), "{output:?}");
        assert!(!output.iter().any(|l| l.contains("still open")), "{output:?}");
    }
}
