//! The check of a live change racing publishes, shared by the tests that make one over the
//! library's listener and over the hub server.

/// The hub's sequence number in an id it assigned (`{epoch:x}-{seq}`).
pub fn seq(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or_else(|| panic!("id {id:?}"))
}

/// Checks what one stream received around a change from topic `a` to topic `b` (made while
/// `published` was being filled): there is one point S in the hub's order, after every event
/// published before the change began and before every event published after it returned,
/// such that the stream received exactly the `a` events up to S and the `b` events after it,
/// in order, each once. `published` is every `a` and `b` event, in order; the stream was read
/// to a marker published after all of them.
pub fn check_seam(
    received: &[(String, u64)],
    published: &[(String, u64)],
    began: u64,
    returned: u64,
) {
    let at = |s: u64| -> Vec<(String, u64)> {
        published
            .iter()
            .filter(|(topic, seq)| (topic == "a" && *seq <= s) || (topic == "b" && *seq > s))
            .cloned()
            .collect()
    };
    // Any point from `began` to just before `returned` may be the change's.
    let fits = std::iter::once(began)
        .chain(published.iter().map(|(_, seq)| *seq))
        .filter(|s| (began..returned).contains(s))
        .any(|s| at(s) == received);
    assert!(fits, "no change point between {began} and {returned} gives {received:?}");
    assert!(received.iter().any(|(t, _)| t == "a") && received.iter().any(|(t, _)| t == "b"));
}
