//! Backups taken while a node serves, restored and compared.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use corridor_node::ops::{
    backup,
    demo::{Scale, city_inventory},
};
use corridor_tests::{Mesh, pb};
use time::OffsetDateTime;

async fn take(mesh: &Mesh, who: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = mesh.node("hefei", who).backup(pb::BackupRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(c) = stream.message().await? {
        bytes.extend(c.data);
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_identical_content() {
    let mesh = Arc::new(Mesh::start(Some(Scale::G60)).await);
    let instruments: Vec<String> = city_inventory(Scale::G60, "hefei")
        .into_iter()
        .filter(|r| r.status == corridor_node::catalog::model::Status::Available)
        .take(6)
        .map(|r| format!("hefei/{}", r.local_id))
        .collect();
    let rfc = corridor_node::booking::time::format;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let base = (now + 8 * 3600) / 86_400 * 86_400 - 8 * 3600 + 7 * 86_400 + 8 * 3600;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mesh, stop, acked, instruments) = (mesh.clone(), stop.clone(), acked.clone(), instruments.clone());
            tokio::spawn(async move {
                let mut gw = mesh.gateway("admin-hefei");
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) && i < 400 {
                    let n = w * 400 + i;
                    let start = base + (n % 28) * 1800 + (n / 28 / 6) * 86_400;
                    let req = pb::ReserveRequest {
                        instrument_id: instruments[(n / 28 % 6) as usize].clone(),
                        start: rfc(start),
                        end: rfc(start + 1800),
                        idempotency_key: format!("bk{w}-{i}"),
                        ..Default::default()
                    };
                    gw.reserve(req).await.expect("distinct slots are free");
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();

    // During the load: a backup that verifies.
    while acked.load(Ordering::Relaxed) < 50 {
        tokio::task::yield_now().await;
    }
    let during = take(&mesh, "admin-hefei").await.unwrap();
    let during = backup::verify(&during).expect("a backup taken under load verifies");
    assert_eq!(during.city, "hefei");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // After it: restore, and compare with a second backup of the same state.
    let bytes = take(&mesh, "admin-hefei").await.unwrap();
    let verified = backup::verify(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    backup::restore(&verified, &dir.path().join("restored")).unwrap();
    let restored = sled::Config::new().path(dir.path().join("restored")).open().unwrap();
    let got: BTreeSet<_> = backup::dump(&restored).into_iter().collect();
    let want: BTreeSet<_> = verified.entries().iter().cloned().collect();
    assert_eq!(got, want, "the restored store holds exactly the backup");
    let bookings = got.iter().filter(|(t, k, _)| t == b"bookings" && k.starts_with(b"b/")).count();
    assert_eq!(bookings as u64, acked.load(Ordering::Relaxed), "every acknowledged booking is in the backup");
    assert!(verified.len() > during.len(), "the later backup holds the later bookings");

    // Only the city's admin may take one.
    for who in ["org-demo", "gateway", "admin-wuhu"] {
        assert_eq!(take(&mesh, who).await.unwrap_err().code(), tonic::Code::PermissionDenied, "{who}");
    }
}
