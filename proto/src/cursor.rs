//! Search cursors: opaque to clients, shared by the gateway and the nodes.
//! A cursor is the exact score and the id of the last hit of a page; the next
//! page holds the hits strictly after it in ranking order (score descending,
//! then id ascending), so no hit is repeated or skipped between pages.

use std::cmp::Ordering;

/// Ranking order of two (score, id) pairs.
pub fn rank(a: (f32, &str), b: (f32, &str)) -> Ordering {
    rank_bytes((a.0, a.1.as_bytes()), (b.0, b.1.as_bytes()))
}

/// [`rank`] on ids as UTF-8 bytes, which order as their strings do.
pub fn rank_bytes(a: (f32, &[u8]), b: (f32, &[u8])) -> Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

pub fn encode(score: f32, id: &str) -> String {
    format!("{:08x}.{id}", score.to_bits())
}

pub fn decode(c: &str) -> Option<(f32, String)> {
    let (bits, id) = c.split_once('.')?;
    if bits.len() != 8 || id.is_empty() {
        return None;
    }
    Some((f32::from_bits(u32::from_str_radix(bits, 16).ok()?), id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_exactly() {
        let c = encode(7.123_456_5, "hefei/nmr-00001");
        assert_eq!(decode(&c), Some((7.123_456_5, "hefei/nmr-00001".to_string())));
        assert_eq!(decode("nonsense"), None);
        assert_eq!(decode("zzzzzzzz.x"), None);
    }

    #[test]
    fn ranking_is_score_then_id() {
        assert_eq!(rank((2.0, "b"), (1.0, "a")), Ordering::Less);
        assert_eq!(rank((1.0, "a"), (1.0, "b")), Ordering::Less);
    }
}
