//! The node's ledger: immutable entries in one hash chain per node.
//!
//! Every entry carries the hash of the one before it, and its own hash over
//! its fields, so that an entry changed, removed or inserted anywhere in the
//! store breaks the chain. Entries are appended inside the same atomic step
//! as the change they record, so a change and its entry land together.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::{
    booking::time::Instant,
    error::Error,
    kv::{Kv, get_json, put_json, txn::Txn},
};

/// Key of the chain's head: the last entry's sequence number and hash.
pub const HEAD: &[u8] = b"lh";
/// Entries sort by sequence number under this prefix.
pub const PREFIX: &[u8] = b"l/";

pub fn key(seq: u64) -> Vec<u8> {
    format!("l/{seq:020}").into_bytes()
}

/// The hash that comes before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// Issuer: a voucher was issued.
    VoucherIssued { voucher: String, enterprise_uscc: String, holder: String, face_fen: i64 },
    /// Issuer: an amount is held for a provider's booking until `expires_at`.
    DebitPending {
        op: String,
        voucher: String,
        enterprise_uscc: String,
        amount_fen: i64,
        provider_city: String,
        expires_at: Instant,
    },
    /// Issuer: the provider committed the booking; the hold no longer expires.
    DebitConfirmed { op: String, voucher: String, amount_fen: i64 },
    /// Issuer: the voucher share of the actual fee is debited. The settlement
    /// entry on the issuer side.
    DebitPosted {
        op: String,
        voucher: String,
        enterprise_uscc: String,
        amount_fen: i64,
        provider_city: String,
        provider_institution: String,
        provider_uscc: String,
        service_at: Instant,
    },
    /// Issuer: the hold is released; nothing is debited.
    DebitVoided { op: String, voucher: String, amount_fen: i64, reason: String },
    /// Provider: a booking was completed. With a voucher, this is the
    /// settlement entry on the provider side.
    Service {
        booking: String,
        instrument: String,
        requester: String,
        institution: String,
        institution_uscc: String,
        minutes: u32,
        fee_fen: i64,
        redemption: Option<Redemption>,
    },
}

/// The voucher part of a completed booking, as the provider records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub op: String,
    pub voucher: String,
    pub issuer_city: String,
    pub amount_fen: i64,
}

/// The fields an entry's hash covers.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at: Instant,
    prev: &'a str,
    #[serde(flatten)]
    body: &'a Body,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: Instant,
    pub prev: String,
    #[serde(flatten)]
    pub body: Body,
    pub hash: String,
}

impl Entry {
    fn compute_hash(&self) -> String {
        let fields = Hashed { seq: self.seq, at: self.at, prev: &self.prev, body: &self.body };
        hex(digest(&SHA256, &serde_json::to_vec(&fields).expect("serialisable")).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain's last entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Head { seq: 0, hash: GENESIS.into() }
    }
}

/// Appends an entry inside the caller's atomic step. Every append reads and
/// writes the head, so concurrent steps serialise on it and the chain never
/// forks.
pub fn append(tx: &mut dyn Txn, at: Instant, body: Body) -> Result<Entry, Error> {
    let head: Head = get_json(tx, HEAD)?.unwrap_or_default();
    let mut entry = Entry { seq: head.seq + 1, at, prev: head.hash, body, hash: String::new() };
    entry.hash = entry.compute_hash();
    put_json(tx, &key(entry.seq), &entry)?;
    put_json(tx, HEAD, &Head { seq: entry.seq, hash: entry.hash.clone() })?;
    Ok(entry)
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {position}: not a ledger entry ({reason})")]
    Unreadable { position: u64, reason: String },
    #[error("entry {seq}: expected sequence number {expected} (an entry is missing or inserted)")]
    Gap { seq: u64, expected: u64 },
    #[error("entry {seq}: its hash does not match its contents (the entry was changed)")]
    Altered { seq: u64 },
    #[error("entry {seq}: it does not follow the previous entry's hash (an entry before it was changed or removed)")]
    Unlinked { seq: u64 },
    #[error("the chain ends at entry {last} but the node's head names entry {head} (entries were removed at the end)")]
    Truncated { last: u64, head: u64 },
    #[error("the chain's last hash does not match the node's head")]
    HeadMismatch,
}

/// Parses and verifies a whole chain, from its first entry, against the head
/// the node reports.
pub fn verify(raw: &[Vec<u8>], head: &Head) -> Result<Vec<Entry>, ChainError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut prev = GENESIS.to_string();
    for (i, bytes) in raw.iter().enumerate() {
        let expected = i as u64 + 1;
        let entry: Entry = serde_json::from_slice(bytes)
            .map_err(|e| ChainError::Unreadable { position: expected, reason: e.to_string() })?;
        if entry.seq != expected {
            return Err(ChainError::Gap { seq: entry.seq, expected });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainError::Altered { seq: entry.seq });
        }
        if entry.prev != prev {
            return Err(ChainError::Unlinked { seq: entry.seq });
        }
        prev = entry.hash.clone();
        out.push(entry);
    }
    let last = out.len() as u64;
    if last != head.seq {
        return Err(ChainError::Truncated { last, head: head.seq });
    }
    if prev != head.hash {
        return Err(ChainError::HeadMismatch);
    }
    Ok(out)
}

/// Up to `limit` entries after `after_seq`, as stored, and the chain's head.
pub fn page(kv: &Kv, after_seq: u64, limit: usize) -> Result<(Vec<Vec<u8>>, Head), Error> {
    let head: Head = kv.read_json(HEAD)?.unwrap_or_default();
    let mut out = Vec::new();
    for seq in after_seq + 1..=head.seq.min(after_seq + limit as u64) {
        // A missing entry is left out, for the reader's chain check to report.
        if let Some(bytes) = kv.get(&key(seq))? {
            out.push(bytes);
        }
    }
    Ok((out, head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::txn::{MemKv, TxnStore};

    fn chain(n: usize) -> (Vec<Vec<u8>>, Head) {
        let store = MemKv::default();
        for i in 0..n {
            store
                .atomically(&mut |tx| {
                    append(
                        tx,
                        1_000 + i as i64,
                        Body::DebitVoided {
                            op: format!("op-{i}"),
                            voucher: "wuhu/v-1".into(),
                            amount_fen: 5,
                            reason: "x".into(),
                        },
                    )
                    .map(|_| ())
                })
                .unwrap();
        }
        let head: Head = serde_json::from_slice(&store.get(HEAD).unwrap().unwrap()).unwrap();
        (store.scan(PREFIX).unwrap(), head)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (raw, head) = chain(5);
        let entries = verify(&raw, &head).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[4].hash, head.hash);
    }

    #[test]
    fn an_edited_amount_is_caught() {
        let (mut raw, head) = chain(5);
        raw[2] =
            String::from_utf8(raw[2].clone()).unwrap().replace("\"amount_fen\":5", "\"amount_fen\":6").into_bytes();
        assert_eq!(verify(&raw, &head).unwrap_err(), ChainError::Altered { seq: 3 });
    }

    #[test]
    fn a_rehashed_edit_breaks_the_link_to_the_next_entry() {
        let (mut raw, head) = chain(5);
        let mut e: Entry = serde_json::from_slice(&raw[1]).unwrap();
        e.body = Body::DebitVoided { op: "op-1".into(), voucher: "wuhu/v-1".into(), amount_fen: 1, reason: "x".into() };
        e.hash = e.compute_hash();
        raw[1] = serde_json::to_vec(&e).unwrap();
        assert_eq!(verify(&raw, &head).unwrap_err(), ChainError::Unlinked { seq: 3 });
    }

    #[tokio::test]
    async fn an_entry_edited_in_the_sled_store_is_caught() {
        use crate::{
            booking::{Actor, time::TokioClock},
            kv::txn::SledKv,
            money::voucher::{IssueVoucher, Mode, Terms, Vouchers},
        };
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let kv = Kv::new(std::sync::Arc::new(SledKv::open(&db, Default::default()).unwrap()));
        let engine = Vouchers::new("wuhu", kv.clone(), std::sync::Arc::new(TokioClock::starting_at(1_794_283_200)));
        let admin =
            Actor { uri: "spiffe://corridor/city/wuhu/admin".into(), admin: true, may_book: true, reader: false };
        for (i, face) in [(1, 500_000), (2, 700_000)] {
            let req = IssueVoucher {
                terms: Terms {
                    enterprise_uscc: crate::catalog::model::uscc_with_check("91340200MA2N00000").unwrap(),
                    enterprise_name: String::new(),
                    holder: "spiffe://corridor/org/demo".into(),
                    face_fen: face,
                    valid_from: "2026-01-01".into(),
                    valid_until: "2026-12-31".into(),
                    share_percent: 50,
                    per_use_cap_fen: 0,
                    annual_cap_fen: 0,
                    mode: Mode::ProviderRedeemed,
                    cities: vec![],
                },
                idempotency_key: format!("k{i}"),
            };
            engine.issue_voucher(&admin, req).await.unwrap();
        }
        let (raw, head) = page(&kv, 0, 100).unwrap();
        assert_eq!(verify(&raw, &head).unwrap().len(), 2);
        // Someone with access to the disk raises the first face value.
        let tree = db.open_tree("bookings").unwrap();
        let old = tree.get(key(1)).unwrap().unwrap();
        let edited = String::from_utf8(old.to_vec()).unwrap().replace("500000", "900000");
        tree.insert(key(1), edited.as_bytes()).unwrap();
        let (raw, head) = page(&kv, 0, 100).unwrap();
        assert_eq!(verify(&raw, &head).unwrap_err(), ChainError::Altered { seq: 1 });
    }

    #[test]
    fn removed_entries_are_caught_in_the_middle_and_at_the_end() {
        let (raw, head) = chain(5);
        let mut gap = raw.clone();
        gap.remove(1);
        assert_eq!(verify(&gap, &head).unwrap_err(), ChainError::Gap { seq: 3, expected: 2 });
        let mut short = raw;
        short.pop();
        assert_eq!(verify(&short, &head).unwrap_err(), ChainError::Truncated { last: 4, head: 5 });
    }
}
