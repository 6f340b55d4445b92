//! Calls the gateway routes to one city: the node's answer reaches the
//! caller with its code, a node that dies under a call is reported as
//! unavailable, and every routed call goes through the city's guard.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use corridor_node::ops::demo::{Scale, corridor_inventory};
use corridor_tests::{Front, Mesh, pb};
use tonic::{Code, Request};

fn with_deadline<T>(msg: T, ms: u64) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_millis(ms));
    r
}

fn a_hefei_instrument() -> String {
    let (city, record) = corridor_inventory(Scale::G60).into_iter().find(|(c, _)| c.slug == "hefei").unwrap();
    format!("{}/{}", city.slug, record.local_id)
}

/// 09:00 to 10:00 in Shanghai, a week from now.
fn next_week() -> (String, String) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let nine = (now + 8 * 3600) / 86_400 * 86_400 - 8 * 3600 + 7 * 86_400 + 9 * 3600;
    (corridor_node::booking::time::format(nine), corridor_node::booking::time::format(nine + 3600))
}

fn reserve(instrument: &str, key: &str) -> pb::ReserveRequest {
    let (start, end) = next_week();
    pb::ReserveRequest {
        instrument_id: instrument.into(),
        start,
        end,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_code_reaches_the_caller_on_every_routed_call() {
    let mesh = Mesh::start_with(None, |c| (c == "hefei").then_some(Front::Answer(Code::DataLoss))).await;
    let mut gw = mesh.gateway("org-demo");
    let err = gw.get_instrument(pb::GetInstrumentRequest { id: "hefei/tem-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("store is corrupt"), "{err:?}");
    let err = gw.reserve(reserve("hefei/tem-1", "k1")).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let err = gw.get_booking(pb::GetBookingRequest { booking_id: "hefei/bk-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    // A city that answers is still what it was.
    let err = gw.get_instrument(pb::GetInstrumentRequest { id: "wuhu/no-such".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_under_a_routed_call_is_unavailable_not_slow() {
    let cut = Arc::new(AtomicBool::new(false));
    let mesh = Mesh::start_with(Some(Scale::G60), |c| (c == "hefei").then(|| Front::Cut(cut.clone()))).await;
    let mut gw = mesh.gateway("org-demo");
    let id = a_hefei_instrument();
    // The gateway's connection to Hefei is up and answering.
    gw.get_instrument(pb::GetInstrumentRequest { id: id.clone() }).await.unwrap();
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = gw.reserve(with_deadline(reserve(&id, "k1"), 10_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("city hefei is unavailable"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_calls_go_through_the_citys_guard() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hole.set_nonblocking(true).unwrap();
    let hole = std::sync::Mutex::new(Some(tokio::net::TcpListener::from_std(hole).unwrap()));
    let mesh =
        Mesh::start_with(None, |c| if c == "hefei" { hole.lock().unwrap().take().map(Front::BlackHole) } else { None })
            .await;
    let mut gw = mesh.gateway("org-demo");
    // Searches that Hefei never answers open its circuit.
    let only_hefei = pb::SearchFilter { cities: vec!["hefei".into()], ..Default::default() };
    for _ in 0..5 {
        let req = pb::SearchRequest { query: "TEM".into(), filter: Some(only_hefei.clone()), ..Default::default() };
        let resp = gw.search(with_deadline(req, 200)).await.unwrap().into_inner();
        assert!(resp.partial);
    }
    // A booking call to Hefei is refused by the open circuit at once,
    // instead of spending its whole deadline on a city known to be sick.
    let err = gw.reserve(with_deadline(reserve("hefei/tem-1", "k1"), 10_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("circuit open"), "{err:?}");
}

/// Each city here has a node that answers every call itself with this code,
/// for a reason of its own (see `Front::Answer`).
const OWN_ANSWERS: [(&str, Code); 5] = [
    ("hefei", Code::FailedPrecondition),
    ("wuhu", Code::NotFound),
    ("suzhou", Code::ResourceExhausted),
    ("jinhua", Code::Unavailable),
    ("huzhou", Code::DeadlineExceeded),
];

/// What `Front::Answer` says for a call of `method`.
fn own_message(method: &str) -> String {
    format!("/corridor.v1.Node/{method}: store is corrupt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_answer_reaches_the_caller_with_its_code_and_message_whatever_the_code() {
    let mesh = Mesh::start_with(None, |c| {
        OWN_ANSWERS.iter().find(|(city, _)| *city == c).map(|(_, code)| Front::Answer(*code))
    })
    .await;
    let mut gw = mesh.gateway("org-demo");
    for (city, code) in OWN_ANSWERS {
        // A routed call: the node's status, unchanged. UNAVAILABLE and
        // DEADLINE_EXCEEDED included: the node answered, so it is neither
        // unreachable nor slow.
        let err = gw.get_instrument(pb::GetInstrumentRequest { id: format!("{city}/tem-1") }).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, own_message("GetInstrument").as_str()), "{city}: {err:?}");
        let err = gw.reserve(with_deadline(reserve(&format!("{city}/tem-1"), "k1"), 10_000)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, own_message("Reserve").as_str()), "{city}: {err:?}");

        // A search that allows no partial answer fails with the node's code,
        // naming the city, and with its message.
        let only = pb::SearchFilter { cities: vec![city.into()], ..Default::default() };
        let req = pb::SearchRequest { filter: Some(only.clone()), allow_partial: Some(false), ..Default::default() };
        let err = gw.search(with_deadline(req, 10_000)).await.unwrap_err();
        assert_eq!(err.code(), code, "{city}: {err:?}");
        assert_eq!(err.message(), format!("city {city}: {}", own_message("Search")), "{city}");

        // One that does reports the node's message as the city's detail.
        let req = pb::SearchRequest { filter: Some(only), ..Default::default() };
        let resp = gw.search(with_deadline(req, 10_000)).await.unwrap().into_inner();
        assert!(resp.partial);
        assert_eq!(resp.nodes.len(), 1);
        assert_eq!(resp.nodes[0].detail, own_message("Search"), "{city}");
    }
    // A search of every city: each failed city keeps its node's message.
    let resp = gw.search(with_deadline(pb::SearchRequest::default(), 10_000)).await.unwrap().into_inner();
    for (city, code) in OWN_ANSWERS {
        let node = resp.nodes.iter().find(|n| n.city == city).unwrap();
        assert_eq!(node.detail, own_message("Search"), "{city}");
        let state = match code {
            Code::Unavailable => pb::NodeState::Unavailable,
            Code::DeadlineExceeded => pb::NodeState::Timeout,
            _ => pb::NodeState::Error,
        };
        assert_eq!(node.state, state as i32, "{city}");
    }
}
