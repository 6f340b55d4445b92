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

/// Marks a word's first character pair (see [`literal_terms`]).
const WORD_START: &str = "\u{2}";
/// Marks the pair that ends a word.
const WORD_END: &str = "\u{3}";

/// The literal field's terms for one value, with their positions:
/// overlapping character pairs of its literal form, and at the same
/// positions, marks where Latin words and numbers start and end. A text
/// contains another literally when the other's pairs stand in it one after
/// another; the marks keep a Latin query to whole words ("TEM" is not in
/// "system"), while Chinese, which has no spaces, matches anywhere.
pub fn literal_terms(s: &str) -> Vec<(usize, String)> {
    let chars = literal_with_breaks(s);
    let mut out = Vec::new();
    for (i, w) in chars.windows(2).enumerate() {
        let ((a, a_starts), (b, _)) = (w[0], w[1]);
        out.push((i, format!("{a}{b}")));
        if a_starts {
            out.push((i, WORD_START.into()));
        }
        // b ends a word when nothing follows it or a word starts after it.
        if !is_cjk(b) && chars.get(i + 2).is_none_or(|&(_, starts)| starts) {
            out.push((i, WORD_END.into()));
        }
    }
    out
}

/// The phrase a query's literal text makes in the literal field: its pairs,
/// and the word marks its Latin ends need. Empty below two characters.
pub fn literal_query(s: &str) -> Vec<(usize, String)> {
    let chars = literal(s);
    if chars.len() < 2 {
        return Vec::new();
    }
    let mut out: Vec<(usize, String)> = chars.windows(2).enumerate().map(|(i, w)| (i, w.iter().collect())).collect();
    if !is_cjk(chars[0]) {
        out.push((0, WORD_START.into()));
    }
    if !is_cjk(chars[chars.len() - 1]) {
        out.push((chars.len() - 2, WORD_END.into()));
    }
    out
}

/// Tokenizes the literal field: each value (separated by
/// [`LITERAL_SEPARATOR`]) into [`literal_terms`], with a gap between values
/// so that no phrase runs from one into the next.
#[derive(Clone, Default)]
pub struct LiteralTokenizer;

impl Tokenizer for LiteralTokenizer {
    type TokenStream<'a> = MixedStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> MixedStream {
        let mut tokens = Vec::new();
        let mut base = 0;
        for value in text.split(LITERAL_SEPARATOR) {
            let terms = literal_terms(value);
            let width = terms.last().map_or(0, |(p, _)| p + 1);
            for (p, text) in terms {
                tokens.push(Token { offset_from: 0, offset_to: 0, position: base + p, text, position_length: 1 });
            }
            base += width + 2;
        }
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
    fn literal_terms_mark_where_latin_words_start_and_end() {
        let texts = |v: Vec<(usize, String)>| v.into_iter().map(|(p, t)| format!("{p}{t}")).collect::<Vec<_>>();
        assert_eq!(texts(literal_query("离子色谱")), ["0离子", "1子色", "2色谱"]);
        assert_eq!(texts(literal_query("Q-Exact")), ["0qe", "1ex", "2xa", "3ac", "4ct", "0\u{2}", "4\u{3}"]);
        assert!(literal_query("x").is_empty());
        // "system": no word starts at its "t".
        let field = literal_terms("PPMS System");
        assert!(field.contains(&(4, "\u{2}".into())), "{field:?}");
        assert!(!field.contains(&(7, "\u{2}".into())), "{field:?}");
        // Letters and digits meet at a word edge: "2100" is a word of JEM2100F.
        let field = literal_terms("JEM2100F");
        assert!(field.contains(&(3, "\u{2}".into())) && field.contains(&(5, "\u{3}".into())), "{field:?}");
    }
}
