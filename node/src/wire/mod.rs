//! The gRPC adapter: the `corridor.v1.Node` service and who may call what
//! (`service`), between domain values and wire messages (`convert`), the one
//! place domain errors become statuses (`error`), the other nodes as voucher
//! issuers (`peers`), and the reconciler's pull of every ledger
//! (`reconciler`). tonic is used here and in `server`, nowhere else.

pub mod convert;
pub mod error;
pub mod peers;
pub mod reconciler;
pub mod service;
