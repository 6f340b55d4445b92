//! iCalendar (RFC 5545) export of an instrument's busy time. Times are
//! written in UTC, so no VTIMEZONE is needed and every calendar app shows
//! them in its own zone.

/// One busy stretch: unix seconds and what it is.
pub struct Event {
    pub start: i64,
    pub end: i64,
    pub kind: String,
}

fn utc(t: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(t).expect("in range");
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", d.year(), d.month() as u8, d.day(), d.hour(), d.minute(), d.second())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(';', "\\;").replace(',', "\\,").replace('\n', "\\n")
}

/// Folds a content line at 75 octets, never inside a UTF-8 character.
fn fold(line: &str, out: &mut String) {
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
}

fn summary(kind: &str) -> &'static str {
    match kind {
        "booking" => "Booked",
        "setup" => "Set-up (preheat, pump-down)",
        "cooldown" => "Cool-down",
        "blackout" => "Unavailable (maintenance or blackout)",
        _ => "Busy",
    }
}

pub fn calendar(instrument: &str, name: &str, events: &[Event], now: i64) -> String {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_string(),
        "VERSION:2.0".into(),
        "PRODID:-//Corridor//Instrument calendar//EN".into(),
        "CALSCALE:GREGORIAN".into(),
        "METHOD:PUBLISH".into(),
        format!("X-WR-CALNAME:{}", escape(&format!("{name} ({instrument})"))),
    ];
    for e in events {
        lines.push("BEGIN:VEVENT".into());
        lines.push(format!("UID:{}-{}-{}@corridor", instrument.replace('/', "-"), e.start, e.kind));
        lines.push(format!("DTSTAMP:{}", utc(now)));
        lines.push(format!("DTSTART:{}", utc(e.start)));
        lines.push(format!("DTEND:{}", utc(e.end)));
        lines.push(format!("SUMMARY:{}", escape(&format!("{} · {name}", summary(&e.kind)))));
        lines.push("TRANSP:OPAQUE".into());
        lines.push("END:VEVENT".into());
    }
    lines.push("END:VCALENDAR".into());
    let mut out = String::new();
    for l in &lines {
        fold(l, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_in_crlf_fold_at_75_octets_and_times_are_utc() {
        let ev = Event { start: 1_795_399_200, end: 1_795_402_800, kind: "setup".into() };
        let name = "全自动比表面及孔隙度分析仪, with a long English name for folding (BET)";
        let ics = calendar("hefei/bet-00001", name, &[ev], 1_795_399_200);
        assert!(ics.starts_with("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"));
        assert!(ics.ends_with("END:VCALENDAR\r\n"));
        assert!(ics.contains("DTSTART:20261123T020000Z\r\n"), "{ics}");
        assert!(ics.contains("\\, with"), "commas are escaped");
        for line in ics.split("\r\n") {
            assert!(line.len() <= 75, "{line:?} is {} octets", line.len());
        }
        // Unfolding gives back the summary whole.
        let unfolded = ics.replace("\r\n ", "");
        assert!(unfolded.contains("SUMMARY:Set-up (preheat\\, pump-down) · 全自动比表面及孔隙度分析仪\\, with a long"));
        assert!(!ics.replace("\r\n", "").contains('\n'), "no bare line feeds");
    }
}
