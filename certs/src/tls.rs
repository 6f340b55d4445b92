use std::{
    collections::HashMap,
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
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    coalesce::Coalesce,
    error::CertError,
    files::{certs_from_pem, crl_path},
    identity::Identity,
};

/// The one crypto provider in the process. Passing it explicitly everywhere
/// means no process-wide default is needed, so a second provider in the
/// dependency graph cannot make rustls panic at start.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One process's TLS material: the CA it trusts and its own identity.
pub struct Credentials {
    identity: Identity,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Revocation lists from the CA; refused peers are checked against them.
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// When this process's own certificate expires (unix seconds).
    not_after: i64,
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
            crls: self.crls.clone(),
            not_after: self.not_after,
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|cause| CertError::Read { path: path.into(), cause })
}

/// Where an identity's files are in a certs directory: `NAME.pem`,
/// `NAME.key` and `ca.pem` as `corridor certs` writes them, or, when there is
/// no `NAME.pem`, `tls.crt`, `tls.key` and `ca.crt` as cert-manager writes a
/// Secret (mounted as a directory in Kubernetes).
fn identity_files(dir: &Path, name: &str) -> [std::path::PathBuf; 3] {
    let own = dir.join(format!("{name}.pem"));
    if !own.exists() && dir.join("tls.crt").exists() {
        return [dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt")];
    }
    [own, dir.join(format!("{name}.key")), dir.join("ca.pem")]
}

impl Credentials {
    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key` (or cert-manager's
    /// `tls.crt`, `tls.key` and `ca.crt`, whose certificate must then be NAME's).
    pub fn load(dir: &Path, name: &str) -> Result<Self, CertError> {
        let [cert, key, ca] = identity_files(dir, name);
        let mut creds =
            Self::from_pem(&read_bytes(&ca)?, &read_bytes(&cert)?, &read_bytes(&key)?).map_err(|e| match e {
                CertError::NoPem { what, .. } if what == "CA certificate" => {
                    CertError::NoPem { path: ca.clone(), what }
                }
                CertError::NoPem { what, .. } if what == "certificate" => CertError::NoPem { path: cert.clone(), what },
                CertError::NoPem { what, .. } => CertError::NoPem { path: key.clone(), what },
                other => other,
            })?;
        // A Secret's key names say nothing of whose it is: a mix-up of
        // Secrets must not make a node serve as another identity.
        if creds.identity.name() != name && !dir.join(format!("{name}.pem")).exists() {
            return Err(CertError::BadIdentity(format!(
                "{} is {}'s certificate, not {name}'s",
                cert.display(),
                creds.identity.name()
            )));
        }
        let crl = crl_path(dir);
        if crl.exists() {
            creds.crls = CertificateRevocationListDer::pem_slice_iter(&read_bytes(&crl)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| CertError::NoPem { path: crl, what: "certificate revocation list" })?;
        }
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
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| no_pem("private key"))?;
        Ok(Credentials { identity, roots: Arc::new(roots), chain, key, crls: Vec::new(), not_after })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When this process's certificate expires, in unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A server config that demands a client certificate from the corridor CA
    /// whose leaf names exactly one corridor identity, and speaks HTTP/2.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, CertError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client config that presents this identity. With `expect`, the server
    /// must also prove that it is that identity: the gateway talking to
    /// `hefei`'s address will only accept `node-hefei`.
    pub fn client_config(&self, expect: Option<Identity>) -> Result<Arc<ClientConfig>, CertError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier(expect)?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// How a server judges its clients: the CA's chain, validity and CRL,
    /// then one corridor identity in a leaf that is not a CA.
    fn client_verifier(&self) -> Result<Arc<IdentityClientVerifier>, CertError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            // Our CA issues leaves directly; its CRL covers them.
            builder = builder.with_crls(self.crls.clone()).only_check_end_entity_revocation();
        }
        Ok(Arc::new(IdentityClientVerifier { inner: builder.build()? }))
    }

    /// How a client judges its server: the CA's chain, validity, name and
    /// CRL, then, with `expect`, that it is that identity.
    fn server_verifier(&self, expect: Option<Identity>) -> Result<Arc<IdentityServerVerifier>, CertError> {
        let mut builder = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            builder = builder.with_crls(self.crls.clone()).only_check_end_entity_revocation();
        }
        let inner = builder.build().map_err(|e| CertError::BadCertificate(e.to_string()))?;
        Ok(Arc::new(IdentityServerVerifier { inner, expect }))
    }
}

fn identity_error(e: CertError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// A client leaf that is not a corridor identity is refused as a bad
/// certificate (alert certificate_unknown), so that its holder is told so.
fn client_identity_error(e: CertError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
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
        Identity::from_cert_der(end_entity).map_err(client_identity_error)?;
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

/// The verified identity of the peer that sent `request`.
pub fn caller_identity<T>(request: &tonic::Request<T>) -> Result<Identity, CertError> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| CertError::BadCertificate("the connection presented no certificate".into()))?;
    let leaf =
        certs.first().ok_or_else(|| CertError::BadCertificate("the connection presented no certificate".into()))?;
    // Every call asks, and a handful of certificates ask thousands of times
    // a second: the identity is a pure function of the (already verified)
    // certificate's bytes, so each is parsed once.
    static SEEN: std::sync::Mutex<Option<HashMap<Vec<u8>, Identity>>> = std::sync::Mutex::new(None);
    const SEEN_MAX: usize = 4_096;
    if let Some(id) = SEEN.lock().expect("poisoned").as_ref().and_then(|m| m.get(leaf.as_ref())) {
        return Ok(id.clone());
    }
    let id = Identity::from_cert_der(leaf)?;
    let mut seen = SEEN.lock().expect("poisoned");
    let seen = seen.get_or_insert_with(HashMap::new);
    if seen.len() >= SEEN_MAX {
        seen.clear();
    }
    seen.insert(leaf.to_vec(), id.clone());
    Ok(id)
}

/// Dials TCP, then TLS with corridor credentials. Used as a tonic connector,
/// so that certificate checks (including the server's expected identity) live
/// here and not in tonic's own TLS setup.
#[derive(Clone)]
pub struct TlsConnector {
    source: Arc<CredentialSource>,
    expect: Option<Identity>,
}

impl TlsConnector {
    pub fn new(source: Arc<CredentialSource>, expect: Option<Identity>) -> Self {
        TlsConnector { source, expect }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<Coalesce<tokio_rustls::client::TlsStream<TcpStream>>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Each new connection presents the credentials current now.
        let config = self.source.credentials().client_config(self.expect.clone());
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(config.map_err(io::Error::other)?);
            let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let mut tls = connector.connect(name, tcp).await?;
            // Under TLS 1.3 the client's side of the handshake ends before the
            // server has checked the client's certificate; a refusal (revoked,
            // expired) would arrive later as an alert in the middle of the
            // first call, and reach the caller as a bare "transport error".
            // The server speaks first on a connection it accepts (session
            // tickets, then HTTP/2 SETTINGS), so its first bytes are its
            // verdict: read them now, and hand them on to hyper.
            let mut first = vec![0u8; 4096];
            let n = tls.read(&mut first).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the server closed the connection right after the tls handshake",
                ));
            }
            first.truncate(n);
            Ok(TokioIo::new(Coalesce::with_unread(tls, first)))
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
    reloading_channel(url, CredentialSource::fixed(creds.clone())?, expect, connect_timeout)
}

/// Like [`client_channel`], but every new connection uses the credentials
/// `source` holds at that moment.
pub fn reloading_channel(
    url: &str,
    source: Arc<CredentialSource>,
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
    // Fail now, not at the first call, if the credentials cannot make a config.
    source.credentials().client_config(expect.clone())?;
    Ok(endpoint.connect_with_connector_lazy(TlsConnector::new(source, expect)))
}

/// File state that decides whether to reload: modification time and length
/// of each file.
type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

/// A process's credentials, reloaded from disk when its certificate, key, CA
/// or CRL change, without a restart and without touching connections already
/// open.
pub struct CredentialSource {
    files: Option<(std::path::PathBuf, String)>,
    state: std::sync::RwLock<Loaded>,
    generation: std::sync::atomic::AtomicU64,
}

struct Loaded {
    creds: Arc<Credentials>,
    server: Arc<ServerConfig>,
    stamp: Stamp,
}

/// Certificates closer than this to expiry are warned about at every load.
const EXPIRY_WARNING: i64 = 30 * 86_400;

impl CredentialSource {
    /// Loads `DIR/NAME.{pem,key}`, `DIR/ca.pem` and, if present, `DIR/ca.crl`.
    pub fn load(dir: &Path, name: &str) -> Result<Arc<Self>, CertError> {
        let (loaded, _) = Self::read(dir, name)?;
        Ok(Arc::new(CredentialSource {
            files: Some((dir.into(), name.into())),
            state: std::sync::RwLock::new(loaded),
            generation: Default::default(),
        }))
    }

    /// Credentials that never change (one-shot clients).
    pub fn fixed(creds: Credentials) -> Result<Arc<Self>, CertError> {
        let server = creds.server_config()?;
        Ok(Arc::new(CredentialSource {
            files: None,
            state: std::sync::RwLock::new(Loaded { creds: Arc::new(creds), server, stamp: Vec::new() }),
            generation: Default::default(),
        }))
    }

    fn paths(dir: &Path, name: &str) -> [std::path::PathBuf; 7] {
        [
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join("ca.pem"),
            crl_path(dir),
            // cert-manager's names (see `identity_files`).
            dir.join("tls.crt"),
            dir.join("tls.key"),
            dir.join("ca.crt"),
        ]
    }

    fn stamp(dir: &Path, name: &str) -> Stamp {
        Self::paths(dir, name)
            .iter()
            .map(|p| fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }

    fn read(dir: &Path, name: &str) -> Result<(Loaded, i64), CertError> {
        let stamp = Self::stamp(dir, name);
        let creds = Credentials::load(dir, name)?;
        let server = creds.server_config()?;
        let left = creds.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
        if left < EXPIRY_WARNING {
            tracing::warn!(identity = %creds.identity, days_left = left / 86_400, "certificate expires soon; renew it");
        }
        Ok((Loaded { creds: Arc::new(creds), server, stamp }, left))
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.state.read().expect("poisoned").creds.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.state.read().expect("poisoned").server.clone()
    }

    /// How many times the credentials were replaced since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reloads if any file changed. A file set that does not load (a key that
    /// does not match, a half-written file) leaves the current credentials in
    /// place and is reported.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let Some((dir, name)) = &self.files else { return Ok(false) };
        if Self::stamp(dir, name) == self.state.read().expect("poisoned").stamp {
            return Ok(false);
        }
        let (loaded, _) = Self::read(dir, name)?;
        tracing::info!(identity = %loaded.creds.identity, "credentials reloaded");
        *self.state.write().expect("poisoned") = loaded;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(true)
    }

    /// Checks the files every `every` until the returned task is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                if let Err(e) = me.reload_if_changed() {
                    tracing::error!(error = %e, "new credentials do not load; keeping the current ones");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};
    use rustls::CertificateError;

    use super::*;
    use crate::{
        issue::{Ca, IssueOptions, init_dir, write_identity},
        revoke::revoke,
    };

    fn leaf(pem: &str) -> CertificateDer<'static> {
        certs_from_pem(pem.as_bytes()).unwrap().remove(0)
    }

    fn file_leaf(dir: &Path, name: &str) -> CertificateDer<'static> {
        leaf(&fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap())
    }

    /// What a server says of a client presenting `cert`.
    fn client_verdict(server: &Credentials, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        server.client_verifier().unwrap().verify_client_cert(cert, &[], UnixTime::now()).map(|_| ())
    }

    /// What a client expecting `expect` says of a server presenting `cert` as `name`.
    fn server_verdict(
        client: &Credentials,
        expect: Option<Identity>,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        client.server_verifier(expect).unwrap().verify_server_cert(cert, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn issued(ca: &Ca, id: &Identity, edit: impl FnOnce(&mut IssueOptions)) -> CertificateDer<'static> {
        let mut opts = IssueOptions::for_identity(id);
        edit(&mut opts);
        leaf(&ca.issue(id, &opts).unwrap().cert_pem)
    }

    #[test]
    fn a_server_takes_one_corridor_identity_from_its_ca_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei"], false).unwrap();
        let server = Credentials::load(dir.path(), "node-hefei").unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let org = Identity::Org("demo".into());
        assert_eq!(client_verdict(&server, &file_leaf(dir.path(), "org-demo")), Ok(()));
        assert_eq!(client_verdict(&server, &issued(&ca, &org, |_| ())), Ok(()));

        // Two identities in one certificate: which would it act as?
        let two = issued(&ca, &org, |o| o.extra_uris.push("spiffe://corridor/gateway".into()));
        let err = client_verdict(&server, &two).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_))), "{err:?}");
        assert!(err.to_string().contains("2 URI SANs"), "{err}");

        // A leaf that names no identity at all, from the right CA.
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let bare = params.signed_by(&KeyPair::generate().unwrap(), ca.issuer()).unwrap();
        let err = client_verdict(&server, bare.der()).unwrap_err();
        assert!(err.to_string().contains("no URI SAN"), "{err}");

        // A CA certificate is never a peer, whatever it names.
        let ca_leaf = issued(&ca, &org, |o| o.is_ca = true);
        assert!(client_verdict(&server, &ca_leaf).is_err());

        // The right identity from another CA.
        let elsewhere = Ca::generate("elsewhere").unwrap();
        let err = client_verdict(&server, &issued(&elsewhere, &org, |_| ())).unwrap_err();
        assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));

        // Expired.
        let old = issued(&ca, &org, |o| {
            o.not_before -= ::time::Duration::days(30);
            o.not_after = o.not_before + ::time::Duration::days(1);
        });
        let err = client_verdict(&server, &old).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_revoked_client_is_refused_once_the_crl_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei"], false).unwrap();
        let before = Credentials::load(dir.path(), "node-hefei").unwrap();
        let org = file_leaf(dir.path(), "org-demo");
        revoke(dir.path(), "org-demo").unwrap();
        // The CRL decides: credentials loaded before it existed still accept.
        assert_eq!(client_verdict(&before, &org), Ok(()));
        let after = Credentials::load(dir.path(), "node-hefei").unwrap();
        assert_eq!(client_verdict(&after, &org), Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)));
        assert_eq!(client_verdict(&after, &file_leaf(dir.path(), "admin-hefei")), Ok(()));
        // Clients check servers against it too.
        let client = Credentials::load(dir.path(), "admin-hefei").unwrap();
        assert_eq!(server_verdict(&client, None, &file_leaf(dir.path(), "node-hefei"), "localhost"), Ok(()));
    }

    #[test]
    fn a_client_accepts_only_the_server_it_expects() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei", "wuhu"], false).unwrap();
        let client = Credentials::load(dir.path(), "gateway").unwrap();
        let hefei = file_leaf(dir.path(), "node-hefei");
        let wuhu = file_leaf(dir.path(), "node-wuhu");
        let expect = || Some(Identity::Node("hefei".into()));
        assert_eq!(server_verdict(&client, expect(), &hefei, "localhost"), Ok(()));
        // Wuhu's node at Hefei's address: a valid certificate, the wrong identity.
        let err = server_verdict(&client, expect(), &wuhu, "localhost").unwrap_err();
        assert_eq!(
            err,
            rustls::Error::General(
                "server is spiffe://corridor/city/wuhu/node, expected spiffe://corridor/city/hefei/node".into()
            )
        );
        // Without an expectation any corridor server will do.
        assert_eq!(server_verdict(&client, None, &wuhu, "localhost"), Ok(()));
        // The name dialled must still be one the certificate carries.
        assert!(server_verdict(&client, expect(), &hefei, "example.org").is_err());
        // And the CA must be ours.
        let elsewhere = Ca::generate("elsewhere").unwrap();
        let node = Identity::Node("hefei".into());
        let forged = leaf(&elsewhere.issue(&node, &IssueOptions::for_identity(&node)).unwrap().cert_pem);
        let err = server_verdict(&client, expect(), &forged, "localhost").unwrap_err();
        assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    }

    #[test]
    fn a_file_set_that_does_not_load_leaves_the_current_credentials() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei"], false).unwrap();
        let source = CredentialSource::load(dir.path(), "node-hefei").unwrap();
        let first = source.credentials();
        assert!(!source.reload_if_changed().unwrap(), "nothing changed");

        // A half-written key: the reload fails and nothing is replaced.
        fs::write(dir.path().join("node-hefei.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let err = source.reload_if_changed().unwrap_err();
        assert!(matches!(err, CertError::NoPem { what: "private key", .. }), "{err}");
        assert!(Arc::ptr_eq(&source.credentials(), &first));
        assert_eq!(source.generation(), 0);

        // A renewal that loads replaces them.
        let ca = Ca::load(dir.path()).unwrap();
        let node = Identity::Node("hefei".into());
        write_identity(dir.path(), "node-hefei", &ca.issue(&node, &IssueOptions::for_identity(&node)).unwrap())
            .unwrap();
        assert!(source.reload_if_changed().unwrap(), "the renewal is taken");
        assert_eq!(source.generation(), 1);
        let renewed = source.credentials();
        assert_eq!(renewed.identity(), &node);
        assert_ne!(renewed.chain, first.chain, "the new certificate is in use");
    }

    #[test]
    fn credentials_name_the_file_that_holds_no_pem() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei"], false).unwrap();
        fs::write(dir.path().join("org-demo.key"), "not a key").unwrap();
        let err = Credentials::load(dir.path(), "org-demo").unwrap_err();
        assert!(
            matches!(&err, CertError::NoPem { path, what: "private key" } if path.ends_with("org-demo.key")),
            "{err}"
        );
        fs::write(dir.path().join("ca.pem"), "").unwrap();
        let err = Credentials::load(dir.path(), "org-demo").unwrap_err();
        assert!(matches!(&err, CertError::NoPem { path, what: "CA certificate" } if path.ends_with("ca.pem")), "{err}");
    }

    #[test]
    fn a_cert_manager_secret_loads_as_its_identity_and_only_as_it() {
        let made = tempfile::tempdir().unwrap();
        crate::init_dir(made.path(), &["hefei"], false).unwrap();
        let secret = tempfile::tempdir().unwrap();
        for (from, to) in [("node-hefei.pem", "tls.crt"), ("node-hefei.key", "tls.key"), ("ca.pem", "ca.crt")] {
            fs::copy(made.path().join(from), secret.path().join(to)).unwrap();
        }
        let creds = Credentials::load(secret.path(), "node-hefei").unwrap();
        assert_eq!(creds.identity(), &Identity::Node("hefei".into()));
        let source = CredentialSource::load(secret.path(), "node-hefei").unwrap();
        assert_eq!(source.credentials().identity(), &Identity::Node("hefei".into()));
        let err = Credentials::load(secret.path(), "node-wuhu").unwrap_err().to_string();
        assert!(err.contains("is node-hefei's certificate, not node-wuhu's"), "{err}");
    }
}
