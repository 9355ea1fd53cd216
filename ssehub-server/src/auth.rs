//! JWT for subscribers and publishers: which keys verify a token, what its claim allows, and
//! the principals revoked since.
//!
//! # Keys
//!
//! `--jwt-secret SECRET` verifies HS256 tokens; each `--jwt-public-key FILE` (repeatable, for
//! rotation) verifies RS256 (an RSA public key) or ES256 (a P-256 public key) tokens. A token
//! verifies when one key accepts it. Each key accepts exactly its own algorithm: the token's
//! `alg` header only picks which keys to try, so `alg: none`, an algorithm no key has, or an
//! HS256 token signed with an RSA public key's bytes (the HS/RS confusion) is refused.
//!
//! # Claims
//!
//! `{"sub": PRINCIPAL, "exp": SECONDS, "iat"?: SECONDS, "nbf"?: SECONDS,
//!   "ssehub": {"subscribe": [...], "publish": [...]}}`, or Mercure's layout
//! `{"mercure": {"subscribe": [...], "publish": [...]}}` (`ssehub` wins when both are there).
//! `sub` and `exp` are required (a token without them is refused with 401), no leeway on `exp`.
//! The stream's client id (for `POST /send?client=GLOB`) is `ssehub.client` when the claim has
//! one, else `sub`; `ssehub.metadata`, an object of strings, is its metadata. Both go out in the
//! `connected` event.
//! Each entry is a topic name or one of the crate's glob patterns (`*` matches any run of
//! characters, `:` included). A request is checked against the entries:
//!
//! - a topic `T` (subscribe or publish) is allowed when an entry equals `T`, or is a pattern
//!   that matches `T`;
//! - a pattern `P` (subscribe) is allowed only when an entry covers every topic `P` could
//!   match: the entry equals `P`, or the entry has exactly one `*` (`X*Y`: `*`, `price:*`,
//!   `*:temp`, `fleet:*:temp`) and `P`'s text before its first `*` starts with `X` and its text
//!   after its last `*` ends with `Y` (every topic `P` matches then starts with `X`, ends with
//!   `Y` and is long enough for both). Anything else (say, entry `a*b*c` for pattern `a*b*c*`)
//!   is refused with 403, even where it would happen to be covered.
//!
//! # Revocation
//!
//! `POST /revoke?sub=PRINCIPAL` ends the principal's streams and refuses, from then on, its
//! tokens issued at or before that second (an `iat` not after it, or no `iat`): otherwise the
//! clients would reconnect with the same token at once. A token issued later is accepted. A
//! revocation is remembered for [`REVOCATION_TTL`] (tokens are expected to live shorter), at
//! most [`MAX_REVOCATIONS`] of them (the oldest go first).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use ssehub::Pattern;

/// The cookie a browser's token comes in.
pub(crate) const COOKIE_NAME: &str = "ssehub_token";

/// The query parameter a token comes in, when `--jwt-query-token` allows it.
pub(crate) const QUERY_PARAM: &str = "access_token";

/// How long a revocation is remembered.
pub(crate) const REVOCATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The most revocations remembered.
pub(crate) const MAX_REVOCATIONS: usize = 100_000;

/// Why a request has no valid token (answered 401): none, or one that does not verify (bad
/// signature, unknown key, expired, malformed, revoked). A valid token whose claim does not
/// cover the request is the caller's 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied(pub(crate) &'static str);

/// The verifying keys and the revocations.
#[derive(Debug)]
pub(crate) struct Auth {
    /// Each key with the one algorithm it accepts.
    keys: Vec<Key>,
    /// Whether `access_token` query parameters are read.
    query_token: bool,
    /// Revoked principals, with the UNIX second of their revocation.
    revoked: Mutex<HashMap<String, u64>>,
}

/// One verifying key.
struct Key {
    /// Where it came from (for messages).
    name: String,
    /// The key.
    decoding: DecodingKey,
    /// Its one algorithm, `sub` and `exp` required, no leeway.
    validation: Validation,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("alg", &self.validation.algorithms)
            .finish()
    }
}

/// A verified token: who, until when, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The principal (`sub`).
    pub(crate) sub: String,
    /// The expiry (`exp`), seconds since the UNIX epoch.
    pub(crate) exp: u64,
    /// Topics and patterns it may subscribe to.
    subscribe: Vec<String>,
    /// Topics and patterns it may publish to.
    publish: Vec<String>,
    /// The client id its streams carry: the claim's, else `sub`.
    pub(crate) client: String,
    /// The metadata its streams carry.
    pub(crate) metadata: BTreeMap<String, String>,
}

/// The claims read from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    /// The principal.
    sub: String,
    /// The expiry; a non-integer fails the decode.
    exp: u64,
    /// When it was issued.
    #[serde(default)]
    iat: Option<u64>,
    /// ssehub's rights.
    #[serde(default)]
    ssehub: Option<Rights>,
    /// Mercure's rights.
    #[serde(default)]
    mercure: Option<Rights>,
}

/// The rights in a claim.
#[derive(Debug, Default, Deserialize)]
struct Rights {
    /// Topics and patterns to subscribe to.
    #[serde(default)]
    subscribe: Vec<String>,
    /// Topics and patterns to publish to.
    #[serde(default)]
    publish: Vec<String>,
    /// The client id of the token's streams (`sub` without it).
    #[serde(default)]
    client: Option<String>,
    /// String metadata of the token's streams.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl Auth {
    /// The keys the settings name, or `None` when JWT is not configured.
    ///
    /// # Errors
    ///
    /// A key file that cannot be read or is neither an RSA nor an EC public key.
    pub(crate) fn new(
        secret: Option<&str>,
        public_keys: &[std::path::PathBuf],
        query_token: bool,
    ) -> Result<Option<Auth>, String> {
        if secret.is_none() && public_keys.is_empty() {
            return Ok(None);
        }
        // Exactly one backend is compiled in; installing it spares jsonwebtoken guessing
        // (and panicking) should another crate ever enable the other. A second call fails
        // harmlessly.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.len() < 32 {
                eprintln!("warning: --jwt-secret is shorter than 32 bytes; HS256 tokens signed with it can be brute-forced");
            }
            keys.push(Key::new(
                "--jwt-secret".into(),
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        for path in public_keys {
            keys.push(Key::from_file(path)?);
        }
        Ok(Some(Auth { keys, query_token, revoked: Mutex::new(HashMap::new()) }))
    }

    /// The request's token: `Authorization: Bearer`, then the `ssehub_token` cookie, then (when
    /// enabled) the `access_token` query parameter.
    pub(crate) fn token<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Option<String> {
        bearer(headers)
            .or_else(|| cookie(headers, COOKIE_NAME))
            .or_else(|| {
                if !self.query_token {
                    return None;
                }
                query_param(query.unwrap_or(""), QUERY_PARAM)
            })
            .filter(|token| !token.is_empty())
    }

    /// The grant of the request's token.
    ///
    /// # Errors
    ///
    /// [`Denied`] without a token, or with one that does not verify.
    pub(crate) fn grant(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Grant, Denied> {
        let token = self.token(headers, query).ok_or(Denied("missing token"))?;
        self.verify(&token)
    }

    /// Verifies `token` with the first key of its algorithm that accepts it.
    ///
    /// # Errors
    ///
    /// [`Denied`] when no key accepts it, or its principal was revoked after
    /// it was issued.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Denied> {
        let header = decode_header(token).map_err(|_| Denied("malformed token"))?;
        let mut refusal = Denied("no key accepts the token");
        for key in self.keys.iter().filter(|k| k.validation.algorithms.contains(&header.alg)) {
            match decode::<Claims>(token, &key.decoding, &key.validation) {
                Ok(data) => return self.admit(data.claims),
                // The signature verified (it is checked before the claims): say why.
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    refusal = Denied("token expired");
                }
                Err(e) if *e.kind() == ErrorKind::ImmatureSignature => {
                    refusal = Denied("token not valid yet");
                }
                Err(_) => {}
            }
        }
        Err(refusal)
    }

    /// The grant of verified claims, unless the principal was revoked since they were issued.
    fn admit(&self, claims: Claims) -> Result<Grant, Denied> {
        let revoked_at =
            self.revoked.lock().unwrap_or_else(|e| e.into_inner()).get(&claims.sub).copied();
        if let Some(at) = revoked_at {
            if claims.iat.is_none_or(|iat| iat <= at) {
                return Err(Denied("token revoked"));
            }
        }
        let rights = claims.ssehub.or(claims.mercure).unwrap_or_default();
        Ok(Grant {
            client: rights.client.unwrap_or_else(|| claims.sub.clone()),
            metadata: rights.metadata,
            sub: claims.sub,
            exp: claims.exp,
            subscribe: rights.subscribe,
            publish: rights.publish,
        })
    }

    /// Refuses `sub`'s tokens issued up to now, from now on (see the module's docs).
    pub(crate) fn revoke(&self, sub: &str) {
        let now = unix_now();
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = now.saturating_sub(REVOCATION_TTL.as_secs());
        revoked.retain(|_, at| *at > oldest);
        if revoked.len() >= MAX_REVOCATIONS && !revoked.contains_key(sub) {
            // Full of recent ones: forget the oldest (a scan; revocations are rare).
            if let Some(first) = revoked.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                revoked.remove(&first);
            }
        }
        revoked.insert(sub.to_string(), now);
    }
}

impl Key {
    /// A key accepting only `alg`, requiring `sub` and `exp`, with no leeway on `exp`.
    fn new(name: String, decoding: DecodingKey, alg: Algorithm) -> Key {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // No audience is configured: a token's `aud` is not checked.
        validation.validate_aud = false;
        Key { name, decoding, validation }
    }

    /// An RSA (RS256) or EC P-256 (ES256) public key from a PEM file.
    fn from_file(path: &Path) -> Result<Key, String> {
        let name = path.display().to_string();
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read --jwt-public-key {name}: {e}"))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Key::new(name, key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(&pem) {
            Ok(key) => Ok(Key::new(name, key, Algorithm::ES256)),
            Err(_) => Err(format!("--jwt-public-key {name}: not an RSA or EC public key in PEM")),
        }
    }
}

impl Grant {
    /// When its streams end: its `exp` (`None` for one past what the clock can hold, which
    /// would overflow it).
    pub(crate) fn expiry(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp))
    }

    /// Whether it may subscribe to topic `topic`.
    pub(crate) fn may_subscribe_topic(&self, topic: &str) -> bool {
        covers_topic(&self.subscribe, topic)
    }

    /// Whether it may subscribe to pattern `pattern` (see the module's docs).
    pub(crate) fn may_subscribe_pattern(&self, pattern: &str) -> bool {
        self.subscribe.iter().any(|entry| entry_covers_pattern(entry, pattern))
    }

    /// Whether it may publish to topic `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        covers_topic(&self.publish, topic)
    }

    /// Whether it may publish at all (what `POST /revoke` asks).
    pub(crate) fn publishes(&self) -> bool {
        !self.publish.is_empty()
    }
}

/// Whether an entry of `entries` is `topic` or a pattern matching it.
fn covers_topic(entries: &[String], topic: &str) -> bool {
    entries.iter().any(|entry| {
        entry == topic
            || (entry.contains('*') && Pattern::new(entry).is_ok_and(|p| p.matches(topic)))
    })
}

/// Whether every topic `pattern` matches also matches `entry` (soundly; see the module's docs).
fn entry_covers_pattern(entry: &str, pattern: &str) -> bool {
    if entry == pattern {
        return true;
    }
    let mut stars = entry.split('*');
    let (Some(x), Some(y), None) = (stars.next(), stars.next(), stars.next()) else {
        return false;
    };
    let (Some((before, _)), Some((_, after))) = (pattern.split_once('*'), pattern.rsplit_once('*'))
    else {
        return false;
    };
    before.starts_with(x) && after.ends_with(y)
}

/// The `Authorization: Bearer` token, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
    })
}

/// The value of cookie `name`, if any.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"').to_string())
        })
    })
}

/// The first query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    crate::routes::query_pairs(query).find(|(key, _)| key == name).map(|(_, value)| value)
}

/// Seconds since the UNIX epoch.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subscribe: &[&str], publish: &[&str]) -> Grant {
        Grant {
            sub: "ann".into(),
            exp: 0,
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            client: "ann".into(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_are_covered_by_equal_entries_and_matching_patterns() {
        let g = grant(&["news", "price:*"], &["chat:ann"]);
        assert!(g.may_subscribe_topic("news"));
        assert!(g.may_subscribe_topic("price:BTC"));
        assert!(!g.may_subscribe_topic("newsy"));
        assert!(!g.may_subscribe_topic("volume:BTC"));
        assert!(g.may_publish("chat:ann"));
        assert!(!g.may_publish("chat:bob"));
        assert!(!g.may_publish("news"), "subscribe rights are not publish rights");
    }

    #[test]
    fn a_pattern_needs_an_entry_covering_everything_it_matches() {
        let g = grant(&["price:*", "fleet:*:temp", "a*b*c"], &[]);
        assert!(g.may_subscribe_pattern("price:*"));
        assert!(g.may_subscribe_pattern("price:BTC-*"));
        assert!(g.may_subscribe_pattern("price:*:usd"));
        assert!(!g.may_subscribe_pattern("pri*"), "also matches prize:1");
        assert!(!g.may_subscribe_pattern("*"));
        assert!(g.may_subscribe_pattern("fleet:*:temp"));
        assert!(g.may_subscribe_pattern("fleet:truck-*:temp"));
        assert!(!g.may_subscribe_pattern("fleet:*"), "also matches fleet:1:speed");
        assert!(!g.may_subscribe_pattern("fleet:*:temperature"));
        assert!(g.may_subscribe_pattern("a*b*c"), "equal");
        assert!(!g.may_subscribe_pattern("a*b*c*"), "multi-star entries only cover themselves");
        assert!(grant(&["*"], &[]).may_subscribe_pattern("anything:*"));
        assert!(!grant(&["price:BTC"], &[]).may_subscribe_pattern("price:*"));
    }

    #[test]
    fn an_exp_past_what_the_clock_holds_is_no_expiry_not_a_panic() {
        assert_eq!(Grant { exp: u64::MAX, ..grant(&[], &[]) }.expiry(), None);
        let expiry = Grant { exp: 60, ..grant(&[], &[]) }.expiry();
        assert_eq!(expiry, Some(UNIX_EPOCH + Duration::from_secs(60)));
    }

    #[test]
    fn tokens_come_from_the_header_then_the_cookie_then_the_query_when_enabled() {
        let auth = Auth { keys: Vec::new(), query_token: false, revoked: Mutex::default() };
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "theme=dark; ssehub_token=from-cookie".parse().unwrap());
        assert_eq!(auth.token(&headers, Some("access_token=q")), Some("from-cookie".into()));
        headers.insert(AUTHORIZATION, "bearer from-header".parse().unwrap());
        assert_eq!(auth.token(&headers, None), Some("from-header".into()));
        let empty = HeaderMap::new();
        assert_eq!(auth.token(&empty, Some("access_token=q")), None);
        let auth = Auth { query_token: true, ..auth };
        assert_eq!(auth.token(&empty, Some("a=1&access_token=q%2B")), Some("q+".into()));
    }
}
