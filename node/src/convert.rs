//! Between the stored record and the wire message. The wire carries enums as
//! numbers; an unknown number is refused, not guessed.

use corridor_proto::{self as pb, cities::City};

use crate::{
    model::{AccessLevel, InstrumentRecord, PriceUnit, ServiceMode, Status},
    store::StoredInstrument,
};

pub fn to_proto(s: &StoredInstrument, city: &City) -> pb::Instrument {
    let r = &s.record;
    pb::Instrument {
        id: format!("{}/{}", city.slug, r.local_id),
        local_id: r.local_id.clone(),
        city: city.slug.into(),
        province: city.province.into(),
        name_zh: r.name_zh.clone(),
        name_en: r.name_en.clone(),
        description: r.description.clone(),
        category: r.category.clone(),
        techniques: r.techniques.clone(),
        manufacturer: r.manufacturer.clone(),
        model: r.model.clone(),
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
        access_level: match r.access_level {
            AccessLevel::Open => pb::AccessLevel::Open,
            AccessLevel::ResearchOnly => pb::AccessLevel::ResearchOnly,
            AccessLevel::Restricted => pb::AccessLevel::Restricted,
        } as i32,
        training_required: r.training_required,
        accreditations: r.accreditations.clone(),
        service_modes: r
            .service_modes
            .iter()
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
        booking_notes: r.booking_notes.clone(),
        status: match r.status {
            Status::Available => pb::InstrumentStatus::Available,
            Status::Maintenance => pb::InstrumentStatus::Maintenance,
            Status::Retired => pb::InstrumentStatus::Retired,
        } as i32,
        photo_url: r.photo_url.clone(),
        updated_at: s.updated_at.clone(),
        accepts_vouchers: r.accepts_vouchers,
    }
}

fn enum_err(field: &str, v: i32) -> String {
    format!("{field}: unknown value {v}")
}

/// Reads a record from the wire. `UNSPECIFIED` enums take the record's
/// defaults (open access, available, priced per hour). The `id`, when given,
/// must agree with `city` and `local_id`.
pub fn from_proto(p: pb::Instrument) -> Result<InstrumentRecord, String> {
    if !p.id.is_empty() && p.id != format!("{}/{}", p.city, p.local_id) {
        return Err(format!("id: {:?} does not match city {:?} and local_id {:?}", p.id, p.city, p.local_id));
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
    let mut service_modes = Vec::with_capacity(p.service_modes.len());
    for m in &p.service_modes {
        service_modes.push(match pb::ServiceMode::try_from(*m) {
            Ok(pb::ServiceMode::SelfOperated) => ServiceMode::SelfOperated,
            Ok(pb::ServiceMode::StaffOperated) => ServiceMode::StaffOperated,
            Ok(pb::ServiceMode::MailIn) => ServiceMode::MailIn,
            _ => return Err(enum_err("service_modes", *m)),
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;
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
