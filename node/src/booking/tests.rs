//! The engine's contract, run against both backends.

use std::sync::Arc;

use super::{time::TokioClock, *};
use crate::{
    catalog::model::tests::sample,
    kv::txn::{TxnStore, tests::backends},
};

/// Monday 2026-11-23 10:00 in Shanghai.
const NOW: Instant = 1_795_399_200;

fn engine(store: Arc<dyn TxnStore>) -> Bookings {
    Bookings::new("hefei", Kv::new(store), Arc::new(TokioClock::starting_at(NOW)))
}

fn org(name: &str) -> Actor {
    Actor { uri: format!("spiffe://corridor/org/{name}"), admin: false, may_book: true, reader: false }
}

fn admin() -> Actor {
    Actor { uri: "spiffe://corridor/city/hefei/admin".into(), admin: true, may_book: true, reader: false }
}

fn req(start: &str, end: &str, key: &str) -> Reserve {
    Reserve {
        start: format!("2026-12-01T{start}:00+08:00"),
        end: format!("2026-12-01T{end}:00+08:00"),
        hold_only: false,
        purpose: String::new(),
        idempotency_key: key.into(),
        voucher: None,
    }
}

fn instrument() -> InstrumentRecord {
    let mut r = sample("tem-1");
    r.training_required = false;
    r
}

#[tokio::test]
async fn the_clock_constant_is_what_it_says() {
    assert_eq!(time::format(NOW), "2026-11-23T10:00:00+08:00");
}

#[tokio::test]
async fn overlapping_requests_are_refused_with_the_conflicting_time() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        let mut rules = Rules::default_for(false);
        rules.setup_minutes = 20;
        e.set_rules(&admin(), &inst, rules).unwrap();
        let a = e.reserve(&org("a"), &inst, req("10:00", "11:00", "k1")).await.unwrap();
        assert_eq!(a.state, State::Confirmed, "{name}");
        assert!(a.id.starts_with("hefei/bk-"));
        // Ends at 10:10: inside a's slot.
        let err = e.reserve(&org("b"), &inst, req("09:00", "10:10", "k2")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "no_overlap"), "{name}: {err}");
        assert!(err.to_string().contains("occupied from 2026-12-01 09:40 to 2026-12-01 11:00"), "{name}: {err}");
        // Starts at 11:00, but its own 20 min preheat would overlap a.
        let err = e.reserve(&org("b"), &inst, req("11:00", "12:00", "k3")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "no_overlap"), "{name}: {err}");
        e.reserve(&org("b"), &inst, req("11:20", "12:00", "k4")).await.unwrap();
    }
}

#[tokio::test]
async fn a_retry_returns_the_first_answer_and_a_reused_key_is_refused() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        let first = e.reserve(&org("a"), &inst, req("10:00", "11:00", "same")).await.unwrap();
        let again = e.reserve(&org("a"), &inst, req("10:00", "11:00", "same")).await.unwrap();
        assert_eq!(first, again, "{name}");
        assert_eq!(e.list(&admin(), None, true, None, usize::MAX).unwrap().0.len(), 1, "{name}: one effect");
        let err = e.reserve(&org("a"), &inst, req("12:00", "13:00", "same")).await.unwrap_err();
        assert!(matches!(err, Error::KeyReused(_)), "{name}: {err}");
        // Keys are per identity: another org may use the same string.
        let err = e.reserve(&org("b"), &inst, req("10:00", "11:00", "same")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(_)), "{name}: {err}");
        let err = e.reserve(&org("a"), &inst, req("14:00", "15:00", "")).await.unwrap_err();
        assert!(err.to_string().contains("idempotency_key is required"));
    }
}

#[tokio::test(start_paused = true)]
async fn hold_expires_after_ttl() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        let mut hold = req("10:00", "11:00", "h");
        hold.hold_only = true;
        let held = e.reserve(&org("a"), &inst, hold).await.unwrap();
        assert_eq!(held.state, State::Held);
        assert_eq!(held.hold_expires, Some(NOW + rules::DEFAULT_HOLD_TTL));
        assert_eq!(e.open_holds().unwrap(), 1);
        // While held, the time is taken.
        assert!(e.reserve(&org("b"), &inst, req("10:30", "11:30", "b1")).await.is_err(), "{name}");

        tokio::time::advance(std::time::Duration::from_secs(rules::DEFAULT_HOLD_TTL as u64)).await;
        assert_eq!(e.open_holds().unwrap(), 0, "{name}");
        let err = e.confirm(&org("a"), &held.id, "c").await.unwrap_err();
        assert!(matches!(err, Error::State(_)), "{name}: {err}");
        assert!(err.to_string().contains("hold expired at 2026-11-23 10:10"), "{name}: {err}");
        // The released time can be booked by someone else.
        e.reserve(&org("b"), &inst, req("10:30", "11:30", "b2")).await.unwrap();
        assert_eq!(e.get(&org("a"), &held.id).unwrap().state, State::Expired, "{name}: expiry is written down");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hold_confirmed_in_time_is_kept() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        let mut hold = req("10:00", "11:00", "h");
        hold.hold_only = true;
        let held = e.reserve(&org("a"), &inst, hold).await.unwrap();
        tokio::time::advance(std::time::Duration::from_secs(rules::DEFAULT_HOLD_TTL as u64 - 1)).await;
        let b = e.confirm(&org("a"), &held.id, "c").await.unwrap();
        assert_eq!(b.state, State::Confirmed, "{name}");
        assert_eq!(b.hold_expires, None);
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        assert!(e.reserve(&org("b"), &inst, req("10:30", "11:30", "b")).await.is_err(), "{name}: still taken");
        // Someone else cannot confirm or even see it.
        assert!(matches!(e.confirm(&org("b"), &held.id, "x").await.unwrap_err(), Error::NotFound(_)));
    }
}

#[tokio::test]
async fn training_and_approval_rules() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        let mut rules = Rules::default_for(true);
        rules.approval_required = true;
        e.set_rules(&admin(), &inst, rules).unwrap();
        let err = e.reserve(&org("a"), &inst, req("10:00", "11:00", "1")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "training_required"), "{name}: {err}");
        // Training that ends before the slot does is not enough; to its end is.
        let end = super::time::parse("end", &req("10:00", "11:00", "-").end).unwrap();
        e.grant(&admin(), &inst, &org("a").uri, Some(Qualification { until: Some(end - 60) })).await.unwrap();
        let err = e.reserve(&org("a"), &inst, req("10:00", "11:00", "1b")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "training_required"), "{name}: {err}");
        assert!(err.to_string().contains("runs until"), "{name}: {err}");
        e.grant(&admin(), &inst, &org("a").uri, Some(Qualification { until: Some(end) })).await.unwrap();
        let b = e.reserve(&org("a"), &inst, req("10:00", "11:00", "2")).await.unwrap();
        assert_eq!(b.state, State::Pending, "{name}");
        e.grant(&admin(), &inst, &org("a").uri, Some(Qualification { until: None })).await.unwrap();
        assert!(matches!(e.decide(&org("a"), &b.id, "3", true, "").await.unwrap_err(), Error::Denied(_)));
        let b = e.decide(&admin(), &b.id, "4", true, "ok").await.unwrap();
        assert_eq!(b.state, State::Confirmed);
        let c = e.reserve(&org("a"), &inst, req("12:00", "13:00", "5")).await.unwrap();
        let c = e.decide(&admin(), &c.id, "6", false, "maintenance").await.unwrap();
        assert_eq!(c.state, State::Declined);
        // A declined booking frees its time.
        e.reserve(&org("a"), &inst, req("12:00", "13:00", "7")).await.unwrap();
    }
}

fn at(t: &str) -> Reserve {
    let (start, end) = t.split_once('/').unwrap();
    Reserve {
        start: start.into(),
        end: end.into(),
        hold_only: false,
        purpose: String::new(),
        idempotency_key: t.into(),
        voucher: None,
    }
}

/// Advances the paused clock until `e` reads `t`.
async fn advance_to(e: &Bookings, t: &str) {
    let target = time::parse("t", t).unwrap();
    tokio::time::advance(std::time::Duration::from_secs((target - e.now()) as u64)).await;
}

#[tokio::test(start_paused = true)]
async fn a_late_fee_is_charged_only_when_accepted() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let mut inst = instrument();
        inst.price_external_fen = 60_000; // 600 yuan an hour
        // Tomorrow 09:00 is within the 24 h cancellation deadline.
        let b = e.reserve(&org("a"), &inst, at("2026-11-24T09:00:00+08:00/2026-11-24T11:00:00+08:00")).await.unwrap();
        let terms = b.cancel_terms.expect("terms are recorded when booked");
        assert_eq!(time::format(terms.free_until), "2026-11-23T09:00:00+08:00", "{name}");
        assert_eq!(b.cancel_fee(terms, e.now()), 60_000, "{name}: 50% of 2 h at 600");
        let err = e.cancel(&org("a"), &b.id, "c0", "plans changed", 0).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "late_cancel_fee"), "{name}: {err}");
        assert!(err.to_string().contains("costs 600.00 yuan (50% of 1200.00 yuan"), "{name}: {err}");
        let err = e.cancel(&org("a"), &b.id, "c1", "plans changed", 59_999).await.unwrap_err();
        assert!(matches!(err, Error::Rule(_)), "{name}: {err}");
        assert_eq!(e.get(&org("a"), &b.id).unwrap().state, State::Confirmed, "{name}: a refusal changes nothing");
        let b = e.cancel(&org("a"), &b.id, "c2", "plans changed", 60_000).await.unwrap();
        assert_eq!((b.state, b.fee_fen), (State::Cancelled, 60_000), "{name}");

        let early = e.reserve(&org("a"), &inst, req("10:00", "12:00", "e")).await.unwrap();
        assert_eq!(early.cancel_fee(early.cancel_terms.unwrap(), e.now()), 0, "{name}");
        assert_eq!(e.cancel(&org("a"), &early.id, "c3", "", 0).await.unwrap().fee_fen, 0, "{name}");

        // Terms are the ones agreed when booked: a later rule change does
        // not raise the fee of a booking already made.
        let kept = e.reserve(&org("a"), &inst, req("14:00", "16:00", "k")).await.unwrap();
        let mut stricter = Rules::default_for(false);
        stricter.cancel_deadline_hours = 24 * 30;
        stricter.late_cancel_fee_percent = 100;
        e.set_rules(&admin(), &inst, stricter).unwrap();
        assert_eq!(e.cancel(&org("a"), &kept.id, "c4", "", 0).await.unwrap().fee_fen, 0, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn completion_comes_after_the_start_and_keeps_the_time_used() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let mut inst = instrument();
        inst.price_external_fen = 60_000;
        let b = e.reserve(&org("a"), &inst, req("14:00", "16:00", "u")).await.unwrap();
        let early = e.reserve(&org("b"), &inst, req("10:00", "12:00", "v")).await.unwrap();
        assert!(matches!(e.complete(&org("a"), &b.id, "d0", 90).await.unwrap_err(), Error::Denied(_)));
        let err = e.complete(&admin(), &b.id, "d1", 90).await.unwrap_err();
        assert!(matches!(err, Error::State(_)), "{name}: {err}");
        assert!(err.to_string().contains("before it starts at 2026-12-01 14:00"), "{name}: {err}");
        // The refused completion neither charged nor freed anything.
        let still = e.get(&admin(), &b.id).unwrap();
        assert_eq!((still.state, still.fee_fen), (State::Confirmed, 0), "{name}");
        let (raw, _) = crate::money::ledger::page(e.kv(), 0, 100).unwrap();
        assert!(raw.is_empty(), "{name}: no service record");
        let err = e.reserve(&org("c"), &inst, req("14:30", "15:30", "w")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "no_overlap"), "{name}: {err}");

        // Under way: it cannot be cancelled, only completed.
        advance_to(&e, "2026-12-01T10:30:00+08:00").await;
        let err = e.cancel(&org("b"), &early.id, "x0", "", i64::MAX).await.unwrap_err();
        assert!(err.to_string().contains("it began at 2026-12-01 10:00"), "{name}: {err}");

        advance_to(&e, "2026-12-01T14:30:00+08:00").await;
        let done = e.complete(&admin(), &b.id, "d2", 90).await.unwrap();
        assert_eq!((done.state, done.fee_fen), (State::Completed, 90_000), "{name}");
        let again = e.complete(&admin(), &b.id, "d2", 90).await.unwrap();
        assert_eq!(again, done);
        // Completed while still running: the rest of its slot stays taken.
        let err = e.reserve(&org("c"), &inst, req("15:30", "16:00", "w2")).await.unwrap_err();
        assert!(matches!(err, Error::Rule(ref v) if v.rule == "no_overlap"), "{name}: {err}");
        let (raw, head) = crate::money::ledger::page(e.kv(), 0, 100).unwrap();
        let records = crate::money::ledger::verify(&raw, &head).unwrap();
        assert_eq!(records.len(), 1, "{name}: a retried completion writes one record");
        assert!(
            matches!(
                records[0].body,
                crate::money::ledger::Body::Service { minutes: 90, fee_fen: 90_000, redemption: None, .. }
            ),
            "{name}: {:?}",
            records[0]
        );
        assert!(matches!(e.complete(&admin(), &b.id, "d3", 90).await.unwrap_err(), Error::State(_)));
    }
}

#[tokio::test]
async fn pages_follow_start_and_id_and_show_each_requester_only_their_own() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        // Twelve one-hour slots, booked out of order by two requesters.
        let hours = [15, 9, 12, 10, 18, 8, 14, 11, 17, 13, 16, 19];
        for (i, h) in hours.iter().enumerate() {
            let who = if i % 3 == 0 { "a" } else { "b" };
            let r = req(&format!("{h:02}:00"), &format!("{h:02}:59"), &format!("k{i}"));
            e.reserve(&org(who), &inst, r).await.unwrap();
        }
        let whole = |actor: &Actor| -> Vec<Booking> {
            let mut all: Vec<Booking> = e.kv.scan_json(keys::BOOKINGS).unwrap();
            all.retain(|b| may_see(actor, b));
            all.sort_by(|x, y| (x.start, &x.id).cmp(&(y.start, &y.id)));
            all
        };
        for actor in [admin(), org("a"), org("b"), org("nobody")] {
            for size in [1, 5, 12, 50] {
                let mut paged: Vec<Booking> = Vec::new();
                let mut after: Option<(Instant, String)> = None;
                loop {
                    let cursor = after.as_ref().map(|(s, id)| (*s, id.as_str()));
                    let (page, more) = e.list(&actor, None, true, cursor, size).unwrap();
                    assert!(page.len() <= size, "{name}: a page of {size} held {}", page.len());
                    paged.extend(page.iter().cloned());
                    if !more {
                        break;
                    }
                    let last = page.last().unwrap();
                    after = Some((last.start, last.id.clone()));
                }
                let ids = |v: &[Booking]| v.iter().map(|b| b.id.clone()).collect::<Vec<_>>();
                assert_eq!(ids(&paged), ids(&whole(&actor)), "{name}: {} in pages of {size}", actor.uri);
            }
        }
        assert_eq!(e.list(&org("a"), None, true, None, 100).unwrap().0.len(), 4, "{name}");
    }
}

#[tokio::test]
async fn bookings_stored_before_the_page_order_are_put_in_it_once() {
    for (name, store, _dir) in backends() {
        let e = engine(store);
        let inst = instrument();
        for (i, h) in [11, 9, 10].iter().enumerate() {
            let r = req(&format!("{h:02}:00"), &format!("{h:02}:59"), &format!("k{i}"));
            e.reserve(&org("a"), &inst, r).await.unwrap();
        }
        // As a store written by a build without the order: the bookings alone.
        let mut placed = Vec::new();
        for key in [keys::BY_START.to_vec(), keys::by_requester(&org("a").uri)] {
            placed.extend(e.kv.scan_after(&key, &key, usize::MAX).unwrap().into_iter().map(|(k, _)| k));
        }
        assert_eq!(placed.len(), 6, "{name}: each booking in both orders");
        e.kv.run(|tx| {
            for k in &placed {
                tx.remove(k)?;
            }
            Ok(tx.remove(keys::ORDERED)?)
        })
        .unwrap();
        assert!(e.list(&admin(), None, true, None, 10).unwrap().0.is_empty(), "{name}: the order is gone");
        assert_eq!(e.put_all_in_order().unwrap(), 3, "{name}");
        assert_eq!(e.put_all_in_order().unwrap(), 0, "{name}: once");
        let (page, more) = e.list(&org("a"), None, true, None, 10).unwrap();
        let starts: Vec<String> = page.iter().map(|b| time::format(b.start)).collect();
        assert_eq!(starts, ["2026-12-01T09:00:00+08:00", "2026-12-01T10:00:00+08:00", "2026-12-01T11:00:00+08:00"]);
        assert!(!more, "{name}");
    }
}
