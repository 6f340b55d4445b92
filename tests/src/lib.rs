//! An in-process corridor for tests: nine city nodes and a gateway on
//! pre-bound `127.0.0.1:0` listeners, over real mutual TLS from a freshly
//! generated CA, each node on real sled in a temporary directory.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use corridor_certs::{Ca, CredentialSource, Credentials, Identity, IssueOptions, client_channel, write_identity};
use corridor_gateway::{GatewayConfig, NodeEndpoint};
use corridor_node::{NodeConfig, ops::demo::Scale};
use corridor_proto::{
    cities::{CITIES, city_by_slug},
    gateway_client::GatewayClient,
    node_client::NodeClient,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub use corridor_proto as pb;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What stands between the gateway and a city in a test.
pub enum Front {
    /// A listener nobody accepts from: connections hang, nothing answers.
    BlackHole(TcpListener),
    /// A TCP proxy that holds every chunk from the node this long: the city
    /// is slow, not dead.
    Delay(Duration),
    /// The city's node as an older version would serve it, slow as with
    /// `Delay`: it does not know `SearchBatch` (UNIMPLEMENTED, each refusal
    /// counted in `refused`) and answers every other call as the node does.
    Old { delay: Duration, refused: Arc<AtomicUsize> },
    /// A city whose node is in trouble: it answers every call with this code
    /// (a corrupt store answers DATA_LOSS, say), as the node would.
    Answer(tonic::Code),
    /// The real node behind a proxy that, once the flag is set, closes both
    /// sides at the next bytes either sends: the node died under the call.
    Cut(Arc<std::sync::atomic::AtomicBool>),
}

/// How `front_node` answers for a city.
enum Stand {
    /// As a node that predates `SearchBatch` (see [`Front::Old`]).
    Old(Arc<AtomicUsize>),
    /// Every call with this code.
    Answer(tonic::Code),
}

/// Serves as `city`'s node, with its identity. As [`Stand::Old`] it passes
/// every call on to the real node at `node` except `SearchBatch`, which it
/// refuses as a node that predates it would; as [`Stand::Answer`] it answers
/// every call itself.
async fn front_node(certs: &std::path::Path, city: &str, node: SocketAddr, stand: Stand) -> SocketAddr {
    use tonic::codegen::http;
    #[derive(Clone)]
    struct Old {
        node: Channel,
        refused: Arc<AtomicUsize>,
        answer: Option<tonic::Code>,
    }
    impl tonic::server::NamedService for Old {
        const NAME: &'static str = "corridor.v1.Node";
    }
    type Reply = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;
    impl tower::Service<http::Request<tonic::body::Body>> for Old {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            if let Some(code) = self.answer {
                let path = req.uri().path().to_string();
                return Box::pin(async move {
                    Ok(tonic::Status::new(code, format!("{path}: store is corrupt")).into_http())
                });
            }
            if req.uri().path() == "/corridor.v1.Node/SearchBatch" {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Box::pin(async { Ok(tonic::Status::unimplemented("unknown method SearchBatch").into_http()) });
            }
            let mut node = self.node.clone();
            Box::pin(async move {
                let forwarded = match std::future::poll_fn(|cx| tower::Service::poll_ready(&mut node, cx)).await {
                    Ok(()) => tower::Service::call(&mut node, req).await,
                    Err(e) => Err(e),
                };
                Ok(forwarded.unwrap_or_else(|e| tonic::Status::unavailable(e.to_string()).into_http()))
            })
        }
    }
    // It reaches the node as the gateway does, so the node sees the same caller.
    let gateway = Credentials::load(certs, "gateway").expect("gateway creds");
    let node = client_channel(&format!("https://{node}"), &gateway, Some(Identity::Node(city.into())), CONNECT_TIMEOUT)
        .expect("channel to the node");
    let creds = CredentialSource::load(certs, &format!("node-{city}")).expect("node creds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let incoming = corridor_certs::tls_incoming(listener, creds, corridor_certs::TlsAcceptOptions::default());
    let old = match stand {
        Stand::Old(refused) => Old { node, refused, answer: None },
        Stand::Answer(code) => Old { node, refused: Arc::default(), answer: Some(code) },
    };
    tokio::spawn(tonic::transport::Server::builder().add_service(old).serve_with_incoming(incoming));
    addr
}

/// Forwards TCP to `target` until `cut` is set; from then on, the first
/// bytes either side sends close both connections instead of arriving, as
/// a killed node's connections close.
async fn cutting_proxy(target: SocketAddr, cut: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    };
    /// Copies until either side closes, or the cut.
    async fn pipe(mut from: OwnedReadHalf, to: &mut OwnedWriteHalf, cut: &std::sync::atomic::AtomicBool) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else { continue };
            let (cr, mut cw) = client.into_split();
            let (sr, mut sw) = server.into_split();
            let cut = cut.clone();
            // The first direction to stop drops all four halves, which
            // closes both connections.
            tokio::spawn(async move {
                tokio::select! {
                    _ = pipe(cr, &mut sw, &cut) => {}
                    _ = pipe(sr, &mut cw, &cut) => {}
                }
            });
        }
    });
    addr
}

/// Forwards TCP to `target`, delaying the node's replies by `delay`. TLS
/// passes through untouched, so the node's identity is still checked.
async fn delaying_proxy(target: SocketAddr, delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else { continue };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // Simulated network latency, not a wait for a condition.
                    tokio::time::sleep(delay).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A running corridor. Dropping it stops everything.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub gateway_addr: SocketAddr,
    pub node_addrs: BTreeMap<&'static str, SocketAddr>,
    /// Each real node's metrics, as its /metrics endpoint would show them.
    pub node_metrics: BTreeMap<&'static str, Arc<corridor_telemetry::Metrics>>,
    nodes: BTreeMap<&'static str, Running>,
    gateway: Option<Running>,
    /// Every server's credentials, to make them reload in tests.
    sources: Vec<Arc<CredentialSource>>,
    /// Seconds every node's clock runs ahead of the wall clock.
    clock_skew: Arc<std::sync::atomic::AtomicI64>,
}

fn shutdown_pair() -> (oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

impl Mesh {
    /// Starts all nine cities, each seeded with its share of `seed`.
    pub async fn start(seed: Option<Scale>) -> Mesh {
        Self::start_with(seed, |_| None).await
    }

    /// Like [`Mesh::start`], but `front(city)` may put something between
    /// the gateway and that city: see [`Front`].
    pub async fn start_with(seed: Option<Scale>, front: impl Fn(&str) -> Option<Front>) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let slugs: Vec<&str> = CITIES.iter().map(|c| c.slug).collect();
        corridor_certs::init_dir(&certs, &slugs, false).expect("certs");

        let mut nodes = BTreeMap::new();
        let mut sources = Vec::new();
        let mut node_addrs = BTreeMap::new();
        let mut node_metrics = BTreeMap::new();
        let mut endpoints = Vec::new();
        let clock_skew: Arc<std::sync::atomic::AtomicI64> = Arc::default();
        // Every listener first, so that each node starts knowing its peers.
        let mut listeners = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let fronts: Vec<Option<Front>> = CITIES.iter().map(|c| front(c.slug)).collect();
        for (city, front) in CITIES.iter().zip(&fronts) {
            let addr = match front {
                Some(Front::BlackHole(l)) => l.local_addr().unwrap(),
                _ => {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    let addr = listener.local_addr().unwrap();
                    listeners.insert(city.slug, listener);
                    addr
                }
            };
            peers.insert(city.slug.to_string(), format!("https://{addr}"));
        }
        for (city, front) in CITIES.iter().zip(fronts) {
            if let Some(Front::BlackHole(listener)) = front {
                let addr = listener.local_addr().unwrap();
                // Keep the listener open, and never accept from it.
                let (stop, wait) = shutdown_pair();
                let task = tokio::spawn(async move {
                    wait.await;
                    drop(listener);
                });
                nodes.insert(city.slug, Running { stop, task });
                node_addrs.insert(city.slug, addr);
                endpoints.push(NodeEndpoint { city: city.slug.into(), endpoint: format!("https://{addr}") });
                continue;
            }
            let listener = listeners.remove(city.slug).expect("bound above");
            let addr = listener.local_addr().unwrap();
            let creds = CredentialSource::load(&certs, &format!("node-{}", city.slug)).expect("node creds");
            sources.push(creds.clone());
            let config = NodeConfig {
                city,
                data_dir: dir.path().join("nodes").join(city.slug),
                seed,
                peers: peers.clone(),
                clock_skew: Some(clock_skew.clone()),
                thesaurus: Default::default(),
                accept: Default::default(),
            };
            let (stop, wait) = shutdown_pair();
            let metrics = corridor_telemetry::Metrics::new();
            node_metrics.insert(city.slug, metrics.clone());
            let task = tokio::spawn(async move {
                corridor_node::run(config, creds, listener, metrics, None, wait).await.expect("node runs");
            });
            nodes.insert(city.slug, Running { stop, task });
            node_addrs.insert(city.slug, addr);
            let routed = match front {
                Some(Front::Delay(d)) => delaying_proxy(addr, d).await,
                Some(Front::Old { delay, refused }) => {
                    front_node(&certs, city.slug, delaying_proxy(addr, delay).await, Stand::Old(refused)).await
                }
                Some(Front::Answer(code)) => front_node(&certs, city.slug, addr, Stand::Answer(code)).await,
                Some(Front::Cut(cut)) => cutting_proxy(addr, cut).await,
                _ => addr,
            };
            endpoints.push(NodeEndpoint { city: city.slug.into(), endpoint: format!("https://{routed}") });
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gateway_addr = listener.local_addr().unwrap();
        let creds = CredentialSource::load(&certs, "gateway").expect("gateway creds");
        sources.push(creds.clone());
        let config = GatewayConfig::new(endpoints);
        let (stop, wait) = shutdown_pair();
        let task = tokio::spawn(async move {
            let metrics = corridor_telemetry::Metrics::new();
            corridor_gateway::run(config, creds, listener, metrics, None, wait).await.expect("gateway runs");
        });
        let mesh = Mesh {
            dir,
            certs,
            gateway_addr,
            node_addrs,
            node_metrics,
            nodes,
            gateway: Some(Running { stop, task }),
            sources,
            clock_skew,
        };
        mesh.wait_until_seeded(seed).await;
        mesh
    }

    /// Nodes seed before they serve, and a bound listener queues connections,
    /// so the first call through the gateway waits for readiness by itself.
    /// This asks every real node once, through the gateway, to make sure.
    async fn wait_until_seeded(&self, seed: Option<Scale>) {
        if seed.is_none() {
            return;
        }
        let mut gw = self.gateway("org-demo");
        let mut req = tonic::Request::new(pb::ListNodesRequest {});
        req.set_timeout(Duration::from_secs(30));
        gw.list_nodes(req).await.expect("list nodes");
    }

    /// Makes every server reload its credentials now, as its watcher would
    /// within seconds; returns how many changed.
    pub fn reload_all(&self) -> usize {
        self.sources.iter().filter(|s| s.reload_if_changed().expect("credentials load")).count()
    }

    pub fn creds(&self, name: &str) -> Credentials {
        Credentials::load(&self.certs, name).expect("creds")
    }

    /// The corridor CA, to issue further (or deliberately bad) identities.
    pub fn ca(&self) -> Ca {
        Ca::load(&self.certs).expect("ca")
    }

    /// Issues `id` with `opts` from the corridor CA into the certs directory
    /// under `name`, and loads it.
    pub fn issue(&self, name: &str, id: &Identity, opts: &IssueOptions) -> Credentials {
        let cert = self.ca().issue(id, opts).expect("issue");
        write_identity(&self.certs, name, &cert).expect("write");
        self.creds(name)
    }

    pub fn gateway_url(&self) -> String {
        format!("https://{}", self.gateway_addr)
    }

    pub fn node_url(&self, city: &str) -> String {
        format!("https://{}", self.node_addrs[city])
    }

    /// A gateway client presenting identity `name`.
    pub fn gateway(&self, name: &str) -> GatewayClient<Channel> {
        self.gateway_as(&self.creds(name))
    }

    pub fn gateway_as(&self, creds: &Credentials) -> GatewayClient<Channel> {
        let ch = client_channel(&self.gateway_url(), creds, Some(Identity::Gateway), CONNECT_TIMEOUT).unwrap();
        GatewayClient::new(ch)
    }

    /// A direct client of `city`'s node presenting identity `name`.
    pub fn node(&self, city: &str, name: &str) -> NodeClient<Channel> {
        self.node_as(city, &self.creds(name))
    }

    pub fn node_as(&self, city: &str, creds: &Credentials) -> NodeClient<Channel> {
        let ch =
            client_channel(&self.node_url(city), creds, Some(Identity::Node(city.into())), CONNECT_TIMEOUT).unwrap();
        NodeClient::new(ch)
    }

    /// Stops one city's node and waits until it has shut down.
    pub async fn stop_node(&mut self, city: &str) {
        let running = self.nodes.remove(city).expect("running node");
        let _ = running.stop.send(());
        running.task.await.expect("node task");
    }

    pub fn city(slug: &str) -> &'static corridor_proto::cities::City {
        city_by_slug(slug).expect("city")
    }

    /// The time every node reads now (unix seconds).
    pub fn now(&self) -> i64 {
        time_now() + self.clock_skew.load(Ordering::SeqCst)
    }

    /// Moves every node's clock forward to `t` (unix seconds), as if the
    /// mesh had waited until then: a booking is completed only after its
    /// start.
    pub fn advance_to(&self, t: i64) {
        let ahead = (t - time_now()).max(0);
        self.clock_skew.fetch_max(ahead, Ordering::SeqCst);
    }
}

/// Whether a demo record is of one of `kinds` (its local id is the kind's
/// slug and a number), whatever name the demo gave it.
pub fn of_kind(r: &corridor_node::catalog::model::InstrumentRecord, kinds: &[&str]) -> bool {
    r.local_id.rsplit_once('-').is_some_and(|(kind, n)| kinds.contains(&kind) && n.bytes().all(|b| b.is_ascii_digit()))
}

fn time_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, r) in std::mem::take(&mut self.nodes) {
            let _ = r.stop.send(());
            r.task.abort();
        }
        if let Some(r) = self.gateway.take() {
            let _ = r.stop.send(());
            r.task.abort();
        }
    }
}
