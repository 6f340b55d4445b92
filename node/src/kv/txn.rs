//! Where bookings, vouchers and the ledger live: one ordered key space per
//! node, written only through atomic steps. `SledKv` is the real backend (a
//! sled transaction per step, durable through group commit); `MemKv` is the
//! in-memory twin, and the engines' tests run against both.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    sync::{Arc, Mutex, mpsc},
};

use tokio::sync::oneshot;

use crate::error::{Error, StoreError};

/// Reads and writes inside one atomic step.
pub trait Txn {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// A number never handed out before, even across restarts.
    fn next_id(&mut self) -> Result<u64, StoreError>;
}

/// A stored key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The function an atomic step runs. It may run more than once (after a
/// conflict), so it must have no effects beyond its writes and its output.
pub type Step<'a> = dyn FnMut(&mut dyn Txn) -> Result<(), Error> + 'a;

pub trait TxnStore: Send + Sync + 'static {
    /// Runs `step` atomically: it sees one consistent state, and its writes
    /// all land or none do. Not yet durable: see [`TxnStore::durable`].
    fn atomically(&self, step: &mut Step<'_>) -> Result<(), Error>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Up to `n` (key, value) pairs under `prefix` whose key is after
    /// `after`, in key order.
    fn scan_after(&self, prefix: &[u8], after: &[u8], n: usize) -> Result<Vec<Pair>, StoreError>;
    /// Resolves once everything written before the call is on disk. Many
    /// callers share one flush.
    fn durable(&self) -> oneshot::Receiver<Result<(), StoreError>>;
}

/// The in-memory backend.
#[derive(Default)]
pub struct MemKv {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    next: u64,
}

struct MemTxn<'a> {
    base: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    next: u64,
}

impl Txn for MemTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match self.writes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key).cloned(),
        })
    }
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), Some(value));
        Ok(())
    }
    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
    /// From 0, like sled's `generate_id`.
    fn next_id(&mut self) -> Result<u64, StoreError> {
        self.next += 1;
        Ok(self.next - 1)
    }
}

impl TxnStore for MemKv {
    fn atomically(&self, step: &mut Step<'_>) -> Result<(), Error> {
        let mut state = self.state.lock().expect("poisoned");
        let mut txn = MemTxn { base: &state.map, writes: BTreeMap::new(), next: state.next };
        step(&mut txn)?;
        let (writes, next) = (txn.writes, txn.next);
        for (k, v) in writes {
            match v {
                Some(v) => state.map.insert(k, v),
                None => state.map.remove(&k),
            };
        }
        state.next = next;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.lock().expect("poisoned").map.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let state = self.state.lock().expect("poisoned");
        Ok(state
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn scan_after(&self, prefix: &[u8], after: &[u8], n: usize) -> Result<Vec<Pair>, StoreError> {
        use std::ops::Bound;
        let state = self.state.lock().expect("poisoned");
        Ok(state
            .map
            .range::<[u8], _>((Bound::Excluded(after), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(n)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn durable(&self) -> oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }
}

/// The sled backend: one tree, one sled transaction per step, and a group
/// commit thread for durability.
pub struct SledKv {
    tree: sled::Tree,
    flusher: Mutex<mpsc::Sender<oneshot::Sender<Result<(), StoreError>>>>,
    /// Held shared by every step, and exclusively by a backup, so that a
    /// backup sees whole steps only.
    gate: Arc<std::sync::RwLock<()>>,
}

struct SledTxn<'a> {
    tx: &'a sled::transaction::TransactionalTree,
    /// A conflict seen by a read or write, handed back to sled so that it
    /// retries the step.
    conflict: Option<sled::transaction::UnabortableTransactionError>,
}

impl SledTxn<'_> {
    fn note<T>(&mut self, r: Result<T, sled::transaction::UnabortableTransactionError>) -> Result<T, StoreError> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.conflict = Some(e);
            StoreError::Backend(msg)
        })
    }
}

impl Txn for SledTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.tx.get(key);
        Ok(self.note(r)?.map(|v| v.to_vec()))
    }
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let r = self.tx.insert(key, value);
        self.note(r).map(|_| ())
    }
    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let r = self.tx.remove(key);
        self.note(r).map(|_| ())
    }
    fn next_id(&mut self) -> Result<u64, StoreError> {
        self.tx.generate_id().map_err(|e| StoreError::Backend(e.to_string()))
    }
}

impl SledKv {
    pub fn open(db: &sled::Db, gate: Arc<std::sync::RwLock<()>>) -> Result<Self, StoreError> {
        let tree = db.open_tree("bookings").map_err(|e| StoreError::Backend(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<oneshot::Sender<Result<(), StoreError>>>();
        let db = db.clone();
        // Group commit: one thread flushes, and every waiter that registered
        // before the flush began is answered by it. Concurrent flush_async
        // calls deadlock in sled 0.34.7, so nothing else flushes bookings.
        std::thread::Builder::new()
            .name("bookings-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = db.flush().map(|_| ()).map_err(|e| StoreError::Backend(format!("flush failed: {e}")));
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the flush thread: {e}")))?;
        Ok(SledKv { tree, flusher: Mutex::new(tx), gate })
    }
}

impl TxnStore for SledKv {
    fn atomically(&self, step: &mut Step<'_>) -> Result<(), Error> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let _shared = self.gate.read().expect("poisoned");
        let step = RefCell::new(step);
        let result = self.tree.transaction(|tx| {
            let mut txn = SledTxn { tx, conflict: None };
            let r = (step.borrow_mut())(&mut txn);
            if let Some(conflict) = txn.conflict.take() {
                return Err(conflict.into());
            }
            r.map_err(ConflictableTransactionError::Abort)
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(Error::Store(StoreError::Backend(e.to_string()))),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(|e| StoreError::Backend(e.to_string()))?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| kv.map(|(_, v)| v.to_vec()).map_err(|e| StoreError::Backend(e.to_string())))
            .collect()
    }

    fn scan_after(&self, prefix: &[u8], after: &[u8], n: usize) -> Result<Vec<Pair>, StoreError> {
        use std::ops::Bound;
        let mut out = Vec::new();
        for kv in self.tree.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)) {
            let (k, v) = kv.map_err(|e| StoreError::Backend(e.to_string()))?;
            if !k.starts_with(prefix) || out.len() == n {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn durable(&self) -> oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(tx)) = self.flusher.lock().expect("poisoned").send(tx) {
            let _ = tx.send(Err(StoreError::Backend("the flush thread has stopped".into())));
        }
        rx
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Both backends, for suites that run against each: the in-memory one,
    /// and sled in a temporary directory (kept alive by the returned guard).
    pub(crate) fn backends() -> Vec<(&'static str, Arc<dyn TxnStore>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        vec![
            ("mem", Arc::new(MemKv::default()) as Arc<dyn TxnStore>, None),
            ("sled", Arc::new(SledKv::open(&db, Default::default()).unwrap()), Some(dir)),
        ]
    }
}
