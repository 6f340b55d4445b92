//! A deterministic demo inventory for the whole corridor: real kinds of
//! instrument under the names platforms really give them
//! (`node/data/demo_kinds.csv`, 206 kinds), real makers and models, the real
//! institutions the corridor's directory names, and generated ones around
//! them. Every node generates the same corridor and keeps its own city's share.

use corridor_proto::cities::{CITIES, City};

use crate::catalog::model::{AccessLevel, InstrumentRecord, PriceUnit, ServiceMode, Status, uscc_with_check};
use crate::error::Invalid;

/// How much demo data to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The G60 shared directory at its start: 1,746 instruments, 83 institutions.
    G60,
    /// The Yangtze River Delta platform: 26,733 instruments, 1,195 institutions.
    Yrd,
    /// Ten times the delta's instruments, for load tests.
    Yrd10,
}

impl Scale {
    pub fn parse(s: &str) -> Option<Scale> {
        match s {
            "g60" => Some(Scale::G60),
            "yrd" => Some(Scale::Yrd),
            "yrd10" => Some(Scale::Yrd10),
            _ => None,
        }
    }

    /// (instruments, institutions)
    pub fn size(self) -> (usize, usize) {
        match self {
            Scale::G60 => (1_746, 83),
            Scale::Yrd => (26_733, 1_195),
            Scale::Yrd10 => (267_330, 1_195),
        }
    }
}

/// One kind of instrument as `node/data/demo_kinds.csv` lists it: several
/// real names in each language (platforms name the same kind differently),
/// and maker/model pairs that exist. Kept apart from the search thesaurus,
/// so that the demo can surprise the search instead of agreeing with it.
struct Kind {
    slug: String,
    category: String,
    names_zh: Vec<String>,
    names_en: Vec<String>,
    makers: Vec<(String, String)>,
    techniques: Vec<String>,
    /// Original value range, yuan.
    value: (i64, i64),
    /// Internal price per unit range, yuan.
    price: (i64, i64),
    unit: PriceUnit,
    notes: String,
}

const KINDS_CSV: &str = include_str!("../../data/demo_kinds.csv");

/// The demo's kinds, read once from the shipped file.
fn kinds() -> &'static [Kind] {
    static KINDS: std::sync::OnceLock<Vec<Kind>> = std::sync::OnceLock::new();
    KINDS.get_or_init(|| parse_kinds(KINDS_CSV).expect("node/data/demo_kinds.csv is valid"))
}

fn parse_kinds(csv_text: &str) -> Result<Vec<Kind>, Invalid> {
    let list = |s: &str| -> Vec<String> {
        s.split(';').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()
    };
    let range = |s: &str, scale: i64| -> Result<(i64, i64), Invalid> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not a range min-max"))?;
        let parse = |x: &str| x.trim().parse::<i64>().map_err(|e| format!("{x:?}: {e}"));
        Ok((parse(a)? * scale, parse(b)? * scale))
    };
    let mut reader = csv::ReaderBuilder::new().comment(Some(b'#')).from_reader(csv_text.as_bytes());
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| e.to_string())?;
        let at = |what: &str, e: String| Invalid(format!("demo kind {}: {what}: {e}", &row[0]));
        let makers = list(&row[4])
            .iter()
            .map(|m| m.split_once('|').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| at("makers", "use maker|model".into()))?;
        let kind = Kind {
            slug: row[0].to_string(),
            category: row[1].to_string(),
            names_zh: list(&row[2]),
            names_en: list(&row[3]),
            makers,
            techniques: list(&row[5]),
            value: range(&row[6], 10_000).map_err(|e| at("value_wan", e.0))?,
            price: range(&row[7], 1).map_err(|e| at("price_yuan", e.0))?,
            unit: if &row[8] == "sample" { PriceUnit::Sample } else { PriceUnit::Hour },
            notes: row[9].to_string(),
        };
        if kind.names_zh.is_empty() || kind.names_en.is_empty() || kind.makers.is_empty() {
            return Err(at("names and makers", "at least one of each".into()));
        }
        out.push(kind);
    }
    Ok(out)
}

const REAL: &[(&str, &str, &str)] = &[
    ("hefei", "中国科学技术大学", "University of Science and Technology of China"),
    ("hefei", "中国科学院合肥物质科学研究院", "Hefei Institutes of Physical Science, CAS"),
    ("shanghai", "东华大学", "Donghua University"),
    ("shanghai", "上海工程技术大学", "Shanghai University of Engineering Science"),
];

/// Generic kinds of institution around the real ones.
const INSTITUTE_KINDS: &[(&str, &str)] = &[
    ("新材料研究院", "Institute of New Materials"),
    ("分析测试中心", "Analysis and Testing Center"),
    ("检验检测研究院", "Inspection and Testing Institute"),
    ("产业技术研究院", "Industrial Technology Research Institute"),
    ("智能制造研究院", "Intelligent Manufacturing Institute"),
    ("生物医药创新中心", "Biomedicine Innovation Center"),
    ("集成电路创新中心", "Integrated Circuit Innovation Center"),
    ("计量测试研究所", "Institute of Metrology and Testing"),
    ("高新区公共技术服务平台", "High-tech Zone Public Technology Platform"),
    ("科技园公共实验室", "Science Park Shared Laboratory"),
];

/// Relative weight of each city in the directory, in `CITIES` order.
const CITY_WEIGHTS: [u64; 9] = [16, 8, 18, 6, 6, 16, 18, 7, 5];

/// Administrative division codes, for plausible credit codes.
const DIVISIONS: [&str; 9] = ["310117", "330400", "330100", "330700", "330500", "320500", "340100", "340200", "341800"];
const PHONE_AREA: [&str; 9] = ["021", "0573", "0571", "0579", "0572", "0512", "0551", "0553", "0563"];

/// splitmix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Inst {
    city: usize,
    zh: String,
    en: String,
    uscc: String,
    email_domain: String,
}

fn institutions(n: usize, rng: &mut Rng) -> Vec<Inst> {
    let total: u64 = CITY_WEIGHTS.iter().sum();
    let mut per_city_count = [0usize; 9];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (city, zh, en) = if let Some((slug, zh, en)) = REAL.get(i) {
            let city = CITIES.iter().position(|c| c.slug == *slug).expect("real city");
            (city, zh.to_string(), en.to_string())
        } else {
            let mut roll = rng.below(total);
            let city = CITY_WEIGHTS.iter().position(|w| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            });
            let city = city.expect("weights cover the roll");
            let c = &CITIES[city];
            let (kzh, ken) = INSTITUTE_KINDS[per_city_count[city] % INSTITUTE_KINDS.len()];
            let round = per_city_count[city] / INSTITUTE_KINDS.len();
            let (zh, en) = if round == 0 {
                (format!("{}{}", c.name_zh, kzh), format!("{} {}", c.name_en, ken))
            } else {
                (
                    format!("{}{}（第{}分部）", c.name_zh, kzh, round + 1),
                    format!("{} {}, Branch {}", c.name_en, ken, round + 1),
                )
            };
            (city, zh, en)
        };
        per_city_count[city] += 1;
        let org: String = (0..9).map(|_| *rng.pick(&b"0123456789ABCDEFGHJKLMNPQRTUWXY"[..]) as char).collect();
        let uscc = uscc_with_check(&format!("12{}{org}", DIVISIONS[city])).expect("valid charset");
        out.push(Inst { city, zh, en, uscc, email_domain: format!("inst{i:04}.demo.corridor.example") });
    }
    out
}

/// The whole corridor's demo inventory, as (city slug, record) pairs.
pub fn corridor_inventory(scale: Scale) -> Vec<(&'static City, InstrumentRecord)> {
    let (n, m) = scale.size();
    let mut rng = Rng(0x0060_C0FF_EE00_2018);
    let insts = institutions(m, &mut rng);
    let mut out = Vec::with_capacity(n);
    for seq in 0..n {
        // Every institution owns at least one instrument.
        let inst = if seq < m { &insts[seq] } else { rng.pick(&insts) };
        let kind = rng.pick(kinds());
        let (maker, model) = rng.pick(&kind.makers);
        let name_zh = rng.pick(&kind.names_zh);
        let name_en = rng.pick(&kind.names_en);
        let city = &CITIES[inst.city];
        let internal = rng.range(kind.price.0, kind.price.1) * 100;
        let year = rng.range(2012, 2025);
        let modes: Vec<ServiceMode> = match rng.below(4) {
            0 => vec![ServiceMode::StaffOperated],
            1 => vec![ServiceMode::StaffOperated, ServiceMode::MailIn],
            2 => vec![ServiceMode::SelfOperated, ServiceMode::StaffOperated],
            _ => vec![ServiceMode::MailIn],
        };
        let accreditations = match rng.below(5) {
            0 => vec!["CMA".to_string(), "CNAS".to_string()],
            1 => vec!["CMA".to_string()],
            2 => vec!["CNAS".to_string()],
            _ => vec![],
        };
        let record = InstrumentRecord {
            local_id: format!("{}-{:05}", kind.slug, seq + 1),
            city: city.slug.to_string(),
            name_zh: name_zh.clone(),
            name_en: name_en.clone(),
            description: format!("{maker} {model} {name_zh}，{}。{}", kind.techniques.join("、"), kind.notes)
                .trim_end()
                .to_string(),
            category: kind.category.clone(),
            techniques: kind.techniques.clone(),
            manufacturer: maker.clone(),
            model: model.clone(),
            asset_number: format!("{}-{year}-{:04}", kind.slug.to_uppercase(), rng.below(10_000)),
            commissioned_on: format!("{year}-{:02}-{:02}", rng.range(1, 12), rng.range(1, 28)),
            original_value_fen: rng.range(kind.value.0, kind.value.1) * 100,
            institution_name: inst.zh.clone(),
            institution_uscc: inst.uscc.clone(),
            department: format!("{} / {}", "分析测试平台", inst.en),
            site: "主校区 Main campus".into(),
            building: format!("分析测试楼 {}", ["A", "B", "C", "D"][rng.below(4) as usize]),
            room: format!("{}{:02}", rng.range(1, 5), rng.range(1, 30)),
            contact_name: "仪器平台办公室 Instrument Office".into(),
            contact_phone: format!("{}-{:08}", PHONE_AREA[inst.city], 60_000_000 + rng.below(30_000_000)),
            contact_email: format!("instruments@{}", inst.email_domain),
            access_level: match rng.below(10) {
                0 => AccessLevel::Restricted,
                1 | 2 => AccessLevel::ResearchOnly,
                _ => AccessLevel::Open,
            },
            training_required: modes.contains(&ServiceMode::SelfOperated),
            accreditations,
            service_modes: modes,
            price_unit: kind.unit,
            price_internal_fen: internal,
            price_external_fen: internal * 3 / 2,
            booking_notes: kind.notes.clone(),
            status: if rng.below(25) == 0 { Status::Maintenance } else { Status::Available },
            photo_url: String::new(),
            accepts_vouchers: rng.below(10) != 0,
        };
        out.push((city, record));
    }
    out
}

/// One city's share of the demo inventory.
pub fn city_inventory(scale: Scale, city: &str) -> Vec<InstrumentRecord> {
    corridor_inventory(scale).into_iter().filter(|(c, _)| c.slug == city).map(|(_, r)| r).collect()
}

/// `city`'s instruments that take vouchers and are priced by the hour, as
/// (id, price per hour in fen): the ones a voucher demo books.
pub fn voucher_instruments(scale: Scale, city: &str) -> Vec<(String, i64)> {
    city_inventory(scale, city)
        .into_iter()
        .filter(|r| {
            r.accepts_vouchers
                && r.status == crate::catalog::model::Status::Available
                && r.price_unit == crate::catalog::model::PriceUnit::Hour
                && r.price_external_fen > 0
        })
        .map(|r| (format!("{city}/{}", r.local_id), r.price_external_fen))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn g60_matches_the_directory_and_every_record_is_valid() {
        let all = corridor_inventory(Scale::G60);
        assert_eq!(all.len(), 1_746);
        let insts: HashSet<&str> = all.iter().map(|(_, r)| r.institution_uscc.as_str()).collect();
        assert_eq!(insts.len(), 83);
        let ids: HashSet<&str> = all.iter().map(|(_, r)| r.local_id.as_str()).collect();
        assert_eq!(ids.len(), all.len(), "local ids are unique");
        for (city, r) in &all {
            r.validate(city.slug).unwrap_or_else(|e| panic!("{}: {e}", r.local_id));
        }
        for c in CITIES {
            assert!(all.iter().any(|(city, _)| city.slug == c.slug), "{} has instruments", c.slug);
        }
        assert!(all.iter().any(|(c, r)| c.slug == "hefei" && r.institution_name == "中国科学技术大学"));
    }

    #[test]
    fn the_kinds_file_loads_and_covers_the_field() {
        let k = kinds();
        assert!(k.len() >= 100, "{} kinds", k.len());
        assert!(k.iter().all(|k| k.value.0 >= 300_000 && k.value.0 <= k.value.1 && k.price.0 <= k.price.1));
        let err = parse_kinds(
            "kind,category,names_zh,names_en,makers,techniques,value_wan,price_yuan,unit,notes\nx,01,甲,a,nomodel,t,1-2,1-2,hour,\n",
        );
        assert!(err.err().unwrap().contains("maker|model"));
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(city_inventory(Scale::G60, "wuhu"), city_inventory(Scale::G60, "wuhu"));
    }
}
