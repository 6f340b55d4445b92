//! The node's audit log of admin changes: who changed what, when, and the
//! value before and after. Append-only: each entry is written in the same
//! step as the change it records (both land or neither does), numbered in
//! order, and never rewritten. A repeated request replays its first answer
//! without running its step, so it adds no second entry.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::Instant;
use crate::{
    error::Error,
    kv::{Kv, get_json, put_json, txn::Txn},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: Instant,
    /// The identity URI of the admin who made the change.
    pub actor: String,
    /// What was done: "set_rules", "grant", "revoke", "approve", "decline", "complete".
    pub action: String,
    /// What it was done to: an instrument id, "<instrument> <holder>", or a booking id.
    pub target: String,
    pub before: Value,
    pub after: Value,
}

const HEAD: &[u8] = b"au-head";
const PREFIX: &[u8] = b"au/";

fn key(seq: u64) -> Vec<u8> {
    [PREFIX, &seq.to_be_bytes()].concat()
}

/// Appends one entry inside the step that makes the change.
pub fn record(
    tx: &mut dyn Txn,
    at: Instant,
    actor: &str,
    action: &str,
    target: &str,
    before: Value,
    after: Value,
) -> Result<(), Error> {
    let seq = get_json::<u64>(tx, HEAD)?.unwrap_or(0) + 1;
    put_json(tx, HEAD, &seq)?;
    let entry = Entry { seq, at, actor: actor.into(), action: action.into(), target: target.into(), before, after };
    put_json(tx, &key(seq), &entry)
}

/// Up to `limit` entries after `after_seq` made at or after `since`, in
/// order, and whether more follow.
pub fn page(kv: &Kv, after_seq: u64, since: Instant, limit: usize) -> Result<(Vec<Entry>, bool), Error> {
    let mut out = Vec::new();
    let mut after = key(after_seq);
    loop {
        let batch = kv.scan_after(PREFIX, &after, limit + 1)?;
        let full = batch.len() == limit + 1;
        for (k, v) in &batch {
            let entry: Entry = crate::kv::decode(k, v)?;
            if entry.at >= since {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(entry);
            }
        }
        match batch.last() {
            Some((k, _)) if full => after = k.clone(),
            _ => return Ok((out, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::kv::txn::{MemKv, TxnStore};

    #[test]
    fn entries_come_in_order_from_a_time_and_a_place() {
        let kv = Kv::new(Arc::new(MemKv::default()) as Arc<dyn TxnStore>);
        for i in 0..7 {
            kv.run(|tx| record(tx, 100 + i, "admin", "grant", &format!("t{i}"), json!(false), json!(true))).unwrap();
        }
        let (all, more) = page(&kv, 0, 0, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
        assert!(!more);
        let (first, more) = page(&kv, 0, 0, 3).unwrap();
        assert_eq!((first.len(), more), (3, true));
        let (next, _) = page(&kv, first[2].seq, 0, 3).unwrap();
        assert_eq!(next[0].seq, 4);
        let (late, more) = page(&kv, 0, 104, 2).unwrap();
        assert_eq!((late.iter().map(|e| e.at).collect::<Vec<_>>(), more), (vec![104, 105], true));
    }
}
