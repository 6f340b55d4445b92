//! Search across nine nodes: the thesaurus, ranking that compares across
//! cities, cursors, facets, free windows, and a slow city.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use corridor_node::{
    catalog::search::index::SearchIndex,
    ops::demo::{Scale, corridor_inventory},
};
use corridor_tests::{Front, Mesh, pb};
use tonic::Request;

fn search(query: &str, limit: u32) -> pb::SearchRequest {
    pb::SearchRequest { query: query.into(), limit, ..Default::default() }
}

fn ids(resp: &pb::SearchResponse) -> Vec<String> {
    resp.hits.iter().map(|h| h.instrument.as_ref().unwrap().id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_top_20_equals_one_index_holding_everything() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let all = corridor_inventory(Scale::G60);
    let one = SearchIndex::new();
    one.upsert(all.iter().enumerate().map(|(i, (_, r))| (i as u64, r))).unwrap();
    for q in ["显微镜", "spectrometer", "X射线 Bruker", "电子显微镜 EDS", "质谱 Thermo", "Quantum Design"] {
        let scored = one.search(q, None, usize::MAX).unwrap();
        let mut expected: Vec<(f32, String)> = scored
            .hits
            .into_iter()
            .map(|(ord, low, high)| {
                let (c, r) = &all[ord as usize];
                (scored.exact.score(ord, low, high), format!("{}/{}", c.slug, r.local_id))
            })
            .collect();
        expected.sort_by(|a, b| corridor_proto::cursor::rank((a.0, &a.1), (b.0, &b.1)));
        expected.truncate(20);
        let resp = gw.search(search(q, 20)).await.unwrap().into_inner();
        let got: Vec<(f32, String)> =
            resp.hits.iter().map(|h| (h.score as f32, h.instrument.as_ref().unwrap().id.clone())).collect();
        assert!(!got.is_empty(), "{q}");
        assert_eq!(got, expected, "{q}: the merged ranking must be the single-index ranking, scores included");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_short_forms_and_abbreviations_find_the_same_instruments() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let inv = corridor_inventory(Scale::G60);
    // The demo names each kind several ways, as platforms do; the search
    // must find every instrument of the kind, whatever it is called, and
    // rank them first. Some records of other kinds may stand among them,
    // up to a quarter: one named after the kind it serves (冷冻电镜样品制备仪,
    // a sample preparation robot for cryo-EM), and, for an abbreviation of
    // several short words (LC-MS/MS), one whose name holds all the words
    // (LC-QTOF MS), which ranks above a match by concept alone.
    let of = |kinds: &[&str]| -> BTreeSet<String> {
        inv.iter()
            .filter(|(_, r)| corridor_tests::of_kind(r, kinds))
            .map(|(c, r)| format!("{}/{}", c.slug, r.local_id))
            .collect()
    };
    for (group, kinds) in [
        (
            &["NMR", "核磁", "核磁共振波谱仪", "nuclear magnetic resonance"][..],
            &["nmr-400", "nmr-600", "ssnmr", "lf-nmr"][..],
        ),
        (
            &["TEM", "透射电镜", "transmission electron microscope"][..],
            &["tem-120kv", "tem-200kv", "ac-stem", "cryo-em"][..],
        ),
        (&["BET", "比表面", "比表面积"][..], &["bet"][..]),
        (&["LC-MS/MS", "液相色谱串联质谱"][..], &["lc-msms"][..]),
    ] {
        let wanted = of(kinds);
        assert!(!wanted.is_empty(), "{kinds:?}");
        for q in group {
            let resp = gw.search(search(q, 200)).await.unwrap().into_inner();
            let all: BTreeSet<String> = resp.hits.iter().map(|h| h.instrument.as_ref().unwrap().id.clone()).collect();
            assert!(all.is_superset(&wanted), "{q}: missing {:?}", wanted.difference(&all));
            let first: BTreeSet<String> =
                resp.hits.iter().take(wanted.len()).map(|h| h.instrument.as_ref().unwrap().id.clone()).collect();
            let strays = first.difference(&wanted).count();
            assert!(strays * 4 <= wanted.len(), "{q}: {strays} of the first {} are other kinds", wanted.len());
        }
    }
    // Mixed Chinese and English: the kind from the thesaurus, the maker from the text.
    let resp = gw.search(search("透射电镜 JEOL", 200)).await.unwrap().into_inner();
    let expected: BTreeSet<String> = inv
        .iter()
        .filter(|(_, r)| {
            corridor_tests::of_kind(r, &["tem-120kv", "tem-200kv", "ac-stem", "cryo-em"]) && r.manufacturer == "JEOL"
        })
        .map(|(c, r)| format!("{}/{}", c.slug, r.local_id))
        .collect();
    assert!(!expected.is_empty());
    let first: BTreeSet<String> =
        resp.hits.iter().take(expected.len()).map(|h| h.instrument.as_ref().unwrap().id.clone()).collect();
    assert_eq!(first, expected, "JEOL's TEMs first");
    // A typo in a Latin word still finds its instruments.
    let resp = gw.search(search("spectrometr", 5)).await.unwrap().into_inner();
    assert!(!resp.hits.is_empty());
    assert!(resp.hits.iter().all(|h| h.instrument.as_ref().unwrap().name_en.to_lowercase().contains("spectromet")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facets_equal_a_brute_force_count() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let inv = corridor_inventory(Scale::G60);
    let mut req = search("", 1);
    req.facets = true;
    req.filter = Some(pb::SearchFilter {
        provinces: vec!["Zhejiang".into()],
        categories: vec!["01".into()],
        accepts_vouchers: Some(true),
        ..Default::default()
    });
    let resp = gw.search(req).await.unwrap().into_inner();
    let matching: Vec<_> = inv
        .iter()
        .filter(|(c, r)| c.province == "Zhejiang" && r.category.starts_with("01.") && r.accepts_vouchers)
        .collect();
    assert_eq!(resp.total as usize, matching.len());
    let count =
        |key: &dyn Fn(&(&corridor_proto::cities::City, corridor_node::catalog::model::InstrumentRecord)) -> String| {
            let mut m: BTreeMap<String, u64> = BTreeMap::new();
            for x in &matching {
                *m.entry(key(x)).or_default() += 1;
            }
            m
        };
    let facets = resp.facets.unwrap();
    let got = |v: &[pb::FacetCount]| v.iter().map(|c| (c.value.clone(), c.count)).collect::<BTreeMap<_, _>>();
    assert_eq!(got(&facets.cities), count(&|(c, _)| c.slug.to_string()));
    assert_eq!(got(&facets.categories), count(&|(_, r)| r.category.clone()));
    assert_eq!(got(&facets.institutions), count(&|(_, r)| r.institution_name.clone()));

    // BET in one city that has one: only that city, with its facet.
    let (city, _) = inv.iter().find(|(_, r)| corridor_tests::of_kind(r, &["bet"])).unwrap();
    let mut req = search("BET", 50);
    req.facets = true;
    req.filter = Some(pb::SearchFilter { cities: vec![city.slug.into()], ..Default::default() });
    let resp = gw.search(req).await.unwrap().into_inner();
    assert!(resp.total > 0);
    assert!(resp.hits.iter().all(|h| h.instrument.as_ref().unwrap().city == city.slug));
    let facets = resp.facets.unwrap();
    assert_eq!(facets.cities.len(), 1);
    assert_eq!(facets.cities[0].count, resp.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_neither_repeat_nor_skip_across_a_reshuffle() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let before = gw.search(search("显微镜", 60)).await.unwrap().into_inner();
    let page1 = gw.search(search("显微镜", 20)).await.unwrap().into_inner();
    assert_eq!(ids(&page1), ids(&before)[..20]);

    // Reshuffle: a new microscope that would rank first arrives in hefei.
    let (_, mut r) =
        corridor_inventory(Scale::G60).into_iter().find(|(_, r)| corridor_tests::of_kind(r, &["afm"])).unwrap();
    r.local_id = "aaa-new-microscope".into();
    r.city = String::new();
    r.name_zh = "显微镜 显微镜".into();
    let stored = corridor_node::catalog::model::StoredInstrument { record: r, updated_at: String::new() };
    let row = pb::ImportRow {
        line: 1,
        instrument: Some(corridor_node::catalog::summary::to_proto(&stored, Mesh::city("hefei"))),
    };
    mesh.node("hefei", "admin-hefei")
        .import_instruments(Request::new(tokio_stream::iter([pb::ImportChunk { rows: vec![row] }])))
        .await
        .unwrap();

    let mut req = search("显微镜", 20);
    req.cursor = page1.next_cursor.clone();
    let page2 = gw.search(req).await.unwrap().into_inner();
    let one: BTreeSet<String> = ids(&page1).into_iter().collect();
    assert!(ids(&page2).iter().all(|id| !one.contains(id)), "page 2 repeats page 1");
    assert_eq!(ids(&page2), ids(&before)[20..40], "page 2 continues exactly where page 1 ended");
    let bad = pb::SearchRequest { cursor: "garbage".into(), ..search("显微镜", 20) };
    assert_eq!(gw.search(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_city_is_cut_off_at_the_deadline() {
    let mesh =
        Mesh::start_with(Some(Scale::G60), |c| (c == "suzhou").then_some(Front::Delay(Duration::from_millis(1_500))))
            .await;
    let mut gw = mesh.gateway("org-demo");
    let mut req = Request::new(search("显微镜", 20));
    req.set_timeout(Duration::from_millis(600));
    let started = tokio::time::Instant::now();
    let resp = gw.search(req).await.unwrap().into_inner();
    assert!(started.elapsed() < Duration::from_millis(600 + 1_000), "took {:?}", started.elapsed());
    assert!(resp.partial);
    let suzhou = resp.nodes.iter().find(|n| n.city == "suzhou").unwrap();
    assert_eq!(suzhou.state, pb::NodeState::Timeout as i32, "{suzhou:?}");
    assert_eq!(resp.nodes.iter().filter(|n| n.state == pb::NodeState::Ok as i32).count(), 8);
    assert!(!resp.hits.is_empty() && resp.hits.iter().all(|h| h.instrument.as_ref().unwrap().city != "suzhou"));

    // Fail-fast instead, when asked.
    let mut req = Request::new(pb::SearchRequest { allow_partial: Some(false), ..search("显微镜", 20) });
    req.set_timeout(Duration::from_millis(600));
    assert_eq!(gw.search(req).await.unwrap_err().code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_window_filter_uses_the_calendar() {
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let record = corridor_inventory(Scale::G60)
        .into_iter()
        .find(|(c, r)| {
            c.slug == "hefei" && r.status == corridor_node::catalog::model::Status::Available && !r.training_required
        })
        .map(|(_, r)| r)
        .unwrap();
    let inst = format!("hefei/{}", record.local_id);
    let rfc = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).unwrap().to_offset(time::macros::offset!(+8)).format(&Rfc3339).unwrap()
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let day = (now + 8 * 3600) / 86_400 * 86_400 - 8 * 3600 + 7 * 86_400; // local midnight, a week ahead
    // Default hours are 08:00–22:00: book 08:00–13:00 and 15:00–20:00, leaving
    // two free stretches of two hours.
    for (k, (s, e)) in [(8, 13), (15, 20)].into_iter().enumerate() {
        let req = pb::ReserveRequest {
            instrument_id: inst.clone(),
            start: rfc(day + s * 3600),
            end: rfc(day + e * 3600),
            idempotency_key: format!("fw{k}"),
            ..Default::default()
        };
        mesh.gateway("admin-hefei").reserve(req).await.unwrap();
    }
    let local = inst.split_once('/').unwrap().1.to_string();
    let find = |minutes: u32| {
        let mut req = search("", 200);
        req.filter = Some(pb::SearchFilter {
            cities: vec!["hefei".into()],
            institutions: vec![record.institution_name.clone()],
            free_window: Some(pb::FreeWindowFilter { from: rfc(day), to: rfc(day + 86_400), min_minutes: minutes }),
            ..Default::default()
        });
        req
    };
    let with = |resp: &pb::SearchResponse| resp.hits.iter().any(|h| h.instrument.as_ref().unwrap().local_id == local);
    let two_hours = gw.search(find(120)).await.unwrap().into_inner();
    assert!(with(&two_hours), "a two-hour window is free");
    let three_hours = gw.search(find(180)).await.unwrap().into_inner();
    assert!(!with(&three_hours), "no three-hour window is left");
    assert!(three_hours.total > 0, "the institution's other instruments are free");
}

/// The facts of an answer that batching must not change.
/// Hits with scores, total, facets, partial.
type Answer = (Vec<(String, f64)>, u64, Option<pb::Facets>, bool);

fn answer(resp: &pb::SearchResponse) -> Answer {
    let hits = resp.hits.iter().map(|h| (h.instrument.as_ref().unwrap().id.clone(), h.score)).collect();
    (hits, resp.total, resp.facets.clone(), resp.partial)
}

fn batch_calls(mesh: &Mesh, city: &str) -> u64 {
    let text = mesh.node_metrics[city].render();
    text.lines()
        .filter(|l| l.starts_with("corridor_rpc_requests_total{method=\"/corridor.v1.Node/SearchBatch\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_search_as_if_it_came_alone() {
    use pb::node_search_batch_result::Outcome;
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut node = mesh.node("hefei", "gateway");
    let queries =
        [search("显微镜", 20), pb::SearchRequest { facets: true, ..search("spectrometer", 10) }, search("核磁", 5)];
    let mut alone = Vec::new();
    for q in &queries {
        alone.push(node.search(q.clone()).await.unwrap().into_inner());
    }
    let item = |q: &pb::SearchRequest| pb::NodeSearchBatchItem { request: Some(q.clone()), ..Default::default() };
    let mut items: Vec<_> = queries.iter().map(item).collect();
    // An item with no search in it, and one whose budget is spent before
    // the node reaches it (four searches run before it).
    items.push(pb::NodeSearchBatchItem::default());
    items.push(pb::NodeSearchBatchItem { budget_micros: 1, ..item(&queries[0]) });
    let results = node.search_batch(pb::NodeSearchBatchRequest { items }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 5, "one result per item, in order");
    for (got, want) in results.iter().zip(&alone) {
        match &got.outcome {
            Some(Outcome::Found(found)) => assert_eq!(found, want),
            other => panic!("expected the search's answer, got {other:?}"),
        }
    }
    let code = |r: &pb::NodeSearchBatchResult| match &r.outcome {
        Some(Outcome::Error(e)) => tonic::Code::from(e.code),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(code(&results[3]), tonic::Code::InvalidArgument);
    assert_eq!(code(&results[4]), tonic::Code::DeadlineExceeded);

    let too_many = pb::NodeSearchBatchRequest { items: vec![item(&queries[2]); 65] };
    assert_eq!(node.search_batch(too_many).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Batches are reads like any other: another city's node may not make them.
    let one = pb::NodeSearchBatchRequest { items: vec![item(&queries[2])] };
    let err = mesh.node("hefei", "node-wuhu").search_batch(one).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_queued_behind_a_slow_city_are_batched_and_answered_as_alone() {
    let mesh =
        Mesh::start_with(Some(Scale::G60), |c| (c == "hefei").then_some(Front::Delay(Duration::from_millis(40)))).await;
    let queries = mixed_queries();
    let alone = one_by_one(&mesh, &queries).await;
    let before = batch_calls(&mesh, "hefei");
    // All at once: the slow city holds two calls at a time, the rest queue.
    assert_all_as_alone(&mesh, &queries, &alone).await;
    assert!(batch_calls(&mesh, "hefei") > before, "the queued searches reach the slow city as batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_predates_batches_gets_queued_searches_one_by_one() {
    let refused = Arc::new(AtomicUsize::new(0));
    let r = refused.clone();
    let mesh = Mesh::start_with(Some(Scale::G60), move |c| {
        (c == "hefei").then(|| Front::Old { delay: Duration::from_millis(40), refused: r.clone() })
    })
    .await;
    let queries = mixed_queries();
    let alone = one_by_one(&mesh, &queries).await;
    assert_eq!(refused.load(Ordering::SeqCst), 0, "a lone search goes out as Search");
    assert_all_as_alone(&mesh, &queries, &alone).await;
    let tried = refused.load(Ordering::SeqCst);
    assert!(tried >= 1, "the queued searches were offered as a batch first");
    // Once refused, the gateway no longer offers that node batches.
    assert_all_as_alone(&mesh, &queries, &alone).await;
    assert_eq!(refused.load(Ordering::SeqCst), tried, "no batch after the refusal");
    assert_eq!(batch_calls(&mesh, "hefei"), 0, "the node itself never saw a batch");
}

/// Searches of every kind in the mix, with and without facets.
fn mixed_queries() -> Vec<pb::SearchRequest> {
    ["显微镜", "spectrometer", "核磁", "X射线 Bruker", "质谱 metabolomics", "BET"]
        .into_iter()
        .flat_map(|q| [search(q, 20), pb::SearchRequest { facets: true, ..search(q, 5) }])
        .collect()
}

async fn one_by_one(mesh: &Mesh, queries: &[pb::SearchRequest]) -> Vec<Answer> {
    let gw = mesh.gateway("org-demo");
    let mut alone = Vec::new();
    for q in queries {
        alone.push(answer(&gw.clone().search(q.clone()).await.unwrap().into_inner()));
    }
    alone
}

/// Sends every query at once and checks each answer against `alone`.
async fn assert_all_as_alone(mesh: &Mesh, queries: &[pb::SearchRequest], alone: &[Answer]) {
    let gw = mesh.gateway("org-demo");
    let together = futures_util::future::join_all(queries.iter().map(|q| {
        let mut gw = gw.clone();
        let q = q.clone();
        async move { answer(&gw.search(q).await.unwrap().into_inner()) }
    }))
    .await;
    for ((got, want), q) in together.iter().zip(alone).zip(queries) {
        assert!(!got.3, "{q:?}: no city may drop out");
        assert_eq!(got, want, "{q:?}: a search answers together as it does alone");
    }
}
