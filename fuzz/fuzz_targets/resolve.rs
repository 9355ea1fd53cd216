//! Request resolution and `Last-Event-ID` handling on arbitrary paths, queries and headers:
//! the resolvers never panic, and whatever they accept, the hub either subscribes (replaying or
//! answering with a `reset`) or refuses with a typed error; the subscription's first frames
//! always parse.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ssehub::parse::Parser;
use ssehub::resolve::{cookie, last_event_id, query_params};
use ssehub::{Event, HistoryLimits, Hub, PathTopic, QueryTopics};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Path and query, as raw bytes (most are not valid URIs; those are skipped).
    target: Vec<u8>,
    /// Header names and values, as raw bytes.
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Events published before the request, by topic index.
    published: Vec<(u8, String)>,
}

fuzz_target!(|input: Input| {
    let target = String::from_utf8_lossy(&input.target);
    let mut builder = http::Request::get(format!("/{}", target.trim_start_matches('/')));
    for (name, value) in input.headers.iter().take(16) {
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
        else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let _ = query_params(&parts);
    let _ = cookie(&parts, "session");
    let resume = last_event_id(&parts);

    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new().with_max_events(4)))
        .with_max_replay(8)
        .with_epoch(0xf0)
        .build();
    for (topic, data) in input.published.iter().take(16) {
        let _ = hub.publish(&format!("t{}", topic % 4), Event::new(data.clone()));
    }
    let resolvers = [
        QueryTopics::new().parse(&parts),
        PathTopic::new("/api/device/{id}/sse", "device:{id}").with_wildcard("all").parse(&parts),
    ];
    for resolved in resolvers {
        let Ok(mut subscribe) = resolved else {
            continue;
        };
        if let Some(id) = &resume {
            subscribe = subscribe.with_last_event_id(id.clone());
        }
        if let Ok(mut sub) = hub.subscribe(subscribe) {
            let mut parser = Parser::new();
            let mut events = Vec::new();
            while let Ok(Some(batch)) = sub.try_recv() {
                parser.feed(&batch.into_bytes(), &mut events).expect("the hub's frames always parse");
            }
        }
    }
});
