//! Running a node: open the store, seed it if asked, serve until shutdown.

use std::{collections::BTreeMap, future::Future, path::PathBuf, sync::Arc};

use corridor_certs::{CredentialSource, TlsAcceptOptions, tls_incoming};
use corridor_proto::{cities::City, node_server::NodeServer};
use corridor_telemetry::{Metrics, MetricsLayer};
use tokio::net::TcpListener;

use crate::{
    NodeService,
    booking::{SystemClock, store::SledBookings},
    demo::Scale,
    node::{Node, NodeError},
    payment::Payments,
    peers::GrpcIssuers,
    store::SledStore,
};

/// How often unfinished voucher payments are driven again, and expired
/// voucher holds voided.
pub const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often certificate files are checked for changes.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest gRPC message a node accepts or sends. Imports stream in chunks well
/// below this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub city: &'static City,
    pub data_dir: PathBuf,
    /// Seed this demo inventory when the store is empty.
    pub seed: Option<Scale>,
    /// Also serve the gRPC health service, and nothing else, in plaintext
    /// here: for orchestrator probes, which cannot present a certificate.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Other cities' nodes (and this one's), by city slug: `https://host:port`.
    /// Without them the node takes no voucher payments.
    pub peers: BTreeMap<String, String>,
    /// Handshake limits and the maximum connection age.
    pub accept: TlsAcceptOptions,
}

/// Serves one city node on an already-bound listener until `shutdown`
/// resolves, then drains in-flight calls and flushes the store.
pub async fn run(
    config: NodeConfig,
    creds: Arc<CredentialSource>,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let store = Arc::new(SledStore::open(&config.data_dir)?);
    let gate: Arc<std::sync::RwLock<()>> = Arc::default();
    let bookings = Arc::new(SledBookings::open(store.db(), gate.clone())?);
    let (db, city) = (store.db().clone(), config.city.slug);
    let snapshotter: crate::node::Snapshotter = Box::new(move || {
        // Exclusive: no booking step runs while the trees are read.
        let _all = gate.write().expect("poisoned");
        crate::backup::snapshot(&db, city, &crate::node::now_rfc3339())
    });
    let mut node =
        Node::open(config.city, store.clone(), bookings, Arc::new(SystemClock))?.with_snapshotter(snapshotter);
    if !config.peers.is_empty() {
        let issuers = GrpcIssuers::new(config.city.slug, &config.peers, creds.clone())?;
        node = node.with_payments(Payments::new(Arc::new(issuers)));
    }
    let node = Arc::new(node);
    if let Some(scale) = config.seed {
        let n = node.seed_if_empty(scale).await?;
        if n > 0 {
            tracing::info!(city = config.city.slug, instruments = n, "seeded demo inventory");
        }
    }
    // Certificates, keys and the CRL are reloaded when they change on disk.
    let _watch = creds.watch(RELOAD_EVERY);

    register_gauges(&metrics, config.city.slug, &store, &node, &creds);

    // Recovery: every payment a crash left halfway is carried on, at start
    // and then on a timer, until it is final on both sides.
    let recovery = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECOVER_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = node.recover().await {
                    tracing::warn!(error = %e, "voucher recovery pass failed");
                }
            }
        })
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodeServer<NodeService>>().await;
    let probes = corridor_telemetry::serve_health(config.health_addr, &health_service)
        .await
        .map_err(|e| NodeError::Serve(format!("health port: {e}")))?;
    let (reflection_v1, reflection_v1alpha) = corridor_proto::reflection_services("corridor.v1.Node");

    let service = NodeServer::new(NodeService::new(node))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tls_incoming(listener, creds, config.accept);
    tracing::info!(city = config.city.slug, "node serving");
    let router = config
        .accept
        .server()
        // Outermost, so that every call is counted, refusals included.
        .layer(MetricsLayer(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let served = corridor_telemetry::serve_draining(shutdown, corridor_telemetry::DRAIN_BOUND, |stop| {
        Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
    })
    .await;
    if let Some(p) = probes {
        p.abort();
    }
    recovery.abort();
    // Flush even if serving failed: nothing acknowledged may be lost.
    store.flush()?;
    tracing::info!(city = config.city.slug, "node stopped");
    served.map_err(|e| NodeError::Serve(e.to_string()))
}

fn register_gauges(
    metrics: &Metrics,
    city: &str,
    store: &Arc<SledStore>,
    node: &Arc<Node>,
    creds: &Arc<CredentialSource>,
) {
    let l = || vec![("city", city.to_string())];
    let s = store.clone();
    metrics.gauge("corridor_sled_disk_bytes", "size of the node's sled database on disk", l(), move || {
        s.db().size_on_disk().unwrap_or(0) as f64
    });
    let n = node.clone();
    metrics.gauge("corridor_open_holds", "bookings held and not yet confirmed", l(), move || {
        n.bookings().open_holds().unwrap_or(0) as f64
    });
    let n = node.clone();
    metrics.gauge("corridor_instruments", "instruments in the city's inventory", l(), move || n.len() as f64);
    corridor_telemetry::cert_expiry_gauge(metrics, creds.clone());
}
