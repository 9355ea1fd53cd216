//! Admission at accept, before a connection costs a task or a request read: an accept rate limit
//! (a token bucket) and a cap on connections per client IP address. A refused connection gets a
//! short answer with `Retry-After` and is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::sync::{lock, rank, Arc, Mutex};

/// Longest a refused connection is kept to let its request arrive, so closing it does not reset
/// the connection (a close with unread input sends RST, which can destroy the answer before the
/// client reads it).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes read from a refused connection before it is closed anyway.
const REFUSAL_DRAIN: usize = 16 * 1024;

/// The accept rate limit: a token bucket refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Tokens added per second.
    pub(crate) per_second: f64,
    /// Most tokens held, so the most connections accepted at once after a quiet spell.
    pub(crate) burst: f64,
}

/// The bucket, owned by the accept loop alone (so it needs no lock).
#[derive(Debug)]
pub(crate) struct Bucket {
    /// Its rate.
    rate: Rate,
    /// Tokens available.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate) -> Self {
        Bucket { rate, tokens: rate.burst, at: Instant::now() }
    }

    /// Takes a token if one is available at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connections open per client address, shared by every connection's task.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    /// Only addresses with at least one connection are present, so the map shrinks back when
    /// clients leave.
    open: Mutex<HashMap<IpAddr, usize>, rank::PerIp>,
}

impl PerIp {
    /// A slot for `ip` if it has fewer than `max` connections open.
    pub(crate) fn take(this: &Arc<PerIp>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = lock(&this.open);
        let count = open.get(&ip).copied().unwrap_or(0);
        if count >= max {
            return None;
        }
        open.insert(ip, count + 1);
        Some(IpSlot { table: this.clone(), ip })
    }

    /// How many addresses have connections open (for tests and the `Debug` output).
    pub(crate) fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

/// One connection's place in its address's count, released on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    /// The table it counts in.
    table: Arc<PerIp>,
    /// Its address.
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answers a refused connection with `status`, `Retry-After: retry_after` and `reason`, then
/// reads (and drops) what the client sent for a short while before closing.
pub(crate) async fn refuse(
    mut socket: TcpStream,
    status: StatusCode,
    reason: &'static str,
    retry_after: u64,
) {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    headers
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    let linger = async {
        if super::write_plain(&mut socket, status, &headers, reason.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = Bucket::new(Rate { per_second: 10.0, burst: 3.0 });
        let t0 = bucket.at;
        assert!((0..3).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.take(t0 + Duration::from_millis(100)));
        assert!(!bucket.take(t0 + Duration::from_millis(150)));
        // A long quiet spell refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3);
    }

    #[test]
    fn per_ip_slots_count_and_free() {
        let table = Arc::new(PerIp::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = PerIp::take(&table, ip, 2).expect("first");
        let b = PerIp::take(&table, ip, 2).expect("second");
        assert!(PerIp::take(&table, ip, 2).is_none());
        assert!(PerIp::take(&table, [127, 0, 0, 2].into(), 2).is_some());
        drop(a);
        let c = PerIp::take(&table, ip, 2).expect("a freed slot");
        drop((b, c));
        assert_eq!(table.addresses(), 0);
    }
}
