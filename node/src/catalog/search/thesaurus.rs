//! The instrument thesaurus: concepts (kinds of instrument) with every name
//! people use for them, and the broader concepts above them. It is data, not
//! code: a CSV file shipped with the node (`node/data/thesaurus.csv`), which a
//! city operator may replace, plus an optional file of local synonyms; both
//! are read at start and again whenever they change.
//!
//! One concept a row: `id,parents,name_zh,name_en,zh,en,abbr`, lists
//! `;`-separated, `#` starting a comment line. A local row with an id that
//! already exists adds its names (and parents) to that concept.
//!
//! The thesaurus only ever adds matches: an instrument is tagged with every
//! concept whose name its own names contain (longest match first), and with
//! all their ancestors, so that a generic word (电镜, 质谱) finds every kind
//! below it. A query's literal words are searched whatever it names.

use std::collections::HashMap;

use super::text::{fold, is_cjk};
use crate::error::Invalid;

/// The thesaurus the node ships with: instrument kinds, and the makers of
/// instruments under the names people use for them (赛默飞 for Thermo
/// Fisher), so that an instrument is found by its maker in either language.
pub const SHIPPED: &str = include_str!("../../../data/thesaurus.csv");
pub const SHIPPED_MAKERS: &str = include_str!("../../../data/makers.csv");

/// Most words a Latin alias may have: longer names are matched by their words.
const MAX_ALIAS_WORDS: usize = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("thesaurus {source_name}, line {line}: {reason}")]
pub struct ThesaurusError {
    pub source_name: String,
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
struct Concept {
    id: String,
    parents: Vec<String>,
}

/// Concepts and their names, ready for matching.
#[derive(Debug, Default)]
pub struct Thesaurus {
    concepts: Vec<Concept>,
    /// Each concept's place in `concepts`, by id.
    by_id: HashMap<String, u32>,
    /// Normalized alias → the concepts it names. An alias with CJK in it is
    /// found inside words; a Latin one only as whole words.
    cjk: HashMap<String, Vec<u32>>,
    latin: HashMap<String, Vec<u32>>,
    /// Each concept with all its ancestors, itself first.
    closure: Vec<Vec<u32>>,
    /// Leading words of Latin names (two words or more, short of the whole
    /// name) that begin names of one concept only: "nuclear magnetic
    /// resonance" names NMR as "nuclear magnetic resonance spectrometer"
    /// does.
    latin_heads: HashMap<String, Vec<u32>>,
    /// Latin names of at least [`TYPO_MIN`] characters by each of their
    /// one-character deletions: a name typed with one letter missing, extra
    /// or wrong shares a deletion with the name (as SymSpell finds them).
    latin_typos: HashMap<String, Vec<String>>,
    /// The longest CJK alias, in characters: a scan looks no further.
    longest_cjk: usize,
}

/// What a text names: for each name found in it, the concepts that name
/// may mean (each as the concepts a record must all have), and the words no
/// name covered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    pub named: Vec<Named>,
    pub rest: Vec<String>,
}

/// One name found in a text: any of `any`, each a set of concepts a record
/// must all have. Usually one concept; a combination such as LC-MS may also
/// be met by its parents together (液相色谱 and 质谱 in 超高效液相色谱-三重四极杆
/// 质谱联用仪).
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct Named {
    pub any: Vec<Vec<String>>,
}

impl Analysis {
    /// Every concept named, once, in order.
    pub fn concepts(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in &self.named {
            for c in n.any.iter().filter(|a| a.len() == 1).map(|a| &a[0]) {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}

/// Latin names this long or longer are recognised with one typo.
const TYPO_MIN: usize = 6;

/// Lowercase and width-folded, with everything but letters and digits
/// removed, so that "ICP-MS", "icp ms", "ICPMS" and "ＩＣＰ－ＭＳ" are one key.
pub fn normalize(s: &str) -> String {
    fold(s).filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(';').map(str::trim).filter(|a| !a.is_empty())
}

impl Thesaurus {
    /// The shipped thesaurus, read once per process: every index starts
    /// with it, and a city's own files replace it later.
    pub fn shipped() -> std::sync::Arc<Thesaurus> {
        static SHIPPED_ONE: std::sync::OnceLock<std::sync::Arc<Thesaurus>> = std::sync::OnceLock::new();
        SHIPPED_ONE
            .get_or_init(|| std::sync::Arc::new(Thesaurus::shipped_with(None).expect("the shipped thesaurus is valid")))
            .clone()
    }

    /// The shipped thesaurus, with `local` synonyms (CSV text) added.
    pub fn shipped_with(local: Option<(&str, &str)>) -> Result<Thesaurus, ThesaurusError> {
        let mut files = vec![("node/data/thesaurus.csv", SHIPPED), ("node/data/makers.csv", SHIPPED_MAKERS)];
        files.extend(local);
        Thesaurus::from_csv(&files)
    }

    /// Reads thesaurus files in order, each `(name for errors, CSV text)`;
    /// later files add to earlier ones.
    pub fn from_csv(files: &[(&str, &str)]) -> Result<Thesaurus, ThesaurusError> {
        let mut by_id: HashMap<String, u32> = HashMap::new();
        let mut concepts: Vec<Concept> = Vec::new();
        let mut names: Vec<Vec<String>> = Vec::new();
        for (source_name, text) in files {
            let err = |line: u64, reason: String| ThesaurusError { source_name: source_name.to_string(), line, reason };
            let mut reader =
                csv::ReaderBuilder::new().comment(Some(b'#')).trim(csv::Trim::All).from_reader(text.as_bytes());
            let header = reader.headers().map_err(|e| err(1, e.to_string()))?.clone();
            let want = ["id", "parents", "name_zh", "name_en", "zh", "en", "abbr"];
            if header.iter().collect::<Vec<_>>() != want {
                return Err(err(1, format!("the header must be {}", want.join(","))));
            }
            for row in reader.records() {
                let row = row.map_err(|e| err(e.position().map_or(0, |p| p.line()), e.to_string()))?;
                let line = row.position().map_or(0, |p| p.line());
                let id = row[0].to_string();
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                    return Err(err(line, format!("id {id:?}: use a-z, 0-9 and '-'")));
                }
                let at = *by_id.entry(id.clone()).or_insert_with(|| {
                    concepts.push(Concept { id: id.clone(), parents: Vec::new() });
                    names.push(Vec::new());
                    concepts.len() as u32 - 1
                });
                let c = &mut concepts[at as usize];
                for p in split_list(&row[1]) {
                    if !c.parents.iter().any(|x| x == p) {
                        c.parents.push(p.to_string());
                    }
                }
                let list = &mut names[at as usize];
                list.extend([&row[2], &row[3]].into_iter().filter(|n| !n.trim().is_empty()).map(|n| n.to_string()));
                for col in 4..7 {
                    list.extend(split_list(&row[col]).map(str::to_string));
                }
            }
        }
        let mut t = Thesaurus { concepts, by_id: by_id.clone(), ..Default::default() };
        for (i, c) in t.concepts.iter().enumerate() {
            for p in &c.parents {
                if !by_id.contains_key(p) {
                    return Err(ThesaurusError {
                        source_name: files.last().map_or("", |f| f.0).to_string(),
                        line: 0,
                        reason: format!("concept {:?} names an unknown parent {p:?}", c.id),
                    });
                }
            }
            for name in &names[i] {
                let key = normalize(name);
                // One character names too much: 仪 is in every instrument.
                if key.chars().count() < 2 && key.chars().any(is_cjk) {
                    continue;
                }
                if key.is_empty() {
                    continue;
                }
                let table = if key.chars().any(is_cjk) { &mut t.cjk } else { &mut t.latin };
                let ids = table.entry(key).or_default();
                if !ids.contains(&(i as u32)) {
                    ids.push(i as u32);
                }
            }
        }
        t.longest_cjk = t.cjk.keys().map(|k| k.chars().count()).max().unwrap_or(0);
        let mut heads: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, names) in names.iter().enumerate() {
            for name in names {
                let words: Vec<String> = fold(name)
                    .collect::<String>()
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                if words.iter().any(|w| w.chars().any(is_cjk)) {
                    continue;
                }
                for n in 2..words.len() {
                    let ids = heads.entry(words[..n].concat()).or_default();
                    if !ids.contains(&(i as u32)) {
                        ids.push(i as u32);
                    }
                }
            }
        }
        // A head that begins names of several concepts is ambiguous, and one
        // that is a whole name already says what it names.
        heads.retain(|k, ids| ids.len() == 1 && !t.latin.contains_key(k));
        t.latin_heads = heads;
        for key in t.latin.keys() {
            if key.chars().count() >= TYPO_MIN {
                for d in deletions(key) {
                    let keys = t.latin_typos.entry(d).or_default();
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
        }
        t.closure = (0..t.concepts.len() as u32)
            .map(|i| t.ancestors(i, &by_id))
            .collect::<Result<_, Invalid>>()
            .map_err(|reason| ThesaurusError {
                source_name: files.last().map_or("", |f| f.0).to_string(),
                line: 0,
                reason: reason.0,
            })?;
        Ok(t)
    }

    /// `i` and every concept above it, or the cycle that makes that endless.
    fn ancestors(&self, i: u32, by_id: &HashMap<String, u32>) -> Result<Vec<u32>, Invalid> {
        let mut out = vec![i];
        let mut next = 0;
        while next < out.len() {
            let c = &self.concepts[out[next] as usize];
            for p in &c.parents {
                let p = by_id[p];
                if p == i {
                    return Err(Invalid(format!("concept {:?} is its own ancestor", self.concepts[i as usize].id)));
                }
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            next += 1;
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.concepts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concepts.is_empty()
    }

    fn id(&self, i: u32) -> &str {
        &self.concepts[i as usize].id
    }

    /// The concepts `text` names, as named, and the words no name covered.
    /// CJK text is scanned for the longest name at each place (names may
    /// span punctuation: 液相色谱-质谱联用仪); Latin names match whole words
    /// only, so "tem" is never found in "system".
    pub fn analyze(&self, text: &str) -> Analysis {
        self.read(text, true)
    }

    /// Reads `text` for names. A query (`guess`) may name a concept with a
    /// typo, or by the leading words of a name when it ends there; a record's
    /// own names are read exactly, since "Triple Quadrupole GC-MS" goes on
    /// past the words that begin "triple quadrupole LC-MS".
    fn read(&self, text: &str, guess: bool) -> Analysis {
        let mut found: Vec<Vec<u32>> = Vec::new();
        let mut rest = Vec::new();
        // Words: runs of letters and digits, CJK and Latin apart, except a
        // mixed run such as "X射线", kept whole as people write it.
        let words: Vec<String> = fold(text)
            .collect::<String>()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        let mut i = 0;
        while i < words.len() {
            if words[i].chars().any(is_cjk) {
                // A CJK run continues across punctuation into the next CJK
                // word: names such as 液相色谱-质谱联用仪 are written both ways.
                let mut j = i + 1;
                while j < words.len() && words[j].chars().any(is_cjk) {
                    j += 1;
                }
                let run: Vec<char> = words[i..j].concat().to_lowercase().chars().collect();
                self.scan_cjk(&run, &mut found, &mut rest);
                i = j;
                continue;
            }
            let mut matched = false;
            for n in (1..=MAX_ALIAS_WORDS).rev() {
                if i + n > words.len() || words[i..i + n].iter().any(|w| w.chars().any(is_cjk)) {
                    continue;
                }
                let last = i + n == words.len();
                if let Some(ids) = self.latin_name(&normalize(&words[i..i + n].concat()), guess, n, last) {
                    found.push(ids.to_vec());
                    i += n;
                    matched = true;
                    break;
                }
            }
            if !matched {
                rest.push(words[i].to_lowercase());
                i += 1;
            }
        }
        let named = found.into_iter().map(|ids| self.named(&ids)).collect();
        Analysis { named, rest }
    }

    /// The concepts a Latin name means: exactly, or with one typo when it is
    /// long enough and names one thing only.
    fn latin_name(&self, key: &str, guess: bool, words: usize, last: bool) -> Option<&[u32]> {
        if let Some(ids) = self.latin.get(key) {
            return Some(ids);
        }
        if !guess {
            return None;
        }
        if words >= 2
            && last
            && let Some(ids) = self.latin_heads.get(key)
        {
            return Some(ids);
        }
        if key.chars().count() < TYPO_MIN {
            return None;
        }
        let mut near: Vec<&String> = Vec::new();
        for d in std::iter::once(key.to_string()).chain(deletions(key)) {
            for k in self.latin_typos.get(&d).into_iter().flatten() {
                if !near.contains(&k) && within_one_edit(key, k) {
                    near.push(k);
                }
            }
        }
        match near.as_slice() {
            [one] => self.latin.get(*one).map(Vec::as_slice),
            _ => None,
        }
    }

    /// What one name means: each concept it names, and for a concept with
    /// two or more parents none of which lies above another (LC-MS: liquid
    /// chromatograph and mass spectrometer), those parents together.
    fn named(&self, ids: &[u32]) -> Named {
        let mut any = Vec::new();
        for &i in ids {
            any.push(vec![self.id(i).to_string()]);
            let parents: Vec<u32> =
                self.concepts[i as usize].parents.iter().filter_map(|p| self.by_id.get(p).copied()).collect();
            let independent = parents.len() >= 2
                && parents.iter().all(|a| parents.iter().all(|b| a == b || !self.closure[*b as usize].contains(a)));
            if independent {
                any.push(parents.iter().map(|&p| self.id(p).to_string()).collect());
            }
        }
        Named { any }
    }

    fn scan_cjk(&self, run: &[char], found: &mut Vec<Vec<u32>>, rest: &mut Vec<String>) {
        let mut p = 0;
        let mut leftover = String::new();
        while p < run.len() {
            let mut hit = None;
            for q in (p + 1..=run.len().min(p + self.longest_cjk)).rev() {
                let sub: String = run[p..q].iter().collect();
                if let Some(ids) = self.cjk.get(&sub) {
                    hit = Some((q, ids));
                    break;
                }
            }
            match hit {
                Some((q, ids)) => {
                    keep(rest, std::mem::take(&mut leftover));
                    found.push(ids.clone());
                    p = q;
                }
                None => {
                    leftover.push(run[p]);
                    p += 1;
                }
            }
        }
        keep(rest, leftover);
    }

    /// Every concept an instrument belongs to: those its names (and its
    /// maker's name) contain, and all above them.
    pub fn concepts_of(&self, names: &[&str]) -> Vec<String> {
        let mut named = Vec::new();
        for name in names {
            named.extend(self.read(name, false).concepts());
        }
        let mut out: Vec<u32> = Vec::new();
        for id in named {
            if let Some(&i) = self.by_id.get(&id) {
                add(&mut out, &self.closure[i as usize]);
            }
        }
        out.iter().map(|&c| self.id(c).to_string()).collect()
    }
}

/// Keeps a CJK fragment no name covered as a word the query still asks for,
/// unless it is a single character: 比表面积 is 比表面 and 积, and 积 alone
/// narrows nothing a person meant.
fn keep(rest: &mut Vec<String>, fragment: String) {
    if fragment.chars().count() > 1 {
        rest.push(fragment);
    }
}

/// `s` with each one character left out in turn.
fn deletions(s: &str) -> impl Iterator<Item = String> + '_ {
    let chars: Vec<char> = s.chars().collect();
    (0..chars.len()).map(move |i| chars.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c).collect())
}

/// Whether `a` becomes `b` by one insertion, deletion, substitution or
/// swap of two neighbours (or is `b`).
fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let head = short.iter().zip(long.iter()).take_while(|(x, y)| x == y).count();
    if short.len() == long.len() {
        let tail = short[head..].iter().rev().zip(long[head..].iter().rev()).take_while(|(x, y)| x == y).count();
        let diff = short.len() - head - tail;
        return diff <= 1 || (diff == 2 && short[head] == long[head + 1] && short[head + 1] == long[head]);
    }
    short[head..] == long[head + 1..]
}

fn add(found: &mut Vec<u32>, ids: &[u32]) {
    for id in ids {
        if !found.contains(id) {
            found.push(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "\
# a comment
id,parents,name_zh,name_en,zh,en,abbr
em,,电子显微镜,electron microscope,电镜,,EM
tem,em,透射电子显微镜,transmission electron microscope,透射电镜;场发射透射电子显微镜,,TEM;HRTEM
ms,,质谱仪,mass spectrometer,质谱,,MS
lc,,液相色谱仪,liquid chromatograph,液相色谱;高效液相色谱,,HPLC;LC
lc-ms,ms;lc,液相色谱质谱联用仪,liquid chromatography mass spectrometry,液质;液质联用;液相色谱-质谱联用仪,,LC-MS;LC-MS/MS
qqq,ms,三重四极杆质谱仪,triple quadrupole mass spectrometer,三重四极杆质谱,,QqQ
";

    fn small() -> Thesaurus {
        Thesaurus::from_csv(&[("small", SMALL)]).unwrap()
    }

    #[test]
    fn names_short_forms_and_abbreviations_name_one_concept() {
        let t = small();
        for q in ["TEM", "透射电镜", "场发射透射电子显微镜", "Transmission Electron Microscope", "ＴＥＭ"]
        {
            assert_eq!(t.analyze(q).concepts(), ["tem"], "{q}");
        }
        assert_eq!(t.analyze("LC-MS/MS").concepts(), ["lc-ms"]);
        assert_eq!(t.analyze("液质联用").concepts(), ["lc-ms"]);
        let mixed = t.analyze("透射电镜 JEOL 200kV");
        assert_eq!((mixed.concepts(), mixed.rest), (vec!["tem".to_string()], vec!["jeol".into(), "200kv".into()]));
        assert!(t.analyze("system").concepts().is_empty(), "Latin names match whole words only");
        // One typo in a long Latin name still names it; a short one must be exact.
        assert_eq!(t.analyze("transmision electron microscope").concepts(), ["tem"]);
        assert_eq!(t.analyze("mass spectrometr").concepts(), ["ms"]);
        assert!(t.analyze("TEN").concepts().is_empty());
        // The leading words of a name name it, when they begin no other.
        assert_eq!(t.analyze("triple quadrupole").concepts(), ["qqq"]);
        assert!(t.analyze("liquid").concepts().is_empty(), "one word is not enough");
        assert!(t.analyze("triple quadrupole GC").concepts().is_empty(), "only where the query ends");
        assert_eq!(t.concepts_of(&["Triple Quadrupole GC-MS"]), ["ms"], "a record's names are read exactly: not qqq");
        // A lone character left over narrows nothing; two do.
        assert_eq!(t.analyze("透射电镜样").rest, Vec::<String>::new());
        assert_eq!(t.analyze("透射电镜样品").rest, ["样品"]);
        // A combination is named by itself, or by its parents together.
        let lcms = t.analyze("液质");
        assert_eq!(lcms.named[0].any, vec![vec!["lc-ms".to_string()], vec!["ms".into(), "lc".into()]]);
    }

    #[test]
    fn an_instrument_belongs_to_every_concept_its_name_contains_and_their_parents() {
        let t = small();
        let mut c = t.concepts_of(&["超高效液相色谱-三重四极杆质谱联用仪", ""]);
        c.sort();
        assert_eq!(c, ["lc", "ms", "qqq"]);
        let mut c = t.concepts_of(&["液相色谱-质谱联用仪", "LC-MS"]);
        c.sort();
        assert_eq!(c, ["lc", "lc-ms", "ms"]);
        assert_eq!(t.concepts_of(&["某型号电子显微镜"]), ["em"], "a generic name tags the generic concept");
        assert_eq!(t.concepts_of(&["场发射透射电子显微镜"]), ["tem", "em"]);
    }

    #[test]
    fn local_rows_add_names_and_bad_files_say_where() {
        let local = "id,parents,name_zh,name_en,zh,en,abbr\ntem,,,,透射镜,,\n";
        let t = Thesaurus::from_csv(&[("small", SMALL), ("local", local)]).unwrap();
        assert_eq!(t.analyze("透射镜").concepts(), ["tem"]);
        assert_eq!(t.len(), 6);
        let bad = "id,parents,name_zh,name_en,zh,en,abbr\nx,nope,甲,a,,,\n";
        assert!(Thesaurus::from_csv(&[("bad", bad)]).unwrap_err().reason.contains("unknown parent \"nope\""));
        let cycle = "id,parents,name_zh,name_en,zh,en,abbr\na,b,甲乙,a,,,\nb,a,丙丁,b,,,\n";
        assert!(Thesaurus::from_csv(&[("c", cycle)]).unwrap_err().reason.contains("its own ancestor"));
        let header = "id,name\nx,y\n";
        assert_eq!(Thesaurus::from_csv(&[("h", header)]).unwrap_err().line, 1);
    }

    #[test]
    fn one_edit_means_one_edit() {
        for (a, b) in [("abcdef", "abcdef"), ("abcdef", "abcxef"), ("abcdef", "abcef"), ("abcdef", "abdcef")] {
            assert!(within_one_edit(a, b) && within_one_edit(b, a), "{a} {b}");
        }
        for (a, b) in [("abcdef", "abxxef"), ("abcdef", "abc"), ("abcdef", "badcef")] {
            assert!(!within_one_edit(a, b), "{a} {b}");
        }
    }

    #[test]
    fn the_shipped_thesaurus_loads() {
        let t = Thesaurus::shipped_with(None).unwrap();
        assert!(!t.is_empty());
    }
}
