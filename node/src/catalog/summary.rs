//! The record as the wire's `Instrument`: whole for a lookup, and the
//! summary a search hit carries, clipped to the field limits. The catalog
//! encodes each summary once per version of the record.

use corridor_proto::{self as pb, cities::City};

use crate::{
    catalog::model::StoredInstrument,
    catalog::model::{AccessLevel, PriceUnit, ServiceMode, Status},
};

pub fn to_proto(s: &StoredInstrument, city: &City) -> pb::Instrument {
    let r = &s.record;
    pb::Instrument {
        description: r.description.clone(),
        techniques: r.techniques.clone(),
        asset_number: r.asset_number.clone(),
        commissioned_on: r.commissioned_on.clone(),
        original_value_fen: r.original_value_fen,
        institution: Some(pb::Institution {
            name: r.institution_name.clone(),
            uscc: r.institution_uscc.clone(),
            department: r.department.clone(),
        }),
        location: Some(pb::Location { site: r.site.clone(), building: r.building.clone(), room: r.room.clone() }),
        contact: Some(pb::Contact {
            name: r.contact_name.clone(),
            phone: r.contact_phone.clone(),
            email: r.contact_email.clone(),
        }),
        booking_notes: r.booking_notes.clone(),
        photo_url: r.photo_url.clone(),
        ..to_summary(s, city)
    }
}

/// The fields a search hit carries: enough to list and filter; the whole
/// record is one GetInstrument away. Keeps fan-out replies small, and is
/// built without touching the rest of the record (it runs for every hit).
/// `s` cut to at most `max` characters. Records stored before fields had
/// limits may be larger; a search hit never carries more than a record
/// imported today could.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_string(),
        None => s.to_string(),
    }
}

pub fn to_summary(s: &StoredInstrument, city: &City) -> pb::Instrument {
    use crate::catalog::model::{MAX_LIST_ITEMS, MAX_SHORT_CHARS};
    let r = &s.record;
    let short = |v: &str| clip(v, MAX_SHORT_CHARS);
    pb::Instrument {
        id: format!("{}/{}", city.slug, r.local_id),
        local_id: r.local_id.clone(),
        city: city.slug.into(),
        province: city.province.into(),
        name_zh: short(&r.name_zh),
        name_en: short(&r.name_en),
        category: short(&r.category),
        manufacturer: short(&r.manufacturer),
        model: short(&r.model),
        institution: Some(pb::Institution { name: short(&r.institution_name), ..Default::default() }),
        access_level: match r.access_level {
            AccessLevel::Open => pb::AccessLevel::Open,
            AccessLevel::ResearchOnly => pb::AccessLevel::ResearchOnly,
            AccessLevel::Restricted => pb::AccessLevel::Restricted,
        } as i32,
        training_required: r.training_required,
        accreditations: r.accreditations.iter().take(MAX_LIST_ITEMS).map(|a| short(a)).collect(),
        service_modes: r
            .service_modes
            .iter()
            .take(MAX_LIST_ITEMS)
            .map(|m| match m {
                ServiceMode::SelfOperated => pb::ServiceMode::SelfOperated,
                ServiceMode::StaffOperated => pb::ServiceMode::StaffOperated,
                ServiceMode::MailIn => pb::ServiceMode::MailIn,
            } as i32)
            .collect(),
        price: Some(pb::Price {
            unit: match r.price_unit {
                PriceUnit::Hour => pb::PriceUnit::Hour,
                PriceUnit::Sample => pb::PriceUnit::Sample,
            } as i32,
            internal_fen: r.price_internal_fen,
            external_fen: r.price_external_fen,
        }),
        status: match r.status {
            Status::Available => pb::InstrumentStatus::Available,
            Status::Maintenance => pb::InstrumentStatus::Maintenance,
            Status::Retired => pb::InstrumentStatus::Retired,
        } as i32,
        updated_at: s.updated_at.clone(),
        accepts_vouchers: r.accepts_vouchers,
        ..Default::default()
    }
}
