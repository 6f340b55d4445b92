//! What operators run beside serving: the deterministic demo inventory,
//! backups (snapshot, verify, restore), and the gauges read at scrape time.

pub mod backup;
pub mod demo;
pub mod gauges;
