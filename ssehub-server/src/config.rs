//! The server's settings: each one a flag, an environment variable and a key of the optional
//! TOML config file, with one precedence: flag > environment > file > default.
//!
//! Adding a setting is one field of [`Config`]: its `///` comment is its `--help` line, its
//! `#[arg(long, env = "SSEHUB_…")]` names the flag and the variable, and the file's key is the
//! flag's long name, found from the field by [`Config::load`]. The one other list is `Config`'s
//! hand-written `Debug`, which redacts the secrets and names every field by destructuring, so a
//! new field does not compile until it is printed (or redacted) there.
//! A switch copies `demo`'s attributes (so `--x`, `--x=false`, `SSEHUB_X=1` and `x = true` all
//! work); a repeatable flag is a `Vec<T>` field, and its key takes a TOML array.
//! Documented for operators in `docs/operating.md` (keep its table in step).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{BoolishValueParser, NonEmptyStringValueParser};
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

/// What `--help` prints after the flags.
const AFTER_HELP: &str = "\
Routes:
  GET  /events?topic=A&topic=B&pattern=P   the event stream; resumes from the Last-Event-ID
                                           header or a lastEventId query parameter;
                                           &snapshot=1 starts it with the latest event of
                                           every key of its topics, between two
                                           event: snapshot frames
  POST /publish?topic=NAME                 body {\"data\": string, \"id\"?: string,
                                           \"event\"?: string, \"retry\"?: integer (ms),
                                           \"key\"?: string (the topic's latest value for
                                           that key)};
                                           answers {\"id\": ..., \"receivers\": N}; bad input
                                           (unknown fields too) gets 400 {\"error\": reason},
                                           a missing token 401 (checked before the body)
  POST /publish                            content-type: application/x-ndjson: one
                                           {\"topic\", \"data\", \"id\"?, \"event\"?,
                                           \"retry\"?, \"key\"?} per line; answers one {\"id\": ...}
                                           per line, in order; a bad line gets 400
                                           {\"error\": \"line N: reason\"} and nothing is
                                           published
  POST /disconnect?topic=NAME              ends the streams of a topic (--allow-disconnect)
  GET  /events?...&client=ID              the stream's client id (with JWT on, the token's)
  POST /send?client=GLOB                   body as /publish; to every live stream whose
                                           client id matches the glob; answers {\"id\": ...,
                                           \"receivers\": N} (publish token or publish rights)
  POST /subscription?session=TOKEN         body {\"add\": {\"topics\": [...], \"patterns\":
                                           [...]}, \"remove\": {...}}: changes what the
                                           session's open stream receives, from the next
                                           event on (added names checked as for /events)
  POST /revoke?sub=PRINCIPAL               ends that principal's streams and, with JWT on,
                                           refuses its tokens issued until now; answers
                                           {\"revoked\": N} (publish token or publish rights)
  GET  /stats, /metrics                    JSON stats, Prometheus text
  GET  /                                   the live demo page (best with --demo)

Every flag may also be set by the environment variable shown (an empty one counts as unset)
or, in the TOML file given by --config, by a key named as the long flag (heartbeat = 0.5,
publish-token = \"...\"). A flag wins over the environment, the environment over the file.
Switches take =true/=false (also 1/0, yes/no, on/off) on the command line, in the
environment and in the file. See docs/operating.md.

Ctrl-C or SIGTERM shuts down gracefully: every stream gets a final retry hint and ends, then
the process exits (at most 5 seconds later, however many streams were open).";

/// The server's settings. Its `Debug` prints the publish token and the JWT secret only as
/// present or absent, and a broker URL without its credentials or query.
#[derive(Clone, Parser)]
#[command(
    name = "ssehub",
    version,
    about = "ssehub: a Server-Sent Events hub with a publish API, stats and a live demo page",
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Config {
    /// Where to listen (IPv4 or IPv6, e.g. [::]:8080)
    #[arg(long, env = "SSEHUB_ADDR", value_name = "HOST:PORT", default_value = "127.0.0.1:8080",
        value_parser = socket_addr)]
    pub addr: SocketAddr,
    /// Publish a simulated market feed to topics price:SYMBOL (event `price`)
    #[arg(long, env = "SSEHUB_DEMO", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "false",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub demo: bool,
    /// Demo updates per second, in total
    #[arg(long, env = "SSEHUB_DEMO_RATE", value_name = "N", default_value = "12",
        value_parser = rate)]
    pub demo_rate: f64,
    /// Compress streams for clients that accept zstd or gzip (each event compressed once per
    /// stream class, not per client)
    #[arg(long, env = "SSEHUB_COMPRESS", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "false",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub compress: bool,
    /// Keep-alive comment on idle streams every SECONDS; fractions allowed, 0 turns it off
    // The fully qualified `Option` keeps clap from reading the field as "flag may be absent":
    // the flag has a default and 0 means `None`.
    #[arg(long, env = "SSEHUB_HEARTBEAT", value_name = "SECONDS", default_value = "15",
        value_parser = heartbeat)]
    pub heartbeat: std::option::Option<Duration>,
    /// Enable POST /disconnect (403 without)
    #[arg(long, env = "SSEHUB_ALLOW_DISCONNECT", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "false",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub allow_disconnect: bool,
    /// Give each stream a resumable session (its token in the `connected` event, for
    /// POST /subscription and resumes)
    #[arg(long, env = "SSEHUB_SESSIONS", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "true",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub sessions: bool,
    /// Require `Authorization: Bearer TOKEN` on POST /publish and /disconnect
    #[arg(long, env = "SSEHUB_PUBLISH_TOKEN", value_name = "TOKEN", hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new())]
    pub publish_token: Option<String>,
    /// Events kept per topic for replay; 0 turns replay (and hub-assigned ids) off
    #[arg(long, env = "SSEHUB_HISTORY", value_name = "EVENTS", default_value = "1000")]
    pub history: usize,
    /// Keys whose latest event each topic keeps, for streams opened with snapshot=1 (the
    /// oldest key is evicted past it, or past 4 MiB); 0 turns keyed state off
    #[arg(long, env = "SSEHUB_STATE_KEYS", value_name = "KEYS", default_value = "10000")]
    pub state_keys: usize,
    /// Topics keeping keyed state; past it, the one published to longest ago that no stream
    /// receives loses its state (counted in state_topics_dropped), so publishing to ever-new
    /// topics (one per order id) stays bounded; 0 keeps state only on topics streams receive
    #[arg(long, env = "SSEHUB_STATE_TOPICS", value_name = "TOPICS", default_value = "100000")]
    pub state_topics: usize,
    /// Most open streams; more get 503 [default: unlimited]
    #[arg(long, env = "SSEHUB_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Fix each stream's kernel send buffer, so a client that stops reading is detected after
    /// tens of KiB rather than megabytes; 0 leaves the kernel's
    // Fully qualified for the same reason as `heartbeat`: 0 means `None`.
    #[arg(long, env = "SSEHUB_SEND_BUFFER", value_name = "BYTES", default_value = "0",
        value_parser = send_buffer)]
    pub send_buffer: std::option::Option<usize>,
    /// Largest request body on the publish routes; larger ones get 413
    #[arg(long, env = "SSEHUB_MAX_BODY", value_name = "BYTES", default_value = "1048576")]
    pub max_body: u64,
    /// Longest wait for a request body after its head; slower ones get 408 (fractions allowed)
    #[arg(long, env = "SSEHUB_BODY_TIMEOUT", value_name = "SECONDS", default_value = "10",
        value_parser = positive_seconds)]
    pub body_timeout: Duration,
    /// Reconnect delay hinted to clients
    #[arg(long, env = "SSEHUB_RETRY", value_name = "SECONDS", default_value = "2",
        value_parser = seconds)]
    pub retry: Duration,
    /// Random extra added to each retry hint, so clients do not return together
    #[arg(long, env = "SSEHUB_RETRY_JITTER", value_name = "SECONDS", default_value = "3",
        value_parser = seconds)]
    pub retry_jitter: Duration,
    /// Topics listed in /stats and /metrics
    #[arg(long, env = "SSEHUB_STATS_TOP", value_name = "N", default_value = "20")]
    pub stats_top: usize,
    /// Listen backlog: connections the kernel queues before they are accepted (Linux caps it
    /// at net.core.somaxconn)
    #[arg(long, env = "SSEHUB_BACKLOG", value_name = "N", default_value = "4096",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
    pub backlog: u32,
    /// Nice value of the thread serving /publish and the other non-stream routes (-20 to 19,
    /// lower runs first), so a publish does not wait behind fan-out writes for a core. Below
    /// the process's own it needs CAP_SYS_NICE; a refusal is logged and the hub runs on
    #[arg(long, env = "SSEHUB_PUBLISH_NICE", value_name = "N", default_value = "-10",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub publish_nice: i32,
    /// Nice value of the stream workers (0 to 19): above 0 they yield to the publish thread
    /// without any privilege, but also to every other process on the machine
    #[arg(long, env = "SSEHUB_FANOUT_NICE", value_name = "N", default_value = "0",
        value_parser = clap::value_parser!(i32).range(0..=19))]
    pub fanout_nice: i32,
    /// Join other nodes through Redis (redis://HOST:PORT); see docs/scaling.md
    #[arg(long, env = "SSEHUB_REDIS", value_name = "URL", hide_env_values = true,
        value_parser = redis_url)]
    pub redis: Option<String>,
    /// Join other nodes through NATS with JetStream (nats://HOST:PORT)
    #[arg(long, env = "SSEHUB_NATS", value_name = "URL", hide_env_values = true,
        value_parser = nats_url)]
    pub nats: Option<String>,
    /// Most publishes waiting on this node for the broker; beyond it a publish gets 503 with
    /// Retry-After at once instead of queueing
    #[arg(long, env = "SSEHUB_BROKER_MAX_IN_FLIGHT", value_name = "N", default_value = "4096",
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub broker_max_in_flight: u32,
    /// Verify HS256 tokens with this secret (prefer the variable: a flag shows in process
    /// listings; 32 bytes or more). With a JWT key, /events needs a token (Authorization:
    /// Bearer, or the ssehub_token cookie) whose claim covers its topics; see docs/operating.md
    #[arg(long, env = "SSEHUB_JWT_SECRET", value_name = "SECRET", hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new())]
    pub jwt_secret: Option<String>,
    /// Verify RS256 or ES256 tokens with this PEM public key; repeat for rotation (a token
    /// verifies if one key accepts it)
    #[arg(long = "jwt-public-key", env = "SSEHUB_JWT_PUBLIC_KEY", value_name = "FILE",
        value_delimiter = ',', action = ArgAction::Append)]
    pub jwt_public_keys: Vec<PathBuf>,
    /// Also read the token from an access_token query parameter (it ends up in logs and
    /// history: off by default)
    #[arg(long, env = "SSEHUB_JWT_QUERY_TOKEN", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "false",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub jwt_query_token: bool,
    /// Serve HTTPS (ALPN h2 and http/1.1) with this PEM certificate chain, leaf first; needs
    /// --tls-key. SIGHUP reloads both files for new connections
    #[arg(long, env = "SSEHUB_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert
    #[arg(long, env = "SSEHUB_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate made at start for localhost, 127.0.0.1 and ::1 (for
    /// trying it out: its path and SHA-256 are printed; browsers warn about it)
    #[arg(long, env = "SSEHUB_TLS_SELF_SIGNED", value_name = "BOOL", action = ArgAction::Set,
        num_args = 0..=1, require_equals = true, default_value = "false",
        default_missing_value = "true", hide_possible_values = true,
        value_parser = BoolishValueParser::new())]
    pub tls_self_signed: bool,
    /// Read settings from this TOML file (keys: the long flags' names)
    #[arg(long, env = "SSEHUB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The broker several nodes share, if any: the one of `redis` and `nats` set at the
    /// highest level (flag, environment, file), the later flag on the command line, or else
    /// NATS. Derived by [`Config::load`].
    #[arg(skip)]
    pub broker: Option<Broker>,
}

/// A backplane broker's URL. Its `Debug` hides the URL's credentials and query, as
/// [`Config`]'s does.
#[derive(Clone, PartialEq, Eq)]
pub enum Broker {
    /// `--redis redis://HOST:PORT`.
    Redis(String),
    /// `--nats nats://HOST:PORT`.
    Nats(String),
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a field added to `Config` fails to compile here until it is
        // printed or redacted: a secret cannot reach a log through a forgotten field.
        let Config {
            addr,
            demo,
            demo_rate,
            compress,
            heartbeat,
            allow_disconnect,
            sessions,
            publish_token,
            history,
            state_keys,
            state_topics,
            max_connections,
            send_buffer,
            max_body,
            body_timeout,
            retry,
            retry_jitter,
            stats_top,
            backlog,
            publish_nice,
            fanout_nice,
            redis,
            nats,
            broker_max_in_flight,
            jwt_secret,
            jwt_public_keys,
            jwt_query_token,
            tls_cert,
            tls_key,
            tls_self_signed,
            config,
            broker,
        } = self;
        f.debug_struct("Config")
            .field("addr", addr)
            .field("demo", demo)
            .field("demo_rate", demo_rate)
            .field("compress", compress)
            .field("heartbeat", heartbeat)
            .field("allow_disconnect", allow_disconnect)
            .field("sessions", sessions)
            .field("publish_token", &publish_token.as_ref().map(|_| Redacted))
            .field("history", history)
            .field("state_keys", state_keys)
            .field("state_topics", state_topics)
            .field("max_connections", max_connections)
            .field("send_buffer", send_buffer)
            .field("max_body", max_body)
            .field("body_timeout", body_timeout)
            .field("retry", retry)
            .field("retry_jitter", retry_jitter)
            .field("stats_top", stats_top)
            .field("backlog", backlog)
            .field("publish_nice", publish_nice)
            .field("fanout_nice", fanout_nice)
            .field("redis", &redis.as_deref().map(Url))
            .field("nats", &nats.as_deref().map(Url))
            .field("broker_max_in_flight", broker_max_in_flight)
            .field("jwt_secret", &jwt_secret.as_ref().map(|_| Redacted))
            .field("jwt_public_keys", jwt_public_keys)
            .field("jwt_query_token", jwt_query_token)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("tls_self_signed", tls_self_signed)
            .field("config", config)
            .field("broker", broker)
            .finish()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broker::Redis(url) => f.debug_tuple("Redis").field(&Url(url)).finish(),
            Broker::Nats(url) => f.debug_tuple("Nats").field(&Url(url)).finish(),
        }
    }
}

/// A secret in a `Debug` output: only that there is one.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A URL in a `Debug` output: scheme, host, port and path, with any user, password and query
/// (where Redis and NATS URLs carry credentials) replaced by `<redacted>`.
struct Url<'a>(&'a str);

impl std::fmt::Debug for Url<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", self.0));
        let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let host = match authority.rsplit_once('@') {
            Some((_, host)) => format!("<redacted>@{host}"),
            None => authority.to_string(),
        };
        let path = match tail.split_once(['?', '#']) {
            Some((path, _)) => format!("{path}?<redacted>"),
            None => tail.to_string(),
        };
        write!(f, "\"{scheme}://{host}{path}\"")
    }
}

/// Why the settings could not be read. Every variant is a usage error (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag or environment variable, or `--help` / `--version` (which clap prints).
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// The config file cannot be read or is not TOML.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file as given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key of the config file is unknown or its value is bad.
    #[error("config file {}: key `{key}`: {reason}", path.display())]
    Key {
        /// The file as given.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Reads the settings from `args` (the program name first, as `std::env::args_os` gives
    /// them), the `SSEHUB_*` environment and the `--config` file.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Config::command().mut_args(|arg| {
            // An empty variable counts as unset, as it did before clap: container definitions
            // often set every variable, some to nothing.
            let empty = arg.get_env().and_then(std::env::var_os).is_some_and(|v| v.is_empty());
            if empty {
                arg.env(None::<&str>)
            } else {
                arg
            }
        });
        let mut matches = command.clone().try_get_matches_from(&args)?;
        if let Some(path) = matches.get_one::<PathBuf>("config").cloned() {
            command = with_file(command, &path)?;
            matches = command.try_get_matches_from(&args)?;
        }
        let mut config = Config::from_arg_matches(&matches)?;
        config.broker = broker(&matches, &config);
        Ok(config)
    }
}

/// The file's values become the defaults of `command`'s arguments, so flags and variables
/// still win; each value is checked by its flag's own parser first.
fn with_file(mut command: clap::Command, path: &Path) -> Result<clap::Command, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        file_error(e.message().to_string() + &line_of(&text, e.span()))
    })?;
    for (key, value) in &table {
        let key_error =
            |reason: String| ConfigError::Key { path: path.to_owned(), key: key.clone(), reason };
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.as_str()) && !FLAG_ONLY.contains(&key.as_str()))
            .ok_or_else(|| key_error(format!("unknown key; the keys are {}", keys(&command))))?;
        let id = arg.get_id().clone();
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values = values(value, many).map_err(key_error)?;
        // The value goes through the flag's own parser, with the environment out of the way,
        // so the file gets the flag's checks and messages even where a flag overrides it.
        let probe = command.clone().mut_args(|arg| arg.env(None::<&str>));
        let argv = values.iter().map(|value| format!("--{key}={value}"));
        if let Err(error) = probe.try_get_matches_from(std::iter::once("ssehub".into()).chain(argv))
        {
            return Err(key_error(format!("invalid value {value}: {}", reason(&error))));
        }
        command = command.mut_arg(id, |arg| arg.default_values(values));
    }
    Ok(command)
}

/// Flags that are not settings, so no key of the file.
const FLAG_ONLY: [&str; 3] = ["config", "help", "version"];

/// The file's keys, for the message about an unknown one.
fn keys(command: &clap::Command) -> String {
    let keys: Vec<&str> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !FLAG_ONLY.contains(long))
        .collect();
    keys.join(", ")
}

/// A TOML value as the flag's text: strings as they are, numbers and booleans written out,
/// arrays only for flags that may be repeated.
fn values(value: &toml::Value, many: bool) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(text) => Ok(vec![text.clone()]),
        toml::Value::Integer(n) => Ok(vec![n.to_string()]),
        toml::Value::Float(x) => Ok(vec![x.to_string()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
        toml::Value::Array(items) if many => items
            .iter()
            .map(|item| match values(item, false)?.pop() {
                Some(one) => Ok(one),
                None => Err("expected an array of strings or numbers".to_string()),
            })
            .collect(),
        toml::Value::Array(_) => Err("expected one value, not an array".to_string()),
        _ => Err("expected a string, a number or a boolean".to_string()),
    }
}

/// Why clap refused a value: the value parser's own message where there is one.
fn reason(error: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// ` (line N)` for a TOML error's position.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.and_then(|span| text.get(..span.start))
        .map(|before| format!(" (line {})", before.lines().count().max(1)))
        .unwrap_or_default()
}

/// The broker from `--redis` and `--nats`: the one set at the higher level wins; at the same
/// level, the later on the command line, or NATS (the order the variables were read in before).
fn broker(matches: &ArgMatches, config: &Config) -> Option<Broker> {
    let redis = config.redis.clone().map(|url| (Broker::Redis(url), "redis"));
    let nats = config.nats.clone().map(|url| (Broker::Nats(url), "nats"));
    // `max_by_key` keeps the last of equal keys: NATS, as listed second.
    [redis, nats]
        .into_iter()
        .flatten()
        .max_by_key(|(_, id)| (matches.value_source(id), matches.index_of(id)))
        .map(|(broker, _)| broker)
}

/// `HOST:PORT`.
fn socket_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| "expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080".to_string())
}

/// Updates per second.
fn rate(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 100_000.0)
        .ok_or_else(|| "expected updates per second, more than 0".to_string())
}

/// A duration in seconds, fractions allowed, at most a day.
fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= Duration::from_secs(86_400))
        .ok_or_else(|| "expected seconds, e.g. 15 or 0.5".to_string())
}

/// A duration in seconds above 0.
fn positive_seconds(value: &str) -> Result<Duration, String> {
    Some(seconds(value)?)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected seconds above 0".to_string())
}

/// A heartbeat interval: 0 is none.
fn heartbeat(value: &str) -> Result<Option<Duration>, String> {
    Ok(Some(seconds(value)?).filter(|d| !d.is_zero()))
}

/// A send buffer size: 0 leaves the kernel's.
fn send_buffer(value: &str) -> Result<Option<usize>, String> {
    let bytes: usize = value.parse().map_err(|_| "expected a size in bytes".to_string())?;
    Ok(Some(bytes).filter(|&b| b > 0))
}

/// A URL with the expected scheme.
fn url(value: &str, scheme: &str) -> Result<String, String> {
    if value.starts_with(scheme) && value.len() > scheme.len() {
        Ok(value.to_string())
    } else {
        Err(format!("expected a URL starting with {scheme}"))
    }
}

/// A Redis URL.
fn redis_url(value: &str) -> Result<String, String> {
    url(value, "redis://")
}

/// A NATS URL.
fn nats_url(value: &str) -> Result<String, String> {
    url(value, "nats://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The tests set `SSEHUB_*` variables of this process: one test at a time.
    static ENV: Mutex<()> = Mutex::new(());

    /// Runs `load` with `vars` set (and every other `SSEHUB_*` variable unset).
    fn load_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let _guard = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SSEHUB_") {
                std::env::remove_var(name);
            }
        }
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let result = Config::load(std::iter::once("ssehub").chain(args.iter().copied()));
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        result
    }

    /// A config file holding `text`, removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> File {
            let path = std::env::temp_dir()
                .join(format!("ssehub-config-{}-{name}.toml", std::process::id()));
            std::fs::write(&path, text).expect("write the config file");
            File(path)
        }

        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn key_error(result: Result<Config, ConfigError>) -> (String, String, String) {
        match result {
            Err(ConfigError::Key { path, key, reason }) => {
                (path.display().to_string(), key, reason)
            }
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = load_with(&[], &[]).expect("defaults");
        assert_eq!(config.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(!config.demo && !config.allow_disconnect);
        assert!(config.sessions);
        assert_eq!(config.demo_rate, 12.0);
        assert_eq!(config.heartbeat, Some(Duration::from_secs(15)));
        assert_eq!(config.publish_token, None);
        assert_eq!((config.history, config.stats_top, config.backlog), (1000, 20, 4096));
        assert_eq!((config.state_keys, config.state_topics), (10_000, 100_000));
        assert_eq!((config.publish_nice, config.fanout_nice), (-10, 0));
        assert_eq!((config.max_connections, config.send_buffer), (None, None));
        assert_eq!(
            (config.retry, config.retry_jitter),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
        assert_eq!((config.broker, config.config), (None, None));
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let file = File::new(
            "precedence",
            "heartbeat = 0.5\nretry = 7\nhistory = 5\naddr = \"[::1]:9000\"\n",
        );
        let vars = [("SSEHUB_RETRY", "8"), ("SSEHUB_HISTORY", "6")];
        let config = load_with(&["--history", "4", &file.arg()], &vars).expect("load");
        assert_eq!(config.history, 4, "the flag wins over the variable and the file");
        assert_eq!(config.retry, Duration::from_secs(8), "the variable wins over the file");
        assert_eq!(config.heartbeat, Some(Duration::from_millis(500)), "the file over the default");
        assert_eq!(config.addr, "[::1]:9000".parse().expect("addr"));
        assert_eq!(config.retry_jitter, Duration::from_secs(3), "the default where none is set");
        // The file named by the environment counts too.
        let path = file.0.display().to_string();
        let config = load_with(&[], &[("SSEHUB_CONFIG", &path)]).expect("load");
        assert_eq!((config.history, config.retry), (5, Duration::from_secs(7)));
    }

    #[test]
    fn switches_read_every_spelling_everywhere() {
        assert!(load_with(&["--demo"], &[]).expect("flag").demo);
        assert!(!load_with(&["--demo=false"], &[("SSEHUB_DEMO", "1")]).expect("flag").demo);
        assert!(
            load_with(&[], &[("SSEHUB_ALLOW_DISCONNECT", "yes")]).expect("env").allow_disconnect
        );
        let file = File::new("switches", "demo = true\nallow-disconnect = \"on\"\n");
        let config = load_with(&[&file.arg()], &[]).expect("file");
        assert!(config.demo && config.allow_disconnect);
        let config = load_with(&[&file.arg()], &[("SSEHUB_DEMO", "off")]).expect("env over file");
        assert!(!config.demo && config.allow_disconnect);
        assert!(load_with(&["--demo=maybe"], &[]).is_err());
    }

    #[test]
    fn zero_turns_heartbeat_and_send_buffer_off_and_empty_variables_are_unset() {
        let config = load_with(&["--heartbeat", "0", "--send-buffer", "0"], &[]).expect("load");
        assert_eq!((config.heartbeat, config.send_buffer), (None, None));
        let config = load_with(&["--send-buffer=16384"], &[]).expect("load");
        assert_eq!(config.send_buffer, Some(16384));
        let vars = [("SSEHUB_PUBLISH_TOKEN", ""), ("SSEHUB_HEARTBEAT", "")];
        let config = load_with(&[], &vars).expect("empty variables are unset");
        assert_eq!((config.publish_token, config.heartbeat), (None, Some(Duration::from_secs(15))));
        assert!(load_with(&["--publish-token="], &[]).is_err(), "an empty token is refused");
    }

    #[test]
    fn the_broker_is_the_one_set_at_the_highest_level() {
        let redis = Some(Broker::Redis("redis://r:6379".into()));
        let nats = Some(Broker::Nats("nats://n:4222".into()));
        let both = ["--nats", "nats://n:4222", "--redis", "redis://r:6379"];
        assert_eq!(load_with(&both, &[]).expect("flags").broker, redis, "the later flag");
        let vars = [("SSEHUB_NATS", "nats://n:4222")];
        let flag_and_env = load_with(&["--redis", "redis://r:6379"], &vars).expect("load");
        assert_eq!(flag_and_env.broker, redis, "a flag over a variable");
        let file = File::new("broker", "redis = \"redis://r:6379\"\n");
        assert_eq!(load_with(&[&file.arg()], &vars).expect("load").broker, nats, "env over file");
        assert_eq!(load_with(&[&file.arg()], &[]).expect("load").broker, redis);
        assert!(load_with(&["--redis", "nats://n:4222"], &[]).is_err(), "the scheme is checked");
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_names_the_file_the_key_and_why() {
        let file = File::new("unknown", "addr = \"127.0.0.1:1\"\nheartbaet = 3\n");
        let (path, key, reason) = key_error(load_with(&[&file.arg()], &[]));
        assert_eq!((path, key.as_str()), (file.0.display().to_string(), "heartbaet"));
        assert!(reason.starts_with("unknown key") && reason.contains("heartbeat"), "{reason}");
        // A flag overriding a key does not hide the key's bad value.
        for (text, key, why, flag) in [
            ("heartbeat = \"soon\"", "heartbeat", "expected seconds", Some("--heartbeat=1")),
            ("addr = 8080", "addr", "expected HOST:PORT", Some("--addr=127.0.0.1:2")),
            ("backlog = 0", "backlog", "0 is not in 1..=2147483647", None),
            ("history = -1", "history", "invalid digit", None),
            ("demo = \"maybe\"", "demo", "maybe", Some("--demo")),
            ("addr = [\"127.0.0.1:1\"]", "addr", "expected one value", None),
            ("retry = { seconds = 1 }", "retry", "expected a string, a number or a boolean", None),
            ("config = \"other.toml\"", "config", "unknown key", None),
            ("help = true", "help", "unknown key", None),
        ] {
            let file = File::new("bad", text);
            let args: Vec<String> =
                std::iter::once(file.arg()).chain(flag.map(String::from)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (_, named, reason) = key_error(load_with(&args, &[]));
            assert_eq!(named, key, "{text}");
            assert!(reason.contains(why), "{text}: {reason}");
        }
    }

    #[test]
    fn a_repeatable_flag_takes_an_array_and_a_flag_replaces_it() {
        let arg = clap::Arg::new("key").long("key").action(ArgAction::Append);
        let command = clap::Command::new("t").arg(arg);
        let file = File::new("array", "key = [\"a\", 2]\n");
        let command = with_file(command, &file.0).expect("an array for a repeatable flag");
        let matches = command.clone().try_get_matches_from(["t"]).expect("the file's values");
        let values: Vec<&String> = matches.get_many("key").expect("values").collect();
        assert_eq!(values, ["a", "2"]);
        let matches = command.try_get_matches_from(["t", "--key", "c"]).expect("a flag");
        let values: Vec<&String> = matches.get_many("key").expect("values").collect();
        assert_eq!(values, ["c"]);
    }

    #[test]
    fn debug_shows_no_secret_only_that_it_is_set() {
        let args = [
            "--publish-token=pub-SECRET-1",
            "--jwt-secret=jwt-SECRET-2-long-enough-for-hs256-xxxxx",
            "--redis=redis://user:redis-SECRET-3@r:6379/0?password=redis-SECRET-4",
            "--nats=nats://nats-SECRET-5@n:4222",
            "--history=7",
        ];
        let config = load_with(&args, &[]).expect("load");
        let printed = format!("{config:?}");
        let pretty = format!("{config:#?}");
        for shown in [&printed, &pretty] {
            assert!(!shown.contains("SECRET"), "{shown}");
        }
        for part in [
            "publish_token: Some(\"<redacted>\")",
            "jwt_secret: Some(\"<redacted>\")",
            "redis: Some(\"redis://<redacted>@r:6379/0?<redacted>\")",
            "nats: Some(\"nats://<redacted>@n:4222\")",
            "broker: Some(Nats(\"nats://<redacted>@n:4222\"))",
            "history: 7",
        ] {
            assert!(printed.contains(part), "{part} in {printed}");
        }
        // Unset secrets print as unset, and a URL without credentials whole.
        let config = load_with(&["--redis=redis://r:6379"], &[]).expect("load");
        let printed = format!("{config:?}");
        assert!(printed.contains("publish_token: None") && printed.contains("jwt_secret: None"));
        assert!(printed.contains("broker: Some(Redis(\"redis://r:6379\"))"), "{printed}");
    }

    #[test]
    fn an_unreadable_or_malformed_file_is_an_error_naming_it() {
        let missing = std::env::temp_dir().join("ssehub-config-no-such-file.toml");
        let result = load_with(&[&format!("--config={}", missing.display())], &[]);
        assert!(matches!(&result, Err(ConfigError::File { path, .. }) if *path == missing));
        let file = File::new("syntax", "addr = \"127.0.0.1:1\"\nheartbeat = \n");
        let message = load_with(&[&file.arg()], &[]).expect_err("not TOML").to_string();
        assert!(message.starts_with(&format!("config file {}: ", file.0.display())), "{message}");
        assert!(message.contains("(line 2)"), "{message}");
    }
}
