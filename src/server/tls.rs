//! TLS on the native listener (feature `rustls`): the reloadable configuration, the handshake
//! within the head deadline, and the HTTP/1.1 stream written through rustls.
//!
//! ALPN picks the protocol: `h2` goes to hyper's HTTP/2 server (see `h2.rs`), `http/1.1` (or
//! no ALPN) to the listener's own request reading, the same code as plaintext, monomorphized
//! for the TLS stream so the plaintext path keeps its direct socket calls.

use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::adapters::endpoint::Events;
use crate::engine::stats::{Sample, StreamEnd};
use crate::error::{EndReason, TlsError};
use crate::sync::{arc_swap, Arc, ArcSwap, PlainArc};

/// A connection after its TLS handshake.
pub(crate) type Tls = TlsStream<TcpStream>;

/// The ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The listener's TLS configuration: a handle that replaces the certificate for new
/// connections while the server runs (connections already open keep the one they started
/// with).
///
/// Clones share the configuration: keep one to [`reload`](Self::reload) after giving another
/// to [`Server::with_tls`](super::Server::with_tls). Offers ALPN `h2` and `http/1.1` unless the
/// configuration given to [`new`](Self::new) names its own protocols.
///
/// # Examples
///
/// ```
/// use ssehub::server::{Server, TlsConfig};
///
/// # fn pem() -> (String, String) {
/// #     let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
/// #     (made.cert.pem(), made.signing_key.serialize_pem())
/// # }
/// let (cert_pem, key_pem) = pem(); // read from files, usually: `TlsConfig::from_pem_files`
/// let tls = TlsConfig::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// let server = Server::new(ssehub::Endpoint::new(ssehub::Hub::new())).with_tls(tls.clone());
/// // Later, with a renewed certificate: new connections get it.
/// tls.reload_from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// # drop(server);
/// # Ok::<(), ssehub::server::TlsError>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    /// The configuration new connections use, swapped whole on reload.
    current: Arc<ArcSwap<PlainArc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.current();
        let alpn: Vec<_> =
            config.alpn_protocols.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        f.debug_struct("TlsConfig").field("alpn", &alpn).finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Serves with `config` as it is, adding ALPN `h2` and `http/1.1` if it names no
    /// protocols (a configuration offering only `http/1.1` keeps every connection on the
    /// native HTTP/1.1 path).
    ///
    /// # Examples
    ///
    /// ```
    /// # let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    /// use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    /// let chain = vec![CertificateDer::from(made.cert.der().to_vec())];
    /// let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    /// let provider = rustls::crypto::aws_lc_rs::default_provider();
    /// let config = rustls::ServerConfig::builder_with_provider(provider.into())
    ///     .with_safe_default_protocol_versions()?
    ///     .with_no_client_auth()
    ///     .with_single_cert(chain, key)?;
    /// let tls = ssehub::server::TlsConfig::new(config);
    /// # drop(tls);
    /// # Ok::<(), rustls::Error>(())
    /// ```
    #[must_use]
    pub fn new(config: rustls::ServerConfig) -> Self {
        TlsConfig { current: Arc::new(arc_swap(PlainArc::new(with_alpn(config)))) }
    }

    /// A configuration from a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1), with rustls's safe defaults (TLS 1.2 and 1.3, the aws-lc-rs
    /// provider) and ALPN `h2`, `http/1.1`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Certificate`] or [`TlsError::PrivateKey`] when a PEM holds none or a
    /// malformed one, [`TlsError::Refused`] when the key does not match the certificate.
    ///
    /// # Examples
    ///
    /// ```
    /// let refused = ssehub::server::TlsConfig::from_pem(b"", b"");
    /// assert!(matches!(refused, Err(ssehub::server::TlsError::Certificate { .. })));
    /// ```
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Ok(TlsConfig::new(server_config(cert_chain, key, "PEM", "PEM")?))
    }

    /// [`from_pem`](Self::from_pem) with the PEM read from two files (they may be the same
    /// file).
    ///
    /// # Errors
    ///
    /// [`TlsError::Read`] naming a file that cannot be read, and `from_pem`'s errors naming
    /// the file at fault.
    ///
    /// # Examples
    ///
    /// ```
    /// let missing = ssehub::server::TlsConfig::from_pem_files("/nonexistent.pem", "/k.pem");
    /// assert!(missing.unwrap_err().to_string().contains("/nonexistent.pem"));
    /// ```
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Ok(TlsConfig::new(config_from_files(cert_chain.as_ref(), key.as_ref())?))
    }

    /// Replaces the configuration: connections accepted from now on use `config` (with ALPN
    /// added as in [`new`](Self::new)); open ones keep theirs.
    ///
    /// # Examples
    ///
    /// See [`TlsConfig`].
    pub fn reload(&self, config: rustls::ServerConfig) {
        self.current.store(Arc::new(PlainArc::new(with_alpn(config))));
    }

    /// Replaces the certificate and key from PEM (see [`from_pem`](Self::from_pem)); on an
    /// error the configuration in use is kept.
    ///
    /// # Errors
    ///
    /// As [`from_pem`](Self::from_pem).
    ///
    /// # Examples
    ///
    /// See [`TlsConfig`].
    pub fn reload_from_pem(&self, cert_chain: &[u8], key: &[u8]) -> Result<(), TlsError> {
        self.reload(server_config(cert_chain, key, "PEM", "PEM")?);
        Ok(())
    }

    /// Replaces the certificate and key from PEM files (see
    /// [`from_pem_files`](Self::from_pem_files)); on an error the configuration in use is kept.
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](Self::from_pem_files).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let (cert, key) = ("/etc/ssehub/cert.pem", "/etc/ssehub/key.pem");
    /// let tls = ssehub::server::TlsConfig::from_pem_files(cert, key)?;
    /// // On SIGHUP, after the files were renewed:
    /// if let Err(error) = tls.reload_from_pem_files(cert, key) {
    ///     eprintln!("kept the previous certificate: {error}");
    /// }
    /// # Ok::<(), ssehub::server::TlsError>(())
    /// ```
    pub fn reload_from_pem_files(
        &self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        self.reload(config_from_files(cert_chain.as_ref(), key.as_ref())?);
        Ok(())
    }

    /// The configuration for a connection accepted now.
    pub(crate) fn current(&self) -> PlainArc<rustls::ServerConfig> {
        PlainArc::clone(&self.current.load())
    }
}

/// `config` with the listener's ALPN protocols, unless it names its own.
fn with_alpn(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    if config.alpn_protocols.is_empty() {
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    }
    config
}

/// Reads the two files and builds the configuration, naming the file at fault.
fn config_from_files(cert_chain: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| TlsError::Read { path: path.to_owned(), reason: e.to_string() })
    };
    let (chain_pem, key_pem) = (read(cert_chain)?, read(key)?);
    server_config(
        &chain_pem,
        &key_pem,
        &cert_chain.display().to_string(),
        &key.display().to_string(),
    )
}

/// A rustls server configuration (aws-lc-rs, safe defaults) from PEM; `chain_origin` and
/// `key_origin` name where each came from in errors.
fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    chain_origin: &str,
    key_origin: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let bad_chain =
        |reason: String| TlsError::Certificate { origin: chain_origin.to_owned(), reason };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_chain("no CERTIFICATE block".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::PrivateKey {
        origin: key_origin.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = PlainArc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Refused(e.to_string()))
}

/// The TLS handshake on `socket`, within `deadline`; `None` (counted and logged like other
/// refused connections) when the peer sent something other than TLS, failed the handshake,
/// or did not finish it in time.
pub(crate) async fn handshake(
    socket: TcpStream,
    config: PlainArc<rustls::ServerConfig>,
    deadline: Duration,
) -> Option<Tls> {
    #[cfg(feature = "tracing")]
    let peer = socket.peer_addr().ok();
    let reason =
        match tokio::time::timeout(deadline, TlsAcceptor::from(config).accept(socket)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(_)) => "tls_handshake",
            Err(_) => "tls_handshake_timeout",
        };
    crate::adapters::log!(debug, ?peer, reason, "tls handshake failed: connection closed");
    super::refused(reason);
    None
}

/// Whether ALPN chose HTTP/2 for the connection.
pub(crate) fn is_h2(tls: &Tls) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice())
}

/// Streams `events` over a TLS connection (HTTP/1.1) until the stream ends or the peer goes
/// away, with the same ends, counts and deadlines as the plaintext stream.
///
/// rustls encrypts into its own buffer, so a batch is handed to it with one vectored write per
/// 64 frames and then flushed: the socket sees one write per TLS record batch rather than one
/// per frame. The task keeps the TLS state (rustls's buffers) for its life; this path is not
/// the plaintext one's 176-byte idle state and does not try to be.
pub(crate) async fn stream(
    mut tls: Tls,
    mut events: Events,
    write_timeout: Duration,
) -> io::Result<()> {
    let mut trailing = 0usize;
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            batch = poll_fn(|cx| events.poll_batch(cx)) => match batch {
                Some(Ok(batch)) => {
                    let sample = Sample::of(&batch);
                    match write(&mut tls, batch, &mut events, write_timeout).await {
                        Ok(true) => events.written(&sample),
                        Ok(false) => {
                            super::dropped(tls.get_ref().0, "slow");
                            events.end(StreamEnd::Hub(EndReason::Slow));
                            return Ok(());
                        }
                        Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                            super::dropped(tls.get_ref().0, "write-deadline");
                            events.end(StreamEnd::WriteDeadline);
                            return Err(error);
                        }
                        Err(error) => {
                            events.end(StreamEnd::ClientGone);
                            return Err(error);
                        }
                    }
                }
                Some(Err(_)) => {
                    super::dropped(tls.get_ref().0, "slow");
                    events.end(StreamEnd::Hub(EndReason::Slow));
                    return Ok(());
                }
                None => {
                    let reason = events.end_reason();
                    events.end(StreamEnd::Hub(reason));
                    // close_notify, then FIN: the clean end of a body delimited by the close.
                    return tls.shutdown().await;
                }
            },
            // An SSE client sends nothing after its request: readable means closed (0, also
            // after close_notify), failed, or misbehaving.
            read = tls.read(&mut probe) => match read {
                Ok(0) => {
                    events.end(StreamEnd::ClientGone);
                    return Ok(());
                }
                Ok(n) => {
                    trailing += n;
                    if trailing > super::MAX_TRAILING_INPUT {
                        events.end(StreamEnd::UnexpectedInput);
                        return Ok(());
                    }
                }
                Err(error) => {
                    events.end(StreamEnd::ClientGone);
                    return Err(error);
                }
            },
        }
    }
}

/// Writes `batch` and flushes it through rustls within `timeout`; `Ok(false)` when the hub
/// dropped the subscriber as slow while the write was blocked.
async fn write(
    tls: &mut Tls,
    mut batch: crate::Batch,
    events: &mut Events,
    timeout: Duration,
) -> io::Result<bool> {
    let written = async {
        // `write_all_buf` hands rustls up to 64 frames per call as `IoSlice`s.
        tls.write_all_buf(&mut batch).await?;
        tls.flush().await
    };
    tokio::select! {
        done = tokio::time::timeout(timeout, written) => {
            done.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            Ok(true)
        }
        () = poll_fn(|cx| events.poll_dropped_as_slow(cx)) => Ok(false),
    }
}
