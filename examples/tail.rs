//! `curl -N`, but parsed: subscribes to an SSE URL and prints each event, showing reconnects.
//!
//! ```text
//! cargo run --example tail -- [--json] [--max-events N] [--header 'Name: value']... URL
//! ```
//!
//! - default output: `[event] id=ID` then the data, indented; reconnects go to stderr;
//! - `--json`: one JSON object per event and line, `{"id": ..., "event": ..., "data": ...}`
//!   (`event` is `"message"` when the stream named none);
//! - `--max-events N`: exit after N events;
//! - `--last-event-id ID`: resume after ID;
//! - `--cacert FILE`: also trust the PEM certificates in FILE for `https://` URLs (a private
//!   CA, or a server's self-signed certificate).
//!
//! Exit status: 0 after `--max-events` or when the server ends the stream for good (204), 1 on
//! another error, 2 on bad arguments.

use std::process::ExitCode;

use futures_util::StreamExt;
use ssehub::client::{ClientError, ClientEvent, EventSource};

/// Parsed command line.
struct Args {
    /// The URL to follow.
    url: String,
    /// JSON lines output.
    json: bool,
    /// Stop after this many events.
    max_events: Option<u64>,
    /// Extra request headers.
    headers: Vec<(String, String)>,
    /// Resume point.
    last_event_id: Option<String>,
    /// A PEM file of certificates to trust besides the built-in roots.
    cacert: Option<String>,
}

const USAGE: &str =
    "usage: tail [--json] [--max-events N] [--last-event-id ID] [--cacert FILE] [--header 'Name: value']... URL";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut json, mut max_events, mut headers, mut last_event_id) =
        (None, false, None, Vec::new(), None);
    let mut cacert = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--max-events" => {
                let n = args.next().ok_or("--max-events needs a number")?;
                max_events =
                    Some(n.parse().map_err(|_| format!("--max-events: not a number: {n}"))?);
            }
            "--header" | "-H" => {
                let h = args.next().ok_or("--header needs 'Name: value'")?;
                let (name, value) = h
                    .split_once(':')
                    .ok_or(format!("--header: expected 'Name: value', got {h}"))?;
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            "--last-event-id" => {
                last_event_id = Some(args.next().ok_or("--last-event-id needs an id")?)
            }
            "--cacert" => cacert = Some(args.next().ok_or("--cacert needs a PEM file")?),
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown flag {other}")),
            other => url = Some(other.to_string()),
        }
    }
    let url = url.ok_or("missing URL")?;
    Ok(Args { url, json, max_events, headers, last_event_id, cacert })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("tail: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let pem = match args.cacert.as_deref().map(std::fs::read).transpose() {
        Ok(pem) => pem,
        Err(error) => {
            eprintln!("tail: --cacert: {error}");
            return ExitCode::from(2);
        }
    };
    let source = EventSource::new(&args.url).and_then(|mut source| {
        if let Some(pem) = &pem {
            source = source.with_root_certificate(pem)?;
        }
        for (name, value) in &args.headers {
            source = source.with_header(name, value)?;
        }
        if let Some(id) = &args.last_event_id {
            source = source.with_last_event_id(id);
        }
        Ok(source)
    });
    let mut events = match source.and_then(EventSource::connect) {
        Ok(events) => events,
        Err(error) => {
            eprintln!("tail: {error}");
            return ExitCode::from(2);
        }
    };
    let mut seen = 0u64;
    while let Some(item) = events.next().await {
        match item {
            Ok(ClientEvent::Open) => eprintln!("tail: connected to {}", args.url),
            Ok(ClientEvent::Reconnecting { delay, reason, last_event_id }) => {
                eprintln!("tail: connection lost ({reason}); reconnecting in {delay:?} after id {last_event_id:?}");
            }
            Ok(ClientEvent::Message(event)) => {
                if args.json {
                    let line = serde_json::json!({ "id": event.id, "event": event.event, "data": event.data });
                    println!("{line}");
                } else {
                    println!("[{}] id={}", event.event, event.id);
                    for line in event.data.split('\n') {
                        println!("    {line}");
                    }
                }
                seen += 1;
                if args.max_events.is_some_and(|max| seen >= max) {
                    return ExitCode::SUCCESS;
                }
            }
            Ok(_) => {}
            Err(ClientError::NoContent) => {
                eprintln!("tail: the server ended the stream (204)");
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                eprintln!("tail: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
