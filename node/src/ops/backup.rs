//! Backups of a node's sled data: a consistent snapshot of every tree, taken
//! while the node serves, with a SHA-256 over the whole file; and restore,
//! which checks the file before writing anything.
//!
//! Format, one JSON object a line: a header `{"corridor_backup":1,"city":…}`,
//! then `{"tree":hex,"k":hex,"v":hex}` for every entry of every tree, then a
//! trailer `{"entries":n,"sha256":hex}` over every byte before it.

use std::path::Path;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Serialize, Deserialize)]
struct Header {
    corridor_backup: u32,
    city: String,
    taken_at: String,
}

#[derive(Serialize, Deserialize)]
struct Record {
    tree: String,
    k: String,
    v: String,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    entries: u64,
    sha256: String,
}

/// Everything in `db`, as backup bytes. The caller holds every writer off.
pub fn snapshot(db: &sled::Db, city: &str, taken_at: &str) -> Result<Vec<u8>, StoreError> {
    let backend = |e: sled::Error| StoreError::Backend(e.to_string());
    let mut out = Vec::new();
    let header = Header { corridor_backup: 1, city: city.into(), taken_at: taken_at.into() };
    out.extend(serde_json::to_vec(&header).expect("serialisable"));
    out.push(b'\n');
    let mut entries = 0u64;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).map_err(backend)?;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(backend)?;
            let rec = Record { tree: hex(&name), k: hex(&k), v: hex(&v) };
            out.extend(serde_json::to_vec(&rec).expect("serialisable"));
            out.push(b'\n');
            entries += 1;
        }
    }
    let mut ctx = Context::new(&SHA256);
    ctx.update(&out);
    let trailer = Trailer { entries, sha256: hex(ctx.finish().as_ref()) };
    out.extend(serde_json::to_vec(&trailer).expect("serialisable"));
    out.push(b'\n');
    Ok(out)
}

/// What a verified backup holds.
#[derive(Debug)]
pub struct Verified {
    pub city: String,
    pub taken_at: String,
    entries: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl Verified {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (tree, key, value) for every entry, in file order.
    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>, Vec<u8>)] {
        &self.entries
    }
}

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a whole corridor backup: damaged, truncated, or
    /// something else.
    #[error("{0}")]
    Damaged(String),
    /// A format this build does not read.
    #[error("backup format {0} is not supported (this build reads 1)")]
    Unsupported(u32),
    /// The target directory already holds data.
    #[error("{0} is not empty; restore into a new directory")]
    NotEmpty(String),
    /// The target directory could not be written.
    #[error("writing the restored store failed: {0}")]
    Io(String),
}

/// Checks a backup's format, checksum and entry count.
pub fn verify(bytes: &[u8]) -> Result<Verified, BackupError> {
    let damaged = |m: String| BackupError::Damaged(m);
    let body_end = bytes[..bytes.len().saturating_sub(1)]
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .ok_or_else(|| damaged("not a corridor backup: no trailer".into()))?;
    let (body, trailer) = bytes.split_at(body_end);
    let trailer: Trailer = serde_json::from_slice(trailer.trim_ascii_end())
        .map_err(|e| damaged(format!("not a corridor backup: unreadable trailer ({e}); the file may be truncated")))?;
    let mut ctx = Context::new(&SHA256);
    ctx.update(body);
    let actual = hex(ctx.finish().as_ref());
    if actual != trailer.sha256 {
        return Err(damaged(format!(
            "checksum mismatch: the file says {}, its content hashes to {actual}; the backup is damaged",
            trailer.sha256
        )));
    }
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let header: Header = lines
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .ok_or_else(|| damaged("not a corridor backup: no header".into()))?;
    if header.corridor_backup != 1 {
        return Err(BackupError::Unsupported(header.corridor_backup));
    }
    let mut entries = Vec::new();
    for (i, line) in lines.enumerate() {
        let bad = || damaged(format!("entry {} is malformed", i + 1));
        let r: Record = serde_json::from_slice(line).map_err(|_| bad())?;
        entries.push((unhex(&r.tree).ok_or_else(bad)?, unhex(&r.k).ok_or_else(bad)?, unhex(&r.v).ok_or_else(bad)?));
    }
    if entries.len() as u64 != trailer.entries {
        return Err(damaged(format!(
            "the trailer counts {} entries but the file holds {}",
            trailer.entries,
            entries.len()
        )));
    }
    Ok(Verified { city: header.city, taken_at: header.taken_at, entries })
}

/// Writes a verified backup into a new data directory. Refuses a directory
/// that already holds data: a restore never mixes with or overwrites a store.
pub fn restore(backup: &Verified, dir: &Path) -> Result<(), BackupError> {
    let io = |e: &dyn std::fmt::Display| BackupError::Io(e.to_string());
    if dir.exists() && dir.read_dir().map_err(|e| io(&e))?.next().is_some() {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    // No background flusher: it would hold the store's lock for a moment
    // after the handle is dropped, and a node started right after the
    // restore would find the directory "in use". The flush below suffices.
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().map_err(|e| io(&e))?;
    for (tree, k, v) in &backup.entries {
        db.open_tree(tree).and_then(|t| t.insert(k.as_slice(), v.as_slice())).map_err(|e| io(&e))?;
    }
    db.flush().map_err(|e| io(&e))?;
    Ok(())
}

/// Every entry of every tree, for comparisons.
pub fn dump(db: &sled::Db) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("tree");
        for (k, v) in tree.iter().flatten() {
            out.push((name.to_vec(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("a")).open().unwrap();
        db.insert(b"k1", b"v1".to_vec()).unwrap();
        db.open_tree("bookings").unwrap().insert(b"b/1", b"{}".to_vec()).unwrap();
        let bytes = snapshot(&db, "hefei", "t").unwrap();
        let v = verify(&bytes).unwrap();
        assert_eq!((v.city.as_str(), v.len()), ("hefei", 2));
        restore(&v, &dir.path().join("b")).unwrap();
        let restored = sled::Config::new().path(dir.path().join("b")).open().unwrap();
        assert_eq!(dump(&restored), dump(&db));
        assert!(restore(&v, &dir.path().join("b")).unwrap_err().to_string().contains("not empty"));

        let mut damaged = bytes.clone();
        let i = damaged.len() / 2;
        damaged[i] ^= 1;
        assert!(verify(&damaged).unwrap_err().to_string().contains("checksum mismatch"));
        assert!(verify(&bytes[..bytes.len() - 10]).is_err(), "a truncated file is refused");
    }
}
