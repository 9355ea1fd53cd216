//! HTTPS for the server: `--tls-cert` and `--tls-key` (PEM files, reloaded on SIGHUP), or
//! `--tls-self-signed` (a certificate made at start, for trying it out).

use std::fmt::Write as _;
use std::path::PathBuf;

use ssehub::server::TlsConfig;

use crate::config::Config;

/// The server's TLS: the configuration the listener reads at each accept, and where it came
/// from (for reloads).
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    /// The listener's configuration (a handle: reloading it changes what new connections get).
    pub(crate) config: TlsConfig,
    /// Where the certificate came from.
    source: Source,
    /// What to say once the server listens (where a self-signed certificate was written).
    pub(crate) announcement: Option<String>,
    /// The self-signed certificate's file, removed when the server stops.
    written: Option<PathBuf>,
}

/// Where a certificate came from.
#[derive(Debug, Clone)]
enum Source {
    /// `--tls-cert` and `--tls-key`.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// `--tls-self-signed`.
    SelfSigned,
}

/// The TLS settings, checked and loaded; `Ok(None)` for plain HTTP. The error is a usage error
/// (exit status 2) that names the flag or file at fault.
pub(crate) fn load(config: &Config) -> Result<Option<Tls>, String> {
    match (&config.tls_cert, &config.tls_key, config.tls_self_signed) {
        (None, None, false) => Ok(None),
        (Some(_), _, true) | (_, Some(_), true) => {
            Err("--tls-self-signed and --tls-cert/--tls-key exclude each other".into())
        }
        (Some(_), None, false) => Err("--tls-cert needs --tls-key".into()),
        (None, Some(_), false) => Err("--tls-key needs --tls-cert".into()),
        (Some(cert), Some(key), false) => {
            let config = TlsConfig::from_pem_files(cert, key).map_err(|e| e.to_string())?;
            let source = Source::Files { cert: cert.clone(), key: key.clone() };
            Ok(Some(Tls { config, source, announcement: None, written: None }))
        }
        (None, None, true) => self_signed(config).map(Some),
    }
}

/// A certificate for localhost, 127.0.0.1, ::1 and the listening address, made now; its PEM is
/// written to a file (for `curl --cacert`) whose path and SHA-256 the announcement gives.
fn self_signed(config: &Config) -> Result<Tls, String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ip = config.addr.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let made = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| format!("--tls-self-signed: cannot make a certificate: {e}"))?;
    let cert_pem = made.cert.pem();
    let tls = TlsConfig::from_pem(cert_pem.as_bytes(), made.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("--tls-self-signed: {e}"))?;
    let path = self_signed_path(config);
    std::fs::write(&path, &cert_pem)
        .map_err(|e| format!("--tls-self-signed: cannot write {}: {e}", path.display()))?;
    let announcement = format!(
        "tls: self-signed certificate for {} written to {} (SHA-256 {})",
        names.join(", "),
        path.display(),
        fingerprint(made.cert.der())
    );
    Ok(Tls {
        config: tls,
        source: Source::SelfSigned,
        announcement: Some(announcement),
        written: Some(path),
    })
}

/// Where the self-signed certificate goes: the temporary directory, one file per port (port 0:
/// per process).
fn self_signed_path(config: &Config) -> PathBuf {
    let port = config.addr.port();
    let name = if port == 0 {
        format!("ssehub-self-signed-pid{}.pem", std::process::id())
    } else {
        format!("ssehub-self-signed-{port}.pem")
    };
    std::env::temp_dir().join(name)
}

/// A certificate's SHA-256, as browsers show it (`AB:CD:...`).
fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

impl Tls {
    /// Reloads the certificate and key from their files, on each SIGHUP from now on, and says
    /// what happened; a file that cannot be read or used keeps the previous certificate.
    pub(crate) fn reload_on_hangup(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = signal(SignalKind::hangup())?;
            let tls = self.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    println!("SIGHUP: {}", tls.reload());
                }
            });
        }
        Ok(())
    }

    /// Removes the self-signed certificate's file, if one was written (it names a key that
    /// dies with the process).
    pub(crate) fn remove_written(&self) {
        if let Some(path) = &self.written {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Reloads from the files; says what happened.
    fn reload(&self) -> String {
        match &self.source {
            Source::SelfSigned => "self-signed certificate kept (no files to reload)".into(),
            Source::Files { cert, key } => match self.config.reload_from_pem_files(cert, key) {
                Ok(()) => format!(
                    "tls: reloaded the certificate from {} and the key from {} (new connections)",
                    cert.display(),
                    key.display()
                ),
                Err(error) => {
                    format!("tls: reload failed, the previous certificate is kept: {error}")
                }
            },
        }
    }
}
