//! Vouchers across cities through the gateway: a Wuhu voucher paying part of
//! a Hefei booking, reconciliation of that month, refusals that release the
//! slot, and concurrent redemptions from three cities that never overspend.

use std::time::Duration;

use corridor_node::booking::time::format as rfc;
use corridor_node::{
    money::reconcile::{self, Period},
    ops::demo::Scale,
};
use corridor_tests::{Mesh, pb};
use time::OffsetDateTime;
use tonic::Code;

/// 18 characters with a valid check character.
fn uscc() -> String {
    corridor_node::catalog::model::uscc_with_check("91340200MA2N00000").unwrap()
}

/// 09:00 in Shanghai, a week from now.
fn next_week_nine() -> i64 {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let day = 86_400;
    (now + 8 * 3600) / day * day - 8 * 3600 + 7 * day + 9 * 3600
}

fn voucher_instruments(city: &str, n: usize) -> Vec<(String, i64)> {
    corridor_node::ops::demo::voucher_instruments(Scale::G60, city).into_iter().take(n).collect()
}

async fn open_rules(mesh: &Mesh, city: &str, instrument: &str) {
    let rules = pb::BookingRules { min_minutes: 15, max_minutes: 600, max_advance_days: 365, ..Default::default() };
    mesh.gateway(&format!("admin-{city}"))
        .set_booking_rules(pb::SetBookingRulesRequest { instrument_id: instrument.into(), rules: Some(rules) })
        .await
        .unwrap();
}

async fn issue(mesh: &Mesh, city: &str, face_fen: i64, share: u32, cities: &[&str]) -> pb::Voucher {
    let today = OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8)).date();
    mesh.gateway(&format!("admin-{city}"))
        .issue_voucher(pb::IssueVoucherRequest {
            city: city.into(),
            enterprise_uscc: uscc(),
            enterprise_name: "芜湖示范科技有限公司".into(),
            holder: "spiffe://corridor/org/demo".into(),
            face_fen,
            valid_from: (today - time::Duration::days(1)).to_string(),
            valid_until: (today + time::Duration::days(365)).to_string(),
            share_percent: share,
            cities: cities.iter().map(|c| c.to_string()).collect(),
            idempotency_key: format!("issue-{city}-{face_fen}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn reserve(instrument: &str, start: i64, minutes: i64, voucher: &str, key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        instrument_id: instrument.into(),
        start: rfc(start),
        end: rfc(start + minutes * 60),
        idempotency_key: key.into(),
        voucher_id: voucher.into(),
        ..Default::default()
    }
}

async fn voucher(mesh: &Mesh, id: &str) -> pb::Voucher {
    mesh.gateway("org-demo").get_voucher(pb::GetVoucherRequest { voucher_id: id.into() }).await.unwrap().into_inner()
}

async fn reconcile_now(mesh: &Mesh) -> reconcile::Report {
    let endpoints: Vec<(String, String)> = mesh.node_addrs.keys().map(|c| (c.to_string(), mesh.node_url(c))).collect();
    let ledgers =
        corridor_node::wire::reconciler::fetch(&endpoints, &mesh.creds("reconciler"), Duration::from_secs(10))
            .await
            .unwrap();
    // The period as the nodes' clocks see it.
    let now = mesh.now();
    reconcile::reconcile(Period::containing(now), &ledgers, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wuhu_voucher_pays_part_of_a_hefei_booking_and_reconciles() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let (inst, price) = voucher_instruments("hefei", 1).remove(0);
    open_rules(&mesh, "hefei", &inst).await;
    let v = issue(&mesh, "wuhu", 5_000_000, 50, &[]).await;
    assert_eq!(v.cities.len(), 9, "recognised in all nine cities by default");
    assert_eq!(v.balance_fen, 5_000_000);

    // Two hours, paid half by the voucher, starting at the next whole minute
    // but one (the instrument's rules ask for no notice).
    let start = (mesh.now() / 60 + 2) * 60;
    let b = mesh.gateway("org-demo").reserve(reserve(&inst, start, 120, &v.id, "v1")).await.unwrap().into_inner();
    let p = b.payment.clone().unwrap();
    assert_eq!(b.state, pb::BookingState::Confirmed as i32, "{b:?}");
    assert_eq!(p.state, pb::PaymentState::Confirmed as i32, "{p:?}");
    let expected_fee = price * 2;
    assert_eq!(p.held_fen, (expected_fee * 50 + 50) / 100);
    let after = voucher(&mesh, &v.id).await;
    assert_eq!((after.held_fen, after.balance_fen), (p.held_fen, 5_000_000 - p.held_fen));
    // What an operator sees: the booking at Hefei, the money held at Wuhu.
    let hefei = mesh.node_metrics["hefei"].render();
    assert!(hefei.contains("corridor_bookings{city=\"hefei\",state=\"confirmed\"} 1"), "{hefei}");
    let wuhu = mesh.node_metrics["wuhu"].render();
    assert!(wuhu.contains(&format!("corridor_voucher_held_fen{{city=\"wuhu\"}} {}", p.held_fen)), "{wuhu}");
    // A retry with the same key is the same booking, and holds nothing more.
    let again = mesh.gateway("org-demo").reserve(reserve(&inst, start, 120, &v.id, "v1")).await.unwrap().into_inner();
    assert_eq!(again.id, b.id);
    assert_eq!(voucher(&mesh, &v.id).await.held_fen, p.held_fen);
    // The booking is in Hefei, for Hefei's admin to see.
    let listed = mesh
        .gateway("admin-hefei")
        .list_bookings(pb::ListBookingsRequest { city: "hefei".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.bookings.iter().any(|x| x.id == b.id));

    // Used for 90 minutes: the voucher pays half of the real fee.
    // Completion comes after the start: the mesh's clocks move there.
    mesh.advance_to(start);
    let done = mesh
        .gateway("admin-hefei")
        .complete_booking(pb::CompleteBookingRequest {
            booking_id: b.id.clone(),
            actual_minutes: 90,
            idempotency_key: "done".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let paid = (done.fee_fen * 50 + 50) / 100;
    let dp = done.payment.unwrap();
    assert_eq!((dp.state, dp.posted_fen), (pb::PaymentState::Posted as i32, paid), "{dp:?}");
    let after = voucher(&mesh, &v.id).await;
    assert_eq!((after.held_fen, after.spent_fen, after.balance_fen), (0, paid, 5_000_000 - paid));

    let report = reconcile_now(&mesh).await;
    assert!(report.breaks.is_empty(), "{:?}", report.breaks);
    assert_eq!(report.matched_redemptions, 1);
    assert_eq!(report.settlement.len(), 1);
    let row = &report.settlement[0];
    assert_eq!((row.issuer_city.as_str(), row.provider_city.as_str(), row.amount_fen), ("wuhu", "hefei", paid));
    let net = |m: &reconcile::Matrix, p: &str| m.net.iter().find(|n| n.party == p).unwrap().net_fen;
    assert_eq!((net(&report.cities, "wuhu"), net(&report.cities, "hefei")), (-paid, paid));
    assert_eq!(net(&report.provinces, "Anhui"), 0, "both cities are in Anhui");
    assert_eq!(report.cities.net_sum_fen, 0);
    // Run again: the same bytes.
    let again = reconcile_now(&mesh).await;
    assert_eq!(serde_json::to_string(&report).unwrap(), serde_json::to_string(&again).unwrap());
    assert_eq!(reconcile::settlement_csv(&report), reconcile::settlement_csv(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_voucher_releases_the_slot_and_says_why() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let (inst, _) = voucher_instruments("hefei", 1).remove(0);
    open_rules(&mesh, "hefei", &inst).await;
    // Recognised in Zhejiang cities only.
    let v = issue(&mesh, "wuhu", 5_000_000, 50, &["hangzhou", "jiaxing"]).await;
    let start = next_week_nine();
    let err = mesh.gateway("org-demo").reserve(reserve(&inst, start, 60, &v.id, "r1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not recognised in hefei"), "{}", err.message());
    // The slot is free again, and nothing is held.
    mesh.gateway("org-demo").reserve(reserve(&inst, start, 60, "", "r2")).await.unwrap();
    assert_eq!(voucher(&mesh, &v.id).await.held_fen, 0);
    // Another city's admin has no business with Wuhu's vouchers.
    let err =
        mesh.gateway("admin-hefei").get_voucher(pb::GetVoucherRequest { voucher_id: v.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Only the issuing city's admin issues.
    let mut req = pb::IssueVoucherRequest { city: "wuhu".into(), ..Default::default() };
    req.idempotency_key = "x".into();
    let err = mesh.gateway("admin-hefei").issue_voucher(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A malformed voucher id is refused before anything is held.
    let err =
        mesh.gateway("org-demo").reserve(reserve(&inst, start + 7200, 60, "nowhere/v-1", "r3")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redemptions_from_three_cities_never_overspend() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut targets = Vec::new();
    for city in ["hefei", "hangzhou", "suzhou"] {
        for (inst, price) in voucher_instruments(city, 2) {
            open_rules(&mesh, city, &inst).await;
            targets.push((inst, price));
        }
    }
    // Enough for a handful of one-hour uses at most.
    let max_share = targets.iter().map(|(_, p)| (p * 100 + 50) / 100).max().unwrap();
    let face = max_share * 4;
    let v = issue(&mesh, "wuhu", face, 100, &[]).await;
    let start = next_week_nine();
    let calls = (0..36).map(|i| {
        let (inst, _) = targets[i % targets.len()].clone();
        let mut gw = mesh.gateway("org-demo");
        let req = reserve(&inst, start + (i / targets.len()) as i64 * 7200, 60, &v.id, &format!("c{i}"));
        async move { gw.reserve(req).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut held = 0;
    let mut ok = 0;
    for r in &results {
        match r {
            Ok(b) => {
                let p = b.get_ref().payment.clone().unwrap();
                assert_eq!(p.state, pb::PaymentState::Confirmed as i32, "{b:?}");
                held += p.held_fen;
                ok += 1;
            }
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
    }
    assert!(ok >= 1 && ok < results.len(), "some succeed, some are refused: {ok}");
    let after = voucher(&mesh, &v.id).await;
    assert!(after.held_fen + after.spent_fen <= face, "overspent: {after:?}");
    assert_eq!(after.held_fen, held, "every confirmed booking has its hold, and nothing else is held");
    assert!(after.balance_fen >= 0);
    assert!(reconcile_now(&mesh).await.breaks.is_empty());
}
