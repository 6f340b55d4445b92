//! Booking rules of one instrument, and the checks a requested slot must pass.
//! Every refusal names the rule that refused it.

use serde::{Deserialize, Serialize};

use super::time::{self as t, DAY, HOUR, Instant, MINUTE};
use crate::error::{Invalid, Violation};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    /// 1 = Monday … 7 = Sunday
    pub weekday: u8,
    /// Minutes after local midnight.
    pub open: u32,
    pub close: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blackout {
    pub start: Instant,
    pub end: Instant,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub setup_minutes: u32,
    pub cooldown_minutes: u32,
    /// Zero: no minimum.
    pub min_minutes: u32,
    /// Zero: no maximum.
    pub max_minutes: u32,
    pub min_notice_minutes: u32,
    /// Zero: no limit.
    pub max_advance_days: u32,
    /// Empty: open around the clock.
    pub opening: Vec<Opening>,
    pub blackouts: Vec<Blackout>,
    pub training_required: bool,
    pub approval_required: bool,
    pub cancel_deadline_hours: u32,
    pub late_cancel_fee_percent: u32,
    /// Zero: the node's default.
    pub hold_ttl_seconds: u32,
}

/// How long a hold lasts when the rules do not say.
pub const DEFAULT_HOLD_TTL: i64 = 600;

impl Rules {
    /// The rules an instrument has until its admin sets its own: every day
    /// 08:00–22:00, 30 minutes to 8 hours, booked 30 minutes to 90 days ahead,
    /// cancellation free until 24 hours before, 50% after.
    pub fn default_for(training_required: bool) -> Self {
        Rules {
            setup_minutes: 0,
            cooldown_minutes: 0,
            min_minutes: 30,
            max_minutes: 8 * 60,
            min_notice_minutes: 30,
            max_advance_days: 90,
            opening: (1..=7).map(|weekday| Opening { weekday, open: 8 * 60, close: 22 * 60 }).collect(),
            blackouts: Vec::new(),
            training_required,
            approval_required: false,
            cancel_deadline_hours: 24,
            late_cancel_fee_percent: 50,
            hold_ttl_seconds: 0,
        }
    }

    /// Checks that the rules make sense before they are stored.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.setup_minutes > 24 * 60 || self.cooldown_minutes > 24 * 60 {
            return Err("setup_minutes and cooldown_minutes are at most 1440".into());
        }
        if self.max_minutes != 0 && self.min_minutes > self.max_minutes {
            return Err(Invalid(format!("min_minutes {} exceeds max_minutes {}", self.min_minutes, self.max_minutes)));
        }
        for o in &self.opening {
            if !(1..=7).contains(&o.weekday) {
                return Err(Invalid(format!("opening_hours weekday {} is not 1 (Monday) to 7 (Sunday)", o.weekday)));
            }
            if o.open >= o.close || o.close > 24 * 60 {
                return Err(Invalid(format!(
                    "opening_hours on weekday {}: {} to {} is not a span within a day",
                    o.weekday,
                    t::format_clock(o.open),
                    t::format_clock(o.close)
                )));
            }
        }
        for b in &self.blackouts {
            if b.start >= b.end {
                return Err(Invalid(format!("blackout {:?} ends before it starts", b.reason)));
            }
        }
        if self.late_cancel_fee_percent > 100 {
            return Err("late_cancel_fee_percent is at most 100".into());
        }
        Ok(())
    }

    pub fn setup(&self) -> i64 {
        self.setup_minutes as i64 * MINUTE
    }

    pub fn cooldown(&self) -> i64 {
        self.cooldown_minutes as i64 * MINUTE
    }

    pub fn hold_ttl(&self) -> i64 {
        if self.hold_ttl_seconds == 0 { DEFAULT_HOLD_TTL } else { self.hold_ttl_seconds as i64 }
    }

    /// Whether [start, end) lies within one opening span of its local day.
    pub fn within_opening(&self, start: Instant, end: Instant) -> bool {
        if self.opening.is_empty() {
            return true;
        }
        let midnight = t::local_midnight(start);
        let (weekday, _) = t::local_weekday_minute(start);
        self.opening
            .iter()
            .filter(|o| o.weekday == weekday)
            .any(|o| start >= midnight + o.open as i64 * MINUTE && end <= midnight + o.close as i64 * MINUTE)
    }

    /// Every rule a new slot must pass, except training (which needs the
    /// requester's qualifications) and overlaps (which need the calendar).
    pub fn check_slot(&self, start: Instant, end: Instant, now: Instant) -> Result<(), Violation> {
        if end <= start {
            return Err(Violation::new("interval", "end must be after start"));
        }
        let minutes = (end - start) / MINUTE;
        if self.min_minutes != 0 && minutes < self.min_minutes as i64 {
            return Err(Violation::new(
                "min_length",
                format!("{minutes} min is shorter than the minimum of {} min", self.min_minutes),
            ));
        }
        if self.max_minutes != 0 && minutes > self.max_minutes as i64 {
            return Err(Violation::new(
                "max_length",
                format!("{minutes} min is longer than the maximum of {} min", self.max_minutes),
            ));
        }
        if start <= now {
            return Err(Violation::new("in_the_past", format!("{} has already begun", t::short(start))));
        }
        let notice = self.min_notice_minutes as i64 * MINUTE;
        if start - now < notice {
            return Err(Violation::new(
                "min_notice",
                format!("book at least {} min ahead; {} is too soon", self.min_notice_minutes, t::short(start)),
            ));
        }
        if self.max_advance_days != 0 && start - now > self.max_advance_days as i64 * DAY {
            return Err(Violation::new(
                "max_advance",
                format!("book at most {} days ahead; {} is too far", self.max_advance_days, t::short(start)),
            ));
        }
        if !self.within_opening(start, end) {
            return Err(Violation::new(
                "opening_hours",
                format!(
                    "{} to {} is outside opening hours ({})",
                    t::short(start),
                    t::short(end),
                    self.opening_summary(t::local_weekday_minute(start).0)
                ),
            ));
        }
        let (occ_start, occ_end) = (start - self.setup(), end + self.cooldown());
        if let Some(b) = self.blackouts.iter().find(|b| b.start < occ_end && occ_start < b.end) {
            return Err(Violation::new(
                "blackout",
                format!(
                    "{} to {} (set-up and cool-down included) meets the blackout {} to {}: {}",
                    t::short(occ_start),
                    t::short(occ_end),
                    t::short(b.start),
                    t::short(b.end),
                    b.reason
                ),
            ));
        }
        Ok(())
    }

    fn opening_summary(&self, weekday: u8) -> String {
        let spans: Vec<String> = self
            .opening
            .iter()
            .filter(|o| o.weekday == weekday)
            .map(|o| format!("{}–{}", t::format_clock(o.open), t::format_clock(o.close)))
            .collect();
        if spans.is_empty() { "closed that day".into() } else { spans.join(", ") }
    }

    /// The cancellation terms of a booking starting at `start`.
    pub fn cancel_terms(&self, start: Instant) -> CancelTerms {
        CancelTerms {
            free_until: start - self.cancel_deadline_hours as i64 * HOUR,
            percent: self.late_cancel_fee_percent,
        }
    }
}

/// The cancellation terms in force when a booking was made: free until
/// `free_until`, then `percent` of the expected fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelTerms {
    pub free_until: Instant,
    pub percent: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Instant {
        t::parse("t", s).unwrap()
    }

    /// Monday 2026-11-23, a week before the slots tested.
    fn now() -> Instant {
        at("2026-11-23T10:00:00+08:00")
    }

    fn rules() -> Rules {
        let mut r = Rules::default_for(false);
        r.opening = (1..=5).map(|weekday| Opening { weekday, open: 8 * 60, close: 18 * 60 }).collect();
        r.setup_minutes = 20;
        r.cooldown_minutes = 10;
        r.blackouts.push(Blackout {
            start: at("2026-12-02T14:00:00+08:00"),
            end: at("2026-12-02T16:00:00+08:00"),
            reason: "annual maintenance".into(),
        });
        r
    }

    fn check(start: &str, end: &str) -> Result<(), &'static str> {
        rules().check_slot(at(start), at(end), now()).map_err(|v| v.rule)
    }

    #[test]
    fn opening_hours_edges() {
        // Exactly at opening time is fine; one minute before is not.
        assert_eq!(check("2026-11-30T08:00:00+08:00", "2026-11-30T09:00:00+08:00"), Ok(()));
        assert_eq!(check("2026-11-30T07:59:00+08:00", "2026-11-30T09:00:00+08:00"), Err("opening_hours"));
        // Ending exactly at closing is fine; one minute after is not.
        assert_eq!(check("2026-11-30T17:00:00+08:00", "2026-11-30T18:00:00+08:00"), Ok(()));
        assert_eq!(check("2026-11-30T17:00:00+08:00", "2026-11-30T18:01:00+08:00"), Err("opening_hours"));
        // Saturday is closed.
        assert_eq!(check("2026-12-05T09:00:00+08:00", "2026-12-05T10:00:00+08:00"), Err("opening_hours"));
        // The same slot given in UTC is judged in Shanghai time.
        assert_eq!(check("2026-11-30T00:00:00Z", "2026-11-30T01:00:00Z"), Ok(()));
        assert_eq!(check("2026-11-29T23:59:00Z", "2026-11-30T01:00:00Z"), Err("opening_hours"));
    }

    #[test]
    fn blackouts_count_set_up_and_cool_down() {
        // Ends inside the blackout.
        assert_eq!(check("2026-12-02T13:00:00+08:00", "2026-12-02T14:30:00+08:00"), Err("blackout"));
        // Ends right at its start, but the 10 min cool-down runs into it.
        assert_eq!(check("2026-12-02T13:00:00+08:00", "2026-12-02T14:00:00+08:00"), Err("blackout"));
        // Ends 10 min before: the cool-down ends exactly as it begins.
        assert_eq!(check("2026-12-02T13:00:00+08:00", "2026-12-02T13:50:00+08:00"), Ok(()));
        // Starts at its end, but the 20 min preheat falls inside it.
        assert_eq!(check("2026-12-02T16:00:00+08:00", "2026-12-02T17:00:00+08:00"), Err("blackout"));
        assert_eq!(check("2026-12-02T16:20:00+08:00", "2026-12-02T17:00:00+08:00"), Ok(()));
    }

    #[test]
    fn length_notice_and_advance_edges() {
        assert_eq!(check("2026-11-30T09:00:00+08:00", "2026-11-30T09:30:00+08:00"), Ok(()));
        assert_eq!(check("2026-11-30T09:00:00+08:00", "2026-11-30T09:29:00+08:00"), Err("min_length"));
        assert_eq!(check("2026-11-30T09:00:00+08:00", "2026-11-30T17:01:00+08:00"), Err("max_length"));
        assert_eq!(check("2026-11-30T09:00:00+08:00", "2026-11-30T09:00:00+08:00"), Err("interval"));
        let r = rules();
        let half_past_eight = at("2026-11-30T08:30:00+08:00");
        let nine = at("2026-11-30T09:00:00+08:00");
        assert!(r.check_slot(nine, nine + HOUR, half_past_eight).is_ok(), "exactly the minimum notice");
        assert_eq!(r.check_slot(nine, nine + HOUR, half_past_eight + MINUTE).unwrap_err().rule, "min_notice");
        assert_eq!(r.check_slot(nine, nine + HOUR, nine).unwrap_err().rule, "in_the_past");
        // A Wednesday, 91 days after another.
        let far = at("2026-11-25T11:00:00+08:00") + 91 * DAY;
        assert!(r.check_slot(far, far + HOUR, far - 90 * DAY).is_ok(), "exactly 90 days ahead");
        assert_eq!(r.check_slot(far, far + HOUR, far - 90 * DAY - MINUTE).unwrap_err().rule, "max_advance");
    }

    #[test]
    fn late_cancellation_costs_the_percentage() {
        let r = rules();
        let start = at("2026-12-01T09:00:00+08:00");
        let terms = r.cancel_terms(start);
        assert_eq!(terms.free_until, start - 24 * HOUR);
        assert_eq!(terms.percent, 50);
    }

    #[test]
    fn nonsense_rules_are_refused() {
        let mut r = rules();
        r.opening[0].close = r.opening[0].open;
        assert!(r.validate().is_err());
        let mut r = rules();
        r.min_minutes = 100;
        r.max_minutes = 50;
        assert!(r.validate().is_err());
        let mut r = rules();
        r.late_cancel_fee_percent = 101;
        assert!(r.validate().is_err());
        assert!(rules().validate().is_ok());
    }
}
