//! The node's full-text index: tantivy, in RAM, derived from the store and
//! rebuilt from it at every start (so it is never stale after a crash).
//! Scoring can use corpus-wide statistics handed in by the gateway, so that
//! nine nodes score exactly as one index holding all their data would.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentOrdinal, SegmentReader,
    TantivyDocument, Term,
    collector::{Collector, SegmentCollector},
    columnar::Column,
    query::{AllQuery, Bm25StatisticsProvider, BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery},
    schema::{FAST, Field, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions},
    tokenizer::{Language, Stemmer, TextAnalyzer},
};

use super::text::{self, MixedTokenizer};
use crate::model::InstrumentRecord;

const ANALYZER: &str = "corridor";
/// The fast field holding each document's place in the catalog.
const ORD: &str = "ord";

/// Corpus statistics for BM25: per field token totals and per term document
/// frequencies, keyed by field name and term text so that they add up
/// across nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorpusStats {
    pub num_docs: u64,
    pub field_tokens: BTreeMap<String, u64>,
    pub doc_freq: BTreeMap<(String, String), u64>,
}

impl CorpusStats {
    /// Adds another node's statistics to these.
    pub fn add(&mut self, other: &CorpusStats) {
        self.num_docs += other.num_docs;
        for (k, v) in &other.field_tokens {
            *self.field_tokens.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.doc_freq {
            *self.doc_freq.entry(k.clone()).or_default() += v;
        }
    }
}

struct Fields {
    ord: Field,
    local_id: Field,
    name_zh: Field,
    name_en: Field,
    body: Field,
    concept: Field,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// What searches read: one generation of the index, swapped whole after
    /// each commit.
    current: RwLock<Arc<View>>,
}

/// One generation of the index, with each segment's column of catalog
/// places already open: opening it is a dictionary lookup per segment that
/// every search used to repeat.
struct View {
    searcher: Searcher,
    /// By segment ordinal.
    ords: Vec<Column<u64>>,
}

impl View {
    fn of(reader: &IndexReader) -> tantivy::Result<Arc<View>> {
        let searcher = reader.searcher();
        let ords = searcher.segment_readers().iter().map(|s| s.fast_fields().u64(ORD)).collect::<Result<_, _>>()?;
        Ok(Arc::new(View { searcher, ords }))
    }
}

/// Statistics from a [`CorpusStats`], answering tantivy's BM25 questions.
struct Global<'a> {
    stats: &'a CorpusStats,
    schema: &'a Schema,
}

impl Bm25StatisticsProvider for Global<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.stats.field_tokens.get(self.schema.get_field_name(field)).copied().unwrap_or(0))
    }
    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.stats.num_docs)
    }
    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let field = self.schema.get_field_name(term.field()).to_string();
        let text = term.value().as_str().unwrap_or_default().to_string();
        Ok(self.stats.doc_freq.get(&(field, text)).copied().unwrap_or(0))
    }
}

fn text_options() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs),
    )
}

/// Latin terms this long or longer may match with one typo; twice as long, two.
const FUZZY_MIN: usize = 5;
/// Most query words matched with typos allowed; the rest must match exactly.
const MAX_FUZZY_TERMS: usize = 4;

impl Default for SearchIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl SearchIndex {
    pub fn new() -> Self {
        let mut b = Schema::builder();
        let fields = Fields {
            ord: b.add_u64_field(ORD, FAST),
            local_id: b.add_text_field("local_id", STRING),
            name_zh: b.add_text_field("name_zh", text_options()),
            name_en: b.add_text_field("name_en", text_options()),
            body: b.add_text_field("body", text_options()),
            concept: b.add_text_field("concept", STRING),
        };
        let index = Index::create_in_ram(b.build());
        index
            .tokenizers()
            .register(ANALYZER, TextAnalyzer::builder(MixedTokenizer).filter(Stemmer::new(Language::English)).build());
        // One thread: the node has other work, and documents are small.
        let writer = index.writer_with_num_threads(1, 15_000_000).expect("an in-RAM writer");
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().expect("a reader");
        let current = RwLock::new(View::of(&reader).expect("an empty in-RAM index opens"));
        SearchIndex { index, reader, writer: Mutex::new(writer), fields, current }
    }

    fn document(&self, ord: u64, r: &InstrumentRecord) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.ord, ord);
        doc.add_text(f.local_id, &r.local_id);
        doc.add_text(f.name_zh, &r.name_zh);
        doc.add_text(f.name_en, &r.name_en);
        let body = [
            r.description.as_str(),
            &r.techniques.join(" "),
            &r.manufacturer,
            &r.model,
            &r.institution_name,
            &r.department,
        ]
        .join(" \n ");
        doc.add_text(f.body, &body);
        for c in text::concepts_of(&r.name_zh, &r.name_en) {
            doc.add_text(f.concept, c);
        }
        doc
    }

    /// Adds or replaces documents (by local id), then makes them searchable.
    pub fn upsert<'a>(&self, docs: impl IntoIterator<Item = (u64, &'a InstrumentRecord)>) -> tantivy::Result<()> {
        let mut writer = self.writer.lock().expect("poisoned");
        for (ord, r) in docs {
            writer.delete_term(Term::from_field_text(self.fields.local_id, &r.local_id));
            writer.add_document(self.document(ord, r))?;
        }
        writer.commit()?;
        // Still under the writer's lock, so generations are swapped in order.
        self.reader.reload()?;
        let view = View::of(&self.reader)?;
        *self.current.write().expect("poisoned") = view;
        Ok(())
    }

    fn view(&self) -> Arc<View> {
        self.current.read().expect("poisoned").clone()
    }

    /// The terms of a query word, as the index analyzes text.
    fn terms_of(&self, word: &str) -> Vec<String> {
        let mut analyzer = self.index.tokenizers().get(ANALYZER).expect("registered");
        let mut out = Vec::new();
        analyzer.token_stream(word).process(&mut |t| out.push(t.text.clone()));
        out
    }

    /// Builds the query for `text`. `df(term)` says how many documents hold a
    /// term in any text field; a Latin term that none holds is matched with
    /// typos allowed instead.
    fn build(&self, text: &str, df: &dyn Fn(&str) -> u64) -> Box<dyn Query> {
        let f = &self.fields;
        let analysis = text::analyze(text);
        let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if !analysis.concepts.is_empty() {
            let any: Vec<(Occur, Box<dyn Query>)> = analysis
                .concepts
                .iter()
                .map(|c| {
                    let q = TermQuery::new(Term::from_field_text(f.concept, c), IndexRecordOption::Basic);
                    (Occur::Should, Box::new(q) as Box<dyn Query>)
                })
                .collect();
            must.push((Occur::Must, Box::new(BooleanQuery::new(any))));
        }
        // Each fuzzy term builds an automaton over the whole term dictionary:
        // a few typos are worth it, a query of nonsense words is not.
        let mut fuzzy_left = MAX_FUZZY_TERMS;
        for word in &analysis.rest {
            for term in self.terms_of(word) {
                // Only words of letters: a number or a model code one digit
                // off ("30000" for "20000") is another thing, not a typo.
                let latin = term.chars().all(|c| c.is_alphabetic() && !text::is_cjk(c));
                let len = term.chars().count();
                let fuzzy = latin && len >= FUZZY_MIN && fuzzy_left > 0 && df(&term) == 0;
                fuzzy_left -= usize::from(fuzzy);
                let per_field: Vec<(Occur, Box<dyn Query>)> = if fuzzy {
                    let distance = if len >= 2 * FUZZY_MIN { 2 } else { 1 };
                    [f.name_en, f.body]
                        .into_iter()
                        .map(|field| {
                            let q = FuzzyTermQuery::new(Term::from_field_text(field, &term), distance, true);
                            (Occur::Should, Box::new(q) as Box<dyn Query>)
                        })
                        .collect()
                } else {
                    [(f.name_zh, 2.0), (f.name_en, 2.0), (f.body, 1.0)]
                        .into_iter()
                        .map(|(field, boost)| {
                            let q = TermQuery::new(Term::from_field_text(field, &term), IndexRecordOption::WithFreqs);
                            (Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost)) as Box<dyn Query>)
                        })
                        .collect()
                };
                must.push((Occur::Must, Box::new(BooleanQuery::new(per_field))));
            }
        }
        if must.is_empty() { Box::new(AllQuery) } else { Box::new(BooleanQuery::new(must)) }
    }

    fn local_df(&self, searcher: &Searcher, term: &str) -> u64 {
        let f = &self.fields;
        [f.name_zh, f.name_en, f.body]
            .into_iter()
            .map(|field| searcher.doc_freq(&Term::from_field_text(field, term)).unwrap_or(0))
            .sum()
    }

    /// This node's statistics for the terms `text` may use.
    pub fn stats(&self, text: &str) -> tantivy::Result<CorpusStats> {
        let view = self.view();
        let searcher = &view.searcher;
        let schema = self.index.schema();
        // Every exact term, fuzzy or not: the gateway decides on the sums.
        let query = self.build(text, &|_| 1);
        let mut terms = Vec::new();
        query.query_terms(&mut |t, _| terms.push(t.clone()));
        let mut out = CorpusStats { num_docs: searcher.num_docs(), ..Default::default() };
        for field in [self.fields.name_zh, self.fields.name_en, self.fields.body, self.fields.concept] {
            out.field_tokens.insert(schema.get_field_name(field).to_string(), searcher.total_num_tokens(field)?);
        }
        for t in terms {
            let key =
                (schema.get_field_name(t.field()).to_string(), t.value().as_str().unwrap_or_default().to_string());
            out.doc_freq.insert(key, searcher.doc_freq(&t)?);
        }
        Ok(out)
    }

    /// Matching documents as (ord, score), in no order, scored with `global`
    /// when given and with this index's own statistics otherwise. With
    /// `limit` = `usize::MAX` every match; otherwise the best `limit` and
    /// every document tied with the last of them.
    pub fn search(&self, text: &str, global: Option<&CorpusStats>, limit: usize) -> tantivy::Result<Scored> {
        let view = self.view();
        let searcher = &view.searcher;
        let schema = self.index.schema();
        let df = |term: &str| -> u64 {
            match global {
                Some(g) => ["name_zh", "name_en", "body"]
                    .iter()
                    .map(|f| g.doc_freq.get(&(f.to_string(), term.to_string())).copied().unwrap_or(0))
                    .sum(),
                None => self.local_df(searcher, term),
            }
        };
        let query = self.build(text, &df);
        let global = global.map(|stats| Global { stats, schema: &schema });
        // One scoring pass both counts every match (so that the total never
        // depends on the page size) and keeps the best `limit` with every
        // match tied with the last of them: many instruments share a name,
        // and which of a run of equal scores make the page is decided by id,
        // which the index does not order by. With `usize::MAX` it keeps all,
        // for a caller that filters before it ranks.
        let (hits, matches) = collect(searcher, &*query, global.as_ref(), &BestWithTies { limit, ords: &view.ords })?;
        Ok(Scored { hits, matches })
    }
}

/// What [`SearchIndex::search`] found.
pub struct Scored {
    /// (ord, score) of the documents collected.
    pub hits: Vec<(u64, Score)>,
    /// How many documents match in all, collected or not.
    pub matches: u64,
}

/// Runs `collector` with corpus-wide statistics when given.
fn collect<C: Collector>(
    searcher: &Searcher,
    query: &dyn Query,
    global: Option<&Global>,
    collector: &C,
) -> tantivy::Result<C::Fruit> {
    match global {
        Some(g) => searcher.search_with_statistics_provider(query, collector, g),
        None => searcher.search(query, collector),
    }
}

/// The best `limit` matches, every match tied with the last of them, and how
/// many match in all: one scoring pass where a top-k heap, a count and a
/// second pass for the ties took three.
struct BestWithTies<'a> {
    limit: usize,
    /// Each segment's column of catalog places, by segment ordinal.
    ords: &'a [Column<u64>],
}

struct SegmentBest {
    ords: Column<u64>,
    limit: usize,
    /// Scores below this cannot reach the page: `limit` kept ones beat it.
    floor: Score,
    /// Kept candidates beyond which the worst are dropped. It doubles past
    /// what a drop leaves, so a long run of ties costs linear time.
    prune_at: usize,
    kept: Vec<(u64, Score)>,
    matches: u64,
}

impl Collector for BestWithTies<'_> {
    type Fruit = (Vec<(u64, Score)>, u64);
    type Child = SegmentBest;

    fn for_segment(&self, ord: SegmentOrdinal, _: &SegmentReader) -> tantivy::Result<SegmentBest> {
        let ords = self.ords.get(ord as usize).cloned();
        Ok(SegmentBest {
            ords: ords.ok_or_else(|| tantivy::TantivyError::InternalError(format!("no segment {ord}")))?,
            limit: self.limit,
            floor: if self.limit == 0 { Score::INFINITY } else { Score::MIN },
            prune_at: self.limit.saturating_mul(2).max(64),
            kept: Vec::new(),
            matches: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<(Vec<(u64, Score)>, u64)>) -> tantivy::Result<Self::Fruit> {
        let matches = fruits.iter().map(|(_, n)| n).sum();
        let mut kept: Vec<(u64, Score)> = fruits.into_iter().flat_map(|(k, _)| k).collect();
        keep_best(&mut kept, self.limit);
        Ok((kept, matches))
    }
}

impl SegmentCollector for SegmentBest {
    type Fruit = (Vec<(u64, Score)>, u64);

    fn collect(&mut self, doc: DocId, score: Score) {
        self.matches += 1;
        if score < self.floor {
            return;
        }
        if let Some(ord) = self.ords.first(doc) {
            self.kept.push((ord, score));
        }
        if self.kept.len() >= self.prune_at {
            self.floor = keep_best(&mut self.kept, self.limit);
            self.prune_at = self.prune_at.max(self.kept.len().saturating_mul(2));
        }
    }

    fn harvest(self) -> Self::Fruit {
        (self.kept, self.matches)
    }
}

/// Keeps the best `limit` of `hits` and every one tied with the last of
/// them; returns the score of that last one (the lowest that can still make
/// the page).
fn keep_best(hits: &mut Vec<(u64, Score)>, limit: usize) -> Score {
    if limit == 0 {
        hits.clear();
        return Score::INFINITY;
    }
    if hits.len() <= limit {
        return Score::MIN;
    }
    let mut scores: Vec<Score> = hits.iter().map(|h| h.1).collect();
    let (_, &mut last, _) = scores.select_nth_unstable_by(limit - 1, |a, b| b.total_cmp(a));
    hits.retain(|h| h.1 >= last);
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_best_keeps_the_best_and_every_tie_with_the_last() {
        // Scores with long runs of ties, in a scrambled order.
        let hits: Vec<(u64, Score)> = (0..500u64).map(|i| ((i * 7919) % 500, ((i * 31) % 9) as Score)).collect();
        for limit in [0, 1, 5, 20, 55, 499, 500, 10_000] {
            let mut kept = hits.clone();
            let floor = keep_best(&mut kept, limit);
            let mut scores: Vec<Score> = hits.iter().map(|h| h.1).collect();
            scores.sort_by(|a, b| b.total_cmp(a));
            let expect: Vec<(u64, Score)> = match limit {
                0 => Vec::new(),
                l if l >= hits.len() => hits.clone(),
                l => hits.iter().copied().filter(|h| h.1 >= scores[l - 1]).collect(),
            };
            let sorted = |mut v: Vec<(u64, Score)>| {
                v.sort_by_key(|h| h.0);
                v
            };
            assert_eq!(sorted(kept.clone()), sorted(expect), "limit {limit}");
            assert!(kept.iter().all(|h| h.1 >= floor), "limit {limit}");
        }
    }
}
