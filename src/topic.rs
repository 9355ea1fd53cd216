//! Topic names and glob patterns.
//!
//! A pattern is matched against a topic once, when the topic or the pattern first appears in the
//! registry, never on every publish. The matcher runs in time linear in the topic's length, so a
//! hostile pattern (`a*a*a*…b`) cannot make it quadratic.

use std::fmt;

use memchr::memmem;

use crate::error::TopicError;

/// Checks a topic name: non-empty, at most `max_len` bytes, no control or invisible characters,
/// no `*` (reserved for patterns).
pub(crate) fn validate_topic(name: &str, max_len: usize) -> Result<(), TopicError> {
    validate_name(name, max_len)?;
    if name.contains('*') {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// The checks shared by topic names and patterns.
fn validate_name(name: &str, max_len: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > max_len {
        return Err(TopicError::TooLong { len: name.len(), max: max_len });
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(TopicError::ControlChar);
        }
        if is_invisible(c) {
            return Err(TopicError::InvisibleChar);
        }
    }
    Ok(())
}

/// Format and invisible characters that would let two names that look the same differ
/// (zero-width spaces and joiners, bidi controls, the BOM, variation selectors, tag characters,
/// Hangul fillers, soft hyphen).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// A glob over topic names: `*` matches any run of characters (including none and including
/// `:`); every other character matches itself.
///
/// # Examples
///
/// ```
/// use ssehub::Pattern;
///
/// let prices = Pattern::new("price:*")?;
/// assert!(prices.matches("price:BTC-USD"));
/// assert!(!prices.matches("volume:BTC-USD"));
///
/// let temps = Pattern::new("fleet:*:temp")?;
/// assert!(temps.matches("fleet:truck-7:temp"));
/// assert!(!temps.matches("fleet:truck-7:speed"));
/// # Ok::<(), ssehub::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// The pattern as written.
    source: Box<str>,
    /// The literal pieces between stars: the first must be a prefix and the last a suffix of a
    /// match; the ones between are found left to right. `None` when the pattern has no star.
    pieces: Option<Box<[Box<str>]>>,
}

impl Pattern {
    /// Parses a pattern (at most 1,024 bytes; the hub applies its own, usually lower, limit).
    ///
    /// # Errors
    ///
    /// [`TopicError`] when the pattern is empty, too long, or holds control or invisible
    /// characters.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::Pattern::new("").is_err());
    /// assert!(ssehub::Pattern::new("a*").is_ok());
    /// ```
    pub fn new(source: &str) -> Result<Pattern, TopicError> {
        Pattern::with_max_len(source, 1024)
    }

    /// Parses a pattern of at most `max_len` bytes.
    pub(crate) fn with_max_len(source: &str, max_len: usize) -> Result<Pattern, TopicError> {
        validate_name(source, max_len)?;
        let pieces = source
            .contains('*')
            .then(|| source.split('*').map(Box::from).collect::<Box<[Box<str>]>>());
        Ok(Pattern { source: source.into(), pieces })
    }

    /// Whether `topic` matches, in time linear in `topic.len() + self.as_str().len()`.
    ///
    /// Greedy leftmost matching of each piece is exact for `*`-only globs: if any placement of
    /// the middle pieces fits, the leftmost one leaves the most room for the rest.
    ///
    /// # Examples
    ///
    /// ```
    /// let p = ssehub::Pattern::new("*a*b")?;
    /// assert!(p.matches("xxaxxb"));
    /// assert!(!p.matches("xxbxxa"));
    /// # Ok::<(), ssehub::TopicError>(())
    /// ```
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        let Some(pieces) = &self.pieces else {
            return *self.source == *topic;
        };
        let topic = topic.as_bytes();
        // `split('*')` on a string with a star yields at least two pieces.
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return false;
        };
        let (first, last) = (first.as_bytes(), last.as_bytes());
        if topic.len() < first.len() + last.len()
            || !topic.starts_with(first)
            || !topic.ends_with(last)
        {
            return false;
        }
        let mut rest = &topic[first.len()..topic.len() - last.len()];
        for piece in &pieces[1..pieces.len() - 1] {
            if piece.is_empty() {
                continue;
            }
            match memmem::find(rest, piece.as_bytes()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }

    /// The pattern as written.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Pattern::new("a:*")?.as_str(), "a:*");
    /// # Ok::<(), ssehub::TopicError>(())
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook backtracking matcher, exponential but obviously right.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        let p = Pattern::new("news").unwrap();
        assert!(p.matches("news"));
        assert!(!p.matches("news2"));
    }

    #[test]
    fn star_matches_empty_and_colons() {
        let p = Pattern::new("a*").unwrap();
        assert!(p.matches("a"));
        assert!(p.matches("a:b:c"));
        let p = Pattern::new("a*a").unwrap();
        assert!(!p.matches("a"));
        assert!(p.matches("aa"));
    }

    #[test]
    fn pathological_pattern_is_fast_and_right() {
        let pattern = format!("{}b", "a*".repeat(5000));
        let p = Pattern::with_max_len(&pattern, usize::MAX).unwrap();
        assert!(!p.matches(&"a".repeat(10_000)));
        assert!(p.matches(&format!("{}b", "a".repeat(5000))));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_topic("", 8), Err(TopicError::Empty));
        assert_eq!(validate_topic("abcdefghi", 8), Err(TopicError::TooLong { len: 9, max: 8 }));
        assert_eq!(validate_topic("a\nb", 8), Err(TopicError::ControlChar));
        assert_eq!(validate_topic("a\u{200B}b", 8), Err(TopicError::InvisibleChar));
        assert_eq!(validate_topic("a*", 8), Err(TopicError::Wildcard));
        assert_eq!(validate_topic("prix:€", 8), Ok(()));
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab*:]{0,8}", t in "[ab:]{0,10}") {
            prop_assume!(!p.is_empty());
            let pattern = Pattern::new(&p).unwrap();
            prop_assert_eq!(pattern.matches(&t), reference(p.as_bytes(), t.as_bytes()));
        }
    }
}
