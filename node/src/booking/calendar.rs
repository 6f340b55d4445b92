//! One instrument's calendar: the time its live bookings occupy, set-up and
//! cool-down included. It is stored as one value per instrument and local
//! day, each holding every entry whose occupied time meets that day, so that
//! a booking reads and rewrites a few small values, never the whole history.
//! Those values are read and rewritten in the same atomic step as the booking
//! that changes them.

use serde::{Deserialize, Serialize};

use super::{
    rules::Rules,
    time::{self as t, DAY, Instant, MINUTE},
};
use crate::error::Invalid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub booking: String,
    pub start: Instant,
    pub end: Instant,
    pub setup: i64,
    pub cooldown: i64,
    /// Set while the booking is only held; the time is free again from then.
    pub hold_expires: Option<Instant>,
}

impl Entry {
    pub fn occupied(&self) -> (Instant, Instant) {
        (self.start - self.setup, self.end + self.cooldown)
    }

    pub fn live(&self, now: Instant) -> bool {
        self.hold_expires.is_none_or(|e| e > now)
    }
}

/// Entries that ended this long ago can no longer conflict with anything
/// bookable, and are dropped to keep the value small.
const KEEP_PAST: i64 = DAY;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    pub entries: Vec<Entry>,
}

/// The first byte of a calendar value in the binary form. Calendar days are
/// the values every booking reads and rewrites, and they grow with the day's
/// bookings, so they are not JSON: decoding one is a few length-checked
/// copies. A value written as JSON (it begins with '{') is still read.
const BINARY_V1: u8 = 1;
const HOLD_NONE: u8 = 0;
const HOLD_SOME: u8 = 1;

impl Calendar {
    /// The stored form: version, entry count, then per entry the booking id
    /// (u16 length and bytes), start, end, set-up, cool-down (i64 each) and
    /// the hold's expiry (a flag byte, then an i64 when set). Little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.entries.len() * 64);
        out.push(BINARY_V1);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            let id = e.booking.as_bytes();
            // Booking ids are this node's own "<city>/bk-<n>".
            let len = u16::try_from(id.len()).expect("a booking id is short");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(id);
            for v in [e.start, e.end, e.setup, e.cooldown] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            match e.hold_expires {
                Some(t) => {
                    out.push(HOLD_SOME);
                    out.extend_from_slice(&t.to_le_bytes());
                }
                None => out.push(HOLD_NONE),
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Calendar, Invalid> {
        match bytes.first() {
            Some(&BINARY_V1) => {}
            Some(b'{') => return serde_json::from_slice(bytes).map_err(|e| Invalid(e.to_string())),
            Some(v) => return Err(Invalid(format!("unknown calendar encoding {v}"))),
            None => return Err("empty calendar value".into()),
        }
        let mut r = Reader(&bytes[1..]);
        let n = u32::from_le_bytes(r.take()?) as usize;
        // Each entry takes at least 35 bytes: a count larger than that
        // allows is corruption, not a reason to allocate.
        if n > r.0.len() / 35 {
            return Err(Invalid(format!("calendar claims {n} entries in {} bytes", bytes.len())));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u16::from_le_bytes(r.take()?) as usize;
            let booking = std::str::from_utf8(r.bytes(len)?).map_err(|e| format!("booking id: {e}"))?.to_string();
            let [start, end, setup, cooldown] = [r.i64()?, r.i64()?, r.i64()?, r.i64()?];
            let hold_expires = match r.take::<1>()?[0] {
                HOLD_NONE => None,
                HOLD_SOME => Some(r.i64()?),
                v => return Err(Invalid(format!("hold flag {v}"))),
            };
            entries.push(Entry { booking, start, end, setup, cooldown, hold_expires });
        }
        if !r.0.is_empty() {
            return Err(Invalid(format!("{} bytes after the last entry", r.0.len())));
        }
        Ok(Calendar { entries })
    }

    /// The first live entry whose occupied time meets [occ_start, occ_end).
    pub fn conflict(&self, occ_start: Instant, occ_end: Instant, now: Instant) -> Option<&Entry> {
        self.entries.iter().filter(|e| e.live(now)).find(|e| {
            let (s, e2) = e.occupied();
            s < occ_end && occ_start < e2
        })
    }

    /// Drops expired holds and long-past entries; returns the ids of the
    /// holds that expired, so their bookings can be marked.
    pub fn prune(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        self.entries.retain(|e| {
            if !e.live(now) {
                expired.push(e.booking.clone());
                return false;
            }
            e.occupied().1 > now - KEEP_PAST
        });
        expired
    }

    pub fn insert(&mut self, entry: Entry) {
        let at = self.entries.partition_point(|e| e.start <= entry.start);
        self.entries.insert(at, entry);
    }

    pub fn remove(&mut self, booking: &str) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.booking == booking)?;
        Some(self.entries.remove(i))
    }

    pub fn get_mut(&mut self, booking: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.booking == booking)
    }
}

/// The local (Asia/Shanghai) day number of an instant.
pub fn day_of(t: Instant) -> i64 {
    (t + 8 * 3_600).div_euclid(DAY)
}

/// The local days that [start, end) meets.
pub fn days_of(start: Instant, end: Instant) -> std::ops::RangeInclusive<i64> {
    day_of(start)..=day_of((end - 1).max(start))
}

/// The day values of one instrument that a step has loaded.
#[derive(Debug, Default)]
pub struct Days {
    pub days: Vec<(i64, Calendar)>,
}

impl Days {
    /// The first live entry whose occupied time meets [occ_start, occ_end).
    /// The days loaded must cover that span.
    pub fn conflict(&self, occ_start: Instant, occ_end: Instant, now: Instant) -> Option<&Entry> {
        self.days.iter().find_map(|(_, c)| c.conflict(occ_start, occ_end, now))
    }

    /// Adds an entry to every loaded day its occupied time meets.
    pub fn insert(&mut self, entry: &Entry) {
        let (s, e) = entry.occupied();
        for (day, cal) in &mut self.days {
            if days_of(s, e).contains(day) {
                cal.insert(entry.clone());
            }
        }
    }

    pub fn remove(&mut self, booking: &str) {
        for (_, cal) in &mut self.days {
            cal.remove(booking);
        }
    }

    pub fn set_hold(&mut self, booking: &str, hold: Option<Instant>) {
        for (_, cal) in &mut self.days {
            if let Some(e) = cal.get_mut(booking) {
                e.hold_expires = hold;
            }
        }
    }

    /// Every live entry once, whatever the days it spans.
    pub fn merged(&self) -> Calendar {
        let mut out = Calendar::default();
        for (_, cal) in &self.days {
            for e in &cal.entries {
                if !out.entries.iter().any(|x| x.booking == e.booking) {
                    out.insert(e.clone());
                }
            }
        }
        out
    }
}

/// A stretch of busy time, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub start: Instant,
    pub end: Instant,
    pub kind: &'static str,
}

/// What is busy and what is free in [from, to).
///
/// Busy lists each live booking as its set-up, the slot itself and its
/// cool-down, plus blackouts. A free window is a span in which a new slot may
/// lie: inside opening hours, and far enough from every busy span that the new
/// slot's own set-up and cool-down fit too. Windows shorter than the minimum
/// length are left out; notice and advance limits are applied from `now`.
pub fn availability(
    cal: &Calendar,
    rules: &Rules,
    from: Instant,
    to: Instant,
    now: Instant,
) -> (Vec<(Instant, Instant)>, Vec<Busy>) {
    let mut busy = Vec::new();
    for e in cal.entries.iter().filter(|e| e.live(now)) {
        let (os, oe) = e.occupied();
        if oe <= from || os >= to {
            continue;
        }
        if e.setup > 0 {
            busy.push(Busy { start: os, end: e.start, kind: "setup" });
        }
        busy.push(Busy { start: e.start, end: e.end, kind: "booking" });
        if e.cooldown > 0 {
            busy.push(Busy { start: e.end, end: oe, kind: "cooldown" });
        }
    }
    for b in rules.blackouts.iter().filter(|b| b.end > from && b.start < to) {
        busy.push(Busy { start: b.start, end: b.end, kind: "blackout" });
    }
    busy.sort_by_key(|b| (b.start, b.end));

    // Where a slot may lie at all: opening hours, notice and advance.
    let earliest = (now + rules.min_notice_minutes.max(1) as i64 * MINUTE).max(from);
    let latest = if rules.max_advance_days == 0 { to } else { to.min(now + rules.max_advance_days as i64 * DAY) };
    let mut open = Vec::new();
    if rules.opening.is_empty() {
        open.push((earliest, latest));
    } else {
        let mut day = t::local_midnight(earliest);
        while day < latest {
            let (weekday, _) = t::local_weekday_minute(day);
            for o in rules.opening.iter().filter(|o| o.weekday == weekday) {
                let s = (day + o.open as i64 * MINUTE).max(earliest);
                let e = (day + o.close as i64 * MINUTE).min(latest);
                if s < e {
                    open.push((s, e));
                }
            }
            day += DAY;
        }
        open.sort();
    }

    // A new slot [s, e) occupies [s - setup, e + cooldown): it must keep that
    // far from every busy span.
    let (setup, cooldown) = (rules.setup(), rules.cooldown());
    let blocked: Vec<(Instant, Instant)> = busy.iter().map(|b| (b.start - cooldown, b.end + setup)).collect();
    let min_len = rules.min_minutes as i64 * MINUTE;
    let mut free = Vec::new();
    for (mut s, e) in open {
        for &(bs, be) in &blocked {
            if be <= s || bs >= e {
                continue;
            }
            if bs > s {
                free.push((s, bs));
            }
            s = s.max(be);
        }
        if s < e {
            free.push((s, e));
        }
    }
    free.retain(|(s, e)| e - s >= min_len.max(MINUTE));
    (free, busy)
}

/// Reads the binary calendar form, refusing to run past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.0.len() < n {
            return Err("calendar value ends inside an entry".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    fn i64(&mut self) -> Result<i64, Invalid> {
        Ok(i64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::booking::rules::Opening;

    fn at(s: &str) -> Instant {
        t::parse("t", s).unwrap()
    }

    fn entry(id: &str, start: &str, end: &str, setup_min: i64, hold: Option<Instant>) -> Entry {
        Entry {
            booking: id.into(),
            start: at(start),
            end: at(end),
            setup: setup_min * MINUTE,
            cooldown: 0,
            hold_expires: hold,
        }
    }

    #[test]
    fn the_stored_form_round_trips_reads_old_json_and_refuses_damage() {
        let cal = Calendar {
            entries: vec![
                entry("hefei/b-1", "2026-11-30T09:00:00+08:00", "2026-11-30T10:00:00+08:00", 20, None),
                entry("hefei/b-22", "2026-11-30T11:00:00+08:00", "2026-11-30T12:30:00+08:00", 0, Some(1_764_000_000)),
            ],
        };
        let bytes = cal.encode();
        assert_eq!(Calendar::decode(&bytes).unwrap(), cal);
        assert_eq!(Calendar::decode(&Calendar::default().encode()).unwrap(), Calendar::default());
        // Values written as JSON stay readable.
        assert_eq!(Calendar::decode(&serde_json::to_vec(&cal).unwrap()).unwrap(), cal);
        // Every truncation, a trailing byte, a bad flag and a lying count are refused.
        for n in 0..bytes.len() {
            assert!(Calendar::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Calendar::decode(&longer).is_err());
        // The first entry's hold flag: after version, count, id length, id and four i64s.
        let mut bad_flag = bytes.clone();
        bad_flag[1 + 4 + 2 + "hefei/b-1".len() + 32] = 7;
        assert!(Calendar::decode(&bad_flag).unwrap_err().contains("hold flag 7"));
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Calendar::decode(&huge).unwrap_err().contains("claims"));
        assert!(Calendar::decode(b"\x09").is_err());
    }

    #[test]
    fn set_up_time_conflicts_and_expired_holds_do_not() {
        let now = at("2026-11-23T10:00:00+08:00");
        let mut cal = Calendar::default();
        cal.insert(entry("a", "2026-12-01T10:00:00+08:00", "2026-12-01T11:00:00+08:00", 20, None));
        // A slot ending 09:50 meets a's preheat, which starts 09:40.
        assert!(cal.conflict(at("2026-12-01T09:00:00+08:00"), at("2026-12-01T09:50:00+08:00"), now).is_some());
        assert!(cal.conflict(at("2026-12-01T09:00:00+08:00"), at("2026-12-01T09:40:00+08:00"), now).is_none());
        cal.insert(entry("h", "2026-12-01T12:00:00+08:00", "2026-12-01T13:00:00+08:00", 0, Some(now + 600)));
        let slot = (at("2026-12-01T12:30:00+08:00"), at("2026-12-01T13:30:00+08:00"));
        assert_eq!(cal.conflict(slot.0, slot.1, now).unwrap().booking, "h");
        assert!(cal.conflict(slot.0, slot.1, now + 600).is_none(), "an expired hold frees its time");
        assert_eq!(cal.prune(now + 600), vec!["h".to_string()]);
        assert_eq!(cal.entries.len(), 1);
    }

    #[test]
    fn day_values_hold_every_entry_that_meets_them() {
        let late = at("2026-12-01T23:00:00+08:00");
        let entry = Entry {
            booking: "x".into(),
            start: late,
            end: late + 2 * 3_600,
            setup: 0,
            cooldown: 0,
            hold_expires: None,
        };
        let (s, e) = entry.occupied();
        assert_eq!(days_of(s, e).count(), 2, "crosses local midnight");
        let mut days = Days { days: days_of(s, e).map(|d| (d, Calendar::default())).collect() };
        days.insert(&entry);
        assert!(days.days.iter().all(|(_, c)| c.entries.len() == 1));
        // A slot on the second day finds it there alone.
        let next = Days { days: vec![days.days[1].clone()] };
        assert!(next.conflict(late + 3_600, late + 3 * 3_600, 0).is_some());
        assert_eq!(days.merged().entries.len(), 1);
        days.remove("x");
        assert!(days.days.iter().all(|(_, c)| c.entries.is_empty()));
        // Local days, not UTC days: 07:59 and 08:00 UTC are different local days.
        assert_eq!(day_of(at("2026-12-01T15:59:00Z")) + 1, day_of(at("2026-12-01T16:00:00Z")));
    }

    #[test]
    fn availability_shows_set_up_and_leaves_room_for_it() {
        let now = at("2026-11-23T10:00:00+08:00");
        let mut rules = Rules::default_for(false);
        rules.opening = vec![Opening { weekday: 2, open: 8 * 60, close: 18 * 60 }];
        rules.setup_minutes = 20;
        rules.min_minutes = 30;
        let mut cal = Calendar::default();
        cal.insert(entry("a", "2026-12-01T10:00:00+08:00", "2026-12-01T11:00:00+08:00", 20, None));
        let (free, busy) =
            availability(&cal, &rules, at("2026-12-01T00:00:00+08:00"), at("2026-12-02T00:00:00+08:00"), now);
        let kinds: Vec<&str> = busy.iter().map(|b| b.kind).collect();
        assert_eq!(kinds, vec!["setup", "booking"]);
        assert_eq!(busy[0].start, at("2026-12-01T09:40:00+08:00"));
        // Free: 08:00–09:40 (a slot there needs its preheat inside opening
        // hours only by start), and from 11:20 (a new slot's own 20 min
        // preheat must follow a's end at 11:00) until closing.
        assert_eq!(
            free,
            vec![
                (at("2026-12-01T08:00:00+08:00"), at("2026-12-01T09:40:00+08:00")),
                (at("2026-12-01T11:20:00+08:00"), at("2026-12-01T18:00:00+08:00")),
            ]
        );
    }
}
