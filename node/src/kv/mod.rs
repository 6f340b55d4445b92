//! The node's stores and the transaction kernel every engine writes through.
//!
//! `inventory` keeps the instrument records; `txn` is the ordered key space
//! of bookings, vouchers and the ledger, written only in atomic steps. [`Kv`]
//! is the kernel over it: run a step (again, after a conflict), wait for its
//! flush, and answer a repeated request with its first answer. It knows
//! nothing of what the values mean.

pub mod inventory;
pub mod txn;

use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};

use self::txn::{Txn, TxnStore};
use crate::error::{Error, StoreError};

/// Whether a step waits for its flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    Wait,
    Later,
}

/// The first answer to an idempotent request, kept with its effect.
#[derive(serde::Serialize, serde::Deserialize)]
struct Idem<T> {
    fingerprint: String,
    response: T,
}

fn idempotency_key(actor: &str, key: &str) -> Vec<u8> {
    format!("i/{actor}\n{key}").into_bytes()
}

const MAX_KEY_LEN: usize = 128;

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::Invalid(
            "idempotency_key is required: a unique string chosen by the client, sent again unchanged on retry".into(),
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::Invalid(format!("idempotency_key is at most {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

/// A stored value, or the key it was read from and why it does not parse.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e.to_string()))
}

/// The error for a stored value that cannot be read.
pub fn corrupt(key: &[u8], reason: String) -> Error {
    StoreError::Corrupt { key: String::from_utf8_lossy(key).into(), reason }.into()
}

pub fn get_json<T: DeserializeOwned>(tx: &mut dyn Txn, key: &[u8]) -> Result<Option<T>, Error> {
    tx.get(key)?.map(|bytes| decode(key, &bytes)).transpose()
}

pub fn put_json<T: Serialize>(tx: &mut dyn Txn, key: &[u8], value: &T) -> Result<(), Error> {
    tx.put(key, serde_json::to_vec(value).expect("serialisable"))?;
    Ok(())
}

/// The kernel over one node's key space; cheap to clone, every clone the
/// same store.
#[derive(Clone)]
pub struct Kv {
    store: Arc<dyn TxnStore>,
}

impl Kv {
    pub fn new(store: Arc<dyn TxnStore>) -> Self {
        Kv { store }
    }

    /// Runs `step` atomically (it may run more than once, after a conflict)
    /// and returns what it returned. Not yet on disk.
    pub fn run<T>(&self, mut step: impl FnMut(&mut dyn Txn) -> Result<T, Error>) -> Result<T, Error> {
        let mut out = None;
        self.store.atomically(&mut |tx| {
            out = Some(step(tx)?);
            Ok(())
        })?;
        Ok(out.expect("set by the step"))
    }

    /// Runs `step` atomically and, with [`Flush::Wait`], returns once it is
    /// on disk. [`Flush::Later`] is for steps whose loss in a crash is
    /// repaired by repeating them: a later waited step, or the reply, covers
    /// them.
    pub async fn step<T>(&self, flush: Flush, step: impl FnMut(&mut dyn Txn) -> Result<T, Error>) -> Result<T, Error> {
        let out = self.run(step)?;
        if flush == Flush::Wait {
            self.durable().await?;
        }
        Ok(out)
    }

    /// Resolves once everything written before the call is on disk.
    pub async fn durable(&self) -> Result<(), Error> {
        match self.store.durable().await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Backend("the flush thread has stopped".into()).into()),
        }
    }

    /// Runs an idempotent step: a retry by the same actor with the same key
    /// and the same fingerprint returns the first answer; with another
    /// fingerprint it is refused. The answer is stored in the same atomic
    /// step as the effect.
    pub async fn idempotent<T: Serialize + DeserializeOwned + Clone>(
        &self,
        actor: &str,
        key: &str,
        fingerprint: String,
        mut step: impl FnMut(&mut dyn Txn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        check_key(key)?;
        let idem_key = idempotency_key(actor, key);
        // A replayed answer may not be durable yet either (its first caller
        // may still be waiting): the flush is awaited in every case.
        self.step(Flush::Wait, |tx| {
            if let Some(prior) = get_json::<Idem<T>>(tx, &idem_key)? {
                if prior.fingerprint != fingerprint {
                    return Err(Error::KeyReused(key.into()));
                }
                return Ok(prior.response);
            }
            let answer = step(tx)?;
            put_json(tx, &idem_key, &Idem { fingerprint: fingerprint.clone(), response: answer.clone() })?;
            Ok(answer)
        })
        .await
    }

    /// One value as stored, outside any step.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.store.get(key)?)
    }

    pub fn read_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        self.store.get(key)?.map(|bytes| decode(key, &bytes)).transpose()
    }

    pub fn scan_raw(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.store.scan(prefix)?)
    }

    /// Up to `n` (key, value) pairs under `prefix` after the key `after`.
    pub fn scan_after(&self, prefix: &[u8], after: &[u8], n: usize) -> Result<Vec<txn::Pair>, Error> {
        Ok(self.store.scan_after(prefix, after, n)?)
    }

    pub fn scan_json<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, Error> {
        self.store.scan(prefix)?.iter().map(|b| decode(prefix, b)).collect()
    }
}
