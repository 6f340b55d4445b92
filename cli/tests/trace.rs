//! One search is one trace across ten processes: spans exported over OTLP
//! to a receiver inside this test, then checked for their parent links.

mod common;

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// (service, trace id, span id, parent span id, name)
type Span = (String, Vec<u8>, Vec<u8>, Vec<u8>, String);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| if let Value::StringValue(s) = v { s.clone() } else { String::new() })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((service.clone(), s.trace_id, s.span_id, s.parent_span_id, s.name));
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The trace of the gateway's search, if it is complete: a `gateway.Search`
/// span, and for each of the nine cities a `node.Search` span whose parent
/// is the gateway's `gateway.call.<city>` span in the same trace.
fn complete_trace(spans: &[Span]) -> Option<HashSet<String>> {
    let root = spans.iter().find(|s| s.4 == "gateway.Search" && s.0 == "corridor-gateway")?;
    let trace: Vec<&Span> = spans.iter().filter(|s| s.1 == root.1).collect();
    let by_id: HashMap<&[u8], &Span> = trace.iter().map(|s| (s.2.as_slice(), *s)).collect();
    let mut services = HashSet::new();
    for node in trace.iter().filter(|s| s.4 == "node.Search") {
        let parent = by_id.get(node.3.as_slice())?;
        if !parent.4.starts_with("gateway.call.") || parent.0 != "corridor-gateway" {
            return None;
        }
        services.insert(node.0.clone());
    }
    services.insert(root.0.clone());
    (services.len() == 10).then_some(services)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_search_is_one_trace_across_ten_processes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let base = common::free_port_base();
    let data = dir.path().join("corridor");
    let (up, line) =
        common::start_up(&data, base, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp), ("OTEL_BSP_SCHEDULE_DELAY", "100")])
            .await;
    assert!(line.starts_with("corridor ready"), "{line:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(["search", "显微镜", "--json"])
        .env("CORRIDOR_GATEWAY", format!("https://127.0.0.1:{base}"))
        .env("CORRIDOR_CERTS", data.join("certs"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Wait until the exporters have delivered the whole trace.
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let arrived = receiver.arrived.notified();
            if let Some(services) = complete_trace(&receiver.spans.lock().unwrap()) {
                return services;
            }
            arrived.await;
        }
    })
    .await;
    drop(up);
    server.abort();
    let services = found.unwrap_or_else(|_| {
        let spans = receiver.spans.lock().unwrap();
        let names: HashSet<(&str, &str)> = spans.iter().map(|s| (s.0.as_str(), s.4.as_str())).collect();
        panic!("no complete trace within 60 s; spans seen: {names:?}")
    });
    assert!(services.contains("corridor-gateway") && services.contains("corridor-node-hefei"), "{services:?}");
}
