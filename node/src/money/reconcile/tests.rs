//! Reconciliation over hand-built ledgers: a clean period, then every kind
//! of break seeded on purpose.

use super::*;
use crate::{
    kv::txn::{MemKv, TxnStore},
    money::ledger::{self, Redemption},
};

/// 2026-11-10 12:00 in Shanghai.
const T: Instant = 1_794_283_200;
const NOW: Instant = 1_796_000_000;

struct Book {
    city: &'static str,
    store: MemKv,
}

impl Book {
    fn new(city: &'static str) -> Self {
        Book { city, store: MemKv::default() }
    }
    fn add(&self, at: Instant, body: Body) {
        self.store.atomically(&mut |tx| ledger::append(tx, at, body.clone()).map(|_| ())).unwrap();
    }
    fn raw(&self) -> (Vec<Vec<u8>>, Head) {
        let head =
            serde_json::from_slice(&self.store.get(ledger::HEAD).unwrap().unwrap_or_default()).unwrap_or_default();
        (self.store.scan(ledger::PREFIX).unwrap(), head)
    }
    fn ledger(&self) -> NodeLedger {
        let (raw, head) = self.raw();
        NodeLedger { city: self.city.into(), chain: ledger::verify(&raw, &head), head }
    }
}

fn issued(book: &Book, voucher: &str, face: i64) {
    book.add(
        T - 100,
        Body::VoucherIssued {
            voucher: voucher.into(),
            enterprise_uscc: "U".into(),
            holder: "h".into(),
            face_fen: face,
        },
    );
}

fn pending(book: &Book, op: &str, voucher: &str, amount: i64, expires: Instant) {
    book.add(
        T,
        Body::DebitPending {
            op: op.into(),
            voucher: voucher.into(),
            enterprise_uscc: "U".into(),
            amount_fen: amount,
            provider_city: "hefei".into(),
            expires_at: expires,
        },
    );
}

fn posted(book: &Book, op: &str, voucher: &str, amount: i64) {
    book.add(T + 10, Body::DebitConfirmed { op: op.into(), voucher: voucher.into(), amount_fen: amount });
    book.add(
        T + 20,
        Body::DebitPosted {
            op: op.into(),
            voucher: voucher.into(),
            enterprise_uscc: "U".into(),
            amount_fen: amount,
            provider_city: "hefei".into(),
            provider_institution: "USTC".into(),
            provider_uscc: "P".into(),
            service_at: T + 15,
        },
    );
}

fn served(book: &Book, op: &str, voucher: &str, issuer: &str, amount: i64) {
    book.add(
        T + 15,
        Body::Service {
            booking: op.into(),
            instrument: "tem".into(),
            requester: "org".into(),
            institution: "USTC".into(),
            institution_uscc: "P".into(),
            minutes: 60,
            fee_fen: amount * 2,
            redemption: Some(Redemption {
                op: op.into(),
                voucher: voucher.into(),
                issuer_city: issuer.into(),
                amount_fen: amount,
            }),
        },
    );
}

fn nov() -> Period {
    Period::parse("2026-11").unwrap()
}

#[test]
fn periods_parse_and_bound_in_shanghai_time() {
    let p = nov();
    let (s, e) = p.bounds();
    assert_eq!(crate::booking::time::format(s), "2026-11-01T00:00:00+08:00");
    assert_eq!(crate::booking::time::format(e), "2026-12-01T00:00:00+08:00");
    assert!(Period::parse("2026-13").is_err());
    assert!(Period::parse("2026/11").is_err());
    assert!(Period::parse("26-11").is_err());
    // 2026-12-31 16:30 UTC is already January in Shanghai.
    let new_year = Period::containing(1_798_734_600);
    assert_eq!(new_year.to_string(), "2027-01");
    assert_eq!(new_year.previous().to_string(), "2026-12");
    assert_eq!(Period::containing(p.bounds().0), p);
}

#[test]
fn a_clean_period_has_no_breaks_and_nets_to_zero() {
    let (wuhu, hefei, suzhou) = (Book::new("wuhu"), Book::new("hefei"), Book::new("suzhou"));
    issued(&wuhu, "wuhu/v-1", 1_000_000);
    pending(&wuhu, "hefei/bk-1", "wuhu/v-1", 30_000, T + 600);
    posted(&wuhu, "hefei/bk-1", "wuhu/v-1", 25_000);
    served(&hefei, "hefei/bk-1", "wuhu/v-1", "wuhu", 25_000);
    // A Suzhou voucher at the same provider: Jiangsu owes Anhui.
    issued(&suzhou, "suzhou/v-1", 1_000_000);
    pending(&suzhou, "hefei/bk-2", "suzhou/v-1", 10_000, T + 600);
    posted(&suzhou, "hefei/bk-2", "suzhou/v-1", 10_000);
    served(&hefei, "hefei/bk-2", "suzhou/v-1", "suzhou", 10_000);
    let r = reconcile(nov(), &[wuhu.ledger(), hefei.ledger(), suzhou.ledger()], NOW);
    assert!(r.breaks.is_empty(), "{:?}", r.breaks);
    assert_eq!((r.matched_redemptions, r.matched_fen), (2, 35_000));
    assert_eq!(r.cities.net_sum_fen, 0);
    assert_eq!(r.provinces.net_sum_fen, 0);
    let net = |m: &Matrix, p: &str| m.net.iter().find(|n| n.party == p).unwrap().net_fen;
    assert_eq!(net(&r.cities, "hefei"), 35_000);
    assert_eq!(net(&r.cities, "wuhu"), -25_000);
    assert_eq!(net(&r.provinces, "Anhui"), 10_000, "Anhui receives Suzhou's 100 yuan; Wuhu→Hefei nets out");
    assert_eq!(net(&r.provinces, "Jiangsu"), -10_000);
    let csv = settlement_csv(&r);
    assert!(csv.starts_with("period,issuer_city,"), "{csv}");
    assert!(csv.contains("2026-11,wuhu,Anhui,hefei,Anhui,USTC,P,1,250.00"), "{csv}");
    // The same ledgers give the same bytes.
    let again = reconcile(nov(), &[wuhu.ledger(), hefei.ledger(), suzhou.ledger()], NOW);
    assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&again).unwrap());
    // Another month sees none of it.
    let dec = reconcile(Period::parse("2026-12").unwrap(), &[wuhu.ledger(), hefei.ledger()], NOW);
    assert_eq!(dec.matched_redemptions, 0);
    assert!(dec.breaks.is_empty());
}

#[test]
fn every_kind_of_seeded_break_is_reported() {
    let (wuhu, hefei, hangzhou) = (Book::new("wuhu"), Book::new("hefei"), Book::new("hangzhou"));
    issued(&wuhu, "wuhu/v-1", 100_000);
    // Missing issuer side.
    served(&hefei, "hefei/bk-1", "wuhu/v-1", "wuhu", 5_000);
    // Missing provider side.
    pending(&wuhu, "hefei/bk-2", "wuhu/v-1", 5_000, T + 600);
    posted(&wuhu, "hefei/bk-2", "wuhu/v-1", 5_000);
    // Amount mismatch.
    pending(&wuhu, "hefei/bk-3", "wuhu/v-1", 5_000, T + 600);
    posted(&wuhu, "hefei/bk-3", "wuhu/v-1", 4_000);
    served(&hefei, "hefei/bk-3", "wuhu/v-1", "wuhu", 4_500);
    // Double debit: posted twice.
    pending(&wuhu, "hefei/bk-4", "wuhu/v-1", 5_000, T + 600);
    posted(&wuhu, "hefei/bk-4", "wuhu/v-1", 5_000);
    posted(&wuhu, "hefei/bk-4", "wuhu/v-1", 5_000);
    served(&hefei, "hefei/bk-4", "wuhu/v-1", "wuhu", 5_000);
    // A hold left pending past its expiry.
    pending(&wuhu, "hefei/bk-5", "wuhu/v-1", 5_000, T + 600);
    // Overspent: more held than the face value.
    issued(&wuhu, "wuhu/v-2", 1_000);
    pending(&wuhu, "hefei/bk-6", "wuhu/v-2", 2_000, NOW + 3_600);
    // A broken chain elsewhere.
    issued(&hangzhou, "hangzhou/v-1", 1_000);
    issued(&hangzhou, "hangzhou/v-2", 1_000);
    let (mut raw, head) = hangzhou.raw();
    raw[0] = String::from_utf8(raw[0].clone()).unwrap().replace("1000", "9000").into_bytes();
    let broken = NodeLedger { city: "hangzhou".into(), chain: ledger::verify(&raw, &head), head };

    let r = reconcile(nov(), &[wuhu.ledger(), hefei.ledger(), broken], NOW);
    let kinds: Vec<(BreakKind, &str)> = r.breaks.iter().map(|b| (b.kind.clone(), b.subject.as_str())).collect();
    for expected in [
        (BreakKind::BrokenChain, "hangzhou ledger"),
        (BreakKind::MissingIssuerSide, "hefei/bk-1"),
        (BreakKind::MissingProviderSide, "hefei/bk-2"),
        (BreakKind::AmountMismatch, "hefei/bk-3"),
        (BreakKind::DoubleDebit, "hefei/bk-4"),
        (BreakKind::StaleHold, "hefei/bk-5"),
        (BreakKind::Overspent, "wuhu/v-2"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} not in {kinds:?}");
    }
    assert_eq!(kinds.len(), 7, "nothing else: {kinds:?}");
    assert_eq!(r.matched_redemptions, 0);
    assert!(summary(&r).contains("BREAK StaleHold hefei/bk-5"));
}
