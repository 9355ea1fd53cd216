//! The server's settings: flags, each with an environment variable behind it.

use std::net::SocketAddr;
use std::time::Duration;

/// What `--help` prints.
pub const HELP: &str = "\
ssehub hub server: a Server-Sent Events hub with a publish API, stats and a live demo page

USAGE:
    cargo run --release --example hub -- [FLAGS]

ROUTES:
    GET  /events?topic=A&topic=B&pattern=P   the event stream; resumes from the Last-Event-ID
                                             header or a lastEventId query parameter
    POST /publish?topic=NAME                 body {\"data\": string, \"id\"?: string,
                                             \"event\"?: string, \"retry\"?: integer (ms)};
                                             answers {\"id\": ..., \"receivers\": N}; bad
                                             input (unknown fields too) gets 400
                                             {\"error\": reason}, a missing token 401
    POST /disconnect?topic=NAME              ends the streams of a topic (--allow-disconnect)
    POST /revoke?sub=PRINCIPAL               ends that principal's streams and, with JWT on,
                                             refuses its tokens issued until now; answers
                                             {\"revoked\": N} (publish token or publish rights)
    GET  /stats, /metrics                    JSON stats, Prometheus text
    GET  /                                   the live demo page (best with --demo)

FLAGS (each may also be set by the environment variable shown; a flag wins):
    --addr HOST:PORT         where to listen                         SSEHUB_ADDR
                             [default: 127.0.0.1:8080]
    --demo                   publish a simulated market feed to      SSEHUB_DEMO=1
                             topics price:SYMBOL (event `price`)
    --demo-rate N            demo updates per second, in total       SSEHUB_DEMO_RATE
                             [default: 12]
    --heartbeat SECONDS      keep-alive comment on idle streams;     SSEHUB_HEARTBEAT
                             fractions allowed, 0 turns it off [default: 15]
    --allow-disconnect       enable POST /disconnect (403 without)   SSEHUB_ALLOW_DISCONNECT=1
    --publish-token TOKEN    require `Authorization: Bearer TOKEN`   SSEHUB_PUBLISH_TOKEN
                             on POST /publish and /disconnect
    --jwt-secret SECRET      verify HS256 tokens with this secret    SSEHUB_JWT_SECRET
                             (prefer the variable: a flag shows in
                             process listings; 32 bytes or more)
    --jwt-public-key FILE    verify RS256 or ES256 tokens with this  SSEHUB_JWT_PUBLIC_KEY
                             PEM public key; repeat for rotation     (FILE,FILE,...)
                             (a token verifies if one key accepts
                             it). With a JWT key, /events needs a
                             token (Authorization: Bearer, or the
                             ssehub_token cookie): 401 without a
                             valid one, 403 for a topic or pattern
                             outside its claim {\"sub\", \"exp\",
                             \"ssehub\": {\"subscribe\": [...],
                             \"publish\": [...]}} (or Mercure's
                             \"mercure\" layout); the stream ends at
                             exp with `event: expired`. Publishing
                             needs the publish token or a token whose
                             publish claim covers the topic
    --jwt-query-token        also read the token from an             SSEHUB_JWT_QUERY_TOKEN=1
                             access_token query parameter (it ends up
                             in logs and history: off by default)
    --history EVENTS         events kept per topic for replay;       SSEHUB_HISTORY
                             0 turns replay (and hub-assigned ids) off [default: 1000]
    --max-connections N      most open streams; more get 503         SSEHUB_MAX_CONNECTIONS
                             [default: unlimited]
    --send-buffer BYTES      fix each stream's kernel send buffer,   SSEHUB_SEND_BUFFER
                             so a client that stops reading is
                             detected after tens of KiB rather than
                             megabytes [default: the kernel's]
    --retry SECONDS          reconnect delay hinted to clients       SSEHUB_RETRY
                             [default: 2]
    --retry-jitter SECONDS   random extra added to each hint, so     SSEHUB_RETRY_JITTER
                             clients do not return together [default: 3]
    --stats-top N            topics listed in /stats and /metrics    SSEHUB_STATS_TOP
                             [default: 20]
    --redis URL              join other nodes through Redis          SSEHUB_REDIS
                             (redis://HOST:PORT; build with
                             --features redis); see docs/scaling.md
    --nats URL               join other nodes through NATS with      SSEHUB_NATS
                             JetStream (nats://HOST:PORT; build
                             with --features nats)
    -h, --help               print this help

Ctrl-C or SIGTERM shuts down gracefully: every stream gets a final retry hint and ends, then
the process exits (at most 5 seconds later, however many streams were open).
";

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Whether to run the simulated market.
    pub demo: bool,
    /// Demo updates per second, in total.
    pub demo_rate: f64,
    /// Heartbeat interval; `None` for none.
    pub heartbeat: Option<Duration>,
    /// Whether `POST /disconnect` is enabled.
    pub allow_disconnect: bool,
    /// The bearer token `POST /publish` requires, if any.
    pub publish_token: Option<String>,
    /// Events kept per topic for replay (0: no history).
    pub history: usize,
    /// Most open streams.
    pub max_connections: Option<usize>,
    /// `SO_SNDBUF` of each stream, if fixed.
    pub send_buffer: Option<usize>,
    /// The reconnect delay hinted to clients.
    pub retry: Duration,
    /// The most random extra added to `retry`.
    pub retry_jitter: Duration,
    /// Topics listed in the stats.
    pub stats_top: usize,
    /// The broker several nodes share, if any (the last of `--redis`/`--nats` given wins).
    pub broker: Option<Broker>,
    /// The HS256 secret tokens are verified with, if any.
    pub jwt_secret: Option<String>,
    /// PEM public keys (RS256, ES256) tokens are verified with.
    pub jwt_public_keys: Vec<std::path::PathBuf>,
    /// Whether tokens are read from an `access_token` query parameter too.
    pub jwt_query_token: bool,
}

/// A backplane broker's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// `--redis redis://HOST:PORT`.
    Redis(String),
    /// `--nats nats://HOST:PORT`.
    Nats(String),
}

/// A URL with the expected scheme.
fn url(value: &str, scheme: &str) -> Result<String, String> {
    if value.starts_with(scheme) && value.len() > scheme.len() {
        Ok(value.to_string())
    } else {
        Err(format!("expected a URL starting with {scheme}"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            demo: false,
            demo_rate: 12.0,
            heartbeat: Some(Duration::from_secs(15)),
            allow_disconnect: false,
            publish_token: None,
            history: 1000,
            max_connections: None,
            send_buffer: None,
            retry: Duration::from_secs(2),
            retry_jitter: Duration::from_secs(3),
            stats_top: 20,
            broker: None,
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            jwt_query_token: false,
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Run(Box<Config>),
    /// Print the help.
    Help,
}

/// Every setting: flag, environment variable, whether it takes a value.
const SETTINGS: [(&str, &str, bool); 17] = [
    ("--addr", "SSEHUB_ADDR", true),
    ("--demo", "SSEHUB_DEMO", false),
    ("--demo-rate", "SSEHUB_DEMO_RATE", true),
    ("--heartbeat", "SSEHUB_HEARTBEAT", true),
    ("--allow-disconnect", "SSEHUB_ALLOW_DISCONNECT", false),
    ("--publish-token", "SSEHUB_PUBLISH_TOKEN", true),
    ("--history", "SSEHUB_HISTORY", true),
    ("--max-connections", "SSEHUB_MAX_CONNECTIONS", true),
    ("--send-buffer", "SSEHUB_SEND_BUFFER", true),
    ("--retry", "SSEHUB_RETRY", true),
    ("--retry-jitter", "SSEHUB_RETRY_JITTER", true),
    ("--stats-top", "SSEHUB_STATS_TOP", true),
    ("--redis", "SSEHUB_REDIS", true),
    ("--nats", "SSEHUB_NATS", true),
    ("--jwt-secret", "SSEHUB_JWT_SECRET", true),
    ("--jwt-public-key", "SSEHUB_JWT_PUBLIC_KEY", true),
    ("--jwt-query-token", "SSEHUB_JWT_QUERY_TOKEN", false),
];

impl Command {
    /// Reads the environment, then the flags (which win).
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, String> {
        let mut config = Config::default();
        for (flag, var, takes_value) in SETTINGS {
            let Some(value) = env(var).filter(|v| !v.is_empty()) else { continue };
            let value = if takes_value {
                value
            } else {
                parse_bool(&value).map_err(|e| format!("{var}: {e}"))?.to_string()
            };
            config.set(flag, &value).map_err(|e| format!("{var}={value:?}: {e}"))?;
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let Some(&(flag, _, takes_value)) = SETTINGS.iter().find(|s| s.0 == flag) else {
                return Err(format!("unknown argument {arg:?}"));
            };
            let value = match (takes_value, inline) {
                (true, Some(value)) => value,
                (true, None) => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
                (false, Some(value)) => {
                    parse_bool(&value).map_err(|e| format!("{flag}: {e}"))?.to_string()
                }
                (false, None) => "true".to_string(),
            };
            config.set(flag, &value).map_err(|e| format!("{flag} {value:?}: {e}"))?;
        }
        Ok(Command::Run(Box::new(config)))
    }
}

impl Config {
    /// Applies one setting.
    fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        match flag {
            "--addr" => {
                self.addr = value.parse().map_err(|_| "expected HOST:PORT, e.g. 127.0.0.1:8080")?
            }
            "--demo" => self.demo = value == "true",
            "--demo-rate" => {
                self.demo_rate = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0 && *r <= 100_000.0)
                    .ok_or("expected updates per second, more than 0")?;
            }
            "--heartbeat" => self.heartbeat = Some(seconds(value)?).filter(|d| !d.is_zero()),
            "--allow-disconnect" => self.allow_disconnect = value == "true",
            "--publish-token" => self.publish_token = Some(value.to_string()),
            "--history" => self.history = value.parse().map_err(|_| "expected a count")?,
            "--max-connections" => {
                self.max_connections = Some(value.parse().map_err(|_| "expected a count")?);
            }
            "--send-buffer" => {
                let bytes: usize = value.parse().map_err(|_| "expected a size in bytes")?;
                self.send_buffer = Some(bytes).filter(|&b| b > 0);
            }
            "--retry" => self.retry = seconds(value)?,
            "--retry-jitter" => self.retry_jitter = seconds(value)?,
            "--stats-top" => self.stats_top = value.parse().map_err(|_| "expected a count")?,
            "--redis" => self.broker = Some(Broker::Redis(url(value, "redis://")?)),
            "--nats" => self.broker = Some(Broker::Nats(url(value, "nats://")?)),
            "--jwt-secret" => self.jwt_secret = Some(value.to_string()).filter(|s| !s.is_empty()),
            // Repeatable; the variable holds a comma-separated list.
            "--jwt-public-key" => self
                .jwt_public_keys
                .extend(value.split(',').filter(|p| !p.is_empty()).map(std::path::PathBuf::from)),
            "--jwt-query-token" => self.jwt_query_token = value == "true",
            _ => unreachable!("every flag in SETTINGS is handled"),
        }
        Ok(())
    }
}

/// A duration in seconds, fractions allowed.
fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= Duration::from_secs(86_400))
        .ok_or_else(|| "expected seconds, e.g. 15 or 0.5".to_string())
}

/// A switch set by an environment variable or `--flag=value`.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected 1/0, true/false, yes/no or on/off, not {value:?}")),
    }
}
