//! Where the booking engine keeps its values in the node's key space: a
//! prefix per kind of value.

use super::time::Instant;

/// One instrument's calendar for one local day (see `calendar::day_of`).
pub fn calendar(instrument: &str, day: i64) -> Vec<u8> {
    format!("c/{instrument}/{day:08}").into_bytes()
}
pub fn booking(id: &str) -> Vec<u8> {
    format!("b/{id}").into_bytes()
}
pub const BOOKINGS: &[u8] = b"b/";
/// Every booking in (start, id) order: the key of a page's place, the
/// booking's id as the value.
pub const BY_START: &[u8] = b"bs/";
/// One requester's bookings in (start, id) order.
pub fn by_requester(requester: &str) -> Vec<u8> {
    let mut key = b"br/".to_vec();
    key.extend(requester.as_bytes());
    key.push(0);
    key
}
/// A booking's place under `prefix`: its start as bytes that sort as the
/// numbers do (the sign bit flipped, big-endian), then its id.
pub fn in_order(mut prefix: Vec<u8>, start: Instant, id: &str) -> Vec<u8> {
    prefix.extend(((start as u64) ^ (1 << 63)).to_be_bytes());
    prefix.extend(id.as_bytes());
    prefix
}
/// Present once every stored booking is in the two orders above.
pub const ORDERED: &[u8] = b"m/bookings-ordered";
pub fn rules(instrument: &str) -> Vec<u8> {
    format!("r/{instrument}").into_bytes()
}
pub fn qualification(instrument: &str, holder: &str) -> Vec<u8> {
    format!("q/{instrument}\n{holder}").into_bytes()
}
/// Bookings whose voucher payment still needs a call to the issuer.
pub fn outbox(booking: &str) -> Vec<u8> {
    format!("o/{booking}").into_bytes()
}
pub const OUTBOX: &[u8] = b"o/";
