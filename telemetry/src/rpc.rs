//! What every gRPC call leaves behind, on both ends: on a server, its count,
//! latency and server span; on a client, the status of its call span. A
//! call's status is known only at its end (a success carries it in the
//! trailers, after the body), so both layers watch the response body too.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{self, HeaderMap};
use tracing::field::Empty;

use crate::{
    metrics::Metrics,
    trace::{extract, span_name},
};

/// gRPC status code names as the protocol spells them, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC status `code` (`9` → `FAILED_PRECONDITION`); a number
/// outside the protocol's is `UNKNOWN`, as gRPC itself reads it.
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| CODE_NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// The label and span value of every method no service defines, so that
/// made-up paths cannot grow the metrics or the span names.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Codes a server reports as its own failure, per the OpenTelemetry RPC
/// conventions; the others describe the caller's request.
fn server_fault(code: i32) -> bool {
    use tonic::Code;
    [Code::Unknown, Code::DeadlineExceeded, Code::Unimplemented, Code::Internal, Code::Unavailable, Code::DataLoss]
        .iter()
        .any(|c| *c as i32 == code)
}

/// ("corridor.v1.Node", "Search") of a known path; unknown ones stay unnamed.
fn service_and_method(known: Option<&'static str>) -> (&'static str, &'static str) {
    known.and_then(|p| p.trim_start_matches('/').split_once('/')).unwrap_or((UNKNOWN_METHOD, UNKNOWN_METHOD))
}

fn status_code(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// tonic answers a message over a decode or encode limit (its own request on
/// a client, the answer it relays on the gateway) OUT_OF_RANGE with this in
/// the message; gRPC's convention for it is RESOURCE_EXHAUSTED.
const TOO_LARGE: &str = "message length too large";

/// Rewrites tonic's OUT_OF_RANGE for an oversized message into
/// RESOURCE_EXHAUSTED, naming the limit; returns the code now in `headers`.
fn resource_exhausted_for_too_large(headers: &mut HeaderMap, code: i32) -> i32 {
    if code != tonic::Code::OutOfRange as i32 {
        return code;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else { return code };
    if !status.message().contains(TOO_LARGE) {
        return code;
    }
    let message = too_large_message(status.message());
    if tonic::Status::resource_exhausted(message).add_header(headers).is_err() {
        return code;
    }
    tonic::Code::ResourceExhausted as i32
}

/// "Error, decoded message length too large: found 17 bytes, the limit is:
/// 16 bytes" → "a message of 17 bytes is over the limit of 16 bytes (…)".
fn too_large_message(tonic_message: &str) -> String {
    let numbers: Vec<u64> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match numbers[..] {
        [found, limit] => format!(
            "a message of {found} bytes is over the limit of {limit} bytes ({:.0} MiB); split it, or ask for less in one call",
            limit as f64 / (1024.0 * 1024.0)
        ),
        _ => format!("a message is over the size limit ({tonic_message}); split it, or ask for less in one call"),
    }
}

/// How a call ended, as one end of it saw it.
enum End<'a> {
    /// With a status, in the headers of a trailers-only answer or in the
    /// trailers; the server may rewrite it.
    Status(&'a mut HeaderMap),
    /// The body ended, or failed, without a status.
    NoStatus,
    /// The channel failed to carry the call.
    Transport(String),
    /// Dropped before its end: the caller went away, or gave up waiting.
    Abandoned,
}

enum Side {
    Server { metrics: Arc<Metrics>, method: &'static str, started: Instant },
    Client,
}

/// The bookkeeping of one call, done once at its end; dropped before
/// that, the call was abandoned (a server's caller went away, or a client
/// gave up waiting) and is recorded as such.
struct Done {
    side: Side,
    span: tracing::Span,
    finished: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        if !self.finished {
            self.end(End::Abandoned);
        }
    }
}

impl Done {
    fn new(side: Side, span: tracing::Span) -> Self {
        Done { side, span, finished: false }
    }

    fn finish(mut self, end: End<'_>) {
        self.end(end);
    }

    fn end(&mut self, end: End<'_>) {
        self.finished = true;
        let (code, message) = match end {
            End::Status(headers) => {
                let code = status_code(headers).unwrap_or(tonic::Code::Unknown as i32);
                let code = match self.side {
                    Side::Server { .. } => resource_exhausted_for_too_large(headers, code),
                    Side::Client => code,
                };
                // Read only for a failure: a success has no message to keep.
                let message = if code == 0 {
                    String::new()
                } else {
                    tonic::Status::from_header_map(headers).map(|s| s.message().to_string()).unwrap_or_default()
                };
                (code, message)
            }
            End::NoStatus => (tonic::Code::Unknown as i32, "the answer ended without a grpc-status".into()),
            End::Transport(message) => (tonic::Code::Unavailable as i32, message),
            End::Abandoned => match self.side {
                Side::Server { .. } => (tonic::Code::Cancelled as i32, "the caller went away before the answer".into()),
                Side::Client => {
                    // No status came back, so there is no code to record.
                    self.span.record("otel.status_code", "ERROR");
                    self.span.record("otel.status_description", "abandoned before the answer came");
                    return;
                }
            },
        };
        record_status(&self.span, code, message, matches!(self.side, Side::Server { .. }));
        if let Side::Server { metrics, method, started } = &self.side {
            metrics.rpc(method, code_name(code), started.elapsed());
        }
    }
}

/// A call's status on its span, per the OpenTelemetry RPC conventions:
/// every non-OK code is an error on a client, only its own faults on a
/// server.
fn record_status(span: &tracing::Span, code: i32, message: String, server: bool) {
    span.record("rpc.grpc.status_code", code as i64);
    let error = if server { server_fault(code) } else { code != 0 };
    if error {
        span.record("otel.status_code", "ERROR");
        let description = if message.is_empty() { code_name(code).to_string() } else { message };
        span.record("otel.status_description", description.as_str());
    }
}

/// A response body that finishes its call's bookkeeping when its trailers
/// pass, or when it ends; dropped before either, the call was abandoned.
pub struct Observed<B> {
    inner: B,
    done: Option<Done>,
}

impl<B> Observed<B> {
    fn new(inner: B, done: Option<Done>) -> Self {
        Observed { inner, done }
    }
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut()
                    && let Some(done) = this.done.take()
                {
                    done.finish(End::Status(trailers));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(done) = this.done.take() {
                    done.finish(End::NoStatus);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done.finish(End::NoStatus);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Finishes at once a call whose answer is trailers-only (every refusal),
/// else hands its bookkeeping to the body.
fn observe<B>(mut resp: http::Response<B>, done: Done) -> http::Response<Observed<B>> {
    if status_code(resp.headers()).is_some() {
        done.finish(End::Status(resp.headers_mut()));
        resp.map(|b| Observed::new(b, None))
    } else {
        resp.map(|b| Observed::new(b, Some(done)))
    }
}

/// The tower layer under every server: it counts each call by method and
/// status code, times it, opens its server span (a child of the caller's,
/// when the caller sent one) and sets the span's status, and answers an
/// oversized message RESOURCE_EXHAUSTED instead of tonic's OUT_OF_RANGE.
#[derive(Clone)]
pub struct RpcLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = http::Response<Observed<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let known = corridor_proto::known_method(req.uri().path());
        let span = server_span(known);
        let _ = span.set_parent(extract(req.headers()));
        let done = Done::new(
            Side::Server {
                metrics: self.metrics.clone(),
                method: known.unwrap_or(UNKNOWN_METHOD),
                started: Instant::now(),
            },
            span.clone(),
        );
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                match fut.await {
                    Ok(resp) => Ok(observe(resp, done)),
                    Err(e) => {
                        done.finish(End::NoStatus);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// The server span of a call to `known` (a known method path, or `None`
/// for a path no service defines), with the fields its end fills in.
fn server_span(known: Option<&'static str>) -> tracing::Span {
    let (service, method) = service_and_method(known);
    let name = known.map(span_name).unwrap_or_else(|| UNKNOWN_METHOD.to_string());
    tracing::info_span!(
        "rpc",
        otel.name = %name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// The server span of one item of a call that carries several, each
/// answered as if it had come alone as a call to `path`; finish it with
/// [`record_server_status`].
pub fn item_span(path: &str) -> tracing::Span {
    server_span(corridor_proto::known_method(path))
}

/// Records how the item of `span` (see [`item_span`]) was answered.
pub fn record_server_status(span: &tracing::Span, status: Result<(), &tonic::Status>) {
    match status {
        Ok(()) => record_status(span, 0, String::new(), true),
        Err(s) => record_status(span, s.code() as i32, s.message().to_string(), true),
    }
}

/// Put into a client request's extensions, names the span of that call:
/// [`ClientService`] sets its method and, at the end, its status.
#[derive(Clone)]
pub struct CallSpan(pub tracing::Span);

/// A client channel whose calls set their [`CallSpan`]'s method and status.
#[derive(Clone)]
pub struct ClientService<S> {
    inner: S,
}

impl<S> ClientService<S> {
    pub fn new(inner: S) -> Self {
        ClientService { inner }
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for ClientService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + 'static,
    RB: 'static,
{
    type Response = http::Response<Observed<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = req.extensions().get::<CallSpan>().map(|s| s.0.clone());
        if let Some(span) = &span {
            let (service, method) = service_and_method(corridor_proto::known_method(req.uri().path()));
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        // Made before the first poll, so that a call dropped even then is
        // recorded as abandoned.
        let done = span.map(|span| Done::new(Side::Client, span));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(done) = done else { return fut.await.map(|r| r.map(|b| Observed::new(b, None))) };
            match fut.await {
                Ok(resp) => Ok(observe(resp, done)),
                Err(e) => {
                    done.finish(End::Transport(e.to_string()));
                    Err(e)
                }
            }
        })
    }
}

/// The span of one call to another corridor server, named `name`: a
/// client span with the fields [`ClientService`] fills in. Send the
/// request with [`client_request`] so that both find it.
pub fn client_span(name: &str, city: &'static str) -> tracing::Span {
    tracing::info_span!(
        "rpc.client",
        otel.name = %name,
        otel.kind = "client",
        city,
        rpc.system = "grpc",
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks `req` as the call of `span`: its trace context goes in the
/// metadata, for the server's span to join, and the span in the
/// extensions, for [`ClientService`] to record its status on.
pub fn client_request<T>(req: &mut tonic::Request<T>, span: &tracing::Span) {
    crate::trace::inject(span, req.metadata_mut());
    req.extensions_mut().insert(CallSpan(span.clone()));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::{Value, trace::Status as OtelStatus, trace::TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tower::{Layer, Service};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A body of one trailers frame, as a gRPC answer ends.
    struct Trailers(Option<HeaderMap>);

    impl Body for Trailers {
        type Data = tonic::codegen::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<tonic::codegen::Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    /// A server (or channel) that answers by path: a success with its status
    /// in the trailers, or a trailers-only refusal.
    #[derive(Clone)]
    struct Answer;

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<Trailers>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let refusal = match req.uri().path() {
                "/corridor.v1.Node/Search" => None,
                "/corridor.v1.Node/Reserve" => Some(tonic::Status::failed_precondition("the slot is taken")),
                "/corridor.v1.Node/Info" => Some(tonic::Status::internal("it broke")),
                "/corridor.v1.Node/ImportInstruments" => Some(tonic::Status::out_of_range(
                    "Error, decoded message length too large: found 17825792 bytes, the limit is: 16777216 bytes",
                )),
                _ => Some(tonic::Status::unimplemented("")),
            };
            let mut resp = http::Response::new(Trailers(None));
            match refusal {
                Some(s) => s.add_header(resp.headers_mut()).unwrap(),
                None => {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    *resp.body_mut() = Trailers(Some(t));
                }
            }
            std::future::ready(Ok(resp))
        }
    }

    async fn call<S>(svc: &mut S, req: http::Request<()>) -> http::Response<Observed<Trailers>>
    where
        S: Service<http::Request<()>, Response = http::Response<Observed<Trailers>>>,
        S::Error: std::fmt::Debug,
    {
        let Ok(mut resp) = svc.call(req).await else { panic!("the service failed") };
        // Read the body to its end, as hyper does.
        while std::future::poll_fn(|cx| Pin::new(resp.body_mut()).poll_frame(cx)).await.is_some() {}
        resp
    }

    fn path(p: &str) -> http::Request<()> {
        http::Request::builder().uri(format!("http://node{p}")).body(()).unwrap()
    }

    #[tokio::test]
    async fn made_up_methods_share_one_label_value() {
        let metrics = Metrics::new();
        let mut svc = RpcLayer(metrics.clone()).layer(Answer);
        call(&mut svc, path("/corridor.v1.Node/Search")).await;
        let before = metrics.render().len();
        for i in 0..20_000 {
            call(&mut svc, path(&format!("/x{i}.Made/Up{i}"))).await;
            call(&mut svc, path(&format!("/corridor.v1.Node/NoSuch{i}"))).await;
        }
        let text = metrics.render();
        let unknown: Vec<&str> = text.lines().filter(|l| l.starts_with("corridor_rpc_requests_total{")).collect();
        assert_eq!(
            unknown,
            [
                "corridor_rpc_requests_total{method=\"/corridor.v1.Node/Search\",code=\"OK\"} 1",
                "corridor_rpc_requests_total{method=\"unknown\",code=\"UNIMPLEMENTED\"} 40000",
            ]
        );
        assert!(!text.contains("Made") && !text.contains("NoSuch"), "{text}");
        // One more method's series (the histogram), not one per path.
        assert!(text.len() < before + 2_000, "{} bytes after, {before} before", text.len());
    }

    #[tokio::test]
    async fn codes_are_counted_by_name() {
        let metrics = Metrics::new();
        let mut svc = RpcLayer(metrics.clone()).layer(Answer);
        call(&mut svc, path("/corridor.v1.Node/Search")).await;
        call(&mut svc, path("/corridor.v1.Node/Reserve")).await;
        let text = metrics.render();
        assert!(
            text.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Node/Search\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "corridor_rpc_requests_total{method=\"/corridor.v1.Node/Reserve\",code=\"FAILED_PRECONDITION\"} 1"
            ),
            "{text}"
        );
        assert_eq!(code_name(9), "FAILED_PRECONDITION");
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[tokio::test]
    async fn an_oversized_message_is_answered_resource_exhausted() {
        let metrics = Metrics::new();
        let mut svc = RpcLayer(metrics.clone()).layer(Answer);
        let resp = call(&mut svc, path("/corridor.v1.Node/ImportInstruments")).await;
        let status = tonic::Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "a message of 17825792 bytes is over the limit of 16777216 bytes (16 MiB); split it, or ask for less in one call"
        );
        assert!(metrics.render().contains("code=\"RESOURCE_EXHAUSTED\""));
    }

    /// A server (or node) that never answers.
    #[derive(Clone)]
    struct Silent;

    impl Service<http::Request<()>> for Silent {
        type Response = http::Response<Trailers>;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_is_counted_and_its_client_span_is_an_error() {
        let (spans, _guard) = collecting();
        let metrics = Metrics::new();
        let mut server = RpcLayer(metrics.clone()).layer(Silent);
        // The caller gives up: its call's future is dropped unanswered.
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(1), server.call(path("/corridor.v1.Node/Info")));
        assert!(gave_up.await.is_err());
        let text = metrics.render();
        assert!(
            text.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Node/Info\",code=\"CANCELLED\"} 1"),
            "{text}"
        );

        let mut client = ClientService::new(Silent);
        let mut req = path("/corridor.v1.Node/TryDebit");
        req.extensions_mut().insert(CallSpan(client_span("node.call.wuhu", "wuhu")));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(1), client.call(req)).await.is_err());
        let call = spans.span("node.call.wuhu");
        assert_eq!(call.status, OtelStatus::error("abandoned before the answer came"));
        assert_eq!(attr(&call, "rpc.method"), Some("TryDebit".into()));
    }

    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            self.0.lock().unwrap().extend(batch);
            std::future::ready(Ok(()))
        }
    }

    impl Collected {
        fn span(&self, name: &str) -> SpanData {
            let spans = self.0.lock().unwrap();
            spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| panic!("no span {name}"))
        }
    }

    fn attr(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
    }

    fn collecting() -> (Collected, tracing::subscriber::DefaultGuard) {
        let spans = Collected::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        (spans, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test]
    async fn server_spans_carry_the_status_by_the_rpc_conventions() {
        let (spans, _guard) = collecting();
        let mut svc = RpcLayer(Metrics::new()).layer(Answer);
        for p in ["/corridor.v1.Node/Search", "/corridor.v1.Node/Reserve", "/corridor.v1.Node/Info", "/made.Up/Path"] {
            call(&mut svc, path(p)).await;
        }
        let ok = spans.span("node.Search");
        assert_eq!(ok.status, OtelStatus::Unset);
        assert_eq!(attr(&ok, "rpc.grpc.status_code"), Some(Value::I64(0)));
        assert_eq!(attr(&ok, "rpc.system"), Some("grpc".into()));
        assert_eq!(attr(&ok, "rpc.service"), Some("corridor.v1.Node".into()));
        assert_eq!(attr(&ok, "rpc.method"), Some("Search".into()));
        assert_eq!(ok.span_kind, opentelemetry::trace::SpanKind::Server);
        // A refusal is the caller's business, not the server's failure.
        let refused = spans.span("node.Reserve");
        assert_eq!(refused.status, OtelStatus::Unset);
        assert_eq!(attr(&refused, "rpc.grpc.status_code"), Some(Value::I64(9)));
        let broken = spans.span("node.Info");
        assert_eq!(broken.status, OtelStatus::error("it broke"));
        assert_eq!(attr(&broken, "rpc.grpc.status_code"), Some(Value::I64(13)));
        let unknown = spans.span("unknown");
        assert_eq!(attr(&unknown, "rpc.grpc.status_code"), Some(Value::I64(12)));
        assert!(matches!(unknown.status, OtelStatus::Error { .. }));
        assert_eq!(attr(&unknown, "rpc.method"), Some("unknown".into()));
    }

    #[tokio::test]
    async fn client_spans_are_errors_for_every_code_but_ok() {
        let (spans, _guard) = collecting();
        let mut svc = ClientService::new(Answer);
        for (name, p) in [("call.ok", "/corridor.v1.Node/Search"), ("call.refused", "/corridor.v1.Node/Reserve")] {
            let span = client_span(name, "hefei");
            let mut req = path(p);
            req.extensions_mut().insert(CallSpan(span));
            call(&mut svc, req).await;
        }
        let ok = spans.span("call.ok");
        assert_eq!(ok.status, OtelStatus::Unset);
        assert_eq!(ok.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(attr(&ok, "rpc.method"), Some("Search".into()));
        assert_eq!(attr(&ok, "rpc.grpc.status_code"), Some(Value::I64(0)));
        let refused = spans.span("call.refused");
        assert_eq!(refused.status, OtelStatus::error("the slot is taken"));
        assert_eq!(attr(&refused, "rpc.grpc.status_code"), Some(Value::I64(9)));
        assert_eq!(attr(&refused, "rpc.service"), Some("corridor.v1.Node".into()));
    }
}
