//! The crash matrix for voucher payments, on real processes: a Hefei provider
//! node, a Wuhu issuer node and a gateway. Each is stopped dead (abort, as a
//! crash) at each step of the operation, then restarted. After recovery,
//! every operation must be final and the same on both sides, and the voucher
//! never overspent.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use corridor_certs::{Credentials, Identity, client_channel};
use corridor_node::booking::time::format as rfc;
use corridor_node::{
    money::{ledger::Body, reconcile},
    ops::demo::{Scale, voucher_instruments},
};
use corridor_proto::{self as pb, gateway_client::GatewayClient, node_client::NodeClient};
use time::OffsetDateTime;
use tonic::transport::Channel;

const CITIES: [&str; 2] = ["hefei", "wuhu"];

struct Cluster {
    dir: PathBuf,
    ports: BTreeMap<&'static str, u16>,
    procs: BTreeMap<&'static str, Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a process and returns once it logs `ready` (its listener is bound
/// and queues connections from then on).
fn start(args: &[String], failpoint: Option<&str>, ready: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corridor"));
    cmd.args(args).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(f) = failpoint {
        cmd.env("CORRIDOR_FAILPOINTS", f);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            panic!("{args:?} exited before it was ready; it said:\n{}", seen.join("\n"));
        };
        let line = line.unwrap();
        if line.contains(ready) {
            break;
        }
        seen.push(line);
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        corridor_certs::init_dir(&dir.join("certs"), &CITIES, false).unwrap();
        let ports: BTreeMap<&str, u16> =
            [("hefei", free_port()), ("wuhu", free_port()), ("gateway", free_port())].into();
        let mut nodes = String::new();
        for c in CITIES {
            nodes += &format!("[[nodes]]\ncity = \"{c}\"\nendpoint = \"https://127.0.0.1:{}\"\n", ports[c]);
        }
        std::fs::write(dir.join("gateway.toml"), nodes).unwrap();
        let mut c = Cluster { dir: dir.into(), ports, procs: BTreeMap::new() };
        for who in ["hefei", "wuhu", "gateway"] {
            c.restart(who, None);
        }
        c
    }

    fn url(&self, who: &str) -> String {
        format!("https://127.0.0.1:{}", self.ports[who])
    }

    /// (Re)starts `who`, optionally armed to abort at `failpoint`.
    fn restart(&mut self, who: &'static str, failpoint: Option<&str>) {
        if let Some(mut old) = self.procs.remove(who) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let d = |p: &str| self.dir.join(p).display().to_string();
        let listen = format!("127.0.0.1:{}", self.ports[who]);
        let child = if who == "gateway" {
            let args = ["gateway", "run", "--config", &d("gateway.toml"), "--listen", &listen, "--certs", &d("certs")];
            start(&args.map(String::from), failpoint, "gateway serving")
        } else {
            let mut args: Vec<String> = ["node", "run", "--city", who, "--listen", &listen, "--data", &d(who)]
                .into_iter()
                .chain(["--certs", &d("certs"), "--seed", "g60"])
                .map(String::from)
                .collect();
            for c in CITIES {
                args.push(format!("--peer={c}={}", self.url(c)));
            }
            start(&args, failpoint, "node serving")
        };
        self.procs.insert(who, child);
    }

    /// Waits for `who` to stop at its failpoint; a process that never gets
    /// there fails the test (within a minute) instead of hanging it.
    async fn wait_crashed(&mut self, who: &'static str) {
        let mut child = self.procs.remove(who).unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..1_200 {
            tick.tick().await;
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success(), "{who} stopped at its failpoint: {status}");
                return;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{who} never reached its failpoint");
    }

    fn creds(&self, name: &str) -> Credentials {
        Credentials::load(&self.dir.join("certs"), name).unwrap()
    }

    fn gateway(&self, name: &str) -> GatewayClient<Channel> {
        let ch =
            client_channel(&self.url("gateway"), &self.creds(name), Some(Identity::Gateway), Duration::from_secs(2))
                .unwrap();
        GatewayClient::new(ch)
    }

    fn node(&self, city: &str, name: &str) -> NodeClient<Channel> {
        let ch = client_channel(
            &self.url(city),
            &self.creds(name),
            Some(Identity::Node(city.into())),
            Duration::from_secs(2),
        )
        .unwrap();
        NodeClient::new(ch)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.procs) {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Calls `f` until it answers, as a client retrying through restarts would.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..150 {
        tick.tick().await;
        match f().await {
            Ok(v) => return v,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                ) => {}
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
    panic!("{what}: no answer within 30 s");
}

fn final_state(p: &pb::VoucherPayment) -> bool {
    [pb::PaymentState::Confirmed, pb::PaymentState::Posted, pb::PaymentState::Voided]
        .map(|s| s as i32)
        .contains(&p.state)
}

/// Waits until recovery has made the booking's payment final.
async fn settled(c: &Cluster, id: &str) -> pb::Booking {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..150 {
        tick.tick().await;
        let mut node = c.node("hefei", "admin-hefei");
        if let Ok(b) = node.get_booking(pb::GetBookingRequest { booking_id: id.into() }).await {
            let b = b.into_inner();
            if b.payment.as_ref().is_some_and(final_state) {
                return b;
            }
        }
    }
    panic!("booking {id} did not settle within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_ends_final_and_matched_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    // One instrument for the bookings a week ahead, and one each for the two
    // that are completed (which must have started by then).
    let insts: Vec<String> = voucher_instruments(Scale::G60, "hefei").into_iter().take(3).map(|(i, _)| i).collect();
    assert_eq!(insts.len(), 3);
    for inst in &insts {
        let rules = pb::BookingRules { min_minutes: 15, max_minutes: 600, max_advance_days: 365, ..Default::default() };
        c.gateway("admin-hefei")
            .set_booking_rules(pb::SetBookingRulesRequest { instrument_id: inst.clone(), rules: Some(rules) })
            .await
            .unwrap();
    }
    let today = OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8)).date();
    let face = 100_000_000;
    let voucher = c
        .gateway("admin-wuhu")
        .issue_voucher(pb::IssueVoucherRequest {
            city: "wuhu".into(),
            enterprise_uscc: corridor_node::catalog::model::uscc_with_check("91340200MA2N00000").unwrap(),
            holder: "spiffe://corridor/org/demo".into(),
            face_fen: face,
            valid_from: (today - time::Duration::days(1)).to_string(),
            valid_until: (today + time::Duration::days(365)).to_string(),
            share_percent: 50,
            idempotency_key: "issue".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let day0 = (now + 8 * 3600) / 86_400 * 86_400 - 8 * 3600 + 7 * 86_400 + 9 * 3600;
    // (process to crash, where, and whether the crash is in the completion).
    let matrix: [(&'static str, &str, bool); 10] = [
        ("gateway", "gateway.before_forward", false),
        ("gateway", "gateway.after_forward", false),
        ("hefei", "provider.after_hold", false),
        ("hefei", "provider.after_try", false),
        ("hefei", "provider.after_confirm", false),
        ("wuhu", "issuer.after_try", false),
        ("wuhu", "issuer.after_confirm", false),
        ("hefei", "provider.after_post", true),
        ("wuhu", "issuer.after_post", true),
        ("wuhu", "issuer.after_cancel", false),
    ];
    let mut ids = Vec::new();
    for (n, (who, point, at_completion)) in matrix.into_iter().enumerate() {
        let key = format!("op{n}");
        // A booking completed below starts at the next whole minute (at
        // least 5 s away, to be booked first): completion comes after the
        // start, so the test waits for it.
        let (inst, start) = if at_completion {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            (&insts[n - 6], (now + 5 + 59) / 60 * 60)
        } else {
            (&insts[0], day0 + n as i64 * 86_400)
        };
        let req = pb::ReserveRequest {
            instrument_id: inst.clone(),
            start: rfc(start),
            end: rfc(start + 7200),
            idempotency_key: key.clone(),
            voucher_id: voucher.id.clone(),
            ..Default::default()
        };
        if !at_completion && point != "issuer.after_cancel" {
            c.restart(who, Some(point));
            // The call fails or succeeds; either way the process stops at the point.
            let _ = c.gateway("org-demo").reserve(req.clone()).await;
            c.wait_crashed(who).await;
            c.restart(who, None);
        }
        // The client retries with the same key, and learns the outcome.
        let b = retry(point, || {
            let mut gw = c.gateway("org-demo");
            let req = req.clone();
            async move { gw.reserve(req).await.map(|r| r.into_inner()) }
        })
        .await;
        let b = settled(&c, &b.id).await;
        if at_completion {
            assert_eq!(b.payment.as_ref().unwrap().state, pb::PaymentState::Confirmed as i32, "{point}: {b:?}");
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while OffsetDateTime::now_utc().unix_timestamp() < start {
                tick.tick().await;
            }
            c.restart(who, Some(point));
            let _ = c
                .gateway("admin-hefei")
                .complete_booking(pb::CompleteBookingRequest {
                    booking_id: b.id.clone(),
                    actual_minutes: 100,
                    idempotency_key: format!("done{n}"),
                })
                .await;
            c.wait_crashed(who).await;
            c.restart(who, None);
            let done = retry(point, || {
                let mut gw = c.gateway("admin-hefei");
                let req = pb::CompleteBookingRequest {
                    booking_id: b.id.clone(),
                    actual_minutes: 100,
                    idempotency_key: format!("done{n}"),
                };
                async move { gw.complete_booking(req).await.map(|r| r.into_inner()) }
            })
            .await;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut posted = done.payment.clone().unwrap();
            for _ in 0..150 {
                if posted.state == pb::PaymentState::Posted as i32 {
                    break;
                }
                tick.tick().await;
                posted = settled(&c, &b.id).await.payment.unwrap();
            }
            assert_eq!(posted.state, pb::PaymentState::Posted as i32, "{point}");
        }
        if point == "issuer.after_cancel" {
            c.restart(who, Some(point));
            let _ = c
                .gateway("org-demo")
                .cancel_booking(pb::BookingActionRequest {
                    booking_id: b.id.clone(),
                    idempotency_key: format!("cancel{n}"),
                    reason: "plans changed".into(),
                    ..Default::default()
                })
                .await;
            c.wait_crashed(who).await;
            c.restart(who, None);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            for _ in 0..150 {
                tick.tick().await;
                let got = settled(&c, &b.id).await;
                if got.payment.unwrap().state == pb::PaymentState::Voided as i32 {
                    break;
                }
            }
        }
        ids.push(b.id);
    }

    // Both sides, from the ledgers (whose chains must verify).
    let endpoints: Vec<(String, String)> = CITIES.iter().map(|c2| (c2.to_string(), c.url(c2))).collect();
    let ledgers = corridor_node::wire::reconciler::fetch(&endpoints, &c.creds("reconciler"), Duration::from_secs(10))
        .await
        .unwrap();
    let mut issuer: BTreeMap<String, (&str, i64)> = BTreeMap::new();
    for l in &ledgers {
        for e in l.chain.as_ref().unwrap_or_else(|err| panic!("{} chain: {err}", l.city)) {
            match &e.body {
                Body::DebitPending { op, amount_fen, .. } => issuer.insert(op.clone(), ("pending", *amount_fen)),
                Body::DebitConfirmed { op, amount_fen, .. } => issuer.insert(op.clone(), ("confirmed", *amount_fen)),
                Body::DebitPosted { op, amount_fen, .. } => issuer.insert(op.clone(), ("posted", *amount_fen)),
                Body::DebitVoided { op, amount_fen, .. } => issuer.insert(op.clone(), ("voided", *amount_fen)),
                _ => None,
            };
        }
    }
    let mut held = 0;
    let mut spent = 0;
    let mut node = c.node("hefei", "admin-hefei");
    for id in &ids {
        let b = node.get_booking(pb::GetBookingRequest { booking_id: id.clone() }).await.unwrap().into_inner();
        let p = b.payment.unwrap();
        let side = issuer.get(id).copied();
        match pb::PaymentState::try_from(p.state).unwrap() {
            pb::PaymentState::Confirmed => {
                assert_eq!(side, Some(("confirmed", p.held_fen)), "{id}");
                assert_eq!(b.state, pb::BookingState::Confirmed as i32, "{id}");
                held += p.held_fen;
            }
            pb::PaymentState::Posted => {
                assert_eq!(side, Some(("posted", p.posted_fen)), "{id}");
                spent += p.posted_fen;
            }
            pb::PaymentState::Voided => {
                assert!(matches!(side, None | Some(("voided", _))), "{id}: {side:?}");
                assert_ne!(b.state, pb::BookingState::Confirmed as i32, "{id}");
            }
            s => panic!("{id} is not final: {s:?}"),
        }
    }
    // Nothing else is held or pending at the issuer.
    assert!(issuer.values().all(|(s, _)| *s != "pending"), "{issuer:?}");
    let v = c
        .gateway("org-demo")
        .get_voucher(pb::GetVoucherRequest { voucher_id: voucher.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.held_fen, v.spent_fen), (held, spent));
    assert!(v.held_fen + v.spent_fen <= face);
    assert!(spent > 0, "the completion scenarios posted");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let report = reconcile::reconcile(reconcile::Period::containing(now), &ledgers, now);
    assert!(report.breaks.is_empty(), "{:?}", report.breaks);
    assert_eq!(report.matched_redemptions, 2);
}
