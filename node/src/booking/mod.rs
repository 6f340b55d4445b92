//! Reservations: the owning node is the single authority for each
//! instrument's calendar. Every change is one atomic step over the
//! instrument's calendar, the booking and the idempotency record, and is
//! acknowledged only once durable. No gRPC and no sled here.

pub mod calendar;
pub mod keys;
pub mod rules;
pub mod time;

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::json;

use self::{
    calendar::{Busy, Calendar, Days, Entry, days_of},
    rules::{CancelTerms, Rules},
    time::{Clock, Instant, MINUTE},
};
use crate::{
    audit,
    catalog::model::{InstrumentRecord, PriceUnit, Status, yuan},
    error::{Error, Violation},
    kv::{Kv, corrupt, get_json, put_json, txn::Txn},
    money::{ledger, payment::Payment},
};

/// A decision about one booking, made inside an atomic step.
pub(crate) type Change<'a> = dyn Fn(&mut Booking, &Rules, Instant, &mut dyn Txn) -> Result<(), Error> + 'a;

/// Writes a booking and keeps its outbox mark: present while its voucher
/// payment still needs a call to the issuer, so that recovery finds it.
pub(crate) fn save_booking(tx: &mut dyn Txn, b: &Booking) -> Result<(), Error> {
    put_json(tx, &keys::booking(&b.id), b)?;
    if b.payment.as_ref().is_some_and(|p| p.state.in_flight()) {
        tx.put(&keys::outbox(&b.id), b.id.as_bytes().to_vec())?;
    } else {
        tx.remove(&keys::outbox(&b.id))?;
    }
    Ok(())
}

/// Puts a new booking in the orders that pages are read in: a booking's
/// start and requester never change, so this is written once.
fn put_in_order(tx: &mut dyn Txn, b: &Booking) -> Result<(), Error> {
    let id = b.id.as_bytes().to_vec();
    tx.put(&keys::in_order(keys::BY_START.to_vec(), b.start, &b.id), id.clone())?;
    tx.put(&keys::in_order(keys::by_requester(&b.requester), b.start, &b.id), id)?;
    Ok(())
}

/// Training for one instrument, held by one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qualification {
    /// A slot must end by then; None: no end.
    pub until: Option<Instant>,
}

impl Qualification {
    /// The grant stored under `key`, if any. Grants stored before they could
    /// end were the bytes "1".
    fn read(tx: &mut dyn Txn, key: &[u8]) -> Result<Option<Self>, Error> {
        match tx.get(key)? {
            None => Ok(None),
            Some(bytes) if bytes == b"1" => Ok(Some(Qualification { until: None })),
            Some(bytes) => crate::kv::decode(key, &bytes).map(Some),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Held,
    Pending,
    Confirmed,
    Cancelled,
    Declined,
    Expired,
    Completed,
}

impl State {
    /// States that occupy the instrument.
    pub fn is_live(self) -> bool {
        matches!(self, State::Held | State::Pending | State::Confirmed)
    }

    /// States whose time stays taken in the calendar: the live ones, and a
    /// completed booking, whose time was used (and may still be running).
    pub fn holds_time(self) -> bool {
        self.is_live() || self == State::Completed
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub id: String,
    /// The instrument's local id.
    pub instrument: String,
    pub requester: String,
    pub start: Instant,
    pub end: Instant,
    pub setup: i64,
    pub cooldown: i64,
    pub state: State,
    pub hold_expires: Option<Instant>,
    pub created_at: Instant,
    pub updated_at: Instant,
    pub purpose: String,
    pub price_fen: i64,
    pub price_unit: PriceUnit,
    pub fee_fen: i64,
    pub actual_minutes: u32,
    pub note: String,
    /// The owning institution, for the ledger's service entries.
    #[serde(default)]
    pub institution: String,
    #[serde(default)]
    pub institution_uscc: String,
    /// Set when a voucher pays part of the fee.
    #[serde(default)]
    pub payment: Option<Payment>,
    /// The terms agreed when booked. Absent on bookings stored before they
    /// were recorded; the instrument's current rules then apply.
    #[serde(default)]
    pub cancel_terms: Option<CancelTerms>,
}

impl Booking {
    /// The state as of `now`: a hold past its expiry is expired, whether or
    /// not that has been written down yet.
    pub fn state_at(&self, now: Instant) -> State {
        match (self.state, self.hold_expires) {
            (State::Held, Some(e)) if e <= now => State::Expired,
            (s, _) => s,
        }
    }

    /// What the slot would cost if used as booked.
    pub fn expected_fee(&self) -> i64 {
        match self.price_unit {
            PriceUnit::Hour => fee_for_minutes(self.price_fen, (self.end - self.start) / MINUTE),
            PriceUnit::Sample => self.price_fen,
        }
    }

    /// What cancelling at `now` costs: a late fee on a confirmed booking
    /// past its free-cancellation time, else nothing.
    pub fn cancel_fee(&self, terms: CancelTerms, now: Instant) -> i64 {
        if self.state_at(now) == State::Confirmed && now > terms.free_until {
            self.expected_fee() * terms.percent as i64 / 100
        } else {
            0
        }
    }

    /// The booking ends without use (cancelled, declined, expired): the
    /// issuer must release the money.
    pub fn release_payment(&mut self) {
        if let Some(p) = self.payment.as_mut() {
            p.release();
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            booking: self.id.clone(),
            start: self.start,
            end: self.end,
            setup: self.setup,
            cooldown: self.cooldown,
            hold_expires: self.hold_expires,
        }
    }
}

/// Hourly price for `minutes`, rounded half up to the fen.
fn fee_for_minutes(price_per_hour: i64, minutes: i64) -> i64 {
    (price_per_hour * minutes + 30) / 60
}

/// Who is acting, as the node sees it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Identity URI.
    pub uri: String,
    /// The city's admin: sees and changes every booking of the city.
    pub admin: bool,
    /// May make bookings (organisations, and the city's admin).
    pub may_book: bool,
    /// Reads every record but changes none (the reconciler).
    pub reader: bool,
}

/// Parses an availability window: explicit zones, at most 31 days.
pub fn parse_window(from: &str, to: &str) -> Result<(Instant, Instant), Error> {
    let from = time::parse("from", from).map_err(Error::from)?;
    let to = time::parse("to", to).map_err(Error::from)?;
    if to <= from || to - from > 31 * time::DAY {
        return Err(Error::Invalid("the window must end after it starts, at most 31 days later".into()));
    }
    Ok((from, to))
}

/// Free and busy time of one instrument over a window, and its rules.
pub struct Availability {
    pub free: Vec<(Instant, Instant)>,
    pub busy: Vec<Busy>,
    pub rules: Rules,
}

/// A reservation request.
#[derive(Debug, Clone)]
pub struct Reserve {
    pub start: String,
    pub end: String,
    pub hold_only: bool,
    pub purpose: String,
    pub idempotency_key: String,
    /// Pay the voucher's share with this voucher.
    pub voucher: Option<String>,
}

fn decode_calendar(key: &[u8], bytes: &[u8]) -> Result<Calendar, Error> {
    Calendar::decode(bytes).map_err(|reason| corrupt(key, reason.0))
}

/// Whether the actor may see (and act on) a booking. Someone else's booking
/// is reported as absent: its existence is theirs.
fn may_see(actor: &Actor, b: &Booking) -> bool {
    actor.admin || b.requester == actor.uri
}

pub(crate) fn absent(id: &str) -> Error {
    Error::NotFound(format!("no booking {id:?}"))
}

/// One city's reservations.
pub struct Bookings {
    city: &'static str,
    kv: Kv,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Bookings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bookings").field("city", &self.city).finish_non_exhaustive()
    }
}

impl Bookings {
    pub fn new(city: &'static str, kv: Kv, clock: Arc<dyn Clock>) -> Self {
        Bookings { city, kv, clock }
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    pub fn city(&self) -> &'static str {
        self.city
    }

    /// The key space the bookings are kept in.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The instrument's rules: its own, or the defaults.
    pub fn rules(&self, record: &InstrumentRecord) -> Result<Rules, Error> {
        Ok(self
            .kv
            .read_json(&keys::rules(&record.local_id))?
            .unwrap_or_else(|| Rules::default_for(record.training_required)))
    }

    fn rules_in(tx: &mut dyn Txn, record: &InstrumentRecord) -> Result<Rules, Error> {
        Ok(get_json(tx, &keys::rules(&record.local_id))?
            .unwrap_or_else(|| Rules::default_for(record.training_required)))
    }

    /// Loads the calendar days that [start, end) meets, and marks the holds
    /// in them that have expired by `now`.
    fn days_in(tx: &mut dyn Txn, instrument: &str, start: Instant, end: Instant, now: Instant) -> Result<Days, Error> {
        let mut days = Days::default();
        for day in days_of(start, end) {
            let key = keys::calendar(instrument, day);
            let mut cal = match tx.get(&key)? {
                Some(bytes) => decode_calendar(&key, &bytes)?,
                None => Calendar::default(),
            };
            for id in cal.prune(now) {
                if let Some(mut b) = get_json::<Booking>(tx, &keys::booking(&id))?
                    && b.state == State::Held
                {
                    b.state = State::Expired;
                    b.updated_at = now;
                    b.release_payment();
                    save_booking(tx, &b)?;
                }
            }
            days.days.push((day, cal));
        }
        Ok(days)
    }

    fn save_days(tx: &mut dyn Txn, instrument: &str, days: &Days) -> Result<(), Error> {
        for (day, cal) in &days.days {
            tx.put(&keys::calendar(instrument, *day), cal.encode())?;
        }
        Ok(())
    }

    pub async fn reserve(&self, actor: &Actor, record: &InstrumentRecord, req: Reserve) -> Result<Booking, Error> {
        if !actor.may_book {
            return Err(Error::Denied(format!("{} may not book instruments", actor.uri)));
        }
        let start = time::parse("start", &req.start).map_err(Error::from)?;
        let end = time::parse("end", &req.end).map_err(Error::from)?;
        if req.purpose.len() > 1_000 {
            return Err(Error::Invalid("purpose is at most 1,000 bytes".into()));
        }
        let fingerprint = format!(
            "reserve\n{}\n{start}\n{end}\n{}\n{}\n{}",
            record.local_id,
            req.hold_only,
            req.purpose,
            req.voucher.as_deref().unwrap_or("")
        );
        let voucher = match &req.voucher {
            Some(v) => Some(crate::money::payment::issuer_of(v)?),
            None => None,
        };
        let now = self.clock.now();
        let city = self.city;
        // On disk before the issuer hears of it, even for a voucher booking:
        // an issuer must never hold money for a booking this node has lost.
        self.kv
            .idempotent(&actor.uri, &req.idempotency_key, fingerprint, |tx| {
                if record.status != Status::Available {
                    return Err(Violation::new(
                        "status",
                        format!("{} is not available for booking ({:?})", record.local_id, record.status),
                    )
                    .into());
                }
                if voucher.is_some() && !record.accepts_vouchers {
                    return Err(Violation::new(
                        "accepts_vouchers",
                        format!("{} does not accept innovation vouchers; book it without one", record.local_id),
                    )
                    .into());
                }
                let rules = Self::rules_in(tx, record)?;
                rules.check_slot(start, end, now)?;
                if rules.training_required && !actor.admin {
                    let key = keys::qualification(&record.local_id, &actor.uri);
                    let refusal = match Qualification::read(tx, &key)? {
                        None => Some(format!(
                            "{} needs training first; {} holds no qualification for it (the city admin grants one)",
                            record.local_id, actor.uri
                        )),
                        Some(Qualification { until: Some(until) }) if end > until => Some(format!(
                            "{}'s training for {} runs until {}, and this slot ends after it (the city admin can extend it)",
                            actor.uri,
                            record.local_id,
                            time::short(until)
                        )),
                        Some(_) => None,
                    };
                    if let Some(detail) = refusal {
                        return Err(Violation::new("training_required", detail).into());
                    }
                }
                let (occ_start, occ_end) = (start - rules.setup(), end + rules.cooldown());
                let mut days = Self::days_in(tx, &record.local_id, occ_start, occ_end, now)?;
                if let Some(c) = days.conflict(occ_start, occ_end, now) {
                    let (cs, ce) = c.occupied();
                    return Err(Violation::new(
                    "no_overlap",
                    format!(
                        "{} to {} is taken: the instrument is occupied from {} to {} (set-up and cool-down included)",
                        time::short(start),
                        time::short(end),
                        time::short(cs),
                        time::short(ce)
                    ),
                )
                .into());
                }
                // sled counts from 0; ids count from 1.
                let id = format!("{city}/bk-{}", tx.next_id()? + 1);
                // A voucher booking is held until the issuer holds the money too.
                let held = req.hold_only || voucher.is_some();
                let state = if held {
                    State::Held
                } else if rules.approval_required {
                    State::Pending
                } else {
                    State::Confirmed
                };
                let booking = Booking {
                    id: id.clone(),
                    instrument: record.local_id.clone(),
                    requester: actor.uri.clone(),
                    start,
                    end,
                    setup: rules.setup(),
                    cooldown: rules.cooldown(),
                    state,
                    hold_expires: held.then(|| now + rules.hold_ttl()),
                    created_at: now,
                    updated_at: now,
                    purpose: req.purpose.clone(),
                    price_fen: record.price_external_fen,
                    price_unit: record.price_unit,
                    fee_fen: 0,
                    actual_minutes: 0,
                    note: String::new(),
                    institution: record.institution_name.clone(),
                    institution_uscc: record.institution_uscc.clone(),
                    payment: voucher
                        .clone()
                        .map(|(voucher, issuer)| Payment::trying(voucher, issuer, &id, !req.hold_only)),
                    cancel_terms: Some(rules.cancel_terms(start)),
                };
                days.insert(&booking.entry());
                Self::save_days(tx, &record.local_id, &days)?;
                save_booking(tx, &booking)?;
                put_in_order(tx, &booking)?;
                Ok(booking)
            })
            .await
    }

    /// A lifecycle step on one booking: loads it (checking ownership), lets
    /// `change` decide, then writes the booking and its calendar entry.
    async fn transition(
        &self,
        actor: &Actor,
        action: &str,
        id: &str,
        key: &str,
        extra: String,
        change: impl Fn(&mut Booking, &Rules, Instant, &mut dyn Txn) -> Result<(), Error>,
    ) -> Result<Booking, Error> {
        let now = self.clock.now();
        let fingerprint = format!("{action}\n{id}\n{extra}");
        self.kv
            .idempotent(&actor.uri, key, fingerprint, |tx| {
                // The visibility check runs inside the step, before any change;
                // a refusal drops the step's writes.
                Self::apply_in(tx, id, now, &|b, rules, now, tx| {
                    if !may_see(actor, b) {
                        return Err(absent(id));
                    }
                    change(b, rules, now, tx)
                })
            })
            .await
    }

    /// One change to a booking inside a step: loads it with its calendar
    /// days (expiring holds that ran out), lets `change` decide, then writes
    /// the booking, its calendar entry and its outbox mark.
    pub(crate) fn apply_in(tx: &mut dyn Txn, id: &str, now: Instant, change: &Change<'_>) -> Result<Booking, Error> {
        let b: Booking = get_json(tx, &keys::booking(id))?.ok_or_else(|| absent(id))?;
        let rules: Rules = get_json(tx, &keys::rules(&b.instrument))?.unwrap_or_else(|| Rules::default_for(false));
        let (occ_start, occ_end) = (b.start - b.setup, b.end + b.cooldown);
        let mut days = Self::days_in(tx, &b.instrument, occ_start, occ_end, now)?;
        // The calendar may just have expired this booking's hold.
        let mut b: Booking = get_json(tx, &keys::booking(id))?.unwrap_or(b);
        change(&mut b, &rules, now, tx)?;
        b.updated_at = now;
        if b.state.holds_time() {
            days.set_hold(&b.id, b.hold_expires);
        } else {
            days.remove(&b.id);
        }
        Self::save_days(tx, &b.instrument, &days)?;
        save_booking(tx, &b)?;
        Ok(b)
    }

    fn not_in(b: &Booking, action: &str, now: Instant) -> Error {
        let detail = match b.state_at(now) {
            State::Expired => format!(
                "the hold expired at {}; reserve the slot again",
                b.hold_expires.map(time::short).unwrap_or_default()
            ),
            s => format!("it is {s:?}").to_lowercase(),
        };
        Error::State(format!("cannot {action} booking {}: {detail}", b.id))
    }

    pub async fn confirm(&self, actor: &Actor, id: &str, key: &str) -> Result<Booking, Error> {
        self.transition(actor, "confirm", id, key, String::new(), |b, rules, now, _| {
            if b.state_at(now) != State::Held {
                return Err(Self::not_in(b, "confirm", now));
            }
            if let Some(p) = b.payment.as_mut() {
                p.on_confirm(&b.id)?;
            }
            b.hold_expires = None;
            b.state = if rules.approval_required { State::Pending } else { State::Confirmed };
            Ok(())
        })
        .await
    }

    /// Cancels a booking. A late-cancellation fee is charged only when the
    /// caller accepted at least that much (`accept_fee_fen`), so that nobody
    /// pays a fee they were not shown. A confirmed booking that has begun
    /// cannot be cancelled: its time is being used, and freeing it would let
    /// someone else book an instrument in use.
    pub async fn cancel(
        &self,
        actor: &Actor,
        id: &str,
        key: &str,
        reason: &str,
        accept_fee_fen: i64,
    ) -> Result<Booking, Error> {
        self.transition(actor, "cancel", id, key, reason.to_string(), |b, rules, now, _| {
            let state = b.state_at(now);
            if !state.is_live() {
                return Err(Self::not_in(b, "cancel", now));
            }
            if state == State::Confirmed && now >= b.start {
                return Err(Error::State(format!(
                    "cannot cancel booking {}: it began at {}; the city's admin records its completion with the minutes used",
                    b.id,
                    time::short(b.start)
                )));
            }
            let terms = *b.cancel_terms.get_or_insert_with(|| rules.cancel_terms(b.start));
            let fee = b.cancel_fee(terms, now);
            if fee > accept_fee_fen {
                return Err(Violation::new(
                    "late_cancel_fee",
                    format!(
                        "cancelling booking {} now costs {} yuan ({}% of {} yuan; free cancellation ended at {}), \
                         but {} yuan was accepted; accept the fee to cancel",
                        b.id,
                        yuan(fee),
                        terms.percent,
                        yuan(b.expected_fee()),
                        time::short(terms.free_until),
                        yuan(accept_fee_fen.max(0))
                    ),
                )
                .into());
            }
            if state == State::Confirmed {
                b.fee_fen = fee;
            }
            b.release_payment();
            b.state = State::Cancelled;
            b.hold_expires = None;
            b.note = reason.to_string();
            Ok(())
        })
        .await
    }

    pub async fn decide(
        &self,
        actor: &Actor,
        id: &str,
        key: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Booking, Error> {
        let action = if approve { "approve" } else { "decline" };
        if !actor.admin {
            return Err(Error::Denied(format!("only the city's admin may {action} bookings")));
        }
        self.transition(actor, action, id, key, reason.to_string(), |b, _, now, tx| {
            if b.state_at(now) != State::Pending {
                return Err(Self::not_in(b, action, now));
            }
            b.state = if approve { State::Confirmed } else { State::Declined };
            if !approve {
                b.release_payment();
            }
            b.note = reason.to_string();
            let (before, after) = (json!({"state": State::Pending}), json!({"state": b.state, "reason": reason}));
            audit::record(tx, now, &actor.uri, action, &b.id, before, after)
        })
        .await
    }

    /// Records the actual use and its fee, and writes a service record to the
    /// node's ledger in the same step.
    pub async fn complete(&self, actor: &Actor, id: &str, key: &str, actual_minutes: u32) -> Result<Booking, Error> {
        if !actor.admin {
            return Err(Error::Denied("only the city's admin may complete bookings".into()));
        }
        if actual_minutes == 0 || actual_minutes > 24 * 60 {
            return Err(Error::Invalid("actual_minutes must be between 1 and 1440".into()));
        }
        self.transition(actor, "complete", id, key, actual_minutes.to_string(), |b, _, now, tx| {
            if b.state_at(now) != State::Confirmed {
                return Err(Self::not_in(b, "complete", now));
            }
            // Use is recorded after it happens: a completion ahead of time
            // would charge for a slot that may still be cancelled or moved.
            if now < b.start {
                return Err(Error::State(format!(
                    "cannot complete booking {} before it starts at {}",
                    b.id,
                    time::short(b.start)
                )));
            }
            let fee_fen = match b.price_unit {
                PriceUnit::Hour => fee_for_minutes(b.price_fen, actual_minutes as i64),
                PriceUnit::Sample => b.price_fen,
            };
            // Refuses while the voucher is not yet confirmed by its issuer.
            let redemption = match b.payment.as_mut() {
                Some(p) => Some(p.on_complete(&b.id, fee_fen, now)?),
                None => None,
            };
            b.state = State::Completed;
            b.actual_minutes = actual_minutes;
            b.fee_fen = fee_fen;
            // In the same step as the completion: both land or neither does.
            let body = ledger::Body::Service {
                booking: b.id.clone(),
                instrument: b.instrument.clone(),
                requester: b.requester.clone(),
                institution: b.institution.clone(),
                institution_uscc: b.institution_uscc.clone(),
                minutes: actual_minutes,
                fee_fen,
                redemption,
            };
            ledger::append(tx, now, body)?;
            let after = json!({"state": b.state, "actual_minutes": actual_minutes, "fee_fen": fee_fen});
            audit::record(tx, now, &actor.uri, "complete", &b.id, json!({"state": State::Confirmed}), after)
        })
        .await
    }

    pub fn get(&self, actor: &Actor, id: &str) -> Result<Booking, Error> {
        self.kv.read_json::<Booking>(&keys::booking(id))?.filter(|b| may_see(actor, b)).ok_or_else(|| absent(id))
    }

    /// Puts every stored booking in the orders pages are read in, once: a
    /// store written before they existed has its bookings alone.
    pub fn put_all_in_order(&self) -> Result<usize, Error> {
        if self.kv.get(keys::ORDERED)?.is_some() {
            return Ok(0);
        }
        let all: Vec<Booking> = self.kv.scan_json(keys::BOOKINGS)?;
        self.kv.run(|tx| {
            for b in &all {
                put_in_order(tx, b)?;
            }
            Ok(tx.put(keys::ORDERED, b"1".to_vec())?)
        })?;
        Ok(all.len())
    }

    /// One page of the actor's bookings (all of the city's, for its admin)
    /// in (start, id) order, after `after` when given, and whether more
    /// follow. It reads the page's bookings from an order kept for the
    /// purpose, not every stored booking: a page costs what it holds (and
    /// what the filters pass over).
    pub fn list(
        &self,
        actor: &Actor,
        instrument: Option<&str>,
        include_closed: bool,
        after: Option<(Instant, &str)>,
        size: usize,
    ) -> Result<(Vec<Booking>, bool), Error> {
        let now = self.clock.now();
        let prefix = if actor.admin { keys::BY_START.to_vec() } else { keys::by_requester(&actor.uri) };
        let mut place = match after {
            Some((start, id)) => keys::in_order(prefix.clone(), start, id),
            None => prefix.clone(),
        };
        // One more than the page, to know whether more follow; a filter may
        // pass over many, so no batch is larger than this.
        let batch_size = size.saturating_add(1).min(1024);
        let mut out = Vec::new();
        loop {
            let batch = self.kv.scan_after(&prefix, &place, batch_size)?;
            let last = batch.len() < batch_size;
            for (key, id) in batch {
                place = key;
                let id = String::from_utf8_lossy(&id);
                let Some(b) = self.kv.read_json::<Booking>(&keys::booking(&id))? else { continue };
                if may_see(actor, &b)
                    && instrument.is_none_or(|i| i == b.instrument)
                    && (include_closed || b.state_at(now).is_live())
                {
                    if out.len() == size {
                        return Ok((out, true));
                    }
                    out.push(b);
                }
            }
            if last {
                return Ok((out, false));
            }
        }
    }

    pub fn availability(&self, record: &InstrumentRecord, from: &str, to: &str) -> Result<Availability, Error> {
        let (from, to) = parse_window(from, to)?;
        self.availability_at(record, from, to)
    }

    /// Whether `record` has a free window of at least `minutes` in [from, to).
    pub fn has_free_window(&self, record: &InstrumentRecord, from: Instant, to: Instant, minutes: u32) -> bool {
        if record.status != Status::Available {
            return false;
        }
        self.availability_at(record, from, to)
            .map(|a| a.free.iter().any(|(s, e)| e - s >= minutes as i64 * MINUTE))
            .unwrap_or(false)
    }

    fn availability_at(&self, record: &InstrumentRecord, from: Instant, to: Instant) -> Result<Availability, Error> {
        let rules = self.rules(record)?;
        // Entries up to a day before `from` may reach into the window.
        let mut days = Days::default();
        for day in days_of(from - time::DAY, to) {
            let key = keys::calendar(&record.local_id, day);
            if let Some(bytes) = self.kv.get(&key)? {
                days.days.push((day, decode_calendar(&key, &bytes)?));
            }
        }
        let (free, busy) = calendar::availability(&days.merged(), &rules, from, to, self.clock.now());
        Ok(Availability { free, busy, rules })
    }

    pub fn set_rules(&self, actor: &Actor, record: &InstrumentRecord, rules: Rules) -> Result<Rules, Error> {
        if !actor.admin {
            return Err(Error::Denied("only the city's admin may set booking rules".into()));
        }
        rules.validate().map_err(|e| Error::Invalid(format!("booking rules: {e}")))?;
        let now = self.clock.now();
        let target = format!("{}/{}", self.city, record.local_id);
        self.kv.run(|tx| {
            let key = keys::rules(&record.local_id);
            let before = get_json::<Rules>(tx, &key)?.unwrap_or_else(|| Rules::default_for(record.training_required));
            put_json(tx, &key, &rules)?;
            audit::record(tx, now, &actor.uri, "set_rules", &target, json!(before), json!(rules))
        })?;
        Ok(rules)
    }

    pub async fn set_rules_durably(
        &self,
        actor: &Actor,
        record: &InstrumentRecord,
        rules: Rules,
    ) -> Result<Rules, Error> {
        let rules = self.set_rules(actor, record, rules)?;
        self.kv.durable().await?;
        Ok(rules)
    }

    /// Grants `holder` training for an instrument, to use it until `until`
    /// when given, or revokes it (`grant` = None).
    pub async fn grant(
        &self,
        actor: &Actor,
        record: &InstrumentRecord,
        holder: &str,
        grant: Option<Qualification>,
    ) -> Result<(), Error> {
        if !actor.admin {
            return Err(Error::Denied("only the city's admin may grant qualifications".into()));
        }
        let key = keys::qualification(&record.local_id, holder);
        let (now, action) = (self.clock.now(), if grant.is_some() { "grant" } else { "revoke" });
        let target = format!("{}/{} {holder}", self.city, record.local_id);
        let state = |q: Option<&Qualification>| json!({"trained": q.is_some(), "until": q.and_then(|q| q.until).map(time::format)});
        self.kv.run(|tx| {
            let before = Qualification::read(tx, &key)?;
            match &grant {
                Some(q) => put_json(tx, &key, q)?,
                None => tx.remove(&key)?,
            }
            audit::record(tx, now, &actor.uri, action, &target, state(before.as_ref()), state(grant.as_ref()))
        })?;
        self.kv.durable().await
    }

    /// Holds still open at `now`.
    pub fn open_holds(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let all: Vec<Booking> = self.kv.scan_json(keys::BOOKINGS)?;
        Ok(all.iter().filter(|b| b.state_at(now) == State::Held).count())
    }
}

#[cfg(test)]
mod tests;
