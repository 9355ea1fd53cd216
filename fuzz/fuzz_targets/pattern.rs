//! Glob matching against a simple reference: the linear-time matcher in `ssehub::Pattern` must
//! agree with a dynamic-programming matcher on every pattern and topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssehub::Pattern;

/// O(p·t) dynamic programming over bytes: `*` matches any run, anything else itself.
fn reference(p: &[u8], t: &[u8]) -> bool {
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &pc in p {
        let mut next = vec![false; t.len() + 1];
        if pc == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && t[j - 1] == pc;
            }
        }
        row = next;
    }
    row[t.len()]
}

fuzz_target!(|input: (String, String)| {
    let (pattern, topic) = input;
    // Keep the reference affordable; the matcher itself has no such limit.
    if pattern.len() > 256 || topic.len() > 256 {
        return;
    }
    let Ok(compiled) = Pattern::new(&pattern) else {
        return;
    };
    assert_eq!(
        compiled.matches(&topic),
        reference(pattern.as_bytes(), topic.as_bytes()),
        "pattern {pattern:?} topic {topic:?}"
    );
});
