//! Codec properties: every encoded [`Event`] parses back as the event a browser would see, invalid
//! events never become frames, and parsing does not depend on how the stream is chunked.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use ssehub::parse::{ParseError, ParsedEvent, Parser};
use ssehub::{Event, EventError};

/// Strings built from the pieces that break naive codecs: every line ending, spaces, colons,
/// NUL, multi-byte characters, plus arbitrary text.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just(" ".to_owned()),
        Just(":".to_owned()),
        Just("data: ".to_owned()),
        Just("\0".to_owned()),
        Just("é".to_owned()),
        Just("😀".to_owned()),
        Just("\u{FEFF}".to_owned()),
        "[a-z]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
}

/// A single-line value: no CR or LF, with NUL only when `nul` is set. Empty values and leading
/// spaces come often, since both are easy to lose on the wire.
fn line_text(nul: bool) -> impl Strategy<Value = String> {
    let class = if nul { "[^\r\n]{0,8}" } else { "[^\r\n\0]{0,8}" };
    prop_oneof![Just(String::new()), Just(" ".to_owned()), " {1,3}[a-z:]{0,4}", class]
}

/// An id the hub accepts: no control character (line breaks, NUL, tabs, escapes...).
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just(" ".to_owned()), " {1,3}[a-z:]{0,4}", "[^\\p{Cc}]{0,8}"]
}

/// The parts of an [`Event`], kept apart so the expected result can be computed from them.
#[derive(Debug, Clone)]
struct Parts {
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    comments: Vec<String>,
}

impl Parts {
    fn build(&self) -> Event {
        let mut event = match &self.data {
            Some(data) => Event::new(data.clone()),
            None => Event::default(),
        };
        if let Some(name) = &self.event {
            event = event.with_event(name.clone());
        }
        if let Some(id) = &self.id {
            event = event.with_id(id.clone());
        }
        if let Some(ms) = self.retry {
            event = event.with_retry(Duration::from_millis(ms));
        }
        for comment in &self.comments {
            event = event.with_comment(comment.clone());
        }
        event
    }

    /// What a fresh parser must dispatch for this event, given the id in force before it.
    fn expected(&self, id_before: &str) -> Option<ParsedEvent> {
        let event = self.build().normalized();
        let data = event.data()?;
        let name = match event.event() {
            Some(name) if !name.is_empty() => name,
            _ => "message",
        };
        let mut parsed =
            ParsedEvent::new(name, data).with_id(self.id.as_deref().unwrap_or(id_before));
        parsed.retry = self.retry;
        Some(parsed)
    }
}

/// Valid events: single-line event names and NUL-free ids.
fn valid_parts() -> impl Strategy<Value = Parts> {
    (
        prop::option::weighted(0.85, tricky_text()),
        prop::option::of(line_text(true)),
        prop::option::of(id_text()),
        prop::option::of(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]),
        prop::collection::vec(tricky_text(), 0..3),
    )
        .prop_map(|(data, event, id, retry, comments)| Parts {
            data,
            event,
            id,
            retry,
            comments,
        })
}

/// Feeds `input` split at `cuts` (byte offsets, any order) and returns everything observable.
fn parse_split(
    parser: Parser,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<ParsedEvent>, Result<(), ParseError>, String, Option<u64>) {
    let mut parser = parser;
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut out = Vec::new();
    let mut start = 0;
    let mut result = Ok(());
    for cut in cuts {
        result = parser.feed(&input[start..cut], &mut out);
        if result.is_err() {
            break;
        }
        start = cut;
    }
    (out, result, parser.last_event_id().to_owned(), parser.reconnection_time())
}

fn parse_bytewise(
    parser: Parser,
    input: &[u8],
) -> (Vec<ParsedEvent>, Result<(), ParseError>, String, Option<u64>) {
    let cuts: Vec<usize> = (0..input.len()).collect();
    parse_split(parser, input, &cuts)
}

/// Byte streams made of SSE-ish tokens, malformed on purpose.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data:".to_vec()),
        Just(b"data".to_vec()),
        Just(b"id:".to_vec()),
        Just(b"id".to_vec()),
        Just(b"event:".to_vec()),
        Just(b"retry:".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xEF\xBB".to_vec()),
        Just("é😀".as_bytes().to_vec()),
        Just(b"\xF0\x9F".to_vec()),
        Just(b"\xFF".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"123".to_vec()),
        Just(b"x".to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) One valid event encodes to one frame that parses back to exactly the normalised
    /// event; events without data dispatch nothing.
    #[test]
    fn encoded_event_parses_back(parts in valid_parts()) {
        let frame = parts.build().encode();
        prop_assert!(frame.is_ok(), "valid event refused: {:?}", frame);
        let bytes = frame.unwrap_or_default();
        let mut parser = Parser::new();
        let mut out = Vec::new();
        prop_assert_eq!(parser.feed(&bytes, &mut out), Ok(()));
        let expected: Vec<ParsedEvent> = parts.expected("").into_iter().collect();
        prop_assert_eq!(&out, &expected);
        // A frame with an id ends its block with a blank line, which commits the id.
        prop_assert_eq!(parser.last_event_id(), parts.id.as_deref().unwrap_or(""));
        prop_assert_eq!(parser.reconnection_time(), parts.retry);
    }

    /// (b) A line break in the event name or id, or NUL in the id, is an error, never a frame.
    #[test]
    fn invalid_event_is_refused(
        parts in valid_parts(),
        bad_event in prop::option::of((line_text(true), prop_oneof![Just("\r"), Just("\n"), Just("\r\n")], line_text(true))),
        bad_id in prop::option::of((line_text(false), prop_oneof![Just("\r"), Just("\n"), Just("\0")], line_text(false))),
    ) {
        prop_assume!(bad_event.is_some() || bad_id.is_some());
        let mut parts = parts;
        if let Some((a, brk, b)) = &bad_event {
            parts.event = Some(format!("{a}{brk}{b}"));
        }
        if let Some((a, bad, b)) = &bad_id {
            parts.id = Some(format!("{a}{bad}{b}"));
        }
        // The documented order of `Event::validate`: event name, then id line breaks, then NUL.
        let expected = match (&bad_event, &bad_id) {
            (Some(_), _) => EventError::LineBreakInEvent,
            (None, Some((_, "\0", _))) => EventError::NulInId,
            (None, _) => EventError::LineBreakInId,
        };
        prop_assert_eq!(parts.build().encode(), Err(expected));
    }

    /// (c) Chunking never changes the result, under default and under tiny limits.
    #[test]
    fn parsing_is_invariant_to_chunking(
        input in sse_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        max_line in 0usize..24,
        max_event in 0usize..48,
    ) {
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        let whole = parse_split(Parser::new(), &input, &[]);
        prop_assert_eq!(&parse_split(Parser::new(), &input, &cuts), &whole);
        prop_assert_eq!(&parse_bytewise(Parser::new(), &input), &whole);

        let limited = || Parser::with_limits(max_line, max_event);
        let whole = parse_split(limited(), &input, &[]);
        prop_assert_eq!(&parse_split(limited(), &input, &cuts), &whole);
        prop_assert_eq!(&parse_bytewise(limited(), &input), &whole);
    }

    /// (d) Concatenated frames parse to the sequence of their events, ids carried forward.
    #[test]
    fn concatenated_frames_parse_in_order(
        events in prop::collection::vec(valid_parts(), 0..12),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut id = String::new();
        for parts in &events {
            let frame = parts.build().encode();
            prop_assert!(frame.is_ok());
            stream.extend_from_slice(frame.unwrap_or_default().as_ref());
            expected.extend(parts.expected(&id));
            if let Some(new_id) = &parts.id {
                id.clone_from(new_id);
            }
        }
        let cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        let (out, result, last_id, _) = parse_split(Parser::new(), &stream, &cuts);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(out, expected);
        prop_assert_eq!(last_id, id);
    }
}
