//! The node's in-memory read model of its inventory, derived from the store
//! at start and kept in step on every write: the records by local id, and the
//! full-text index over them. `model` is the record and its validation,
//! `import` reads files into records, `summary` encodes what a search hit
//! carries, and `search` is the index and one page of a search.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use corridor_proto::cities::City;
use prost::{Message, bytes::Bytes};

pub mod entry;
pub mod import;
pub mod model;
pub mod search;
pub mod summary;

pub use self::entry::Entry;
use self::{
    model::InstrumentRecord,
    search::{
        Hits, Labels, Match, Query,
        index::{CorpusStats, SearchIndex},
    },
    summary::to_summary,
};
use crate::catalog::model::StoredInstrument;

#[derive(Default)]
struct State {
    by_id: BTreeMap<String, Arc<Entry>>,
    /// Every version ever indexed, by the ordinal the index stores; the
    /// index refers to the current ones only.
    by_ord: Vec<Arc<Entry>>,
    /// Shared so that a search can keep them after letting go of the state.
    labels: Arc<Labels>,
    /// By ordinal: the current version's place in id order, so that ranking
    /// ties (whole concept matches score alike) compare numbers, not ids.
    /// Ids share the city prefix, so id order is local-id order, which
    /// `by_id` keeps.
    id_rank: Vec<u32>,
    /// Current records that are retired: they leave search unless a query
    /// asks for them by status, and while there are none a search needs no
    /// filter pass for them.
    retired: usize,
}

pub struct Catalog {
    city: &'static City,
    state: RwLock<State>,
    index: SearchIndex,
}

impl Catalog {
    /// Builds the catalog and its index from every stored record.
    pub fn new(city: &'static City, all: Vec<StoredInstrument>) -> Self {
        let catalog = Catalog { city, state: RwLock::default(), index: SearchIndex::new() };
        catalog.apply(all);
        catalog
    }

    pub fn len(&self) -> usize {
        self.state.read().expect("poisoned").by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, local_id: &str) -> Option<Arc<Entry>> {
        self.state.read().expect("poisoned").by_id.get(local_id).cloned()
    }

    /// Applies records just written to the store.
    pub fn apply(&self, written: Vec<StoredInstrument>) {
        if written.is_empty() {
            return;
        }
        let mut state = self.state.write().expect("poisoned");
        let first = state.by_ord.len() as u64;
        let labels = Arc::make_mut(&mut state.labels);
        let entries: Vec<Arc<Entry>> = written
            .into_iter()
            .enumerate()
            .map(|(i, stored)| {
                // Owned, not made from a Vec: a Vec-backed `Bytes` allocates
                // again when a hit clones it to encode.
                let id = Bytes::from_owner(format!("{}/{}", self.city.slug, stored.record.local_id).into_bytes());
                let summary = Bytes::from_owner(to_summary(&stored, self.city).encode_to_vec());
                let category = labels.id(&stored.record.category);
                let institution = labels.id(&stored.record.institution_name);
                Arc::new(Entry { stored, id, summary, category, institution, ord: first + i as u64 })
            })
            .collect();
        self.index
            .upsert(entries.iter().map(|e| (e.ord, &e.stored.record)))
            .expect("an in-RAM index accepts documents");
        let retired = |e: &Entry| usize::from(e.stored.record.status == model::Status::Retired);
        for e in entries {
            state.retired += retired(&e);
            if let Some(old) = state.by_id.insert(e.stored.record.local_id.clone(), e.clone()) {
                state.retired -= retired(&old);
            }
            state.by_ord.push(e);
        }
        let mut id_rank = vec![u32::MAX; state.by_ord.len()];
        for (place, e) in state.by_id.values().enumerate() {
            id_rank[e.ord as usize] = place as u32;
        }
        state.id_rank = id_rank;
    }

    /// Re-indexes every instrument with thesaurus `t`, and analyses queries
    /// with it from now on.
    pub fn use_thesaurus(&self, t: Arc<crate::catalog::search::thesaurus::Thesaurus>) {
        self.index.set_thesaurus(t);
        let state = self.state.read().expect("poisoned");
        let current: Vec<(u64, &InstrumentRecord)> = state.by_id.values().map(|e| (e.ord, &e.stored.record)).collect();
        self.index.upsert(current).expect("an in-RAM index accepts documents");
    }

    /// This node's share of the corpus statistics for `text`.
    pub fn stats(&self, text: &str) -> CorpusStats {
        self.index.stats(text).expect("an in-RAM index answers")
    }

    /// Hits for `q` on a node serving `city` in `province`, scored with the
    /// corpus-wide `stats` when given.
    pub fn search(
        &self,
        q: &Query,
        city: &str,
        province: &str,
        stats: Option<&CorpusStats>,
        extra: Option<&dyn Fn(&InstrumentRecord) -> bool>,
    ) -> Hits {
        let extra_filters = extra.is_some();
        if (!q.cities.is_empty() && !q.cities.iter().any(|c| c == city))
            || (!q.provinces.is_empty() && !q.provinces.iter().any(|p| p.eq_ignore_ascii_case(province)))
        {
            return Hits::default();
        }
        // Without post-filters, facets or a cursor, the index's own top-k is
        // the page. Retired records are filtered out, when there are any.
        let hide_retired = q.statuses.is_empty() && self.state.read().expect("poisoned").retired > 0;
        let everything = q.facets || q.after.is_some() || q.has_filters() || extra_filters || hide_retired;
        let limit = if everything { usize::MAX } else { q.limit };
        let scored = self.index.search(&q.text, stats, limit).expect("an in-RAM index answers");
        let state = self.state.read().expect("poisoned");
        let exact = scored.exact;
        let exact = |ord: u64, low: f32, high: f32| exact.score(ord, low, high);
        let matches = scored.hits.into_iter().filter_map(|(ord, low, high)| {
            let entry = state.by_ord.get(ord as usize)?;
            Some(Match { entry, low, high, place: state.id_rank[ord as usize] })
        });
        match extra {
            // Nothing filters: every match counts, collected or not.
            None if !everything => {
                Hits { total: scored.matches, ..search::page(matches, &state.labels, q, city, &|_| true, &exact) }
            }
            None => search::page(matches, &state.labels, q, city, &|_| true, &exact),
            // The extra predicate reads the booking store, record by record:
            // not under this lock, which an import's writer would queue behind
            // (and every search behind the writer).
            Some(extra) => {
                let labels = state.labels.clone();
                let admitted: Vec<(Arc<Entry>, f32, f32, u32)> = matches
                    .filter(|m| q.admits(&m.entry.stored.record))
                    .map(|m| (m.entry.clone(), m.low, m.high, m.place))
                    .collect();
                drop(state);
                let matches = admitted.iter().map(|(entry, low, high, place)| Match {
                    entry,
                    low: *low,
                    high: *high,
                    place: *place,
                });
                search::page(matches, &labels, q, city, extra, &exact)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::model::tests::sample,
        ops::demo::{Scale, corridor_inventory},
    };
    use corridor_proto::cities::city_by_slug;

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
        Catalog::new(
            city_by_slug("hefei").unwrap(),
            vec![
                stored(
                    "tem-1",
                    "场发射透射电子显微镜",
                    "Field Emission Transmission Electron Microscope (TEM)",
                    "01.01.01",
                ),
                stored("sem-1", "扫描电子显微镜", "Scanning Electron Microscope (SEM)", "01.01.02"),
                stored("ppms-1", "综合物性测量系统", "Physical Property Measurement System (PPMS)", "02.03.01"),
                stored("nmr-1", "核磁共振波谱仪", "Nuclear Magnetic Resonance Spectrometer (NMR)", "01.06.01"),
                stored(
                    "tem-2",
                    "透射电子显微镜",
                    "300 kV Transmission Electron Microscope JEM-30000 (TEM)",
                    "01.01.01",
                ),
            ],
        )
    }

    fn ids_in(c: &Catalog, q: &Query) -> Vec<String> {
        c.search(q, "hefei", "Anhui", None, None).hits.iter().map(|(e, _)| e.stored.record.local_id.clone()).collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn text(t: &str) -> Query {
        Query { text: t.into(), limit: 10, ..Default::default() }
    }

    #[test]
    fn thesaurus_bigrams_and_typos() {
        let c = catalog();
        let ids = |t: &str| ids_in(&c, &text(t));
        for q in ["NMR", "核磁", "核磁共振波谱仪", "nuclear magnetic resonance"] {
            assert_eq!(ids(q), vec!["nmr-1"], "{q}");
        }
        for q in ["TEM", "透射电镜", "场发射透射电子显微镜"] {
            assert_eq!(sorted(ids(q)), vec!["tem-1", "tem-2"], "{q}");
        }
        for q in ["TEM 300kV", "透射电镜 300 kV", "300kv transmission electron microscope"] {
            assert_eq!(ids(q), vec!["tem-2"], "{q}");
        }
        assert_eq!(sorted(ids("电镜")), vec!["sem-1", "tem-1", "tem-2"], "a generic name finds every kind");
        assert_eq!(sorted(ids("显微镜")), vec!["sem-1", "tem-1", "tem-2"], "bigrams find the word inside names");
        assert_eq!(ids("spectrometr"), vec!["nmr-1"], "one typo");
        assert_eq!(ids("JEM30000"), vec!["tem-2"], "a model code written without its hyphen");
        assert!(ids("TEM 30001").is_empty(), "numbers are not typos of each other");
        assert_eq!(ids("spectrometers"), vec!["nmr-1"], "stemmed");
        assert!(ids("temperature").is_empty());
        assert_eq!(ids("").len(), 5);
    }

    #[test]
    fn equal_scores_beyond_the_index_cut_still_break_by_id() {
        // 300 instruments with one name score the same; indexed in an order
        // unrelated to their ids.
        let mut all: Vec<StoredInstrument> = (0..300)
            .map(|i| {
                stored(&format!("nmr-{:03}", (i * 7919) % 300), "核磁共振波谱仪", "NMR Spectrometer (NMR)", "01.06.01")
            })
            .collect();
        all.rotate_left(123);
        let c = Catalog::new(city_by_slug("hefei").unwrap(), all);
        let expected: Vec<String> = (0..10).map(|i| format!("nmr-{i:03}")).collect();
        assert_eq!(ids_in(&c, &text("NMR")), expected, "top-k path");
        assert_eq!(c.search(&text("NMR"), "hefei", "Anhui", None, None).total, 300, "total counts every match");
        let mut with_facets = text("NMR");
        with_facets.facets = true;
        assert_eq!(ids_in(&c, &with_facets), expected, "every-match path");
    }

    #[test]
    fn a_retired_instrument_leaves_search_until_it_is_asked_for() {
        let c = catalog();
        let q = text("NMR");
        assert_eq!(ids_in(&c, &q), vec!["nmr-1"]);
        let mut retired = stored("nmr-1", "核磁共振波谱仪", "NMR Spectrometer (NMR)", "01.06.01");
        retired.record.status = model::Status::Retired;
        c.apply(vec![retired]);
        assert!(ids_in(&c, &q).is_empty());
        assert_eq!(c.search(&q, "hefei", "Anhui", None, None).total, 0, "not counted either");
        let mut asked = text("NMR");
        asked.statuses = vec![model::Status::Retired];
        assert_eq!(ids_in(&c, &asked), vec!["nmr-1"]);
        assert_eq!(c.get("nmr-1").unwrap().stored.record.status, model::Status::Retired, "the record stays");
        // Back in service, back in search, and searches take the unfiltered path again.
        c.apply(vec![stored("nmr-1", "核磁共振波谱仪", "NMR Spectrometer (NMR)", "01.06.01")]);
        assert_eq!(ids_in(&c, &q), vec!["nmr-1"]);
        assert_eq!(c.state.read().unwrap().retired, 0);
    }

    #[test]
    fn filters_apply_and_city_filters_short_circuit() {
        let c = catalog();
        let mut q = text("");
        q.categories = vec!["01.01".into()];
        assert_eq!(ids_in(&c, &q), vec!["sem-1", "tem-1", "tem-2"]);
        q.categories = vec!["01.0".into()];
        assert!(ids_in(&c, &q).is_empty(), "a code prefix must end at a level boundary");
        q.categories.clear();
        q.cities = vec!["wuhu".into()];
        assert!(ids_in(&c, &q).is_empty());
        q.cities = vec!["hefei".into()];
        q.provinces = vec!["anhui".into()];
        assert_eq!(ids_in(&c, &q).len(), 5);
    }

    /// Hefei's share of the G60 demo.
    fn hefei_demo() -> Catalog {
        let all: Vec<StoredInstrument> = corridor_inventory(Scale::G60)
            .into_iter()
            .filter(|(c, _)| c.slug == "hefei")
            .map(|(_, record)| StoredInstrument { record, updated_at: "t".into() })
            .collect();
        Catalog::new(city_by_slug("hefei").unwrap(), all)
    }

    #[test]
    fn pages_follow_the_cursor_and_totals_count_all() {
        let c = hefei_demo();
        // Every record matches: more than the top-k path keeps.
        let mut q = text("");
        q.limit = 1;
        let top_k = c.search(&q, "hefei", "Anhui", None, None);
        q.facets = true;
        let every = c.search(&q, "hefei", "Anhui", None, None);
        assert_eq!(
            (top_k.total, &top_k.hits[0].0.id),
            (every.total, &every.hits[0].0.id),
            "the total and the page do not depend on the path taken to them"
        );
        assert!(every.total > 68, "more matches than the top-k path collects: {}", every.total);
        let mut q = text("显微镜");
        q.facets = true;
        q.limit = 7;
        let mut seen = Vec::new();
        loop {
            let page = c.search(&q, "hefei", "Anhui", None, None);
            assert!(page.total > 7);
            assert_eq!(page.facets.cities, vec![("hefei".to_string(), page.total)]);
            let Some((e, s)) = page.hits.last() else { break };
            q.after = Some((*s, format!("hefei/{}", e.stored.record.local_id)));
            seen.extend(page.hits.iter().map(|(e, _)| e.stored.record.local_id.clone()));
        }
        let total = c.search(&text("显微镜"), "hefei", "Anhui", None, None).total as usize;
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!((seen.len(), unique.len()), (total, total), "no repeats, no gaps");
    }

    #[test]
    fn a_search_past_its_deadline_stops_where_it_is() {
        let c = hefei_demo();
        // The free-window predicate is the costly part of a search: count
        // how many records it is asked about.
        let asked = std::cell::Cell::new(0usize);
        let window = |_: &InstrumentRecord| {
            asked.set(asked.get() + 1);
            true
        };
        let mut q = text("");
        let full = c.search(&q, "hefei", "Anhui", None, Some(&window));
        assert!(!full.stopped);
        assert!(asked.get() > 150, "every record is looked at without a deadline: {}", asked.get());
        asked.set(0);
        q.deadline = Some(tokio::time::Instant::now());
        let cut = c.search(&q, "hefei", "Anhui", None, Some(&window));
        assert!(cut.stopped, "a deadline that has passed stops the search");
        assert!(cut.hits.is_empty() && cut.total == 0);
        assert!(asked.get() < 64, "it stopped at once, after {} records", asked.get());
    }

    fn real_catalog() -> Catalog {
        let mut desc_only = stored("holder-1", "双倾样品杆", "Double-tilt specimen holder", "01.01.01");
        desc_only.record.description = "用于透射电子显微镜的双倾样品杆".into();
        Catalog::new(
            city_by_slug("hefei").unwrap(),
            vec![
                stored("ic-1", "离子色谱仪", "Ion Chromatograph", "01.05.03"),
                stored("orbi-1", "静电场轨道阱高分辨质谱仪", "Orbitrap High Resolution Mass Spectrometer", "01.02.01"),
                stored(
                    "qqq-1",
                    "超高效液相色谱-三重四极杆质谱联用仪",
                    "UPLC Triple Quadrupole Mass Spectrometer",
                    "01.02.03",
                ),
                stored("gcms-1", "气相色谱-质谱联用仪", "Gas Chromatograph-Mass Spectrometer", "01.02.02"),
                stored("hplc-1", "高效液相色谱仪", "High Performance Liquid Chromatograph", "01.05.01"),
                stored("sta-1", "同步热分析仪", "Simultaneous thermal analyzer (TGA-DSC)", "01.09.03"),
                stored("saxs-1", "小角X射线散射仪", "Small-angle X-ray Scattering System", "01.03.05"),
                stored("tem-a", "透射电子显微镜", "Transmission Electron Microscope", "01.01.01"),
                stored("tem-b", "透射式场发射电子显微镜", "Field Emission Electron Microscope", "01.01.01"),
                stored("tem-c", "场发射透射电镜", "FE-TEM", "01.01.01"),
                desc_only,
                stored("ppms-9", "综合物性测量系统", "Physical Property Measurement System", "02.03.01"),
                // Named as platforms list them, with no abbreviation in sight:
                // only the thesaurus joins them to what researchers type.
                stored("pcr-1", "实时荧光定量PCR仪", "Real-time PCR System", "13.02.01"),
                stored("ald-1", "原子层沉积系统", "Atomic Layer Deposition System", "10.05.01"),
                stored("ebl-1", "电子束曝光系统", "Electron Beam Writer", "10.05.02"),
                stored("cryo-1", "冷冻电镜", "Cryo-electron microscope", "01.01.01"),
                stored("stem-1", "球差校正扫描透射电子显微镜", "Double aberration-corrected microscope", "01.01.01"),
                stored("lcmsms-1", "液质联用仪（三重四极杆）", "LC-MS/MS (triple quadrupole)", "01.02.03"),
            ],
        )
    }

    #[test]
    fn literal_matches_are_never_lost() {
        let c = real_catalog();
        let top = |q: &str, n: usize| {
            let mut q = text(q);
            q.limit = n;
            ids_in(&c, &q)
        };
        assert_eq!(top("离子色谱", 3)[0], "ic-1");
        assert_eq!(top("高分辨质谱", 3)[0], "orbi-1");
        assert!(top("质谱", 10).contains(&"qqq-1".to_string()));
        assert!(top("mass spectrometer", 10).contains(&"qqq-1".to_string()));
        let chroma = top("色谱", 10);
        for id in ["gcms-1", "qqq-1", "hplc-1", "ic-1"] {
            assert!(chroma.contains(&id.to_string()), "色谱 finds {id}: {chroma:?}");
        }
        assert_eq!(top("TGA", 3)[0], "sta-1");
        assert_eq!(top("小角散射", 3)[0], "saxs-1", "most of a Chinese query's pairs");
        // Spacing, width and punctuation do not matter; Latin stays whole-word.
        assert_eq!(top("ＵＰＬＣ triple-quadrupole", 3)[0], "qqq-1");
        assert_eq!(top("Orbi trap", 3)[0], "orbi-1", "spacing does not matter");
        assert_eq!(top("orbitrap", 3)[0], "orbi-1");
        assert!(!top("TEM", 20).contains(&"ppms-9".to_string()), "TEM is not in System");
    }

    #[test]
    fn a_phrase_in_the_name_ranks_above_scattered_words_above_concepts_above_descriptions() {
        let c = real_catalog();
        let mut q = text("透射电子显微镜");
        q.limit = 10;
        let got = ids_in(&c, &q);
        // The phrase in two names (the shorter name first), the words in
        // one, the concept in two (透射电镜, and cryo-EM below TEM: equal,
        // so by id), the description last.
        assert_eq!(got, ["tem-a", "stem-1", "tem-b", "cryo-1", "tem-c", "holder-1"]);
    }

    #[test]
    fn what_a_new_city_searched_for_is_in_the_top_three() {
        let c = real_catalog();
        for (query, id) in [
            ("离子色谱", "ic-1"),
            ("高分辨质谱", "orbi-1"),
            ("质谱", "qqq-1"),
            ("mass spectrometer", "qqq-1"),
            ("色谱", "gcms-1"),
            ("TGA", "sta-1"),
            ("小角散射", "saxs-1"),
            ("液质联用", "lcmsms-1"),
            ("LC-MS/MS", "lcmsms-1"),
            ("qPCR", "pcr-1"),
            ("ALD", "ald-1"),
            ("EBL", "ebl-1"),
            ("cryo-EM", "cryo-1"),
            ("STEM", "stem-1"),
        ] {
            let mut q = text(query);
            q.limit = 3;
            let top = ids_in(&c, &q);
            assert!(top.contains(&id.to_string()), "{query}: {top:?}");
        }
    }
}
