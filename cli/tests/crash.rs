//! Durability under SIGKILL: a node process is killed while reservations
//! run, then restarted on the same data. Every confirmation it acknowledged
//! before the kill must still be there.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use corridor_certs::{Credentials, Identity, client_channel};
use corridor_node::booking::time::format as rfc;
use corridor_node::ops::demo::{Scale, city_inventory};
use corridor_proto::{self as pb, node_client::NodeClient};
use time::OffsetDateTime;

/// Starts `corridor node run` for hefei and returns once it logs that it
/// serves (a bound listener queues connections from then on).
fn start_node(dir: &Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(["node", "run", "--city", "hefei", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.join("hefei"))
        .arg("--certs")
        .arg(dir.join("certs"))
        .args(["--seed", "g60"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("node exited before serving").unwrap();
        if line.contains("node serving") {
            break;
        }
    }
    // Keep draining so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_confirmations_survive_sigkill() {
    const CYCLES: usize = 10;
    const WRITERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    corridor_certs::init_dir(&dir.path().join("certs"), &["hefei"], false).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let creds = Credentials::load(&dir.path().join("certs"), "admin-hefei").unwrap();
    let instruments: Vec<String> = city_inventory(Scale::G60, "hefei")
        .into_iter()
        .filter(|r| r.status == corridor_node::catalog::model::Status::Available)
        .take(8)
        .map(|r| format!("hefei/{}", r.local_id))
        .collect();
    // Far enough ahead for the default rules; each call gets its own slot.
    let day = 86_400;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let base = (now + 8 * 3600) / day * day - 8 * 3600 + 7 * day + 8 * 3600;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    for cycle in 0..CYCLES {
        let mut node = start_node(dir.path(), port);
        let url = format!("https://127.0.0.1:{port}");
        let channel =
            client_channel(&url, &creds, Some(Identity::Node("hefei".into())), Duration::from_secs(2)).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let target = acked.lock().unwrap().len() + 40;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (mut client, acked, instruments, mut stop) =
                    (NodeClient::new(channel.clone()), acked.clone(), instruments.clone(), stop_rx.clone());
                // 100 slots per writer per cycle keeps all within 90 days.
                let first = ((cycle * WRITERS + w) * 100) as i64;
                tokio::spawn(async move {
                    for i in 0..100 {
                        if *stop.borrow_and_update() {
                            return;
                        }
                        // Distinct 30-minute slots: every call should succeed.
                        let n = first + i;
                        let inst = &instruments[(n % instruments.len() as i64) as usize];
                        let start = base + (n / instruments.len() as i64 % 28) * 1800 + (n / 224) * day;
                        let req = pb::ReserveRequest {
                            instrument_id: inst.clone(),
                            start: rfc(start),
                            end: rfc(start + 1800),
                            hold_only: false,
                            purpose: String::new(),
                            idempotency_key: format!("cycle{cycle}-w{w}-{i}"),
                            ..Default::default()
                        };
                        match client.reserve(req).await {
                            Ok(b) => acked.lock().unwrap().push(b.into_inner().id),
                            // The kill: in-flight calls fail, and were never acknowledged.
                            Err(e)
                                if matches!(
                                    e.code(),
                                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                                ) =>
                            {
                                return;
                            }
                            Err(e) => panic!("reservation refused: {e:?}"),
                        }
                    }
                })
            })
            .collect();
        // Kill once enough confirmations are acknowledged in this cycle.
        let watcher = {
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                while acked.lock().unwrap().len() < target {
                    tick.tick().await;
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(60), watcher).await.expect("writers stalled").unwrap();
        node.kill().unwrap(); // SIGKILL
        node.wait().unwrap();
        let _ = stop_tx.send(true);
        for w in writers {
            w.await.unwrap();
        }
    }

    // Restart once more and check every acknowledgement.
    let mut node = start_node(dir.path(), port);
    let url = format!("https://127.0.0.1:{port}");
    let channel = client_channel(&url, &creds, Some(Identity::Node("hefei".into())), Duration::from_secs(2)).unwrap();
    let mut client = NodeClient::new(channel);
    let mut all = Vec::new();
    let mut req = pb::ListBookingsRequest { include_closed: true, page_size: 5_000, ..Default::default() };
    loop {
        let page = client.list_bookings(req.clone()).await.unwrap().into_inner();
        all.extend(page.bookings);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let stored: std::collections::HashSet<&str> = all.iter().map(|b| b.id.as_str()).collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= CYCLES * 40);
    for id in acked.iter() {
        assert!(stored.contains(id.as_str()), "acknowledged {id} was lost in a crash");
    }
    // No step was left half done: each instrument's calendar holds exactly
    // its stored bookings, no more (a slot taken by nothing) and no fewer (a
    // booking its calendar does not know of, which could be double-booked).
    let secs =
        |t: &str| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap().unix_timestamp();
    let last = all.iter().map(|b| secs(&b.end)).max().unwrap();
    for inst in &instruments {
        let mut booked: Vec<(i64, i64)> =
            all.iter().filter(|b| &b.instrument_id == inst).map(|b| (secs(&b.start), secs(&b.end))).collect();
        let mut busy = Vec::new();
        let mut from = base - 8 * 3600;
        while from <= last {
            let req =
                pb::AvailabilityRequest { instrument_id: inst.clone(), from: rfc(from), to: rfc(from + 30 * day) };
            let resp = client.check_availability(req).await.unwrap().into_inner();
            busy.extend(resp.busy.iter().filter(|b| b.kind == "booking").map(|b| (secs(&b.start), secs(&b.end))));
            from += 30 * day;
        }
        booked.sort_unstable();
        busy.sort_unstable();
        busy.dedup();
        assert_eq!(busy, booked, "{inst}: the calendar and the stored bookings disagree after the crashes");
    }
    node.kill().unwrap();
    node.wait().unwrap();
}
