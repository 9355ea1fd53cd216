//! SSE-like byte streams, split arbitrarily, under small limits: the parser never panics, a
//! limit is an error rather than growth, and the chunking never changes what comes out.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ssehub::parse::{ParseError, ParsedEvent, Parser};

/// Stream pieces. Raw bytes alone almost never spell `data:` followed by CRLF, so the field
/// names and line endings are tokens of their own; `Byte` still reaches every other byte.
#[derive(Debug, Arbitrary)]
enum Token {
    Data,
    Id,
    Event,
    Retry,
    Colon,
    Space,
    Cr,
    Lf,
    CrLf,
    Bom,
    Digits(u16),
    Byte(u8),
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Limits small enough that the fuzzer reaches them.
    max_line: u8,
    max_event: u8,
    /// Chunk boundaries, as offsets taken modulo the stream length.
    cuts: Vec<u16>,
    tokens: Vec<Token>,
}

type Outcome = (Vec<ParsedEvent>, Result<(), ParseError>, String, Option<u64>);

fn stream(tokens: &[Token]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for token in tokens {
        match token {
            Token::Data => bytes.extend_from_slice(b"data"),
            Token::Id => bytes.extend_from_slice(b"id"),
            Token::Event => bytes.extend_from_slice(b"event"),
            Token::Retry => bytes.extend_from_slice(b"retry"),
            Token::Colon => bytes.push(b':'),
            Token::Space => bytes.push(b' '),
            Token::Cr => bytes.push(b'\r'),
            Token::Lf => bytes.push(b'\n'),
            Token::CrLf => bytes.extend_from_slice(b"\r\n"),
            Token::Bom => bytes.extend_from_slice(b"\xEF\xBB\xBF"),
            Token::Digits(n) => bytes.extend_from_slice(n.to_string().as_bytes()),
            Token::Byte(b) => bytes.push(*b),
            Token::Text(s) => bytes.extend_from_slice(s.as_bytes()),
        }
    }
    bytes
}

fn parse(input: &Input, bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut parser = Parser::with_limits(input.max_line.into(), input.max_event.into());
    let mut out = Vec::new();
    let mut result = Ok(());
    let mut start = 0;
    for &cut in cuts.iter().chain([bytes.len()].iter()) {
        result = parser.feed(&bytes[start..cut], &mut out);
        if result.is_err() {
            // The error is sticky: feeding on must repeat it and read nothing.
            let mut more = Vec::new();
            assert_eq!(parser.feed(b"data: x\n\n", &mut more), result);
            assert!(more.is_empty());
            break;
        }
        start = cut;
    }
    (out, result, parser.last_event_id().to_owned(), parser.reconnection_time())
}

fuzz_target!(|input: Input| {
    let bytes = stream(&input.tokens);
    let len = bytes.len();
    let mut cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c) % (len + 1)).collect();
    cuts.sort_unstable();

    let whole = parse(&input, &bytes, &[]);
    assert_eq!(parse(&input, &bytes, &cuts), whole);
    assert_eq!(parse(&input, &bytes, &(0..len).collect::<Vec<_>>()), whole);

    // Decoding at most triples a line (one invalid byte becomes U+FFFD); a dispatched data
    // buffer held its LF as well, so it is under the cap.
    let (max_line, max_event) = (usize::from(input.max_line), usize::from(input.max_event));
    for event in &whole.0 {
        assert!(event.data.len() < max_event);
        assert!(event.event.len() <= 3 * max_line);
        assert!(event.id.len() <= 3 * max_line);
    }
});
