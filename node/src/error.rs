//! The node's domain errors. Each says which [`Code`] a caller sees, so that
//! the adapter (`wire::error`) maps codes in one place and the domain never
//! names a transport. Nothing here imports the rest of the crate: every
//! layer may return these.

use std::{fmt, path::PathBuf};

/// What kind of failure a caller sees, independent of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request itself is wrong; sending it again will not help.
    InvalidArgument,
    /// The request is well formed, but the state of things refuses it now.
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    /// An idempotency key reused for a different request.
    AlreadyExists,
    /// Stored data cannot be read: an operator must look.
    DataLoss,
    /// The storage (or a peer) failed; a retry may succeed.
    Unavailable,
    /// A fault of the node itself.
    Internal,
}

/// A refused request and the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(rule: &'static str, detail: impl Into<String>) -> Self {
        Violation { rule, detail: detail.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}", self.rule, self.detail)
    }
}

/// A value that does not read as what it should be: a field of a request,
/// a line of a file, a flag. The message names the value and what was
/// expected. As an [`Error`] it is `Error::Invalid` (InvalidArgument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<&str> for Invalid {
    fn from(m: &str) -> Self {
        Invalid(m.into())
    }
}

impl From<String> for Invalid {
    fn from(m: String) -> Self {
        Invalid(m)
    }
}

impl std::ops::Deref for Invalid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The message alone, for callers that put it in a larger one (a record's
/// field, a row of a file).
impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e.0)
    }
}

/// A failure of the stores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory {path} is already in use by another corridor process; stop it or choose another --data directory"
    )]
    InUse { path: PathBuf },
    #[error("storage failed: {0}")]
    Backend(String),
    #[error("stored record {key:?} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    pub fn code(&self) -> Code {
        match self {
            StoreError::Corrupt { .. } => Code::DataLoss,
            StoreError::InUse { .. } | StoreError::Backend(_) => Code::Unavailable,
        }
    }
}

/// Why a booking, voucher or ledger step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Rule(Violation),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(String),
    /// The booking (or payment, or debit) is not in a state that allows the
    /// action.
    #[error("{0}")]
    State(String),
    #[error("idempotency key {0:?} was already used with different parameters; use a new key for a new request")]
    KeyReused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::Rule(v)
    }
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::Rule(_) | Error::State(_) => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::Denied(_) => Code::PermissionDenied,
            Error::KeyReused(_) => Code::AlreadyExists,
            Error::Store(e) => e.code(),
        }
    }
}
