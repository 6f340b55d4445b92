//! The TLS accept path: handshakes off the accept loop, each under a short
//! timeout, with caps on pending handshakes that shed silent connections
//! first, and counters of every refused handshake by reason.
//!
//! A TCP connection that never sends a byte costs an attacker nothing, so
//! holding a handshake slot for it is what let 300 idle connections delay a
//! real client by seconds. Here a new connection always gets its chance: at a
//! cap, the oldest connection that has sent nothing yet is closed to make
//! room, and one that is mid-handshake is never closed in its favour.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
};
use tokio_stream::wrappers::ReceiverStream;

use crate::{CredentialSource, coalesce::Coalesce};

/// Limits on the TLS accept path.
#[derive(Debug, Clone, Copy)]
pub struct TlsAcceptOptions {
    /// A peer that has not finished its handshake by then is dropped. A real
    /// client needs two round trips; 5 s leaves room for a slow link and
    /// little for a peer that only means to hold a slot.
    pub handshake_timeout: Duration,
    /// Handshakes pending at once. At the cap the oldest silent one (no byte
    /// received yet) is shed for the newcomer; when every pending handshake
    /// is under way, further connections wait in the listener's backlog.
    pub max_handshakes: usize,
    /// Handshakes pending at once from one IP address. A newcomer beyond it
    /// sheds that address's own oldest silent handshake, so that a flood from
    /// one address cannot fill the global cap, and a real client sharing the
    /// address (behind the same NAT) is still let in. With none silent, the
    /// newcomer is refused.
    pub max_handshakes_per_address: usize,
    /// A connection this old is asked to go away (an HTTP/2 GOAWAY: calls in
    /// flight finish, the client's next call opens a new connection, which
    /// handshakes again). Revocation is checked at the handshake, so this
    /// bounds how long a revoked identity keeps a connection. `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls still running after the GOAWAY may go on before the
    /// connection is closed under them.
    pub max_connection_age_grace: Duration,
}

/// A revoked identity loses its last connection within an hour (55 minutes
/// and the grace). Not less: tonic's client does not retry a call that races
/// a GOAWAY, so a busy connection fails a few calls each time it is renewed
/// (each safe to retry: none reached the server). The grace lets a long
/// backup or import stream finish.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(55 * 60);
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(5 * 60);

impl Default for TlsAcceptOptions {
    fn default() -> Self {
        TlsAcceptOptions {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 256,
            max_handshakes_per_address: 64,
            max_connection_age: Some(MAX_CONNECTION_AGE),
            max_connection_age_grace: MAX_CONNECTION_AGE_GRACE,
        }
    }
}

impl TlsAcceptOptions {
    /// The gRPC server builder for connections from [`tls_incoming`] with
    /// these options: every server starts from it, so that each sends its
    /// GOAWAY at the maximum age. (tonic's own grace is not used: with it
    /// set, tonic 0.14 skips the GOAWAY and only cuts the connection at age
    /// plus grace; the cut is the stream's, see [`Deadline`].)
    pub fn server(&self) -> tonic::transport::Server {
        let builder = tonic::transport::Server::builder();
        match self.max_connection_age {
            Some(age) => builder.max_connection_age(age),
            None => builder,
        }
    }

    /// When a connection established now must be closed, whatever it carries.
    fn cut_off(&self) -> Option<Duration> {
        self.max_connection_age.map(|age| age + self.max_connection_age_grace)
    }
}

/// A connection that fails every read and write from a deadline on, which
/// makes the server drop it: how a connection past its maximum age and grace
/// is ended, even with calls still running on it.
#[derive(Debug)]
pub struct Deadline<T> {
    inner: T,
    at: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Deadline<T> {
    pub fn new(inner: T, after: Option<Duration>) -> Self {
        Deadline { inner, at: after.map(|d| Box::pin(tokio::time::sleep(d))) }
    }

    /// Whether the deadline has passed: a clock read. Polling the timer on
    /// every read and write instead re-armed its waker and spent the task's
    /// cooperative budget each time, which under load made the connection
    /// yield and wake over and over (a third of a node's CPU per search).
    fn passed(&self) -> bool {
        self.at.as_ref().is_some_and(|at| tokio::time::Instant::now() >= at.deadline())
    }

    /// Registers for the wakeup at the deadline; true if it has passed. Only
    /// a read that is about to wait needs it: the server always has one
    /// pending, so an idle connection is still woken and closed.
    fn wake_at_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        self.at.as_mut().is_some_and(|at| at.as_mut().poll(cx).is_ready())
    }
}

fn too_old() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection past its maximum age and grace")
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.passed() {
            return Poll::Ready(Err(too_old()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending if self.wake_at_deadline(cx) => Poll::Ready(Err(too_old())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.passed() {
            return Poll::Ready(Err(too_old()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.passed() {
            return Poll::Ready(Err(too_old()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.passed() {
            return Poll::Ready(Err(too_old()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Deadline<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Why a connection did not become a verified TLS stream. The set is fixed,
/// so the metric built on it has a bounded number of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No finished handshake within `handshake_timeout`.
    Timeout,
    /// Silent at the global cap, shed for a newer connection.
    ShedSilent,
    /// Over the cap of its address: shed (its oldest silent one) or refused.
    PerAddress,
    /// The peer closed or reset the connection before the handshake ended.
    Closed,
    /// The client presented no certificate.
    NoCertificate,
    /// The client's certificate is from another CA.
    UnknownCa,
    /// Expired or not yet valid.
    Expired,
    /// Listed in the CA's revocation list.
    Revoked,
    /// Signed by our CA, but not a corridor identity (a CA leaf, two URI
    /// SANs, a bad signature, a wrong key usage…).
    BadCertificate,
    /// Not TLS, or broken TLS: plaintext HTTP/2 lands here.
    Protocol,
    /// The client refused our certificate and told us with an alert.
    PeerAlert,
    /// Any other TLS failure.
    TlsOther,
    /// An I/O error other than the peer going away.
    Io,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::Timeout,
        Refusal::ShedSilent,
        Refusal::PerAddress,
        Refusal::Closed,
        Refusal::NoCertificate,
        Refusal::UnknownCa,
        Refusal::Expired,
        Refusal::Revoked,
        Refusal::BadCertificate,
        Refusal::Protocol,
        Refusal::PeerAlert,
        Refusal::TlsOther,
        Refusal::Io,
    ];

    /// The `reason` label of `corridor_tls_handshakes_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Timeout => "timeout",
            Refusal::ShedSilent => "shed_silent",
            Refusal::PerAddress => "per_address",
            Refusal::Closed => "closed",
            Refusal::NoCertificate => "tls_no_certificate",
            Refusal::UnknownCa => "tls_unknown_ca",
            Refusal::Expired => "tls_expired",
            Refusal::Revoked => "tls_revoked",
            Refusal::BadCertificate => "tls_bad_certificate",
            Refusal::Protocol => "tls_protocol",
            Refusal::PeerAlert => "tls_peer_alert",
            Refusal::TlsOther => "tls_other",
            Refusal::Io => "io",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).expect("listed")
    }

    /// Buckets a failed handshake's error.
    fn of(e: &io::Error) -> Refusal {
        use rustls::{CertificateError as C, Error as E};
        match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::NoCertificatesPresented) => Refusal::NoCertificate,
            Some(E::InvalidCertificate(c)) => match c {
                C::Revoked => Refusal::Revoked,
                C::UnknownIssuer => Refusal::UnknownCa,
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    Refusal::Expired
                }
                _ => Refusal::BadCertificate,
            },
            // The corridor's own leaf rules (one URI SAN, not a CA) fail as General.
            Some(E::General(_)) => Refusal::BadCertificate,
            Some(E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. }) => {
                Refusal::Protocol
            }
            Some(E::AlertReceived(_)) => Refusal::PeerAlert,
            Some(_) => Refusal::TlsOther,
            None => match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    Refusal::Closed
                }
                _ => Refusal::Io,
            },
        }
    }
}

/// Refused handshakes since the process started, by reason: process-wide,
/// like the listeners they count.
static REFUSED: [AtomicU64; Refusal::ALL.len()] = [const { AtomicU64::new(0) }; Refusal::ALL.len()];

fn count(r: Refusal) {
    REFUSED[r.index()].fetch_add(1, Ordering::Relaxed);
}

/// Every reason with its count of refused handshakes so far, zeros included.
pub fn handshake_refusals() -> Vec<(&'static str, u64)> {
    Refusal::ALL.iter().map(|r| (r.label(), REFUSED[r.index()].load(Ordering::Relaxed))).collect()
}

/// One handshake not yet finished.
struct Entry {
    peer: std::net::SocketAddr,
    /// Whether the peer has sent a byte yet.
    heard: bool,
    shed: Option<oneshot::Sender<Refusal>>,
}

/// Pending handshakes in accept order, oldest first.
#[derive(Default)]
struct Pending {
    next: u64,
    entries: BTreeMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
}

impl Pending {
    fn add(&mut self, peer: std::net::SocketAddr, shed: oneshot::Sender<Refusal>) -> u64 {
        let id = self.next;
        self.next += 1;
        self.entries.insert(id, Entry { peer, heard: false, shed: Some(shed) });
        *self.per_address.entry(address(&peer)).or_default() += 1;
        id
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        let ip = address(&entry.peer);
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some(entry)
    }

    fn at_address(&self, ip: IpAddr) -> usize {
        self.per_address.get(&ip).copied().unwrap_or(0)
    }

    /// Closes the oldest handshake that has received nothing (from `ip`
    /// only, when given). Returns whether there was one.
    fn shed_oldest_silent(&mut self, ip: Option<IpAddr>, why: Refusal) -> bool {
        let found = self
            .entries
            .iter()
            .find(|(_, e)| !e.heard && ip.is_none_or(|ip| address(&e.peer) == ip))
            .map(|(id, _)| *id);
        let Some(mut entry) = found.and_then(|id| self.remove(id)) else { return false };
        if let Some(tx) = entry.shed.take() {
            let _ = tx.send(why);
        }
        true
    }
}

/// An IPv4 client reaching a dual-stack listener shows up as `::ffff:a.b.c.d`;
/// it is the same address as `a.b.c.d`.
fn address(peer: &std::net::SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// The accept loop's state, shared with its handshake tasks (and tests).
#[derive(Default)]
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// Woken at every change of `pending`, so that tests wait on conditions.
    changed: Notify,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Pending) -> T) -> T {
        let out = f(&mut self.pending.lock().expect("poisoned"));
        self.changed.notify_waiters();
        out
    }

    /// Waits until `cond` holds for (peer, heard) of every pending handshake,
    /// checked at every change (counters move before the change that ends
    /// a handshake). Panics after a minute, which only a broken accept path
    /// could take.
    #[cfg(test)]
    pub(crate) async fn wait_until(&self, cond: impl Fn(&[(std::net::SocketAddr, bool)]) -> bool) {
        tokio::time::timeout(Duration::from_secs(60), self.wait_until_forever(cond))
            .await
            .expect("the pending handshakes reach the expected state");
    }

    #[cfg(test)]
    async fn wait_until_forever(&self, cond: impl Fn(&[(std::net::SocketAddr, bool)]) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now: Vec<_> =
                self.pending.lock().expect("poisoned").entries.values().map(|e| (e.peer, e.heard)).collect();
            if cond(&now) {
                return;
            }
            changed.await;
        }
    }
}

/// A verified server-side connection, as [`tls_incoming`] yields it.
pub type ServerStream = Deadline<Coalesce<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Accepted and fully verified TLS connections, ready for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Handshakes run off the accept loop, each in its own task under
/// `handshake_timeout`, so one slow peer never delays another, and the caps
/// of [`TlsAcceptOptions`] shed silent connections before anyone waits. A
/// connection that fails its handshake (no certificate, wrong CA, expired,
/// revoked, plaintext) is dropped before any request is read, so no handler
/// ever runs for it; each refusal is counted ([`handshake_refusals`]). The
/// accept loop ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    source: Arc<CredentialSource>,
    opts: TlsAcceptOptions,
) -> ReceiverStream<io::Result<ServerStream>> {
    tls_incoming_shared(listener, source, opts).0
}

pub(crate) fn tls_incoming_shared(
    listener: TcpListener,
    source: Arc<CredentialSource>,
    opts: TlsAcceptOptions,
) -> (ReceiverStream<io::Result<ServerStream>>, Arc<Shared>) {
    let (tx, rx) = mpsc::channel(64);
    let shared = Arc::new(Shared::default());
    let permits = Arc::new(Semaphore::new(opts.max_handshakes.max(1)));
    let per_address = opts.max_handshakes_per_address.max(1);
    let state = shared.clone();
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
            let crowded = state.update(|p| {
                p.at_address(address(&peer)) >= per_address
                    && !p.shed_oldest_silent(Some(address(&peer)), Refusal::PerAddress)
            });
            if crowded {
                // Every handshake of this address is under way; they end
                // within the timeout, and this one may try again.
                count(Refusal::PerAddress);
                tracing::debug!(%peer, "tls handshake refused: too many pending from this address");
                continue;
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // The shed handshake returns its permit as its task ends;
                    // with none silent, the next handshake to end does.
                    state.update(|p| p.shed_oldest_silent(None, Refusal::ShedSilent));
                    let acquired = tokio::select! {
                        _ = tx.closed() => return,
                        p = permits.clone().acquire_owned() => p,
                    };
                    let Ok(permit) = acquired else { return };
                    permit
                }
            };
            let _ = tcp.set_nodelay(true);
            // The config current at this handshake: certificate rotation and
            // CRL updates apply to new connections, in-flight ones go on.
            let acceptor = tokio_rustls::TlsAcceptor::from(source.server_config());
            let (shed_tx, shed_rx) = oneshot::channel();
            let id = state.update(|p| p.add(peer, shed_tx));
            tokio::spawn(handshake(tcp, peer, id, acceptor, state.clone(), shed_rx, permit, opts, tx.clone()));
        }
    });
    (ReceiverStream::new(rx), shared)
}

#[allow(clippy::too_many_arguments)]
async fn handshake(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    id: u64,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Shared>,
    shed: oneshot::Receiver<Refusal>,
    permit: OwnedSemaphorePermit,
    opts: TlsAcceptOptions,
    tx: mpsc::Sender<io::Result<ServerStream>>,
) {
    let run = async {
        // A connection is silent until its first byte: until then it may be
        // shed for a newer one.
        match tcp.peek(&mut [0u8; 1]).await {
            Ok(0) => return Err(Refusal::Closed),
            Ok(_) => state.update(|p| {
                if let Some(e) = p.entries.get_mut(&id) {
                    e.heard = true;
                }
            }),
            Err(e) => return Err(Refusal::of(&e)),
        }
        acceptor.accept(tcp).await.map_err(|e| {
            let why = Refusal::of(&e);
            tracing::info!(%peer, error = %e, reason = why.label(), "tls handshake refused");
            why
        })
    };
    let result = tokio::select! {
        // Whoever shed it has already taken it off the pending list.
        Ok(why) = shed => Err(why),
        r = tokio::time::timeout(opts.handshake_timeout, run) => r.unwrap_or(Err(Refusal::Timeout)),
    };
    if let Err(why) = result {
        count(why);
        if matches!(why, Refusal::Timeout | Refusal::ShedSilent | Refusal::PerAddress) {
            tracing::debug!(%peer, reason = why.label(), "tls handshake dropped");
        }
    }
    state.update(|p| p.remove(id));
    drop(permit);
    if let Ok(stream) = result {
        let _ = tx.send(Ok(Deadline::new(Coalesce::new(stream), opts.cut_off()))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use rustls::{ClientConfig, pki_types::ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpSocket,
    };
    use tokio_stream::StreamExt;

    use super::*;
    use crate::Credentials;

    /// Far longer than any test runs, so that a timeout never explains a
    /// connection closing.
    const NEVER: Duration = Duration::from_secs(600);
    /// A bound on waits that only a broken accept path could reach.
    const BOUND: Duration = Duration::from_secs(60);

    struct Server {
        _dir: tempfile::TempDir,
        addr: SocketAddr,
        incoming: ReceiverStream<io::Result<ServerStream>>,
        shared: Arc<Shared>,
        client: Arc<ClientConfig>,
    }

    async fn serve(opts: TlsAcceptOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        crate::init_dir(dir.path(), &["hefei"], false).unwrap();
        let source = CredentialSource::load(dir.path(), "node-hefei").unwrap();
        let client = Credentials::load(dir.path(), "org-demo").unwrap().client_config(None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (incoming, shared) = tls_incoming_shared(listener, source, opts);
        Server { _dir: dir, addr, incoming, shared, client }
    }

    async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// A real corridor client's handshake, finished when the server yields
    /// the verified connection.
    async fn handshake_completes(server: &mut Server, from: Ipv4Addr) {
        let tcp = tcp_from(from, server.addr).await;
        let connector = tokio_rustls::TlsConnector::from(server.client.clone());
        let done = async {
            let _client = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
            server.incoming.next().await.expect("incoming open").expect("verified connection");
        };
        tokio::time::timeout(BOUND, done).await.expect("the new client's handshake completes");
    }

    async fn closed_by_server(conn: &mut TcpStream) {
        let read = tokio::time::timeout(BOUND, conn.read(&mut [0u8; 16])).await.expect("closed by the server");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    fn refused(why: Refusal) -> u64 {
        REFUSED[why.index()].load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_new_client_gets_through_while_silent_connections_hold_every_slot() {
        let opts = TlsAcceptOptions {
            handshake_timeout: NEVER,
            max_handshakes: 8,
            max_handshakes_per_address: 1_000,
            ..Default::default()
        };
        let mut server = serve(opts).await;
        let before = refused(Refusal::ShedSilent);
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(TcpStream::connect(server.addr).await.unwrap());
        }
        handshake_completes(&mut server, Ipv4Addr::LOCALHOST).await;
        // 20 silent and 1 real against 8 slots: the 13 oldest silent went.
        server.shared.wait_until(|_| refused(Refusal::ShedSilent) >= before + 13).await;
        for conn in &mut silent[..13] {
            closed_by_server(conn).await;
        }
        server.shared.wait_until(|p| p.len() == 7 && p.iter().all(|(_, heard)| !heard)).await;
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_is_shed_not_one_mid_handshake() {
        let opts = TlsAcceptOptions {
            handshake_timeout: NEVER,
            max_handshakes: 4,
            max_handshakes_per_address: 1_000,
            ..Default::default()
        };
        let mut server = serve(opts).await;
        // Oldest of all: a TLS record header, and then nothing more.
        let mut started = TcpStream::connect(server.addr).await.unwrap();
        started.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).await.unwrap();
        let started_at = started.local_addr().unwrap();
        server.shared.wait_until(|p| p == [(started_at, true)]).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(server.addr).await.unwrap());
        }
        server.shared.wait_until(|p| p.len() == 4).await;

        handshake_completes(&mut server, Ipv4Addr::LOCALHOST).await;
        closed_by_server(&mut silent[0]).await;
        let kept: Vec<SocketAddr> = [&started, &silent[1], &silent[2]].map(|c| c.local_addr().unwrap()).into();
        server.shared.wait_until(|p| p.iter().map(|(a, _)| *a).collect::<Vec<_>>() == kept).await;
    }

    #[tokio::test]
    async fn an_address_over_its_cap_sheds_its_own_oldest_silent_connection() {
        let opts = TlsAcceptOptions {
            handshake_timeout: NEVER,
            max_handshakes: 1_000,
            max_handshakes_per_address: 3,
            ..Default::default()
        };
        let mut server = serve(opts).await;
        let (other, own) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::LOCALHOST);
        let before = refused(Refusal::PerAddress);
        let mut conns = Vec::new();
        for from in [other, other, other, own, own, own] {
            conns.push(tcp_from(from, server.addr).await);
        }
        server.shared.wait_until(|p| p.len() == 6).await;

        handshake_completes(&mut server, own).await;
        closed_by_server(&mut conns[3]).await;
        let kept: Vec<SocketAddr> = [0, 1, 2, 4, 5].map(|i| conns[i].local_addr().unwrap()).into();
        server.shared.wait_until(|p| p.iter().map(|(a, _)| *a).collect::<Vec<_>>() == kept).await;
        assert!(refused(Refusal::PerAddress) > before);
    }

    #[tokio::test]
    async fn an_address_whose_handshakes_are_all_under_way_gets_no_more_until_one_ends() {
        let opts = TlsAcceptOptions {
            handshake_timeout: NEVER,
            max_handshakes: 1_000,
            max_handshakes_per_address: 2,
            ..Default::default()
        };
        let mut server = serve(opts).await;
        let crowd = Ipv4Addr::new(127, 0, 0, 3);
        let mut started = Vec::new();
        for _ in 0..2 {
            let mut conn = tcp_from(crowd, server.addr).await;
            conn.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).await.unwrap();
            started.push(conn);
        }
        server.shared.wait_until(|p| p.len() == 2 && p.iter().all(|(_, heard)| *heard)).await;
        let mut third = tcp_from(crowd, server.addr).await;
        closed_by_server(&mut third).await;
        // Neither handshake under way was given up for it, and other addresses are not affected.
        server.shared.wait_until(|p| p.len() == 2).await;
        handshake_completes(&mut server, Ipv4Addr::LOCALHOST).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_at_the_handshake_timeout() {
        let server = serve(TlsAcceptOptions::default()).await;
        let before = refused(Refusal::Timeout);
        let started = tokio::time::Instant::now();
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let read = conn.read(&mut [0u8; 16]).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
        server.shared.wait_until(|p| p.is_empty() && refused(Refusal::Timeout) > before).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_cut_at_its_deadline_and_not_before() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut conn = Deadline::new(near, Some(Duration::from_secs(60)));
        let started = tokio::time::Instant::now();
        far.write_all(b"x").await.unwrap();
        assert_eq!(conn.read(&mut [0u8; 1]).await.unwrap(), 1);
        let err = conn.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(conn.write_all(b"y").await.is_err());
    }

    #[test]
    fn every_reason_is_reported_with_a_distinct_label() {
        let all = handshake_refusals();
        assert_eq!(all.len(), Refusal::ALL.len());
        let labels: std::collections::BTreeSet<_> = all.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels.len(), all.len());
        for (e, want) in [
            (rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked), "tls_revoked"),
            (rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), "tls_unknown_ca"),
            (rustls::Error::NoCertificatesPresented, "tls_no_certificate"),
            (rustls::Error::General("2 URI SANs".into()), "tls_bad_certificate"),
        ] {
            assert_eq!(Refusal::of(&io::Error::new(io::ErrorKind::InvalidData, e)).label(), want);
        }
        assert_eq!(Refusal::of(&io::ErrorKind::UnexpectedEof.into()).label(), "closed");
    }
}
