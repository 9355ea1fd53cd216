//! The server most Rust users write: axum 0.8's `Sse` over one `tokio::sync::broadcast` channel
//! per topic. Each connection's stream receives a clone of every event (an id and an
//! `Arc<str>`, so the clone is cheap) and formats it itself through `axum::response::sse::Event`,
//! i.e. once per client. No keep-alive (the contract's servers send no heartbeats). A receiver
//! that falls behind the ring (`--capacity` events) is disconnected, as ssehub's default policy
//! does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::thread;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde::Deserialize;
use ssehub_bench_peers::{publisher, Config, Gate};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

const HELP: &str = "axum_broadcast: axum Sse + one tokio broadcast channel per topic\n\n";

/// One published event, as the channel carries it.
#[derive(Debug, Clone)]
struct Tick {
    /// Its sequence number within its topic.
    id: u64,
    /// The `data:` value.
    data: Arc<str>,
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct App {
    /// One channel per topic.
    topics: Arc<HashMap<String, broadcast::Sender<Tick>>>,
    /// Opened by `/start`.
    gate: Arc<Gate>,
}

/// `?topic=NAME`.
#[derive(Debug, Deserialize)]
struct Params {
    /// The topic to follow.
    topic: String,
}

async fn events(State(app): State<App>, Query(params): Query<Params>) -> Response {
    let Some(sender) = app.topics.get(&params.topic) else {
        return (StatusCode::NOT_FOUND, "no such topic\n").into_response();
    };
    let stream = BroadcastStream::new(sender.subscribe()).map_while(|tick| {
        // `Err(Lagged)`: this client fell behind the ring; end its stream.
        let tick = tick.ok()?;
        let event = Event::default().event("tick").id(tick.id.to_string()).data(&*tick.data);
        Some(Ok::<_, Infallible>(event))
    });
    Sse::new(stream).into_response()
}

async fn start(State(app): State<App>) -> &'static str {
    app.gate.open();
    "started\n"
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_args(HELP);
    if config.send_buffer.is_some() {
        // The idiomatic server this peer stands for leaves the kernel's default.
        eprintln!("axum_broadcast: --send-buffer is not supported");
        std::process::exit(2);
    }
    let senders: Vec<broadcast::Sender<Tick>> =
        (0..config.topics).map(|_| broadcast::channel(config.capacity).0).collect();
    let app = App {
        topics: Arc::new(config.topic_names().into_iter().zip(senders.iter().cloned()).collect()),
        gate: Arc::new(Gate::default()),
    };
    if config.autostart {
        app.gate.open();
    }
    {
        let (config, gate) = (config.clone(), app.gate.clone());
        thread::Builder::new().name("publisher".into()).spawn(move || {
            publisher(&config, &gate, |topic, seq, data| {
                // An error only means nobody listens to this topic right now.
                let _ = senders[topic].send(Tick { id: seq, data: data.into() });
                true
            })
        })?;
    }
    let runtime = config.runtime()?;
    runtime.block_on(async {
        let router =
            Router::new().route("/events", get(events)).route("/start", get(start)).with_state(app);
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        eprintln!("axum_broadcast: listening on {}", listener.local_addr()?);
        let listener = listener.tap_io(|socket| {
            let _ = socket.set_nodelay(true);
        });
        axum::serve(listener, router).await
    })?;
    Ok(())
}
