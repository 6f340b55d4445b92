//! Between the stored record and the wire message. The wire carries enums as
//! numbers; an unknown number is refused, not guessed.

use corridor_proto::{self as pb, cities::City};

use crate::error::Invalid;
use crate::{
    booking::{
        Booking, State,
        rules::{Blackout, Opening, Rules},
        time as t,
    },
    catalog::{
        model::{AccessLevel, InstrumentRecord, PriceUnit, ServiceMode, Status},
        search::{Facets, index::CorpusStats},
    },
    money::{
        payment::PayState,
        voucher::{Debit, DebitState, IssueVoucher, Mode, Terms, Voucher},
    },
};

fn enum_err(field: &str, v: i32) -> Invalid {
    Invalid(format!("{field}: unknown value {v}"))
}

/// Reads a record from the wire. `UNSPECIFIED` enums take the record's
/// defaults (open access, available, priced per hour). The `id`, when given,
/// must agree with `city` and `local_id`.
pub fn from_proto(p: pb::Instrument) -> Result<InstrumentRecord, Invalid> {
    if !p.id.is_empty() && p.id != format!("{}/{}", p.city, p.local_id) {
        return Err(Invalid(format!("id: {:?} does not match city {:?} and local_id {:?}", p.id, p.city, p.local_id)));
    }
    let access_level = match pb::AccessLevel::try_from(p.access_level) {
        Ok(pb::AccessLevel::Unspecified | pb::AccessLevel::Open) => AccessLevel::Open,
        Ok(pb::AccessLevel::ResearchOnly) => AccessLevel::ResearchOnly,
        Ok(pb::AccessLevel::Restricted) => AccessLevel::Restricted,
        Err(_) => return Err(enum_err("access_level", p.access_level)),
    };
    let status = match pb::InstrumentStatus::try_from(p.status) {
        Ok(pb::InstrumentStatus::Unspecified | pb::InstrumentStatus::Available) => Status::Available,
        Ok(pb::InstrumentStatus::Maintenance) => Status::Maintenance,
        Ok(pb::InstrumentStatus::Retired) => Status::Retired,
        Err(_) => return Err(enum_err("status", p.status)),
    };
    let service_modes = p.service_modes.iter().map(|m| service_mode_from_proto(*m)).collect::<Result<Vec<_>, _>>()?;
    let price = p.price.unwrap_or_default();
    let price_unit = match pb::PriceUnit::try_from(price.unit) {
        Ok(pb::PriceUnit::Unspecified | pb::PriceUnit::Hour) => PriceUnit::Hour,
        Ok(pb::PriceUnit::Sample) => PriceUnit::Sample,
        Err(_) => return Err(enum_err("price.unit", price.unit)),
    };
    let inst = p.institution.unwrap_or_default();
    let loc = p.location.unwrap_or_default();
    let contact = p.contact.unwrap_or_default();
    Ok(InstrumentRecord {
        local_id: p.local_id,
        city: p.city,
        name_zh: p.name_zh,
        name_en: p.name_en,
        description: p.description,
        category: p.category,
        techniques: p.techniques,
        manufacturer: p.manufacturer,
        model: p.model,
        asset_number: p.asset_number,
        commissioned_on: p.commissioned_on,
        original_value_fen: p.original_value_fen,
        institution_name: inst.name,
        institution_uscc: inst.uscc,
        department: inst.department,
        site: loc.site,
        building: loc.building,
        room: loc.room,
        contact_name: contact.name,
        contact_phone: contact.phone,
        contact_email: contact.email,
        access_level,
        training_required: p.training_required,
        accreditations: p.accreditations,
        service_modes,
        price_unit,
        price_internal_fen: price.internal_fen,
        price_external_fen: price.external_fen,
        booking_notes: p.booking_notes,
        status,
        photo_url: p.photo_url,
        accepts_vouchers: p.accepts_vouchers,
    })
}

fn booking_state(s: State) -> pb::BookingState {
    match s {
        State::Held => pb::BookingState::Held,
        State::Pending => pb::BookingState::Pending,
        State::Confirmed => pb::BookingState::Confirmed,
        State::Cancelled => pb::BookingState::Cancelled,
        State::Declined => pb::BookingState::Declined,
        State::Expired => pb::BookingState::Expired,
        State::Completed => pb::BookingState::Completed,
    }
}

/// A booking as the wire shows it, its state as of `now`.
pub fn booking_to_proto(b: &Booking, city: &City, now: t::Instant) -> pb::Booking {
    pb::Booking {
        id: b.id.clone(),
        instrument_id: format!("{}/{}", city.slug, b.instrument),
        requester: b.requester.clone(),
        start: t::format(b.start),
        end: t::format(b.end),
        occupied_start: t::format(b.start - b.setup),
        occupied_end: t::format(b.end + b.cooldown),
        state: booking_state(b.state_at(now)) as i32,
        hold_expires_at: b.hold_expires.map(t::format).unwrap_or_default(),
        created_at: t::format(b.created_at),
        updated_at: t::format(b.updated_at),
        purpose: b.purpose.clone(),
        price_per_hour_fen: b.price_fen,
        fee_fen: b.fee_fen,
        actual_minutes: b.actual_minutes,
        note: b.note.clone(),
        payment: b.payment.as_ref().map(|p| pb::VoucherPayment {
            voucher_id: p.voucher.clone(),
            op_id: p.op.clone(),
            state: pay_state(p.state) as i32,
            held_fen: p.held_fen,
            posted_fen: p.posted_fen,
            detail: p.detail.clone(),
        }),
        cancel_fee_fen: b.cancel_terms.map(|t| b.cancel_fee(t, now)).unwrap_or(0),
        free_cancel_until: b.cancel_terms.map(|t| t::format(t.free_until)).unwrap_or_default(),
        late_cancel_fee_percent: b.cancel_terms.map(|t| t.percent).unwrap_or(0),
    }
}

fn pay_state(s: PayState) -> pb::PaymentState {
    match s {
        PayState::Trying => pb::PaymentState::Trying,
        PayState::Held => pb::PaymentState::Held,
        PayState::Confirming => pb::PaymentState::Confirming,
        PayState::Confirmed => pb::PaymentState::Confirmed,
        PayState::Posting => pb::PaymentState::Posting,
        PayState::Posted => pb::PaymentState::Posted,
        PayState::Cancelling => pb::PaymentState::Cancelling,
        PayState::Voided => pb::PaymentState::Voided,
        PayState::Disputed => pb::PaymentState::Disputed,
    }
}

pub fn voucher_to_proto(v: &Voucher) -> pb::Voucher {
    let province = corridor_proto::cities::city_by_slug(&v.city).map(|c| c.province).unwrap_or_default();
    pb::Voucher {
        id: v.id.clone(),
        city: v.city.clone(),
        province: province.into(),
        enterprise_uscc: v.terms.enterprise_uscc.clone(),
        enterprise_name: v.terms.enterprise_name.clone(),
        holder: v.terms.holder.clone(),
        face_fen: v.terms.face_fen,
        valid_from: v.terms.valid_from.clone(),
        valid_until: v.terms.valid_until.clone(),
        share_percent: v.terms.share_percent,
        per_use_cap_fen: v.terms.per_use_cap_fen,
        annual_cap_fen: v.terms.annual_cap_fen,
        mode: match v.terms.mode {
            Mode::ProviderRedeemed => pb::VoucherMode::ProviderRedeemed,
            Mode::EnterpriseReimbursed => pb::VoucherMode::EnterpriseReimbursed,
        } as i32,
        cities: v.terms.cities.clone(),
        held_fen: v.held_fen,
        spent_fen: v.spent_fen,
        balance_fen: v.balance_fen(),
        issued_at: t::format(v.issued_at),
    }
}

pub fn issue_from_proto(r: pb::IssueVoucherRequest) -> Result<IssueVoucher, Invalid> {
    let mode = match pb::VoucherMode::try_from(r.mode).map_err(|_| enum_err("mode", r.mode))? {
        pb::VoucherMode::Unspecified | pb::VoucherMode::ProviderRedeemed => Mode::ProviderRedeemed,
        pb::VoucherMode::EnterpriseReimbursed => Mode::EnterpriseReimbursed,
    };
    Ok(IssueVoucher {
        terms: Terms {
            enterprise_uscc: r.enterprise_uscc,
            enterprise_name: r.enterprise_name,
            holder: r.holder,
            face_fen: r.face_fen,
            valid_from: r.valid_from,
            valid_until: r.valid_until,
            share_percent: r.share_percent,
            per_use_cap_fen: r.per_use_cap_fen,
            annual_cap_fen: r.annual_cap_fen,
            mode,
            cities: r.cities,
        },
        idempotency_key: r.idempotency_key,
    })
}

pub fn debit_to_proto(d: &Debit) -> pb::Debit {
    pb::Debit {
        op_id: d.op.clone(),
        voucher_id: d.voucher.clone(),
        state: match d.state {
            DebitState::Pending => pb::DebitState::Pending,
            DebitState::Confirmed => pb::DebitState::Confirmed,
            DebitState::Posted => pb::DebitState::Posted,
            DebitState::Voided => pb::DebitState::Voided,
        } as i32,
        amount_fen: d.amount_fen,
        share_percent: d.share_percent,
        per_use_cap_fen: d.per_use_cap_fen,
    }
}

pub fn rules_to_proto(r: &Rules) -> pb::BookingRules {
    pb::BookingRules {
        setup_minutes: r.setup_minutes,
        cooldown_minutes: r.cooldown_minutes,
        min_minutes: r.min_minutes,
        max_minutes: r.max_minutes,
        min_notice_minutes: r.min_notice_minutes,
        max_advance_days: r.max_advance_days,
        opening_hours: r
            .opening
            .iter()
            .map(|o| pb::OpeningHours {
                weekday: o.weekday as u32,
                open: t::format_clock(o.open),
                close: t::format_clock(o.close),
            })
            .collect(),
        blackouts: r
            .blackouts
            .iter()
            .map(|b| pb::TimeWindow { start: t::format(b.start), end: t::format(b.end), reason: b.reason.clone() })
            .collect(),
        training_required: r.training_required,
        approval_required: r.approval_required,
        cancel_deadline_hours: r.cancel_deadline_hours,
        late_cancel_fee_percent: r.late_cancel_fee_percent,
        hold_ttl_seconds: r.hold_ttl_seconds,
    }
}

pub fn rules_from_proto(p: pb::BookingRules) -> Result<Rules, Invalid> {
    let mut opening = Vec::with_capacity(p.opening_hours.len());
    for o in p.opening_hours {
        if !(1..=7).contains(&o.weekday) {
            return Err(Invalid(format!("opening_hours weekday {} is not 1 (Monday) to 7 (Sunday)", o.weekday)));
        }
        opening.push(Opening {
            weekday: o.weekday as u8,
            open: t::parse_clock(&o.open)?,
            close: t::parse_clock(&o.close)?,
        });
    }
    let mut blackouts = Vec::with_capacity(p.blackouts.len());
    for b in p.blackouts {
        blackouts.push(Blackout {
            start: t::parse("blackout start", &b.start)?,
            end: t::parse("blackout end", &b.end)?,
            reason: b.reason,
        });
    }
    Ok(Rules {
        setup_minutes: p.setup_minutes,
        cooldown_minutes: p.cooldown_minutes,
        min_minutes: p.min_minutes,
        max_minutes: p.max_minutes,
        min_notice_minutes: p.min_notice_minutes,
        max_advance_days: p.max_advance_days,
        opening,
        blackouts,
        training_required: p.training_required,
        approval_required: p.approval_required,
        cancel_deadline_hours: p.cancel_deadline_hours,
        late_cancel_fee_percent: p.late_cancel_fee_percent,
        hold_ttl_seconds: p.hold_ttl_seconds,
    })
}

pub fn stats_to_proto(s: &CorpusStats) -> pb::CorpusStats {
    pb::CorpusStats {
        num_docs: s.num_docs,
        fields: s.field_tokens.iter().map(|(f, n)| pb::FieldStat { field: f.clone(), total_tokens: *n }).collect(),
        terms: s
            .doc_freq
            .iter()
            .map(|((f, t), n)| pb::TermStat { field: f.clone(), term: t.clone(), doc_freq: *n })
            .collect(),
    }
}

pub fn stats_from_proto(p: &pb::CorpusStats) -> CorpusStats {
    CorpusStats {
        num_docs: p.num_docs,
        field_tokens: p.fields.iter().map(|f| (f.field.clone(), f.total_tokens)).collect(),
        doc_freq: p.terms.iter().map(|t| ((t.field.clone(), t.term.clone()), t.doc_freq)).collect(),
    }
}

pub fn facets_to_proto(f: Facets) -> pb::Facets {
    pb::Facets {
        cities: pb::facet_counts(f.cities),
        categories: pb::facet_counts(f.categories),
        institutions: pb::facet_counts(f.institutions),
    }
}

pub fn service_mode_from_proto(m: i32) -> Result<ServiceMode, Invalid> {
    match pb::ServiceMode::try_from(m) {
        Ok(pb::ServiceMode::SelfOperated) => Ok(ServiceMode::SelfOperated),
        Ok(pb::ServiceMode::StaffOperated) => Ok(ServiceMode::StaffOperated),
        Ok(pb::ServiceMode::MailIn) => Ok(ServiceMode::MailIn),
        _ => Err(enum_err("service_modes", m)),
    }
}

pub fn status_from_proto(s: i32) -> Result<Status, Invalid> {
    match pb::InstrumentStatus::try_from(s) {
        Ok(pb::InstrumentStatus::Available) => Ok(Status::Available),
        Ok(pb::InstrumentStatus::Maintenance) => Ok(Status::Maintenance),
        Ok(pb::InstrumentStatus::Retired) => Ok(Status::Retired),
        _ => Err(enum_err("statuses", s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::model::StoredInstrument,
        catalog::{
            model::tests::sample,
            summary::{to_proto, to_summary},
        },
    };
    use corridor_proto::cities::city_by_slug;

    #[test]
    fn records_survive_the_wire() {
        let mut r = sample("a");
        r.city = "hefei".into();
        r.service_modes = vec![ServiceMode::MailIn, ServiceMode::SelfOperated];
        r.status = Status::Retired;
        let s = StoredInstrument { record: r.clone(), updated_at: "t".into() };
        let p = to_proto(&s, city_by_slug("hefei").unwrap());
        assert_eq!(p.id, "hefei/a");
        assert_eq!(from_proto(p).unwrap(), r);
    }

    #[test]
    fn a_summary_stays_small_whatever_is_stored() {
        use prost::Message;
        // As a record stored before fields had limits could be.
        let mut r = sample("a");
        r.name_en = "N".repeat(6 << 20);
        r.name_zh = "名".repeat(1 << 20);
        r.service_modes = vec![ServiceMode::MailIn; 100_000];
        let s = StoredInstrument { record: r, updated_at: "t".into() };
        let summary = to_summary(&s, city_by_slug("hefei").unwrap());
        assert!(summary.encoded_len() < 2_000, "{} bytes", summary.encoded_len());
        assert_eq!(summary.name_zh.chars().count(), crate::catalog::model::MAX_SHORT_CHARS);
    }

    #[test]
    fn rules_survive_the_wire() {
        let mut r = Rules::default_for(true);
        r.blackouts.push(Blackout { start: 1_795_399_200, end: 1_795_402_800, reason: "service".into() });
        assert_eq!(rules_from_proto(rules_to_proto(&r)).unwrap(), r);
        let mut p = rules_to_proto(&r);
        p.opening_hours[0].open = "8am".into();
        assert!(rules_from_proto(p).unwrap_err().contains("HH:MM"));
    }

    #[test]
    fn unknown_enum_values_and_mismatched_ids_are_refused() {
        let s = StoredInstrument { record: sample("a"), updated_at: "t".into() };
        let mut p = to_proto(&s, city_by_slug("hefei").unwrap());
        p.status = 99;
        assert!(from_proto(p.clone()).unwrap_err().contains("status"));
        p.status = 0;
        p.id = "wuhu/a".into();
        assert!(from_proto(p).unwrap_err().contains("does not match"));
    }
}
