//! One searchable instrument as the catalog holds it: what the search
//! collector reads for every hit, prepared once per version of the record.

use prost::bytes::Bytes;

use crate::catalog::model::StoredInstrument;

/// One searchable instrument.
#[derive(Debug)]
pub struct Entry {
    pub stored: StoredInstrument,
    /// "<city>/<local-id>" as UTF-8, kept ready for cursors and as a hit
    /// carries it.
    pub id: Bytes,
    /// The encoded summary a search hit carries, built once per version:
    /// a popular record is a hit many times over.
    pub summary: Bytes,
    /// The record's category and institution as numbers from the catalog's
    /// `search::Labels`, for facet counts.
    pub category: u32,
    pub institution: u32,
    /// The ordinal the index stores for this version.
    pub ord: u64,
}
