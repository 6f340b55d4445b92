//! Search within one node: full-text scoring from the index, then the
//! structured filters, facet counts, ranking and the cursor. No gRPC here.

pub mod index;
mod plan;
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
            // A retired instrument leaves search, unless asked for by status.
            && if self.statuses.is_empty() { r.status != Status::Retired } else { self.statuses.contains(&r.status) }
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

/// One match handed to [`page`]: its entry, the bounds of its score (equal
/// once exact) and its place in id order.
pub struct Match<'a> {
    pub entry: &'a Arc<Entry>,
    pub low: f32,
    pub high: f32,
    pub place: u32,
}

/// Applies filters, the extra predicate (free windows), facets, the cursor
/// and the limit to scored matches. Works on borrowed entries: a broad query
/// can match thousands of them, and only the page is worth a reference
/// count. A match's exact score (`exact(ord, low, high)`) is asked for only
/// when the cursor or the page depends on it.
pub fn page<'a>(
    scored: impl IntoIterator<Item = Match<'a>>,
    labels: &Labels,
    q: &Query,
    city: &str,
    extra: &dyn Fn(&InstrumentRecord) -> bool,
    exact: &dyn Fn(u64, f32, f32) -> f32,
) -> Hits {
    let mut total = 0;
    let width = if q.facets { labels.names.len() } else { 0 };
    let (mut categories, mut institutions) = (vec![0u64; width], vec![0u64; width]);
    // Only what can make the page is kept: whenever twice as many wait as
    // were left the last time, those that cannot beat the `limit`-th best
    // lower bound are dropped, so a broad match list costs linear time.
    let mut prune_at = q.limit.saturating_mul(2).max(64);
    let mut kept: Vec<Match<'a>> = Vec::with_capacity(prune_at.min(1024));
    let mut examined = 0u32;
    for mut m in scored {
        // The free-window predicate reads calendars: a broad query over a
        // large city can take long, so the deadline is looked at as it goes.
        if examined.is_multiple_of(DEADLINE_CHECK_EVERY) && q.deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            return Hits { stopped: true, ..Hits::default() };
        }
        examined = examined.wrapping_add(1);
        let r = &m.entry.stored.record;
        if !q.admits(r) || !extra(r) {
            continue;
        }
        total += 1;
        if q.facets {
            categories[m.entry.category as usize] += 1;
            institutions[m.entry.institution as usize] += 1;
        }
        if q.limit == 0 {
            continue;
        }
        if let Some((s, after)) = &q.after {
            // Strictly after the cursor in ranking order: a lower score
            // ranks later, so the upper bound decides when both bounds agree.
            let beyond = |score: f32| rank_bytes((score, &m.entry.id), (*s, after.as_bytes())) == Ordering::Greater;
            if !beyond(m.low) {
                continue;
            }
            if !beyond(m.high) {
                let e = exact(m.entry.ord, m.low, m.high);
                if !beyond(e) {
                    continue;
                }
                (m.low, m.high) = (e, e);
            }
        }
        kept.push(m);
        if kept.len() >= prune_at {
            let mut lows: Vec<f32> = kept.iter().map(|m| m.low).collect();
            let floor = *lows.select_nth_unstable_by(q.limit - 1, |a, b| b.total_cmp(a)).1;
            kept.retain(|m| m.high >= floor);
            prune_at = prune_at.max(kept.len().saturating_mul(2));
        }
    }
    let mut page = index::settle(kept, q.limit, |m| (m.low, m.high), |m| exact(m.entry.ord, m.low, m.high));
    // The order `rank` gives, with the id compared by its place.
    page.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.place.cmp(&b.0.place)));
    page.truncate(q.limit);
    let mut facets = Facets::default();
    if q.facets && total > 0 {
        facets.cities = vec![(city.to_string(), total)];
        facets.categories = labels.counts(&categories);
        facets.institutions = labels.counts(&institutions);
    }
    Hits { hits: page.into_iter().map(|(m, s)| (m.entry.clone(), s)).collect(), total, facets, stopped: false }
}
