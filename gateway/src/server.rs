//! Running the gateway on an already-bound listener.

use std::{future::Future, sync::Arc};

use corridor_certs::{CertError, CredentialSource, tls_incoming};
use corridor_proto::gateway_server::GatewayServer;
use corridor_telemetry::{Metrics, RpcLayer};
use tokio::net::TcpListener;

use crate::{call::MAX_MESSAGE_BYTES, config::GatewayConfig, fanout::Cities, service::GatewayService};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("tls: {0}")]
    Tls(#[from] CertError),
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves the gateway until `shutdown` resolves, then drains in-flight calls.
/// With a `health` listener, the gRPC health service alone is served there in
/// plaintext, for probes, and stops with the rest.
pub async fn run(
    config: GatewayConfig,
    creds: Arc<CredentialSource>,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate().map_err(|e| CertError::BadIdentity(e.to_string()))?;
    let cities = Cities::connect(&config, &creds)?;
    // Certificates, keys and the CRL are reloaded when they change on disk,
    // for the gateway's server side and its connections to the nodes alike.
    let _watch = creds.watch(std::time::Duration::from_secs(2));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_serving::<GatewayServer<GatewayService>>().await;
    // The health port stops when `probes` is dropped: after the drain, or on
    // any early return.
    let probes = corridor_telemetry::spawn_health(health, health_service.clone());
    let (reflection_v1, reflection_v1alpha) = corridor_proto::reflection_services("corridor.v1.Gateway");
    corridor_telemetry::cert_expiry_gauge(&metrics, creds.clone());
    let service = GatewayServer::new(GatewayService::new(cities, &config, metrics.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(cities = config.nodes.len(), "gateway serving");
    let router = config
        .accept
        .server()
        // Outermost, so that every call is counted and traced, refusals
        // included, and every oversized message is answered the same way.
        .layer(RpcLayer(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let incoming = tls_incoming(listener, creds, config.accept);
    let drained = corridor_telemetry::serve_draining(shutdown, corridor_telemetry::DRAIN_BOUND, |stop| {
        Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
    })
    .await?;
    drop(probes);
    tracing::info!(drain_ms = drained.millis(), cut_off = drained.cut_off, "gateway stopped");
    Ok(())
}
