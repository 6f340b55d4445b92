//! Innovation vouchers, at the issuing city's node.
//!
//! A voucher's balance is derived from immutable ledger entries (pending,
//! confirmed, posted, voided); the voucher record keeps running totals of
//! those entries, updated in the same atomic step as each entry, so that a
//! balance check is one read and can never race another debit.
//!
//! The issuer is the passive side of a voucher payment: the provider's node
//! coordinates, and calls try, confirm, cancel and post here, each
//! idempotent on the operation id. The issuer acts alone in one case only: a
//! try that was never confirmed is voided once it expires.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    booking::{
        Actor,
        time::{self, Clock, DAY, Instant},
    },
    catalog::model::{check_uscc, yuan},
    error::{Error, Violation},
    kv::{Kv, get_json, put_json, txn::Txn},
    money::{
        ledger::{self, Body},
        payment::share_of,
    },
};

/// 20,000 yuan per use, the typical cap.
pub const DEFAULT_PER_USE_CAP_FEN: i64 = 2_000_000;
/// 100,000 yuan per enterprise per year, the typical cap.
pub const DEFAULT_ANNUAL_CAP_FEN: i64 = 10_000_000;
/// How long after the provider's hold ends the issuer keeps an unconfirmed
/// try, so that a provider that decided just in time can still confirm.
pub const TRY_GRACE_SECONDS: i64 = 30;
/// Largest face value one voucher may carry: 10 million yuan.
const MAX_FACE_FEN: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// 通兑: the enterprise pays its share, the issuing city pays the provider.
    ProviderRedeemed,
    /// 通用: the enterprise pays in full and its city refunds it.
    EnterpriseReimbursed,
}

/// What a voucher grants: set when it is issued, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub enterprise_uscc: String,
    pub enterprise_name: String,
    /// Identity URI that may spend it.
    pub holder: String,
    pub face_fen: i64,
    /// YYYY-MM-DD, inclusive, Asia/Shanghai.
    pub valid_from: String,
    pub valid_until: String,
    pub share_percent: u32,
    /// 0 at issue means the default.
    pub per_use_cap_fen: i64,
    pub annual_cap_fen: i64,
    pub mode: Mode,
    /// Where it is recognised; empty at issue means all nine.
    pub cities: Vec<String>,
}

impl Terms {
    /// Checks every field and fills in the defaults, so that equal requests
    /// give equal terms.
    fn normalised(mut self) -> Result<Terms, Error> {
        let invalid = |m: String| Err(Error::Invalid(m));
        check_uscc(&self.enterprise_uscc).map_err(|e| Error::Invalid(format!("enterprise_uscc: {e}")))?;
        if self.enterprise_name.len() > 500 {
            return invalid("enterprise_name is at most 500 bytes".into());
        }
        let holder =
            corridor_certs::Identity::from_uri(&self.holder).map_err(|e| Error::Invalid(format!("holder: {e}")))?;
        if !matches!(holder, corridor_certs::Identity::Org(_)) {
            return invalid(format!(
                "holder must be an organisation's identity (spiffe://corridor/org/<name>), not {}",
                self.holder
            ));
        }
        self.holder = holder.uri();
        if !(1..=MAX_FACE_FEN).contains(&self.face_fen) {
            return invalid(format!("face_fen must be between 1 and {MAX_FACE_FEN} fen (10 million yuan)"));
        }
        parse_date("valid_from", &self.valid_from)?;
        parse_date("valid_until", &self.valid_until)?;
        if self.valid_until < self.valid_from {
            return invalid("valid_until must not be before valid_from".into());
        }
        if !(1..=100).contains(&self.share_percent) {
            return invalid("share_percent must be between 1 and 100".into());
        }
        if self.per_use_cap_fen == 0 {
            self.per_use_cap_fen = DEFAULT_PER_USE_CAP_FEN;
        }
        if self.annual_cap_fen == 0 {
            self.annual_cap_fen = DEFAULT_ANNUAL_CAP_FEN;
        }
        if self.per_use_cap_fen < 0 || self.annual_cap_fen < 0 {
            return invalid("caps must not be negative".into());
        }
        if self.cities.is_empty() {
            self.cities = corridor_proto::cities::CITIES.iter().map(|c| c.slug.to_string()).collect();
        }
        if let Some(c) = self.cities.iter().find(|c| corridor_proto::cities::city_by_slug(c).is_none()) {
            return invalid(format!("{c:?} is not a corridor city"));
        }
        self.cities.sort();
        self.cities.dedup();
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    pub id: String,
    pub city: String,
    #[serde(flatten)]
    pub terms: Terms,
    /// Pending and confirmed debits.
    pub held_fen: i64,
    /// Posted debits.
    pub spent_fen: i64,
    pub issued_at: Instant,
}

impl Voucher {
    pub fn balance_fen(&self) -> i64 {
        self.terms.face_fen - self.held_fen - self.spent_fen
    }

    /// The voucher's share of `fee_fen`, rounded half up to the fen, within
    /// the per-use cap.
    pub fn share_of(&self, fee_fen: i64) -> i64 {
        share_of(fee_fen, self.terms.share_percent, self.terms.per_use_cap_fen)
    }
}

/// What an issuing city's admin asks for.
#[derive(Debug, Clone)]
pub struct IssueVoucher {
    pub terms: Terms,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebitState {
    Pending,
    Confirmed,
    Posted,
    Voided,
}

/// The issuer's record of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debit {
    pub op: String,
    pub voucher: String,
    pub state: DebitState,
    pub amount_fen: i64,
    pub provider_city: String,
    /// When an unconfirmed try is voided.
    pub expires_at: Instant,
    /// The year whose enterprise cap the amount counts against.
    pub year: i32,
    pub share_percent: u32,
    pub per_use_cap_fen: i64,
}

/// A provider's try.
#[derive(Debug, Clone)]
pub struct TryDebit {
    pub op: String,
    pub voucher: String,
    pub requester: String,
    pub provider_city: String,
    pub instrument: String,
    pub fee_fen: i64,
    /// When the provider's hold ends.
    pub hold_expires: Instant,
}

/// A provider's post: the settlement entry's fields.
#[derive(Debug, Clone)]
pub struct PostDebit {
    pub op: String,
    pub amount_fen: i64,
    pub provider_institution: String,
    pub provider_uscc: String,
    pub service_at: Instant,
}

/// The prefix of every voucher's key.
pub(crate) const VOUCHERS: &[u8] = b"v/";

mod keys {
    pub fn voucher(id: &str) -> Vec<u8> {
        format!("v/{id}").into_bytes()
    }
    pub fn debit(op: &str) -> Vec<u8> {
        format!("d/{op}").into_bytes()
    }
    /// Tries not yet confirmed or voided, for the expiry pass.
    pub fn pending(op: &str) -> Vec<u8> {
        format!("dp/{op}").into_bytes()
    }
    pub const PENDING: &[u8] = b"dp/";
    /// Held and spent at this city by one enterprise in one year.
    pub fn annual(uscc: &str, year: i32) -> Vec<u8> {
        format!("ya/{uscc}/{year}").into_bytes()
    }
}

/// Writes a debit, and keeps the index of pending ones that the expiry pass
/// reads, so that it never scans settled operations.
fn save_debit(tx: &mut dyn Txn, d: &Debit) -> Result<(), Error> {
    put_json(tx, &keys::debit(&d.op), d)?;
    if d.state == DebitState::Pending {
        put_json(tx, &keys::pending(&d.op), d)
    } else {
        tx.remove(&keys::pending(&d.op)).map_err(Into::into)
    }
}

fn parse_date(field: &str, s: &str) -> Result<String, Error> {
    let fmt = ::time::macros::format_description!("[year]-[month]-[day]");
    ::time::Date::parse(s, &fmt)
        .map(|_| s.to_string())
        .map_err(|_| Error::Invalid(format!("{field} must be a date YYYY-MM-DD (Asia/Shanghai), not {s:?}")))
}

fn refused(rule: &'static str, detail: String) -> Error {
    Error::Rule(Violation::new(rule, detail))
}

fn not_found(op: &str) -> Error {
    Error::NotFound(format!("no voucher operation {op:?} at this city"))
}

/// One city's vouchers and the issuer's side of their payments.
pub struct Vouchers {
    city: &'static str,
    kv: Kv,
    clock: Arc<dyn Clock>,
    /// The issuer's debit steps (the ledger steps that come in bursts) all
    /// write the ledger's head and often one voucher, so they conflict by
    /// construction; taking turns costs less than sled's optimistic retries
    /// under load. Held for the in-memory step only, never across the flush.
    ledger_turn: std::sync::Mutex<()>,
}

impl Vouchers {
    pub fn new(city: &'static str, kv: Kv, clock: Arc<dyn Clock>) -> Self {
        Vouchers { city, kv, clock, ledger_turn: std::sync::Mutex::new(()) }
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn city(&self) -> &'static str {
        self.city
    }

    /// An issuer's debit step, in its turn; not yet on disk.
    fn run_debit<T>(&self, step: impl FnMut(&mut dyn Txn) -> Result<T, Error>) -> Result<T, Error> {
        let _turn = self.ledger_turn.lock().expect("poisoned");
        self.kv.run(step)
    }

    /// An issuer's debit step, in its turn, returning once it is on disk.
    async fn durable_debit<T>(&self, step: impl FnMut(&mut dyn Txn) -> Result<T, Error>) -> Result<T, Error> {
        let out = self.run_debit(step)?;
        self.kv.durable().await?;
        Ok(out)
    }

    pub async fn issue_voucher(&self, actor: &Actor, req: IssueVoucher) -> Result<Voucher, Error> {
        if !actor.admin {
            return Err(Error::Denied(format!("only {}'s admin may issue its vouchers", self.city())));
        }
        let terms = req.terms.normalised()?;
        let fingerprint = format!("voucher\n{}", serde_json::to_string(&terms).expect("serialisable"));
        let now = self.now();
        let city = self.city();
        self.kv
            .idempotent(&actor.uri, &req.idempotency_key, fingerprint, |tx| {
                let v = Voucher {
                    id: format!("{city}/v-{}", tx.next_id()? + 1),
                    city: city.to_string(),
                    terms: terms.clone(),
                    held_fen: 0,
                    spent_fen: 0,
                    issued_at: now,
                };
                put_json(tx, &keys::voucher(&v.id), &v)?;
                ledger::append(
                    tx,
                    now,
                    Body::VoucherIssued {
                        voucher: v.id.clone(),
                        enterprise_uscc: v.terms.enterprise_uscc.clone(),
                        holder: v.terms.holder.clone(),
                        face_fen: v.terms.face_fen,
                    },
                )?;
                let terms = serde_json::to_value(&v.terms).unwrap_or_default();
                crate::audit::record(tx, now, &actor.uri, "issue_voucher", &v.id, serde_json::Value::Null, terms)?;
                Ok(v)
            })
            .await
    }

    /// A voucher, for its city's admin, its holder, or the reconciler.
    pub fn voucher(&self, actor: &Actor, id: &str) -> Result<Voucher, Error> {
        let v: Option<Voucher> = self.kv.read_json(&keys::voucher(id))?;
        match v {
            Some(v) if actor.admin || actor.reader || v.terms.holder == actor.uri => Ok(v),
            // Someone else's voucher is reported as absent.
            _ => Err(Error::NotFound(format!("no voucher {id:?}"))),
        }
    }

    /// The issuer's record of one operation.
    pub fn debit(&self, op: &str) -> Result<Option<Debit>, Error> {
        self.kv.read_json(&keys::debit(op))
    }

    /// Holds the voucher's share of the expected fee for a provider's
    /// booking, or refuses. A retry returns the first answer.
    pub async fn try_debit(&self, req: TryDebit) -> Result<Debit, Error> {
        let now = self.now();
        self.durable_debit(|tx| Self::try_in(tx, &req, now)).await
    }

    fn try_in(tx: &mut dyn Txn, req: &TryDebit, now: Instant) -> Result<Debit, Error> {
        if let Some(d) = get_json::<Debit>(tx, &keys::debit(&req.op))? {
            if d.voucher != req.voucher || d.provider_city != req.provider_city {
                return Err(Error::KeyReused(req.op.clone()));
            }
            if d.state == DebitState::Voided {
                return Err(refused("voucher_operation", format!("operation {} was already voided", req.op)));
            }
            return Ok(d);
        }
        let mut v: Voucher = get_json(tx, &keys::voucher(&req.voucher))?
            .ok_or_else(|| refused("voucher", format!("no voucher {:?}", req.voucher)))?;
        if v.terms.holder != req.requester {
            return Err(refused("voucher_holder", format!("voucher {} does not belong to {}", v.id, req.requester)));
        }
        let today = time::local(now).date().to_string();
        if today < v.terms.valid_from || today > v.terms.valid_until {
            return Err(refused(
                "voucher_validity",
                format!(
                    "voucher {} is valid from {} to {}, not on {today}",
                    v.id, v.terms.valid_from, v.terms.valid_until
                ),
            ));
        }
        if !v.terms.cities.contains(&req.provider_city) {
            return Err(refused(
                "voucher_cities",
                format!(
                    "voucher {} is not recognised in {}; it is in {}",
                    v.id,
                    req.provider_city,
                    v.terms.cities.join(", ")
                ),
            ));
        }
        let amount = v.share_of(req.fee_fen);
        if amount <= 0 {
            return Err(refused(
                "voucher_amount",
                format!("the fee of {} yuan leaves nothing for the voucher to pay", yuan(req.fee_fen)),
            ));
        }
        if amount > v.balance_fen() {
            return Err(refused(
                "voucher_balance",
                format!(
                    "voucher {} has {} yuan left; this booking needs {} yuan ({}% of {} yuan)",
                    v.id,
                    yuan(v.balance_fen()),
                    yuan(amount),
                    v.terms.share_percent,
                    yuan(req.fee_fen)
                ),
            ));
        }
        let year = time::local(now).year();
        let annual_key = keys::annual(&v.terms.enterprise_uscc, year);
        let used: i64 = get_json(tx, &annual_key)?.unwrap_or(0);
        if used + amount > v.terms.annual_cap_fen {
            return Err(refused(
                "voucher_annual_cap",
                format!(
                    "enterprise {} has used {} of its {} yuan for {year} at {}; this booking needs {} yuan",
                    v.terms.enterprise_uscc,
                    yuan(used),
                    yuan(v.terms.annual_cap_fen),
                    v.city,
                    yuan(amount)
                ),
            ));
        }
        let d = Debit {
            op: req.op.clone(),
            voucher: v.id.clone(),
            state: DebitState::Pending,
            amount_fen: amount,
            provider_city: req.provider_city.clone(),
            expires_at: req.hold_expires.max(now) + TRY_GRACE_SECONDS,
            year,
            share_percent: v.terms.share_percent,
            per_use_cap_fen: v.terms.per_use_cap_fen,
        };
        v.held_fen += amount;
        put_json(tx, &annual_key, &(used + amount))?;
        put_json(tx, &keys::voucher(&v.id), &v)?;
        save_debit(tx, &d)?;
        ledger::append(
            tx,
            now,
            Body::DebitPending {
                op: d.op.clone(),
                voucher: v.id.clone(),
                enterprise_uscc: v.terms.enterprise_uscc.clone(),
                amount_fen: amount,
                provider_city: d.provider_city.clone(),
                expires_at: d.expires_at,
            },
        )?;
        Ok(d)
    }

    /// Loads the operation for a follow-up call from `provider_city`.
    fn op_for(tx: &mut dyn Txn, op: &str, provider_city: &str) -> Result<Option<Debit>, Error> {
        match get_json::<Debit>(tx, &keys::debit(op))? {
            Some(d) if d.provider_city != provider_city => Err(not_found(op)),
            d => Ok(d),
        }
    }

    /// Releases a hold in the same step as its ledger entry.
    fn void_in(tx: &mut dyn Txn, d: &mut Debit, now: Instant, reason: &str) -> Result<(), Error> {
        let mut v: Voucher = get_json(tx, &keys::voucher(&d.voucher))?.ok_or_else(|| not_found(&d.op))?;
        v.held_fen -= d.amount_fen;
        let annual_key = keys::annual(&v.terms.enterprise_uscc, d.year);
        let used: i64 = get_json(tx, &annual_key)?.unwrap_or(0);
        put_json(tx, &annual_key, &(used - d.amount_fen))?;
        put_json(tx, &keys::voucher(&v.id), &v)?;
        ledger::append(
            tx,
            now,
            Body::DebitVoided {
                op: d.op.clone(),
                voucher: d.voucher.clone(),
                amount_fen: d.amount_fen,
                reason: reason.into(),
            },
        )?;
        d.state = DebitState::Voided;
        save_debit(tx, d)
    }

    /// The provider keeps the booking: the hold stops expiring.
    pub async fn confirm_debit(&self, provider_city: &str, op: &str) -> Result<Debit, Error> {
        let now = self.now();
        let (d, expired) = self
            .durable_debit(|tx| {
                let mut expired = false;
                let mut d = Self::op_for(tx, op, provider_city)?.ok_or_else(|| not_found(op))?;
                match d.state {
                    DebitState::Confirmed | DebitState::Posted => {}
                    DebitState::Voided => {
                        return Err(refused(
                            "voucher_operation",
                            format!("operation {op} was voided; the hold is gone"),
                        ));
                    }
                    DebitState::Pending if d.expires_at <= now => {
                        // Too late: void it now, in this step, and refuse.
                        Self::void_in(tx, &mut d, now, "expired before confirmation")?;
                        expired = true;
                    }
                    DebitState::Pending => {
                        d.state = DebitState::Confirmed;
                        save_debit(tx, &d)?;
                        ledger::append(
                            tx,
                            now,
                            Body::DebitConfirmed {
                                op: op.into(),
                                voucher: d.voucher.clone(),
                                amount_fen: d.amount_fen,
                            },
                        )?;
                    }
                }
                Ok((d, expired))
            })
            .await?;
        if expired {
            return Err(refused(
                "voucher_operation",
                format!("operation {op} expired before it was confirmed; the hold is gone"),
            ));
        }
        Ok(d)
    }

    /// The provider gives the booking up: the hold is released. Cancelling
    /// an operation never seen leaves a voided record, so that a try still
    /// on its way is refused when it arrives.
    pub async fn cancel_debit(
        &self,
        provider_city: &str,
        op: &str,
        voucher: &str,
        reason: &str,
    ) -> Result<Debit, Error> {
        let now = self.now();
        self.durable_debit(|tx| {
            let d = match Self::op_for(tx, op, provider_city)? {
                Some(mut d) => {
                    match d.state {
                        DebitState::Voided => {}
                        DebitState::Posted => {
                            return Err(refused("voucher_operation", format!("operation {op} is already posted")));
                        }
                        DebitState::Pending | DebitState::Confirmed => Self::void_in(tx, &mut d, now, reason)?,
                    }
                    d
                }
                None => {
                    let d = Debit {
                        op: op.into(),
                        voucher: voucher.into(),
                        state: DebitState::Voided,
                        amount_fen: 0,
                        provider_city: provider_city.into(),
                        expires_at: now,
                        year: time::local(now).year(),
                        share_percent: 0,
                        per_use_cap_fen: 0,
                    };
                    save_debit(tx, &d)?;
                    ledger::append(
                        tx,
                        now,
                        Body::DebitVoided {
                            op: op.into(),
                            voucher: voucher.into(),
                            amount_fen: 0,
                            reason: reason.into(),
                        },
                    )?;
                    d
                }
            };
            Ok(d)
        })
        .await
    }

    /// The booking was completed: debits the voucher share of the actual
    /// fee, at most what is held, and releases the rest.
    pub async fn post_debit(&self, provider_city: &str, req: PostDebit) -> Result<Debit, Error> {
        let now = self.now();
        self.durable_debit(|tx| {
            let mut d = Self::op_for(tx, &req.op, provider_city)?.ok_or_else(|| not_found(&req.op))?;
            match d.state {
                DebitState::Posted if d.amount_fen == req.amount_fen => {}
                DebitState::Posted => {
                    return Err(refused(
                        "voucher_operation",
                        format!("operation {} is already posted with {} yuan", req.op, yuan(d.amount_fen)),
                    ));
                }
                DebitState::Pending | DebitState::Voided => {
                    return Err(refused(
                        "voucher_operation",
                        format!("operation {} is {:?}, not confirmed", req.op, d.state),
                    ));
                }
                DebitState::Confirmed => {
                    if req.amount_fen < 0 || req.amount_fen > d.amount_fen {
                        return Err(Error::Invalid(format!(
                            "a post of {} yuan exceeds the {} yuan held for operation {}",
                            yuan(req.amount_fen),
                            yuan(d.amount_fen),
                            req.op
                        )));
                    }
                    let mut v: Voucher = get_json(tx, &keys::voucher(&d.voucher))?.ok_or_else(|| not_found(&req.op))?;
                    v.held_fen -= d.amount_fen;
                    v.spent_fen += req.amount_fen;
                    let annual_key = keys::annual(&v.terms.enterprise_uscc, d.year);
                    let used: i64 = get_json(tx, &annual_key)?.unwrap_or(0);
                    put_json(tx, &annual_key, &(used - d.amount_fen + req.amount_fen))?;
                    put_json(tx, &keys::voucher(&v.id), &v)?;
                    d.state = DebitState::Posted;
                    d.amount_fen = req.amount_fen;
                    save_debit(tx, &d)?;
                    ledger::append(
                        tx,
                        now,
                        Body::DebitPosted {
                            op: d.op.clone(),
                            voucher: d.voucher.clone(),
                            enterprise_uscc: v.terms.enterprise_uscc.clone(),
                            amount_fen: req.amount_fen,
                            provider_city: provider_city.into(),
                            provider_institution: req.provider_institution.clone(),
                            provider_uscc: req.provider_uscc.clone(),
                            service_at: req.service_at,
                        },
                    )?;
                }
            }
            Ok(d)
        })
        .await
    }

    /// Voids every try that expired unconfirmed; returns how many.
    pub async fn expire_debits(&self) -> Result<usize, Error> {
        let now = self.now();
        let stale: Vec<Debit> = self
            .kv
            .scan_json::<Debit>(keys::PENDING)?
            .into_iter()
            .filter(|d| d.state == DebitState::Pending && d.expires_at <= now)
            .collect();
        let mut voided = 0;
        for d in stale {
            let changed = self.run_debit(|tx| match get_json::<Debit>(tx, &keys::debit(&d.op))? {
                Some(mut d) if d.state == DebitState::Pending && d.expires_at <= now => {
                    Self::void_in(tx, &mut d, now, "expired before confirmation")?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
            voided += changed as usize;
        }
        if voided > 0 {
            self.kv.durable().await?;
        }
        Ok(voided)
    }
}

/// Days a voucher stays valid when the admin names no end: to the end of the
/// next calendar year is common; the CLI uses one year.
pub const DEFAULT_VALIDITY_DAYS: i64 = 365;

/// Today and a year from today, as the CLI's defaults.
pub fn default_validity(now: Instant) -> (String, String) {
    (time::local(now).date().to_string(), time::local(now + DEFAULT_VALIDITY_DAYS * DAY).date().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{booking::time::TokioClock, kv::txn::tests::backends};

    /// 2026-11-10 12:00 in Shanghai.
    const NOW: Instant = 1_794_283_200;
    const HOLDER: &str = "spiffe://corridor/org/demo";

    /// The issuer over each backend, with the guard that keeps sled's
    /// directory.
    /// Each engine is made when the loop reaches it, so that its clock
    /// starts at `NOW` even after a paused test advanced the last one's.
    fn engines() -> impl Iterator<Item = (Vouchers, Option<tempfile::TempDir>)> {
        backends()
            .into_iter()
            .map(|(_, store, dir)| (Vouchers::new("wuhu", Kv::new(store), Arc::new(TokioClock::starting_at(NOW))), dir))
    }

    fn admin() -> Actor {
        Actor { uri: "spiffe://corridor/city/wuhu/admin".into(), admin: true, may_book: true, reader: false }
    }

    fn terms(face_fen: i64, share: u32, key: &str) -> IssueVoucher {
        IssueVoucher {
            terms: Terms {
                enterprise_uscc: crate::catalog::model::uscc_with_check("91340200MA2N00000").unwrap(),
                enterprise_name: "示范".into(),
                holder: HOLDER.into(),
                face_fen,
                valid_from: "2026-11-01".into(),
                valid_until: "2026-12-31".into(),
                share_percent: share,
                per_use_cap_fen: 0,
                annual_cap_fen: 0,
                mode: Mode::ProviderRedeemed,
                cities: vec![],
            },
            idempotency_key: key.into(),
        }
    }

    fn try_(op: &str, voucher: &str, fee_fen: i64) -> TryDebit {
        TryDebit {
            op: op.into(),
            voucher: voucher.into(),
            requester: HOLDER.into(),
            provider_city: "hefei".into(),
            instrument: "hefei/tem-1".into(),
            fee_fen,
            hold_expires: NOW + 600,
        }
    }

    fn rule(e: Error) -> &'static str {
        match e {
            Error::Rule(v) => v.rule,
            other => panic!("expected a rule, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_try_holds_the_share_within_the_caps_and_the_balance() {
        for (e, _dir) in engines() {
            let v = e.issue_voucher(&admin(), terms(3_000_000, 50, "a")).await.unwrap();
            assert_eq!((v.id.as_str(), v.terms.cities.len()), ("wuhu/v-1", 9));
            let (log, _) = crate::audit::page(&e.kv, 0, i64::MIN, 10).unwrap();
            assert_eq!((log.len(), log[0].action.as_str(), log[0].target.as_str()), (1, "issue_voucher", "wuhu/v-1"));
            assert_eq!(log[0].after["face_fen"], 3_000_000);
            // Half of 1,000.01 yuan, rounded half up.
            let d = e.try_debit(try_("hefei/bk-1", &v.id, 100_001)).await.unwrap();
            assert_eq!((d.state, d.amount_fen), (DebitState::Pending, 50_001));
            // A retry is the same operation, and holds nothing more.
            assert_eq!(e.try_debit(try_("hefei/bk-1", &v.id, 100_001)).await.unwrap(), d);
            // The per-use cap (20,000 yuan) bounds the share of a large fee.
            let big = e.try_debit(try_("hefei/bk-2", &v.id, 10_000_000)).await.unwrap();
            assert_eq!(big.amount_fen, DEFAULT_PER_USE_CAP_FEN);
            let v = e.voucher(&admin(), &v.id).unwrap();
            assert_eq!((v.held_fen, v.balance_fen()), (50_001 + 2_000_000, 3_000_000 - 2_050_001));
            // More than the balance is refused, naming both amounts.
            let err = e.try_debit(try_("hefei/bk-3", &v.id, 2_000_000)).await.unwrap_err();
            assert!(err.to_string().contains("has 9499.99 yuan left; this booking needs 10000.00 yuan"), "{err}");
            assert_eq!(rule(err), "voucher_balance");
        }
    }

    #[tokio::test]
    async fn the_holder_the_cities_and_the_dates_are_checked() {
        for (e, _dir) in engines() {
            let mut t = terms(1_000_000, 50, "a");
            t.terms.cities = vec!["hangzhou".into()];
            let v = e.issue_voucher(&admin(), t).await.unwrap();
            let mut other = try_("hefei/bk-1", &v.id, 1_000);
            other.requester = "spiffe://corridor/org/other".into();
            assert_eq!(rule(e.try_debit(other).await.unwrap_err()), "voucher_holder");
            assert_eq!(rule(e.try_debit(try_("hefei/bk-2", &v.id, 1_000)).await.unwrap_err()), "voucher_cities");
            let mut later = terms(1_000_000, 50, "b");
            later.terms.valid_from = "2027-01-01".into();
            later.terms.valid_until = "2027-12-31".into();
            let later = e.issue_voucher(&admin(), later).await.unwrap();
            assert_eq!(rule(e.try_debit(try_("hefei/bk-3", &later.id, 1_000)).await.unwrap_err()), "voucher_validity");
            let missing = e.try_debit(try_("hefei/bk-4", "wuhu/v-99", 1_000)).await.unwrap_err();
            assert_eq!(rule(missing), "voucher");
            // Bad terms are refused at issue, field by field.
            let mut bad = terms(1_000_000, 0, "c");
            assert!(e.issue_voucher(&admin(), bad.clone()).await.unwrap_err().to_string().contains("share_percent"));
            bad.terms.share_percent = 50;
            bad.terms.valid_until = "2026-10-01".into();
            assert!(e.issue_voucher(&admin(), bad.clone()).await.unwrap_err().to_string().contains("valid_until"));
            bad.terms.valid_until = "31/12/2026".into();
            assert!(e.issue_voucher(&admin(), bad.clone()).await.unwrap_err().to_string().contains("YYYY-MM-DD"));
            bad.terms.valid_until = "2026-12-31".into();
            bad.terms.holder = "spiffe://corridor/city/wuhu/admin".into();
            assert!(e.issue_voucher(&admin(), bad).await.unwrap_err().to_string().contains("organisation"));
            let org = Actor { uri: HOLDER.into(), admin: false, may_book: true, reader: false };
            assert!(matches!(e.issue_voucher(&org, terms(1, 50, "d")).await.unwrap_err(), Error::Denied(_)));
        }
    }

    #[tokio::test]
    async fn the_yearly_cap_counts_every_voucher_of_the_enterprise() {
        for (e, _dir) in engines() {
            let mut t = terms(9_000_000, 100, "a");
            t.terms.annual_cap_fen = 3_000_000;
            let a = e.issue_voucher(&admin(), t.clone()).await.unwrap();
            t.idempotency_key = "b".into();
            let b = e.issue_voucher(&admin(), t).await.unwrap();
            e.try_debit(try_("hefei/bk-1", &a.id, 2_000_000)).await.unwrap();
            let err = e.try_debit(try_("hefei/bk-2", &b.id, 1_500_000)).await.unwrap_err();
            assert_eq!(rule(err), "voucher_annual_cap");
            // Releasing the first hold frees the year's room.
            e.cancel_debit("hefei", "hefei/bk-1", &a.id, "cancelled").await.unwrap();
            e.try_debit(try_("hefei/bk-2", &b.id, 1_500_000)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn post_debits_the_real_share_and_releases_the_rest() {
        for (e, _dir) in engines() {
            let v = e.issue_voucher(&admin(), terms(1_000_000, 50, "a")).await.unwrap();
            e.try_debit(try_("hefei/bk-1", &v.id, 100_000)).await.unwrap();
            let post = |amount_fen| PostDebit {
                op: "hefei/bk-1".into(),
                amount_fen,
                provider_institution: "USTC".into(),
                provider_uscc: "P".into(),
                service_at: NOW + 7_200,
            };
            // Not before it is confirmed.
            assert_eq!(rule(e.post_debit("hefei", post(40_000)).await.unwrap_err()), "voucher_operation");
            e.confirm_debit("hefei", "hefei/bk-1").await.unwrap();
            // Another provider city cannot touch it.
            assert!(matches!(e.confirm_debit("hangzhou", "hefei/bk-1").await.unwrap_err(), Error::NotFound(_)));
            assert!(matches!(e.post_debit("hefei", post(50_001)).await.unwrap_err(), Error::Invalid(_)));
            let d = e.post_debit("hefei", post(40_000)).await.unwrap();
            assert_eq!((d.state, d.amount_fen), (DebitState::Posted, 40_000));
            assert_eq!(e.post_debit("hefei", post(40_000)).await.unwrap(), d, "a retry is the same post");
            assert_eq!(rule(e.post_debit("hefei", post(30_000)).await.unwrap_err()), "voucher_operation");
            let v = e.voucher(&admin(), &v.id).unwrap();
            assert_eq!((v.held_fen, v.spent_fen, v.balance_fen()), (0, 40_000, 960_000));
            assert_eq!(rule(e.cancel_debit("hefei", "hefei/bk-1", &v.id, "x").await.unwrap_err()), "voucher_operation");
        }
    }

    #[tokio::test]
    async fn a_cancel_before_the_try_arrives_blocks_the_late_try() {
        for (e, _dir) in engines() {
            let v = e.issue_voucher(&admin(), terms(1_000_000, 50, "a")).await.unwrap();
            let d = e.cancel_debit("hefei", "hefei/bk-1", &v.id, "gave up").await.unwrap();
            assert_eq!((d.state, d.amount_fen), (DebitState::Voided, 0));
            assert_eq!(rule(e.try_debit(try_("hefei/bk-1", &v.id, 1_000)).await.unwrap_err()), "voucher_operation");
            assert_eq!(e.voucher(&admin(), &v.id).unwrap().held_fen, 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_try_expires_and_a_late_confirm_is_refused() {
        for (e, _dir) in engines() {
            let v = e.issue_voucher(&admin(), terms(1_000_000, 50, "a")).await.unwrap();
            e.try_debit(try_("hefei/bk-1", &v.id, 10_000)).await.unwrap();
            e.try_debit(try_("hefei/bk-2", &v.id, 10_000)).await.unwrap();
            e.confirm_debit("hefei", "hefei/bk-2").await.unwrap();
            assert_eq!(e.expire_debits().await.unwrap(), 0, "nothing has expired yet");
            // Past the provider's hold and the grace.
            tokio::time::advance(std::time::Duration::from_secs(600 + TRY_GRACE_SECONDS as u64 + 1)).await;
            assert_eq!(e.expire_debits().await.unwrap(), 1, "only the unconfirmed try");
            assert_eq!(rule(e.confirm_debit("hefei", "hefei/bk-1").await.unwrap_err()), "voucher_operation");
            let v = e.voucher(&admin(), &v.id).unwrap();
            assert_eq!(v.held_fen, 5_000, "the confirmed hold stays");
            // The ledger holds every step, chained.
            let (raw, head) = ledger::page(&e.kv, 0, 100).unwrap();
            let kinds: Vec<String> = ledger::verify(&raw, &head)
                .unwrap()
                .iter()
                .map(|x| serde_json::to_value(&x.body).unwrap()["kind"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(kinds, ["voucher_issued", "debit_pending", "debit_pending", "debit_confirmed", "debit_voided"]);
        }
    }
}
