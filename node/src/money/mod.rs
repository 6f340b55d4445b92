//! Money: the hash-chained ledger, vouchers at their issuing city, the
//! payment state a provider keeps in each booking and the coordinator that
//! drives it, and the month's reconciliation. No gRPC here: issuers are
//! reached through the `coordinator::Issuers` trait, which `wire::peers`
//! implements.

pub mod coordinator;
pub mod ledger;
pub mod payment;
pub mod reconcile;
pub mod voucher;
