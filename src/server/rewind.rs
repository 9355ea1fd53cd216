//! A socket that first replays bytes already read from it, so a request the native listener
//! read but does not serve can be handed, whole, to another HTTP server; and that gives that
//! server no byte past the request, so the listener reads the connection's next request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `prefix`, then the socket (up to a limit, if any).
#[derive(Debug)]
pub(crate) struct Rewind<IO> {
    /// Bytes to replay first.
    prefix: Vec<u8>,
    /// How much of `prefix` was replayed.
    offset: usize,
    /// The socket.
    inner: IO,
    /// How many more bytes may be read from the socket; `None`: no limit.
    remaining: Option<u64>,
}

impl<IO> Rewind<IO> {
    /// Replays `prefix`, then reads at most `limit` bytes of `inner` (`None`: all of it). At
    /// the limit, a read waits forever (it is not an end of file, which hyper would take for a
    /// client that left): the connection's owner ends it.
    pub(crate) fn new(prefix: Vec<u8>, inner: IO, limit: Option<u64>) -> Rewind<IO> {
        Rewind { prefix, offset: 0, inner, remaining: limit }
    }

    /// The socket, and whether bytes up to the limit were left unread.
    pub(crate) fn into_parts(self) -> (IO, bool) {
        let unread = self.offset < self.prefix.len() || self.remaining.is_some_and(|n| n > 0);
        (self.inner, unread)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let Some(remaining) = self.remaining else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if remaining == 0 {
            return Poll::Pending;
        }
        let room = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.remaining());
        // Zeroing the window (rather than reading into uninitialised memory) keeps this free
        // of `unsafe`; bodies on this path are small requests, not streams.
        let mut window = ReadBuf::new(buf.initialize_unfilled_to(room));
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut window);
        let n = window.filled().len();
        if let Poll::Ready(Ok(())) = poll {
            buf.advance(n);
            self.remaining = Some(remaining - n as u64);
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
