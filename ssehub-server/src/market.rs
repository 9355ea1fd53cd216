//! The `--demo` feed: a simulated market of stocks and crypto with random-walk prices,
//! published to `price:SYMBOL` as `price` events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ssehub::{Event, Hub};

use crate::publisher::{Publisher, Refused};

/// Symbol, name, kind, opening price, volatility per tick.
const LISTINGS: [(&str, &str, Kind, f64, f64); 40] = [
    ("AAPL", "Apple", Kind::Stock, 228.40, 0.0012),
    ("MSFT", "Microsoft", Kind::Stock, 431.20, 0.0011),
    ("NVDA", "NVIDIA", Kind::Stock, 124.80, 0.0025),
    ("GOOGL", "Alphabet", Kind::Stock, 176.30, 0.0013),
    ("AMZN", "Amazon", Kind::Stock, 198.70, 0.0015),
    ("META", "Meta Platforms", Kind::Stock, 584.10, 0.0018),
    ("TSLA", "Tesla", Kind::Stock, 251.50, 0.0030),
    ("AMD", "AMD", Kind::Stock, 158.90, 0.0024),
    ("NFLX", "Netflix", Kind::Stock, 712.40, 0.0017),
    ("ORCL", "Oracle", Kind::Stock, 172.60, 0.0012),
    ("INTC", "Intel", Kind::Stock, 22.85, 0.0022),
    ("IBM", "IBM", Kind::Stock, 221.30, 0.0009),
    ("CRM", "Salesforce", Kind::Stock, 289.70, 0.0014),
    ("ADBE", "Adobe", Kind::Stock, 511.90, 0.0014),
    ("UBER", "Uber", Kind::Stock, 74.20, 0.0020),
    ("SHOP", "Shopify", Kind::Stock, 78.60, 0.0026),
    ("JPM", "JPMorgan Chase", Kind::Stock, 211.40, 0.0008),
    ("V", "Visa", Kind::Stock, 278.90, 0.0007),
    ("MA", "Mastercard", Kind::Stock, 496.30, 0.0007),
    ("DIS", "Disney", Kind::Stock, 94.10, 0.0011),
    ("KO", "Coca-Cola", Kind::Stock, 70.30, 0.0005),
    ("NKE", "Nike", Kind::Stock, 81.70, 0.0013),
    ("ASML", "ASML", Kind::Stock, 812.50, 0.0019),
    ("COIN", "Coinbase", Kind::Stock, 176.90, 0.0035),
    ("BTC", "Bitcoin", Kind::Crypto, 64_210.0, 0.0020),
    ("ETH", "Ethereum", Kind::Crypto, 3_105.0, 0.0025),
    ("SOL", "Solana", Kind::Crypto, 146.20, 0.0035),
    ("BNB", "BNB", Kind::Crypto, 581.40, 0.0022),
    ("XRP", "XRP", Kind::Crypto, 0.5842, 0.0030),
    ("ADA", "Cardano", Kind::Crypto, 0.3561, 0.0032),
    ("DOGE", "Dogecoin", Kind::Crypto, 0.1094, 0.0045),
    ("AVAX", "Avalanche", Kind::Crypto, 26.31, 0.0038),
    ("DOT", "Polkadot", Kind::Crypto, 4.382, 0.0034),
    ("LINK", "Chainlink", Kind::Crypto, 11.27, 0.0036),
    ("LTC", "Litecoin", Kind::Crypto, 66.85, 0.0026),
    ("ATOM", "Cosmos", Kind::Crypto, 4.511, 0.0033),
    ("UNI", "Uniswap", Kind::Crypto, 6.942, 0.0040),
    ("XLM", "Stellar", Kind::Crypto, 0.0943, 0.0031),
    ("NEAR", "NEAR", Kind::Crypto, 4.873, 0.0042),
    ("ARB", "Arbitrum", Kind::Crypto, 0.5618, 0.0044),
];

/// Prices each symbol remembers, for the page's sparklines.
const SPARK_POINTS: usize = 60;

/// What a listing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An equity.
    Stock,
    /// A coin.
    Crypto,
}

impl Kind {
    /// The name in the JSON.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Crypto => "crypto",
        }
    }
}

/// One symbol's state.
#[derive(Debug)]
struct Quote {
    /// Index into `LISTINGS`.
    listing: usize,
    /// The opening price, against which `change` is computed.
    open: f64,
    /// The current price.
    price: f64,
    /// Recent prices, oldest first.
    recent: VecDeque<f64>,
}

/// The simulated market, shared with `GET /demo/market`.
#[derive(Debug)]
pub struct Market {
    /// One quote per listing.
    quotes: Vec<Quote>,
    /// The random walk's source.
    rng: Rng,
    /// The id of the last event published, so a page can resume from its snapshot exactly.
    last_id: Option<String>,
}

/// xorshift: a random walk needs no cryptography (and no dependency).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    /// The next pseudo-random number.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A roughly normal number with mean 0 and deviation 1 (Irwin-Hall: a sum of 12 uniforms).
    fn gaussian(&mut self) -> f64 {
        (0..12).map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64).sum::<f64>() - 6.0
    }
}

impl Market {
    /// Every listing at its opening price, with a short made-up history so sparklines are not
    /// empty on the first page load.
    pub fn new() -> Market {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
        let mut rng = Rng(seed | 1);
        let quotes = LISTINGS
            .iter()
            .enumerate()
            .map(|(listing, &(_, _, _, open, _))| {
                let mut quote = Quote { listing, open, price: open, recent: VecDeque::new() };
                for _ in 0..SPARK_POINTS / 2 {
                    walk(&mut rng, &mut quote);
                }
                quote.open = quote.recent.front().copied().unwrap_or(open);
                quote
            })
            .collect();
        Market { quotes, rng, last_id: None }
    }

    /// Moves one random symbol; returns its topic and the event (JSON data, `price`, keyed by
    /// the symbol, so the topic's state holds its latest quote for a `snapshot=1` stream).
    fn tick(&mut self) -> (String, Event) {
        let i = (self.rng.next() % self.quotes.len() as u64) as usize;
        let quote = &mut self.quotes[i];
        walk(&mut self.rng, quote);
        let symbol = LISTINGS[quote.listing].0;
        let event =
            Event::new(quote_json(quote, false).to_string()).with_event("price").with_key(symbol);
        (format!("price:{symbol}"), event)
    }

    /// Every quote with its recent prices, for a page that just opened, and the id of the last
    /// event they include: a stream opened with that `lastEventId` continues exactly.
    pub fn snapshot(&self) -> Value {
        json!({
            "symbols": self.quotes.iter().map(|q| quote_json(q, true)).collect::<Vec<_>>(),
            "last_id": self.last_id,
        })
    }
}

/// One step of a quote's random walk, mean-reverting gently towards the listing's price.
fn walk(rng: &mut Rng, quote: &mut Quote) {
    let (_, _, _, base, volatility) = LISTINGS[quote.listing];
    let pull = (base / quote.price).ln() * 0.02;
    quote.price = round(quote.price * (rng.gaussian() * volatility + pull).exp());
    quote.recent.push_back(quote.price);
    if quote.recent.len() > SPARK_POINTS {
        quote.recent.pop_front();
    }
}

/// A quote as JSON: symbol, name, kind, price, open, change (absolute, since open), change_pct,
/// time (ms since the UNIX epoch); with `recent`, the sparkline prices too.
fn quote_json(quote: &Quote, recent: bool) -> Value {
    let (symbol, name, kind, _, _) = LISTINGS[quote.listing];
    let change = round(quote.price - quote.open);
    let pct = (quote.price / quote.open - 1.0) * 100.0;
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut value = json!({
        "symbol": symbol,
        "name": name,
        "kind": kind.as_str(),
        "price": quote.price,
        "open": quote.open,
        "change": change,
        "change_pct": (pct * 100.0).round() / 100.0,
        "time": time,
    });
    if recent {
        value["recent"] = json!(quote.recent);
    }
    value
}

/// Rounds a price to four significant decimals past its magnitude (0.1094, 146.2, 64210).
fn round(price: f64) -> f64 {
    let decimals = if price >= 1000.0 {
        2
    } else if price >= 1.0 {
        3
    } else {
        5
    };
    let scale = 10f64.powi(decimals);
    (price * scale).round() / scale
}

/// Publishes `rate` updates per second until the hub shuts down.
pub async fn run(publisher: Publisher, hub: Hub, market: Arc<Mutex<Market>>, rate: f64) {
    // Ticks every 50 ms carry the fractional updates forward, so low and high rates are both
    // honoured on average.
    let period = Duration::from_millis(50);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0;
    while !hub.is_closed() {
        interval.tick().await;
        owed += rate * period.as_secs_f64();
        while owed >= 1.0 {
            owed -= 1.0;
            // Without the backplane features `Local` is the only kind.
            #[allow(irrefutable_let_patterns)]
            if let Publisher::Local(hub) = &publisher {
                let mut market = market.lock().unwrap_or_else(|e| e.into_inner());
                let (topic, event) = market.tick();
                // The hub assigns the id (history is on), so one Last-Event-ID resumes all
                // symbols. Published under the lock, so a snapshot and its `last_id` agree.
                match hub.publish(&topic, event) {
                    Ok(published) => market.last_id = published.id().map(str::to_string),
                    Err(_) => return,
                }
                continue;
            }
            // Through a broker the id comes back asynchronously: the snapshot may run one
            // update ahead of its `last_id`, which a page then sees twice (a demo, not a feed).
            let (topic, event) = market.lock().unwrap_or_else(|e| e.into_inner()).tick();
            match publisher.publish(&topic, event).await {
                Ok((id, _)) => market.lock().unwrap_or_else(|e| e.into_inner()).last_id = id,
                // The broker is away: the feed skips this update and goes on.
                Err(Refused::Unavailable(_)) => {}
                Err(Refused::Invalid(_)) => return,
            }
        }
    }
}
