//! Instants as unix seconds, read from and written as RFC 3339. Everything the
//! corridor shows is in Asia/Shanghai (UTC+8, no daylight saving).

use crate::error::Invalid;
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339, macros::offset};

/// Asia/Shanghai.
pub const SHANGHAI: UtcOffset = offset!(+8);

/// Seconds since the unix epoch.
pub type Instant = i64;

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 86_400;

/// Parses an RFC 3339 time with an explicit offset, on a whole minute. A
/// time without an offset is refused: it would mean different instants in
/// different places.
pub fn parse(field: &str, s: &str) -> Result<Instant, Invalid> {
    let t = parse_any(field, s)?;
    if t % 60 != 0 {
        return Err(Invalid(format!("{field} {s:?}: bookings are in whole minutes")));
    }
    Ok(t)
}

/// Parses an RFC 3339 time with an explicit offset, to the second.
pub fn parse_any(field: &str, s: &str) -> Result<Instant, Invalid> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        let naive = time::PrimitiveDateTime::parse(
            s,
            &time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .is_ok()
            || time::PrimitiveDateTime::parse(
                s,
                &time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]"),
            )
            .is_ok();
        if naive {
            format!("{field} {s:?} has no UTC offset; write the zone, e.g. {s}+08:00 for Asia/Shanghai")
        } else {
            format!("{field} {s:?} is not an RFC 3339 time such as 2026-12-01T09:00:00+08:00")
        }
    })?;
    if t.nanosecond() != 0 {
        return Err(Invalid(format!("{field} {s:?}: times are in whole seconds")));
    }
    Ok(t.unix_timestamp())
}

/// Formats an instant in Asia/Shanghai.
pub fn format(t: Instant) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(|d| d.to_offset(SHANGHAI).format(&Rfc3339).expect("formattable"))
        .unwrap_or_else(|_| t.to_string())
}

/// A short local form for messages: "2026-12-01 09:00".
pub fn short(t: Instant) -> String {
    let s = format(t);
    s.get(..16).map(|p| p.replace('T', " ")).unwrap_or(s)
}

/// The instant in Asia/Shanghai's calendar and clock.
pub fn local(t: Instant) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).expect("in range").to_offset(SHANGHAI)
}

/// The local (Asia/Shanghai) weekday, 1 = Monday, and minute of the day.
pub fn local_weekday_minute(t: Instant) -> (u8, u32) {
    let d = local(t);
    (d.weekday().number_from_monday(), d.hour() as u32 * 60 + d.minute() as u32)
}

/// The instant of local midnight starting the day that contains `t`.
pub fn local_midnight(t: Instant) -> Instant {
    let (_, minute) = local_weekday_minute(t);
    t - (t.rem_euclid(MINUTE)) - minute as i64 * MINUTE
}

/// Parses "HH:MM" into minutes after midnight; "24:00" is the end of the day.
pub fn parse_clock(s: &str) -> Result<u32, Invalid> {
    let bad = || Invalid(format!("{s:?} is not a time of day HH:MM"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub fn format_clock(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// The node's clock, in unix seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        ::time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// Wall-clock time moved by a shared offset in seconds: the in-process test
/// mesh moves every node's clock at once, so that a booking can be completed
/// after its start without waiting for it.
pub struct SkewedClock(pub std::sync::Arc<std::sync::atomic::AtomicI64>);

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        SystemClock.now() + self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Wall-clock time at creation, then advancing with tokio's clock, so that
/// tests on a paused runtime control it with `tokio::time::advance`.
pub struct TokioClock {
    base: Instant,
    started: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base: Instant) -> Self {
        TokioClock { base, started: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        self.base + self.started.elapsed().as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_explicit_and_shown_in_shanghai() {
        let a = parse("start", "2026-12-01T09:00:00+08:00").unwrap();
        let b = parse("start", "2026-12-01T01:00:00Z").unwrap();
        assert_eq!(a, b, "the same instant in two zones");
        assert_eq!(format(b), "2026-12-01T09:00:00+08:00");
        let err = parse("start", "2026-12-01T09:00:00").unwrap_err();
        assert!(err.contains("no UTC offset"), "{err}");
        assert!(parse("start", "tomorrow").unwrap_err().contains("RFC 3339"));
        assert!(parse("start", "2026-12-01T09:00:30+08:00").unwrap_err().contains("whole minutes"));
    }

    #[test]
    fn local_calendar_arithmetic() {
        // 2026-12-01 is a Tuesday.
        let t = parse("t", "2026-12-01T09:30:00+08:00").unwrap();
        assert_eq!(local_weekday_minute(t), (2, 9 * 60 + 30));
        assert_eq!(format(local_midnight(t)), "2026-12-01T00:00:00+08:00");
        // 01:00 UTC is still the same local day; 23:30 local is the next UTC day.
        let late = parse("t", "2026-12-01T23:30:00+08:00").unwrap();
        assert_eq!(format(local_midnight(late)), "2026-12-01T00:00:00+08:00");
        assert_eq!(parse_clock("08:00").unwrap(), 480);
        assert_eq!(parse_clock("24:00").unwrap(), 1440);
        assert!(parse_clock("8:00").is_err());
        assert!(parse_clock("24:01").is_err());
    }
}
