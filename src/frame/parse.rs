//! Placeholder while the parser is written in a scratch crate.
