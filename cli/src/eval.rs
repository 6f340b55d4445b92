//! `corridor eval search`: search relevance measured on judged queries. It
//! imports nothing: each judged query runs through the real gateway, as any
//! client's would, restricted to the institution the judged instruments were
//! imported under, and the ranking is scored against the judgments.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Args;
use corridor_proto as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    ClientOpts,
    client::{at, gateway},
};

/// How many hits a judged query is scored on.
const DEPTH: usize = 10;

#[derive(Args)]
pub struct EvalArgs {
    /// Judged queries, JSON Lines: {"query": "...", "kind": "abbr", "relevant": {"<local_id>": 2, ...}};
    /// grade 2 is what the query asks for, 1 is acceptable.
    #[arg(long)]
    judgments: PathBuf,
    /// The judged instruments, JSON Lines in the import format with a `city` on each row
    /// (default: instruments.jsonl beside the judgments).
    #[arg(long)]
    instruments: Option<PathBuf>,
    /// Search only this institution's instruments (default: the one the instruments file names).
    #[arg(long)]
    institution: Option<String>,
    /// Exit 1 when recall@10 falls below this.
    #[arg(long)]
    min_recall: Option<f64>,
    /// Exit 1 when the mean reciprocal rank falls below this.
    #[arg(long)]
    min_mrr: Option<f64>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Deserialize)]
struct Judged {
    query: String,
    #[serde(default)]
    kind: String,
    relevant: BTreeMap<String, u8>,
}

#[derive(Deserialize)]
struct Instrument {
    local_id: String,
    city: String,
    name_zh: String,
    institution_name: String,
}

/// One query's figures.
#[derive(Serialize, Clone)]
struct Scored {
    query: String,
    kind: String,
    recall: f64,
    reciprocal_rank: f64,
    ndcg: f64,
    /// Instruments graded 2 that are not in the top 10, by id and name.
    missed: Vec<String>,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Means {
    queries: usize,
    recall_at_10: f64,
    mrr: f64,
    ndcg_at_10: f64,
}

impl Means {
    fn of<'a>(scored: impl IntoIterator<Item = &'a Scored>) -> Means {
        let mut m = Means::default();
        for s in scored {
            m.queries += 1;
            m.recall_at_10 += s.recall;
            m.mrr += s.reciprocal_rank;
            m.ndcg_at_10 += s.ndcg;
        }
        if m.queries > 0 {
            let n = m.queries as f64;
            (m.recall_at_10, m.mrr, m.ndcg_at_10) = (m.recall_at_10 / n, m.mrr / n, m.ndcg_at_10 / n);
        }
        m
    }
}

/// Scores one ranking (ids, best first) against graded judgments.
///
/// - recall@10: of the instruments graded 2 (or, when none is, of all
///   judged ones), the share in the top 10, out of at most 10;
/// - reciprocal rank: 1 / the rank of the first judged instrument in the
///   top 10, or 0;
/// - nDCG@10: discounted gain (2^grade − 1) over the ideal ordering.
fn score(ranked: &[String], relevant: &BTreeMap<String, u8>) -> (f64, f64, f64) {
    let top = &ranked[..ranked.len().min(DEPTH)];
    let wanted: Vec<&String> = {
        let best: Vec<&String> = relevant.iter().filter(|(_, g)| **g >= 2).map(|(id, _)| id).collect();
        if best.is_empty() { relevant.keys().collect() } else { best }
    };
    let found = wanted.iter().filter(|id| top.contains(id)).count();
    let recall = if wanted.is_empty() { 1.0 } else { found as f64 / wanted.len().min(DEPTH) as f64 };
    let reciprocal_rank =
        top.iter().position(|id| relevant.get(id).is_some_and(|g| *g > 0)).map_or(0.0, |i| 1.0 / (i as f64 + 1.0));
    let gain = |g: u8| f64::from((1u32 << g) - 1);
    let discount = |i: usize| 1.0 / (i as f64 + 2.0).log2();
    let dcg: f64 =
        top.iter().enumerate().map(|(i, id)| gain(relevant.get(id).copied().unwrap_or(0)) * discount(i)).sum();
    let mut ideal: Vec<u8> = relevant.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal.iter().take(DEPTH).enumerate().map(|(i, g)| gain(*g) * discount(i)).sum();
    (recall, reciprocal_rank, if idcg > 0.0 { dcg / idcg } else { 1.0 })
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &PathBuf) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

pub async fn search(a: EvalArgs) -> Result<ExitCode> {
    let judged: Vec<Judged> = read_lines(&a.judgments)?;
    let instruments_path = a.instruments.clone().unwrap_or_else(|| a.judgments.with_file_name("instruments.jsonl"));
    let instruments: Vec<Instrument> = read_lines(&instruments_path)?;
    let by_local: BTreeMap<&str, &Instrument> = instruments.iter().map(|i| (i.local_id.as_str(), i)).collect();
    let full_id = |local: &str| by_local.get(local).map(|i| format!("{}/{}", i.city, i.local_id));
    let institution = match &a.institution {
        Some(i) => i.clone(),
        None => {
            let mut names: Vec<&str> = instruments.iter().map(|i| i.institution_name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            match names.as_slice() {
                [one] => one.to_string(),
                _ => bail!(
                    "{} names {} institutions; pick one with --institution",
                    instruments_path.display(),
                    names.len()
                ),
            }
        }
    };
    let mut client = gateway(&a.client)?;
    let mut scored = Vec::with_capacity(judged.len());
    for j in &judged {
        let mut relevant = BTreeMap::new();
        for (local, grade) in &j.relevant {
            let id = full_id(local)
                .with_context(|| format!("query {:?} judges {local:?}, which the instruments file lacks", j.query))?;
            relevant.insert(id, *grade);
        }
        let req = pb::SearchRequest {
            query: j.query.clone(),
            limit: DEPTH as u32,
            filter: Some(pb::SearchFilter { institutions: vec![institution.clone()], ..Default::default() }),
            allow_partial: Some(false),
            ..Default::default()
        };
        let resp = client.search(req).await.map_err(at(&a.client.gateway))?.into_inner();
        let ranked: Vec<String> =
            resp.hits.iter().filter_map(|h| h.instrument.as_ref().map(|i| i.id.clone())).collect();
        let (recall, reciprocal_rank, ndcg) = score(&ranked, &relevant);
        let missed = relevant
            .iter()
            .filter(|(id, g)| **g >= 2 && !ranked.contains(id))
            .map(|(id, _)| {
                let name = id.split_once('/').and_then(|(_, l)| by_local.get(l)).map_or("", |i| i.name_zh.as_str());
                format!("{id} {name}")
            })
            .collect();
        scored.push(Scored { query: j.query.clone(), kind: j.kind.clone(), recall, reciprocal_rank, ndcg, missed });
    }
    let all = Means::of(&scored);
    let mut kinds: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for s in &scored {
        kinds.entry(s.kind.clone()).or_default().push(s.clone());
    }
    let by_kind: BTreeMap<&String, Means> = kinds.iter().map(|(k, v)| (k, Means::of(v))).collect();
    // A query misses when a wanted instrument is kept off the first page by
    // one that is not wanted, or nothing judged comes first.
    let misses: Vec<&Scored> = scored.iter().filter(|s| s.recall < 1.0 || s.reciprocal_rank < 1.0).collect();
    if a.client.json {
        outln!("{}", json!({"institution": institution, "all": all, "by_kind": by_kind, "misses": misses}));
    } else {
        let row = |name: &str, m: &Means| {
            format!(
                "{name:<10} {:>5} queries  recall@10 {:.3}  MRR {:.3}  nDCG@10 {:.3}",
                m.queries, m.recall_at_10, m.mrr, m.ndcg_at_10
            )
        };
        outln!("{}", row("all", &all));
        for (k, m) in &by_kind {
            outln!("{}", row(k, m));
        }
        for s in &misses {
            outln!(
                "miss {:?} ({}): rank of first relevant {}; not in the top 10: {}",
                s.query,
                s.kind,
                if s.reciprocal_rank > 0.0 { format!("{}", (1.0 / s.reciprocal_rank).round()) } else { "none".into() },
                if s.missed.is_empty() { "-".into() } else { s.missed.join(", ") }
            );
        }
    }
    let below = a.min_recall.is_some_and(|m| all.recall_at_10 < m) || a.min_mrr.is_some_and(|m| all.mrr < m);
    if below {
        eprintln!(
            "below the floor: recall@10 {:.3} (floor {}), MRR {:.3} (floor {})",
            all.recall_at_10,
            a.min_recall.map_or("none".into(), |m| m.to_string()),
            all.mrr,
            a.min_mrr.map_or("none".into(), |m| m.to_string())
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
        pairs.iter().map(|(id, g)| (id.to_string(), *g)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn figures_follow_their_definitions() {
        let rel = judged(&[("a", 2), ("b", 1)]);
        assert_eq!(score(&ids(&["a", "b"]), &rel), (1.0, 1.0, 1.0));
        let (recall, rr, ndcg) = score(&ids(&["x", "b", "a"]), &rel);
        assert_eq!((recall, rr), (1.0, 0.5));
        assert!(ndcg < 1.0 && ndcg > 0.5, "{ndcg}");
        assert_eq!(score(&ids(&["x", "y"]), &rel), (0.0, 0.0, 0.0));
        // Recall counts the wanted ones among the top 10 only, out of at most 10.
        let many: Vec<(String, u8)> = (0..20).map(|i| (format!("m{i}"), 2)).collect();
        let many: BTreeMap<String, u8> = many.into_iter().collect();
        let top: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(score(&top, &many).0, 1.0);
    }
}
