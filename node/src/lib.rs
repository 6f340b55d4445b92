//! A Corridor city node: the single owner of one city's instrument inventory,
//! kept in sled and served over mutual TLS to the gateway and the city's admin.
//!
//! Layers, each importing only those before it: `error` (domain errors and
//! their codes); `kv` (the stores and the transaction kernel); `catalog` (the
//! records, their import, the search index); `booking` (calendars and
//! reservations); `money` (ledger, vouchers, payments, reconciliation);
//! `node` (the core that ties them); `ops` (demo data, backups, gauges);
//! `wire` (gRPC: the service, conversions, the one error mapping, peers);
//! `server` (open, serve, stop).

pub mod audit;
pub mod booking;
pub mod catalog;
pub mod error;
pub mod kv;
pub mod money;
mod node;
pub mod ops;
mod server;
pub mod wire;

pub use node::{Node, NodeError};
pub use server::{NodeConfig, ThesaurusFiles, run};
pub use wire::{peers::parse_peers, service::NodeService};
