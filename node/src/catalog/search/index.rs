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
    query::{AllQuery, Bm25StatisticsProvider, EnableScoring, Query},
    schema::{FAST, Field, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions},
    tokenizer::{Language, Stemmer, TextAnalyzer},
};

use super::{
    plan::{Parts, Plan, Tiers, WordFields},
    text::{self, LITERAL_SEPARATOR, LiteralNames, LiteralQuery, LiteralTokenizer, MixedTokenizer},
    thesaurus::Thesaurus,
};
use crate::catalog::model::InstrumentRecord;

const ANALYZER: &str = "corridor";
const LITERAL: &str = "literal";
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
    literal: Field,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// What searches read: one generation of the index, swapped whole after
    /// each commit.
    current: RwLock<Arc<View>>,
    /// The concepts documents are tagged with and queries expand to.
    thesaurus: RwLock<Arc<Thesaurus>>,
    /// Each document's names in literal form, by catalog place (ord): the
    /// collector tests "the query stands in a name" on them directly, a
    /// string search per match, where a phrase query would read positions.
    names: RwLock<Arc<Vec<LiteralNames>>>,
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
        let field = self.schema.get_field_name(term.field());
        let value = term.value();
        let text = value.as_str().unwrap_or_default();
        let freqs = &self.stats.doc_freq;
        // The statistics hold one query's terms: a scan finds one without
        // building the two strings a map key needs, once per term and field.
        let found = if freqs.len() <= 64 {
            freqs.iter().find(|((f, t), _)| f == field && t == text).map(|(_, n)| *n)
        } else {
            freqs.get(&(field.to_string(), text.to_string())).copied()
        };
        Ok(found.unwrap_or(0))
    }
}

fn text_options(tokenizer: &str, positions: bool) -> TextOptions {
    let record = if positions { IndexRecordOption::WithFreqsAndPositions } else { IndexRecordOption::WithFreqs };
    TextOptions::default()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer(tokenizer).set_index_option(record))
}

/// What each way of matching adds to a score, so that results come in the
/// order a researcher expects: the whole query as a phrase in a name, then
/// all its words in a name, then a match by concept (synonym, short form,
/// abbreviation, broader word), then most of a Chinese query's character
/// pairs in a name, then the text literally in the maker or model, then the
/// words elsewhere (a description), which earn BM25 alone.
/// A document collects every bonus it earns; each tier's least possible sum
/// is above the next tier's greatest, and BM25 (with corpus-wide statistics)
/// orders documents within a tier.
mod tier {
    pub const PHRASE_IN_NAME: f32 = 16_000.0;
    pub const WORDS_IN_NAME: f32 = 8_000.0;
    pub const CONCEPT: f32 = 4_000.0;
    pub const MOST_IN_NAME: f32 = 2_500.0;
    pub const LITERAL: f32 = 1_000.0;
    /// What a record gets for holding the query's literal character pairs:
    /// nothing. One that scores nothing else was only a candidate, kept only
    /// if the collector finds the text itself (every other way of matching
    /// adds a bonus, or BM25, which is above zero).
    pub const CANDIDATE: f32 = 0.0;
}

/// A write of this many records or more is merged into one segment.
const BULK_DOCS: usize = 1_000;

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
            name_zh: b.add_text_field("name_zh", text_options(ANALYZER, false)),
            name_en: b.add_text_field("name_en", text_options(ANALYZER, false)),
            body: b.add_text_field("body", text_options(ANALYZER, false)),
            concept: b.add_text_field("concept", STRING),
            literal: b.add_text_field(LITERAL, text_options(LITERAL, false)),
        };
        let index = Index::create_in_ram(b.build());
        index
            .tokenizers()
            .register(ANALYZER, TextAnalyzer::builder(MixedTokenizer).filter(Stemmer::new(Language::English)).build());
        index.tokenizers().register(LITERAL, TextAnalyzer::builder(LiteralTokenizer).build());
        // One thread: the node has other work, and documents are small.
        let writer = index.writer_with_num_threads(1, 15_000_000).expect("an in-RAM writer");
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().expect("a reader");
        let current = RwLock::new(View::of(&reader).expect("an empty in-RAM index opens"));
        let thesaurus = RwLock::new(Thesaurus::shipped());
        SearchIndex { index, reader, writer: Mutex::new(writer), fields, current, thesaurus, names: RwLock::default() }
    }

    pub fn thesaurus(&self) -> Arc<Thesaurus> {
        self.thesaurus.read().expect("poisoned").clone()
    }

    /// Uses `t` from now on. Documents already indexed keep their concepts
    /// until they are indexed again (the catalog re-indexes them all).
    pub fn set_thesaurus(&self, t: Arc<Thesaurus>) {
        *self.thesaurus.write().expect("poisoned") = t;
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
        for c in self.thesaurus().concepts_of(&[&r.name_zh, &r.name_en, &r.manufacturer]) {
            doc.add_text(f.concept, c);
        }
        // Names, maker and model: short, so that the phrase over character
        // pairs stays cheap. A description contains a query literally only
        // where it holds the query's words too, which the body field finds.
        let literal = [r.name_zh.as_str(), &r.name_en, &r.manufacturer, &r.model].join(&LITERAL_SEPARATOR.to_string());
        doc.add_text(f.literal, literal);
        doc
    }

    /// Adds or replaces documents (by local id), then makes them searchable.
    pub fn upsert<'a>(&self, docs: impl IntoIterator<Item = (u64, &'a InstrumentRecord)>) -> tantivy::Result<()> {
        let mut writer = self.writer.lock().expect("poisoned");
        let mut written = Vec::new();
        for (ord, r) in docs {
            writer.delete_term(Term::from_field_text(self.fields.local_id, &r.local_id));
            writer.add_document(self.document(ord, r))?;
            written.push((ord as usize, LiteralNames::of(&[&r.name_zh, &r.name_en], &[&r.manufacturer, &r.model])));
        }
        let bulk = written.len() >= BULK_DOCS;
        // In place: the list is copied only if a search holds it right now.
        let mut guard = self.names.write().expect("poisoned");
        let names = Arc::make_mut(&mut guard);
        for (ord, n) in written {
            if names.len() <= ord {
                names.resize(ord + 1, LiteralNames::default());
            }
            names[ord] = n;
        }
        drop(guard);
        writer.commit()?;
        // A bulk load (the rebuild at start, a large import) leaves as many
        // segments as the writer's memory budget cut it into. Every search
        // pays per segment (its scorers are built again, its collector starts
        // with no floor), so a bulk load is merged into one segment; small
        // writes are left to the merge policy.
        if bulk {
            let ids = self.index.searchable_segment_ids()?;
            if ids.len() > 1 {
                writer.merge(&ids).wait()?;
            }
        }
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

    /// Plans the search for `text`: every way a record can match it, each
    /// with its [`tier`] bonus, and BM25 over the query's words to order
    /// records within a tier; `None` for a text with no words (every record
    /// matches). `df(term)` says how many documents hold a term in any text
    /// field; a Latin word that none holds is matched with typos allowed
    /// instead. The thesaurus only adds: a record that contains the query's
    /// words, or its text literally, is a hit whatever the query names.
    fn plan(&self, text: &str, df: &dyn Fn(&str) -> u64) -> Option<Plan> {
        let f = &self.fields;
        let analysis = self.thesaurus().analyze(text);
        let words = self.terms_of(text);
        if words.is_empty() && analysis.named.is_empty() {
            return None;
        }
        // A query of Chinese alone is contained literally only where all its
        // character pairs are, which the words clauses already find; Latin
        // text may be written together or apart ("QExactive", "Q Exactive").
        let grams = if text.chars().any(|c| c.is_alphanumeric() && !text::is_cjk(c)) {
            text::literal_query_grams(text)
        } else {
            Vec::new()
        };
        // Each word exactly, or with typos when nothing holds it.
        let mut fuzzy_left = MAX_FUZZY_TERMS;
        let mut fuzzy = |term: &str| {
            // Only words of letters: a number or a model code one digit off
            // ("30000" for "20000") is another thing, not a typo.
            let latin = term.chars().all(|c| c.is_alphabetic() && !text::is_cjk(c));
            let len = term.chars().count();
            let yes = latin && len >= FUZZY_MIN && fuzzy_left > 0 && df(term) == 0;
            fuzzy_left -= usize::from(yes);
            yes.then_some(if len >= 2 * FUZZY_MIN { 2 } else { 1 })
        };
        let typed: Vec<(String, Option<u8>)> = words.iter().map(|w| (w.clone(), fuzzy(w))).collect();
        let cjk: Vec<bool> = words.iter().map(|w| w.chars().any(text::is_cjk)).collect();
        // The words no name covered still narrow a concept match: "透射电镜
        // 200kV", with the typos their words have in the query.
        let rest: Vec<(String, Option<u8>)> = analysis
            .rest
            .iter()
            .flat_map(|word| self.terms_of(word))
            .map(|w| {
                let typo = typed.iter().find(|(x, _)| *x == w).and_then(|(_, t)| *t);
                (w, typo)
            })
            .collect();
        let tiers = Tiers {
            words_in_name: tier::WORDS_IN_NAME,
            concept: tier::CONCEPT,
            most_in_name: tier::MOST_IN_NAME,
            candidate: tier::CANDIDATE,
        };
        let fields = WordFields { name_zh: f.name_zh, name_en: f.name_en, body: f.body };
        let parts = Parts { words: &typed, cjk: &cjk, named: &analysis.named, rest: &rest, grams: &grams };
        Some(Plan::new(fields, f.concept, f.literal, tiers, parts))
    }

    fn local_df(&self, searcher: &Searcher, term: &str) -> u64 {
        let f = &self.fields;
        [f.name_zh, f.name_en, f.body]
            .into_iter()
            .map(|field| searcher.doc_freq(&Term::from_field_text(field, term)).unwrap_or(0))
            .sum()
    }

    /// This node's statistics for the terms `text` is scored by: its words
    /// in the name and body fields. (Every other way of matching adds a
    /// constant, which needs no statistics.)
    pub fn stats(&self, text: &str) -> tantivy::Result<CorpusStats> {
        let view = self.view();
        let searcher = &view.searcher;
        let schema = self.index.schema();
        let f = &self.fields;
        let mut out = CorpusStats { num_docs: searcher.num_docs(), ..Default::default() };
        for field in [f.name_zh, f.name_en, f.body] {
            out.field_tokens.insert(schema.get_field_name(field).to_string(), searcher.total_num_tokens(field)?);
        }
        for word in self.terms_of(text) {
            for field in [f.name_zh, f.name_en, f.body] {
                let df = searcher.doc_freq(&Term::from_field_text(field, &word))?;
                out.doc_freq.insert((schema.get_field_name(field).to_string(), word.clone()), df);
            }
        }
        Ok(out)
    }

    /// Matching documents, in no order, scored with `global` when given and
    /// with this index's own statistics otherwise. With `limit` =
    /// `usize::MAX` every match, with the bounds of its score; otherwise the
    /// best `limit`, with their exact scores, and every document tied with
    /// the last of them.
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
        let plan = self.plan(text, &df);
        let global = global.map(|stats| Global { stats, schema: &schema });
        // One scoring pass both counts every match (so that the total never
        // depends on the page size) and keeps the best `limit` with every
        // match tied with the last of them: many instruments share a name,
        // and which of a run of equal scores make the page is decided by id,
        // which the index does not order by. With `usize::MAX` it keeps all,
        // for a caller that filters before it ranks.
        let phrase = LiteralQuery::new(text).map(Arc::new);
        let names = self.names.read().expect("poisoned").clone();
        let exact = Exact { phrase: phrase.clone(), names: names.clone() };
        let best = BestWithTies { limit, ords: &view.ords, names, phrase };
        let (hits, matches) = match plan {
            Some(plan) => {
                let scoring = match &global {
                    Some(g) => EnableScoring::enabled_from_statistics_provider(g, searcher),
                    None => EnableScoring::enabled_from_searcher(searcher),
                };
                plan.run(searcher, scoring, &best)?
            }
            None => collect(searcher, &AllQuery, global.as_ref(), &best)?,
        };
        Ok(Scored { hits, matches, exact })
    }
}

/// What [`SearchIndex::search`] found.
pub struct Scored {
    /// (ord, lower and upper bound of the score) of the documents
    /// collected: exact (both the same) with a `limit`; with `usize::MAX`,
    /// left for the caller to settle with `exact`.
    pub hits: Vec<Bounded>,
    /// How many documents match in all, collected or not.
    pub matches: u64,
    pub exact: Exact,
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
/// It also adds the first tier's bonus to a match whose names contain the
/// query's literal text, tested on the names in memory. The test is made
/// late and lazily: a match is kept with the bounds of its score (without
/// and with the bonuses), and only those whose upper bound can still reach
/// the page are tested, best first, until the page is settled. A broad
/// query matches hundreds of names; a page needs a few dozen of them read.
struct BestWithTies<'a> {
    limit: usize,
    /// Each segment's column of catalog places, by segment ordinal.
    ords: &'a [Column<u64>],
    names: Arc<Vec<LiteralNames>>,
    /// The query's literal text; none for no query.
    phrase: Option<Arc<LiteralQuery>>,
}

/// A kept match: its place, and its score without and with the literal
/// bonuses it may still earn (equal once its names were read).
pub type Bounded = (u64, Score, Score);

struct SegmentBest {
    ords: Column<u64>,
    names: Arc<Vec<LiteralNames>>,
    phrase: Option<Arc<LiteralQuery>>,
    limit: usize,
    /// Upper bounds below this cannot reach the page: `limit` kept ones are
    /// surely at least this good.
    floor: Score,
    /// Kept candidates beyond which the hopeless are dropped. It doubles past
    /// what a drop leaves, so a long run of ties costs linear time.
    prune_at: usize,
    kept: Vec<Bounded>,
    matches: u64,
}

impl Collector for BestWithTies<'_> {
    type Fruit = (Vec<Bounded>, u64);
    type Child = SegmentBest;

    fn for_segment(&self, ord: SegmentOrdinal, _: &SegmentReader) -> tantivy::Result<SegmentBest> {
        let ords = self.ords.get(ord as usize).cloned();
        Ok(SegmentBest {
            ords: ords.ok_or_else(|| tantivy::TantivyError::InternalError(format!("no segment {ord}")))?,
            names: self.names.clone(),
            phrase: self.phrase.clone(),
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

    fn merge_fruits(&self, fruits: Vec<(Vec<Bounded>, u64)>) -> tantivy::Result<Self::Fruit> {
        let matches = fruits.iter().map(|(_, n)| n).sum();
        let kept: Vec<Bounded> = fruits.into_iter().flat_map(|(k, _)| k).collect();
        if self.limit == usize::MAX {
            // Every match, for a caller that filters first: it settles the
            // scores of those that can still make its page (see `Exact`).
            return Ok((kept, matches));
        }
        let exact = Exact { phrase: self.phrase.clone(), names: self.names.clone() };
        let hits = settle(kept, self.limit, |k| (k.1, k.2), |k| exact.score(k.0, k.1, k.2));
        Ok((hits.into_iter().map(|(k, s)| (k.0, s, s)).collect(), matches))
    }
}

/// The best `limit` of `items` by exact score, with every one tied with the
/// last of them. An item's exact score lies within its `bounds` and costs a
/// look at its names, so items are looked at best upper bound first, until
/// `limit` exact scores beat the next upper bound: a broad query matches
/// hundreds of names, and a page needs a few dozen of them read.
pub fn settle<T>(
    mut items: Vec<T>,
    limit: usize,
    bounds: impl Fn(&T) -> (Score, Score),
    exact: impl Fn(&T) -> Score,
) -> Vec<(T, Score)> {
    items.sort_unstable_by(|a, b| bounds(b).1.total_cmp(&bounds(a).1));
    let mut settled: Vec<(T, Score)> = Vec::with_capacity(items.len().min(limit.saturating_mul(4)));
    let mut best: std::collections::BinaryHeap<std::cmp::Reverse<OrdScore>> = Default::default();
    for item in items {
        let (low, high) = bounds(&item);
        if best.len() >= limit && best.peek().is_some_and(|w| high < w.0.0) {
            break;
        }
        let score = if low == high { low } else { exact(&item) };
        settled.push((item, score));
        best.push(std::cmp::Reverse(OrdScore(score)));
        if best.len() > limit {
            best.pop();
        }
    }
    keep_best(&mut settled, limit);
    settled
}

/// How a match's exact score is found from the lower bound it was kept with:
/// the literal bonuses its names earn for the query's text.
#[derive(Clone)]
pub struct Exact {
    phrase: Option<Arc<LiteralQuery>>,
    names: Arc<Vec<LiteralNames>>,
}

impl Exact {
    /// The exact score of the match at `ord` kept with these bounds.
    pub fn score(&self, ord: u64, low: Score, high: Score) -> Score {
        if low == high { low } else { low + bonus(self.phrase.as_deref(), self.names.get(ord as usize)) }
    }
}

/// A score ordered totally, for the heap of the page's scores.
#[derive(PartialEq)]
struct OrdScore(Score);

impl Eq for OrdScore {}

impl PartialOrd for OrdScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The literal bonuses a record's names earn for the query's text.
fn bonus(phrase: Option<&LiteralQuery>, names: Option<&LiteralNames>) -> Score {
    match (phrase, names) {
        (Some(q), Some(n)) => {
            let (in_name, literal) = n.find(q);
            (if in_name { tier::PHRASE_IN_NAME } else { 0.0 }) + if literal { tier::LITERAL } else { 0.0 }
        }
        _ => 0.0,
    }
}

impl SegmentCollector for SegmentBest {
    type Fruit = (Vec<Bounded>, u64);

    fn collect(&mut self, doc: DocId, score: Score) {
        let Some(ord) = self.ords.first(doc) else { return };
        let kept = match &self.phrase {
            // Below every tier's bonus, the record was only a literal
            // candidate: it is a match only if it holds the text itself,
            // which is read now, for the count.
            Some(q) if score <= tier::CANDIDATE => match self.names.get(ord as usize).map(|n| n.find(q)) {
                Some((in_name, true)) => {
                    let s = score + tier::LITERAL + if in_name { tier::PHRASE_IN_NAME } else { 0.0 };
                    (ord, s, s)
                }
                _ => return,
            },
            Some(_) => (ord, score, score + tier::PHRASE_IN_NAME + tier::LITERAL),
            None => (ord, score, score),
        };
        self.matches += 1;
        if kept.2 < self.floor {
            return;
        }
        self.kept.push(kept);
        if self.kept.len() >= self.prune_at {
            self.floor = surely_beaten(&self.kept, self.limit);
            let floor = self.floor;
            self.kept.retain(|k| k.2 >= floor);
            self.prune_at = self.prune_at.max(self.kept.len().saturating_mul(2));
        }
    }

    fn harvest(self) -> Self::Fruit {
        (self.kept, self.matches)
    }
}

/// The `limit`-th best lower bound of `kept`: a match whose upper bound is
/// below it cannot make the page.
fn surely_beaten(kept: &[Bounded], limit: usize) -> Score {
    if limit == 0 {
        return Score::INFINITY;
    }
    if kept.len() < limit {
        return Score::MIN;
    }
    let mut lows: Vec<Score> = kept.iter().map(|k| k.1).collect();
    *lows.select_nth_unstable_by(limit - 1, |a, b| b.total_cmp(a)).1
}

/// Keeps the best `limit` of `hits` and every one tied with the last of
/// them; returns the score of that last one (the lowest that can still make
/// the page).
fn keep_best<T>(hits: &mut Vec<(T, Score)>, limit: usize) -> Score {
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
