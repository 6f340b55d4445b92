//! Where a city's inventory lives. The node codes against [`Store`]; sled is
//! the real backend and [`MemStore`] the in-memory one, and one test suite runs
//! against both.

use std::{collections::BTreeMap, path::Path, sync::Mutex};

use crate::{
    catalog::model::{InstrumentRecord, StoredInstrument},
    error::StoreError,
};

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertSummary {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

pub trait Store: Send + Sync + 'static {
    fn get(&self, local_id: &str) -> Result<Option<StoredInstrument>, StoreError>;
    /// Every record, ordered by local id.
    fn all(&self) -> Result<Vec<StoredInstrument>, StoreError>;
    fn count(&self) -> Result<usize, StoreError>;
    /// Writes, in one atomic step, every record that differs from what is
    /// stored, stamping each with `now`. Records equal to the stored ones are
    /// left alone, so applying the same batch twice changes nothing the second
    /// time. Returns the counts and the records written. Durable on return.
    fn upsert(
        &self,
        records: &[InstrumentRecord],
        now: &str,
    ) -> Result<(UpsertSummary, Vec<StoredInstrument>), StoreError>;
}

/// Decides, record by record, what an upsert writes.
fn plan_upsert(
    records: &[InstrumentRecord],
    now: &str,
    mut existing: impl FnMut(&str) -> Result<Option<StoredInstrument>, StoreError>,
) -> Result<(UpsertSummary, Vec<StoredInstrument>), StoreError> {
    let mut summary = UpsertSummary::default();
    let mut writes = Vec::new();
    for record in records {
        match existing(&record.local_id)? {
            Some(old) if old.record == *record => summary.unchanged += 1,
            Some(_) => {
                summary.updated += 1;
                writes.push(StoredInstrument { record: record.clone(), updated_at: now.into() });
            }
            None => {
                summary.inserted += 1;
                writes.push(StoredInstrument { record: record.clone(), updated_at: now.into() });
            }
        }
    }
    Ok((summary, writes))
}

/// The in-memory backend, for unit tests and tools.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, StoredInstrument>>,
}

impl Store for MemStore {
    fn get(&self, local_id: &str) -> Result<Option<StoredInstrument>, StoreError> {
        Ok(self.map.lock().expect("poisoned").get(local_id).cloned())
    }

    fn all(&self) -> Result<Vec<StoredInstrument>, StoreError> {
        Ok(self.map.lock().expect("poisoned").values().cloned().collect())
    }

    fn count(&self) -> Result<usize, StoreError> {
        Ok(self.map.lock().expect("poisoned").len())
    }

    fn upsert(
        &self,
        records: &[InstrumentRecord],
        now: &str,
    ) -> Result<(UpsertSummary, Vec<StoredInstrument>), StoreError> {
        let mut map = self.map.lock().expect("poisoned");
        let (summary, writes) = plan_upsert(records, now, |id| Ok(map.get(id).cloned()))?;
        for w in &writes {
            map.insert(w.record.local_id.clone(), w.clone());
        }
        Ok((summary, writes))
    }
}

/// The sled backend: one database per city node.
pub struct SledStore {
    db: sled::Db,
    instruments: sled::Tree,
    /// Serialises upserts so that compare-then-write is atomic against other
    /// writers; the batch itself is applied atomically by sled.
    write: Mutex<()>,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<StoredInstrument, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. A directory held by another
    /// process is reported as [`StoreError::InUse`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| match &e {
            sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::InUse { path: dir.into() },
            _ => backend(e),
        })?;
        let instruments = db.open_tree("instruments").map_err(backend)?;
        Ok(SledStore { db, instruments, write: Mutex::new(()) })
    }

    /// The database, for the node's other trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

impl Store for SledStore {
    fn get(&self, local_id: &str) -> Result<Option<StoredInstrument>, StoreError> {
        match self.instruments.get(local_id).map_err(backend)? {
            Some(v) => Ok(Some(decode(local_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn all(&self) -> Result<Vec<StoredInstrument>, StoreError> {
        self.instruments
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn count(&self) -> Result<usize, StoreError> {
        Ok(self.instruments.len())
    }

    fn upsert(
        &self,
        records: &[InstrumentRecord],
        now: &str,
    ) -> Result<(UpsertSummary, Vec<StoredInstrument>), StoreError> {
        let _guard = self.write.lock().expect("poisoned");
        let (summary, writes) = plan_upsert(records, now, |id| self.get(id))?;
        if writes.is_empty() {
            return Ok((summary, writes));
        }
        let mut batch = sled::Batch::default();
        for w in &writes {
            let bytes = serde_json::to_vec(w).map_err(|e| StoreError::Backend(e.to_string()))?;
            batch.insert(w.record.local_id.as_bytes(), bytes);
        }
        self.instruments.apply_batch(batch).map_err(backend)?;
        // Acknowledge nothing that is not on disk.
        self.flush()?;
        Ok((summary, writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::tests::sample;

    /// The contract every backend keeps.
    fn suite(store: &dyn Store) {
        assert_eq!(store.count().unwrap(), 0);
        assert!(store.get("a").unwrap().is_none());

        let (s, written) = store.upsert(&[sample("b"), sample("a")], "t1").unwrap();
        assert_eq!(s, UpsertSummary { inserted: 2, updated: 0, unchanged: 0 });
        assert_eq!(written.len(), 2);
        assert_eq!(store.count().unwrap(), 2);

        // The same batch again is a no-op, timestamps included.
        let (s, written) = store.upsert(&[sample("b"), sample("a")], "t2").unwrap();
        assert_eq!(s, UpsertSummary { inserted: 0, updated: 0, unchanged: 2 });
        assert!(written.is_empty());
        assert_eq!(store.get("a").unwrap().unwrap().updated_at, "t1");

        let mut changed = sample("a");
        changed.room = "202".into();
        let (s, _) = store.upsert(&[changed.clone(), sample("c")], "t3").unwrap();
        assert_eq!(s, UpsertSummary { inserted: 1, updated: 1, unchanged: 0 });
        let got = store.get("a").unwrap().unwrap();
        assert_eq!(got.record, changed);
        assert_eq!(got.updated_at, "t3");

        let ids: Vec<String> = store.all().unwrap().into_iter().map(|s| s.record.local_id).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
    }

    #[test]
    fn mem_store_keeps_the_contract() {
        suite(&MemStore::default());
    }

    #[test]
    fn sled_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        suite(&SledStore::open(dir.path()).unwrap());
    }

    #[test]
    fn sled_store_survives_reopen_and_refuses_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.upsert(&[sample("a")], "t1").unwrap();
            let err = SledStore::open(dir.path()).err().expect("second open must fail");
            assert!(matches!(err, StoreError::InUse { .. }), "{err}");
            assert!(err.to_string().contains("already in use"));
        }
        // sled's flusher thread lets go of the lock a moment after the last
        // handle is dropped: wait for that, not for a fixed time.
        let reopened = (0..500).find_map(|_| match SledStore::open(dir.path()) {
            Err(StoreError::InUse { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            }
            other => Some(other),
        });
        let store = reopened.expect("the lock is released").unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().record, sample("a"));
    }
}
