//! One client per city, and the deadline arithmetic of a fan-out.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use corridor_certs::{CertError, CredentialSource, Identity, reloading_channel};
use corridor_proto::{
    NodeState,
    cities::{City, city_by_slug},
    node_client::NodeClient,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::{Code, Request, Status, transport::Channel};

use crate::{GatewayConfig, batch::Batcher, server::MAX_MESSAGE_BYTES};

/// A channel to a node whose calls record their status on their call span.
pub type NodeChannel = corridor_telemetry::ClientService<Channel>;

/// A city's node as the gateway sees it.
#[derive(Clone)]
pub struct CityClient {
    pub city: &'static City,
    pub endpoint: String,
    pub client: NodeClient<NodeChannel>,
    pub guard: Arc<Guard>,
    pub searches: Arc<Batcher>,
}

/// Calls to one city in flight at once; more are shed at once.
const MAX_IN_FLIGHT: usize = 256;
/// Consecutive failures that open the circuit.
const TRIP_AFTER: u32 = 5;
/// How long an open circuit refuses calls before letting one probe through.
const OPEN_FOR: Duration = Duration::from_secs(2);

/// Protects the budget of every call from one sick city: a concurrency
/// limit with load shedding, and a circuit breaker that answers UNAVAILABLE
/// at once while the city keeps failing.
pub struct Guard {
    in_flight: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), breaker: Mutex::default() }
    }
}

impl Guard {
    /// A permit to call the city, or why not.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, String> {
        {
            let mut b = self.breaker.lock().expect("poisoned");
            if let Some(until) = b.open_until {
                let now = Instant::now();
                if now < until {
                    return Err(format!(
                        "circuit open after {} failures in a row; next try in {} ms",
                        b.failures,
                        (until - now).as_millis()
                    ));
                }
                // Half-open: let this call probe; a failure reopens at once.
                b.open_until = None;
                b.failures = TRIP_AFTER - 1;
            }
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("load shed: {MAX_IN_FLIGHT} calls already in flight"))
    }

    pub fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().expect("poisoned");
        if ok {
            b.failures = 0;
            b.open_until = None;
        } else {
            b.failures += 1;
            if b.failures >= TRIP_AFTER {
                b.open_until = Some(Instant::now() + OPEN_FOR);
            }
        }
    }
}

/// The configured cities, in corridor order. One HTTP/2 connection per city,
/// opened lazily and re-opened after failures; the server must prove it is
/// that city's node.
#[derive(Clone)]
pub struct Cities {
    by_slug: BTreeMap<&'static str, CityClient>,
    order: Vec<&'static str>,
}

impl Cities {
    pub fn connect(config: &GatewayConfig, creds: &Arc<CredentialSource>) -> Result<Self, CertError> {
        let mut by_slug = BTreeMap::new();
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        for n in &config.nodes {
            let city = city_by_slug(&n.city).expect("validated config");
            let channel =
                reloading_channel(&n.endpoint, creds.clone(), Some(Identity::Node(n.city.clone())), connect_timeout)?;
            let client = NodeClient::new(corridor_telemetry::ClientService::new(channel))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            by_slug.insert(
                city.slug,
                CityClient {
                    city,
                    endpoint: n.endpoint.clone(),
                    client,
                    guard: Arc::default(),
                    searches: Arc::new(Batcher::new(config.search_calls_in_flight)),
                },
            );
        }
        let order = corridor_proto::cities::CITIES.iter().map(|c| c.slug).filter(|s| by_slug.contains_key(s)).collect();
        Ok(Cities { by_slug, order })
    }

    pub fn get(&self, slug: &str) -> Option<&CityClient> {
        self.by_slug.get(slug)
    }

    /// Every configured city, in corridor order.
    pub fn all(&self) -> impl Iterator<Item = &CityClient> {
        self.order.iter().map(|s| &self.by_slug[s])
    }
}

impl CityClient {
    /// The span of one call to this city; the node's server span joins it.
    pub fn call_span(&self) -> tracing::Span {
        corridor_telemetry::client_span(&format!("gateway.call.{}", self.city.slug), self.city.slug)
    }
}

/// A call to a node: `msg`, with `budget` sent on as `grpc-timeout` and
/// `span`'s trace context, which the node's span joins; the call's status
/// is recorded on `span`.
pub fn node_request<T>(msg: T, budget: Duration, span: &tracing::Span) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(budget);
    corridor_telemetry::client_request(&mut req, span);
    req
}

/// Why a node call that ran out of `budget` failed.
pub fn no_answer(budget: Duration) -> String {
    format!("no answer within {} ms", budget.as_millis())
}

/// The budget a client gave us in `grpc-timeout`, if any.
pub use corridor_proto::limits::grpc_timeout as client_deadline;

/// The budget for node calls: the client's deadline (bounded), minus a margin
/// so that the merged answer still reaches the client in time.
pub fn node_budget(client: Option<Duration>, default: Duration, max: Duration) -> Duration {
    let total = client.unwrap_or(default).min(max);
    let margin = (total / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    total.saturating_sub(margin)
}

/// How a failed node call is reported.
pub fn classify(status: &Status) -> NodeState {
    match status.code() {
        Code::Unavailable => NodeState::Unavailable,
        // A connection that breaks under a call (the node was killed) comes
        // back as Unknown, or as Cancelled ("operation was canceled"), with
        // the transport's error inside: the node is gone, not slow.
        Code::Unknown | Code::Cancelled if broken_connection(status) => NodeState::Unavailable,
        // tonic answers Cancelled when a server-side deadline expires.
        Code::DeadlineExceeded | Code::Cancelled => NodeState::Timeout,
        _ => NodeState::Error,
    }
}

fn broken_connection(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    let m = status.message();
    ["transport error", "h2 protocol error", "connection", "broken pipe", "operation was canceled"]
        .iter()
        .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_unavailable_not_an_error() {
        assert_eq!(classify(&Status::unknown("transport error")), NodeState::Unavailable);
        assert_eq!(classify(&Status::unknown("h2 protocol error: stream reset")), NodeState::Unavailable);
        assert_eq!(classify(&Status::unknown("the handler panicked")), NodeState::Error);
        assert_eq!(classify(&Status::internal("transport error")), NodeState::Error);
        // A node killed under a call: hyper's cancellation, not a deadline.
        assert_eq!(classify(&Status::cancelled("operation was canceled: connection closed")), NodeState::Unavailable);
        // The node's own deadline ran out.
        assert_eq!(classify(&Status::cancelled("Timeout expired")), NodeState::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_and_probes_after_a_pause() {
        let g = Guard::default();
        for _ in 0..TRIP_AFTER {
            let _p = g.admit().unwrap();
            g.record(false);
        }
        let err = g.admit().unwrap_err();
        assert!(err.contains("circuit open"), "{err}");
        tokio::time::advance(OPEN_FOR).await;
        let _probe = g.admit().expect("half-open lets one call probe");
        g.record(false);
        assert!(g.admit().is_err(), "a failed probe reopens at once");
        tokio::time::advance(OPEN_FOR).await;
        let _probe = g.admit().unwrap();
        g.record(true);
        assert!(g.admit().is_ok());
    }

    #[test]
    fn budget_leaves_a_margin_and_respects_the_cap() {
        let d = Duration::from_millis;
        assert_eq!(node_budget(Some(d(1000)), d(1500), d(30_000)), d(950));
        assert_eq!(node_budget(None, d(1500), d(30_000)), d(1450));
        assert_eq!(node_budget(Some(d(60_000)), d(1500), d(30_000)), d(29_950));
    }
}
