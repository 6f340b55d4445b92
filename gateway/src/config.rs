use std::{collections::HashSet, path::Path, time::Duration};

use corridor_proto::cities::city_by_slug;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message, not chained, so that it prints once.
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("gateway config: {0}")]
    Invalid(String),
}

/// Where one city's node listens.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeEndpoint {
    pub city: String,
    /// `https://host:port`
    pub endpoint: String,
}

/// The gateway's configuration file (TOML).
///
/// ```toml
/// default_deadline_ms = 1500
/// [[nodes]]
/// city = "hefei"
/// endpoint = "https://127.0.0.1:7450"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Budget for a call whose client sent no deadline.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Upper bound on any client's deadline.
    #[serde(default = "max_deadline_ms")]
    pub max_deadline_ms: u64,
    /// Time to open a connection to a node before calling it unavailable.
    #[serde(default = "connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Search calls in flight to one city at once; searches that arrive
    /// while all are busy go together in the next one. 2 suits nodes that
    /// share the gateway's host or LAN; raise it for nodes with more cores,
    /// or far away, where a queued search would wait a round trip for a
    /// free call.
    #[serde(default = "search_calls_in_flight")]
    pub search_calls_in_flight: usize,
    pub nodes: Vec<NodeEndpoint>,
    /// Handshake limits and the maximum connection age: from the command
    /// line (`gateway run --max-connection-age`), not the file.
    #[serde(skip)]
    pub accept: corridor_certs::TlsAcceptOptions,
}

fn default_deadline_ms() -> u64 {
    1_500
}
fn max_deadline_ms() -> u64 {
    30_000
}
fn connect_timeout_ms() -> u64 {
    1_000
}
fn search_calls_in_flight() -> usize {
    2
}

impl GatewayConfig {
    pub fn new(nodes: Vec<NodeEndpoint>) -> Self {
        GatewayConfig {
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: max_deadline_ms(),
            connect_timeout_ms: connect_timeout_ms(),
            search_calls_in_flight: search_calls_in_flight(),
            nodes,
            accept: Default::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: p.clone(), cause })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: p, message },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: GatewayConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<config>".into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Every city known, none twice, every endpoint https, sane deadlines.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("no [[nodes]]: the gateway needs at least one city".into()));
        }
        for n in &self.nodes {
            if city_by_slug(&n.city).is_none() {
                return Err(ConfigError::Invalid(format!("{:?} is not a corridor city", n.city)));
            }
            if !seen.insert(&n.city) {
                return Err(ConfigError::Invalid(format!("city {:?} is listed twice", n.city)));
            }
            if !n.endpoint.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "{}: endpoint {:?} must be https://host:port (every call is mutual TLS)",
                    n.city, n.endpoint
                )));
            }
        }
        if self.default_deadline_ms == 0 || self.default_deadline_ms > self.max_deadline_ms {
            return Err(ConfigError::Invalid("default_deadline_ms must be between 1 and max_deadline_ms".into()));
        }
        if !(1..=256).contains(&self.search_calls_in_flight) {
            return Err(ConfigError::Invalid("search_calls_in_flight must be between 1 and 256".into()));
        }
        Ok(())
    }

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    pub fn max_deadline(&self) -> Duration {
        Duration::from_millis(self.max_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = GatewayConfig::parse("[[nodes]]\ncity = \"hefei\"\nendpoint = \"https://127.0.0.1:7450\"\n").unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.default_deadline_ms, 1_500);
        for (text, expect) in [
            ("nodes = []", "no [[nodes]]"),
            ("[[nodes]]\ncity = \"atlantis\"\nendpoint = \"https://x:1\"", "not a corridor city"),
            ("[[nodes]]\ncity = \"hefei\"\nendpoint = \"http://x:1\"", "must be https"),
            (
                "[[nodes]]\ncity = \"hefei\"\nendpoint = \"https://x:1\"\n[[nodes]]\ncity = \"hefei\"\nendpoint = \"https://x:2\"",
                "listed twice",
            ),
            ("colour = 1\nnodes = []", "unknown field"),
            (
                "search_calls_in_flight = 0\n[[nodes]]\ncity = \"hefei\"\nendpoint = \"https://x:1\"",
                "search_calls_in_flight must be between 1 and 256",
            ),
        ] {
            let err = GatewayConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_kubernetes_config_is_valid() {
        let c = GatewayConfig::parse(include_str!("../../k8s/base/gateway/gateway.toml")).unwrap();
        assert_eq!((c.nodes.len(), c.search_calls_in_flight), (9, 8));
    }
}
