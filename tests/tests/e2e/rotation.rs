//! Certificates in production: renewal and revocation without restarts.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use corridor_certs::{Identity, IssueOptions};
use corridor_node::ops::demo::{Scale, city_inventory};
use corridor_tests::{Mesh, pb};
use tonic::Request;

async fn import_one(mesh: &Mesh, city: &str, who: &str, local_id: &str) -> Result<pb::ImportSummary, tonic::Status> {
    let mut r = city_inventory(Scale::G60, city).remove(0);
    r.local_id = local_id.into();
    let stored = corridor_node::catalog::model::StoredInstrument { record: r, updated_at: String::new() };
    let row = pb::ImportRow {
        line: 1,
        instrument: Some(corridor_node::catalog::summary::to_proto(&stored, Mesh::city(city))),
    };
    mesh.node(city, who)
        .import_instruments(Request::new(tokio_stream::iter([pb::ImportChunk { rows: vec![row] }])))
        .await
        .map(|r| r.into_inner())
}

fn reissue(mesh: &Mesh, name: &str) {
    let id = Identity::from_name(name).unwrap();
    mesh.issue(name, &id, &IssueOptions::for_identity(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_is_refused_and_a_renewed_one_works_without_restarts() {
    let mesh = Mesh::start(None).await;
    import_one(&mesh, "hefei", "admin-hefei", "a1").await.expect("before revocation");

    corridor_certs::revoke(&mesh.certs, "admin-hefei").unwrap();
    assert!(mesh.reload_all() >= 10, "every server picks up the new CRL");
    let err = import_one(&mesh, "hefei", "admin-hefei", "a2").await.expect_err("revoked");
    assert!(
        !matches!(err.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
        "refused at the handshake, not by a handler: {err:?}"
    );
    // And the client can tell why, from the cause under the transport error.
    assert_eq!(corridor_certs::handshake_failure(&err), Some(corridor_certs::HandshakeFailure::Revoked), "{err:?}");
    // Everyone else keeps working.
    import_one(&mesh, "wuhu", "admin-wuhu", "w1").await.expect("another admin");
    mesh.gateway("org-demo").search(pb::SearchRequest::default()).await.expect("an org");

    // A renewed certificate for the same identity is accepted at once.
    reissue(&mesh, "admin-hefei");
    let ok = import_one(&mesh, "hefei", "admin-hefei", "a3").await.expect("renewed");
    assert_eq!(ok.inserted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_server_certificate_under_load_fails_no_call() {
    let mesh = Arc::new(Mesh::start(Some(Scale::G60)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (mesh, stop, ok, failed) = (mesh.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut shared = mesh.gateway("org-demo");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Half the calls on a long-lived connection, half on a new
                    // one, so that handshakes happen with rotated certificates.
                    let result = if (w + i).is_multiple_of(2) {
                        shared.search(pb::SearchRequest { query: "显微镜".into(), ..Default::default() }).await
                    } else {
                        mesh.gateway("org-demo")
                            .search(pb::SearchRequest { query: "NMR".into(), ..Default::default() })
                            .await
                    };
                    match result {
                        Ok(r) if !r.get_ref().partial => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed call: {:?}", other.map(|r| r.into_inner().nodes));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 1;
                }
            })
        })
        .collect();
    let names: Vec<String> = corridor_proto::cities::CITIES
        .iter()
        .map(|c| format!("node-{}", c.slug))
        .chain(["gateway".to_string()])
        .collect();
    for round in 0..3 {
        let before = ok.load(Ordering::Relaxed);
        for n in &names {
            reissue(&mesh, n);
        }
        assert_eq!(mesh.reload_all(), names.len(), "round {round}: every server reloads");
        // Let calls run against the new certificates before the next round.
        while ok.load(Ordering::Relaxed) < before + 40 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) >= 120);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call may fail while certificates rotate");
}

/// On tokio's paused clock: the gateway asks every connection to go away at
/// its maximum age, and closes it after the grace, so that an identity
/// revoked while connected loses its connection within that bound.
#[tokio::test(start_paused = true)]
async fn a_revoked_identity_loses_its_open_connection_at_the_maximum_age() {
    use std::time::Duration;

    use corridor_certs::{CredentialSource, HandshakeFailure, handshake_failure};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (age, grace) = (Duration::from_secs(600), Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    corridor_certs::init_dir(certs, &["hefei"], false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let source = CredentialSource::load(certs, "gateway").unwrap();
    // No node is ever called: the gateway's own health service is enough.
    let mut config = corridor_gateway::GatewayConfig::new(vec![corridor_gateway::NodeEndpoint {
        city: "hefei".into(),
        endpoint: "https://127.0.0.1:9".into(),
    }]);
    config.accept.max_connection_age = Some(age);
    config.accept.max_connection_age_grace = grace;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(corridor_gateway::run(
        config,
        source.clone(),
        listener,
        corridor_telemetry::Metrics::new(),
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    let creds = corridor_certs::Credentials::load(certs, "org-demo").unwrap();
    let channel =
        corridor_certs::client_channel(&url, &creds, Some(Identity::Gateway), Duration::from_secs(5)).unwrap();
    let mut health = HealthClient::new(channel);
    let check = || HealthCheckRequest { service: String::new() };
    health.check(check()).await.expect("before the revocation");
    // A call that outlives the GOAWAY: a watch streams until the connection ends.
    let mut watch = health.watch(check()).await.unwrap().into_inner();
    watch.message().await.expect("the current status").expect("a status");
    let opened = tokio::time::Instant::now();

    corridor_certs::revoke(certs, "org-demo").unwrap();
    assert!(source.reload_if_changed().unwrap());
    // Revocation is checked at the handshake: the open connection goes on.
    health.check(check()).await.expect("the open connection, before its maximum age");

    tokio::time::sleep(age + Duration::from_secs(1)).await;
    // A call that races the GOAWAY fails on the old connection ("operation
    // was canceled"); the next one handshakes anew, and is refused.
    let mut raced = 0;
    let why = loop {
        let err = health.check(check()).await.expect_err("no call succeeds past the maximum age");
        match handshake_failure(&err) {
            Some(why) => break why,
            None if raced < 2 => raced += 1,
            None => panic!("not refused at a new handshake: {err:?}"),
        }
    };
    assert_eq!(why, HandshakeFailure::Revoked);

    // The watch kept the old connection open past the GOAWAY, until the grace ran out.
    let ended = tokio::time::timeout(Duration::from_secs(3600), watch.message()).await;
    assert!(matches!(ended, Ok(Err(_) | Ok(None))), "{ended:?}");
    assert!(opened.elapsed() >= age + grace, "{:?}", opened.elapsed());
    assert!(opened.elapsed() < age + grace + Duration::from_secs(30), "{:?}", opened.elapsed());

    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
}

/// The other side of the maximum age: a client in good standing that was
/// idle when its connection went away just reconnects.
#[tokio::test(start_paused = true)]
async fn an_idle_client_in_good_standing_reconnects_after_the_maximum_age_unnoticed() {
    use std::time::Duration;

    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let age = Duration::from_secs(600);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    corridor_certs::init_dir(certs, &["hefei"], false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let source = corridor_certs::CredentialSource::load(certs, "gateway").unwrap();
    let mut config = corridor_gateway::GatewayConfig::new(vec![corridor_gateway::NodeEndpoint {
        city: "hefei".into(),
        endpoint: "https://127.0.0.1:9".into(),
    }]);
    config.accept.max_connection_age = Some(age);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(corridor_gateway::run(
        config,
        source,
        listener,
        corridor_telemetry::Metrics::new(),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let creds = corridor_certs::Credentials::load(certs, "org-demo").unwrap();
    let channel =
        corridor_certs::client_channel(&url, &creds, Some(Identity::Gateway), Duration::from_secs(5)).unwrap();
    let mut health = HealthClient::new(channel);
    let check = || HealthCheckRequest { service: String::new() };
    for round in 0..3 {
        health.check(check()).await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        tokio::time::sleep(age + Duration::from_secs(1)).await;
    }
    health.check(check()).await.expect("after three connection ages");
    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
}
