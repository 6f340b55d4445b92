//! Paying with a voucher: one operation across two cities.
//!
//! The provider's node coordinates a try/confirm/cancel protocol with the
//! issuing city's node. The durable record that drives it is the booking
//! itself: its payment state says which call to the issuer is owed, and an
//! outbox mark (written in the same step) lets recovery find every booking
//! that still owes one. Each state change is recorded *before* the call it
//! implies, and every call is idempotent on the operation id, so a crash of
//! either node at any point is repaired by calling again:
//!
//! ```text
//! Trying ──try ok──▶ Held ──decide──▶ Confirming ──confirm ok──▶ Confirmed ──complete──▶ Posting ──post ok──▶ Posted
//!   │                 │                   │                          │
//!   └──refused/expired┴───────────────────┴──cancel/decline/expiry───┴──▶ Cancelling ──cancel ok──▶ Voided
//! ```
//!
//! The issuer decides alone in one case only: a try never confirmed is voided
//! once it expires; the provider then learns it at confirm and cancels too.

use serde::{Deserialize, Serialize};

use crate::{booking::time::Instant, error::Error, money::ledger::Redemption};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayState {
    Trying,
    Held,
    Confirming,
    Confirmed,
    Posting,
    Posted,
    Cancelling,
    Voided,
    /// The issuer refused a step it should have accepted; for the reconciler.
    Disputed,
}

impl PayState {
    /// Still owes the issuer a call, or waits on a hold: recovery looks at it.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            PayState::Trying | PayState::Held | PayState::Confirming | PayState::Posting | PayState::Cancelling
        )
    }
}

/// The provider's record of a voucher payment, kept in the booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub voucher: String,
    pub issuer: String,
    /// The operation id on both sides: the booking id.
    pub op: String,
    pub state: PayState,
    /// Confirm as soon as the issuer holds the money (a plain reserve), or
    /// wait for the requester's confirm (a hold).
    pub confirm_when_held: bool,
    pub held_fen: i64,
    pub posted_fen: i64,
    pub share_percent: u32,
    pub per_use_cap_fen: i64,
    /// When the booking was completed: the service time both sides record.
    pub service_at: Option<Instant>,
    pub detail: String,
}

impl Payment {
    pub fn trying(voucher: String, issuer: String, op: &str, confirm_when_held: bool) -> Self {
        Payment {
            voucher,
            issuer,
            op: op.into(),
            state: PayState::Trying,
            confirm_when_held,
            held_fen: 0,
            posted_fen: 0,
            share_percent: 0,
            per_use_cap_fen: 0,
            service_at: None,
            detail: String::new(),
        }
    }
}

/// The voucher's share of `fee_fen`, rounded half up to the fen, within
/// the per-use cap.
pub fn share_of(fee_fen: i64, share_percent: u32, per_use_cap_fen: i64) -> i64 {
    ((fee_fen * share_percent as i64 + 50) / 100).min(per_use_cap_fen)
}

/// The voucher id and its issuing city.
pub fn issuer_of(voucher: &str) -> Result<(String, String), Error> {
    match voucher.split_once('/') {
        Some((city, rest)) if corridor_proto::cities::city_by_slug(city).is_some() && rest.starts_with("v-") => {
            Ok((voucher.to_string(), city.to_string()))
        }
        _ => Err(Error::Invalid(format!("{voucher:?} is not a voucher id \"<issuing city>/v-<n>\""))),
    }
}

impl Payment {
    /// The requester confirms held booking `booking`: allowed once the
    /// issuer holds the money, and recorded as the decision to confirm there
    /// too.
    pub fn on_confirm(&mut self, booking: &str) -> Result<(), Error> {
        match self.state {
            PayState::Held => {
                self.state = PayState::Confirming;
                Ok(())
            }
            PayState::Trying => Err(Error::State(format!(
                "the voucher payment for {booking} is still being arranged with {}; confirm again in a moment",
                self.issuer
            ))),
            s => Err(Error::State(format!("cannot confirm {booking}: its voucher payment is {s:?}").to_lowercase())),
        }
    }

    /// The booking ends without use (cancelled, declined, expired): the
    /// issuer must release the money.
    pub fn release(&mut self) {
        if matches!(self.state, PayState::Trying | PayState::Held | PayState::Confirming | PayState::Confirmed) {
            self.state = PayState::Cancelling;
        }
    }

    /// Booking `booking` is completed with `fee_fen`: the voucher's share,
    /// within its caps and what the issuer holds, is to be posted.
    pub fn on_complete(&mut self, booking: &str, fee_fen: i64, now: Instant) -> Result<Redemption, Error> {
        if self.state != PayState::Confirmed {
            return Err(Error::State(format!(
                "cannot complete {booking}: its voucher payment is {:?}, not yet confirmed by {}; try again shortly",
                self.state, self.issuer
            )));
        }
        let amount = share_of(fee_fen, self.share_percent, self.per_use_cap_fen).min(self.held_fen);
        self.state = PayState::Posting;
        self.posted_fen = amount;
        self.service_at = Some(now);
        Ok(Redemption {
            op: self.op.clone(),
            voucher: self.voucher.clone(),
            issuer_city: self.issuer.clone(),
            amount_fen: amount,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(state: PayState) -> Payment {
        Payment {
            state,
            held_fen: 50_000,
            share_percent: 50,
            per_use_cap_fen: 30_000,
            ..Payment::trying("wuhu/v-1".into(), "wuhu".into(), "hefei/bk-1", false)
        }
    }

    #[test]
    fn confirm_waits_for_the_issuers_hold() {
        let mut p = held(PayState::Trying);
        assert!(p.on_confirm("hefei/bk-1").unwrap_err().to_string().contains("still being arranged with wuhu"));
        assert_eq!(p.state, PayState::Trying, "a refused confirm changes nothing");
        let mut p = held(PayState::Held);
        p.on_confirm("hefei/bk-1").unwrap();
        assert_eq!(p.state, PayState::Confirming, "the decision is recorded before the issuer hears it");
        let mut p = held(PayState::Voided);
        assert!(matches!(p.on_confirm("hefei/bk-1"), Err(Error::State(_))));
    }

    #[test]
    fn release_cancels_only_what_the_issuer_may_still_hold() {
        for s in [PayState::Trying, PayState::Held, PayState::Confirming, PayState::Confirmed] {
            let mut p = held(s);
            p.release();
            assert_eq!(p.state, PayState::Cancelling, "from {s:?}");
        }
        for s in [PayState::Posting, PayState::Posted, PayState::Voided, PayState::Disputed, PayState::Cancelling] {
            let mut p = held(s);
            p.release();
            assert_eq!(p.state, s, "a settled or settling payment is left alone");
        }
    }

    #[test]
    fn completion_posts_the_share_within_the_cap_and_the_hold() {
        let mut p = held(PayState::Held);
        assert!(p.on_complete("hefei/bk-1", 40_000, 9).is_err(), "not before the issuer confirmed");
        let mut p = held(PayState::Confirmed);
        // Half of 40,001 fen, rounded half up.
        let r = p.on_complete("hefei/bk-1", 40_001, 9).unwrap();
        assert_eq!((r.amount_fen, p.posted_fen, p.state, p.service_at), (20_001, 20_001, PayState::Posting, Some(9)));
        assert_eq!((r.op.as_str(), r.voucher.as_str(), r.issuer_city.as_str()), ("hefei/bk-1", "wuhu/v-1", "wuhu"));
        // The per-use cap (300 yuan) bounds a large fee's share.
        let mut p = held(PayState::Confirmed);
        assert_eq!(p.on_complete("hefei/bk-1", 1_000_000, 9).unwrap().amount_fen, 30_000);
        // Never more than the issuer holds.
        let mut p = Payment { held_fen: 10_000, ..held(PayState::Confirmed) };
        assert_eq!(p.on_complete("hefei/bk-1", 1_000_000, 9).unwrap().amount_fen, 10_000);
    }

    #[test]
    fn voucher_ids_name_their_issuing_city() {
        assert_eq!(issuer_of("wuhu/v-12").unwrap(), ("wuhu/v-12".to_string(), "wuhu".to_string()));
        for bad in ["v-12", "paris/v-1", "wuhu/bk-1", ""] {
            assert!(matches!(issuer_of(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert_eq!(share_of(101, 50, i64::MAX), 51, "half a fen rounds up");
        assert_eq!(share_of(1_000_000, 100, 2_000), 2_000);
    }
}
