//! Traces across the ten processes of `corridor up`: spans exported over
//! OTLP to a receiver inside this test, then checked for their parent
//! links, their trace ids and their RPC attributes and status.

mod common;

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use corridor_certs::{Credentials, Identity, client_channel};
use corridor_proto::{self as pb, gateway_client::GatewayClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// (service, trace id, span id, parent span id, name)
type Span = (String, Vec<u8>, Vec<u8>, Vec<u8>, String);

/// What a span says about its call: kind, status code and message, and
/// attributes.
#[derive(Debug, Clone, Default)]
struct Call {
    kind: i32,
    status: (i32, String),
    attributes: Vec<KeyValue>,
}

impl Call {
    fn attr(&self, key: &str) -> Option<Value> {
        self.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn code(&self) -> Option<i64> {
        match self.attr("rpc.grpc.status_code")? {
            Value::IntValue(n) => Some(n),
            _ => None,
        }
    }
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    /// By span id.
    calls: Arc<Mutex<HashMap<Vec<u8>, Call>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        let mut calls = self.calls.lock().unwrap();
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
                    let status = s.status.map(|st| (st.code, st.message)).unwrap_or_default();
                    calls.insert(s.span_id.clone(), Call { kind: s.kind, status, attributes: s.attributes });
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

impl Receiver {
    /// Waits up to a minute for `found` to find what it looks for in the
    /// spans that arrived.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let arrived = self.arrived.notified();
                if let Some(t) = found(&self.spans.lock().unwrap()) {
                    return t;
                }
                arrived.await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            let spans = self.spans.lock().unwrap();
            let names: HashSet<(&str, &str)> = spans.iter().map(|s| (s.0.as_str(), s.4.as_str())).collect();
            panic!("no {what} within 60 s; spans seen: {names:?}")
        })
    }

    fn call(&self, span: &Span) -> Call {
        self.calls.lock().unwrap().get(&span.2).cloned().unwrap_or_default()
    }
}

/// The span named `name` from `service` in `trace`, whose parent is `parent`
/// when given.
fn find<'a>(spans: &'a [Span], trace: &[u8], service: &str, name: &str, parent: Option<&Span>) -> Option<&'a Span> {
    spans.iter().find(|s| s.1 == trace && s.0 == service && s.4 == name && parent.is_none_or(|p| s.3 == p.2))
}

/// 09:00 in Shanghai, a week from now.
fn next_week_nine() -> i64 {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let day = 86_400;
    (now + 8 * 3600) / day * day - 8 * 3600 + 7 * day + 9 * 3600
}

fn gateway(data: &std::path::Path, base: u16, identity: &str) -> GatewayClient<tonic::transport::Channel> {
    let creds = Credentials::load(&data.join("certs"), identity).unwrap();
    let url = format!("https://127.0.0.1:{base}");
    GatewayClient::new(client_channel(&url, &creds, Some(Identity::Gateway), Duration::from_secs(2)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_cross_every_process_and_carry_each_calls_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let collector = tokio::spawn(
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

    // One search is one trace across the ten processes.
    let services = receiver.wait_for("complete search trace", complete_trace).await;
    assert!(services.contains("corridor-gateway") && services.contains("corridor-node-hefei"), "{services:?}");
    let spans = receiver.spans.lock().unwrap().clone();
    let root = spans.iter().find(|s| s.4 == "gateway.Search").unwrap();
    for s in spans.iter().filter(|s| s.1 == root.1 && s.4.starts_with("gateway.call.")) {
        let c = receiver.call(s);
        assert_eq!(c.kind, SpanKind::Client as i32, "{s:?}");
        assert_eq!(c.str("rpc.system").as_deref(), Some("grpc"), "{c:?}");
        assert_eq!(c.str("rpc.service").as_deref(), Some("corridor.v1.Node"), "{c:?}");
        assert!(matches!(c.str("rpc.method").as_deref(), Some("Search" | "SearchStats" | "SearchBatch")), "{c:?}");
        assert_eq!(c.code(), Some(0), "{c:?}");
        assert_eq!(c.status.0, StatusCode::Unset as i32, "{c:?}");
    }
    let server = receiver.call(root);
    assert_eq!((server.kind, server.code()), (SpanKind::Server as i32, Some(0)), "{server:?}");
    assert_eq!(server.str("rpc.method").as_deref(), Some("Search"), "{server:?}");

    // A refusal: NOT_FOUND is the caller's business on the servers, and a
    // failed call on the gateway's client span.
    let missing = gateway(&data, base, "org-demo")
        .get_instrument(pb::GetInstrumentRequest { id: "hefei/no-such-instrument".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let (gw, call, node) = receiver
        .wait_for("trace of the refused call", |spans| {
            let gw = spans.iter().find(|s| s.4 == "gateway.GetInstrument")?;
            let call = find(spans, &gw.1, "corridor-gateway", "gateway.call.hefei", Some(gw))?;
            let node = find(spans, &gw.1, "corridor-node-hefei", "node.GetInstrument", Some(call))?;
            Some((gw.clone(), call.clone(), node.clone()))
        })
        .await;
    for server in [receiver.call(&gw), receiver.call(&node)] {
        assert_eq!(server.code(), Some(5), "{server:?}");
        assert_eq!(server.status.0, StatusCode::Unset as i32, "{server:?}");
    }
    let call = receiver.call(&call);
    assert_eq!(call.code(), Some(5), "{call:?}");
    assert_eq!(call.status.0, StatusCode::Error as i32, "{call:?}");
    assert!(call.status.1.contains("no-such-instrument"), "{call:?}");

    // A voucher payment: the provider's calls to the issuer join the
    // reservation's trace, from the gateway through Hefei to Wuhu.
    let today = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8)).date();
    let v = gateway(&data, base, "admin-wuhu")
        .issue_voucher(pb::IssueVoucherRequest {
            city: "wuhu".into(),
            enterprise_uscc: corridor_node::catalog::model::uscc_with_check("91340200MA2N00000").unwrap(),
            enterprise_name: "芜湖示范科技有限公司".into(),
            holder: "spiffe://corridor/org/demo".into(),
            face_fen: 5_000_000,
            valid_from: (today - time::Duration::days(1)).to_string(),
            valid_until: (today + time::Duration::days(365)).to_string(),
            share_percent: 50,
            idempotency_key: "trace-voucher".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (instrument, _) =
        corridor_node::ops::demo::voucher_instruments(corridor_node::ops::demo::Scale::G60, "hefei").remove(0);
    let start = next_week_nine();
    let b = gateway(&data, base, "org-demo")
        .reserve(pb::ReserveRequest {
            instrument_id: instrument,
            start: corridor_node::booking::time::format(start),
            end: corridor_node::booking::time::format(start + 2 * 3600),
            idempotency_key: "trace-reserve".into(),
            voucher_id: v.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.payment.map(|p| p.state), Some(pb::PaymentState::Confirmed as i32));
    let (reserve, debits) = receiver
        .wait_for("trace of the voucher reservation", |spans| {
            let reserve = spans.iter().find(|s| s.4 == "gateway.Reserve" && s.0 == "corridor-gateway")?;
            let provider = find(spans, &reserve.1, "corridor-node-hefei", "node.Reserve", None)?;
            let handler = find(spans, &reserve.1, "corridor-node-hefei", "node.reserve", Some(provider))?;
            let mut debits = Vec::new();
            for name in ["node.TryDebit", "node.ConfirmDebit"] {
                // The issuer's span, under the provider's call span, under
                // the provider's handler: all in the gateway's trace.
                let issuer = find(spans, &reserve.1, "corridor-node-wuhu", name, None)?;
                let call = spans.iter().find(|s| s.2 == issuer.3)?;
                if call.0 != "corridor-node-hefei" || call.4 != "node.call.wuhu" || call.3 != handler.2 {
                    return None;
                }
                debits.push((issuer.clone(), call.clone()));
            }
            Some((reserve.clone(), debits))
        })
        .await;
    assert_eq!(receiver.call(&reserve).code(), Some(0));
    for (issuer, call) in debits {
        assert_eq!(receiver.call(&issuer).code(), Some(0), "{issuer:?}");
        let call = receiver.call(&call);
        assert_eq!(call.kind, SpanKind::Client as i32, "{call:?}");
        assert_eq!(call.code(), Some(0), "{call:?}");
        assert!(matches!(call.str("rpc.method").as_deref(), Some("TryDebit" | "ConfirmDebit")), "{call:?}");
    }
    drop(up);
    collector.abort();
}
