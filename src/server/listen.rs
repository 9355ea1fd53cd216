//! The listening socket, bound with an accept queue sized for reconnect storms.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept-queue length the `ssehub` server binds with unless told otherwise.
///
/// A restart sends every client back within a few seconds; with tokio's `bind` queue (capped
/// by the kernel at 128 on older Linux) a 2,000-client storm overflowed it and clients waited
/// out a one-second SYN retransmit. Linux caps any request at `net.core.somaxconn` (4,096 by
/// default since 5.4), so this asks for as much as a default kernel grants.
///
/// # Examples
///
/// ```
/// assert_eq!(ssehub::server::DEFAULT_BACKLOG, 4096);
/// ```
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (IPv4 or IPv6) whose accept queue holds up to `backlog`
/// connections the server has not accepted yet, for [`Server::serve`](super::Server::serve).
///
/// The socket is set up as tokio's `TcpListener::bind` sets it up (`SO_REUSEADDR` except on
/// Windows, where it would let another process take the port), only the backlog differs: the
/// kernel completes handshakes into this queue while the accept loop is busy, and a full queue
/// drops SYNs, which clients retry only after a second. The kernel may grant less than asked:
/// Linux caps it at `net.core.somaxconn`. A `backlog` above `i32::MAX` asks for `i32::MAX`.
///
/// # Errors
///
/// Whatever creating, binding or listening on the socket returns: the address is in use
/// (`AddrInUse`), not this machine's (`AddrNotAvailable`), or needs privileges.
///
/// # Panics
///
/// Outside a tokio runtime with IO enabled, like every tokio socket.
///
/// # Examples
///
/// ```
/// use ssehub::server::{listen, Server, DEFAULT_BACKLOG};
/// use ssehub::{Endpoint, Hub};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = listen("127.0.0.1:0".parse().unwrap(), DEFAULT_BACKLOG)?;
/// let addr = listener.local_addr()?;
/// assert!(addr.port() > 0);
/// tokio::spawn(Server::new(Endpoint::new(Hub::new())).with_path("/events").serve(listener));
/// # Ok(())
/// # }
/// ```
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
