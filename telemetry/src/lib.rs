//! Observability for Corridor processes: Prometheus metrics (a registry of
//! counters, latency histograms and gauges, a tower layer that counts and
//! traces every gRPC call, a small `/metrics` endpoint) and OpenTelemetry
//! tracing with W3C context propagation.
//!
//! This file holds the servers (`/metrics`, the health port, the drain) and
//! re-exports; the registry is in `metrics`, so that `rpc`, which records
//! into it, imports nothing from here.

mod metrics;
mod process;
mod rpc;
mod trace;

pub use metrics::{Labels, Metrics};

pub use rpc::{
    CallSpan, ClientService, Observed, RpcLayer, RpcService, UNKNOWN_METHOD, client_request, client_span, code_name,
    item_span, record_server_status,
};
pub use trace::{TracingGuard, context_map, extract, init_tracing, inject, set_parent_from_map, span_name};

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::codegen::http;

/// Failure injection for crash tests: the process stops dead at `point`, as
/// a crash would stop it there, when `CORRIDOR_FAILPOINTS` (a comma-separated
/// list) names it. Unset, as in production, it costs one lookup in an empty
/// list.
pub fn failpoint(point: &str) {
    static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("CORRIDOR_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    if points.iter().any(|p| p == point) {
        eprintln!("failpoint {point}: stopping the process");
        std::process::abort();
    }
}

/// How long a stopping server lets in-flight calls finish before it gives
/// up on them: well inside Kubernetes' default 30 s grace period, so that
/// the flush after it always runs.
pub const DRAIN_BOUND: Duration = Duration::from_secs(20);

/// How a server's drain went, for the line it logs when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// From the shutdown signal to the last call finished or cut off;
    /// `None` when serving ended without one.
    pub took: Option<Duration>,
    /// In-flight calls were still running at the bound and were stopped.
    pub cut_off: bool,
}

impl Drained {
    /// Milliseconds the drain took (0 without a shutdown signal), for logs.
    pub fn millis(&self) -> u64 {
        self.took.map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
    }
}

/// Runs `serve`, which stops taking work when the future it is given
/// resolves (on `shutdown`) and then drains in-flight calls; a drain that
/// takes longer than `bound` is cut short, with a warning, so that the caller
/// can still flush and exit.
pub async fn serve_draining<E>(
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Duration,
    serve: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Pin<Box<dyn Future<Output = Result<(), E>> + Send>>,
) -> Result<Drained, E> {
    // When the signal came: set by the signal itself, so that a drain that
    // ends at once still has it.
    let stopping: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let at = stopping.clone();
    let signal: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        shutdown.await;
        *at.lock().expect("poisoned") = Some(tokio::time::Instant::now());
        let _ = stopping_tx.send(());
    });
    let mut served = serve(signal);
    let cut_off = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(bound).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let cut = tokio::select! {
        r = &mut served => {
            r?;
            false
        }
        _ = cut_off => {
            tracing::warn!(seconds = bound.as_secs(), "in-flight calls still running after the drain bound; stopping them");
            true
        }
    };
    let took = stopping.lock().expect("poisoned").map(|at| at.elapsed());
    Ok(Drained { took, cut_off: cut })
}

/// Serves `GET /metrics` (HTTP/1.1, one request per connection) until
/// `shutdown` resolves. Loopback or a pod network only: it has no TLS, and
/// the metrics carry no data of any city.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    loop {
        let (mut stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // Read the request head, bounded in size and time.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if head != Ok(true) {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
                // Off the async workers: gauges may read the store.
                match tokio::task::spawn_blocking(move || metrics.render()).await {
                    Ok(text) => ("200 OK", text),
                    Err(_) => ("500 Internal Server Error", "reading the metrics failed\n".to_string()),
                }
            } else {
                ("404 Not Found", "only /metrics is served here\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A server's health port: the standard grpc.health.v1 service alone, in
/// plaintext, which orchestrators probe and which says nothing but SERVING
/// or NOT_SERVING. Served until this is dropped or stopped.
pub struct HealthPort {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl HealthPort {
    /// Stops serving, and returns once the port is closed.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }
}

/// Serves `health` on `listener`, when the binary bound one, until the
/// returned [`HealthPort`] is dropped: after the server's drain, or on any
/// early return. Like every server here it takes a listener its caller
/// bound, so that the address and the error for it belong to the binary, and
/// it ends by a shutdown signal rather than an abort, so that a call it has
/// taken is answered.
pub fn spawn_health<S>(listener: Option<TcpListener>, health: S) -> HealthPort
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let Some(listener) = listener else { return HealthPort { stop: None, served: None } };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "health port failed");
        }
    });
    HealthPort { stop: Some(stop), served: Some(served) }
}

/// Exports the expiry of the process's current certificate, following
/// renewals.
pub fn cert_expiry_gauge(metrics: &Metrics, creds: Arc<corridor_certs::CredentialSource>) {
    let identity = creds.credentials().identity().to_string();
    metrics.gauge(
        "corridor_cert_not_after_seconds",
        "expiry of this process's certificate, unix seconds",
        vec![("identity", identity)],
        move || creds.credentials().not_after() as f64,
    );
}

#[cfg(test)]
mod tests {

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_hangs_is_cut_off_at_the_bound() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let started = tokio::time::Instant::now();
        let stopped = serve_draining::<()>(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(20),
            // A server that stops taking work, but whose last call never finishes.
            |stop| {
                Box::pin(async move {
                    stop.await;
                    std::future::pending().await
                })
            },
        );
        tx.send(()).unwrap();
        assert_eq!(stopped.await, Ok(Drained { took: Some(Duration::from_secs(20)), cut_off: true }));
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_finishes_returns_at_once_with_its_result() {
        let started = tokio::time::Instant::now();
        let r = serve_draining::<&str>(async {}, Duration::from_secs(20), |stop| {
            Box::pin(async move {
                stop.await;
                Err("served and failed")
            })
        })
        .await;
        assert_eq!(r, Err("served and failed"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let r = serve_draining::<()>(async {}, Duration::from_secs(20), |stop| {
            Box::pin(async move {
                stop.await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            })
        })
        .await;
        assert_eq!(r, Ok(Drained { took: Some(Duration::from_secs(3)), cut_off: false }));
    }

    use super::*;

    #[tokio::test]
    async fn health_is_served_on_the_given_listener_until_stopped() {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("corridor.v1.Node", tonic_health::ServingStatus::Serving).await;
        let port = spawn_health(Some(listener), service);
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = HealthClient::new(channel);
        let answer = client.check(HealthCheckRequest { service: "corridor.v1.Node".into() }).await.unwrap();
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
        reporter.set_service_status("corridor.v1.Node", tonic_health::ServingStatus::NotServing).await;
        let answer = client.check(HealthCheckRequest { service: "corridor.v1.Node".into() }).await.unwrap();
        assert_eq!(answer.into_inner().status(), ServingStatus::NotServing);
        drop(client);
        // Stopping ends it: it returns, and its port stops taking
        // connections.
        port.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the port is closed after shutdown");
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        m.inc("corridor_test_total", "a test counter", vec![]);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, m, async move {
            let _ = rx.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("corridor_test_total 1"));
        let _ = tx.send(());
        server.await.unwrap();
    }
}
