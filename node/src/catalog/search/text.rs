//! How instrument text becomes search terms: a tokenizer for mixed Chinese
//! and Latin text, and the literal form that containment is tested on.
//!
//! Chinese runs become overlapping character bigrams (as Lucene's CJK
//! analyzer does): 核磁共振波谱仪 → 核磁 磁共 共振 振波 波谱 谱仪, so 核磁 or
//! 比表面 find their instruments without a dictionary. Bigrams alone do not
//! join 透射电镜 to 场发射透射电子显微镜, or NMR to 核磁共振波谱仪; the thesaurus
//! (`thesaurus`) does. Text is width-folded first (ＴＥＭ is TEM). Latin runs are lowercased words, split where letters meet digits
//! (so "200kV" and "200 kV" are the same two terms), stemmed for English
//! later in the analyzer chain.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

pub use corridor_proto::limits::is_cjk;

/// Splits text into Latin words and CJK bigrams.
#[derive(Clone, Default)]
pub struct MixedTokenizer;

pub struct MixedStream {
    tokens: Vec<Token>,
    next: usize,
}

/// The tokens of `text`, as (text, byte offset from, byte offset to) in its
/// width-folded form.
pub fn tokens(text: &str) -> Vec<(String, usize, usize)> {
    let folded: String = fold(text).collect();
    let text = folded.as_str();
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if is_cjk(c) {
            let mut j = i;
            while j < chars.len() && is_cjk(chars[j].1) {
                j += 1;
            }
            let end_of = |k: usize| if k < chars.len() { chars[k].0 } else { text.len() };
            if j - i == 1 {
                out.push((c.to_string(), start, end_of(j)));
            } else {
                for k in i..j - 1 {
                    out.push((format!("{}{}", chars[k].1, chars[k + 1].1), chars[k].0, end_of(k + 2)));
                }
            }
            i = j;
        } else if c.is_alphanumeric() {
            // A word ends where letters meet digits too: "200kV" is written
            // for "200 kV", and "JEM2100F" for "JEM-2100F".
            let digit = c.is_numeric();
            let mut j = i;
            while j < chars.len()
                && chars[j].1.is_alphanumeric()
                && !is_cjk(chars[j].1)
                && chars[j].1.is_numeric() == digit
            {
                j += 1;
            }
            let end = if j < chars.len() { chars[j].0 } else { text.len() };
            out.push((text[start..end].to_lowercase(), start, end));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

impl Tokenizer for MixedTokenizer {
    type TokenStream<'a> = MixedStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> MixedStream {
        let tokens = tokens(text)
            .into_iter()
            .enumerate()
            .map(|(position, (text, offset_from, offset_to))| Token {
                offset_from,
                offset_to,
                position,
                text,
                position_length: 1,
            })
            .collect();
        MixedStream { tokens, next: 0 }
    }
}

impl TokenStream for MixedStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// Width-folded characters: full-width Latin letters, digits and punctuation
/// (ＴＥＭ，２００ｋＶ) as their ASCII forms, and the ideographic space as a space,
/// so that text typed with a Chinese input method matches.
pub fn fold(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().map(|c| match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        c => c,
    })
}

/// Separates the values of the literal field (see [`LiteralTokenizer`]).
pub const LITERAL_SEPARATOR: char = '\u{1F}';

/// Text as the literal field compares it: width-folded, lowercase, letters
/// and digits only. "JEM-2100F", "jem 2100f" and "ＪＥＭ２１００Ｆ" are one.
pub fn literal(s: &str) -> Vec<char> {
    literal_with_breaks(s).into_iter().map(|(c, _)| c).collect()
}

#[derive(PartialEq, Clone, Copy)]
enum Class {
    Cjk,
    Letter,
    Digit,
}

fn class(c: char) -> Class {
    if is_cjk(c) {
        Class::Cjk
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Letter
    }
}

/// The literal form, each character with whether a word starts there: after
/// a space or punctuation, or where letters, digits and Chinese meet.
fn literal_with_breaks(s: &str) -> Vec<(char, bool)> {
    let mut out: Vec<(char, bool)> = Vec::new();
    let mut gap = true;
    for c in fold(s).flat_map(char::to_lowercase) {
        if !c.is_alphanumeric() {
            gap = true;
            continue;
        }
        let starts = gap || out.last().is_none_or(|&(p, _)| class(p) != class(c));
        out.push((c, starts));
        gap = false;
    }
    out
}

/// A record's names, maker and model in their literal form, with where
/// Latin words start, so that "the record contains the query" is a string
/// search: `text` holds them with `\0` between, the names first.
#[derive(Debug, Default, Clone)]
pub struct LiteralNames {
    text: String,
    /// Byte offsets in `text` where a word starts.
    starts: Vec<u32>,
    /// Where the names end in `text`.
    names_end: usize,
}

impl LiteralNames {
    /// `names` first, then `others`.
    pub fn of(names: &[&str], others: &[&str]) -> Self {
        let mut out = LiteralNames::of_texts(names);
        out.names_end = out.text.len();
        let rest = LiteralNames::of_texts(others);
        out.text.push('\0');
        let base = out.text.len() as u32;
        out.starts.extend(rest.starts.iter().map(|s| s + base));
        out.text.push_str(&rest.text);
        out
    }

    fn of_texts(names: &[&str]) -> Self {
        let mut out = LiteralNames::default();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.text.push('\0');
            }
            for (c, starts) in literal_with_breaks(name) {
                if starts {
                    out.starts.push(out.text.len() as u32);
                }
                out.text.push(c);
            }
        }
        out
    }

    /// Where `query` stands: (in a name, in a name or the maker or model),
    /// a Latin end of it at a word's edge.
    pub fn find(&self, query: &LiteralQuery) -> (bool, bool) {
        let (mut in_name, mut anywhere) = (false, false);
        for i in query.finder.find_iter(self.text.as_bytes()) {
            let j = i + query.finder.needle().len();
            let starts = |at: usize| self.starts.binary_search(&(at as u32)).is_ok();
            let at_start = query.cjk_first || starts(i);
            let at_end = query.cjk_last || j == self.text.len() || self.text.as_bytes()[j] == 0 || starts(j);
            if at_start && at_end {
                anywhere = true;
                if j <= self.names_end {
                    in_name = true;
                    break;
                }
            }
        }
        (in_name, anywhere)
    }
}

/// A query's literal text, with its searcher built once for every record it
/// is tested on.
pub struct LiteralQuery {
    finder: memchr::memmem::Finder<'static>,
    cjk_first: bool,
    cjk_last: bool,
}

impl LiteralQuery {
    /// `None` for a text with no letters or digits.
    pub fn new(text: &str) -> Option<LiteralQuery> {
        let lit: String = literal(text).into_iter().collect();
        let (first, last) = (lit.chars().next()?, lit.chars().last()?);
        Some(LiteralQuery {
            finder: memchr::memmem::Finder::new(lit.as_bytes()).into_owned(),
            cjk_first: is_cjk(first),
            cjk_last: is_cjk(last),
        })
    }
}

/// The literal field's terms for a literal form: its overlapping character
/// pairs. A record that contains a text holds all of its pairs; the
/// collector then checks the text itself (see `LiteralNames`).
fn pairs(chars: &[char]) -> Vec<String> {
    chars.windows(2).map(|w| w.iter().collect()).collect()
}

/// Marks a pair that begins a word (`^te`) and one that ends a word (`em$`).
const WORD_START: char = '^';
const WORD_END: char = '$';

/// What one value of a record puts in the literal field: its pairs, and the
/// pairs at the edges of its words. A literal match of a Latin text must
/// begin at a word's start and end at a word's end (see `LiteralNames::find`),
/// so a query asks for these, and "TEM" no longer makes a candidate of every
/// "system" and "temperature".
fn record_grams(s: &str) -> Vec<String> {
    let marked = literal_with_breaks(s);
    let chars: Vec<char> = marked.iter().map(|&(c, _)| c).collect();
    let mut out = pairs(&chars);
    for (i, w) in marked.windows(2).enumerate() {
        if w[0].1 {
            out.push([WORD_START, w[0].0, w[1].0].iter().collect());
        }
        // The pair ends a word where the next character starts one, or
        // where the value ends.
        if marked.get(i + 2).is_none_or(|next| next.1) {
            out.push([w[0].0, w[1].0, WORD_END].iter().collect());
        }
    }
    out
}

/// What a query's literal text asks the literal field for: all its pairs,
/// and, where it begins or ends with a letter or digit, the pair marked as
/// a word's start or end.
pub fn literal_query_grams(s: &str) -> Vec<String> {
    let chars = literal(s);
    let mut out = pairs(&chars);
    if let ([a, b, ..], [.., y, z]) = (chars.as_slice(), chars.as_slice()) {
        if !is_cjk(*a) {
            out.push([WORD_START, *a, *b].iter().collect());
        }
        if !is_cjk(*z) {
            out.push([*y, *z, WORD_END].iter().collect());
        }
    }
    out
}

/// Tokenizes the literal field: each value (separated by
/// [`LITERAL_SEPARATOR`]) into its pairs and word-edge pairs (`record_grams`).
#[derive(Clone, Default)]
pub struct LiteralTokenizer;

impl Tokenizer for LiteralTokenizer {
    type TokenStream<'a> = MixedStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> MixedStream {
        let tokens = text
            .split(LITERAL_SEPARATOR)
            .flat_map(record_grams)
            .enumerate()
            .map(|(position, text)| Token { offset_from: 0, offset_to: 0, position, text, position_length: 1 })
            .collect();
        MixedStream { tokens, next: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        tokens(s).into_iter().map(|t| t.0).collect()
    }

    #[test]
    fn word_edges_are_marked_so_that_a_latin_query_needs_them() {
        let record = record_grams("JEM-2100F");
        for g in ["^je", "em$", "^21", "00$", "f$"].iter().filter(|g| g.len() > 2) {
            assert!(record.iter().any(|r| r == g), "{g} in {record:?}");
        }
        assert!(!record.iter().any(|r| r == "^em"), "{record:?}");
        // "TEM" asks for a word starting "te" and one ending "em": "system"
        // has no word starting "te", "temperature" none ending "em".
        let q = literal_query_grams("TEM");
        assert_eq!(q, ["te", "em", "^te", "em$"]);
        let holds = |text: &str| {
            let have = record_grams(text);
            q.iter().all(|g| have.contains(g))
        };
        assert!(holds("JEOL TEM"));
        assert!(!holds("imaging system"));
        assert!(!holds("temperature controller"));
        // Grams only narrow: both edges in different words still make a
        // candidate, which the string search then turns down.
        assert!(holds("system temperature"));
        // A Chinese edge asks for nothing more.
        assert_eq!(literal_query_grams("透射电镜 200kV").last().map(String::as_str), Some("kv$"));
        assert!(!literal_query_grams("透射电镜 200kV").iter().any(|g| g.starts_with('^')));
    }

    #[test]
    fn chinese_becomes_bigrams_and_latin_words() {
        assert_eq!(words("核磁共振波谱仪"), ["核磁", "磁共", "共振", "振波", "波谱", "谱仪"]);
        assert_eq!(words("TEM 200kV"), ["tem", "200", "kv"]);
        assert_eq!(words("JEM-2100F"), words("JEM2100F"));
        assert_eq!(words("X射线衍射仪 (XRD)"), ["x", "射线", "线衍", "衍射", "射仪", "xrd"]);
        assert_eq!(words("谱"), ["谱"]);
    }

    #[test]
    fn full_width_text_reads_as_ascii() {
        assert_eq!(words("ＴＥＭ　２００ｋＶ"), ["tem", "200", "kv"]);
        assert_eq!(literal("ＪＥＭ－２１００Ｆ").iter().collect::<String>(), "jem2100f");
    }

    #[test]
    fn names_contain_a_query_literally_at_word_edges() {
        let n = LiteralNames::of(&["小角X射线散射仪", "PPMS System (JEM-2100F)"], &["Thermo", "Q Exactive"]);
        let at = |s: &str| n.find(&LiteralQuery::new(s).unwrap());
        assert_eq!(at("X射线散射"), (true, true));
        assert_eq!(at("角x射"), (true, true));
        for q in ["ppms system", "JEM2100", "2100F"] {
            assert_eq!(at(q), (true, true), "{q}");
        }
        assert_eq!(at("TEM"), (false, false), "not inside System");
        assert_eq!(at("jem210"), (false, false), "not inside a number");
        assert_eq!(at("散射仪ppms"), (false, false), "not across two names");
        assert_eq!(at("QExactive"), (false, true), "the model, not a name");
        assert!(LiteralQuery::new(" - ").is_none());
    }

    #[test]
    fn literal_grams_are_the_pairs_of_the_literal_form() {
        assert_eq!(pairs(&literal("Q-Exact")), ["qe", "ex", "xa", "ac", "ct"]);
        assert_eq!(pairs(&literal("离子色谱")), ["离子", "子色", "色谱"]);
        assert!(pairs(&literal("x")).is_empty());
    }
}
