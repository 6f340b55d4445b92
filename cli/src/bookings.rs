//! Reservation commands, through the gateway, acting as the caller's identity.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use corridor_node::catalog::model::yuan;
use corridor_proto as pb;
use serde_json::json;

use crate::{
    ClientOpts,
    client::{at, gateway},
    ics,
};

/// Accepts RFC 3339 as is; a time written without a zone is read as
/// Asia/Shanghai and sent with +08:00 spelled out, so the node never guesses.
pub fn cli_time(s: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Ok(s.to_string());
    }
    let normal = s.trim().replace(' ', "T");
    // "2026-12-01 9:00": an hour written with one digit, as people do.
    let normal = match normal.split_once('T') {
        Some((date, clock)) if clock.find(':') == Some(1) => format!("{date}T0{clock}"),
        _ => normal,
    };
    let with_seconds = if normal.len() == 16 { format!("{normal}:00") } else { normal };
    let local = format!("{with_seconds}+08:00");
    time::OffsetDateTime::parse(&local, &Rfc3339).map(|_| local).with_context(|| {
        format!("{s:?}: write a time as 2026-12-01T09:00:00+08:00 or \"2026-12-01 09:00\" (Asia/Shanghai)")
    })
}

/// A fresh idempotency key.
pub fn new_key() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("cli-{nanos:x}-{:x}", std::process::id())
}

fn state(s: i32) -> String {
    pb::BookingState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("BOOKING_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn payment_state(s: i32) -> String {
    pb::PaymentState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("PAYMENT_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

/// A time as a person reads it, with its zone: Asia/Shanghai (`+08:00`), or
/// UTC with `--utc`. Text that is not RFC 3339 is shown as it came.
pub fn when(t: &str, utc: bool) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(at) = time::OffsetDateTime::parse(t, &Rfc3339) else { return t.to_string() };
    let (at, zone) = if utc {
        (at.to_offset(time::UtcOffset::UTC), "UTC")
    } else {
        (at.to_offset(time::macros::offset!(+8)), "+08:00")
    };
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    format!("{} {zone}", at.format(&f).unwrap_or_else(|_| t.to_string()))
}

/// `given` echoed in Asia/Shanghai, and as given when it named another zone,
/// so that a time typed in UTC is never silently read eight hours off.
pub fn echo_time(given: &str) -> String {
    let local = when(given, false);
    if given.ends_with("+08:00") { local } else { format!("{local} ({} as given)", when(given, true)) }
}

fn booking_json(b: &pb::Booking) -> serde_json::Value {
    json!({
        "id": b.id, "instrument_id": b.instrument_id, "requester": b.requester, "state": state(b.state),
        "start": b.start, "end": b.end, "occupied_start": b.occupied_start, "occupied_end": b.occupied_end,
        "hold_expires_at": b.hold_expires_at, "purpose": b.purpose, "fee_yuan": yuan(b.fee_fen),
        "cancel_fee_yuan": yuan(b.cancel_fee_fen), "free_cancel_until": b.free_cancel_until,
        "late_cancel_fee_percent": b.late_cancel_fee_percent,
        "price_per_hour_yuan": yuan(b.price_per_hour_fen), "actual_minutes": b.actual_minutes, "note": b.note,
        "payment": b.payment.as_ref().map(|p| json!({
            "voucher_id": p.voucher_id, "op_id": p.op_id, "state": payment_state(p.state),
            "held_yuan": yuan(p.held_fen), "posted_yuan": yuan(p.posted_fen), "detail": p.detail,
        })),
    })
}

fn print_booking(b: &pb::Booking, opts: &ClientOpts) {
    if opts.json {
        outln!("{}", booking_json(b));
        return;
    }
    let short = |t: &str| when(t, opts.utc);
    let mut line = format!(
        "{} {}: {} {} to {} (instrument occupied {} to {})",
        state(b.state),
        b.id,
        b.instrument_id,
        short(&b.start),
        short(&b.end),
        short(&b.occupied_start),
        short(&b.occupied_end)
    );
    if !b.hold_expires_at.is_empty() {
        line += &format!("; hold expires {}", short(&b.hold_expires_at));
    }
    if b.fee_fen != 0 {
        line += &format!("; fee {} yuan", yuan(b.fee_fen));
    }
    if b.cancel_fee_fen != 0 {
        line += &format!("; cancelling now costs {} yuan", yuan(b.cancel_fee_fen));
    } else if !b.free_cancel_until.is_empty() && live(b.state) {
        line += &format!("; free cancellation until {}", short(&b.free_cancel_until));
    }
    if let Some(p) = &b.payment {
        line += &format!(
            "; voucher {} {} (held {} yuan, posted {} yuan)",
            p.voucher_id,
            payment_state(p.state),
            yuan(p.held_fen),
            yuan(p.posted_fen)
        );
        if !p.detail.is_empty() {
            line += &format!(": {}", p.detail);
        }
    }
    outln!("{line}");
}

fn live(state: i32) -> bool {
    [pb::BookingState::Held, pb::BookingState::Pending, pb::BookingState::Confirmed].iter().any(|s| *s as i32 == state)
}

pub async fn reserve(req: pb::ReserveRequest, opts: &ClientOpts) -> Result<ExitCode> {
    if !opts.json {
        eprintln!("booking {} from {} to {}", req.instrument_id, echo_time(&req.start), echo_time(&req.end));
    }
    let mut client = gateway(opts)?;
    let b = client.reserve(req).await.map_err(at(&opts.gateway))?.into_inner();
    print_booking(&b, opts);
    Ok(ExitCode::SUCCESS)
}

pub enum Action {
    Confirm,
    Approve,
    Decline,
}

/// Cancels a booking after showing what it costs. A late-cancellation fee is
/// accepted with `accept_fee`, or at the prompt when a person is at the
/// terminal; otherwise nothing is sent. The node refuses if the fee has grown
/// since (the free-cancellation time passed meanwhile).
pub async fn cancel(
    booking: String,
    reason: String,
    key: Option<String>,
    accept_fee: bool,
    opts: &ClientOpts,
) -> Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let mut client = gateway(opts)?;
    let b = client
        .get_booking(pb::GetBookingRequest { booking_id: booking.clone() })
        .await
        .map_err(at(&opts.gateway))?
        .into_inner();
    let fee = b.cancel_fee_fen;
    if fee > 0 {
        let terms = format!(
            "cancelling {} now costs {} yuan ({}% of the expected fee; free cancellation ended at {})",
            b.id,
            yuan(fee),
            b.late_cancel_fee_percent,
            when(&b.free_cancel_until, opts.utc)
        );
        if !accept_fee {
            if opts.json || !std::io::stdin().is_terminal() {
                bail!("{terms}; nothing was changed: pass --accept-fee to cancel and pay it");
            }
            eprint!("{terms}. Cancel and pay it? [y/N] ");
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("not cancelled; nothing was changed");
            }
        }
    }
    let req = pb::BookingActionRequest {
        booking_id: booking,
        idempotency_key: key.unwrap_or_else(new_key),
        reason,
        accept_fee_fen: Some(fee),
    };
    print_booking(&client.cancel_booking(req).await.map_err(at(&opts.gateway))?.into_inner(), opts);
    Ok(ExitCode::SUCCESS)
}

pub async fn action(
    what: Action,
    booking: String,
    reason: String,
    key: Option<String>,
    opts: &ClientOpts,
) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let req = pb::BookingActionRequest {
        booking_id: booking,
        idempotency_key: key.unwrap_or_else(new_key),
        reason,
        accept_fee_fen: None,
    };
    let resp = match what {
        Action::Confirm => client.confirm_booking(req).await,
        Action::Approve => client.approve_booking(req).await,
        Action::Decline => client.decline_booking(req).await,
    };
    print_booking(&resp.map_err(at(&opts.gateway))?.into_inner(), opts);
    Ok(ExitCode::SUCCESS)
}

pub async fn complete(booking: String, minutes: u32, key: Option<String>, opts: &ClientOpts) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let req = pb::CompleteBookingRequest {
        booking_id: booking,
        actual_minutes: minutes,
        idempotency_key: key.unwrap_or_else(new_key),
    };
    print_booking(&client.complete_booking(req).await.map_err(at(&opts.gateway))?.into_inner(), opts);
    Ok(ExitCode::SUCCESS)
}

/// Every page of a booking list, in order; the node statuses are the last
/// page's, and `partial` is set if any page was.
pub async fn list_all(
    client: &mut corridor_proto::gateway_client::GatewayClient<tonic::transport::Channel>,
    mut req: pb::ListBookingsRequest,
) -> Result<pb::ListBookingsResponse> {
    let mut all = pb::ListBookingsResponse::default();
    loop {
        let page = client.list_bookings(req.clone()).await.map_err(crate::client::status_error)?.into_inner();
        all.bookings.extend(page.bookings);
        all.partial |= page.partial;
        all.nodes = page.nodes;
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        req.page_token = page.next_page_token;
    }
}

pub async fn list(city: Option<String>, instrument: Option<String>, all: bool, opts: &ClientOpts) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let req = pb::ListBookingsRequest {
        instrument_id: instrument.unwrap_or_default(),
        city: city.unwrap_or_default(),
        include_closed: all,
        ..Default::default()
    };
    let resp = list_all(&mut client, req).await?;
    if opts.json {
        outln!(
            "{}",
            json!({"bookings": resp.bookings.iter().map(booking_json).collect::<Vec<_>>(), "partial": resp.partial})
        );
    } else {
        for b in &resp.bookings {
            print_booking(b, opts);
        }
        outln!("{} bookings", resp.bookings.len());
        for n in resp.nodes.iter().filter(|n| n.state != pb::NodeState::Ok as i32) {
            outln!("  {} did not answer: {}", n.city, n.detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn window(from: Option<&str>, days: u32) -> Result<(String, String)> {
    if days == 0 || days > 31 {
        bail!("--days must be between 1 and 31");
    }
    use time::format_description::well_known::Rfc3339;
    let offset = time::macros::offset!(+8);
    let start = match from {
        Some(s) => time::OffsetDateTime::parse(&cli_time(s)?, &Rfc3339)?,
        None => {
            let now = time::OffsetDateTime::now_utc().to_offset(offset);
            now.replace_second(0)?.replace_nanosecond(0)?
        }
    };
    let end = start + Duration::from_secs(days as u64 * 86_400);
    Ok((start.to_offset(offset).format(&Rfc3339)?, end.to_offset(offset).format(&Rfc3339)?))
}

async fn fetch_availability(
    instrument: &str,
    from: Option<&str>,
    days: u32,
    opts: &ClientOpts,
) -> Result<pb::AvailabilityResponse> {
    let (from, to) = window(from, days)?;
    let mut client = gateway(opts)?;
    let req = pb::AvailabilityRequest { instrument_id: instrument.into(), from, to };
    Ok(client.check_availability(req).await.map_err(at(&opts.gateway))?.into_inner())
}

pub async fn availability(instrument: &str, from: Option<&str>, days: u32, opts: &ClientOpts) -> Result<ExitCode> {
    let a = fetch_availability(instrument, from, days, opts).await?;
    if opts.json {
        outln!(
            "{}",
            json!({
                "instrument_id": a.instrument_id,
                "free": a.free.iter().map(|f| json!({"start": f.start, "end": f.end})).collect::<Vec<_>>(),
                "busy": a.busy.iter().map(|b| json!({"start": b.start, "end": b.end, "kind": b.kind})).collect::<Vec<_>>(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rules = a.rules.unwrap_or_default();
    let short = |t: &str| when(t, opts.utc);
    outln!(
        "{}: {}–{} min per booking, set-up {} min, cool-down {} min{}{}",
        a.instrument_id,
        rules.min_minutes,
        rules.max_minutes,
        rules.setup_minutes,
        rules.cooldown_minutes,
        if rules.training_required { ", training required" } else { "" },
        if rules.approval_required { ", owner approval required" } else { "" }
    );
    outln!("free:");
    for f in &a.free {
        outln!("  {} to {}", short(&f.start), short(&f.end));
    }
    outln!("busy:");
    for b in &a.busy {
        outln!("  {} to {}  {}", short(&b.start), short(&b.end), b.kind);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn calendar(instrument: &str, as_ics: bool, days: u32, opts: &ClientOpts) -> Result<ExitCode> {
    let a = fetch_availability(instrument, None, days, opts).await?;
    if !as_ics {
        let short = |t: &str| when(t, opts.utc);
        for b in &a.busy {
            outln!("{} to {}  {}", short(&b.start), short(&b.end), b.kind);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = gateway(opts)?;
    let name = client
        .get_instrument(pb::GetInstrumentRequest { id: instrument.into() })
        .await
        .map(|r| {
            let i = r.into_inner();
            format!("{} {}", i.name_zh, i.name_en)
        })
        .unwrap_or_else(|_| instrument.to_string());
    use time::format_description::well_known::Rfc3339;
    let parse = |s: &str| time::OffsetDateTime::parse(s, &Rfc3339).map(|t| t.unix_timestamp());
    let mut events = Vec::with_capacity(a.busy.len());
    for b in &a.busy {
        events.push(ics::Event { start: parse(&b.start)?, end: parse(&b.end)?, kind: b.kind.clone() });
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    out!("{}", ics::calendar(instrument, &name, &events, now));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_times_carry_their_zone() {
        assert_eq!(when("2026-12-07T09:00:00+08:00", false), "2026-12-07 09:00 +08:00");
        assert_eq!(when("2026-12-07T09:00:00+08:00", true), "2026-12-07 01:00 UTC");
        assert_eq!(echo_time("2026-12-07T09:00:00+08:00"), "2026-12-07 09:00 +08:00");
        assert_eq!(echo_time("2026-12-07T01:00:00Z"), "2026-12-07 09:00 +08:00 (2026-12-07 01:00 UTC as given)");
    }

    #[test]
    fn times_without_a_zone_are_read_as_shanghai() {
        assert_eq!(cli_time("2026-12-01 09:00").unwrap(), "2026-12-01T09:00:00+08:00");
        assert_eq!(cli_time("2026-12-01 9:00").unwrap(), "2026-12-01T09:00:00+08:00");
        assert_eq!(cli_time("2026-12-01T09:00:00Z").unwrap(), "2026-12-01T09:00:00Z");
        assert!(cli_time("next tuesday").is_err());
    }
}
