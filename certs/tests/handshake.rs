//! Handshakes between a corridor client (`TlsConnector`) and the accept path
//! (`tls_incoming`), through the crate's public API only: they cross `issue`,
//! `tls`, `accept` and `diagnose`, so they live outside the crate's modules.

use std::{str::FromStr, time::Duration};

use corridor_certs::{
    Ca, CredentialSource, Credentials, HandshakeFailure, Identity, IssueOptions, TlsAcceptOptions, TlsConnector,
    handshake_failure, init_dir, request, revoke, tls_incoming,
};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_stream::StreamExt;
use tonic::transport::Uri;
use tower::Service;

#[tokio::test]
async fn a_refused_client_learns_why_when_it_connects_not_in_its_first_call() {
    let dir = tempfile::tempdir().unwrap();
    init_dir(dir.path(), &["hefei"], false).unwrap();
    revoke(dir.path(), "org-demo").unwrap();
    let server = CredentialSource::load(dir.path(), "node-hefei").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut incoming = tls_incoming(listener, server, TlsAcceptOptions::default());
    // A network with some latency, so that the verdict arrives well after
    // the client has sent its last flight.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = Uri::from_str(&format!("http://127.0.0.1:{}", proxy.local_addr().unwrap().port())).unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = proxy.accept().await {
            let server = TcpStream::connect(server_addr).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    // Simulated latency, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let expect = Some(Identity::Node("hefei".into()));

    // Under TLS 1.3 the client's half of the handshake ends before the
    // server has judged its certificate: the connect awaits the verdict.
    let revoked = CredentialSource::load(dir.path(), "org-demo").unwrap();
    let err = TlsConnector::new(revoked, expect.clone()).call(uri.clone()).await.expect_err("refused at connect");
    assert_eq!(handshake_failure(&err), Some(HandshakeFailure::Revoked), "{err:?}");

    // An accepted client gets the server's first bytes, as hyper will read them.
    let good = CredentialSource::load(dir.path(), "admin-hefei").unwrap();
    let serve = async {
        let mut conn = incoming.next().await.unwrap().unwrap();
        conn.write_all(b"settings").await.unwrap();
        conn.flush().await.unwrap();
        conn
    };
    let (client, _conn) = tokio::join!(TlsConnector::new(good, expect).call(uri), serve);
    let mut first = [0u8; 8];
    client.unwrap().into_inner().read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"settings");
}

#[tokio::test]
async fn a_requested_identity_is_signed_and_a_server_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    init_dir(dir.path(), &["hefei"], false).unwrap();
    let ca = Ca::load(dir.path()).unwrap();
    let id = Identity::Org("acme".into());
    let req = request(&id, &IssueOptions::for_identity(&id)).unwrap();
    assert!(req.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
    let now = OffsetDateTime::now_utc();
    let signed =
        ca.sign_request(&req.csr_pem, now - time::Duration::minutes(1), now + time::Duration::days(365)).unwrap();
    assert_eq!(signed.identity, id);
    assert!(!signed.cert_pem.contains("PRIVATE KEY"));

    // The certificate goes with the key that never left, and a node takes it.
    let creds =
        Credentials::from_pem(ca.cert_pem().as_bytes(), signed.cert_pem.as_bytes(), req.key_pem.as_bytes()).unwrap();
    assert_eq!(creds.identity(), &id);
    let server = CredentialSource::load(dir.path(), "node-hefei").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
    let mut incoming = tls_incoming(listener, server, Default::default());
    let serve = async {
        let mut conn = incoming.next().await.unwrap().expect("the server accepts the signed identity");
        conn.write_all(b"ok").await.unwrap();
        conn.flush().await.unwrap();
        conn
    };
    let mut connector =
        TlsConnector::new(CredentialSource::fixed(creds).unwrap(), Some(Identity::Node("hefei".into())));
    let (client, _conn) = tokio::join!(connector.call(uri), serve);
    client.expect("the client is accepted");
}
