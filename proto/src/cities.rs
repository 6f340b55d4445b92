//! The nine cities of the G60 corridor. Their slugs are the prefix of every
//! instrument id and part of every city identity, so they are contract.

/// A corridor city and the province-level unit it settles under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct City {
    pub slug: &'static str,
    pub name_zh: &'static str,
    pub name_en: &'static str,
    pub province: &'static str,
    pub province_zh: &'static str,
}

const fn city(
    slug: &'static str,
    name_zh: &'static str,
    name_en: &'static str,
    province: &'static str,
    province_zh: &'static str,
) -> City {
    City { slug, name_zh, name_en, province, province_zh }
}

/// In corridor order; node ports in the demo follow this order.
pub const CITIES: [City; 9] = [
    city("shanghai", "上海松江", "Shanghai (Songjiang)", "Shanghai", "上海"),
    city("jiaxing", "嘉兴", "Jiaxing", "Zhejiang", "浙江"),
    city("hangzhou", "杭州", "Hangzhou", "Zhejiang", "浙江"),
    city("jinhua", "金华", "Jinhua", "Zhejiang", "浙江"),
    city("huzhou", "湖州", "Huzhou", "Zhejiang", "浙江"),
    city("suzhou", "苏州", "Suzhou", "Jiangsu", "江苏"),
    city("hefei", "合肥", "Hefei", "Anhui", "安徽"),
    city("wuhu", "芜湖", "Wuhu", "Anhui", "安徽"),
    city("xuancheng", "宣城", "Xuancheng", "Anhui", "安徽"),
];

/// Looks a city up by its slug.
pub fn city_by_slug(slug: &str) -> Option<&'static City> {
    CITIES.iter().find(|c| c.slug == slug)
}

/// The four province-level units, in a fixed order.
pub const PROVINCES: [&str; 4] = ["Shanghai", "Zhejiang", "Jiangsu", "Anhui"];

/// Splits an instrument id `"<city>/<local-id>"` into its city and local id.
/// Returns `None` when either part is empty or the city is not a corridor city.
pub fn split_instrument_id(id: &str) -> Option<(&'static City, &str)> {
    let (city, local) = id.split_once('/')?;
    if local.is_empty() {
        return None;
    }
    Some((city_by_slug(city)?, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_routes_by_city_prefix() {
        let (city, local) = split_instrument_id("hefei/tem-0001").unwrap();
        assert_eq!(city.slug, "hefei");
        assert_eq!(local, "tem-0001");
        assert!(split_instrument_id("hefei/").is_none());
        assert!(split_instrument_id("atlantis/x").is_none());
        assert!(split_instrument_id("no-slash").is_none());
    }

    #[test]
    fn every_province_has_a_city() {
        for p in PROVINCES {
            assert!(CITIES.iter().any(|c| c.province == p), "{p}");
        }
    }
}
