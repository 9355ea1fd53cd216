//! Certificates made at test time and rustls configurations over them, shared by the TLS
//! tests (`client_tls.rs`, `server_tls.rs`, `hub_tls.rs`).
#![allow(dead_code)] // Each test file uses its own part.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `127.0.0.1` and `localhost`, and its key.
pub struct Certificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The certificate, DER (to compare with what a server presented).
    pub der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl Certificate {
    /// A fresh one (each call makes a different key and certificate).
    pub fn new() -> Certificate {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
        Certificate {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            der: certified.cert.der().to_vec(),
            key_der: certified.signing_key.serialize_der(),
        }
    }

    /// A rustls server configuration (aws-lc-rs) presenting it, offering `alpn` in order.
    pub fn server_config(&self, alpn: &[&str]) -> rustls::ServerConfig {
        let chain = vec![CertificateDer::from(self.der.clone())];
        let key_der = PrivatePkcs8KeyDer::from(self.key_der.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key_der))
        .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }

    /// A rustls client configuration trusting only this certificate, offering `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.der.clone())).expect("trust the certificate");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }

    /// Writes the certificate and key into `dir` as `NAME.crt` and `NAME.key`; returns both
    /// paths.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> (String, String) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert.display().to_string(), key.display().to_string())
    }
}

/// A TLS connection to `addr` (as `127.0.0.1`) trusting `trusted` only, offering `alpn`.
pub async fn connect(
    addr: std::net::SocketAddr,
    trusted: &Certificate,
    alpn: &[&str],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(trusted.client_config(alpn)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    connector.connect(name, tcp).await
}

/// The protocol ALPN chose on `tls` (`None`: none).
pub fn alpn(tls: &TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The DER of the certificate the server presented on `tls`.
pub fn presented(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let chain = tls.get_ref().1.peer_certificates().expect("a certificate");
    chain[0].as_ref().to_vec()
}

/// A scratch directory under the system's temporary one, removed on drop.
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    /// A new, empty directory named after `name` and this process.
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("ssehub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
