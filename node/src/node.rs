//! The node's core: one city's store and its search catalog, with the rules
//! for writing. No gRPC here; `service` adapts it.

use std::sync::Arc;

use corridor_proto::cities::City;

use crate::{
    booking::{Bookings, time::Clock},
    catalog::{
        Catalog, Entry,
        import::{Row, RowError, check_rows},
        search::{FreeWindow, Hits, Query, index::CorpusStats},
    },
    error::{Code, Error, StoreError},
    kv::{
        Kv,
        inventory::{Store, UpsertSummary},
        txn::TxnStore,
    },
    money::{
        coordinator::{Driven, Payments},
        voucher::Vouchers,
    },
    ops::demo::{self, Scale},
};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("import rejected, nothing stored: {0}")]
    Rejected(#[from] RowError),
    #[error("tls: {0}")]
    Tls(#[from] corridor_certs::CertError),
    #[error("serving failed: {0}")]
    Serve(String),
}

impl NodeError {
    pub fn code(&self) -> Code {
        match self {
            NodeError::Store(e) => e.code(),
            NodeError::Rejected(_) => Code::InvalidArgument,
            NodeError::Tls(_) | NodeError::Serve(_) => Code::Internal,
        }
    }
}

/// One city's inventory: the store is the truth, the catalog is derived.
pub struct Node {
    city: &'static City,
    store: Arc<dyn Store>,
    catalog: Catalog,
    /// One writer at a time, so that the catalog sees writes in store order.
    write: tokio::sync::Mutex<()>,
    bookings: Bookings,
    vouchers: Vouchers,
    /// Takes a backup; set by the server for sled-backed nodes.
    snapshotter: Option<Snapshotter>,
    /// Coordinates voucher payments with issuing cities; set when the node
    /// knows its peers.
    payments: Option<Payments>,
}

/// Produces backup bytes while every writer is held off.
pub type Snapshotter = Box<dyn Fn() -> Result<Vec<u8>, StoreError> + Send + Sync>;

/// Now, in Asia/Shanghai, as RFC 3339.
pub fn now_rfc3339() -> String {
    let offset = time::macros::offset!(+8);
    time::OffsetDateTime::now_utc()
        .to_offset(offset)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a current time always formats")
}

impl Node {
    /// Opens the node over its stores, rebuilding the catalog from the
    /// inventory store.
    pub fn open(
        city: &'static City,
        store: Arc<dyn Store>,
        kv: Arc<dyn TxnStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NodeError> {
        let started = std::time::Instant::now();
        let catalog = Catalog::new(city, store.all()?);
        tracing::info!(
            city = city.slug,
            instruments = catalog.len(),
            ms = started.elapsed().as_millis() as u64,
            "search index rebuilt from the store"
        );
        let kv = Kv::new(kv);
        let bookings = Bookings::new(city.slug, kv.clone(), clock.clone());
        let ordered = bookings
            .put_all_in_order()
            .map_err(|e| NodeError::Serve(format!("putting bookings in page order: {e}")))?;
        if ordered > 0 {
            tracing::info!(city = city.slug, bookings = ordered, "bookings put in page order");
        }
        let vouchers = Vouchers::new(city.slug, kv, clock);
        Ok(Node {
            city,
            store,
            catalog,
            write: tokio::sync::Mutex::new(()),
            bookings,
            vouchers,
            snapshotter: None,
            payments: None,
        })
    }

    pub fn bookings(&self) -> &Bookings {
        &self.bookings
    }

    pub fn vouchers(&self) -> &Vouchers {
        &self.vouchers
    }

    /// Makes voucher payments available.
    pub fn with_payments(mut self, p: Payments) -> Self {
        self.payments = Some(p);
        self
    }

    pub fn payments(&self) -> Option<&Payments> {
        self.payments.as_ref()
    }

    /// Advances one booking's voucher payment as far as it goes now.
    pub async fn drive(&self, id: &str) -> Result<Driven, Error> {
        match &self.payments {
            Some(p) => p.drive(&self.bookings, id).await,
            None => Err(Error::Invalid("this node takes no voucher payments: it has no peers configured".into())),
        }
    }

    /// One recovery pass over unfinished voucher payments.
    pub async fn recover(&self) -> Result<usize, Error> {
        match &self.payments {
            Some(p) => p.recover(&self.bookings, &self.vouchers).await,
            None => self.vouchers.expire_debits().await,
        }
    }

    /// Makes [`Node::backup`] available.
    pub fn with_snapshotter(mut self, s: Snapshotter) -> Self {
        self.snapshotter = Some(s);
        self
    }

    /// A consistent backup of the whole store. Inventory writes wait on the
    /// node's write lock and bookings on the snapshotter's gate, so the
    /// snapshot holds whole imports and whole booking steps only.
    pub async fn backup(&self) -> Result<Vec<u8>, NodeError> {
        let Some(snap) = &self.snapshotter else {
            return Err(StoreError::Backend("this node's store cannot be backed up".into()).into());
        };
        let _writers = self.write.lock().await;
        Ok(tokio::task::block_in_place(snap)?)
    }

    pub fn city(&self) -> &'static City {
        self.city
    }

    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty()
    }

    /// Seeds the demo inventory when the store is empty; returns how many
    /// instruments were written.
    pub async fn seed_if_empty(&self, scale: Scale) -> Result<u64, NodeError> {
        if !self.is_empty() {
            return Ok(0);
        }
        let rows: Vec<Row> = demo::city_inventory(scale, self.city.slug)
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r))
            .collect();
        Ok(self.import(rows).await?.inserted)
    }

    /// Validates every row, then writes them all in one atomic, durable step.
    /// One bad row rejects everything; rows equal to the stored ones change
    /// nothing.
    pub async fn import(&self, rows: Vec<Row>) -> Result<UpsertSummary, NodeError> {
        check_rows(self.city.slug, &rows)?;
        let records: Vec<_> = rows
            .into_iter()
            .map(|(_, mut r)| {
                r.city = self.city.slug.to_string();
                r
            })
            .collect();
        let _guard = self.write.lock().await;
        let store = self.store.clone();
        let (summary, written) = tokio::task::spawn_blocking(move || store.upsert(&records, &now_rfc3339()))
            .await
            .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))??;
        self.catalog.apply(written);
        Ok(summary)
    }

    pub fn get(&self, local_id: &str) -> Option<Arc<Entry>> {
        self.catalog.get(local_id)
    }

    /// Searches this city. `free` optionally asks each hit's calendar for a
    /// free window.
    pub fn search(&self, q: &Query, stats: Option<&CorpusStats>, free: Option<FreeWindow>) -> Hits {
        let window = |r: &crate::catalog::model::InstrumentRecord| match free {
            Some(w) => self.bookings.has_free_window(r, w.from, w.to, w.minutes),
            None => true,
        };
        let extra: Option<&dyn Fn(&crate::catalog::model::InstrumentRecord) -> bool> =
            if free.is_some() { Some(&window) } else { None };
        self.catalog.search(q, self.city.slug, self.city.province, stats, extra)
    }

    /// Uses `t` from now on, re-indexing every instrument with it. Imports
    /// wait meanwhile, so that none is indexed with the old one after.
    pub async fn use_thesaurus(&self, t: Arc<crate::catalog::search::thesaurus::Thesaurus>) {
        let _writers = self.write.lock().await;
        self.catalog.use_thesaurus(t);
    }

    pub fn search_stats(&self, text: &str) -> CorpusStats {
        self.catalog.stats(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        booking::time::SystemClock,
        catalog::model::tests::sample,
        kv::{inventory::MemStore, txn::MemKv},
    };
    use corridor_proto::cities::city_by_slug;

    fn node() -> Node {
        Node::open(
            city_by_slug("hefei").unwrap(),
            Arc::new(MemStore::default()),
            Arc::new(MemKv::default()),
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_bad_row_rejects_the_whole_import() {
        let n = node();
        let mut bad = sample("b");
        bad.institution_uscc = "nope".into();
        let err = n.import(vec![(1, sample("a")), (2, bad)]).await.unwrap_err();
        assert!(err.to_string().contains("line 2: institution_uscc"), "{err}");
        assert!(n.is_empty(), "nothing from a rejected file is stored");
    }

    #[tokio::test]
    async fn reimport_is_a_no_op_and_search_sees_writes() {
        let n = node();
        let s = n.import(vec![(1, sample("a"))]).await.unwrap();
        assert_eq!(s.inserted, 1);
        let before = n.get("a").unwrap().stored.updated_at.clone();
        let s = n.import(vec![(1, sample("a"))]).await.unwrap();
        assert_eq!((s.inserted, s.updated, s.unchanged), (0, 0, 1));
        assert_eq!(n.get("a").unwrap().stored.updated_at, before);
        let q = Query { text: "核磁".into(), limit: 5, ..Default::default() };
        assert_eq!(n.search(&q, None, None).total, 1);
        assert_eq!(n.get("a").unwrap().stored.record.city, "hefei");
    }

    #[tokio::test]
    async fn seeding_fills_an_empty_node_once() {
        let n = node();
        let first = n.seed_if_empty(Scale::G60).await.unwrap();
        assert!(first > 0);
        assert_eq!(n.len() as u64, first);
        assert_eq!(n.seed_if_empty(Scale::G60).await.unwrap(), 0);
    }
}
