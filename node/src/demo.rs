//! A deterministic demo inventory for the whole corridor: real instrument
//! types and makers, the real institutions the corridor's directory names, and
//! generated ones around them. Every node generates the same corridor and keeps
//! its own city's share.

use corridor_proto::cities::{CITIES, City};

use crate::model::{AccessLevel, InstrumentRecord, PriceUnit, ServiceMode, Status, uscc_with_check};

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

struct Kind {
    abbr: &'static str,
    zh: &'static str,
    en: &'static str,
    category: &'static str,
    techniques: &'static [&'static str],
    makers: &'static [(&'static str, &'static str)],
    /// Original value range, yuan.
    value: (i64, i64),
    /// Internal price per unit, yuan.
    price: (i64, i64),
    unit: PriceUnit,
    notes: &'static str,
}

// Positional on purpose: it keeps the table below one row per kind.
#[allow(clippy::too_many_arguments)]
const fn k(
    abbr: &'static str,
    zh: &'static str,
    en: &'static str,
    category: &'static str,
    techniques: &'static [&'static str],
    makers: &'static [(&'static str, &'static str)],
    value: (i64, i64),
    price: (i64, i64),
    unit: PriceUnit,
    notes: &'static str,
) -> Kind {
    Kind { abbr, zh, en, category, techniques, makers, value, price, unit, notes }
}

use PriceUnit::{Hour as H, Sample as S};

const KINDS: &[Kind] = &[
    k(
        "tem",
        "场发射透射电子显微镜",
        "200 kV Field Emission Transmission Electron Microscope (TEM)",
        "01.01.01",
        &["HRTEM", "STEM", "EDS", "electron diffraction"],
        &[("JEOL", "JEM-F200"), ("Thermo Fisher Scientific", "Talos F200X"), ("Hitachi", "HF5000")],
        (8_000_000, 25_000_000),
        (600, 1_200),
        H,
        "使用前需冷却与合轴 Alignment before each session",
    ),
    k(
        "sem",
        "扫描电子显微镜",
        "Field Emission Scanning Electron Microscope (SEM)",
        "01.01.02",
        &["SE imaging", "BSE", "EDS", "EBSD"],
        &[("ZEISS", "Sigma 300"), ("Hitachi", "SU8010"), ("JEOL", "JSM-IT800")],
        (2_000_000, 6_000_000),
        (300, 600),
        H,
        "",
    ),
    k(
        "fib",
        "聚焦离子束扫描电镜双束系统",
        "Focused Ion Beam Scanning Electron Microscope (FIB-SEM)",
        "01.01.03",
        &["TEM lamella preparation", "3D tomography"],
        &[("Thermo Fisher Scientific", "Helios 5 UX"), ("ZEISS", "Crossbeam 550")],
        (9_000_000, 18_000_000),
        (900, 1_500),
        H,
        "",
    ),
    k(
        "nmr",
        "核磁共振波谱仪",
        "Nuclear Magnetic Resonance Spectrometer (NMR)",
        "01.06.01",
        &["1H", "13C", "2D NMR", "solid-state NMR"],
        &[("Bruker", "AVANCE NEO 400"), ("Bruker", "AVANCE NEO 600"), ("JEOL", "JNM-ECZ500R")],
        (3_000_000, 12_000_000),
        (150, 500),
        S,
        "",
    ),
    k(
        "epr",
        "电子顺磁共振波谱仪",
        "Electron Paramagnetic Resonance Spectrometer (EPR)",
        "01.06.02",
        &["X-band EPR", "free radicals"],
        &[("Bruker", "EMXplus"), ("JEOL", "JES-X320")],
        (2_500_000, 5_000_000),
        (300, 600),
        S,
        "",
    ),
    k(
        "xrd",
        "X射线衍射仪",
        "X-ray Diffractometer (XRD)",
        "01.03.01",
        &["powder diffraction", "phase analysis", "crystallinity"],
        &[("Bruker", "D8 Advance"), ("Rigaku", "SmartLab"), ("Malvern Panalytical", "Empyrean")],
        (1_200_000, 3_500_000),
        (100, 300),
        S,
        "",
    ),
    k(
        "scxrd",
        "单晶X射线衍射仪",
        "Single Crystal X-ray Diffractometer (SC-XRD)",
        "01.03.04",
        &["crystal structure"],
        &[("Rigaku", "XtaLAB Synergy"), ("Bruker", "D8 Venture")],
        (3_000_000, 6_000_000),
        (400, 800),
        S,
        "",
    ),
    k(
        "xps",
        "X射线光电子能谱仪",
        "X-ray Photoelectron Spectrometer (XPS)",
        "01.03.02",
        &["surface chemistry", "depth profiling"],
        &[("Thermo Fisher Scientific", "ESCALAB Xi+"), ("Kratos", "AXIS Supra+")],
        (4_000_000, 8_000_000),
        (500, 900),
        S,
        "",
    ),
    k(
        "xrf",
        "X射线荧光光谱仪",
        "X-ray Fluorescence Spectrometer (XRF)",
        "01.03.03",
        &["elemental analysis"],
        &[("Malvern Panalytical", "Zetium"), ("Rigaku", "ZSX Primus IV")],
        (800_000, 2_000_000),
        (100, 250),
        S,
        "",
    ),
    k(
        "icpms",
        "电感耦合等离子体质谱仪",
        "Inductively Coupled Plasma Mass Spectrometer (ICP-MS)",
        "01.02.01",
        &["trace elements", "isotope ratio"],
        &[("Agilent", "7900"), ("Thermo Fisher Scientific", "iCAP RQ")],
        (1_500_000, 3_000_000),
        (200, 500),
        S,
        "",
    ),
    k(
        "gcms",
        "气相色谱质谱联用仪",
        "Gas Chromatograph-Mass Spectrometer (GC-MS)",
        "01.02.02",
        &["volatile organics", "EI"],
        &[("Agilent", "8890-5977B"), ("Shimadzu", "GCMS-QP2020 NX")],
        (600_000, 1_500_000),
        (200, 400),
        S,
        "",
    ),
    k(
        "lcms",
        "液相色谱质谱联用仪",
        "Liquid Chromatograph-Mass Spectrometer (LC-MS)",
        "01.02.03",
        &["metabolomics", "proteomics", "ESI"],
        &[
            ("Waters", "Xevo TQ-XS"),
            ("SCIEX", "Triple Quad 6500+"),
            ("Thermo Fisher Scientific", "Orbitrap Exploris 480"),
        ],
        (1_500_000, 6_000_000),
        (300, 800),
        S,
        "",
    ),
    k(
        "ftir",
        "傅里叶变换红外光谱仪",
        "Fourier Transform Infrared Spectrometer (FTIR)",
        "01.04.01",
        &["ATR", "functional groups"],
        &[("Thermo Fisher Scientific", "Nicolet iS50"), ("Bruker", "INVENIO R")],
        (400_000, 1_000_000),
        (80, 200),
        S,
        "",
    ),
    k(
        "raman",
        "激光共聚焦显微拉曼光谱仪",
        "Confocal Raman Microscope (Raman)",
        "01.04.02",
        &["Raman mapping", "PL"],
        &[("HORIBA", "LabRAM HR Evolution"), ("Renishaw", "inVia Qontor")],
        (1_000_000, 2_500_000),
        (200, 400),
        H,
        "",
    ),
    k(
        "uvvis",
        "紫外可见近红外分光光度计",
        "UV-Vis-NIR Spectrophotometer",
        "01.04.03",
        &["absorbance", "reflectance"],
        &[("PerkinElmer", "Lambda 1050+"), ("Shimadzu", "UV-3600i Plus")],
        (350_000, 800_000),
        (60, 150),
        S,
        "",
    ),
    k(
        "icpoes",
        "电感耦合等离子体发射光谱仪",
        "Inductively Coupled Plasma Optical Emission Spectrometer (ICP-OES)",
        "01.04.04",
        &["major elements"],
        &[("Agilent", "5110"), ("Thermo Fisher Scientific", "iCAP PRO")],
        (600_000, 1_200_000),
        (100, 250),
        S,
        "",
    ),
    k(
        "hplc",
        "高效液相色谱仪",
        "High Performance Liquid Chromatograph (HPLC)",
        "01.05.01",
        &["separation", "purity"],
        &[("Waters", "ACQUITY Arc"), ("Agilent", "1290 Infinity II")],
        (350_000, 900_000),
        (80, 200),
        S,
        "",
    ),
    k(
        "clsm",
        "激光扫描共聚焦显微镜",
        "Confocal Laser Scanning Microscope (confocal)",
        "01.08.01",
        &["live-cell imaging", "fluorescence"],
        &[("ZEISS", "LSM 980"), ("Leica", "STELLARIS 8"), ("Nikon", "AX R")],
        (2_000_000, 6_000_000),
        (200, 500),
        H,
        "",
    ),
    k(
        "afm",
        "扫描探针显微镜",
        "Scanning Probe Microscope (AFM/SPM)",
        "01.08.02",
        &["atomic force microscopy", "KPFM", "MFM"],
        &[("Bruker", "Dimension Icon"), ("Oxford Instruments Asylum", "Cypher ES"), ("Park Systems", "NX20")],
        (1_500_000, 4_000_000),
        (300, 600),
        H,
        "",
    ),
    k(
        "tga",
        "热重分析仪",
        "Thermogravimetric Analyzer (TGA)",
        "01.09.01",
        &["thermal stability", "TG-DSC"],
        &[("TA Instruments", "TGA 5500"), ("NETZSCH", "TG 209 F1")],
        (400_000, 900_000),
        (100, 200),
        S,
        "",
    ),
    k(
        "dsc",
        "差示扫描量热仪",
        "Differential Scanning Calorimeter (DSC)",
        "01.09.02",
        &["glass transition", "melting point"],
        &[("TA Instruments", "DSC 2500"), ("METTLER TOLEDO", "DSC 3")],
        (350_000, 700_000),
        (100, 200),
        S,
        "",
    ),
    k(
        "bet",
        "全自动比表面及孔隙度分析仪",
        "Automatic Specific Surface Area and Porosity Analyzer (BET)",
        "02.02.01",
        &["BET surface area", "pore size distribution", "N2 adsorption"],
        &[("Micromeritics", "ASAP 2460"), ("Anton Paar Quantachrome", "Autosorb-iQ")],
        (400_000, 900_000),
        (150, 300),
        S,
        "使用前需预热20分钟以上 Preheat for more than 20 minutes before use",
    ),
    k(
        "psa",
        "激光粒度分析仪",
        "Laser Particle Size Analyzer",
        "02.02.02",
        &["particle size distribution", "laser diffraction"],
        &[("Malvern Panalytical", "Mastersizer 3000"), ("HORIBA", "LA-960V2")],
        (350_000, 700_000),
        (80, 150),
        S,
        "",
    ),
    k(
        "utm",
        "万能材料试验机",
        "Universal Testing Machine",
        "02.01.01",
        &["tensile", "compression", "bending"],
        &[("Instron", "5967"), ("ZwickRoell", "Z100")],
        (400_000, 1_200_000),
        (150, 300),
        H,
        "",
    ),
    k(
        "ppms",
        "综合物性测量系统",
        "Physical Property Measurement System (PPMS)",
        "02.03.01",
        &["resistivity", "heat capacity", "low temperature"],
        &[("Quantum Design", "PPMS DynaCool")],
        (4_000_000, 7_000_000),
        (300, 600),
        H,
        "降温需约2小时 Cool-down takes about 2 hours",
    ),
    k(
        "squid",
        "超导量子干涉磁强计",
        "SQUID Magnetometer (MPMS)",
        "02.03.02",
        &["magnetization", "susceptibility"],
        &[("Quantum Design", "MPMS3")],
        (4_000_000, 6_000_000),
        (300, 600),
        H,
        "",
    ),
    k(
        "cmm",
        "三坐标测量机",
        "Coordinate Measuring Machine (CMM)",
        "03.01.01",
        &["dimensional metrology"],
        &[("ZEISS", "CONTURA"), ("Hexagon", "Global S")],
        (600_000, 2_000_000),
        (200, 400),
        H,
        "",
    ),
    k(
        "vna",
        "矢量网络分析仪",
        "Vector Network Analyzer (VNA)",
        "04.01.01",
        &["S-parameters", "RF"],
        &[("Keysight", "PNA-X N5247B"), ("Rohde & Schwarz", "ZNA43")],
        (1_000_000, 3_000_000),
        (200, 500),
        H,
        "",
    ),
    k(
        "ct",
        "工业计算机断层扫描系统",
        "Industrial Computed Tomography System (CT)",
        "08.01.01",
        &["non-destructive testing", "3D imaging"],
        &[("ZEISS", "METROTOM 1500"), ("YXLON", "FF35 CT")],
        (3_000_000, 8_000_000),
        (500, 1_000),
        H,
        "",
    ),
    k(
        "fcm",
        "流式细胞仪",
        "Flow Cytometer",
        "11.01.01",
        &["cell sorting", "immunophenotyping"],
        &[("BD Biosciences", "FACSCelesta"), ("Beckman Coulter", "CytoFLEX S")],
        (800_000, 3_000_000),
        (150, 400),
        H,
        "",
    ),
];

/// Institutions the corridor's own directory names, with their cities.
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
        let kind = rng.pick(KINDS);
        let &(maker, model) = rng.pick(kind.makers);
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
            local_id: format!("{}-{:05}", kind.abbr, seq + 1),
            city: city.slug.to_string(),
            name_zh: kind.zh.into(),
            name_en: kind.en.into(),
            description: format!("{} {} {}，{}。{}", maker, model, kind.zh, kind.techniques.join("、"), kind.notes)
                .trim_end()
                .to_string(),
            category: kind.category.into(),
            techniques: kind.techniques.iter().map(|t| t.to_string()).collect(),
            manufacturer: maker.into(),
            model: model.into(),
            asset_number: format!("{}-{year}-{:04}", kind.abbr.to_uppercase(), rng.below(10_000)),
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
            booking_notes: kind.notes.into(),
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
                && r.status == crate::model::Status::Available
                && r.price_unit == crate::model::PriceUnit::Hour
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
    fn generation_is_deterministic() {
        assert_eq!(city_inventory(Scale::G60, "wuhu"), city_inventory(Scale::G60, "wuhu"));
    }
}
