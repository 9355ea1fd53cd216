//! The one accept loop step every front uses (the axum listener, `hyper::serve`, the native
//! listener), so they treat a failing `accept` the same way.
//!
//! Two kinds of failure come out of `accept(2)`. A connection that was reset or aborted
//! before it was accepted concerns that client alone: the next `accept` is tried at once.
//! Anything else (out of file descriptors, `EMFILE`/`ENFILE`, or out of memory) persists until
//! connections close, and retrying at once would spin a core at 100% while it lasts, so the
//! loop backs off: 5 ms after the first such error, doubling to at most one second, and back
//! to nothing after the next successful accept. That is axum's `serve` policy for connection
//! errors and hyper 0.14's for the rest, with a short first pause instead of a flat second, so
//! a brief fd shortage costs milliseconds, not a second of refused clients.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The first pause after an error that persists.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The pause before the next `accept` after errors that persist, reset by a success.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// The pause the next persistent error waits (zero: none yet).
    next: Duration,
}

impl Backoff {
    /// The pause after `error` (zero for a per-connection error), and the one after that.
    fn after(&mut self, error: &io::Error) -> Duration {
        if is_connection_error(error) {
            return Duration::ZERO;
        }
        let pause = self.next.max(FIRST_PAUSE);
        self.next = (pause * 2).min(MAX_PAUSE);
        pause
    }

    /// A connection was accepted: the next error starts from the first pause again.
    fn reset(&mut self) {
        self.next = Duration::ZERO;
    }
}

/// Whether `error` concerns one connection only (it was reset or aborted before `accept`).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accepts the next connection, with `TCP_NODELAY` set (an SSE frame is small and latency
/// matters more than packet count; a burst is one write anyway). Errors are logged and retried
/// as the module docs say, so this returns only with a connection.
///
/// Cancel safe: dropping it between connections loses none (tokio's `accept` is cancel safe,
/// and a pause holds nothing).
pub(crate) async fn accept(
    listener: &TcpListener,
    backoff: &mut Backoff,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                backoff.reset();
                // Only fails on a socket already closed, which the first write reports anyway.
                let _ = socket.set_nodelay(true);
                return (socket, peer);
            }
            Err(error) => {
                let pause = backoff.after(&error);
                super::log!(warn, %error, pause_ms = pause.as_millis() as u64, "accept failed");
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "test")
    }

    #[test]
    fn persistent_errors_back_off_doubling_to_a_second_and_a_success_resets() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<u64> = (0..10).map(|_| backoff.after(&emfile).as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.after(&emfile), FIRST_PAUSE);
    }

    #[test]
    fn a_connection_reset_before_accept_is_retried_at_once_and_keeps_the_backoff() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(backoff.after(&emfile), FIRST_PAUSE);
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert_eq!(backoff.after(&error(kind)), Duration::ZERO);
        }
        assert_eq!(backoff.after(&emfile), FIRST_PAUSE * 2);
    }
}
