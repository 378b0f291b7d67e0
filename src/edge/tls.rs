//! Client-side TLS: the server certificate a listener presents (rustls, TLS 1.2 and 1.3
//! only), re-read on SIGHUP, and [`ClientStream`], the client socket that is plain or TLS
//! and can be upgraded in place by STLS (RFC 2595 §4).
//!
//! Reload keeps sessions: each handshake takes the configuration current at that moment
//! ([`ServerTls::acceptor`]), so running sessions keep theirs and new ones get the new
//! certificate. A certificate or key that is missing or broken at start is an error (exit 2);
//! at reload it is logged and the old pair stays in use.
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} with key {key}: {reason}")]
    Pair { cert: PathBuf, key: PathBuf, reason: String },
}

/// Reads a PEM certificate chain and private key into a server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, CertError> {
    let cert_err = |reason: String| CertError::Cert { path: cert.to_path_buf(), reason };
    let key_err = |reason: String| CertError::Key { path: key.to_path_buf(), reason };
    let pem = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate ({e})")))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate found".into()));
    }
    let pem = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let private =
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_err(format!("no PEM private key found ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        // TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1).
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError::Pair { cert: cert.to_path_buf(), key: key.to_path_buf(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| CertError::Pair { cert: cert.to_path_buf(), key: key.to_path_buf(), reason: e.to_string() })?;
    Ok(Arc::new(config))
}

/// A listener's server certificate, swappable at reload.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Loads the pair; fails when either file is missing or broken.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<ServerTls>, CertError> {
        let config = load(cert, key)?;
        Ok(Arc::new(ServerTls { cert: cert.to_path_buf(), key: key.to_path_buf(), current: ArcSwap::new(config) }))
    }

    /// Re-reads the pair; on error the current one stays and the error is returned.
    pub fn reload(&self) -> Result<(), CertError> {
        let config = load(&self.cert, &self.key)?;
        self.current.store(config);
        Ok(())
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads on every SIGHUP until the process ends (errors logged, old pair kept).
    pub fn spawn_reloader(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGHUP: {e}; the TLS certificate is not reloaded");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                let (cert, key) = (me.cert.display().to_string(), me.key.display().to_string());
                let me2 = Arc::clone(&me);
                match tokio::task::spawn_blocking(move || me2.reload()).await {
                    Ok(Ok(())) => tracing::info!(%cert, %key, "SIGHUP: TLS certificate reloaded"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the previous one")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS certificate reload failed; keeping the previous one")
                    }
                }
            }
        });
    }
}

/// Why a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client TLS handshake not completed within {0:?} (client_tls_handshake)")]
    Timeout(Duration),
    #[error("client TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// Runs the server side of a TLS handshake within `deadline`.
pub async fn accept(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    deadline: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    // From the first handshake byte on, a panic reply must not go out in the clear.
    crate::net::listener::client_tls_begins();
    match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Err(_) => Err(HandshakeError::Timeout(deadline)),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// The client socket: plain TCP or TLS over it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while an STLS handshake runs (or after it failed): every I/O fails.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client stream detached by a failed STLS")
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// STLS (RFC 2595 §4): runs the handshake on the plain socket, after the `+OK` has been
    /// written. On failure the stream is left detached (the session must end).
    pub async fn start_tls(&mut self, acceptor: TlsAcceptor, deadline: Duration) -> Result<(), HandshakeError> {
        let ClientStream::Plain(tcp) = std::mem::replace(self, ClientStream::Detached) else {
            return Err(HandshakeError::Failed(io::Error::new(io::ErrorKind::InvalidInput, "TLS already active")));
        };
        let tls = accept(acceptor, tcp, deadline).await?;
        *self = ClientStream::Tls(Box::new(tls));
        Ok(())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
    /// Passed through (issue 16): the body relay writes pending replies and a body part
    /// straight from the upstream's read buffer in one `writev` (`Conn::write_outbox`).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Detached => false,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_broken_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("cert.pem") && e.contains("No such file"), "{e}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let e = load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("key.pem"), "{e}");
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let tls = ServerTls::open(&cert, &key).unwrap();
        // A broken file at reload keeps the previous configuration.
        let before = tls.current.load_full();
        std::fs::write(&cert, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.current.load_full()));
    }
}
