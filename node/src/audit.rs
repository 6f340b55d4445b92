//! The node's audit log of admin changes: who changed what, when, and the
//! value before and after. Append-only: each entry is written in the same
//! step as the change it records (both land or neither does), numbered in
//! order, and never rewritten. A repeated request replays its first answer
//! without running its step, so it adds no second entry.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Error,
    kv::{Kv, get_json, put_json, txn::Txn},
};

/// Unix seconds, as `booking::time::Instant` (named apart so that every
/// engine can audit without depending on another).
type Instant = i64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: Instant,
    /// The identity URI of the admin who made the change.
    pub actor: String,
    /// What was done: "set_rules", "grant", "revoke", "approve", "decline",
    /// "complete", "set_instrument", "import", "issue_voucher".
    pub action: String,
    /// What it was done to: an instrument id, "<instrument> <holder>", a
    /// booking or voucher id, or the city (an import).
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

/// The fields of two JSON objects that differ, as (before, after); a value
/// that is not an object (a record that did not exist yet) is kept whole.
pub fn diff(before: &Value, after: &Value) -> (Value, Value) {
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        return (before.clone(), after.clone());
    };
    let mut was = serde_json::Map::new();
    let mut now = serde_json::Map::new();
    for key in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
        let (old, new) = (b.get(key).unwrap_or(&Value::Null), a.get(key).unwrap_or(&Value::Null));
        if old != new {
            was.insert(key.clone(), old.clone());
            now.insert(key.clone(), new.clone());
        }
    }
    (Value::Object(was), Value::Object(now))
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
    fn a_diff_keeps_only_what_changed() {
        let (b, a) = diff(&json!({"x": 1, "y": "same", "z": [1]}), &json!({"x": 2, "y": "same", "w": true}));
        assert_eq!(b, json!({"x": 1, "z": [1], "w": null}));
        assert_eq!(a, json!({"x": 2, "z": null, "w": true}));
        assert_eq!(diff(&Value::Null, &json!({"x": 1})), (Value::Null, json!({"x": 1})));
    }

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
