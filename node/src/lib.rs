//! A Corridor city node: the single owner of one city's instrument inventory,
//! kept in sled and served over mutual TLS to the gateway and the city's admin.

pub mod backup;
pub mod booking;
pub mod catalog;
pub mod convert;
pub mod demo;
pub mod gauges;
pub mod import;
pub mod ledger;
pub mod model;
mod node;
pub mod payment;
mod peers;
pub mod reconcile;
pub mod search;
mod server;
mod service;
pub mod store;
pub mod voucher;

pub use node::{Node, NodeError};
pub use peers::parse_peers;
pub use server::{NodeConfig, ThesaurusFiles, run};
pub use service::NodeService;
