//! Running a node: open the store, seed it if asked, serve until shutdown.

use std::{collections::BTreeMap, future::Future, path::PathBuf, sync::Arc};

use corridor_certs::{CredentialSource, TlsAcceptOptions, tls_incoming};
use corridor_proto::{cities::City, node_server::NodeServer};
use corridor_telemetry::{Metrics, RpcLayer};
use tokio::net::TcpListener;

use crate::{
    NodeService,
    booking::time::{SkewedClock, SystemClock},
    catalog::search::thesaurus::Thesaurus,
    kv::{inventory::SledStore, txn::SledKv},
    money::coordinator::Payments,
    node::{Node, NodeError},
    ops::demo::Scale,
    wire::peers::GrpcIssuers,
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
    /// Other cities' nodes (and this one's), by city slug: `https://host:port`.
    /// Without them the node takes no voucher payments.
    pub peers: BTreeMap<String, String>,
    /// Seconds added to the wall clock, shared and changeable: for tests
    /// that move time forward. `None` in every real deployment.
    pub clock_skew: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// Where the thesaurus comes from besides the shipped one.
    pub thesaurus: ThesaurusFiles,
    /// Handshake limits and the maximum connection age.
    pub accept: TlsAcceptOptions,
}

/// The thesaurus files a node reads, and reads again when they change.
#[derive(Debug, Clone, Default)]
pub struct ThesaurusFiles {
    /// Used instead of the shipped thesaurus.
    pub replace: Option<PathBuf>,
    /// The city's own synonyms, added to it.
    pub add: Option<PathBuf>,
}

impl ThesaurusFiles {
    /// The thesaurus the files make now (the shipped makers always with it),
    /// and the fingerprint of what was read.
    fn read(&self) -> Result<(Thesaurus, Vec<Option<u64>>), NodeError> {
        use crate::catalog::search::thesaurus::{SHIPPED, SHIPPED_MAKERS};
        let read = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| NodeError::Serve(format!("reading the thesaurus {}: {e}", p.display())))?;
                    Ok::<_, NodeError>((p.display().to_string(), text))
                })
                .transpose()
        };
        let (replace, add) = (read(&self.replace)?, read(&self.add)?);
        let mut files: Vec<(&str, &str)> = match &replace {
            Some((name, text)) => vec![(name, text)],
            None => vec![("node/data/thesaurus.csv", SHIPPED)],
        };
        files.push(("node/data/makers.csv", SHIPPED_MAKERS));
        files.extend(add.as_ref().map(|(name, text)| (name.as_str(), text.as_str())));
        let t = Thesaurus::from_csv(&files).map_err(|e| NodeError::Serve(e.to_string()))?;
        let seen = [&replace, &add].map(|f| f.as_ref().map(|(_, text)| fingerprint(text.as_bytes())));
        Ok((t, seen.into()))
    }

    /// The files' fingerprints as they are now: a change of content, not of
    /// modification time, which may not move between two writes close
    /// together.
    fn stamps(&self) -> Vec<Option<u64>> {
        [&self.replace, &self.add].iter().map(|p| std::fs::read(p.as_ref()?).ok().map(|b| fingerprint(&b))).collect()
    }

    fn is_shipped(&self) -> bool {
        self.replace.is_none() && self.add.is_none()
    }
}

/// Serves one city node on an already-bound listener until `shutdown`
/// resolves, then drains in-flight calls and flushes the store.
pub async fn run(
    config: NodeConfig,
    creds: Arc<CredentialSource>,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let store = Arc::new(SledStore::open(&config.data_dir)?);
    let gate: Arc<std::sync::RwLock<()>> = Arc::default();
    let bookings = Arc::new(SledKv::open(store.db(), gate.clone())?);
    let (db, city) = (store.db().clone(), config.city.slug);
    let snapshotter: crate::node::Snapshotter = Box::new(move || {
        // Exclusive: no booking step runs while the trees are read.
        let _all = gate.write().expect("poisoned");
        crate::ops::backup::snapshot(&db, city, &crate::node::now_rfc3339())
    });
    let clock: Arc<dyn crate::booking::time::Clock> = match &config.clock_skew {
        Some(skew) => Arc::new(SkewedClock(skew.clone())),
        None => Arc::new(SystemClock),
    };
    let mut node = Node::open(config.city, store.clone(), bookings, clock)?.with_snapshotter(snapshotter);
    if !config.peers.is_empty() {
        let issuers = GrpcIssuers::new(config.city.slug, &config.peers, creds.clone())?;
        node = node.with_payments(Payments::new(Arc::new(issuers)));
    }
    let mut thesaurus_read = None;
    if !config.thesaurus.is_shipped() {
        let (t, stamps) = config.thesaurus.read()?;
        node.use_thesaurus(Arc::new(t)).await;
        thesaurus_read = Some(stamps);
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
    let thesaurus_watch = thesaurus_read.map(|seen| watch_thesaurus(config.thesaurus.clone(), node.clone(), seen));

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

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_serving::<NodeServer<NodeService>>().await;
    // With a health listener, the gRPC health service alone is served there in
    // plaintext, for orchestrator probes, which cannot present a certificate;
    // it stops when `probes` is dropped, after the drain.
    let probes = corridor_telemetry::spawn_health(health, health_service.clone());
    let (reflection_v1, reflection_v1alpha) = corridor_proto::reflection_services("corridor.v1.Node");

    let service = NodeServer::new(NodeService::new(node))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tls_incoming(listener, creds, config.accept);
    tracing::info!(city = config.city.slug, "node serving");
    let router = config
        .accept
        .server()
        // Outermost, so that every call is counted and traced, refusals
        // included, and every oversized message is answered the same way.
        .layer(RpcLayer(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let served = corridor_telemetry::serve_draining(shutdown, corridor_telemetry::DRAIN_BOUND, |stop| {
        Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
    })
    .await;
    drop(probes);
    recovery.abort();
    if let Some(w) = thesaurus_watch {
        w.abort();
    }
    // Flush even if serving failed: nothing acknowledged may be lost.
    store.flush()?;
    let drained = served.map_err(|e| NodeError::Serve(e.to_string()))?;
    tracing::info!(city = config.city.slug, drain_ms = drained.millis(), cut_off = drained.cut_off, "node stopped");
    Ok(())
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reads the thesaurus files again whenever they change, and re-indexes the
/// catalog with the new one. A file that does not load leaves the current
/// thesaurus in place, with a warning.
/// `seen` is the files' fingerprint when they were last read.
fn watch_thesaurus(files: ThesaurusFiles, node: Arc<Node>, mut seen: Vec<Option<u64>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if files.stamps() == seen {
                continue;
            }
            match files.read() {
                Ok((t, stamps)) => {
                    seen = stamps;
                    let concepts = t.len();
                    node.use_thesaurus(Arc::new(t)).await;
                    tracing::info!(city = node.city().slug, concepts, "thesaurus reloaded; catalog re-indexed");
                }
                Err(e) => {
                    seen = files.stamps();
                    tracing::warn!(error = %e, "thesaurus not reloaded; the current one stays");
                }
            }
        }
    })
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
    // Holds, bookings by state and voucher money come from one cached
    // pass over the store (see `gauges`), not one pass per series.
    let counts = Arc::new(crate::ops::gauges::Cached::default());
    let (n, c) = (node.clone(), counts.clone());
    metrics.gauge("corridor_open_holds", "bookings held and not yet confirmed", l(), move || {
        c.get(n.bookings()).bookings_in(crate::booking::State::Held) as f64
    });
    let (n, c, city_label) = (node.clone(), counts.clone(), city.to_string());
    metrics.gauges("corridor_bookings", "bookings by state (a hold past its expiry is expired)", move || {
        let counts = c.get(n.bookings());
        crate::ops::gauges::STATES
            .iter()
            .map(|s| {
                let labels =
                    vec![("city", city_label.clone()), ("state", crate::ops::gauges::state_label(*s).to_string())];
                (labels, counts.bookings_in(*s) as f64)
            })
            .collect()
    });
    let (n, c) = (node.clone(), counts);
    metrics.gauge(
        "corridor_voucher_held_fen",
        "money held on this city's vouchers (tried or confirmed, not yet posted), in fen",
        l(),
        move || c.get(n.bookings()).voucher_held_fen as f64,
    );
    let n = node.clone();
    metrics.gauge("corridor_instruments", "instruments in the city's inventory", l(), move || n.len() as f64);
    corridor_telemetry::cert_expiry_gauge(metrics, creds.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::{model::tests::sample, search::Query},
        kv::{inventory::MemStore, txn::MemKv},
    };

    const HEADER: &str = "id,parents,name_zh,name_en,zh,en,abbr\n";

    #[tokio::test(start_paused = true)]
    async fn a_local_synonym_takes_effect_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let synonyms = dir.path().join("synonyms.csv");
        std::fs::write(&synonyms, HEADER).unwrap();
        let node = Node::open(
            corridor_proto::cities::city_by_slug("hefei").unwrap(),
            Arc::new(MemStore::default()),
            Arc::new(MemKv::default()),
            Arc::new(SystemClock),
        )
        .unwrap();
        let mut tem = sample("tem-1");
        tem.name_zh = "透射电子显微镜".into();
        tem.name_en = "Transmission Electron Microscope".into();
        tem.description.clear();
        node.import(vec![(1, tem)]).await.unwrap();
        let files = ThesaurusFiles { replace: None, add: Some(synonyms.clone()) };
        let (t, seen) = files.read().unwrap();
        assert_eq!(
            t.analyze("赛默飞").concepts(),
            ["maker-thermo-fisher"],
            "a city's synonyms keep the shipped makers"
        );
        node.use_thesaurus(Arc::new(t)).await;
        let node = Arc::new(node);
        let q = Query { text: "透射镜".into(), limit: 5, ..Default::default() };
        assert_eq!(node.search(&q, None, None).total, 0, "no such word yet");

        let watch = watch_thesaurus(files, node.clone(), seen);
        // A local row adding a name to an existing concept, written while
        // the node runs.
        std::fs::write(&synonyms, format!("{HEADER}tem,,,,透射镜,,\n")).unwrap();
        let mut found = 0;
        for _ in 0..10 {
            tokio::time::advance(RELOAD_EVERY).await;
            tokio::task::yield_now().await;
            found = node.search(&q, None, None).total;
            if found > 0 {
                break;
            }
        }
        assert_eq!(found, 1, "the local synonym finds the instrument");

        // A broken file leaves the thesaurus in force.
        std::fs::write(&synonyms, "id,parents\nbroken\n").unwrap();
        for _ in 0..3 {
            tokio::time::advance(RELOAD_EVERY).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(node.search(&q, None, None).total, 1);
        watch.abort();
    }
}
