//! Search within one node: full-text scoring from the index, then the
//! structured filters, facet counts, ranking and the cursor. No gRPC here.

pub mod index;
pub mod text;
pub mod thesaurus;

use std::{cmp::Ordering, collections::HashMap, sync::Arc};

use crate::catalog::{
    entry::Entry,
    model::{InstrumentRecord, ServiceMode, Status},
};

/// What a node-level search asks for. Empty lists and unset values do not
/// filter; within a list any value matches.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub text: String,
    pub cities: Vec<String>,
    pub provinces: Vec<String>,
    pub categories: Vec<String>,
    pub institutions: Vec<String>,
    pub min_price_fen: Option<i64>,
    pub max_price_fen: Option<i64>,
    pub accepts_vouchers: Option<bool>,
    pub accreditations: Vec<String>,
    pub service_modes: Vec<ServiceMode>,
    pub statuses: Vec<Status>,
    /// Hits strictly after this (score, id) in ranking order.
    pub after: Option<(f32, String)>,
    pub limit: usize,
    pub facets: bool,
    /// When the caller stops waiting: past it, the search stops where it is
    /// and reports so, instead of holding the node for an answer nobody reads.
    pub deadline: Option<tokio::time::Instant>,
}

/// How many matches a search looks at between two looks at the clock.
const DEADLINE_CHECK_EVERY: u32 = 64;

/// "Free for at least `minutes` between `from` and `to`" (unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct FreeWindow {
    pub from: i64,
    pub to: i64,
    pub minutes: u32,
}

/// A taxonomy code matches a filter code when it is that code or below it.
pub fn category_matches(code: &str, filter: &str) -> bool {
    code == filter || (code.starts_with(filter) && code[filter.len()..].starts_with('.'))
}

impl Query {
    /// Whether any structured filter is set (city and province are decided
    /// per node, before searching).
    pub fn has_filters(&self) -> bool {
        !self.categories.is_empty()
            || !self.institutions.is_empty()
            || self.min_price_fen.is_some()
            || self.max_price_fen.is_some()
            || self.accepts_vouchers.is_some()
            || !self.accreditations.is_empty()
            || !self.service_modes.is_empty()
            || !self.statuses.is_empty()
    }

    /// The structured filters, on one record.
    pub fn admits(&self, r: &InstrumentRecord) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|f| category_matches(&r.category, f)))
            && (self.institutions.is_empty() || self.institutions.contains(&r.institution_name))
            && self.min_price_fen.is_none_or(|p| r.price_external_fen >= p)
            && self.max_price_fen.is_none_or(|p| r.price_external_fen <= p)
            && self.accepts_vouchers.is_none_or(|v| r.accepts_vouchers == v)
            && (self.accreditations.is_empty() || self.accreditations.iter().any(|a| r.accreditations.contains(a)))
            && (self.service_modes.is_empty() || self.service_modes.iter().any(|m| r.service_modes.contains(m)))
            && (self.statuses.is_empty() || self.statuses.contains(&r.status))
    }
}

use corridor_proto::cursor::rank_bytes;

/// Match counts by value, in no particular order (the gateway orders the
/// sums), and only values with matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    pub cities: Vec<(String, u64)>,
    pub categories: Vec<(String, u64)>,
    pub institutions: Vec<(String, u64)>,
}

/// One page of a node's answer.
#[derive(Debug, Default)]
pub struct Hits {
    pub hits: Vec<(Arc<Entry>, f32)>,
    /// Every match that passes the filters, on every page.
    pub total: u64,
    pub facets: Facets,
    /// The deadline passed before the search was done: the rest is empty.
    pub stopped: bool,
}

/// Small numbers standing for facet values (categories and institutions,
/// in one space), so that counting a broad query's matches neither hashes
/// nor compares text. Values are never forgotten; there are few of them.
#[derive(Debug, Default, Clone)]
pub struct Labels {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Labels {
    pub fn id(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(value.to_string());
        self.ids.insert(value.to_string(), id);
        id
    }

    /// Each value's count, in label order: no map and no sort, as a broad
    /// query counts hundreds of institutions.
    fn counts(&self, counts: &[u64]) -> Vec<(String, u64)> {
        counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(id, n)| (self.names[id].clone(), *n)).collect()
    }
}

/// Applies filters, the extra predicate (free windows), facets, the cursor
/// and the limit to scored matches, each with its place in id order (see
/// `catalog`). Works on borrowed entries: a broad query can match thousands
/// of them, and only the page is worth a reference count.
pub fn page<'a>(
    scored: impl IntoIterator<Item = (&'a Arc<Entry>, f32, u32)>,
    labels: &Labels,
    q: &Query,
    city: &str,
    extra: &dyn Fn(&InstrumentRecord) -> bool,
) -> Hits {
    let mut total = 0;
    let width = if q.facets { labels.names.len() } else { 0 };
    let (mut categories, mut institutions) = (vec![0u64; width], vec![0u64; width]);
    // The order `rank` gives, with the id compared by its place.
    let cmp = |a: &(&Arc<Entry>, f32, u32), b: &(&Arc<Entry>, f32, u32)| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2));
    // Only the page is kept: whenever twice as many wait, the best `limit`
    // of them are chosen, so a broad match list costs linear time and a
    // page's worth of memory.
    let prune_at = q.limit.saturating_mul(2).max(64);
    let keep_page = |kept: &mut Vec<(&'a Arc<Entry>, f32, u32)>| {
        if kept.len() > q.limit {
            kept.select_nth_unstable_by(q.limit - 1, cmp);
            kept.truncate(q.limit);
        }
    };
    let mut kept: Vec<(&'a Arc<Entry>, f32, u32)> = Vec::with_capacity(prune_at.min(1024));
    let mut examined = 0u32;
    for (entry, score, place) in scored {
        // The free-window predicate reads calendars: a broad query over a
        // large city can take long, so the deadline is looked at as it goes.
        if examined.is_multiple_of(DEADLINE_CHECK_EVERY) && q.deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            return Hits { stopped: true, ..Hits::default() };
        }
        examined = examined.wrapping_add(1);
        let r = &entry.stored.record;
        if !q.admits(r) || !extra(r) {
            continue;
        }
        total += 1;
        if q.facets {
            categories[entry.category as usize] += 1;
            institutions[entry.institution as usize] += 1;
        }
        if q.limit == 0
            || q.after
                .as_ref()
                .is_some_and(|(s, after)| rank_bytes((score, &entry.id), (*s, after.as_bytes())) != Ordering::Greater)
        {
            continue;
        }
        kept.push((entry, score, place));
        if kept.len() >= prune_at {
            keep_page(&mut kept);
        }
    }
    keep_page(&mut kept);
    kept.sort_unstable_by(cmp);
    let mut facets = Facets::default();
    if q.facets && total > 0 {
        facets.cities = vec![(city.to_string(), total)];
        facets.categories = labels.counts(&categories);
        facets.institutions = labels.counts(&institutions);
    }
    Hits { hits: kept.into_iter().map(|(e, s, _)| (e.clone(), s)).collect(), total, facets, stopped: false }
}
