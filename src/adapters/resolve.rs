//! Deciding what a request subscribes to: the [`Resolver`] trait, the ready-made [`QueryTopics`]
//! and [`PathTopic`], and helpers that read query parameters, cookies, credentials and the
//! client's resume point from a request.
//!
//! A resolver sees the request head ([`http::request::Parts`]: method, URI, headers, so cookies
//! too) and returns the [`Subscribe`] to make, or a [`Rejection`] that becomes a short plain-text
//! error response. The [`Endpoint`](crate::Endpoint) serving it adds the client's resume point
//! (see [`last_event_id`]) and enforces its limits; the hub validates the rest.
//!
//! # Examples
//!
//! An application resolver: the principal from a session cookie (or, for service clients, a
//! bearer token), the topics from the query.
//!
//! ```
//! use http::request::Parts;
//! use ssehub::resolve::{Credentials, QueryTopics, Rejection, Resolver};
//! use ssehub::Subscribe;
//!
//! struct Users;
//!
//! impl Resolver for Users {
//!     async fn resolve(&self, request: &Parts) -> Result<Subscribe, Rejection> {
//!         let token = Credentials::new()
//!             .with_cookie("sid")
//!             .token(request)
//!             .ok_or_else(|| Rejection::Unauthorized("sign in first".into()))?;
//!         // Look the token up (a database, a JWT check, ...).
//!         let user = match token.as_str() {
//!             "s3cret" => "ann",
//!             _ => return Err(Rejection::Forbidden("unknown session".into())),
//!         };
//!         Ok(QueryTopics::new().with_patterns(false).parse(request)?.with_principal(user))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (request, ()) = http::Request::get("/events?topic=inbox:ann")
//!     .header("cookie", "theme=dark; sid=s3cret")
//!     .body(())?
//!     .into_parts();
//! assert!(Users.resolve(&request).await.is_ok());
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::{ready, Future};
use std::time::Duration;

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::StatusCode;

use crate::hub::Subscribe;

/// The `Last-Event-ID` request header.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The query parameter that carries the resume point for clients that cannot set headers.
const LAST_EVENT_ID_PARAM: &str = "lastEventId";
/// The query parameter that asks for a snapshot of the keyed state first.
const SNAPSHOT_PARAM: &str = "snapshot";
/// The query parameter that asks for a rate tier.
const INTERVAL_PARAM: &str = "interval";

/// The query parameter that carries a credential, when enabled.
const ACCESS_TOKEN_PARAM: &str = "access_token";

/// Decides what a request subscribes to, or refuses it.
///
/// Implement it with `async fn resolve(&self, request: &Parts) -> Result<Subscribe, Rejection>`;
/// the future must be `Send` (it runs on a multi-threaded server). A plain
/// `Fn(&Parts) -> Result<Subscribe, Rejection>` closure is a resolver too.
///
/// The resolver does not need to read `Last-Event-ID`: the [`Endpoint`](crate::Endpoint) adds the
/// client's resume point to what it returns (see [`last_event_id`]). It also need not check topic
/// names: the endpoint and the hub do, answering 400.
///
/// # Examples
///
/// ```
/// use http::request::Parts;
/// use ssehub::{Endpoint, Hub, Rejection, Subscribe};
///
/// // One topic per user, named after a header an authenticating proxy sets.
/// let endpoint = Endpoint::new(Hub::new()).with_resolver(|request: &Parts| {
///     let user = request
///         .headers
///         .get("x-user")
///         .and_then(|v| v.to_str().ok())
///         .ok_or_else(|| Rejection::Unauthorized("no user".into()))?;
///     Ok(Subscribe::new().with_topic(format!("inbox:{user}")).with_principal(user))
/// });
/// # drop(endpoint);
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// What `request` subscribes to.
    ///
    /// # Errors
    ///
    /// A [`Rejection`] refuses the request with its status and reason.
    ///
    /// # Cancel safety
    ///
    /// The future is dropped when the client goes away before it completes; implementations
    /// should hold no state that must be released by hand.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{QueryTopics, Resolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (request, ()) = http::Request::get("/events?topic=news").body(())?.into_parts();
    /// let subscribe = QueryTopics::new().resolve(&request).await?;
    /// assert_eq!(subscribe, ssehub::Subscribe::from("news"));
    /// # Ok(())
    /// # }
    /// ```
    fn resolve(&self, request: &Parts)
        -> impl Future<Output = Result<Subscribe, Rejection>> + Send;
}

impl<F> Resolver for F
where
    F: Fn(&Parts) -> Result<Subscribe, Rejection> + Send + Sync + 'static,
{
    fn resolve(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Subscribe, Rejection>> + Send {
        ready(self(request))
    }
}

/// Why a resolver refused a request; each variant is a status code, and its text (keep it short,
/// and never put a credential in it) is the plain-text response body.
///
/// # Examples
///
/// ```
/// use ssehub::Rejection;
///
/// let rejection = Rejection::Forbidden("not your topic".into());
/// assert_eq!(rejection.status(), http::StatusCode::FORBIDDEN);
/// assert_eq!(rejection.reason(), "not your topic");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: the request is malformed (a missing or invalid parameter).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: the client did not say who it is, or its credential is not valid. The response
    /// carries `www-authenticate: Bearer`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: the client is known but may not subscribe to this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: nothing is served at this path.
    #[error("not found: {0}")]
    NotFound(String),
}

impl Rejection {
    /// The response status.
    ///
    /// # Examples
    ///
    /// ```
    /// let rejection = ssehub::Rejection::Unauthorized("sign in".into());
    /// assert_eq!(rejection.status().as_u16(), 401);
    /// ```
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The reason, sent as the response body.
    ///
    /// # Examples
    ///
    /// ```
    /// let rejection = ssehub::Rejection::BadRequest("missing topic".into());
    /// assert_eq!(rejection.reason(), "missing topic");
    /// ```
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Rejection::BadRequest(reason)
            | Rejection::Unauthorized(reason)
            | Rejection::Forbidden(reason)
            | Rejection::NotFound(reason) => reason,
        }
    }
}

/// The query parameters of a request in order, percent-decoded (`+` is a space, as in HTML
/// forms); a key without `=` has an empty value, and bytes that do not decode to UTF-8 become
/// U+FFFD.
///
/// # Examples
///
/// ```
/// let (request, ()) = http::Request::get("/e?topic=a%3Ab&topic=c+d&flag").body(())?.into_parts();
/// assert_eq!(
///     ssehub::resolve::query_params(&request),
///     [("topic".into(), "a:b".into()), ("topic".into(), "c d".into()), ("flag".into(), String::new())]
/// );
/// # Ok::<(), http::Error>(())
/// ```
#[must_use]
pub fn query_params(request: &Parts) -> Vec<(String, String)> {
    let Some(query) = request.uri.query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key, true).into_owned(), decode(value, true).into_owned())
        })
        .collect()
}

/// The value of the first query parameter named `name` (see [`query_params`]).
fn query_param(request: &Parts, name: &str) -> Option<String> {
    let query = request.uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key, true) == name).then(|| decode(value, true).into_owned())
    })
}

/// The value of the cookie named `name` from the request's `Cookie` headers, with the double
/// quotes around a quoted value removed (no other decoding: cookie values are opaque).
///
/// # Examples
///
/// ```
/// let (request, ()) = http::Request::get("/events")
///     .header("cookie", "theme=dark; sid=\"abc\"")
///     .body(())?
///     .into_parts();
/// assert_eq!(ssehub::resolve::cookie(&request, "sid").as_deref(), Some("abc"));
/// assert_eq!(ssehub::resolve::cookie(&request, "lang"), None);
/// # Ok::<(), http::Error>(())
/// ```
#[must_use]
pub fn cookie(request: &Parts, name: &str) -> Option<String> {
    request.headers.get_all(COOKIE).iter().find_map(|header| {
        // A header that is not UTF-8 holds no cookie we could name.
        let header = std::str::from_utf8(header.as_bytes()).ok()?;
        header.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some(value.to_string())
        })
    })
}

/// The client's resume point: the `Last-Event-ID` header, else the `lastEventId` query parameter
/// (for clients that cannot set headers); the header wins when both are present. An empty value
/// counts as absent, as a browser sends none.
///
/// The value is passed on as it is, whatever its length: the hub bounds and checks it, and answers
/// a malformed one (over 256 bytes, or with control characters) with a `reset` event. A header that is
/// not UTF-8 is decoded with U+FFFD for the invalid bytes, so it matches no id the hub issued and
/// is answered with a `reset` too.
///
/// [`Endpoint`](crate::Endpoint) applies it to every request; this function is for servers built
/// on other frameworks.
///
/// # Examples
///
/// ```
/// use ssehub::resolve::last_event_id;
///
/// let (both, ()) = http::Request::get("/events?topic=t&lastEventId=7")
///     .header("last-event-id", "9")
///     .body(())?
///     .into_parts();
/// assert_eq!(last_event_id(&both).as_deref(), Some("9"));
///
/// let (query, ()) = http::Request::get("/events?lastEventId=7").body(())?.into_parts();
/// assert_eq!(last_event_id(&query).as_deref(), Some("7"));
/// # Ok::<(), http::Error>(())
/// ```
#[must_use]
pub fn last_event_id(request: &Parts) -> Option<String> {
    let header = request.headers.get(LAST_EVENT_ID).filter(|value| !value.is_empty());
    if let Some(value) = header {
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    query_param(request, LAST_EVENT_ID_PARAM).filter(|value| !value.is_empty())
}

/// Whether the client asked its stream to start with a snapshot of its topics' keyed state
/// (see [`Subscribe::with_snapshot`]): the `snapshot` query parameter, `1` or `true` for yes,
/// `0`, `false` or absent for no.
///
/// [`Endpoint`](crate::Endpoint) applies it to every request, whatever the resolver; this
/// function is for servers built on other frameworks.
///
/// # Errors
///
/// [`Rejection::BadRequest`] for any other value.
///
/// # Examples
///
/// ```
/// use ssehub::resolve::snapshot_requested;
///
/// let (asked, ()) = http::Request::get("/events?topic=t&snapshot=1").body(())?.into_parts();
/// assert_eq!(snapshot_requested(&asked), Ok(true));
/// let (not, ()) = http::Request::get("/events?topic=t").body(())?.into_parts();
/// assert_eq!(snapshot_requested(&not), Ok(false));
/// let (bad, ()) = http::Request::get("/events?snapshot=yes").body(())?.into_parts();
/// assert!(snapshot_requested(&bad).is_err());
/// # Ok::<(), http::Error>(())
/// ```
pub fn snapshot_requested(request: &Parts) -> Result<bool, Rejection> {
    match query_param(request, SNAPSHOT_PARAM).as_deref() {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(_) => Err(Rejection::BadRequest("snapshot must be 1 or 0".into())),
    }
}

/// The rate tier the client asked for (see [`Subscribe::with_interval`]): the `interval` query
/// parameter, as [`parse_interval`] reads it; `None` when absent.
///
/// [`Endpoint`](crate::Endpoint) applies it to every request, whatever the resolver; this
/// function is for servers built on other frameworks.
///
/// # Errors
///
/// [`Rejection::BadRequest`] for a value [`parse_interval`] refuses. (Whether the hub accepts
/// the interval is the hub's to say: see [`IntervalError`](crate::IntervalError).)
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::resolve::interval_requested;
///
/// let (asked, ()) = http::Request::get("/events?topic=t&interval=250ms").body(())?.into_parts();
/// assert_eq!(interval_requested(&asked), Ok(Some(Duration::from_millis(250))));
/// let (not, ()) = http::Request::get("/events?topic=t").body(())?.into_parts();
/// assert_eq!(interval_requested(&not), Ok(None));
/// let (bad, ()) = http::Request::get("/events?interval=soon").body(())?.into_parts();
/// assert!(interval_requested(&bad).is_err());
/// # Ok::<(), http::Error>(())
/// ```
pub fn interval_requested(request: &Parts) -> Result<Option<Duration>, Rejection> {
    match query_param(request, INTERVAL_PARAM) {
        None => Ok(None),
        Some(value) => parse_interval(&value).map(Some),
    }
}

/// Reads an interval written as whole milliseconds (`250ms`), seconds (`1s`, `1.5s`, at most
/// millisecond precision) or `0` (every event as it comes).
///
/// # Errors
///
/// [`Rejection::BadRequest`] for anything else.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::resolve::parse_interval;
///
/// assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
/// assert_eq!(parse_interval("0.25s"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
/// assert!(parse_interval("1.0001s").is_err());
/// assert!(parse_interval("-1s").is_err());
/// ```
pub fn parse_interval(text: &str) -> Result<Duration, Rejection> {
    let bad = || Rejection::BadRequest("interval must be like 250ms, 1s or 0".into());
    let digits = |t: &str| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if let Some(ms) = text.strip_suffix("ms") {
        return if digits(ms) {
            ms.parse().map(Duration::from_millis).map_err(|_| bad())
        } else {
            Err(bad())
        };
    }
    let seconds = text.strip_suffix('s').ok_or_else(bad)?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    if !digits(whole) || !(fraction.is_empty() || digits(fraction) && fraction.len() <= 3) {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let millis: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
    Ok(Duration::from_secs(whole) + Duration::from_millis(millis))
}

/// Percent-decodes `text`; with `plus`, `+` is a space (query strings, not paths). A `%` not
/// followed by two hex digits stays as it is.
fn decode(text: &str, plus: bool) -> Cow<'_, str> {
    if !(text.contains('%') || plus && text.contains('+')) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' if plus => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(decoded) => {
                        out.push(decoded);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Where a request's credential comes from, in this order: an `Authorization: Bearer` header
/// (service clients), a cookie (browsers), and, only when enabled, an `access_token` query
/// parameter (for a browser's `EventSource`, which can send neither a header nor, cross-site
/// without credentials, a cookie).
///
/// A query token ends up in proxy and server access logs and in browser history, so it is off
/// unless turned on; prefer short-lived tokens there. ssehub itself never logs a credential,
/// never echoes one in a response, and prints [`Token`] as `Token(..)`.
///
/// # Examples
///
/// ```
/// use ssehub::resolve::Credentials;
///
/// let credentials = Credentials::new().with_cookie("sid").with_query_token(true);
/// let (request, ()) = http::Request::get("/events?access_token=t0k3n").body(())?.into_parts();
/// let token = credentials.token(&request).expect("a query token");
/// assert_eq!(token.as_str(), "t0k3n");
/// assert_eq!(format!("{token:?}"), "Token(..)");
///
/// // The same request, with query tokens left off.
/// assert!(Credentials::new().token(&request).is_none());
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Credentials {
    /// The cookie to read, if any.
    cookie: Option<String>,
    /// Whether `access_token` query parameters are read.
    query_token: bool,
}

impl Credentials {
    /// Reads `Authorization: Bearer` headers only.
    ///
    /// # Examples
    ///
    /// ```
    /// let (request, ()) = http::Request::get("/events")
    ///     .header("authorization", "Bearer abc")
    ///     .body(())?
    ///     .into_parts();
    /// let token = ssehub::resolve::Credentials::new().token(&request);
    /// assert_eq!(token.as_ref().map(|t| t.as_str()), Some("abc"));
    /// # Ok::<(), http::Error>(())
    /// ```
    pub fn new() -> Self {
        Credentials::default()
    }

    /// Also reads the cookie named `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// let credentials = ssehub::resolve::Credentials::new().with_cookie("sid");
    /// # drop(credentials);
    /// ```
    pub fn with_cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// Whether an `access_token` query parameter is read too (off by default).
    ///
    /// # Examples
    ///
    /// ```
    /// let credentials = ssehub::resolve::Credentials::new().with_query_token(true);
    /// # drop(credentials);
    /// ```
    pub fn with_query_token(mut self, enabled: bool) -> Self {
        self.query_token = enabled;
        self
    }

    /// The request's credential, from the first source that has a non-empty one.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::resolve::Credentials;
    ///
    /// let (request, ()) = http::Request::get("/events")
    ///     .header("cookie", "sid=from-cookie")
    ///     .body(())?
    ///     .into_parts();
    /// assert!(Credentials::new().token(&request).is_none());
    /// let token = Credentials::new().with_cookie("sid").token(&request);
    /// assert_eq!(token.as_ref().map(|t| t.as_str()), Some("from-cookie"));
    /// # Ok::<(), http::Error>(())
    /// ```
    #[must_use]
    pub fn token(&self, request: &Parts) -> Option<Token> {
        let bearer = request.headers.get_all(AUTHORIZATION).iter().find_map(|value| {
            let value = std::str::from_utf8(value.as_bytes()).ok()?;
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
        });
        bearer
            .filter(|t| !t.is_empty())
            .or_else(|| {
                let name = self.cookie.as_deref()?;
                cookie(request, name).filter(|t| !t.is_empty())
            })
            .or_else(|| {
                if !self.query_token {
                    return None;
                }
                query_param(request, ACCESS_TOKEN_PARAM).filter(|t| !t.is_empty())
            })
            .map(Token)
    }
}

/// A credential read by [`Credentials`]; its `Debug` output hides the value, so logging a
/// request's state cannot leak it.
///
/// # Examples
///
/// ```
/// let (request, ()) = http::Request::get("/events")
///     .header("authorization", "Bearer abc")
///     .body(())?
///     .into_parts();
/// let token = ssehub::resolve::Credentials::new().token(&request).expect("a bearer token");
/// assert_eq!(format!("{token:?}"), "Token(..)");
/// assert_eq!(token.into_string(), "abc");
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The credential.
    ///
    /// # Examples
    ///
    /// ```
    /// # let (request, ()) = http::Request::get("/").header("authorization", "Bearer abc").body(())?.into_parts();
    /// let token = ssehub::resolve::Credentials::new().token(&request).expect("a bearer token");
    /// assert_eq!(token.as_str(), "abc");
    /// # Ok::<(), http::Error>(())
    /// ```
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The credential, owned.
    ///
    /// # Examples
    ///
    /// ```
    /// # let (request, ()) = http::Request::get("/").header("authorization", "Bearer abc").body(())?.into_parts();
    /// let token = ssehub::resolve::Credentials::new().token(&request).expect("a bearer token");
    /// assert_eq!(token.into_string(), "abc");
    /// # Ok::<(), http::Error>(())
    /// ```
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A resolver taking topics from repeated `topic=` query parameters and patterns from repeated
/// `pattern=` parameters: `GET /events?topic=news&topic=alerts&pattern=price:*`.
///
/// Values are percent-decoded (`pattern=price%3A*` is `price:*`); other parameters are ignored.
/// A request with neither subscribes to nothing and receives broadcasts and targeted sends only.
/// Names are checked by the endpoint and the hub (400 for an invalid one).
///
/// A pattern such as `*` receives every topic; turn patterns off with
/// [`QueryTopics::with_patterns`] where topics are not all public.
///
/// # Examples
///
/// ```
/// use ssehub::{Endpoint, Hub, QueryTopics};
///
/// let endpoint = Endpoint::new(Hub::new()).with_resolver(QueryTopics::new().with_patterns(false));
/// # drop(endpoint);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct QueryTopics {
    /// Whether `pattern=` parameters are accepted.
    patterns: bool,
    /// Whether a `client=` parameter sets the client id.
    client: bool,
}

impl Default for QueryTopics {
    fn default() -> Self {
        QueryTopics::new()
    }
}

impl QueryTopics {
    /// Topics and patterns both accepted.
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::QueryTopics::new();
    /// assert_eq!(resolver, ssehub::QueryTopics::default());
    /// ```
    pub fn new() -> Self {
        QueryTopics { patterns: true, client: false }
    }

    /// Whether `pattern=` parameters are accepted; when not, a request with one is refused with
    /// 400.
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::QueryTopics::new().with_patterns(false);
    /// assert_ne!(resolver, ssehub::QueryTopics::new());
    /// ```
    pub fn with_patterns(mut self, enabled: bool) -> Self {
        self.patterns = enabled;
        self
    }

    /// Whether a `client=ID` parameter sets the subscription's client id (see
    /// [`Subscribe::with_client`]); off by default, when the parameter is ignored. The id
    /// decides who receives [`Hub::send_to_matching`](crate::Hub::send_to_matching), so turn it
    /// on only where clients may name themselves; otherwise set the id from a verified
    /// credential in your own resolver. More than one `client=` is refused with 400.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{QueryTopics, Subscribe};
    ///
    /// let (request, ()) = http::Request::get("/events?topic=a&client=job%3A7").body(())?.into_parts();
    /// assert_eq!(
    ///     QueryTopics::new().with_client_param(true).parse(&request)?,
    ///     Subscribe::from("a").with_client("job:7")
    /// );
    /// assert_eq!(QueryTopics::new().parse(&request)?, Subscribe::from("a"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_client_param(mut self, enabled: bool) -> Self {
        self.client = enabled;
        self
    }

    /// The subscription `request` asks for, at once (what [`Resolver::resolve`] returns): for use
    /// inside an application's own resolver.
    ///
    /// # Errors
    ///
    /// [`Rejection::BadRequest`] for a `pattern=` parameter when patterns are off, and for a
    /// second `client=` parameter when they are read.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{QueryTopics, Subscribe};
    ///
    /// let (request, ()) = http::Request::get("/events?topic=a&pattern=b:*").body(())?.into_parts();
    /// assert_eq!(
    ///     QueryTopics::new().parse(&request)?,
    ///     Subscribe::new().with_topic("a").with_pattern("b:*")
    /// );
    /// assert!(QueryTopics::new().with_patterns(false).parse(&request).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse(&self, request: &Parts) -> Result<Subscribe, Rejection> {
        let mut subscribe = Subscribe::new();
        for (key, value) in query_params(request) {
            match key.as_str() {
                "topic" => subscribe = subscribe.with_topic(value),
                "pattern" if self.patterns => subscribe = subscribe.with_pattern(value),
                "pattern" => return Err(Rejection::BadRequest("patterns are not allowed".into())),
                "client" if self.client && subscribe.client.is_some() => {
                    return Err(Rejection::BadRequest("give at most one client".into()))
                }
                "client" if self.client => subscribe = subscribe.with_client(value),
                _ => {}
            }
        }
        Ok(subscribe)
    }
}

impl Resolver for QueryTopics {
    fn resolve(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Subscribe, Rejection>> + Send {
        ready(self.parse(request))
    }
}

/// A resolver deriving one topic (or pattern) from the request path and query, for APIs shaped
/// like `GET /api/device/42/sse?offset=10`.
///
/// It is built from a *route* and a *topic template*:
///
/// - The route is a path whose segments are literals or `{name}` captures; a capture matches
///   exactly one non-empty segment, percent-decoded. The request path must have the same number of
///   segments (so a trailing slash matters) and equal literals, else the request is refused with
///   404.
/// - In the topic template, `{name}` is replaced by the capture `name` or, when the route has no
///   such capture, by the first query parameter `name` (percent-decoded); a missing parameter is a
///   400. Any other text is copied as it is. A value containing `*` is refused with 400, so a
///   client cannot widen its subscription.
/// - With [`PathTopic::with_wildcard`], a value equal to the wildcard word (say `all`) stands
///   for `*`, and the result is subscribed as a [`Pattern`](crate::Pattern) instead of a topic.
/// - With [`PathTopic::with_resume_param`], a query parameter carries the resume point, used
///   when the client sends neither a `Last-Event-ID` header nor a `lastEventId` parameter.
///
/// # Examples
///
/// `/api/{kind}/{id}/sse` to `{kind}:{id}`, `all` for every id, `offset` as the resume point:
///
/// | request | subscribes to | resumes after |
/// | --- | --- | --- |
/// | `GET /api/device/42/sse` | topic `device:42` | |
/// | `GET /api/device/all/sse?offset=10` | pattern `device:*` | id `10` |
/// | `GET /api/device/4*/sse` | 400 | |
/// | `GET /api/device/42` | 404 | |
///
/// ```
/// use ssehub::{PathTopic, Subscribe};
///
/// let devices = PathTopic::new("/api/{kind}/{id}/sse", "{kind}:{id}")
///     .with_wildcard("all")
///     .with_resume_param("offset");
///
/// let (one, ()) = http::Request::get("/api/device/42/sse").body(())?.into_parts();
/// assert_eq!(devices.parse(&one)?, Subscribe::new().with_topic("device:42"));
///
/// let (all, ()) = http::Request::get("/api/device/all/sse?offset=10").body(())?.into_parts();
/// assert_eq!(
///     devices.parse(&all)?,
///     Subscribe::new().with_pattern("device:*").with_last_event_id("10")
/// );
///
/// let (elsewhere, ()) = http::Request::get("/api/device/42").body(())?.into_parts();
/// assert_eq!(devices.parse(&elsewhere).map_err(|r| r.status().as_u16()), Err(404));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A template may take values from the query as well:
///
/// ```
/// use ssehub::{PathTopic, Subscribe};
///
/// let rooms = PathTopic::new("/rooms/{room}/events", "chat:{room}:{lang}");
/// let (request, ()) = http::Request::get("/rooms/lobby/events?lang=fr").body(())?.into_parts();
/// assert_eq!(rooms.parse(&request)?, Subscribe::from("chat:lobby:fr"));
///
/// let (no_lang, ()) = http::Request::get("/rooms/lobby/events").body(())?.into_parts();
/// assert_eq!(rooms.parse(&no_lang).map_err(|r| r.status().as_u16()), Err(400));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct PathTopic {
    /// The route's segments, split on `/`.
    route: Vec<Segment>,
    /// The topic template.
    topic: String,
    /// The value that stands for `*`.
    wildcard: Option<String>,
    /// The query parameter carrying the resume point.
    resume: Option<String>,
}

/// One segment of a [`PathTopic`] route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the request's segment.
    Literal(String),
    /// Matches any non-empty segment, under this name.
    Capture(String),
}

impl PathTopic {
    /// Maps requests matching `route` to the topic `topic` (see the type's docs for the syntax).
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::PathTopic::new("/feeds/{feed}", "feed:{feed}");
    /// # drop(resolver);
    /// ```
    pub fn new(route: &str, topic: impl Into<String>) -> Self {
        let route = route
            .split('/')
            .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.is_empty() => Segment::Capture(name.to_string()),
                _ => Segment::Literal(segment.to_string()),
            })
            .collect();
        PathTopic { route, topic: topic.into(), wildcard: None, resume: None }
    }

    /// A value (from the path or the query) equal to `word` stands for `*`, making the result a
    /// pattern.
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::PathTopic::new("/feeds/{feed}", "feed:{feed}").with_wildcard("all");
    /// # drop(resolver);
    /// ```
    pub fn with_wildcard(mut self, word: impl Into<String>) -> Self {
        self.wildcard = Some(word.into());
        self
    }

    /// The query parameter `name` carries the event id to resume after, unless the client sends
    /// a `Last-Event-ID` header or a `lastEventId` parameter (which win).
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::PathTopic::new("/feeds/{feed}", "feed:{feed}").with_resume_param("offset");
    /// # drop(resolver);
    /// ```
    pub fn with_resume_param(mut self, name: impl Into<String>) -> Self {
        self.resume = Some(name.into());
        self
    }

    /// The subscription `request` maps to, at once (what [`Resolver::resolve`] returns).
    ///
    /// # Errors
    ///
    /// [`Rejection::NotFound`] when the path does not match the route,
    /// [`Rejection::BadRequest`] for a missing query parameter or a value containing `*`.
    ///
    /// # Examples
    ///
    /// ```
    /// let resolver = ssehub::PathTopic::new("/feeds/{feed}", "feed:{feed}");
    /// let (request, ()) = http::Request::get("/feeds/a%20b").body(())?.into_parts();
    /// assert_eq!(resolver.parse(&request)?, ssehub::Subscribe::from("feed:a b"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse(&self, request: &Parts) -> Result<Subscribe, Rejection> {
        let captures = self.captures(request.uri.path())?;
        let mut topic = String::with_capacity(self.topic.len());
        let mut pattern = false;
        let mut rest = self.topic.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                break;
            };
            topic.push_str(&rest[..open]);
            let name = &rest[open + 1..close];
            let value = match captures.iter().find(|(n, _)| *n == name) {
                Some((_, value)) => value.clone(),
                None => query_param(request, name).ok_or_else(|| {
                    Rejection::BadRequest(format!("missing query parameter {name}"))
                })?,
            };
            if value.contains('*') {
                return Err(Rejection::BadRequest("'*' is not allowed in a topic".into()));
            }
            if self.wildcard.as_deref() == Some(value.as_str()) {
                topic.push('*');
                pattern = true;
            } else {
                topic.push_str(&value);
            }
            rest = &rest[close + 1..];
        }
        topic.push_str(rest);
        let mut subscribe = if pattern {
            Subscribe::new().with_pattern(topic)
        } else {
            Subscribe::new().with_topic(topic)
        };
        let resume = self.resume.as_deref().and_then(|name| query_param(request, name));
        if let Some(id) = resume.filter(|id| !id.is_empty()) {
            subscribe = subscribe.with_last_event_id(id);
        }
        Ok(subscribe)
    }

    /// The route's captures in `path`, or 404.
    fn captures<'r>(&'r self, path: &str) -> Result<Vec<(&'r str, String)>, Rejection> {
        let not_found = || Rejection::NotFound("no such stream".into());
        let mut segments = path.split('/');
        let mut captures = Vec::new();
        for expected in &self.route {
            let segment = segments.next().ok_or_else(not_found)?;
            match expected {
                Segment::Literal(literal) if literal == segment => {}
                Segment::Literal(_) => return Err(not_found()),
                Segment::Capture(_) if segment.is_empty() => return Err(not_found()),
                Segment::Capture(name) => {
                    captures.push((name.as_str(), decode(segment, false).into_owned()))
                }
            }
        }
        if segments.next().is_some() {
            return Err(not_found());
        }
        Ok(captures)
    }
}

impl Resolver for PathTopic {
    fn resolve(
        &self,
        request: &Parts,
    ) -> impl Future<Output = Result<Subscribe, Rejection>> + Send {
        ready(self.parse(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        let (parts, ()) = http::Request::get(uri).body(()).expect("a valid uri").into_parts();
        parts
    }

    #[test]
    fn decode_leaves_broken_escapes() {
        assert_eq!(decode("a%2", true), "a%2");
        assert_eq!(decode("%zz%41", true), "%zzA");
        assert_eq!(decode("%ff", true), "\u{fffd}");
        assert_eq!(decode("a+b", false), "a+b");
    }

    #[test]
    fn empty_last_event_id_header_falls_back_to_query() {
        let mut request = parts("/e?lastEventId=3");
        request.headers.insert(LAST_EVENT_ID, http::HeaderValue::from_static(""));
        assert_eq!(last_event_id(&request).as_deref(), Some("3"));
    }

    #[test]
    fn a_last_event_id_that_is_not_utf8_resets() {
        let mut request = parts("/e?topic=t");
        let bytes = http::HeaderValue::from_bytes(b"1\xff").expect("obs-text is allowed");
        request.headers.insert(LAST_EVENT_ID, bytes);
        let id = last_event_id(&request).expect("passed on");
        assert_eq!(id, "1\u{fffd}");
        let hub = crate::Hub::builder()
            .with_heartbeat(None)
            .with_history(Some(crate::HistoryLimits::new()))
            .build();
        hub.publish("t", crate::Event::new("x")).expect("publish");
        let mut sub =
            hub.subscribe(Subscribe::from("t").with_last_event_id(id)).expect("subscribe");
        let first = sub.try_recv().expect("live").expect("a reset frame").into_bytes();
        assert!(first.starts_with(b"event: reset\n"), "{first:?}");
    }

    #[test]
    fn path_topic_refuses_injected_wildcards() {
        let resolver = PathTopic::new("/d/{id}", "d:{id}");
        assert_eq!(resolver.parse(&parts("/d/a%2A")).map_err(|r| r.status().as_u16()), Err(400));
        assert_eq!(resolver.parse(&parts("/d/")).map_err(|r| r.status().as_u16()), Err(404));
        assert_eq!(resolver.parse(&parts("/d/a/b")).map_err(|r| r.status().as_u16()), Err(404));
    }
}
