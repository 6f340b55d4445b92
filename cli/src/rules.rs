//! `corridor rules`, `corridor training` and `corridor audit`: a city
//! admin's say over who may book an instrument and how, and the record of
//! every such change. They act as the city's admin unless --identity names
//! another; rules and training go through the gateway, the audit log is read
//! from the city's node.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use corridor_certs::Identity;
use corridor_proto as pb;
use serde_json::json;

use crate::{
    ClientOpts,
    bookings::{cli_time, when},
    client::{admin_node, city_of, gateway_as, status_error},
};

#[derive(Subcommand)]
pub enum Rules {
    /// Every booking rule of an instrument.
    Show {
        instrument: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Change some of an instrument's booking rules; the others stay as they are.
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    instrument: String,
    /// Preheat or pump-down minutes before each slot (occupied time).
    #[arg(long)]
    setup: Option<u32>,
    /// Cool-down minutes after each slot (occupied time).
    #[arg(long)]
    cooldown: Option<u32>,
    /// Shortest booking, minutes (0: no limit).
    #[arg(long)]
    min: Option<u32>,
    /// Longest booking, minutes (0: no limit).
    #[arg(long)]
    max: Option<u32>,
    /// Minutes of notice a booking needs before its start.
    #[arg(long)]
    notice: Option<u32>,
    /// How many days ahead a slot may be booked.
    #[arg(long)]
    advance: Option<u32>,
    /// Opening hours, e.g. "mon-fri 08:00-20:00" or "sat 09:00-12:00"
    /// (repeatable; replaces the current hours). "always" opens around the clock.
    #[arg(long = "hours")]
    hours: Vec<String>,
    /// A blackout, "FROM/TO" or "FROM/TO/REASON", times as for `reserve`
    /// (repeatable; added to the current ones).
    #[arg(long = "blackout")]
    blackouts: Vec<String>,
    /// Remove every current blackout first.
    #[arg(long)]
    clear_blackouts: bool,
    /// Whether a requester needs a training grant for this instrument.
    #[arg(long, action = clap::ArgAction::Set)]
    training: Option<bool>,
    /// Whether bookings wait for the city admin's approval.
    #[arg(long, action = clap::ArgAction::Set)]
    approval: Option<bool>,
    /// Cancelling later than this many hours before the start costs a fee.
    #[arg(long)]
    cancel_deadline: Option<u32>,
    /// The late-cancellation fee, percent of the booking's fee.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    late_fee: Option<u32>,
    /// Seconds a hold lasts before it expires (0: the node's default).
    #[arg(long)]
    hold_ttl: Option<u32>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Subcommand)]
pub enum Training {
    /// Let HOLDER book an instrument that needs training.
    Grant(GrantArgs),
    /// Take a grant back; bookings already made stay.
    Revoke(GrantArgs),
}

#[derive(Args)]
pub struct GrantArgs {
    /// An identity name ("org-demo") or URI ("spiffe://corridor/org/demo").
    holder: String,
    #[arg(long)]
    instrument: String,
    /// With grant: the training lasts through this date ("YYYY-MM-DD", Asia/Shanghai) or
    /// until this time; a slot must end by then. Default: no end.
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long)]
    city: String,
    /// Only changes made at or after this time (RFC 3339, or "YYYY-MM-DD[ HH:MM]" in Asia/Shanghai).
    #[arg(long)]
    since: Option<String>,
    /// The node's endpoint; defaults to the one the gateway has for the city.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

/// The admin of the city an instrument id names, as the default identity.
fn admin_of(instrument: &str) -> Result<String> {
    Ok(format!("admin-{}", city_of(instrument)?.slug))
}

async fn current(instrument: &str, client: &ClientOpts) -> Result<pb::BookingRules> {
    let mut gw = gateway_as(client, &admin_of(instrument)?)?;
    // The rules come with any availability answer; one hour, in whole minutes, is the cheapest.
    let now = time::OffsetDateTime::now_utc().unix_timestamp() / 60 * 60;
    let at = corridor_node::booking::time::format;
    let req = pb::AvailabilityRequest { instrument_id: instrument.into(), from: at(now), to: at(now + 3600) };
    let resp = gw.check_availability(req).await.map_err(status_error)?.into_inner();
    resp.rules.with_context(|| format!("the node sent no rules for {instrument}"))
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// "mon-fri 08:00-20:00" → one opening per weekday.
fn parse_hours(spec: &str) -> Result<Vec<pb::OpeningHours>> {
    let bad = || format!("--hours {spec:?}: expected e.g. \"mon-fri 08:00-20:00\", \"sat 09:00-12:00\" or \"always\"");
    let (days, clock) = spec.trim().split_once(' ').with_context(bad)?;
    let (open, close) = clock.trim().split_once('-').with_context(bad)?;
    let day = |d: &str| WEEKDAYS.iter().position(|w| *w == d.trim().to_lowercase()).map(|i| i as u32 + 1);
    let (first, last) = match days.split_once('-') {
        Some((a, b)) => (day(a).with_context(bad)?, day(b).with_context(bad)?),
        None => {
            let d = day(days).with_context(bad)?;
            (d, d)
        }
    };
    if first > last {
        bail!("{}: the days run from Monday to Sunday", bad());
    }
    Ok((first..=last)
        .map(|weekday| pb::OpeningHours { weekday, open: open.trim().into(), close: close.trim().into() })
        .collect())
}

/// "FROM/TO[/REASON]" → a blackout window.
fn parse_blackout(spec: &str) -> Result<pb::TimeWindow> {
    let mut parts = spec.splitn(3, '/');
    let (Some(from), Some(to)) = (parts.next(), parts.next()) else {
        bail!(
            "--blackout {spec:?}: expected FROM/TO or FROM/TO/REASON, e.g. \"2026-12-24 08:00/2026-12-26 08:00/annual service\""
        )
    };
    Ok(pb::TimeWindow { start: cli_time(from)?, end: cli_time(to)?, reason: parts.next().unwrap_or("").into() })
}

fn print(instrument: &str, r: &pb::BookingRules, client: &ClientOpts) {
    if client.json {
        outln!("{}", rules_json(instrument, r));
        return;
    }
    let limit = |n: u32, unit: &str| if n == 0 { "no limit".to_string() } else { format!("{n} {unit}") };
    let yes = |b: bool| if b { "yes" } else { "no" };
    outln!("booking rules of {instrument}");
    outln!("  set-up before each slot     {} min", r.setup_minutes);
    outln!("  cool-down after each slot   {} min", r.cooldown_minutes);
    outln!("  shortest booking            {}", limit(r.min_minutes, "min"));
    outln!("  longest booking             {}", limit(r.max_minutes, "min"));
    outln!("  notice before the start     {}", limit(r.min_notice_minutes, "min"));
    outln!("  bookable ahead              {}", limit(r.max_advance_days, "days"));
    if r.opening_hours.is_empty() {
        outln!("  opening hours               around the clock");
    }
    for h in &r.opening_hours {
        let day = WEEKDAYS.get(h.weekday.saturating_sub(1) as usize).unwrap_or(&"?");
        outln!("  opening hours               {day} {}-{} (Asia/Shanghai)", h.open, h.close);
    }
    for b in &r.blackouts {
        let reason = if b.reason.is_empty() { String::new() } else { format!(" ({})", b.reason) };
        outln!("  blackout                    {} to {}{reason}", when(&b.start, client.utc), when(&b.end, client.utc));
    }
    outln!("  training required           {}", yes(r.training_required));
    outln!("  approval required           {}", yes(r.approval_required));
    outln!("  free cancellation until     {} h before the start", r.cancel_deadline_hours);
    outln!("  late cancellation fee       {} %", r.late_cancel_fee_percent);
    let ttl =
        if r.hold_ttl_seconds == 0 { "the node's default".to_string() } else { format!("{} s", r.hold_ttl_seconds) };
    outln!("  a hold lasts                {ttl}");
}

fn rules_json(instrument: &str, r: &pb::BookingRules) -> serde_json::Value {
    json!({
        "instrument_id": instrument,
        "setup_minutes": r.setup_minutes, "cooldown_minutes": r.cooldown_minutes,
        "min_minutes": r.min_minutes, "max_minutes": r.max_minutes,
        "min_notice_minutes": r.min_notice_minutes, "max_advance_days": r.max_advance_days,
        "opening_hours": r.opening_hours.iter()
            .map(|h| json!({"weekday": h.weekday, "open": h.open, "close": h.close})).collect::<Vec<_>>(),
        "blackouts": r.blackouts.iter()
            .map(|b| json!({"start": b.start, "end": b.end, "reason": b.reason})).collect::<Vec<_>>(),
        "training_required": r.training_required, "approval_required": r.approval_required,
        "cancel_deadline_hours": r.cancel_deadline_hours, "late_cancel_fee_percent": r.late_cancel_fee_percent,
        "hold_ttl_seconds": r.hold_ttl_seconds,
    })
}

pub async fn rules(command: Rules) -> Result<ExitCode> {
    match command {
        Rules::Show { instrument, client } => {
            let r = current(&instrument, &client).await?;
            print(&instrument, &r, &client);
        }
        Rules::Set(a) => {
            // Parse everything before asking the node, so a typo changes nothing.
            let hours: Vec<Vec<pb::OpeningHours>> =
                a.hours.iter().filter(|h| h.trim() != "always").map(|h| parse_hours(h)).collect::<Result<_>>()?;
            let blackouts: Vec<pb::TimeWindow> =
                a.blackouts.iter().map(|b| parse_blackout(b)).collect::<Result<_>>()?;
            let mut r = current(&a.instrument, &a.client).await?;
            let set = |field: &mut u32, value: Option<u32>| {
                if let Some(v) = value {
                    *field = v;
                }
            };
            set(&mut r.setup_minutes, a.setup);
            set(&mut r.cooldown_minutes, a.cooldown);
            set(&mut r.min_minutes, a.min);
            set(&mut r.max_minutes, a.max);
            set(&mut r.min_notice_minutes, a.notice);
            set(&mut r.max_advance_days, a.advance);
            set(&mut r.cancel_deadline_hours, a.cancel_deadline);
            set(&mut r.late_cancel_fee_percent, a.late_fee);
            set(&mut r.hold_ttl_seconds, a.hold_ttl);
            if let Some(t) = a.training {
                r.training_required = t;
            }
            if let Some(p) = a.approval {
                r.approval_required = p;
            }
            if !a.hours.is_empty() {
                r.opening_hours = hours.into_iter().flatten().collect();
            }
            if a.clear_blackouts {
                r.blackouts.clear();
            }
            r.blackouts.extend(blackouts);
            let mut gw = gateway_as(&a.client, &admin_of(&a.instrument)?)?;
            let req = pb::SetBookingRulesRequest { instrument_id: a.instrument.clone(), rules: Some(r) };
            let stored = gw.set_booking_rules(req).await.map_err(status_error)?.into_inner();
            print(&a.instrument, &stored, &a.client);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn training(command: Training) -> Result<ExitCode> {
    let (a, revoke) = match command {
        Training::Grant(a) => (a, false),
        Training::Revoke(a) => (a, true),
    };
    let holder = if a.holder.contains("://") { Identity::from_uri(&a.holder) } else { Identity::from_name(&a.holder) }
        .with_context(|| format!("{:?} is not an identity (e.g. org-demo, or spiffe://corridor/org/demo)", a.holder))?;
    let mut gw = gateway_as(&a.client, &admin_of(&a.instrument)?)?;
    let until = match a.until.as_deref() {
        None => String::new(),
        Some(_) if revoke => bail!("--until is for a grant; a revoke ends the training now"),
        // Through that day: until the next one begins.
        Some(d) if d.len() == 10 => {
            let f = time::macros::format_description!("[year]-[month]-[day]");
            let day = time::Date::parse(d, &f).with_context(|| format!("--until {d:?}: expected YYYY-MM-DD"))?;
            let next = day.next_day().context("--until: a date before the end of time")?;
            cli_time(&format!("{next} 00:00"))?
        }
        Some(t) => cli_time(t)?,
    };
    let req =
        pb::GrantQualificationRequest { instrument_id: a.instrument.clone(), holder: holder.uri(), revoke, until };
    gw.grant_qualification(req.clone()).await.map_err(status_error)?;
    let did = if revoke { "revoked" } else { "granted" };
    if a.client.json {
        let until = (!req.until.is_empty()).then_some(&req.until);
        outln!("{}", json!({"instrument_id": a.instrument, "holder": holder.uri(), "training": did, "until": until}));
    } else if req.until.is_empty() {
        outln!("training for {} {did}: {}", a.instrument, holder.uri());
    } else {
        outln!("training for {} {did}: {}, until {}", a.instrument, holder.uri(), when(&req.until, a.client.utc));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every audit entry of a city since a time, oldest first, page by page.
pub async fn audit(a: AuditArgs) -> Result<ExitCode> {
    let city = crate::city(&a.city)?;
    let since = match a.since.as_deref() {
        None => String::new(),
        Some(s) if s.len() == 10 => cli_time(&format!("{s} 00:00"))?,
        Some(s) => cli_time(s)?,
    };
    let (mut node, _) = admin_node(city, a.node.clone(), &a.client).await?;
    let mut req = pb::ReadAuditRequest { since, after_seq: 0, limit: 5_000 };
    let mut entries = Vec::new();
    loop {
        let page = node.read_audit(req.clone()).await.map_err(status_error)?.into_inner();
        entries.extend(page.entries);
        if page.next_after_seq == 0 {
            break;
        }
        req.after_seq = page.next_after_seq;
    }
    if a.client.json {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or(serde_json::Value::Null);
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
                       "before": parse(&e.before_json), "after": parse(&e.after_json)})
            })
            .collect();
        outln!("{}", json!({"city": city.slug, "entries": list}));
    } else {
        if entries.is_empty() {
            outln!("no admin changes recorded in {}", city.slug);
        }
        for e in &entries {
            outln!("{:>6}  {}  {}  {} {}", e.seq, when(&e.at, a.client.utc), e.actor, e.action, e.target);
            outln!("        before {}", e.before_json);
            outln!("        after  {}", e.after_json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_read_as_people_write_them() {
        let h = parse_hours("mon-fri 08:00-20:00").unwrap();
        assert_eq!(h.len(), 5);
        assert_eq!((h[0].weekday, h[4].weekday, h[0].open.as_str(), h[0].close.as_str()), (1, 5, "08:00", "20:00"));
        assert_eq!(parse_hours("Sat 09:00-12:00").unwrap()[0].weekday, 6);
        for bad in ["fri-mon 08:00-20:00", "weekdays 08:00-20:00", "mon 08:00", "mon"] {
            assert!(parse_hours(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_blackout_has_two_times_and_maybe_a_reason() {
        let b = parse_blackout("2026-12-24 08:00/2026-12-26 08:00/annual service").unwrap();
        assert_eq!(b.start, "2026-12-24T08:00:00+08:00");
        assert_eq!(b.reason, "annual service");
        assert!(parse_blackout("2026-12-24 08:00").is_err());
    }
}
