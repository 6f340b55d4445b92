//! Distributed tracing: an OpenTelemetry layer under `tracing`, on only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in
//! gRPC metadata from the gateway to the nodes.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and stops the exporter when dropped.
pub struct TracingGuard(Option<SdkTracerProvider>);

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace exporter did not shut down cleanly: {e}");
        }
    }
}

/// Installs the process's subscriber: log lines to stderr (`RUST_LOG`, else
/// `default_filter`), plus OpenTelemetry export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, under `OTEL_SERVICE_NAME` or
/// `service`. Must run inside a tokio runtime. With no endpoint, spans are
/// still opened but nothing formats or exports them; log lines carry their
/// events' own fields.
pub fn init_tracing(default_filter: &str, service: &str) -> TracingGuard {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // The log layer takes events only. Given spans, it would format every
    // request span's fields into a string at creation (several percent of a
    // node's CPU at a few thousand calls a second) just to prefix log lines
    // that already carry their own fields; request context is what traces are for.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.is_event()));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if endpoint.trim().is_empty() {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return TracingGuard(None);
    }
    let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or(service.to_string());
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(e) => e,
        Err(e) => {
            tracing_subscriber::registry().with(filter).with(fmt).init();
            tracing::error!(error = %e, %endpoint, "cannot export traces; continuing without them");
            return TracingGuard(None);
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build())
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("corridor"));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    TracingGuard(Some(provider))
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes `span`'s trace context into outgoing gRPC metadata.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The caller's trace context, from incoming headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// `span`'s trace context as a map, for calls that carry several requests,
/// each with its own trace, in one message.
pub fn context_map(span: &tracing::Span) -> std::collections::HashMap<String, String> {
    let cx = span.context();
    let mut map = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map
}

/// Makes `span` a child of the trace context in `map`, if it holds one.
pub fn set_parent_from_map(span: &tracing::Span, map: &std::collections::HashMap<String, String>) {
    if !map.is_empty() {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(map));
        let _ = span.set_parent(cx);
    }
}

/// "/corridor.v1.Node/Search" → "node.Search".
pub fn span_name(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let short = service.rsplit('.').next().unwrap_or(service).to_lowercase();
    format!("{short}.{method}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_names_follow_service_dot_rpc() {
        assert_eq!(super::span_name("/corridor.v1.Node/Search"), "node.Search");
        assert_eq!(super::span_name("/grpc.health.v1.Health/Check"), "health.Check");
    }
}
