//! Any event either fails validation with the right error or encodes to a frame that parses
//! back to exactly the normalised event.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::{Event, EventError};

#[derive(Debug, Arbitrary)]
struct Input {
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    comments: Vec<String>,
}

fn has_line_break(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| s.contains(['\r', '\n']))
}

fuzz_target!(|input: Input| {
    let mut event = match &input.data {
        Some(data) => Event::new(data.as_str()),
        None => Event::default(),
    };
    if let Some(name) = &input.event {
        event = event.with_event(name.as_str());
    }
    if let Some(id) = &input.id {
        event = event.with_id(id.as_str());
    }
    if let Some(ms) = input.retry {
        event = event.with_retry(Duration::from_millis(ms));
    }
    for comment in &input.comments {
        event = event.with_comment(comment.as_str());
    }

    let frame = event.encode();
    let expected_error = if has_line_break(&input.event) {
        Some(EventError::LineBreakInEvent)
    } else if has_line_break(&input.id) {
        Some(EventError::LineBreakInId)
    } else if input.id.as_deref().is_some_and(|id| id.contains('\0')) {
        Some(EventError::NulInId)
    } else if input.id.as_deref().is_some_and(|id| id.chars().any(char::is_control)) {
        Some(EventError::ControlInId)
    } else if let Some(id) = input.id.as_deref().filter(|id| id.len() > 256) {
        Some(EventError::IdTooLong { len: id.len(), max: 256 })
    } else {
        None
    };
    let frame = match (frame, expected_error) {
        (Err(error), Some(expected)) => return assert_eq!(error, expected),
        (Ok(frame), None) => frame,
        (other, expected) => panic!("encode gave {other:?}, expected error {expected:?}"),
    };

    let mut parser = Parser::new();
    let mut out = Vec::new();
    assert_eq!(parser.feed(&frame, &mut out), Ok(()));
    let event = event.normalized();
    let expected: Vec<ParsedEvent> = event
        .data()
        .map(|data| {
            let name = event.event().filter(|name| !name.is_empty()).unwrap_or("message");
            let mut parsed = ParsedEvent::new(name, data).with_id(event.id().unwrap_or(""));
            parsed.retry = input.retry;
            parsed
        })
        .into_iter()
        .collect();
    assert_eq!(out, expected);
    assert_eq!(parser.last_event_id(), event.id().unwrap_or(""));
    assert_eq!(parser.reconnection_time(), input.retry);
});
