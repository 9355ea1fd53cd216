//! Content negotiation for compressed streams: which coding an `Accept-Encoding` header asks
//! for, among those a stream can be sent in (zstd, then gzip, then identity).

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

use crate::Encoding;

/// Longest `Accept-Encoding` value looked at; a longer one is read up to here.
const MAX_HEADER: usize = 1024;

/// The client accepts none of the codings a stream can be sent in (it refused identity with
/// `identity;q=0` or `*;q=0` and accepts neither zstd nor gzip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAcceptable;

/// The coding to send a stream in for a request with `headers`: the acceptable one of zstd and
/// gzip with the highest q-value (zstd on a tie), else identity. No header: identity. Codings
/// are matched without regard to case; `*` stands for every coding not listed; a q-value that
/// does not parse counts as 0 (refused).
pub(crate) fn negotiate(headers: &HeaderMap) -> Result<Encoding, NotAcceptable> {
    let mut weights = Weights::default();
    let mut any = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        any = true;
        let Ok(value) = value.to_str() else { continue };
        let value = &value[..floor_char_boundary(value, MAX_HEADER)];
        for item in value.split(',') {
            weights.add(item);
        }
    }
    if !any {
        return Ok(Encoding::Identity);
    }
    let zstd = weights.of(weights.zstd);
    let gzip = weights.of(weights.gzip);
    let best = match (zstd, gzip) {
        (z, g) if z > 0 && z >= g => Some(Encoding::Zstd),
        (_, g) if g > 0 => Some(Encoding::Gzip),
        _ => None,
    };
    match best {
        Some(encoding) => Ok(encoding),
        None if weights.identity_refused() => Err(NotAcceptable),
        None => Ok(Encoding::Identity),
    }
}

/// The largest index at most `at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The q-values (in thousandths) the header gave, per coding of interest.
#[derive(Debug, Default)]
struct Weights {
    /// `zstd`'s.
    zstd: Option<u16>,
    /// `gzip`'s (or `x-gzip`'s).
    gzip: Option<u16>,
    /// `identity`'s.
    identity: Option<u16>,
    /// `*`'s.
    star: Option<u16>,
}

impl Weights {
    /// Reads one `coding;q=x` item.
    fn add(&mut self, item: &str) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1000;
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else { continue };
            if name.trim().eq_ignore_ascii_case("q") {
                q = qvalue(value.trim()).unwrap_or(0);
            }
        }
        let slot = match coding.as_str() {
            "zstd" => &mut self.zstd,
            "gzip" | "x-gzip" => &mut self.gzip,
            "identity" => &mut self.identity,
            "*" => &mut self.star,
            _ => return,
        };
        // A coding listed twice keeps its highest weight.
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }

    /// The weight of a coding listed with `own` (or covered by `*`, or not acceptable).
    fn of(&self, own: Option<u16>) -> u16 {
        own.or(self.star).unwrap_or(0)
    }

    /// Whether identity is refused: `identity;q=0`, or `*;q=0` with identity not listed.
    fn identity_refused(&self) -> bool {
        match self.identity {
            Some(q) => q == 0,
            None => self.star == Some(0),
        }
    }
}

/// An RFC 9110 q-value (`0`, `0.5`, `1.000`) in thousandths; `None` when it is not one.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(fraction),
        "1" if fraction == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(values: &[&str]) -> Result<Encoding, NotAcceptable> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn zstd_then_gzip_then_identity_by_q_value() {
        assert_eq!(with(&[]), Ok(Encoding::Identity));
        assert_eq!(with(&["gzip, deflate, br, zstd"]), Ok(Encoding::Zstd), "Chromium's header");
        assert_eq!(with(&["gzip, deflate, br"]), Ok(Encoding::Gzip));
        assert_eq!(with(&["br"]), Ok(Encoding::Identity));
        assert_eq!(with(&["zstd;q=0.5, gzip"]), Ok(Encoding::Gzip));
        assert_eq!(with(&["ZSTD;Q=0.9, GZip;q=0.9"]), Ok(Encoding::Zstd), "a tie goes to zstd");
        assert_eq!(with(&["zstd;q=0, gzip;q=0"]), Ok(Encoding::Identity));
        assert_eq!(with(&["*"]), Ok(Encoding::Zstd));
        assert_eq!(with(&["*;q=0.2, zstd;q=0"]), Ok(Encoding::Gzip));
        assert_eq!(with(&["x-gzip"]), Ok(Encoding::Gzip));
        assert_eq!(with(&["gzip", "zstd"]), Ok(Encoding::Zstd), "several header lines");
        assert_eq!(with(&["zstd;q=2"]), Ok(Encoding::Identity), "a bad q-value refuses");
        assert_eq!(with(&["zstd;q=0.0001"]), Ok(Encoding::Identity));
    }

    #[test]
    fn identity_refused_is_respected() {
        assert_eq!(with(&["identity;q=0"]), Err(NotAcceptable));
        assert_eq!(with(&["*;q=0"]), Err(NotAcceptable));
        assert_eq!(with(&["*;q=0, identity"]), Ok(Encoding::Identity));
        assert_eq!(with(&["identity;q=0, gzip"]), Ok(Encoding::Gzip));
        assert_eq!(with(&["br, identity;q=0"]), Err(NotAcceptable));
    }

    #[test]
    fn q_values_parse_as_the_rfc_writes_them() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0"), Some(0));
        for bad in ["1.5", "2", ".5", "0.5x", "", "0.1234", "-0"] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }
}
