//! The WHATWG HTML rules for interpreting an event stream (section 9.2.6), case by case,
//! including the spec's own examples. Every case is also fed split at each byte offset and one
//! byte at a time, and must give the same result.

use ssehub::parse::{ParsedEvent, Parser};

/// One stream and everything a conforming client observes after reading it to the end.
struct Case {
    /// The stream's bytes.
    input: &'static [u8],
    /// Dispatched events as (type, data, lastEventId).
    events: &'static [(&'static str, &'static str, &'static str)],
    /// The last event id after the stream.
    last_id: &'static str,
    /// The reconnection time after the stream.
    retry: Option<u64>,
}

/// What a parser reports after reading `chunks` in order.
fn observe(chunks: &[&[u8]]) -> (Vec<(String, String, String)>, String, Option<u64>) {
    let mut parser = Parser::new();
    let mut out: Vec<ParsedEvent> = Vec::new();
    for chunk in chunks {
        if let Err(error) = parser.feed(chunk, &mut out) {
            panic!("default limits refused a conformance case: {error}");
        }
    }
    let events = out.into_iter().map(|e| (e.event, e.data, e.id)).collect();
    (events, parser.last_event_id().to_owned(), parser.reconnection_time())
}

fn check(name: &str, case: &Case) {
    let expected = (
        case.events
            .iter()
            .map(|&(t, d, i)| (t.to_owned(), d.to_owned(), i.to_owned()))
            .collect::<Vec<_>>(),
        case.last_id.to_owned(),
        case.retry,
    );
    assert_eq!(observe(&[case.input]), expected, "{name}: one chunk");
    for at in 0..=case.input.len() {
        let (a, b) = case.input.split_at(at);
        assert_eq!(observe(&[a, b]), expected, "{name}: split at byte {at}");
    }
    let bytes: Vec<&[u8]> = case.input.chunks(1).collect();
    assert_eq!(observe(&bytes), expected, "{name}: byte by byte");
}

/// One `#[test]` per case, so a failure names the rule it breaks.
macro_rules! cases {
    ($($name:ident: $input:expr => [$(($t:expr, $d:expr, $i:expr)),* $(,)?], id $id:expr, retry $retry:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name), &Case {
                    input: $input,
                    events: &[$(($t, $d, $i)),*],
                    last_id: $id,
                    retry: $retry,
                });
            }
        )*
    };
}

cases! {
    // --- The spec's examples ---
    spec_stock_ticker: b"data: YHOO\ndata: +2\ndata: 10\n\n"
        => [("message", "YHOO\n+2\n10", "")], id "", retry None;
    spec_four_blocks: b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
        => [("message", "first event", "1"), ("message", "second event", ""), ("message", " third event", "")],
        id "", retry None;
    spec_four_blocks_last_not_terminated: b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
        => [("message", "first event", "1"), ("message", "second event", "")], id "", retry None;
    spec_empty_data_blocks: b"data\n\ndata\ndata\n\ndata:"
        => [("message", "", ""), ("message", "\n", "")], id "", retry None;
    spec_space_after_colon_is_optional: b"data:test\n\ndata: test\n\n"
        => [("message", "test", ""), ("message", "test", "")], id "", retry None;
    spec_typed_events: b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
        => [("add", "73857293", ""), ("remove", "2153", ""), ("add", "113411", "")], id "", retry None;

    // --- Line endings ---
    lf_endings: b"data: a\ndata: b\n\n" => [("message", "a\nb", "")], id "", retry None;
    cr_endings: b"data: a\rdata: b\r\r" => [("message", "a\nb", "")], id "", retry None;
    crlf_endings: b"data: a\r\ndata: b\r\n\r\n" => [("message", "a\nb", "")], id "", retry None;
    mixed_endings: b"data: a\r\ndata: b\rdata: c\n\r\nevent: e\rdata: d\n\r"
        => [("message", "a\nb\nc", ""), ("e", "d", "")], id "", retry None;
    lf_then_cr_is_two_line_ends: b"data: a\n\rdata: b\n\n"
        => [("message", "a", ""), ("message", "b", "")], id "", retry None;
    cr_cr_lf_is_two_line_ends: b"data: a\r\r\n" => [("message", "a", "")], id "", retry None;
    final_cr_ends_the_line: b"data: a\n\r" => [("message", "a", "")], id "", retry None;

    // --- Byte order mark and decoding ---
    leading_bom_is_skipped: b"\xEF\xBB\xBFdata: a\n\n" => [("message", "a", "")], id "", retry None;
    second_bom_is_part_of_the_field_name: b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"
        => [("message", "b", "")], id "", retry None;
    bom_after_the_start_is_not_skipped: b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"
        => [("message", "a", "")], id "", retry None;
    bom_inside_a_value_is_kept: b"data: \xEF\xBB\xBFa\n\n" => [("message", "\u{FEFF}a", "")], id "", retry None;
    truncated_bom_is_part_of_the_first_line: b"\xEF\xBBdata: a\n\ndata: b\n\n" => [("message", "b", "")], id "", retry None;
    truncated_bom_before_a_comment: b"\xEF\xBB:comment\ndata: a\n\n" => [("message", "a", "")], id "", retry None;
    multibyte_utf8: "data: é😀\u{2028}x\n\n".as_bytes() => [("message", "é😀\u{2028}x", "")], id "", retry None;
    invalid_utf8_is_replaced: b"data: a\xFFb\xF0\x9F\n\n"
        => [("message", "a\u{FFFD}b\u{FFFD}", "")], id "", retry None;
    nul_in_data_is_kept: b"data: a\0b\n\n" => [("message", "a\0b", "")], id "", retry None;

    // --- Lines and fields ---
    comments_are_ignored: b": hello\n:\ndata: a\n: between\n\n: after\n"
        => [("message", "a", "")], id "", retry None;
    comment_alone_dispatches_nothing: b": keep-alive\n\n" => [], id "", retry None;
    field_without_colon_has_empty_value: b"data\n\n" => [("message", "", "")], id "", retry None;
    one_leading_space_is_stripped: b"data:  x\n\n" => [("message", " x", "")], id "", retry None;
    tab_is_not_stripped: b"data:\tx\n\n" => [("message", "\tx", "")], id "", retry None;
    value_keeps_later_colons: b"data: a: b:c\n\n" => [("message", "a: b:c", "")], id "", retry None;
    unknown_fields_are_ignored: b"foo: bar\nDATA: no\ndata : no\n data: no\nEvent: no\ndata: a\n\n"
        => [("message", "a", "")], id "", retry None;
    empty_data_lines: b"data\ndata\n\n" => [("message", "\n", "")], id "", retry None;
    trailing_empty_data_line: b"data: a\ndata:\n\n" => [("message", "a\n", "")], id "", retry None;
    no_data_is_not_dispatched: b"event: x\nid: 3\nretry: 9\n\n" => [], id "3", retry Some(9);
    final_event_without_blank_line_is_discarded: b"data: a\n\ndata: b\n" => [("message", "a", "")], id "", retry None;
    final_line_without_ending_is_discarded: b"data: a\n\ndata: b" => [("message", "a", "")], id "", retry None;

    // --- event ---
    event_sets_the_type: b"event: tick\ndata: 1\n\n" => [("tick", "1", "")], id "", retry None;
    event_is_reset_after_each_dispatch: b"event: a\ndata: 1\n\ndata: 2\n\n"
        => [("a", "1", ""), ("message", "2", "")], id "", retry None;
    event_is_reset_by_an_empty_block: b"event: a\n\ndata: 1\n\n" => [("message", "1", "")], id "", retry None;
    empty_event_is_message: b"event\ndata: 1\n\nevent:\ndata: 2\n\n"
        => [("message", "1", ""), ("message", "2", "")], id "", retry None;
    last_event_field_wins: b"event: a\nevent:  b\ndata: 1\n\n" => [(" b", "1", "")], id "", retry None;

    // --- id ---
    id_is_kept_across_events: b"id: 7\ndata: a\n\ndata: b\n\n"
        => [("message", "a", "7"), ("message", "b", "7")], id "7", retry None;
    id_alone_resets_to_empty: b"id: 7\ndata: a\n\nid\ndata: b\n\n"
        => [("message", "a", "7"), ("message", "b", "")], id "", retry None;
    id_with_empty_value_resets: b"id: 7\ndata: a\n\nid:\ndata: b\n\n"
        => [("message", "a", "7"), ("message", "b", "")], id "", retry None;
    id_with_nul_is_ignored: b"id: 1\n\ndata: x\nid: a\0b\n\n" => [("message", "x", "1")], id "1", retry None;
    id_set_after_data_in_the_block_applies: b"data: x\nid: 2\n\n" => [("message", "x", "2")], id "2", retry None;
    id_of_discarded_event_is_not_committed: b"id: 1\n\nid: 2\ndata: x\n" => [], id "1", retry None;
    id_keeps_spaces_and_unicode: "id:  a é\n\n".as_bytes() => [], id " a é", retry None;

    // --- retry ---
    retry_digits_are_accepted: b"retry: 3000\n\n" => [], id "", retry Some(3000);
    retry_leading_zeros: b"retry: 007\n\n" => [], id "", retry Some(7);
    retry_non_digits_are_ignored: b"retry: 1a\nretry: -5\nretry: +5\nretry:  10\nretry: 1.5\nretry:\nretry\ndata: x\n\n"
        => [("message", "x", "")], id "", retry None;
    retry_last_valid_wins: b"retry: 10\nretry: x\nretry: 20\n\n" => [], id "", retry Some(20);
    retry_max_u64: b"retry: 18446744073709551615\n\n" => [], id "", retry Some(u64::MAX);
    retry_overflow_is_ignored: b"retry: 5\nretry: 18446744073709551616\n\n" => [], id "", retry Some(5);
    retry_applies_without_blank_line: b"retry: 42\n" => [], id "", retry Some(42);
}

/// The `retry` field also rides on the event of its block, and only that one.
#[test]
fn retry_is_reported_on_the_event_of_its_block() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    let input = b"retry: 1\ndata: a\n\ndata: b\n\n";
    assert_eq!(parser.feed(input, &mut out), Ok(()));
    assert_eq!(
        out,
        [ParsedEvent::new("message", "a").with_retry(1), ParsedEvent::new("message", "b")]
    );
}
