//! What the servers count and answer about calls themselves: label values
//! that stay bounded whatever callers send, code names, process metrics,
//! and oversized messages.

use std::time::Duration;

use corridor_certs::{Identity, client_channel};
use corridor_tests::{Mesh, pb};
use tonic::{Code, codegen::http};

/// Calls `path` on `city`'s node as its admin, with an empty message, and
/// returns the grpc-status it answers.
async fn call_path(mesh: &Mesh, city: &str, path: &str) -> Option<String> {
    let mut channel = client_channel(
        &mesh.node_url(city),
        &mesh.creds(&format!("admin-{city}")),
        Some(Identity::Node(city.into())),
        Duration::from_secs(2),
    )
    .unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", mesh.node_url(city)))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // An empty message: a 0 flag byte and a length of 0.
        .body(tonic::body::Body::new(one_chunk(vec![0u8; 5])))
        .unwrap();
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx)).await.unwrap();
    let resp = tower::Service::call(&mut channel, req).await.unwrap();
    resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string())
}

/// A body of one chunk.
fn one_chunk(bytes: Vec<u8>) -> impl http_body::Body<Data = tonic::codegen::Bytes, Error = tonic::Status> {
    struct Full(Option<tonic::codegen::Bytes>);
    impl http_body::Body for Full {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
    }
    Full(Some(bytes.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_leave_the_metrics_bounded() {
    let mesh = Mesh::start(None).await;
    let metrics = &mesh.node_metrics["hefei"];
    // A real call first, so that the before text has its method's series.
    mesh.node("hefei", "admin-hefei").info(pb::NodeInfoRequest {}).await.unwrap();
    let before = metrics.render();
    for i in 0..300 {
        let path = if i % 2 == 0 { format!("/corridor.v1.Node/Made{i}") } else { format!("/evil{i}.Svc/M{i}") };
        assert_eq!(call_path(&mesh, "hefei", &path).await.as_deref(), Some("12"), "{path}");
    }
    let after = metrics.render();
    assert!(!after.contains("Made") && !after.contains("evil"), "{after}");
    let unknown: Vec<&str> = after.lines().filter(|l| l.contains("method=\"unknown\"")).collect();
    assert!(
        unknown.contains(&"corridor_rpc_requests_total{method=\"unknown\",code=\"UNIMPLEMENTED\"} 300"),
        "{unknown:?}"
    );
    // The one new method's histogram and counter, not one series per path.
    assert!(after.len() < before.len() + 2_000, "{} bytes after, {} before", after.len(), before.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_named_and_process_metrics_are_served() {
    let mesh = Mesh::start(None).await;
    let mut node = mesh.node("hefei", "admin-hefei");
    node.info(pb::NodeInfoRequest {}).await.unwrap();
    let missing = node.get_instrument(pb::GetInstrumentRequest { id: "hefei/no-such".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let text = mesh.node_metrics["hefei"].render();
    assert!(text.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Node/Info\",code=\"OK\"} 1"), "{text}");
    assert!(
        text.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Node/GetInstrument\",code=\"NOT_FOUND\"} 1"),
        "{text}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap();
        assert!(value > 0.0, "{name} {value}");
    }
    for state in ["held", "pending", "confirmed", "cancelled", "declined", "expired", "completed"] {
        assert!(text.contains(&format!("corridor_bookings{{city=\"hefei\",state=\"{state}\"}} 0")), "{text}");
    }
    assert!(text.contains("corridor_voucher_held_fen{city=\"hefei\"} 0"), "{text}");
}

/// Over the 16 MiB limit, and every byte of it text.
fn oversized_query() -> String {
    "x".repeat(16 * 1024 * 1024 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_answered_resource_exhausted() {
    let mesh = Mesh::start(None).await;
    let query = pb::SearchRequest { query: oversized_query(), ..Default::default() };
    let at_gateway = mesh.gateway("org-demo").search(query.clone()).await.unwrap_err();
    let at_node = mesh.node("hefei", "gateway").search(query).await.unwrap_err();
    for status in [at_gateway, at_node] {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("over the limit of 16777216 bytes (16 MiB)"), "{status:?}");
    }
}
