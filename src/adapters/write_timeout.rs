//! A connection whose writes fail once they have made no progress for a while, so a client that
//! stops reading is cut off.
//!
//! Why the body alone cannot do it: once a client stops reading, the socket fills, hyper's write
//! buffer fills, and hyper stops polling the response body, so the body never learns that the
//! hub dropped its subscription as slow. The one thing still polled is the socket, so the timeout
//! lives here (nginx's `write_timeout`, with the same meaning: the time between two successful
//! writes, not the length of the response).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An I/O stream whose writes fail with [`io::ErrorKind::TimedOut`] after `timeout` without
/// progress (never, with no timeout). Reads pass through.
#[derive(Debug)]
pub(crate) struct WriteTimeout<IO> {
    /// The connection.
    io: IO,
    /// How long a write may make no progress.
    timeout: Option<Duration>,
    /// The timer, allocated on the first write that has to wait and reused after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs: a write is waiting and none has progressed since it started.
    armed: bool,
}

impl<IO> WriteTimeout<IO> {
    /// Wraps `io`.
    pub(crate) fn new(io: IO, timeout: Option<Duration>) -> Self {
        WriteTimeout { io, timeout, timer: None, armed: false }
    }

    /// Called when a write is pending: starts the timer, or fails once it has run out.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let deadline = Instant::now() + timeout;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading: no write progress within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The outcome of a write attempt, through the timer.
    fn outcome<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteTimeout<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.outcome(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.outcome(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.outcome(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.outcome(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_stalled_write_times_out() {
        let (client, server) = tokio::io::duplex(8);
        let mut guarded = WriteTimeout::new(server, Some(Duration::from_millis(50)));
        guarded.write_all(b"12345678").await.expect("fits the pipe");
        let stalled = guarded.write_all(b"more").await;
        assert_eq!(stalled.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        drop(client);
    }

    #[tokio::test]
    async fn a_reader_keeps_writes_going() {
        let (mut client, server) = tokio::io::duplex(8);
        let mut guarded = WriteTimeout::new(server, Some(Duration::from_millis(200)));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0; 4];
            // Slow but steady: each read comes well within the timeout.
            while let Ok(n @ 1..) = client.read(&mut buf).await {
                all.extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            all
        });
        guarded.write_all(&[7; 64]).await.expect("progress each time");
        drop(guarded);
        assert_eq!(reader.await.expect("the reader").len(), 64);
    }
}
