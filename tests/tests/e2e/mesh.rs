//! The nine-city mesh end to end: search across cities, partial results,
//! routing by id, health and reflection.

use std::{collections::BTreeSet, time::Duration};

use corridor_node::ops::demo::{Scale, corridor_inventory};
use corridor_tests::{Front, Mesh, pb};
use tokio::net::TcpListener;
use tonic::{Code, Request};

fn search(query: &str, limit: u32) -> pb::SearchRequest {
    pb::SearchRequest { query: query.into(), limit, ..Default::default() }
}

fn with_deadline<T>(msg: T, ms: u64) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_millis(ms));
    r
}

fn cities_of(resp: &pb::SearchResponse) -> BTreeSet<String> {
    resp.hits.iter().map(|h| h.instrument.as_ref().unwrap().city.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_spans_all_nine_cities() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");

    // An empty query lists everything: every city answers and the counts add up.
    let resp = gw.search(search("", 200)).await.unwrap().into_inner();
    assert!(!resp.partial);
    assert_eq!(resp.nodes.len(), 9);
    assert!(resp.nodes.iter().all(|n| n.state == pb::NodeState::Ok as i32), "{:?}", resp.nodes);
    assert_eq!(resp.total, 1_746);
    assert_eq!(resp.hits.len(), 200);

    // 显微镜 is in the names of several kinds of microscope, in every city:
    // those come first; every record that contains the word is a hit, and
    // so is every microscope by another name (电镜).
    let resp = gw.search(search("显微镜", 200)).await.unwrap().into_inner();
    let inventory = corridor_inventory(Scale::G60);
    let literal = inventory.iter().filter(|(_, r)| r.name_zh.contains("显微镜") || r.description.contains("显微镜"));
    assert!(resp.total >= literal.count() as u64);
    let named: BTreeSet<String> = inventory
        .iter()
        .filter(|(_, r)| r.name_zh.contains("显微镜"))
        .map(|(c, r)| format!("{}/{}", c.slug, r.local_id))
        .collect();
    assert!(named.len() < 200);
    let first: BTreeSet<String> =
        resp.hits.iter().take(named.len()).map(|h| h.instrument.as_ref().unwrap().id.clone()).collect();
    assert_eq!(first, named, "names that hold the word come first");
    assert!(cities_of(&resp).len() >= 5, "hits from several cities: {:?}", cities_of(&resp));
    // Merged hits are ordered by score, then id.
    for w in resp.hits.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (ia, ib) = (&a.instrument.as_ref().unwrap().id, &b.instrument.as_ref().unwrap().id);
        assert!(a.score > b.score || (a.score == b.score && ia < ib), "{ia} {} before {ib} {}", a.score, b.score);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_by_city_province_and_category() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let inventory = corridor_inventory(Scale::G60);

    let mut req = search("TEM", 200);
    req.filter = Some(pb::SearchFilter { cities: vec!["hefei".into()], ..Default::default() });
    let resp = gw.search(req).await.unwrap().into_inner();
    assert_eq!(resp.nodes.len(), 1, "only the filtered city is asked");
    // Every transmission electron microscope, whatever its listed name.
    let tems: BTreeSet<String> = inventory
        .iter()
        .filter(|(c, r)| {
            c.slug == "hefei" && corridor_tests::of_kind(r, &["tem-120kv", "tem-200kv", "ac-stem", "cryo-em"])
        })
        .map(|(_, r)| format!("hefei/{}", r.local_id))
        .collect();
    assert!(!tems.is_empty());
    let found: BTreeSet<String> = resp.hits.iter().map(|h| h.instrument.as_ref().unwrap().id.clone()).collect();
    assert!(found.is_superset(&tems), "every Hefei TEM is found: {:?}", tems.difference(&found));
    // TEMs first, but for a few records named after the TEMs they serve
    // (a "Cryo-EM Sample Preparation System"); anything that only mentions
    // TEM in its description comes after them.
    let strays: Vec<String> = resp.hits[..tems.len()]
        .iter()
        .map(|h| h.instrument.as_ref().unwrap())
        .filter(|i| !tems.contains(&i.id))
        .map(|i| format!("{} {} / {}", i.id, i.name_zh, i.name_en))
        .collect();
    assert!(strays.len() * 4 <= tems.len(), "{strays:?}");
    assert_eq!(cities_of(&resp), BTreeSet::from(["hefei".to_string()]));

    let mut req = search("", 200);
    req.filter = Some(pb::SearchFilter { provinces: vec!["Anhui".into()], ..Default::default() });
    let resp = gw.search(req).await.unwrap().into_inner();
    let expected = inventory.iter().filter(|(c, _)| c.province == "Anhui").count();
    assert_eq!(resp.total as usize, expected);
    assert_eq!(resp.nodes.len(), 3);

    let mut req = search("", 200);
    req.filter = Some(pb::SearchFilter { categories: vec!["01.01".into()], ..Default::default() });
    let resp = gw.search(req).await.unwrap().into_inner();
    let expected = inventory.iter().filter(|(_, r)| r.category.starts_with("01.01.")).count();
    assert_eq!(resp.total as usize, expected);

    let mut req = search("", 10);
    req.filter = Some(pb::SearchFilter { cities: vec!["atlantis".into()], ..Default::default() });
    let err = gw.search(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not a corridor city"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_city_gives_partial_results() {
    let mut mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    // Warm the gateway's connection to wuhu, so the stop cuts a live one.
    gw.search(search("", 1)).await.unwrap();
    mesh.stop_node("wuhu").await;

    let resp = gw.search(with_deadline(search("", 200), 2_000)).await.unwrap().into_inner();
    assert!(resp.partial);
    let wuhu = resp.nodes.iter().find(|n| n.city == "wuhu").unwrap();
    assert_eq!(wuhu.state, pb::NodeState::Unavailable as i32, "{wuhu:?}");
    assert!(!wuhu.detail.is_empty());
    let ok = resp.nodes.iter().filter(|n| n.state == pb::NodeState::Ok as i32).count();
    assert_eq!(ok, 8);
    assert!(!cities_of(&resp).contains("wuhu"));
    let expected = corridor_inventory(Scale::G60).iter().filter(|(c, _)| c.slug != "wuhu").count();
    assert_eq!(resp.total as usize, expected);

    // Fail-fast when partial results are not allowed.
    let mut req = search("", 10);
    req.allow_partial = Some(false);
    let err = gw.search(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("wuhu"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_city_times_out_within_the_deadline() {
    // hefei's address accepts TCP connections but nobody ever answers them.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hole.set_nonblocking(true).unwrap();
    let hole = std::sync::Mutex::new(Some(TcpListener::from_std(hole).unwrap()));
    let mesh = Mesh::start_with(Some(Scale::G60), |c| {
        if c == "hefei" { hole.lock().unwrap().take().map(Front::BlackHole) } else { None }
    })
    .await;
    let mut gw = mesh.gateway("org-demo");

    let started = tokio::time::Instant::now();
    let resp = gw.search(with_deadline(search("显微镜", 50), 600)).await.unwrap().into_inner();
    let took = started.elapsed();
    // Bounded by the deadline (generous slack for a loaded machine), not by
    // TCP or TLS timeouts.
    assert!(took < Duration::from_millis(600 + 2_000), "took {took:?}");
    assert!(resp.partial);
    let hefei = resp.nodes.iter().find(|n| n.city == "hefei").unwrap();
    assert_eq!(hefei.state, pb::NodeState::Timeout as i32, "{hefei:?}");
    assert_eq!(resp.nodes.iter().filter(|n| n.state == pb::NodeState::Ok as i32).count(), 8);
    assert!(!resp.hits.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_instrument_routes_by_city_prefix() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut gw = mesh.gateway("org-demo");
    let (city, record) = corridor_inventory(Scale::G60).into_iter().find(|(c, _)| c.slug == "xuancheng").unwrap();
    let id = format!("{}/{}", city.slug, record.local_id);
    let got = gw.get_instrument(pb::GetInstrumentRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.id, id);
    assert_eq!(got.name_zh, record.name_zh);
    assert_eq!(got.province, "Anhui");
    assert!(got.updated_at.ends_with("+08:00"), "{}", got.updated_at);

    let err = gw.get_instrument(pb::GetInstrumentRequest { id: "xuancheng/none".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for bad in ["atlantis/x", "no-slash", "hefei/"] {
        let err = gw.get_instrument(pb::GetInstrumentRequest { id: bad.into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_nodes_reports_every_city_and_its_inventory() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let resp = mesh.gateway("org-demo").list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner();
    let cities: Vec<&str> = resp.nodes.iter().map(|n| n.city.as_str()).collect();
    assert_eq!(cities, corridor_proto::cities::CITIES.map(|c| c.slug));
    assert_eq!(resp.nodes.iter().map(|n| n.instruments).sum::<u64>(), 1_746);
    assert!(resp.nodes.iter().all(|n| n.state == pb::NodeState::Ok as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_health_and_reflection() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mesh = Mesh::start(None).await;
    let channel = corridor_certs::client_channel(
        &mesh.gateway_url(),
        &mesh.creds("org-demo"),
        Some(corridor_certs::Identity::Gateway),
        Duration::from_secs(2),
    )
    .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "corridor.v1.Gateway"] {
        let resp =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"corridor.v1.Gateway".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    assert!(!names.contains(&"corridor.v1.Node".to_string()), "the gateway does not serve the node API: {names:?}");
}
