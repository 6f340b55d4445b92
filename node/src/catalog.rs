//! The node's in-memory read model of its inventory, derived from the store at
//! start and kept in step on every write. Searches read a snapshot without
//! locking out writers.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use crate::store::StoredInstrument;

/// One searchable instrument.
#[derive(Debug)]
pub struct Entry {
    pub stored: StoredInstrument,
    /// Lowercased names, for the heavier name weight.
    names: String,
    /// Lowercased everything else a researcher might type.
    rest: String,
}

impl Entry {
    pub fn new(stored: StoredInstrument) -> Self {
        let r = &stored.record;
        let names = format!("{}\n{}", r.name_zh, r.name_en).to_lowercase();
        let rest = [
            r.description.as_str(),
            &r.techniques.join("\n"),
            &r.manufacturer,
            &r.model,
            &r.institution_name,
            &r.department,
            &r.category,
        ]
        .join("\n")
        .to_lowercase();
        Entry { stored, names, rest }
    }
}

/// What a node-level search asks for. Empty lists mean "any".
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub text: String,
    pub cities: Vec<String>,
    pub provinces: Vec<String>,
    pub categories: Vec<String>,
    pub limit: usize,
}

/// `true` when `term` occurs in `hay`: anywhere for CJK text, which has no
/// spaces; for Latin script only at a word start, and short terms (most are
/// abbreviations: TEM, BET, NMR) only as whole words, so that "tem" finds
/// "(TEM)" but neither "system" nor "temperature".
fn occurs(hay: &str, term: &str) -> bool {
    let latin = term.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !latin {
        return hay.contains(term);
    }
    let whole_word = term.chars().count() < 5;
    hay.match_indices(term).any(|(i, _)| {
        let starts = hay[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        let ends = hay[i + term.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        starts && (ends || !whole_word)
    })
}

/// A taxonomy code matches a filter code when it is that code or below it.
pub fn category_matches(code: &str, filter: &str) -> bool {
    code == filter || (code.starts_with(filter) && code[filter.len()..].starts_with('.'))
}

#[derive(Default)]
pub struct Catalog {
    entries: RwLock<Arc<BTreeMap<String, Arc<Entry>>>>,
}

impl Catalog {
    pub fn new(all: Vec<StoredInstrument>) -> Self {
        let map = all.into_iter().map(|s| (s.record.local_id.clone(), Arc::new(Entry::new(s)))).collect();
        Catalog { entries: RwLock::new(Arc::new(map)) }
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Entry>>> {
        self.entries.read().expect("poisoned").clone()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, local_id: &str) -> Option<Arc<Entry>> {
        self.snapshot().get(local_id).cloned()
    }

    /// Applies records just written to the store.
    pub fn apply(&self, written: Vec<StoredInstrument>) {
        if written.is_empty() {
            return;
        }
        let mut guard = self.entries.write().expect("poisoned");
        let mut map = (**guard).clone();
        for s in written {
            map.insert(s.record.local_id.clone(), Arc::new(Entry::new(s)));
        }
        *guard = Arc::new(map);
    }

    /// Hits for `q` on a node serving `city` in `province`: the best `q.limit`
    /// by score, ties by local id, plus the number of all matches.
    pub fn search(&self, q: &Query, city: &str, province: &str) -> (Vec<(Arc<Entry>, f64)>, u64) {
        if (!q.cities.is_empty() && !q.cities.iter().any(|c| c == city))
            || (!q.provinces.is_empty() && !q.provinces.iter().any(|p| p.eq_ignore_ascii_case(province)))
        {
            return (Vec::new(), 0);
        }
        let terms: Vec<String> = q.text.split_whitespace().map(str::to_lowercase).collect();
        let mut hits: Vec<(Arc<Entry>, f64)> = Vec::new();
        for entry in self.snapshot().values() {
            let cat = &entry.stored.record.category;
            if !q.categories.is_empty() && !q.categories.iter().any(|f| category_matches(cat, f)) {
                continue;
            }
            let mut score = 0.0;
            let all = terms.iter().all(|t| {
                if occurs(&entry.names, t) {
                    score += 3.0;
                    true
                } else if occurs(&entry.rest, t) {
                    score += 1.0;
                    true
                } else {
                    false
                }
            });
            if all {
                hits.push((entry.clone(), score));
            }
        }
        let total = hits.len() as u64;
        // BTreeMap order makes the sort stable by local id for equal scores.
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(q.limit);
        (hits, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;

    fn stored(id: &str, zh: &str, en: &str, cat: &str) -> StoredInstrument {
        let mut r = sample(id);
        r.name_zh = zh.into();
        r.name_en = en.into();
        r.category = cat.into();
        r.description = String::new();
        r.techniques.clear();
        StoredInstrument { record: r, updated_at: "t".into() }
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![
            stored(
                "tem-1",
                "场发射透射电子显微镜",
                "Field Emission Transmission Electron Microscope (TEM)",
                "01.01.01",
            ),
            stored("sem-1", "扫描电子显微镜", "Scanning Electron Microscope (SEM)", "01.01.02"),
            stored("ppms-1", "综合物性测量系统", "Physical Property Measurement System (PPMS)", "02.03.01"),
        ])
    }

    fn ids(q: &Query) -> Vec<String> {
        catalog().search(q, "hefei", "Anhui").0.iter().map(|(e, _)| e.stored.record.local_id.clone()).collect()
    }

    fn text(t: &str) -> Query {
        Query { text: t.into(), limit: 10, ..Default::default() }
    }

    #[test]
    fn chinese_substrings_and_latin_words_match() {
        assert_eq!(ids(&text("电子显微镜")), vec!["sem-1", "tem-1"]);
        assert_eq!(ids(&text("TEM")), vec!["tem-1"], "TEM must not match 'system'");
        assert_eq!(ids(&text("microscope electron")), vec!["sem-1", "tem-1"]);
        assert!(ids(&text("NMR")).is_empty());
    }

    #[test]
    fn filters_apply_before_ranking() {
        let mut q = text("");
        q.categories = vec!["01.01".into()];
        assert_eq!(ids(&q), vec!["sem-1", "tem-1"]);
        q.categories = vec!["01.0".into()];
        assert!(ids(&q).is_empty(), "a code prefix must end at a level boundary");
        q.categories.clear();
        q.cities = vec!["wuhu".into()];
        assert!(ids(&q).is_empty());
        q.cities = vec!["hefei".into()];
        q.provinces = vec!["anhui".into()];
        assert_eq!(ids(&q).len(), 3);
    }

    #[test]
    fn limit_keeps_the_best_and_total_counts_all() {
        let mut q = text("显微镜");
        q.limit = 1;
        let (hits, total) = catalog().search(&q, "hefei", "Anhui");
        assert_eq!(hits.len(), 1);
        assert_eq!(total, 2);
    }
}
