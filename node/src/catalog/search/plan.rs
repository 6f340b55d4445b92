//! One pass over a query's posting lists. Every way a record can match a
//! query (the tiers in `index`) is decided from one list per term and field:
//! a tree of boolean queries opened the same list once for each clause that
//! named it (a word in a name, anywhere, most of the pairs, BM25), and built
//! a union scorer per clause, each zeroing a 4,096-document buffer.
//!
//! The pass reads the lists a window of documents at a time and notes, per
//! document, which of the query's words it holds in a name and anywhere,
//! which concepts it carries, how many literal pairs, and its BM25 sum; then
//! [`Plan::score`] turns those into the document's score, exactly as the
//! clauses would have.

use std::cell::RefCell;

use tantivy::{
    DocId, Score, Searcher, SegmentReader, TERMINATED, Term,
    collector::{Collector, SegmentCollector},
    query::{BooleanQuery, EnableScoring, FuzzyTermQuery, Occur, Query, Scorer, TermQuery, Weight},
    schema::{Field, IndexRecordOption},
};

use super::thesaurus::Named;

/// The most query words, leftover words and concepts a plan tracks: one bit
/// each in a document's masks. A query beyond them is read up to them.
pub const MAX_PARTS: usize = 64;

/// The query's literal pairs a candidate must hold: its rarest ones.
const LITERAL_PAIRS: usize = 4;

/// Documents noted at once.
const WINDOW: u32 = 4096;

/// The fields a word is looked for in, and what a match in each weighs.
#[derive(Clone, Copy)]
pub struct WordFields {
    pub name_zh: Field,
    pub name_en: Field,
    pub body: Field,
}

impl WordFields {
    /// (field, BM25 boost, whether it is a name).
    fn each(&self) -> [(Field, Score, bool); 3] {
        [(self.name_zh, 2.0, true), (self.name_en, 2.0, true), (self.body, 1.0, false)]
    }
}

/// One distinct term the plan reads, with the words it stands for.
struct Looked {
    term: String,
    typo: Option<u8>,
    /// The query words (by index) this term is.
    words: u64,
    /// How many query words it is: each adds its BM25 once, as each word's
    /// clause did.
    times: Score,
    /// The leftover words (by index) of the concept tier it is.
    rest: u64,
}

/// What a query asks of a document, in masks over its parts.
pub struct Plan {
    fields: WordFields,
    looked: Vec<Looked>,
    /// All the query's words.
    all_words: u64,
    /// The Chinese words and the others, when most of the Chinese words in a
    /// name may do (three or more of them); with how many are needed.
    most: Option<(u64, u64, u32)>,
    /// Concept terms, each a bit of `con`.
    concepts: Vec<String>,
    concept_field: Field,
    /// Each name the query holds: any of these concept sets, all of a set.
    named: Vec<Vec<u64>>,
    /// The leftover words the concept tier also needs, anywhere.
    all_rest: u64,
    /// Literal character pairs, all needed for a literal candidate.
    grams: Vec<String>,
    literal_field: Field,
    tiers: Tiers,
}

/// The bonus of each tier (see `index::tier`).
#[derive(Clone, Copy)]
pub struct Tiers {
    pub words_in_name: Score,
    pub concept: Score,
    pub most_in_name: Score,
    pub candidate: Score,
}

/// What a query's analysis hands the plan.
pub struct Parts<'a> {
    /// The query's words as indexed terms, with the typos each may have.
    pub words: &'a [(String, Option<u8>)],
    /// Which of them are Chinese.
    pub cjk: &'a [bool],
    /// Each name the query holds.
    pub named: &'a [Named],
    /// The words no name covered, as terms with their typos.
    pub rest: &'a [(String, Option<u8>)],
    pub grams: &'a [String],
}

impl Plan {
    pub fn new(fields: WordFields, concept_field: Field, literal_field: Field, tiers: Tiers, p: Parts<'_>) -> Plan {
        let words = &p.words[..p.words.len().min(MAX_PARTS)];
        let rest = &p.rest[..p.rest.len().min(MAX_PARTS)];
        let mut looked: Vec<Looked> = Vec::new();
        fn look(looked: &mut Vec<Looked>, term: &str, typo: Option<u8>) -> usize {
            match looked.iter().position(|l| l.term == term && l.typo == typo) {
                Some(i) => i,
                None => {
                    looked.push(Looked { term: term.to_string(), typo, words: 0, times: 0.0, rest: 0 });
                    looked.len() - 1
                }
            }
        }
        let mut all_words = 0u64;
        let (mut cjk, mut other) = (0u64, 0u64);
        for (i, (term, typo)) in words.iter().enumerate() {
            let l = look(&mut looked, term, *typo);
            looked[l].words |= 1 << i;
            looked[l].times += 1.0;
            all_words |= 1 << i;
            if p.cjk.get(i).copied().unwrap_or(false) {
                cjk |= 1 << i;
            } else {
                other |= 1 << i;
            }
        }
        let mut all_rest = 0u64;
        for (k, (term, typo)) in rest.iter().enumerate() {
            let l = look(&mut looked, term, *typo);
            looked[l].rest |= 1 << k;
            all_rest |= 1 << k;
        }
        let n_cjk = cjk.count_ones();
        // Three in five, as the large engines' default minimum-should-match.
        let most = (n_cjk >= 3).then(|| (cjk, other, (n_cjk * 3).div_ceil(5).max(2)));
        let mut concepts: Vec<String> = Vec::new();
        let mut named = Vec::new();
        'names: for n in p.named {
            let mut sets = Vec::new();
            for set in &n.any {
                let mut mask = 0u64;
                for c in set {
                    let bit = match concepts.iter().position(|x| x == c) {
                        Some(b) => b,
                        None if concepts.len() < MAX_PARTS => {
                            concepts.push(c.clone());
                            concepts.len() - 1
                        }
                        None => break 'names,
                    };
                    mask |= 1 << bit;
                }
                sets.push(mask);
            }
            named.push(sets);
        }
        Plan {
            fields,
            looked,
            all_words,
            most,
            concepts,
            concept_field,
            named,
            all_rest,
            grams: p.grams.to_vec(),
            literal_field,
            tiers,
        }
    }

    /// A document's score from what it holds, or `None` when no way of
    /// matching is met. The sums run in the order the clauses did.
    fn score(&self, n: &Noted) -> Option<Score> {
        let t = &self.tiers;
        let mut matched = false;
        let mut score: Score = 0.0;
        if self.all_words != 0 {
            if holds(n.name, self.all_words) {
                score += t.words_in_name;
                matched = true;
            }
            if holds(n.any, self.all_words) {
                score += n.bm25;
                matched = true;
            }
            if let Some((cjk, other, needed)) = self.most
                && (n.name & cjk).count_ones() >= needed
                && holds(n.any, other)
            {
                score += t.most_in_name;
                matched = true;
            }
        }
        if !self.named.is_empty()
            && self.named.iter().all(|sets| sets.iter().any(|&set| holds(n.con, set)))
            && holds(n.rest, self.all_rest)
        {
            score += t.concept;
            matched = true;
        }
        if n.literal {
            score += t.candidate;
            matched = true;
        }
        matched.then_some(score)
    }

    /// Runs the plan over every segment into `collector`, scored with
    /// `scoring` (corpus-wide statistics or the index's own).
    pub fn run<C: Collector>(
        &self,
        searcher: &Searcher,
        scoring: EnableScoring<'_>,
        collector: &C,
    ) -> tantivy::Result<C::Fruit> {
        let unscored = EnableScoring::disabled_from_searcher(searcher);
        let mut weights: Vec<(Box<dyn Weight>, Role)> = Vec::new();
        for (i, l) in self.looked.iter().enumerate() {
            for (field, boost, name) in self.fields.each() {
                let term = Term::from_field_text(field, &l.term);
                let q: Box<dyn Query> = match l.typo {
                    Some(d) => Box::new(FuzzyTermQuery::new(term, d, true)),
                    None => Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                };
                weights.push((q.weight(scoring)?, Role::Word { looked: i, name, boost }));
            }
        }
        let basic = |field: Field, text: &str| {
            TermQuery::new(Term::from_field_text(field, text), IndexRecordOption::Basic).weight(unscored)
        };
        for (bit, c) in self.concepts.iter().enumerate() {
            weights.push((basic(self.concept_field, c)?, Role::Concept(1 << bit)));
        }
        if !self.grams.is_empty() {
            // Candidates hold the rarest few of the query's pairs, found by
            // an intersection that skips along the rarest list. The pairs of
            // a Latin word ("ro", "co") each hold half the catalog, and
            // seeking all of them for every candidate cost more than the
            // collector's own test of the text, which every candidate gets.
            let mut grams: Vec<(u64, Term)> = self
                .grams
                .iter()
                .map(|g| {
                    let t = Term::from_field_text(self.literal_field, g);
                    Ok((searcher.doc_freq(&t)?, t))
                })
                .collect::<tantivy::Result<_>>()?;
            grams.sort_by_key(|(df, _)| *df);
            let all: Vec<(Occur, Box<dyn Query>)> = grams
                .into_iter()
                .take(LITERAL_PAIRS)
                .map(|(_, t)| (Occur::Must, Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>))
                .collect();
            weights.push((BooleanQuery::new(all).weight(unscored)?, Role::Literal));
        }
        let mut fruits = Vec::new();
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            let mut segment = collector.for_segment(ord as u32, reader)?;
            self.segment(reader, &weights, &mut |doc, score| segment.collect(doc, score))?;
            fruits.push(segment.harvest());
        }
        collector.merge_fruits(fruits)
    }

    fn segment(
        &self,
        reader: &SegmentReader,
        weights: &[(Box<dyn Weight>, Role)],
        out: &mut dyn FnMut(DocId, Score),
    ) -> tantivy::Result<()> {
        let mut lists: Vec<(Box<dyn Scorer>, Role)> = Vec::with_capacity(weights.len());
        for (w, role) in weights {
            let boost = match role {
                Role::Word { boost, .. } => *boost,
                _ => 1.0,
            };
            let s = w.scorer(reader, boost)?;
            if s.doc() != TERMINATED {
                lists.push((s, *role));
            }
        }
        let alive = reader.alive_bitset();
        NOTES.with_borrow_mut(|notes| {
            // Each window starts at the first document any list still holds.
            while let Some(start) = lists.iter().map(|(s, _)| s.doc()).min().filter(|&d| d != TERMINATED) {
                let end = start.saturating_add(WINDOW);
                for (s, role) in lists.iter_mut() {
                    let mut doc = s.doc();
                    while doc < end {
                        let n = notes.at((doc - start) as usize);
                        match *role {
                            Role::Word { looked, name, .. } => {
                                let l = &self.looked[looked];
                                if name {
                                    n.name |= l.words;
                                }
                                n.any |= l.words;
                                n.rest |= l.rest;
                                if l.words != 0 {
                                    n.bm25 += l.times * s.score();
                                }
                            }
                            Role::Concept(bit) => n.con |= bit,
                            Role::Literal => n.literal = true,
                        }
                        doc = s.advance();
                    }
                }
                notes.drain(|offset, n| {
                    let doc = start + offset as DocId;
                    if alive.is_none_or(|a| a.is_alive(doc))
                        && let Some(score) = self.score(n)
                    {
                        out(doc, score);
                    }
                });
            }
        });
        Ok(())
    }
}

/// Whether `have` holds every bit of `want`.
fn holds(have: u64, want: u64) -> bool {
    have & want == want
}

/// What one posting list tells about the documents it holds.
#[derive(Clone, Copy)]
enum Role {
    /// A term of the query's words: in a name or not, with its BM25 boost.
    Word { looked: usize, name: bool, boost: Score },
    /// A concept, as its bit.
    Concept(u64),
    /// All the query's literal character pairs.
    Literal,
}

/// What a document was seen to hold, in one window.
#[derive(Clone, Copy, Default)]
struct Noted {
    name: u64,
    any: u64,
    rest: u64,
    con: u64,
    literal: bool,
    bm25: Score,
}

/// One window's notes, kept per thread so that a search allocates none.
struct Notes {
    notes: Vec<Noted>,
    /// Which offsets hold a note, a bit each: read in order, no sort.
    seen: Vec<u64>,
}

impl Notes {
    fn at(&mut self, offset: usize) -> &mut Noted {
        self.seen[offset / 64] |= 1 << (offset % 64);
        &mut self.notes[offset]
    }

    /// Hands out every noted document in order and clears its note.
    fn drain(&mut self, mut f: impl FnMut(u32, &Noted)) {
        for (w, word) in self.seen.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let o = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                f(o as u32, &self.notes[o]);
                self.notes[o] = Noted::default();
            }
        }
    }
}

thread_local! {
    static NOTES: RefCell<Notes> = RefCell::new(Notes {
        notes: vec![Noted::default(); WINDOW as usize],
        seen: vec![0; WINDOW as usize / 64],
    });
}
