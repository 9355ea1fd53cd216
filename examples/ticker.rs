//! A hub with a simulated market feed, and three kinds of subscribers printing what they get.
//!
//! `cargo run --release --example ticker -- [SECONDS]` (default 3).
//!
//! - `all-prices` follows every symbol with the pattern `price:*`;
//! - `btc-only` follows one topic;
//! - `slow-board` reads once a second and conflates by topic, so it always shows the latest
//!   price of each symbol instead of falling behind or being dropped.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ssehub::{ConflateKey, Event, Hub, SlowPolicy, Subscribe};

const SYMBOLS: [&str; 6] = ["BTC", "ETH", "SOL", "ADA", "DOT", "XRP"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_secs(1))).build();

    let mut all = hub.subscribe(Subscribe::new().with_pattern("price:*"))?;
    let mut btc = hub.subscribe("price:BTC")?;
    let mut board = hub.subscribe(
        Subscribe::new()
            .with_pattern("price:*")
            .with_slow_policy(SlowPolicy::Conflate { key: ConflateKey::Topic })
            .with_capacity(SYMBOLS.len()),
    )?;

    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut prices = [64_000.0, 3_100.0, 145.0, 0.45, 7.2, 0.52];
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut id = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                // xorshift: a random walk without a dependency.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % SYMBOLS.len() as u64) as usize;
                let step = ((seed >> 8) % 2001) as f64 / 1000.0 - 1.0;
                prices[i] *= 1.0 + step / 500.0;
                id += 1;
                let event = Event::new(format!(
                    "{{\"symbol\":\"{}\",\"price\":{:.4}}}",
                    SYMBOLS[i], prices[i]
                ))
                .with_event("price")
                .with_id(id.to_string());
                if hub.publish(&format!("price:{}", SYMBOLS[i]), event).is_err() {
                    break;
                }
            }
            hub.shutdown();
        })
    };

    let all_reader = tokio::spawn(async move {
        let mut frames = 0;
        while let Some(batch) = all.next().await {
            frames += batch.len();
        }
        frames
    });
    let btc_reader = tokio::spawn(async move {
        while let Some(batch) = btc.next().await {
            for frame in batch {
                let text = String::from_utf8_lossy(&frame).trim_end().replace('\n', " | ");
                println!("[btc-only]   {text}");
            }
        }
    });
    let board_reader = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match board.try_recv() {
                Ok(Some(batch)) => {
                    println!("[slow-board] {} latest prices after a second asleep:", batch.len());
                    for frame in batch {
                        let text = String::from_utf8_lossy(&frame).into_owned();
                        if let Some(line) = text.lines().find(|l| l.starts_with("data: ")) {
                            println!("             {}", &line[6..]);
                        }
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    println!("[slow-board] stream ended: {reason}");
                    break;
                }
            }
        }
    });

    publisher.await?;
    let frames = all_reader.await?;
    btc_reader.await?;
    board_reader.await?;
    println!("[all-prices] received {frames} frames");
    println!("{:#?}", hub.stats());
    Ok(())
}
