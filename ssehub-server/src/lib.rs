//! The hub server: an SSE hub with a publish API, stats, metrics and a live demo page.
//!
//! ```sh
//! cargo run --release -p ssehub-server -- --demo   # then open http://127.0.0.1:8080/
//! cargo run --release -p ssehub-server -- --help   # every flag, variable and config key
//! cargo install --path ssehub-server               # the `ssehub` binary, into ~/.cargo/bin
//! ```
//!
//! `cargo run --release --example hub -- [flags]` runs the same code (without the brokers).
//! Running it in production (flags, config file, systemd, nginx): `docs/operating.md`.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /events?topic=A&topic=B&pattern=P` | the stream; `Last-Event-ID` (header, or `lastEventId` query parameter) resumes; `&snapshot=1` starts it with `event: snapshot` data `{"state":"begin","events":N}`, the latest event of every key of every topic it receives (ids intact), `event: snapshot` data `{"state":"end"}`, then live events (a resume that cannot be exact gets the snapshot instead of a `reset`, its begin frame with `"reason"`) |
//! | `POST /publish?topic=NAME` | body `{"data": string, "id"?: string, "event"?: string, "retry"?: integer, "key"?: string}` (the event becomes the topic's latest value for `key`; events without one share one value; `--state-keys` keys per topic, 10,000 by default, the oldest evicted; `--state-topics` topics holding state, 100,000 by default, the one published to longest ago that no stream receives losing its state) (unknown fields are refused); `200 {"id": ..., "receivers": N}`, `400 {"error": ...}`, `401` without the `--publish-token` (checked from the head, before the body is read) |
//! | `POST /publish`, `content-type: application/x-ndjson` | one `{"topic": string, "data": string, "id"?, "event"?, "retry"?, "key"?}` per line; `200`, one `{"id": ...}` per line in order; a bad line: `400 {"error": "line N: ..."}` and nothing published |
//! | any request with a body | `413` over `--max-body` (default 1 MiB), `408` when not received within `--body-timeout` (default 10 s); connections are kept alive and may pipeline |
//! | `POST /disconnect?topic=NAME` | ends the topic's streams: `200 {"disconnected": N}`; `403` unless `--allow-disconnect` |
//! | `GET /events?...&interval=250ms` | a rate tier: per key (per topic for keyless events) at most one event per interval (`ms` or `s`, whole milliseconds from 10 ms to 60 s; `0` for every event), the latest, the last of a burst at the end of its interval; `400` otherwise |
//! | `GET /events?...&client=ID` | the stream's client id, carried in its `connected` event (with JWT on, the token's `ssehub.client` claim or `sub` decides; another `client=` is `403`) |
//! | `POST /subscription?session=TOKEN` | body `{"add": {"topics": [...], "patterns": [...]}, "remove": {...}, "interval"?: "250ms"}`; changes what the session's open stream receives from the next event on, and at what pace (`"interval"`: `"250ms"`, `"1s"`, `"0"` for every event) (the session token is the `connected` event's `"session"`; sessions are on unless `--sessions=false`): `200 {"subscriber": N}`; the added names pass the `/events` checks with this request's credentials (`401`/`403`, nothing changes); `404` for an unknown session or one with no open stream |
//! | `POST /send?client=GLOB` | body as `/publish`; to every live stream on this node whose client id matches the glob: `200 {"id": ..., "receivers": N}`; needs the `--publish-token` or a token with publish rights (`401`/`403`) |
//! | `POST /revoke?sub=PRINCIPAL` | ends that principal's streams (final frame `event: revoked`) and, with JWT on, refuses its tokens issued until now: `200 {"revoked": N}`; needs the `--publish-token` or a token with publish rights (`401`/`403`) |
//!
//! With `--jwt-secret` (HS256) or `--jwt-public-key FILE` (RS256/ES256, repeatable for
//! rotation), `/events` needs a token (`Authorization: Bearer`, the `ssehub_token` cookie, or
//! with `--jwt-query-token` an `access_token` query parameter): `401` without a valid one,
//! `403` for a topic or pattern outside its claim `{"sub", "exp", "ssehub": {"subscribe": [...],
//! "publish": [...]}}` (or Mercure's `{"mercure": {...}}`). The stream's principal is `sub`, and
//! it ends at `exp` with a final `event: expired` frame and a jittered `retry:`, so the client
//! reconnects with a fresh token. `POST /publish` and `/disconnect` then need the
//! `--publish-token` or a token whose publish claim covers the topic (`403` otherwise). How
//! claims are matched, and which algorithms each key accepts, is in `auth.rs`.
//! | `GET /stats`, `GET /metrics` | JSON stats, Prometheus text |
//! | `GET /` | the live demo page; `GET /demo/market` is its snapshot (`404` without `--demo`) |
//!
//! Several nodes behind a load balancer share one broker with `--redis redis://HOST:PORT` or
//! `--nats nats://HOST:PORT` (both built into the binary by default; the `hub` example has
//! neither): publishes go through the broker to every node, and a client resumes on any node
//! (see `docs/scaling.md`).
//!
//! One port: `/events` is served by ssehub's native listener (`ssehub::server`), which owns each
//! stream's socket after the request and writes every batch with one vectored write; every other
//! route is an axum router the listener hands the connection to.
//!
//! The wire format (ids exactly as published, `: keep-alive` heartbeats, a `connected` event
//! with no `id:`) is the engine's; this file only wires HTTP to it.

mod auth;
mod config;
mod market;
mod priority;
mod publisher;
mod routes;
mod stats;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssehub::server::Server;
use ssehub::{HistoryLimits, Hub, Pacing, SessionLimits, StateLimits};

use crate::config::{Config, ConfigError};
use crate::market::Market;
use crate::publisher::join;
use crate::routes::{router, App};
use crate::stats::Rates;

/// How long shutdown may take once signalled before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the server with the process's flags, environment and `--config` file, as the `ssehub`
/// binary does; exits the process with status 2 on bad settings (naming the flag, variable or
/// file key) and 1 when the server cannot run.
///
/// # Examples
///
/// ```no_run
/// ssehub_server::main();
/// ```
pub fn main() {
    let config = match Config::load(std::env::args_os()) {
        Ok(config) => config,
        // clap prints `--help` and `--version` to stdout (status 0), its errors to stderr with
        // the usage (status 2).
        Err(ConfigError::Flags(error)) => error.exit(),
        Err(error) => {
            eprintln!("error: {error}\n\nTry `--help` for the flags.");
            std::process::exit(2);
        }
    };
    // Before the runtime: a missing or bad certificate file is a usage error, like a bad flag.
    let tls = match tls::load(&config) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("error: {error}\n\nTry `--help` for the flags.");
            std::process::exit(2);
        }
    };
    let runtime = match stream_runtime(config.fanout_nice).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(serve(config, tls)) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// The runtime of the listener and the streams, its threads at nice `fanout_nice`.
fn stream_runtime(fanout_nice: i32) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if fanout_nice != 0 {
        builder.on_thread_start(move || {
            if let Err(error) = priority::set_current_thread_nice(fanout_nice) {
                eprintln!("warning: stream worker kept its priority (--fanout-nice): {error}");
            }
        });
    }
    builder
}

/// Builds the hub from the settings.
fn build_hub(config: &Config) -> Hub {
    let history =
        (config.history > 0).then(|| HistoryLimits::new().with_max_events(config.history));
    let state =
        (config.state_keys > 0).then(|| StateLimits::new().with_max_keys(config.state_keys));
    Hub::builder()
        .with_history(history)
        .with_state(state)
        .with_max_state_topics(config.state_topics)
        .with_connected_event(true)
        .with_retry(Some((config.retry, config.retry_jitter)))
        .with_heartbeat(config.heartbeat)
        .with_sessions(config.sessions.then(SessionLimits::new))
        .build()
}

/// Runs the server until a signal, then shuts down gracefully.
async fn serve(config: Config, tls: Option<tls::Tls>) -> Result<(), Box<dyn std::error::Error>> {
    let listener = ssehub::server::listen(config.addr, config.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let auth = auth::Auth::new(
        config.jwt_secret.as_deref(),
        &config.jwt_public_keys,
        config.jwt_query_token,
    )?
    .map(Arc::new);
    // Before the hub is built: its metric handles are registered with the recorder then.
    stats::install_exporter();
    let hub = build_hub(&config);
    let publisher = join(&hub, &config).await?;
    let market = config.demo.then(|| Arc::new(Mutex::new(Market::new())));
    if let Some(market) = &market {
        tokio::spawn(market::run(publisher.clone(), hub.clone(), market.clone(), config.demo_rate));
    }
    let rates = Arc::new(Rates::new());
    tokio::spawn(sample(hub.clone(), rates.clone()));
    let app = App { hub: hub.clone(), publisher, config: Arc::new(config), rates, market, auth };
    // At shutdown the streams end 500 at a time, 100 ms apart, each told to come back after
    // the base retry plus its own random extra: a restart does not bring every client back in
    // the same second.
    let pacing = Pacing::new()
        .with_batch(500)
        .with_interval(Duration::from_millis(100))
        .with_retry(app.config.retry, app.config.retry_jitter);
    let signal = signals()?;

    // Tests and scripts read this line to learn the port (`--addr 127.0.0.1:0` picks one).
    // SIGHUP's handler is in place before the line: a script that sends it once it reads the
    // address does not meet the default action (exit).
    if let Some(tls) = &tls {
        tls.reload_on_hangup()?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("ssehub hub listening on {scheme}://{}", listener.local_addr()?);
    if let Some(announcement) = tls.as_ref().and_then(|tls| tls.announcement.as_ref()) {
        println!("{announcement}");
    }
    if app.market.is_some() {
        println!("demo market: publishing to price:* at {} updates/s", app.config.demo_rate);
    }

    // `/events` is served by ssehub's native listener, which owns each stream's socket; every
    // other route goes to the axum router below, on the same port and connection.
    let send_buffer = app.config.send_buffer;
    let publish_nice = app.config.publish_nice;
    let body_limits = (app.config.max_body, app.config.body_timeout);
    let (endpoint, routes) = router(app);
    let mut server = Server::new(endpoint.clone())
        .with_path("/events")
        .with_fallback(routes)
        .with_body_limits(body_limits.0, body_limits.1)
        .with_fallback_runtime(publisher::runtime(publish_nice)?);
    if let Some(bytes) = send_buffer {
        server = server.with_send_buffer(bytes);
    }
    if let Some(tls) = &tls {
        server = server.with_tls(tls.config.clone());
    }
    server
        .serve_with_shutdown(listener, async move {
            let name = signal.await;
            println!("{name}: shutting down");
            // New requests get 503 from here on; every stream gets its final retry hint and
            // ends, batch by batch.
            hub.shutdown_paced(&pacing).await;
        })
        .await;
    // The streams end by themselves after their last frame; give them a moment to flush.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while endpoint.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if endpoint.connection_count() > 0 {
        println!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    if let Some(tls) = &tls {
        tls.remove_written();
    }
    println!("stopped");
    Ok(())
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM from now on (so a signal that comes before the
/// server runs is not lost); the future resolves to the first signal's name.
fn signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// Samples the counters for the rates, until the hub shuts down.
async fn sample(hub: Hub, rates: Arc<Rates>) {
    let mut interval = tokio::time::interval(stats::SAMPLE_EVERY);
    while !hub.is_closed() {
        interval.tick().await;
        rates.sample(&hub.stats());
    }
}
