//! What an operator watches at a node, read from its store: bookings by
//! state (open holds among them) and the voucher money its vouchers hold.
//!
//! Counted by one pass over the bookings and vouchers, which decodes only
//! the fields counted, and kept for [`FRESH_FOR`]: scrapes (from several
//! Prometheus replicas, or a curl loop) cost at most one pass per period.
//! At 100,000 bookings a pass takes tens of milliseconds; keeping counters
//! up to date at every write instead would put work on the reservation path
//! and would still need a pass for holds that expire without a write.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{
    booking::{Bookings, State, keys, time},
    error::Error,
};

/// How long one pass's counts are served.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

/// Every booking state, in the order the counts hold them.
pub const STATES: [State; 7] = [
    State::Held,
    State::Pending,
    State::Confirmed,
    State::Cancelled,
    State::Declined,
    State::Expired,
    State::Completed,
];

/// The label value of a state, as the API spells it.
pub fn state_label(s: State) -> &'static str {
    match s {
        State::Held => "held",
        State::Pending => "pending",
        State::Confirmed => "confirmed",
        State::Cancelled => "cancelled",
        State::Declined => "declined",
        State::Expired => "expired",
        State::Completed => "completed",
    }
}

/// One pass's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bookings by state as of the pass (a hold past its expiry counts as
    /// expired), in [`STATES`] order.
    pub bookings: [u64; 7],
    /// Money held (tried or confirmed, not yet posted) on this city's
    /// vouchers, in fen.
    pub voucher_held_fen: i64,
}

impl Counts {
    pub fn bookings_in(&self, s: State) -> u64 {
        self.bookings[STATES.iter().position(|x| *x == s).expect("every state is listed")]
    }
}

/// The fields a count reads; the rest of each record is skipped unparsed.
#[derive(Deserialize)]
struct BookingBrief {
    state: State,
    hold_expires: Option<time::Instant>,
}

#[derive(Deserialize)]
struct VoucherBrief {
    held_fen: i64,
}

/// Counts every booking and voucher of `bookings` now.
pub fn count(bookings: &Bookings) -> Result<Counts, Error> {
    let now = bookings.now();
    let mut out = Counts::default();
    for raw in bookings.kv().scan_raw(keys::BOOKINGS)? {
        // A record this pass cannot read is for the paths that use it to
        // report; a gauge skips it.
        let Ok(b) = serde_json::from_slice::<BookingBrief>(&raw) else { continue };
        let state = match (b.state, b.hold_expires) {
            (State::Held, Some(e)) if e <= now => State::Expired,
            (s, _) => s,
        };
        out.bookings[STATES.iter().position(|x| *x == state).expect("every state is listed")] += 1;
    }
    for raw in bookings.kv().scan_raw(crate::money::voucher::VOUCHERS)? {
        if let Ok(v) = serde_json::from_slice::<VoucherBrief>(&raw) {
            out.voucher_held_fen += v.held_fen;
        }
    }
    Ok(out)
}

/// [`count`], at most once per [`FRESH_FOR`].
#[derive(Default)]
pub struct Cached {
    last: Mutex<Option<(Instant, Counts)>>,
}

impl Cached {
    pub fn get(&self, bookings: &Bookings) -> Counts {
        let mut last = self.last.lock().expect("poisoned");
        if let Some((at, counts)) = *last
            && at.elapsed() < FRESH_FOR
        {
            return counts;
        }
        match count(bookings) {
            Ok(counts) => {
                *last = Some((Instant::now(), counts));
                counts
            }
            Err(e) => {
                tracing::warn!(error = %e, "counting bookings for the metrics failed");
                last.map(|(_, c)| c).unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        booking::{Booking, time::Clock},
        catalog::model::PriceUnit,
        kv::{Kv, txn::MemKv},
    };

    struct At(time::Instant);
    impl Clock for At {
        fn now(&self) -> time::Instant {
            self.0
        }
    }

    fn booking(id: u32, state: State, hold_expires: Option<time::Instant>) -> Booking {
        Booking {
            id: format!("hefei/bk-{id}"),
            instrument: "tem-1".into(),
            requester: "spiffe://corridor/org/acme".into(),
            start: 2_000,
            end: 5_600,
            setup: 0,
            cooldown: 0,
            state,
            hold_expires,
            created_at: 0,
            updated_at: 0,
            purpose: String::new(),
            price_fen: 10_000,
            price_unit: PriceUnit::Hour,
            fee_fen: 10_000,
            actual_minutes: 0,
            note: String::new(),
            institution: String::new(),
            institution_uscc: String::new(),
            payment: None,
            cancel_terms: None,
        }
    }

    fn bookings_with(records: Vec<(Vec<u8>, Vec<u8>)>) -> Bookings {
        let store = Arc::new(MemKv::default());
        use crate::kv::txn::TxnStore;
        store
            .atomically(&mut |tx| {
                for (k, v) in &records {
                    tx.put(k, v.clone())?;
                }
                Ok(())
            })
            .unwrap();
        Bookings::new("hefei", Kv::new(store), Arc::new(At(1_000)))
    }

    #[test]
    fn bookings_are_counted_by_state_and_voucher_money_summed() {
        let mut records = Vec::new();
        let states = [
            (State::Held, Some(1_500)),
            (State::Held, Some(1_500)),
            // Past its expiry, not yet written down: expired.
            (State::Held, Some(900)),
            (State::Confirmed, None),
            (State::Cancelled, None),
            (State::Completed, None),
        ];
        for (i, (s, e)) in states.into_iter().enumerate() {
            let b = booking(i as u32, s, e);
            records.push((keys::booking(&b.id), serde_json::to_vec(&b).unwrap()));
        }
        for (i, held) in [5_000i64, 2_500].into_iter().enumerate() {
            let v = serde_json::json!({"id": format!("hefei/v-{i}"), "held_fen": held, "spent_fen": 0});
            records.push((format!("v/hefei/v-{i}").into_bytes(), serde_json::to_vec(&v).unwrap()));
        }
        let counts = count(&bookings_with(records)).unwrap();
        assert_eq!(counts.bookings, [2, 0, 1, 1, 0, 1, 1]);
        assert_eq!(counts.bookings_in(State::Held), 2);
        assert_eq!(counts.voucher_held_fen, 7_500);
    }

    #[test]
    #[ignore = "a measurement: cargo test -p corridor-node --release gauges -- --ignored --nocapture"]
    fn a_pass_over_100k_bookings() {
        let records = (0..100_000)
            .map(|i| {
                let b = booking(i, State::Confirmed, None);
                (keys::booking(&b.id), serde_json::to_vec(&b).unwrap())
            })
            .collect();
        let bookings = bookings_with(records);
        let started = Instant::now();
        let counts = count(&bookings).unwrap();
        eprintln!("one pass over 100,000 bookings: {:?}", started.elapsed());
        assert_eq!(counts.bookings_in(State::Confirmed), 100_000);
    }
}
