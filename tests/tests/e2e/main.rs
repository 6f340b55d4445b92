//! End-to-end tests over nine real nodes and a gateway on loopback mTLS.
//!
//! One test binary with a module per area, not one binary per file: each
//! binary links the whole stack, and six of them cost minutes of link time and
//! gigabytes of disk for nothing.

mod backup;
mod mesh;
mod metrics;
mod reservations;
mod rotation;
mod routing;
mod search;
mod trust;
mod vouchers;
