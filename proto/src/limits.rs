//! Limits every server of the contract enforces alike, so that the gateway
//! refuses what a node would refuse, before any fan-out.

use std::time::Duration;

/// Longest search text, in characters. Real queries are a few words; a long
/// one only costs every node work.
pub const MAX_QUERY_CHARS: usize = 256;
/// Most terms a search text may hold: each Latin word or number is one, and
/// a run of Chinese characters is one per character pair it is searched by
/// (its bigrams).
pub const MAX_QUERY_TERMS: usize = 32;

/// Whether `c` is a CJK ideograph: such runs are searched as bigrams.
pub fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}' | '\u{20000}'..='\u{2A6DF}')
}

/// Why a search text is refused: which limit it is over, and by how much.
/// The messages are what callers show, so they say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Longer than [`MAX_QUERY_CHARS`] characters; `bytes` is its length.
    #[error("the query is {bytes} bytes long; at most {MAX_QUERY_CHARS} characters are searched: shorten it")]
    TooLong { bytes: usize },
    /// More than [`MAX_QUERY_TERMS`] terms.
    #[error(
        "the query has {terms} terms; at most {MAX_QUERY_TERMS} (a Latin word or number counts one, Chinese \
         counts one per pair of characters): use fewer words"
    )]
    TooManyTerms { terms: usize },
}

/// Refuses a search text over the limits, saying which and by how much.
/// Cheap on any input: a huge text is refused by its byte length first.
pub fn check_query(text: &str) -> Result<(), QueryError> {
    let chars = if text.len() > MAX_QUERY_CHARS * 4 { usize::MAX } else { text.chars().count() };
    if chars > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong { bytes: text.len() });
    }
    let terms = query_terms(text);
    if terms > MAX_QUERY_TERMS {
        return Err(QueryError::TooManyTerms { terms });
    }
    Ok(())
}

/// How many terms `text` is searched by.
pub fn query_terms(text: &str) -> usize {
    let mut terms = 0;
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut cjk_run = 0usize;
        let mut in_latin = false;
        for c in word.chars() {
            if is_cjk(c) {
                cjk_run += 1;
                in_latin = false;
            } else {
                if cjk_run > 0 {
                    terms += cjk_run.saturating_sub(1).max(1);
                    cjk_run = 0;
                }
                if !in_latin {
                    terms += 1;
                    in_latin = true;
                }
            }
        }
        if cjk_run > 0 {
            terms += cjk_run.saturating_sub(1).max(1);
        }
    }
    terms
}

/// The deadline a caller set with `grpc-timeout`, if any.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_count_words_and_chinese_pairs() {
        assert_eq!(query_terms("NMR"), 1);
        assert_eq!(query_terms("核磁"), 1);
        assert_eq!(query_terms("核磁共振波谱仪"), 6);
        assert_eq!(query_terms("TEM 200kV"), 2, "200kV is one word here, two index terms at most");
        assert_eq!(query_terms("X射线衍射仪 XRD"), 6);
        assert_eq!(query_terms(" -- "), 0);
    }

    #[test]
    fn long_or_wordy_queries_are_refused_before_any_work() {
        assert!(check_query("场发射透射电子显微镜 JEM-2100F 200 kV").is_ok());
        let long = "a".repeat(MAX_QUERY_CHARS + 1);
        assert_eq!(check_query(&long), Err(QueryError::TooLong { bytes: 257 }));
        assert_eq!(
            check_query(&long).unwrap_err().to_string(),
            "the query is 257 bytes long; at most 256 characters are searched: shorten it"
        );
        let huge = "核".repeat(1_000_000);
        assert_eq!(check_query(&huge), Err(QueryError::TooLong { bytes: 3_000_000 }));
        let wordy = (0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(check_query(&wordy), Err(QueryError::TooManyTerms { terms: 40 }));
        assert_eq!(
            check_query(&wordy).unwrap_err().to_string(),
            "the query has 40 terms; at most 32 (a Latin word or number counts one, Chinese counts one per pair of \
             characters): use fewer words"
        );
    }

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&md), None);
        md.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_millis(250)));
        md.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_secs(2)));
        md.insert("grpc-timeout", "xS".parse().unwrap());
        assert_eq!(grpc_timeout(&md), None);
    }
}
