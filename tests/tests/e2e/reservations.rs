//! Reservations through the gateway: rules, identities, and a concurrency
//! history checked for overlaps, lost acknowledgements and phantom bookings.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use corridor_certs::{Identity, IssueOptions};
use corridor_node::booking::time::format as rfc;
use corridor_node::ops::demo::{Scale, city_inventory};
use corridor_tests::{Mesh, pb};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::Code;

fn parse(s: &str) -> i64 {
    OffsetDateTime::parse(s, &Rfc3339).unwrap().unix_timestamp()
}

/// Local midnight a week from now: far enough for every default notice rule.
fn next_week() -> i64 {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let day = 86_400;
    let shanghai_midnight = (now + 8 * 3600) / day * day - 8 * 3600;
    shanghai_midnight + 7 * day
}

fn open_rules(setup: u32, cooldown: u32) -> pb::BookingRules {
    pb::BookingRules {
        setup_minutes: setup,
        cooldown_minutes: cooldown,
        min_minutes: 15,
        max_minutes: 600,
        max_advance_days: 365,
        cancel_deadline_hours: 24,
        late_cancel_fee_percent: 50,
        ..Default::default()
    }
}

fn hefei_instruments(n: usize) -> Vec<String> {
    city_inventory(Scale::G60, "hefei").into_iter().take(n).map(|r| format!("hefei/{}", r.local_id)).collect()
}

async fn set_rules(mesh: &Mesh, instrument: &str, rules: pb::BookingRules) {
    mesh.gateway("admin-hefei")
        .set_booking_rules(pb::SetBookingRulesRequest { instrument_id: instrument.into(), rules: Some(rules) })
        .await
        .unwrap();
}

fn reserve(instrument: &str, start: i64, minutes: i64, key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        instrument_id: instrument.into(),
        start: rfc(start),
        end: rfc(start + minutes * 60),
        hold_only: false,
        purpose: "test".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// A booking action with no reason given.
fn action(booking: &pb::Booking, key: &str) -> pb::BookingActionRequest {
    pb::BookingActionRequest { booking_id: booking.id.clone(), idempotency_key: key.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identity_is_refused_the_same_slot_with_the_conflicting_time() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let other = Identity::Org("other".into());
    mesh.issue("org-other", &other, &IssueOptions::for_identity(&other));
    let inst = &hefei_instruments(1)[0];
    set_rules(&mesh, inst, open_rules(20, 0)).await;
    let start = next_week() + 10 * 3600;

    let b = mesh.gateway("org-demo").reserve(reserve(inst, start, 60, "a")).await.unwrap().into_inner();
    assert_eq!(b.state, pb::BookingState::Confirmed as i32);
    assert_eq!(b.requester, "spiffe://corridor/org/demo", "the node sees the caller, not the gateway");
    assert_eq!(parse(&b.occupied_start), start - 20 * 60);

    let err = mesh.gateway("org-other").reserve(reserve(inst, start, 60, "b")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("rule no_overlap:"), "{}", err.message());
    let occupied = rfc(start - 20 * 60);
    assert!(err.message().contains(&occupied[..16].replace('T', " ")), "{}", err.message());

    // Each sees only their own bookings; the city admin sees both.
    let mine = |who: &str| {
        let mut gw = mesh.gateway(who);
        async move {
            gw.list_bookings(pb::ListBookingsRequest { city: "hefei".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .bookings
                .len()
        }
    };
    mesh.gateway("org-other").reserve(reserve(inst, start + 3 * 3600, 60, "c")).await.unwrap();
    assert_eq!(mine("org-demo").await, 1);
    assert_eq!(mine("org-other").await, 1);
    assert_eq!(mine("admin-hefei").await, 2);
    let err =
        mesh.gateway("org-other").get_booking(pb::GetBookingRequest { booking_id: b.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "another org's booking is not even visible");
    let err = mesh.gateway("org-other").cancel_booking(action(&b, "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Another city's admin has no say in hefei.
    let err = mesh.gateway("admin-wuhu").cancel_booking(action(&b, "y")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_flow_and_bad_times_through_the_gateway() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let inst = &hefei_instruments(1)[0];
    let mut rules = open_rules(0, 0);
    rules.approval_required = true;
    set_rules(&mesh, inst, rules).await;
    let start = next_week() + 9 * 3600;
    let mut org = mesh.gateway("org-demo");
    let b = org.reserve(reserve(inst, start, 60, "p")).await.unwrap().into_inner();
    assert_eq!(b.state, pb::BookingState::Pending as i32);
    let err = org.approve_booking(action(&b, "a0")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let approved = mesh.gateway("admin-hefei").approve_booking(action(&b, "a1")).await.unwrap().into_inner();
    assert_eq!(approved.state, pb::BookingState::Confirmed as i32);

    // A time with no zone is refused with a hint, and nothing is stored.
    let mut naive = reserve(inst, start + 7200, 60, "z");
    naive.start = naive.start.trim_end_matches("+08:00").to_string();
    let err = org.reserve(naive).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no UTC offset"), "{}", err.message());
    // The same instant written in UTC is the same slot.
    let mut utc = reserve(inst, start, 60, "u");
    utc.start = OffsetDateTime::from_unix_timestamp(start).unwrap().format(&Rfc3339).unwrap();
    utc.end = OffsetDateTime::from_unix_timestamp(start + 3600).unwrap().format(&Rfc3339).unwrap();
    let err = org.reserve(utc).await.unwrap_err();
    assert!(err.message().contains("no_overlap"), "{}", err.message());
    let list = org.list_bookings(pb::ListBookingsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.bookings.len(), 1);
    assert_eq!(list.nodes.len(), 9, "an org's bookings are gathered from every city");
}

/// What one client saw.
#[derive(Debug, Clone)]
enum Outcome {
    /// A booking the node acknowledged, as it was then.
    Acked(Box<pb::Booking>),
    /// Refused by a rule.
    Refused,
    /// Our own cancellation of an acknowledged booking.
    Cancelled(String),
}

/// A deterministic pseudo-random sequence per client.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_double_book() {
    const CLIENTS: u64 = 64;
    const CALLS: u64 = 12;
    let mesh = Arc::new(Mesh::start(Some(Scale::G60)).await);
    let instruments = hefei_instruments(3);
    for (i, inst) in instruments.iter().enumerate() {
        set_rules(&mesh, inst, open_rules(15 * i as u32, 10)).await;
    }
    let orgs: Vec<String> = (0..8).map(|i| format!("org-c{i}")).collect();
    for o in &orgs {
        let id = Identity::from_name(o).unwrap();
        mesh.issue(o, &id, &IssueOptions::for_identity(&id));
    }
    let base = next_week();
    let history: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::default();

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (mesh, instruments, history) = (mesh.clone(), instruments.clone(), history.clone());
            let org = orgs[c as usize % orgs.len()].clone();
            tokio::spawn(async move {
                let mut gw = mesh.gateway(&org);
                let mut rng = Lcg(c + 1);
                let record = |o: Outcome| history.lock().unwrap().push((org.clone(), o));
                for k in 0..CALLS {
                    let inst = &instruments[rng.next(3) as usize];
                    // Slots on a 15-minute grid over 12 hours: plenty of overlap.
                    let start = base + 8 * 3600 + rng.next(48) as i64 * 900;
                    let minutes = 30 + rng.next(8) as i64 * 15;
                    let mut req = reserve(inst, start, minutes, &format!("c{c}-{k}"));
                    req.hold_only = rng.next(3) == 0;
                    let mut result = gw.reserve(req.clone()).await;
                    // Sometimes retry with the same key. An acknowledged answer
                    // must come back unchanged; a refusal is not stored, so the
                    // retry is decided afresh (a cancellation may have freed the slot).
                    if rng.next(4) == 0 {
                        let again = gw.reserve(req.clone()).await;
                        match (&result, &again) {
                            (Ok(a), Ok(b)) => {
                                assert_eq!(a.get_ref().id, b.get_ref().id, "a retry made a second booking")
                            }
                            (Ok(a), Err(e)) => panic!("retry of acknowledged {} failed: {e:?}", a.get_ref().id),
                            (Err(_), _) => result = again,
                        }
                    }
                    let booking = match result {
                        Ok(b) => b.into_inner(),
                        Err(e) => {
                            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                            record(Outcome::Refused);
                            continue;
                        }
                    };
                    let booking = if req.hold_only {
                        let r = action(&booking, &format!("c{c}-{k}-confirm"));
                        gw.confirm_booking(r).await.expect("confirming a fresh hold").into_inner()
                    } else {
                        booking
                    };
                    assert_eq!(booking.state, pb::BookingState::Confirmed as i32);
                    record(Outcome::Acked(Box::new(booking.clone())));
                    if rng.next(6) == 0 {
                        let r = pb::BookingActionRequest {
                            booking_id: booking.id.clone(),
                            idempotency_key: format!("c{c}-{k}-cancel"),
                            reason: "test".into(),
                            // Bookings a week ahead: free to cancel.
                            accept_fee_fen: None,
                        };
                        gw.cancel_booking(r).await.expect("cancelling our own booking");
                        record(Outcome::Cancelled(booking.id.clone()));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    let all = mesh
        .gateway("admin-hefei")
        .list_bookings(pb::ListBookingsRequest { city: "hefei".into(), include_closed: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .bookings;
    let history = history.lock().unwrap().clone();
    let acked: HashMap<String, pb::Booking> = history
        .iter()
        .filter_map(|(_, o)| if let Outcome::Acked(b) = o { Some((b.id.clone(), (**b).clone())) } else { None })
        .collect();
    let cancelled: Vec<&String> =
        history.iter().filter_map(|(_, o)| if let Outcome::Cancelled(id) = o { Some(id) } else { None }).collect();
    let refused = history.iter().filter(|(_, o)| matches!(o, Outcome::Refused)).count();
    assert!(!acked.is_empty() && refused > 0, "the mix must contend: {} acked, {refused} refused", acked.len());

    // 1. No two live bookings overlap, set-up and cool-down included.
    let live = [pb::BookingState::Confirmed as i32, pb::BookingState::Pending as i32, pb::BookingState::Held as i32];
    let mut by_instrument: BTreeMap<&str, Vec<(i64, i64, &str)>> = BTreeMap::new();
    for b in all.iter().filter(|b| live.contains(&b.state)) {
        by_instrument.entry(&b.instrument_id).or_default().push((
            parse(&b.occupied_start),
            parse(&b.occupied_end),
            &b.id,
        ));
    }
    for (inst, mut spans) in by_instrument {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{inst}: {} and {} overlap", w[0].2, w[1].2);
        }
    }
    // 2. Every acknowledged confirmation is there, unchanged, unless we cancelled it.
    let fin: HashMap<&str, &pb::Booking> = all.iter().map(|b| (b.id.as_str(), b)).collect();
    for (id, b) in &acked {
        let f = fin.get(id.as_str()).unwrap_or_else(|| panic!("acknowledged {id} is missing"));
        let want = if cancelled.contains(&id) { pb::BookingState::Cancelled } else { pb::BookingState::Confirmed };
        assert_eq!(f.state, want as i32, "{id}");
        assert_eq!((&f.start, &f.end, &f.requester), (&b.start, &b.end, &b.requester), "{id}");
    }
    // 3. Nothing refused is present: every stored booking is one a client was told about.
    for b in &all {
        assert!(acked.contains_key(&b.id), "{} was never acknowledged to anyone", b.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_lists_page_across_cities_without_repeats_or_gaps() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let base = next_week() + 9 * 3600;
    let mut gw = mesh.gateway("org-demo");
    let mut made = 0;
    for city in ["hefei", "wuhu", "suzhou"] {
        let inst = city_inventory(Scale::G60, city)
            .into_iter()
            .find(|r| r.status == corridor_node::catalog::model::Status::Available && !r.training_required)
            .map(|r| format!("{city}/{}", r.local_id))
            .unwrap();
        for k in 0..4 {
            // Same start times in every city, so the order leans on the id.
            gw.reserve(reserve(&inst, base + k * 3600, 30, &format!("{city}-{k}"))).await.unwrap();
            made += 1;
        }
    }
    let whole = gw.list_bookings(pb::ListBookingsRequest::default()).await.unwrap().into_inner();
    assert_eq!(whole.bookings.len(), made);
    assert!(whole.next_page_token.is_empty());
    let mut paged = Vec::new();
    let mut req = pb::ListBookingsRequest { page_size: 5, ..Default::default() };
    loop {
        let page = gw.list_bookings(req.clone()).await.unwrap().into_inner();
        assert!(page.bookings.len() <= 5);
        paged.extend(page.bookings.into_iter().map(|b| b.id));
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let ids: Vec<String> = whole.bookings.into_iter().map(|b| b.id).collect();
    assert_eq!(paged, ids, "pages of 5 give the same list, in the same order");
    req.page_token = "not a token".into();
    assert_eq!(gw.list_bookings(req).await.unwrap_err().code(), Code::InvalidArgument);
}
