//! The Corridor gateway: the public entry point. It fans search out to every
//! city node under one deadline, merges what comes back, and routes
//! per-instrument calls to the owning city. It keeps no state of its own.

mod batch;
mod call;
mod config;
mod error;
mod fanout;
mod server;
mod service;

pub use config::{ConfigError, GatewayConfig, NodeEndpoint};
pub use fanout::Cities;
pub use server::run;
pub use service::GatewayService;
