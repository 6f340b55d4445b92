//! How instrument text becomes search terms: a tokenizer for mixed Chinese
//! and Latin text, and the thesaurus that joins full names, short forms,
//! English names and abbreviations into one concept.
//!
//! Chinese runs become overlapping character bigrams (as Lucene's CJK
//! analyzer does): 核磁共振波谱仪 → 核磁 磁共 共振 振波 波谱 谱仪, so 核磁 or
//! 比表面 find their instruments without a dictionary. Bigrams alone do not
//! join 透射电镜 to 场发射透射电子显微镜, or NMR to 核磁共振波谱仪; the thesaurus
//! does. Latin runs are lowercased words, split where letters meet digits
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

/// The tokens of `text`, as (text, byte offset from, byte offset to).
pub fn tokens(text: &str) -> Vec<(String, usize, usize)> {
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

/// Concepts: an id and every name people use for it. Generic names (电镜,
/// 质谱) stand for several concepts. Full names come first by convention;
/// order does not matter for matching, which takes the longest alias.
const CONCEPTS: &[(&str, &[&str])] = &[
    (
        "tem",
        &[
            "tem",
            "hrtem",
            "透射电镜",
            "透射电子显微镜",
            "场发射透射电子显微镜",
            "透射电子显微镜tem",
            "transmission electron microscope",
            "transmission electron microscopy",
        ],
    ),
    (
        "sem",
        &[
            "sem",
            "fesem",
            "扫描电镜",
            "扫描电子显微镜",
            "场发射扫描电子显微镜",
            "scanning electron microscope",
            "scanning electron microscopy",
        ],
    ),
    ("fib", &["fib", "fibsem", "双束电镜", "聚焦离子束", "聚焦离子束扫描电镜双束系统", "focused ion beam"]),
    (
        "nmr",
        &[
            "nmr",
            "核磁",
            "核磁共振",
            "核磁共振仪",
            "核磁共振谱仪",
            "核磁共振波谱仪",
            "nuclear magnetic resonance",
            "nmr spectrometer",
        ],
    ),
    (
        "epr",
        &[
            "epr",
            "esr",
            "顺磁",
            "电子顺磁共振",
            "电子顺磁共振波谱仪",
            "电子自旋共振",
            "electron paramagnetic resonance",
            "electron spin resonance",
        ],
    ),
    (
        "xrd",
        &[
            "xrd",
            "x射线衍射",
            "x射线衍射仪",
            "粉末衍射",
            "粉末衍射仪",
            "多晶衍射仪",
            "xray diffraction",
            "xray diffractometer",
            "powder diffraction",
        ],
    ),
    (
        "scxrd",
        &[
            "scxrd",
            "单晶衍射",
            "单晶衍射仪",
            "单晶x射线衍射仪",
            "single crystal diffractometer",
            "single crystal xray diffractometer",
        ],
    ),
    (
        "xps",
        &[
            "xps",
            "esca",
            "光电子能谱",
            "x射线光电子能谱",
            "x射线光电子能谱仪",
            "xray photoelectron spectrometer",
            "xray photoelectron spectroscopy",
        ],
    ),
    ("xrf", &["xrf", "x射线荧光", "x射线荧光光谱仪", "xray fluorescence", "xray fluorescence spectrometer"]),
    (
        "icpms",
        &[
            "icpms",
            "等离子体质谱",
            "电感耦合等离子体质谱",
            "电感耦合等离子体质谱仪",
            "inductively coupled plasma mass spectrometer",
        ],
    ),
    (
        "gcms",
        &[
            "gcms",
            "气质",
            "气质联用",
            "气质联用仪",
            "气相色谱质谱",
            "气相色谱质谱联用仪",
            "gas chromatograph mass spectrometer",
            "gas chromatography mass spectrometry",
        ],
    ),
    (
        "lcms",
        &[
            "lcms",
            "lcmsms",
            "液质",
            "液质联用",
            "液质联用仪",
            "液相色谱质谱",
            "液相色谱质谱联用仪",
            "liquid chromatograph mass spectrometer",
            "liquid chromatography mass spectrometry",
        ],
    ),
    (
        "ftir",
        &[
            "ftir",
            "ir",
            "红外",
            "红外光谱",
            "红外光谱仪",
            "傅里叶红外",
            "傅里叶变换红外光谱仪",
            "infrared spectrometer",
            "fourier transform infrared spectrometer",
        ],
    ),
    (
        "raman",
        &[
            "raman",
            "拉曼",
            "拉曼光谱",
            "拉曼光谱仪",
            "显微拉曼",
            "激光共聚焦显微拉曼光谱仪",
            "raman spectrometer",
            "confocal raman microscope",
        ],
    ),
    (
        "uvvis",
        &[
            "uvvis",
            "uvvisnir",
            "紫外",
            "紫外可见",
            "紫外分光光度计",
            "分光光度计",
            "紫外可见近红外分光光度计",
            "spectrophotometer",
            "uvvisnir spectrophotometer",
        ],
    ),
    (
        "icpoes",
        &[
            "icpoes",
            "icpaes",
            "等离子体发射光谱",
            "电感耦合等离子体发射光谱仪",
            "inductively coupled plasma optical emission spectrometer",
        ],
    ),
    ("aas", &["aas", "原子吸收", "原子吸收光谱仪", "atomic absorption spectrometer"]),
    ("hplc", &["hplc", "液相", "液相色谱", "液相色谱仪", "高效液相色谱仪", "high performance liquid chromatograph"]),
    ("gc", &["gc", "气相", "气相色谱", "气相色谱仪", "gas chromatograph"]),
    (
        "clsm",
        &[
            "clsm",
            "lscm",
            "confocal",
            "共聚焦",
            "共聚焦显微镜",
            "激光共聚焦",
            "激光扫描共聚焦显微镜",
            "confocal microscope",
            "confocal laser scanning microscope",
        ],
    ),
    (
        "afm",
        &[
            "afm",
            "spm",
            "stm",
            "原子力",
            "原子力显微镜",
            "扫描探针",
            "扫描探针显微镜",
            "atomic force microscope",
            "scanning probe microscope",
        ],
    ),
    ("tga", &["tga", "tg", "热重", "热重分析仪", "thermogravimetric analyzer", "thermogravimetric analysis"]),
    ("dsc", &["dsc", "差示扫描量热", "差示扫描量热仪", "差热", "differential scanning calorimeter"]),
    (
        "bet",
        &[
            "bet",
            "比表面",
            "比表面积",
            "比表面仪",
            "比表面积分析仪",
            "孔隙度",
            "孔径分布",
            "物理吸附",
            "全自动比表面及孔隙度分析仪",
            "specific surface area",
            "surface area analyzer",
            "porosity analyzer",
            "specific surface area and porosity analyzer",
        ],
    ),
    (
        "psa",
        &[
            "粒度",
            "激光粒度",
            "粒度仪",
            "激光粒度仪",
            "激光粒度分析仪",
            "particle size analyzer",
            "laser particle size analyzer",
            "particle size",
        ],
    ),
    (
        "utm",
        &[
            "utm",
            "万能试验机",
            "材料试验机",
            "万能材料试验机",
            "拉伸试验机",
            "universal testing machine",
            "tensile tester",
        ],
    ),
    ("ppms", &["ppms", "综合物性", "物性测量", "综合物性测量系统", "physical property measurement system"]),
    ("squid", &["squid", "mpms", "磁强计", "超导量子干涉", "超导量子干涉磁强计", "squid magnetometer", "magnetometer"]),
    ("cmm", &["cmm", "三坐标", "三坐标测量机", "coordinate measuring machine"]),
    ("vna", &["vna", "网络分析仪", "矢量网络分析仪", "network analyzer", "vector network analyzer"]),
    (
        "ct",
        &[
            "ct",
            "microct",
            "工业ct",
            "计算机断层",
            "工业计算机断层扫描系统",
            "computed tomography",
            "industrial computed tomography",
        ],
    ),
    ("fcm", &["facs", "流式", "流式细胞", "流式细胞仪", "流式细胞术", "flow cytometer", "flow cytometry"]),
];

/// Names that stand for several concepts.
const GENERIC: &[(&str, &[&str])] = &[
    ("电镜", &["tem", "sem", "fib"]),
    ("电子显微镜", &["tem", "sem", "fib"]),
    ("electron microscope", &["tem", "sem", "fib"]),
    ("质谱", &["icpms", "gcms", "lcms"]),
    ("质谱仪", &["icpms", "gcms", "lcms"]),
    ("mass spectrometer", &["icpms", "gcms", "lcms"]),
    ("ms", &["icpms", "gcms", "lcms"]),
    ("色谱", &["hplc", "gc"]),
    ("热分析", &["tga", "dsc"]),
];

/// Lowercase, with everything but letters and digits removed, so that
/// "ICP-MS", "icp ms" and "ICPMS" are one key.
pub fn normalize(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// The normalized alias table: alias → concepts, longest aliases first.
fn table() -> &'static Vec<(String, Vec<&'static str>)> {
    static TABLE: std::sync::OnceLock<Vec<(String, Vec<&'static str>)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Vec<(String, Vec<&'static str>)> = Vec::new();
        for (id, aliases) in CONCEPTS {
            for a in *aliases {
                t.push((normalize(a), vec![id]));
            }
        }
        for (a, ids) in GENERIC {
            t.push((normalize(a), ids.to_vec()));
        }
        t.sort_by(|a, b| b.0.chars().count().cmp(&a.0.chars().count()).then(a.0.cmp(&b.0)));
        t
    })
}

fn lookup(key: &str) -> Option<&'static [&'static str]> {
    table().iter().find(|(a, _)| a == key).map(|(_, ids)| ids.as_slice())
}

/// What a query or a name means: the concepts it names, and the text that
/// named none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    pub concepts: Vec<&'static str>,
    pub rest: Vec<String>,
}

/// Reads words and CJK runs left to right, taking at each point the longest
/// run of up to four words (or the longest CJK substring) that is an alias.
/// Latin words match only whole, so "tem" is never found in "system".
pub fn analyze(text: &str) -> Analysis {
    let mut out = Analysis::default();
    let add = |ids: &[&'static str], out: &mut Analysis| {
        for id in ids {
            if !out.concepts.contains(id) {
                out.concepts.push(id);
            }
        }
    };
    // Words: maximal runs of letters/digits, CJK and Latin kept apart, but a
    // mixed run such as "X射线" kept whole, as people write it.
    let words: Vec<&str> = text.split(|c: char| !(c.is_alphanumeric())).filter(|w| !w.is_empty()).collect();
    let mut i = 0;
    while i < words.len() {
        if words[i].chars().any(is_cjk) {
            // Longest-match scan inside the CJK word.
            let w = normalize(words[i]);
            let chars: Vec<char> = w.chars().collect();
            let mut p = 0;
            let mut leftover = String::new();
            // No alias is longer than the longest one: looking further would
            // make a long query cost the square of its length.
            let longest = table().first().map_or(0, |(a, _)| a.chars().count());
            while p < chars.len() {
                let mut hit = None;
                for q in (p + 1..=chars.len().min(p + longest)).rev() {
                    let sub: String = chars[p..q].iter().collect();
                    if let Some(ids) = lookup(&sub) {
                        hit = Some((q, ids));
                        break;
                    }
                }
                match hit {
                    Some((q, ids)) => {
                        if !leftover.is_empty() {
                            out.rest.push(std::mem::take(&mut leftover));
                        }
                        add(ids, &mut out);
                        p = q;
                    }
                    None => {
                        leftover.push(chars[p]);
                        p += 1;
                    }
                }
            }
            if !leftover.is_empty() {
                out.rest.push(leftover);
            }
            i += 1;
            continue;
        }
        let mut matched = false;
        for n in (1..=4).rev() {
            if i + n > words.len() || words[i..i + n].iter().any(|w| w.chars().any(is_cjk)) {
                continue;
            }
            if let Some(ids) = lookup(&normalize(&words[i..i + n].concat())) {
                add(ids, &mut out);
                i += n;
                matched = true;
                break;
            }
        }
        if !matched {
            out.rest.push(words[i].to_lowercase());
            i += 1;
        }
    }
    out
}

/// The concepts an instrument's names belong to. The Chinese name decides
/// when it names any; the English name is the fallback. Generic names are
/// ignored here: an instrument is one kind of thing.
pub fn concepts_of(name_zh: &str, name_en: &str) -> Vec<&'static str> {
    let specific = |a: Analysis| -> Vec<&'static str> {
        if a.concepts.len() > 1 && GENERIC.iter().any(|(_, ids)| ids.iter().all(|id| a.concepts.contains(id))) {
            // Only a generic word matched: not specific enough to tag.
            return a.concepts.into_iter().filter(|c| !GENERIC.iter().any(|(_, ids)| ids.contains(c))).collect();
        }
        a.concepts
    };
    let zh = specific(analyze(name_zh));
    if !zh.is_empty() {
        return zh;
    }
    specific(analyze(name_en))
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
    fn thesaurus_joins_names_short_forms_and_abbreviations() {
        for q in ["NMR", "核磁", "核磁共振波谱仪", "nuclear magnetic resonance"] {
            assert_eq!(analyze(q).concepts, ["nmr"], "{q}");
        }
        for q in ["TEM", "透射电镜", "场发射透射电子显微镜", "Transmission Electron Microscope"] {
            assert_eq!(analyze(q).concepts, ["tem"], "{q}");
        }
        assert_eq!(analyze("液质").concepts, ["lcms"]);
        assert_eq!(analyze("LC-MS").concepts, ["lcms"]);
        assert_eq!(analyze("ICP MS").concepts, ["icpms"]);
        let mixed = analyze("透射电镜 JEOL 200kV");
        assert_eq!(mixed.concepts, ["tem"]);
        assert_eq!(mixed.rest, ["jeol", "200kv"]);
        assert!(analyze("temperature").concepts.is_empty(), "whole words only");
        let generic = analyze("电镜");
        assert_eq!(generic.concepts, ["tem", "sem", "fib"]);
    }

    #[test]
    fn instruments_are_tagged_by_their_names() {
        assert_eq!(concepts_of("场发射透射电子显微镜", ""), ["tem"]);
        assert_eq!(concepts_of("激光共聚焦显微拉曼光谱仪", "Confocal Raman Microscope (Raman)"), ["raman"]);
        assert_eq!(concepts_of("全自动比表面及孔隙度分析仪", ""), ["bet"]);
        assert_eq!(concepts_of("扫描探针显微镜", ""), ["afm"]);
        assert_eq!(concepts_of("某型号电子显微镜", "Electron microscope"), Vec::<&str>::new());
        assert_eq!(concepts_of("新型仪器", "Gas Chromatograph-Mass Spectrometer (GC-MS)"), ["gcms"]);
    }
}
