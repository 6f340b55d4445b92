//! Where the booking engine keeps its values in the node's key space: a
//! prefix per kind of value.

/// One instrument's calendar for one local day (see `calendar::day_of`).
pub fn calendar(instrument: &str, day: i64) -> Vec<u8> {
    format!("c/{instrument}/{day:08}").into_bytes()
}
pub fn booking(id: &str) -> Vec<u8> {
    format!("b/{id}").into_bytes()
}
pub const BOOKINGS: &[u8] = b"b/";
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
