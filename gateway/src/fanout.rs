//! One client per city, and the guard in front of each: a concurrency limit
//! and a circuit breaker.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use corridor_certs::{CertError, CredentialSource, Identity, reloading_channel};
use corridor_proto::{
    cities::{City, city_by_slug},
    node_client::NodeClient,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::{
    batch::Batcher,
    call::{MAX_MESSAGE_BYTES, NodeChannel},
    config::GatewayConfig,
    error::Refusal,
};

/// A city's node as the gateway sees it.
#[derive(Clone)]
pub struct CityClient {
    pub city: &'static City,
    pub endpoint: String,
    pub client: NodeClient<NodeChannel>,
    pub guard: Arc<Guard>,
    pub searches: Arc<Batcher<NodeClient<NodeChannel>>>,
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
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        {
            let mut b = self.breaker.lock().expect("poisoned");
            if let Some(until) = b.open_until {
                let now = Instant::now();
                if now < until {
                    return Err(Refusal::CircuitOpen { failures: b.failures, retry_in: until - now });
                }
                // Half-open: let this call probe; a failure reopens at once.
                b.open_until = None;
                b.failures = TRIP_AFTER - 1;
            }
        }
        self.in_flight.clone().try_acquire_owned().map_err(|_| Refusal::Shed { in_flight: MAX_IN_FLIGHT })
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
                    client: client.clone(),
                    guard: Arc::default(),
                    searches: Arc::new(Batcher::new(client.clone(), config.search_calls_in_flight)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_and_probes_after_a_pause() {
        let g = Guard::default();
        for _ in 0..TRIP_AFTER {
            let _p = g.admit().unwrap();
            g.record(false);
        }
        let err = g.admit().unwrap_err();
        assert_eq!(err, Refusal::CircuitOpen { failures: TRIP_AFTER, retry_in: OPEN_FOR });
        tokio::time::advance(OPEN_FOR).await;
        let _probe = g.admit().expect("half-open lets one call probe");
        g.record(false);
        assert!(g.admit().is_err(), "a failed probe reopens at once");
        tokio::time::advance(OPEN_FOR).await;
        let _probe = g.admit().unwrap();
        g.record(true);
        assert!(g.admit().is_ok());
    }
}
