//! The provider's side of a voucher payment: [`Payments`] drives each
//! booking's payment state (see `payment`) through the issuer's
//! try/confirm/cancel/post calls, and the recovery pass finds every booking
//! that still owes its issuer a call. [`Issuers`] is how it reaches issuers;
//! `wire::peers` implements it over gRPC.

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{
    booking::{Booking, Bookings, State, absent, keys, rules::Rules, time::Instant},
    error::Error,
    kv::Flush,
    money::{
        payment::PayState,
        voucher::{PostDebit, TryDebit, Vouchers},
    },
};

/// A call to an issuing city's node.
#[derive(Debug, Clone)]
pub enum IssuerCall {
    Try(TryDebit),
    Confirm { op: String },
    Cancel { op: String, voucher: String, reason: String },
    Post(PostDebit),
}

/// What the issuer answered to a call it accepted.
#[derive(Debug, Clone)]
pub struct IssuerReply {
    pub amount_fen: i64,
    pub share_percent: u32,
    pub per_use_cap_fen: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// A definite no: retrying will not change it.
    #[error("{0}")]
    Refused(String),
    /// No answer: the call may or may not have taken effect.
    #[error("{0}")]
    Unreachable(String),
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<IssuerReply, CallError>> + Send + 'a>>;

/// How a provider's node reaches issuing cities' nodes.
pub trait Issuers: Send + Sync + 'static {
    fn call<'a>(&'a self, issuer: &'a str, call: IssuerCall) -> CallFuture<'a>;
}

pub use corridor_telemetry::failpoint;

/// The provider's coordinator.
pub struct Payments {
    issuers: Arc<dyn Issuers>,
    /// One driver per booking at a time (the request and recovery may race).
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// How a drive ended.
pub enum Driven {
    /// Nothing more to do now (final, or waiting for the requester).
    Settled(Booking),
    /// The issuer did not answer; recovery will carry on.
    Waiting(Booking, String),
}

impl Payments {
    pub fn new(issuers: Arc<dyn Issuers>) -> Self {
        Payments { issuers, locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    fn lock(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let h = id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[h % self.locks.len()]
    }

    /// Advances one booking's payment as far as it goes now.
    pub async fn drive(&self, bookings: &Bookings, id: &str) -> Result<Driven, Error> {
        let _one = self.lock(id).lock().await;
        loop {
            let b: Booking = bookings.kv().read_json(&keys::booking(id))?.ok_or_else(|| absent(id))?;
            let Some(p) = b.payment.clone() else { return Ok(Driven::Settled(b)) };
            let now = bookings.now();
            let live = b.state_at(now).is_live();
            let call = match p.state {
                PayState::Trying | PayState::Held if !live => {
                    // Repeated after a crash if lost: the next call is a cancel.
                    update(bookings, id, Flush::Later, &|b, _, _| {
                        b.release_payment();
                        Ok(())
                    })
                    .await?;
                    continue;
                }
                PayState::Held | PayState::Confirmed | PayState::Posted | PayState::Voided | PayState::Disputed => {
                    return Ok(Driven::Settled(b));
                }
                PayState::Trying => IssuerCall::Try(TryDebit {
                    op: p.op.clone(),
                    voucher: p.voucher.clone(),
                    requester: b.requester.clone(),
                    provider_city: bookings.city().into(),
                    instrument: format!("{}/{}", bookings.city(), b.instrument),
                    fee_fen: b.expected_fee(),
                    hold_expires: b.hold_expires.unwrap_or(now),
                }),
                PayState::Confirming => IssuerCall::Confirm { op: p.op.clone() },
                PayState::Cancelling => IssuerCall::Cancel {
                    op: p.op.clone(),
                    voucher: p.voucher.clone(),
                    reason: if b.note.is_empty() { format!("booking {:?}", b.state_at(now)) } else { b.note.clone() },
                },
                PayState::Posting => IssuerCall::Post(PostDebit {
                    op: p.op.clone(),
                    amount_fen: p.posted_fen,
                    provider_institution: b.institution.clone(),
                    provider_uscc: b.institution_uscc.clone(),
                    service_at: p.service_at.unwrap_or(b.updated_at),
                }),
            };
            let answer = self.issuers.call(&p.issuer, call).await;
            let from = p.state;
            failpoint(after(from));
            match answer {
                Err(CallError::Unreachable(why)) => {
                    // What the caller is told is held must be on disk.
                    bookings.kv().durable().await?;
                    return Ok(Driven::Waiting(b, format!("{} did not answer: {why}", p.issuer)));
                }
                Ok(reply) => {
                    // A decision to confirm must be on disk before the
                    // issuer hears it, or a crash could leave the issuer
                    // committed to a booking this node has lost. Every other
                    // change here is repaired by repeating its call.
                    let flush = if from == PayState::Trying { Flush::Wait } else { Flush::Later };
                    update(bookings, id, flush, &|b, rules, now| {
                        accepted(b, rules, now, from, &reply);
                        Ok(())
                    })
                    .await?;
                }
                Err(CallError::Refused(why)) => {
                    // A refusal is answered as final: it must be on disk.
                    update(bookings, id, Flush::Wait, &|b, _, _| {
                        refused(b, from, &why);
                        Ok(())
                    })
                    .await?;
                }
            }
        }
    }

    /// Drives every booking that still owes its issuer a call, and voids this
    /// node's own expired tries as an issuer. Returns how many are left
    /// waiting on an issuer.
    pub async fn recover(&self, bookings: &Bookings, vouchers: &Vouchers) -> Result<usize, Error> {
        let ids: Vec<String> = bookings
            .kv()
            .scan_raw(keys::OUTBOX)?
            .into_iter()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect();
        let mut waiting = 0;
        for id in ids {
            match self.drive(bookings, &id).await {
                Ok(Driven::Waiting(_, why)) => {
                    waiting += 1;
                    tracing::debug!(booking = %id, %why, "voucher payment waits for its issuer");
                }
                Ok(Driven::Settled(_)) => {}
                Err(e) => tracing::warn!(booking = %id, error = %e, "voucher payment could not advance"),
            }
        }
        let expired = vouchers.expire_debits().await?;
        if expired > 0 {
            tracing::info!(expired, "voided voucher holds that expired unconfirmed");
        }
        Ok(waiting)
    }
}

/// The failpoint just after the issuer answered the call made from `s`.
fn after(s: PayState) -> &'static str {
    match s {
        PayState::Trying => "provider.after_try",
        PayState::Confirming => "provider.after_confirm",
        PayState::Cancelling => "provider.after_cancel",
        PayState::Posting => "provider.after_post",
        _ => "provider.after_none",
    }
}

/// One local step on a booking with a payment.
async fn update(
    bookings: &Bookings,
    id: &str,
    flush: Flush,
    change: &(dyn Fn(&mut Booking, &Rules, Instant) -> Result<(), Error> + Sync),
) -> Result<Booking, Error> {
    bookings
        .kv()
        .step(flush, |tx| Bookings::apply_in(tx, id, bookings.now(), &|b, rules, now, _| change(b, rules, now)))
        .await
}

/// The issuer accepted the call made from state `from`. A state that moved
/// on meanwhile (the requester cancelled during a try) is left as it is:
/// its own call follows.
fn accepted(b: &mut Booking, rules: &Rules, now: Instant, from: PayState, reply: &IssuerReply) {
    let live_hold = b.state_at(now) == State::Held;
    let Some(p) = b.payment.as_mut() else { return };
    if p.state != from {
        return;
    }
    match from {
        PayState::Trying => {
            p.held_fen = reply.amount_fen;
            p.share_percent = reply.share_percent;
            p.per_use_cap_fen = reply.per_use_cap_fen;
            p.state = PayState::Held;
            if p.confirm_when_held && live_hold {
                // The decision, recorded before the issuer hears it.
                p.state = PayState::Confirming;
                b.hold_expires = None;
                b.state = if rules.approval_required { State::Pending } else { State::Confirmed };
            }
        }
        PayState::Confirming => p.state = PayState::Confirmed,
        PayState::Cancelling => p.state = PayState::Voided,
        PayState::Posting => p.state = PayState::Posted,
        _ => {}
    }
}

/// The issuer refused the call made from state `from`.
fn refused(b: &mut Booking, from: PayState, why: &str) {
    let Some(p) = b.payment.as_mut() else { return };
    if p.state != from {
        return;
    }
    p.detail = why.to_string();
    let (next, note) = match from {
        // Nothing is held at the issuer: the booking is released here.
        PayState::Trying => (PayState::Voided, "voucher refused"),
        // The issuer gave up the hold (it expired there): cancel both sides.
        PayState::Confirming => (PayState::Cancelling, "voucher hold lost at the issuer"),
        PayState::Cancelling | PayState::Posting => {
            p.state = PayState::Disputed;
            return;
        }
        _ => return,
    };
    p.state = next;
    if b.state.is_live() {
        b.state = State::Cancelled;
        b.hold_expires = None;
        b.note = format!("{note}: {why}");
    }
}

/// A violation for a reserve whose voucher was refused.
pub fn refusal(b: &Booking) -> Option<Error> {
    let p = b.payment.as_ref()?;
    (p.state == PayState::Voided && b.state == State::Cancelled && b.note.starts_with("voucher refused")).then(|| {
        Error::State(format!(
            "voucher {} was refused by {}: {}; booking {} was released",
            p.voucher, p.issuer, p.detail, b.id
        ))
    })
}
