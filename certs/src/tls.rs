use std::{
    fmt, fs, io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{CertError, Identity};

/// The one crypto provider in the process. Passing it explicitly everywhere
/// means no process-wide default is needed, so a second provider in the
/// dependency graph cannot make rustls panic at start.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, io::Error> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// One process's TLS material: the CA it trusts and its own identity.
pub struct Credentials {
    identity: Identity,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            identity: self.identity.clone(),
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read { path: path.into(), source })
}

impl Credentials {
    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, CertError> {
        let ca = dir.join("ca.pem");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let creds =
            Self::from_pem(&read_bytes(&ca)?, &read_bytes(&cert)?, &read_bytes(&key)?).map_err(|e| match e {
                CertError::NoPem { what, .. } if what == "CA certificate" => {
                    CertError::NoPem { path: ca.clone(), what }
                }
                CertError::NoPem { what, .. } if what == "certificate" => CertError::NoPem { path: cert.clone(), what },
                CertError::NoPem { what, .. } => CertError::NoPem { path: key.clone(), what },
                other => other,
            })?;
        Ok(creds)
    }

    /// Builds credentials from PEM text: the CA certificate(s), this process's
    /// certificate chain (leaf first) and its private key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let no_pem = |what| CertError::NoPem { path: "<memory>".into(), what };
        let cas = certs_from_pem(ca_pem).map_err(|_| no_pem("CA certificate"))?;
        if cas.is_empty() {
            return Err(no_pem("CA certificate"));
        }
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca)?;
        }
        let chain = certs_from_pem(cert_pem).map_err(|_| no_pem("certificate"))?;
        let leaf = chain.first().ok_or_else(|| no_pem("certificate"))?;
        let identity = Identity::from_cert_der(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| no_pem("private key"))?;
        Ok(Credentials { identity, roots: Arc::new(roots), chain, key })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A server config that demands a client certificate from the corridor CA
    /// whose leaf names exactly one corridor identity, and speaks HTTP/2.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, CertError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(IdentityClientVerifier { inner }))
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client config that presents this identity. With `expect`, the server
    /// must also prove that it is that identity: the gateway talking to
    /// `hefei`'s address will only accept `node-hefei`.
    pub fn client_config(&self, expect: Option<Identity>) -> Result<Arc<ClientConfig>, CertError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IdentityServerVerifier { inner, expect }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn identity_error(e: CertError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// WebPKI chain and validity checks, then the corridor's own leaf rules.
#[derive(Debug)]
struct IdentityClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for IdentityClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        Identity::from_cert_der(end_entity).map_err(identity_error)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct IdentityServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Option<Identity>,
}

impl ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let found = Identity::from_cert_der(end_entity).map_err(identity_error)?;
        if let Some(expect) = &self.expect
            && *expect != found
        {
            return Err(rustls::Error::General(format!("server is {found}, expected {expect}")));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Limits on the TLS accept path.
#[derive(Debug, Clone, Copy)]
pub struct TlsAcceptOptions {
    /// A peer that has not finished its handshake by then is dropped, so a
    /// slow or silent client cannot hold a slot.
    pub handshake_timeout: Duration,
    /// Handshakes in flight at once; further connections wait in the
    /// listener's backlog.
    pub max_handshakes: usize,
}

impl Default for TlsAcceptOptions {
    fn default() -> Self {
        TlsAcceptOptions { handshake_timeout: Duration::from_secs(10), max_handshakes: 256 }
    }
}

/// Accepted and fully verified TLS connections, ready for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Handshakes run off the accept loop, each in its own task under a timeout,
/// so one slow peer never delays another. A connection that fails its
/// handshake (no certificate, wrong CA, expired, plaintext) is dropped before
/// any request is read, so no handler ever runs for it. The accept loop ends
/// when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    opts: TlsAcceptOptions,
) -> ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(opts.max_handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await;
                drop(permit);
                match result {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The verified identity of the peer that sent `request`.
pub fn caller_identity<T>(request: &tonic::Request<T>) -> Result<Identity, CertError> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| CertError::BadCertificate("the connection presented no certificate".into()))?;
    let leaf =
        certs.first().ok_or_else(|| CertError::BadCertificate("the connection presented no certificate".into()))?;
    Identity::from_cert_der(leaf)
}

/// Dials TCP, then TLS with corridor credentials. Used as a tonic connector,
/// so that certificate checks (including the server's expected identity) live
/// here and not in tonic's own TLS setup.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector { config }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        Box::pin(async move {
            let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily connecting gRPC channel to `https://host:port`, over corridor mTLS.
/// With `expect`, the server must be that identity.
pub fn client_channel(
    url: &str,
    creds: &Credentials,
    expect: Option<Identity>,
    connect_timeout: Duration,
) -> Result<Channel, CertError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| CertError::BadIdentity(format!("{url:?}: corridor endpoints are https://host:port")))?;
    // Our connector does the TLS; tonic must see a plain URI or it would try
    // TLS of its own.
    let endpoint = Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| CertError::BadIdentity(format!("{url:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Notice a dead peer even on an idle connection.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::new(creds.client_config(expect)?);
    Ok(endpoint.connect_with_connector_lazy(connector))
}
