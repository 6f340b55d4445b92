//! Who may call what: identities from certificates, and connections refused
//! at the TLS handshake, before any handler can run.

use std::time::Duration;

use corridor_certs::{Ca, Credentials, Identity, IssueOptions, client_channel};
use corridor_node::{
    catalog::model::StoredInstrument,
    catalog::{model::InstrumentRecord, summary::to_proto},
};
use corridor_tests::{Mesh, pb};
use time::OffsetDateTime;
use tonic::{
    Code, Request, Status,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity},
};

fn one_row(city: &str, record: InstrumentRecord) -> Vec<pb::ImportChunk> {
    let stored = StoredInstrument { record, updated_at: String::new() };
    vec![pb::ImportChunk {
        rows: vec![pb::ImportRow { line: 1, instrument: Some(to_proto(&stored, Mesh::city(city))) }],
    }]
}

fn record(local_id: &str) -> InstrumentRecord {
    let (_, mut r) = corridor_node::ops::demo::corridor_inventory(corridor_node::ops::demo::Scale::G60).swap_remove(0);
    r.local_id = local_id.into();
    r.city = String::new();
    r
}

async fn import_as(mesh: &Mesh, city: &str, who: &str, local_id: &str) -> Result<pb::ImportSummary, Status> {
    mesh.node(city, who)
        .import_instruments(Request::new(tokio_stream::iter(one_row(city, record(local_id)))))
        .await
        .map(|r| r.into_inner())
}

async fn count(mesh: &Mesh, city: &str) -> u64 {
    mesh.node(city, "gateway").info(pb::NodeInfoRequest {}).await.unwrap().into_inner().instruments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_citys_admin_writes_its_inventory() {
    let mesh = Mesh::start(None).await;

    let ok = import_as(&mesh, "hefei", "admin-hefei", "own-1").await.unwrap();
    assert_eq!(ok.inserted, 1);

    for who in ["admin-wuhu", "org-demo", "gateway", "reconciler", "node-hefei"] {
        let err = import_as(&mesh, "hefei", who, "intruder-1").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
        assert!(err.message().contains("may not write hefei"), "{who}: {}", err.message());
    }
    let upsert = mesh
        .node("hefei", "admin-wuhu")
        .upsert_instrument(pb::UpsertInstrumentRequest {
            instrument: Some(one_row("hefei", record("intruder-2")).remove(0).rows.remove(0).instrument.unwrap()),
        })
        .await
        .unwrap_err();
    assert_eq!(upsert.code(), Code::PermissionDenied);
    assert_eq!(count(&mesh, "hefei").await, 1, "nothing from refused writers is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_read_only_through_the_gateway() {
    let mesh = Mesh::start(None).await;
    let err = mesh.node("hefei", "org-demo").search(pb::SearchRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("through the gateway"), "{}", err.message());
    // Another city's admin may not read hefei directly either; its own may.
    let err = mesh.node("hefei", "admin-wuhu").info(pb::NodeInfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    mesh.node("hefei", "admin-hefei").info(pb::NodeInfoRequest {}).await.unwrap();
    mesh.node("hefei", "reconciler").info(pb::NodeInfoRequest {}).await.unwrap();
    mesh.gateway("org-demo").search(pb::SearchRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_only_talks_to_the_right_citys_node() {
    // A client that expects hefei's node but reaches wuhu's must refuse it.
    let mesh = Mesh::start(None).await;
    let ch = client_channel(
        &mesh.node_url("wuhu"),
        &mesh.creds("gateway"),
        Some(Identity::Node("hefei".into())),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = pb::node_client::NodeClient::new(ch).info(pb::NodeInfoRequest {}).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(format!("{err:?}").contains("expected spiffe://corridor/city/hefei/node"), "{err:?}");
}

/// A call made with tonic's own TLS stack, so that tests can present
/// certificates the corridor's client code would never build.
async fn raw_call(url: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> Result<pb::NodeInfo, Status> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(url.to_string()).unwrap().tls_config(tls).unwrap();
    let channel = endpoint.connect().await.map_err(|e| Status::unavailable(format!("{e:?}")))?;
    pb::node_client::NodeClient::new(channel).info(pb::NodeInfoRequest {}).await.map(|r| r.into_inner())
}

/// A refusal by the TLS layer is a transport failure. A handler (or the
/// authorization in front of it) would answer with a gRPC status instead.
fn assert_refused_at_handshake(result: Result<pb::NodeInfo, Status>, what: &str) {
    let err = result.expect_err(what);
    assert!(
        !matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated | Code::Ok),
        "{what}: refused by a handler, not the handshake: {err:?}"
    );
    // Unavailable or Unknown when the handshake fails; Cancelled when, under
    // TLS 1.3, the refusal closes a connection the client already used;
    // Internal when a plaintext client reads the TLS alert as a broken frame.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal),
        "{what}: {err:?}"
    );
    assert!(format!("{err:?}").contains("ransport") || err.code() == Code::Unavailable, "{what}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_at_the_handshake() {
    let mesh = Mesh::start(None).await;
    let url = format!("https://localhost:{}", mesh.node_addrs["hefei"].port());
    let ca_pem = std::fs::read_to_string(mesh.certs.join("ca.pem")).unwrap();
    let gw_cert = std::fs::read_to_string(mesh.certs.join("gateway.pem")).unwrap();
    let gw_key = std::fs::read_to_string(mesh.certs.join("gateway.key")).unwrap();

    // Control: the same raw client with a good certificate gets through.
    raw_call(&url, &ca_pem, Some((&gw_cert, &gw_key))).await.expect("a good certificate is accepted");

    assert_refused_at_handshake(raw_call(&url, &ca_pem, None).await, "no client certificate");

    let other = Ca::generate("Some Other CA").unwrap();
    let foreign = other.issue(&Identity::Gateway, &IssueOptions::for_identity(&Identity::Gateway)).unwrap();
    assert_refused_at_handshake(
        raw_call(&url, &ca_pem, Some((&foreign.cert_pem, &foreign.key_pem))).await,
        "certificate from another CA",
    );

    let mut expired = IssueOptions::for_identity(&Identity::Gateway);
    expired.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = mesh.ca().issue(&Identity::Gateway, &expired).unwrap();
    assert_refused_at_handshake(
        raw_call(&url, &ca_pem, Some((&expired.cert_pem, &expired.key_pem))).await,
        "expired certificate",
    );

    let mut early = IssueOptions::for_identity(&Identity::Gateway);
    early.not_before = OffsetDateTime::now_utc() + time::Duration::days(1);
    early.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    let early = mesh.ca().issue(&Identity::Gateway, &early).unwrap();
    assert_refused_at_handshake(
        raw_call(&url, &ca_pem, Some((&early.cert_pem, &early.key_pem))).await,
        "certificate not yet valid",
    );

    let mut ca_leaf = IssueOptions::for_identity(&Identity::Gateway);
    ca_leaf.is_ca = true;
    let ca_leaf = mesh.ca().issue(&Identity::Gateway, &ca_leaf).unwrap();
    assert_refused_at_handshake(
        raw_call(&url, &ca_pem, Some((&ca_leaf.cert_pem, &ca_leaf.key_pem))).await,
        "leaf with CA=true",
    );

    let mut two = IssueOptions::for_identity(&Identity::Gateway);
    two.extra_uris.push("spiffe://corridor/city/hefei/admin".into());
    let two = mesh.ca().issue(&Identity::Gateway, &two).unwrap();
    assert_refused_at_handshake(raw_call(&url, &ca_pem, Some((&two.cert_pem, &two.key_pem))).await, "two URI SANs");

    // Plaintext HTTP/2 to a TLS port.
    let plain = Endpoint::from_shared(format!("http://{}", mesh.node_addrs["hefei"])).unwrap();
    let result = match plain.connect().await {
        Ok(ch) => pb::node_client::NodeClient::new(ch).info(pb::NodeInfoRequest {}).await.map(|r| r.into_inner()),
        Err(e) => Err(Status::unavailable(format!("{e:?}"))),
    };
    assert_refused_at_handshake(result, "plaintext");

    // The corridor's own client code refuses to load a foreign leaf as an identity.
    let bad = Credentials::from_pem(ca_pem.as_bytes(), two.cert_pem.as_bytes(), two.key_pem.as_bytes());
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_before_any_handler() {
    let mesh = Mesh::start(None).await;
    // 17 MiB of query text: over the 16 MiB limit every service declares.
    let huge = pb::SearchRequest { query: "x".repeat(17 * 1024 * 1024), ..Default::default() };
    let err = mesh.gateway("org-demo").max_encoding_message_size(64 << 20).search(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("over the limit"), "{}", err.message());
    // The service is unharmed.
    mesh.gateway("org-demo").search(pb::SearchRequest::default()).await.unwrap();
}
