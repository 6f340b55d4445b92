//! Where bookings, vouchers and the ledger live: one ordered key space per
//! node, written only through atomic steps. `SledKv` is the real backend
//! (steps in turn, each landing behind an intent record, durable through
//! group commit); `MemKv` is the in-memory twin, and the engines' tests run
//! against both.

use std::{
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

/// A write: the key, and its new value (`None` removes it).
type Write = (Vec<u8>, Option<Vec<u8>>);

/// A step's writes, in key order.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

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
    writes: Writes,
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

/// The sled backend: one tree, steps taken in turn, and a group commit
/// thread for durability.
///
/// A step does not use a sled transaction. In sled 0.34.7 every transaction
/// (and every batch) seals the log's IO buffer twice (`pin_log`), and each
/// sealed buffer is written and `sync_file_range`d on its own: two disk
/// writes per step, whatever the group commit does, and most of a node's CPU
/// under booking load. Instead steps run one at a time (they are short and
/// never wait), read the tree through their own writes, and land as plain
/// inserts behind an intent record: one key holding the whole write-set,
/// written first and removed last. sled recovers a prefix of its log, so after
/// a crash a step is absent, whole, or has its intent record, which
/// [`SledKv::open`] replays.
pub struct SledKv {
    tree: sled::Tree,
    db: sled::Db,
    flusher: Mutex<mpsc::Sender<oneshot::Sender<Result<(), StoreError>>>>,
    /// Held shared by every step, and exclusively by a backup, so that a
    /// backup sees whole steps only.
    gate: Arc<std::sync::RwLock<()>>,
    /// Held exclusively by a step while it runs and lands, and shared by
    /// single reads and pages outside steps, so that they never see half a
    /// step.
    turn: std::sync::RwLock<()>,
}

/// The intent record's key. Steps land one at a time, so one key serves; it
/// sorts before every other key and is no prefix of any.
const INTENT: &[u8] = b"\0intent";

/// A write-set as one value: for each write, the key's length (u32 LE), the
/// key, then 0 for a removal or 1, the value's length (u32 LE) and the value.
fn encode_writes(writes: &Writes) -> Vec<u8> {
    let size: usize = writes.iter().map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len)).sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in writes {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

fn decode_writes(mut bytes: &[u8]) -> Option<Vec<Write>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = len(&mut bytes)?;
        let key = take(&mut bytes, n)?.to_vec();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut bytes)?;
                Some(take(&mut bytes, n)?.to_vec())
            }
            _ => return None,
        };
        out.push((key, value));
    }
    Some(out)
}

/// A step's view: the tree as it stands, through the step's own writes.
struct SledTxn<'a> {
    tree: &'a sled::Tree,
    db: &'a sled::Db,
    writes: Writes,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Txn for SledTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key).map_err(backend)?.map(|v| v.to_vec())),
        }
    }
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), Some(value));
        Ok(())
    }
    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
    fn next_id(&mut self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(backend)
    }
}

/// Lands a write-set with plain inserts and removals.
fn apply(tree: &sled::Tree, writes: impl IntoIterator<Item = Write>) -> Result<(), StoreError> {
    for (k, v) in writes {
        match v {
            Some(v) => tree.insert(k, v).map_err(backend)?,
            None => tree.remove(k).map_err(backend)?,
        };
    }
    Ok(())
}

/// Lands the rest of a step whose intent record is still there (a crash, or
/// a panic, cut it short); true if there was one.
fn finish_step(tree: &sled::Tree) -> Result<bool, StoreError> {
    let Some(value) = tree.get(INTENT).map_err(backend)? else { return Ok(false) };
    let writes = decode_writes(&value).ok_or_else(|| StoreError::Corrupt {
        key: String::from_utf8_lossy(INTENT).into(),
        reason: "an unreadable intent record".into(),
    })?;
    apply(tree, writes)?;
    tree.remove(INTENT).map_err(backend)?;
    Ok(true)
}

impl SledKv {
    /// Opens the bookings tree, first finishing any step a crash cut short.
    pub fn open(db: &sled::Db, gate: Arc<std::sync::RwLock<()>>) -> Result<Self, StoreError> {
        let tree = db.open_tree("bookings").map_err(backend)?;
        if finish_step(&tree)? {
            db.flush().map_err(backend)?;
        }
        let (tx, rx) = mpsc::channel::<oneshot::Sender<Result<(), StoreError>>>();
        let flush_db = db.clone();
        // Group commit: one thread flushes, and every waiter that registered
        // before the flush began is answered by it. Concurrent flush_async
        // calls deadlock in sled 0.34.7, so nothing else flushes bookings.
        std::thread::Builder::new()
            .name("bookings-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result =
                        flush_db.flush().map(|_| ()).map_err(|e| StoreError::Backend(format!("flush failed: {e}")));
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the flush thread: {e}")))?;
        Ok(SledKv { tree, db: db.clone(), flusher: Mutex::new(tx), gate, turn: Default::default() })
    }
}

impl TxnStore for SledKv {
    fn atomically(&self, step: &mut Step<'_>) -> Result<(), Error> {
        let _shared = self.gate.read().expect("poisoned");
        // A step that panicked (a bug) poisons the turn. Its writes were only
        // buffered, unless it panicked while landing; then its intent record
        // is still there and is finished here, before anything else runs.
        let _turn = match self.turn.write() {
            Ok(turn) => turn,
            Err(poisoned) => {
                let turn = poisoned.into_inner();
                finish_step(&self.tree)?;
                self.turn.clear_poison();
                turn
            }
        };
        let mut txn = SledTxn { tree: &self.tree, db: &self.db, writes: BTreeMap::new() };
        step(&mut txn)?;
        let writes = txn.writes;
        if writes.len() <= 1 {
            // One key lands whole on its own.
            return Ok(apply(&self.tree, writes)?);
        }
        self.tree.insert(INTENT, encode_writes(&writes)).map_err(backend)?;
        apply(&self.tree, writes)?;
        self.tree.remove(INTENT).map_err(backend)?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _turn = self.turn.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.tree.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    /// Does not wait for steps: a whole-prefix scan can be long, and steps
    /// must not queue behind it. Each key is seen whole, as it stood at some
    /// moment of the scan (as a scan beside sled transactions saw it).
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree.scan_prefix(prefix).map(|kv| kv.map(|(_, v)| v.to_vec()).map_err(backend)).collect()
    }

    fn scan_after(&self, prefix: &[u8], after: &[u8], n: usize) -> Result<Vec<Pair>, StoreError> {
        use std::ops::Bound;
        let _turn = self.turn.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for kv in self.tree.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)) {
            let (k, v) = kv.map_err(backend)?;
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

    #[test]
    fn a_write_set_survives_its_encoding() {
        let writes: Writes = [
            (b"a".to_vec(), Some(b"1".to_vec())),
            (b"b".to_vec(), None),
            (b"c".to_vec(), Some(Vec::new())),
            (vec![0, 255], Some(vec![7; 300])),
        ]
        .into();
        let bytes = encode_writes(&writes);
        assert_eq!(decode_writes(&bytes).unwrap(), writes.into_iter().collect::<Vec<_>>());
        // A cut record is refused, not half read.
        assert_eq!(decode_writes(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_writes(&[9, 0, 0, 0]), None);
    }

    /// A crash after a step's intent record and part of its writes: opening
    /// the store again lands the rest, and the record is gone.
    #[test]
    fn opening_finishes_a_step_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("bookings").unwrap();
            tree.insert(b"gone", b"x".to_vec()).unwrap();
            let writes: BTreeMap<_, _> = [
                (b"first".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), None),
                (b"second".to_vec(), Some(b"2".to_vec())),
            ]
            .into();
            tree.insert(INTENT, encode_writes(&writes)).unwrap();
            tree.insert(b"first", b"1".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let kv = SledKv::open(&db, Default::default()).unwrap();
        assert_eq!(kv.get(b"first").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"second").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get(b"gone").unwrap(), None);
        assert_eq!(kv.get(INTENT).unwrap(), None);
    }

    /// A step that panics leaves nothing behind, and the store goes on.
    #[test]
    fn a_panicking_step_does_not_stop_the_store() {
        for (name, store, _dir) in backends().into_iter().filter(|(name, ..)| *name == "sled") {
            let store2 = store.clone();
            std::thread::spawn(move || {
                store2.atomically(&mut |tx| {
                    tx.put(b"k", b"v".to_vec())?;
                    panic!("a bug in a step");
                })
            })
            .join()
            .unwrap_err();
            assert_eq!(store.get(b"k").unwrap(), None, "{name}");
            store.atomically(&mut |tx| Ok(tx.put(b"k", b"w".to_vec())?)).unwrap();
            assert_eq!(store.get(b"k").unwrap(), Some(b"w".to_vec()), "{name}");
        }
    }

    /// A step that fails leaves nothing behind, and a step reads its own
    /// writes.
    #[test]
    fn a_failed_step_writes_nothing() {
        for (name, store, _dir) in backends() {
            store
                .atomically(&mut |tx| {
                    tx.put(b"k", b"v".to_vec())?;
                    assert_eq!(tx.get(b"k")?, Some(b"v".to_vec()), "{name}");
                    tx.put(b"other", b"w".to_vec())?;
                    Err(Error::Invalid("refused".into()))
                })
                .unwrap_err();
            assert_eq!(store.get(b"k").unwrap(), None, "{name}");
            assert_eq!(store.get(b"other").unwrap(), None, "{name}");
        }
    }

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
