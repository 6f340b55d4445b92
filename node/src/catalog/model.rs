//! The instrument record as a city keeps it, and the rules every record obeys.
//! Pure domain: no gRPC, no storage.

use std::fmt;

use crate::error;
use serde::{Deserialize, Deserializer, Serialize, de};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLevel {
    #[default]
    Open,
    ResearchOnly,
    Restricted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    SelfOperated,
    StaffOperated,
    MailIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Available,
    Maintenance,
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PriceUnit {
    #[default]
    Hour,
    Sample,
}

/// One instrument, flat so that the same field names serve JSON Lines and CSV
/// headers alike. List fields take a JSON array or, in CSV, `;`-separated text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentRecord {
    pub local_id: String,
    /// The owning city. Optional in import files; when given it must be the
    /// importing node's city.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub city: String,
    pub name_zh: String,
    pub name_en: String,
    #[serde(default)]
    pub description: String,
    pub category: String,
    #[serde(default, deserialize_with = "techniques")]
    pub techniques: Vec<String>,
    #[serde(default)]
    pub manufacturer: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub asset_number: String,
    #[serde(default)]
    pub commissioned_on: String,
    #[serde(default)]
    pub original_value_fen: i64,
    pub institution_name: String,
    pub institution_uscc: String,
    #[serde(default)]
    pub department: String,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub building: String,
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub contact_name: String,
    #[serde(default)]
    pub contact_phone: String,
    #[serde(default)]
    pub contact_email: String,
    #[serde(default)]
    pub access_level: AccessLevel,
    #[serde(default)]
    pub training_required: bool,
    #[serde(default, deserialize_with = "accreditations")]
    pub accreditations: Vec<String>,
    #[serde(default, deserialize_with = "service_modes")]
    pub service_modes: Vec<ServiceMode>,
    #[serde(default)]
    pub price_unit: PriceUnit,
    #[serde(default)]
    pub price_internal_fen: i64,
    #[serde(default)]
    pub price_external_fen: i64,
    #[serde(default)]
    pub booking_notes: String,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub photo_url: String,
    #[serde(default = "yes")]
    pub accepts_vouchers: bool,
}

fn yes() -> bool {
    true
}

// Named wrappers, so that an error inside a list says which column it is in
// (CSV reports no field for errors raised by custom deserializers).
fn techniques<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list(d).map_err(|e| de::Error::custom(format!("techniques: {e}")))
}
fn accreditations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list(d).map_err(|e| de::Error::custom(format!("accreditations: {e}")))
}
fn service_modes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServiceMode>, D::Error> {
    list(d).map_err(|e| de::Error::custom(format!("service_modes: {e}")))
}

/// Accepts a sequence, or a string split on `;` (how CSV carries lists).
fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list, or text with items separated by ';'")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            s.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| T::deserialize(de::value::StrDeserializer::<E>::new(p)))
                .collect()
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor(std::marker::PhantomData))
}

/// A record as stored: what the owner sent, and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInstrument {
    pub record: InstrumentRecord,
    /// RFC 3339, Asia/Shanghai offset.
    pub updated_at: String,
}

/// Why a record was refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid { field, reason: reason.into() }
}

const USCC_CHARS: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// Integer fen as yuan with two decimals, e.g. -1,050 fen as "-10.50".
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.unsigned_abs() / 100, fen.unsigned_abs() % 100)
}

/// The check character (GB 32100-2015) for the first 17 characters of a
/// Unified Social Credit Code, or `None` if one of them is not allowed.
pub fn uscc_check_char(first17: &str) -> Option<char> {
    let mut sum = 0u32;
    for (c, w) in first17.chars().zip(USCC_WEIGHTS) {
        sum += USCC_CHARS.find(c)? as u32 * w;
    }
    let check = (31 - sum % 31) % 31;
    USCC_CHARS.chars().nth(check as usize)
}

/// Completes 17 characters into a full code by appending the check character.
pub fn uscc_with_check(first17: &str) -> Option<String> {
    Some(format!("{first17}{}", uscc_check_char(first17)?))
}

/// Checks an 18-character Unified Social Credit Code, including its check character.
pub fn check_uscc(code: &str) -> Result<(), error::Invalid> {
    if code.chars().count() != 18 {
        return Err(error::Invalid(format!("{code:?} has {} characters; a code has 18", code.chars().count())));
    }
    if let Some(bad) = code.chars().find(|c| !USCC_CHARS.contains(*c)) {
        return Err(error::Invalid(format!("{code:?} contains {bad:?}; codes use 0-9 and A-Y without I, O, S, V, Z")));
    }
    let expected = uscc_check_char(&code[..17]).expect("charset checked above");
    let got = code.chars().nth(17).expect("length checked above");
    if got != expected {
        return Err(error::Invalid(format!("{code:?} fails its check character: ends in {got}, expected {expected}")));
    }
    Ok(())
}

/// A taxonomy code: one to three levels of two digits, joined by '.'.
pub fn check_category(code: &str) -> Result<(), error::Invalid> {
    let parts: Vec<&str> = code.split('.').collect();
    let ok =
        (1..=3).contains(&parts.len()) && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok { Ok(()) } else { Err(error::Invalid(format!("{code:?} is not a taxonomy code like \"01.02.03\""))) }
}

fn check_local_id(id: &str) -> Result<(), error::Invalid> {
    if id.len() > 64 {
        return Err(error::Invalid(format!(
            "is {} bytes long; use 1 to 64 of A-Z, a-z, 0-9, '-', '_' and '.'",
            id.len()
        )));
    }
    let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(error::Invalid(format!("{id:?}: use 1 to 64 of A-Z, a-z, 0-9, '-', '_' and '.'"))) }
}

fn check_date(s: &str) -> Result<(), error::Invalid> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt).map(|_| ()).map_err(|_| error::Invalid(format!("{s:?} is not a date YYYY-MM-DD")))
}

impl InstrumentRecord {
    /// Checks every rule a stored record must satisfy. `city` is the node's city.
    pub fn validate(&self, city: &str) -> Result<(), Invalid> {
        check_local_id(&self.local_id).map_err(|r| invalid("local_id", r))?;
        self.check_sizes()?;
        if !self.city.is_empty() && self.city != city {
            return Err(invalid("city", format!("{:?} belongs to another node; this node is {city:?}", self.city)));
        }
        if self.name_zh.trim().is_empty() {
            return Err(invalid("name_zh", "is required"));
        }
        if self.name_en.trim().is_empty() {
            return Err(invalid("name_en", "is required"));
        }
        check_category(&self.category).map_err(|r| invalid("category", r))?;
        if !self.commissioned_on.is_empty() {
            check_date(&self.commissioned_on).map_err(|r| invalid("commissioned_on", r))?;
        }
        if self.original_value_fen < 0 {
            return Err(invalid("original_value_fen", "must not be negative"));
        }
        if self.institution_name.trim().is_empty() {
            return Err(invalid("institution_name", "is required"));
        }
        check_uscc(&self.institution_uscc).map_err(|r| invalid("institution_uscc", r))?;
        if !self.contact_email.is_empty() {
            let ok = self
                .contact_email
                .split_once('@')
                .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !d.contains('@'));
            if !ok {
                return Err(invalid("contact_email", format!("{:?} is not an e-mail address", self.contact_email)));
            }
        }
        for a in &self.accreditations {
            if a != "CMA" && a != "CNAS" {
                return Err(invalid("accreditations", format!("{a:?}: known accreditations are CMA and CNAS")));
            }
        }
        if self.price_internal_fen < 0 || self.price_external_fen < 0 {
            return Err(invalid("price", "prices must not be negative"));
        }
        let url_ok = self.photo_url.is_empty()
            || self.photo_url.starts_with("https://")
            || self.photo_url.starts_with("http://");
        if !url_ok {
            return Err(invalid("photo_url", format!("{:?} is not an http(s) URL", self.photo_url)));
        }
        Ok(())
    }
}

/// Longest text fields, in characters. Names and short fields are what a
/// person reads in a list; a description is a few paragraphs. Generous for
/// real records, and small enough that a page of 200 hits stays far below
/// any message limit.
pub const MAX_SHORT_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 4_000;
pub const MAX_NOTES_CHARS: usize = 2_000;
pub const MAX_URL_CHARS: usize = 2_048;
/// Most entries in a list field, and the longest entry.
pub const MAX_LIST_ITEMS: usize = 32;
pub const MAX_LIST_ITEM_CHARS: usize = 100;

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    // Bytes first: a huge value is refused without counting its characters.
    if value.len() > max * 4 || value.chars().count() > max {
        return Err(invalid(field, format!("is {} bytes long; at most {max} characters", value.len())));
    }
    Ok(())
}

impl InstrumentRecord {
    /// Every field within its size limit.
    fn check_sizes(&self) -> Result<(), Invalid> {
        let short = [
            ("name_zh", &self.name_zh),
            ("name_en", &self.name_en),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("asset_number", &self.asset_number),
            ("institution_name", &self.institution_name),
            ("department", &self.department),
            ("site", &self.site),
            ("building", &self.building),
            ("room", &self.room),
            ("contact_name", &self.contact_name),
            ("contact_phone", &self.contact_phone),
            ("contact_email", &self.contact_email),
        ];
        for (field, value) in short {
            check_len(field, value, MAX_SHORT_CHARS)?;
        }
        check_len("description", &self.description, MAX_DESCRIPTION_CHARS)?;
        check_len("booking_notes", &self.booking_notes, MAX_NOTES_CHARS)?;
        check_len("photo_url", &self.photo_url, MAX_URL_CHARS)?;
        let lists = [
            ("techniques", self.techniques.len()),
            ("accreditations", self.accreditations.len()),
            ("service_modes", self.service_modes.len()),
        ];
        for (field, n) in lists {
            if n > MAX_LIST_ITEMS {
                return Err(invalid(field, format!("has {n} entries; at most {MAX_LIST_ITEMS}")));
            }
        }
        for t in &self.techniques {
            check_len("techniques", t, MAX_LIST_ITEM_CHARS)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid record for tests to vary.
    pub(crate) fn sample(local_id: &str) -> InstrumentRecord {
        InstrumentRecord {
            local_id: local_id.into(),
            city: String::new(),
            name_zh: "核磁共振波谱仪".into(),
            name_en: "Nuclear Magnetic Resonance Spectrometer (NMR)".into(),
            description: "400 MHz".into(),
            category: "01.06.01".into(),
            techniques: vec!["1H".into(), "13C".into()],
            manufacturer: "Bruker".into(),
            model: "AVANCE NEO 400".into(),
            asset_number: "A-1".into(),
            commissioned_on: "2021-05-01".into(),
            original_value_fen: 450_000_000,
            institution_name: "中国科学技术大学".into(),
            institution_uscc: uscc_with_check("12100000485002042").unwrap(),
            department: "理化科学实验中心".into(),
            site: "东区".into(),
            building: "B".into(),
            room: "101".into(),
            contact_name: "仪器平台办公室".into(),
            contact_phone: "0551-63600000".into(),
            contact_email: "nmr@example.cn".into(),
            access_level: AccessLevel::Open,
            training_required: true,
            accreditations: vec!["CMA".into()],
            service_modes: vec![ServiceMode::StaffOperated],
            price_unit: PriceUnit::Hour,
            price_internal_fen: 20_000,
            price_external_fen: 40_000,
            booking_notes: String::new(),
            status: Status::Available,
            photo_url: String::new(),
            accepts_vouchers: true,
        }
    }

    #[test]
    fn money_prints_as_yuan_with_two_decimals() {
        assert_eq!(
            (yuan(0), yuan(5), yuan(91_013), yuan(-1_050), yuan(-5)),
            ("0.00".into(), "0.05".into(), "910.13".into(), "-10.50".into(), "-0.05".into())
        );
    }

    #[test]
    fn uscc_check_character() {
        let first17 = "91310000MA1FL4TQ1";
        let c = uscc_check_char(first17).unwrap();
        assert!(check_uscc(&format!("{first17}{c}")).is_ok());
        let wrong = if c == '0' { '1' } else { '0' };
        assert!(check_uscc(&format!("{first17}{wrong}")).unwrap_err().contains("check character"));
        assert!(check_uscc("9131").unwrap_err().contains("18"));
        assert!(check_uscc("91310000MA1FL4TQIX").unwrap_err().contains("'I'"));
    }

    #[test]
    fn sample_is_valid_and_each_rule_bites() {
        let r = sample("nmr-1");
        assert_eq!(r.validate("hefei"), Ok(()));
        type Breaker = fn(&mut InstrumentRecord);
        let cases: Vec<(&str, Breaker)> = vec![
            ("local_id", |r| r.local_id = "a b".into()),
            ("city", |r| r.city = "wuhu".into()),
            ("name_zh", |r| r.name_zh = " ".into()),
            ("category", |r| r.category = "1.2".into()),
            ("commissioned_on", |r| r.commissioned_on = "2021-13-01".into()),
            ("institution_uscc", |r| r.institution_uscc = "123".into()),
            ("contact_email", |r| r.contact_email = "nobody".into()),
            ("accreditations", |r| r.accreditations = vec!["ISO".into()]),
            ("price", |r| r.price_external_fen = -1),
            ("photo_url", |r| r.photo_url = "ftp://x".into()),
            ("name_en", |r| r.name_en = "x".repeat(MAX_SHORT_CHARS + 1)),
            ("name_zh", |r| r.name_zh = "电".repeat(6_000_000)),
            ("description", |r| r.description = "d".repeat(10 << 20)),
            ("booking_notes", |r| r.booking_notes = "n".repeat(MAX_NOTES_CHARS + 1)),
            ("techniques", |r| r.techniques = vec!["t".into(); MAX_LIST_ITEMS + 1]),
            ("techniques", |r| r.techniques = vec!["t".repeat(MAX_LIST_ITEM_CHARS + 1)]),
            ("service_modes", |r| r.service_modes = vec![ServiceMode::MailIn; 1000]),
            ("local_id", |r| r.local_id = "x".repeat(1 << 20)),
        ];
        for (field, break_it) in cases {
            let mut bad = r.clone();
            break_it(&mut bad);
            assert_eq!(bad.validate("hefei").unwrap_err().field, field);
        }
    }
}
