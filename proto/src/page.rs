//! Page tokens for booking lists, shared by the gateway and the nodes. A
//! list is in (start, id) order; a token is the start (RFC 3339, as the
//! answers carry it, always +08:00) and the id of the last booking of a page,
//! and the next page holds the bookings strictly after it. Opaque to clients.

/// Bookings per page when the client names no size.
pub const DEFAULT_SIZE: usize = 1_000;
/// Most bookings one page may hold: far below the message limits.
pub const MAX_SIZE: usize = 5_000;

pub fn size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_SIZE,
        n => (n as usize).min(MAX_SIZE),
    }
}

pub fn encode(start: &str, id: &str) -> String {
    format!("{start}|{id}")
}

/// A page token that no list answer carried: the caller made it up or
/// changed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page_token is not one this service issued; pass next_page_token back unchanged")]
pub struct BadPageToken;

/// `None` for the first page.
pub fn decode(token: &str) -> Result<Option<(String, String)>, BadPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.split_once('|') {
        Some((start, id)) if !start.is_empty() && !id.is_empty() => Ok(Some((start.into(), id.into()))),
        _ => Err(BadPageToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let t = encode("2026-12-07T09:00:00+08:00", "hefei/bk-12");
        assert_eq!(decode(&t).unwrap(), Some(("2026-12-07T09:00:00+08:00".into(), "hefei/bk-12".into())));
        assert_eq!(decode("").unwrap(), None);
        assert_eq!(decode("garbage"), Err(BadPageToken));
        assert_eq!(decode("|hefei/bk-1"), Err(BadPageToken));
        assert_eq!(
            BadPageToken.to_string(),
            "page_token is not one this service issued; pass next_page_token back unchanged"
        );
        assert_eq!((size(0), size(7), size(1_000_000)), (DEFAULT_SIZE, 7, MAX_SIZE));
    }
}
