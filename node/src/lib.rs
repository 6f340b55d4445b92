//! A Corridor city node: the single owner of one city's instrument inventory,
//! kept in sled and served over mutual TLS to the gateway and the city's admin.

pub mod backup;
pub mod booking;
pub mod catalog;
pub mod convert;
pub mod demo;
pub mod import;
pub mod model;
mod node;
pub mod search;
mod server;
mod service;
pub mod store;

pub use node::{Node, NodeError};
pub use server::{NodeConfig, run};
pub use service::NodeService;
