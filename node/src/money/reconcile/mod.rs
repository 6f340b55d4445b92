//! Reconciliation: proves that the issuer and provider sides of every
//! voucher redemption agree, and states who owes whom.
//!
//! Pure: it takes every node's verified ledger and returns the report; the
//! CLI fetches and writes. Everything is ordered (BTree maps, sorted rows)
//! and nothing depends on the time of the run beyond the cut-off for
//! expired holds, so the same ledgers give byte-identical output.

use std::collections::{BTreeMap, BTreeSet};

use corridor_proto::cities::{CITIES, PROVINCES, city_by_slug};
use serde::Serialize;

use crate::error::Invalid;
use crate::{
    booking::time::{Instant, SHANGHAI},
    catalog::model::yuan,
    money::{
        ledger::{Body, ChainError, Entry, Head},
        voucher::DebitState,
    },
};

/// A calendar month in Asia/Shanghai.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub year: i32,
    pub month: u8,
}

impl Period {
    pub fn parse(s: &str) -> Result<Period, Invalid> {
        let bad = || Invalid(format!("--period {s:?}: expected a month YYYY-MM, e.g. 2026-11"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || !(2000..=2999).contains(&year) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }

    /// The month that holds instant `t`, in Asia/Shanghai.
    pub fn containing(t: Instant) -> Period {
        let d = crate::booking::time::local(t);
        Period { year: d.year(), month: d.month() as u8 }
    }

    /// The month before this one.
    pub fn previous(self) -> Period {
        match self.month {
            1 => Period { year: self.year - 1, month: 12 },
            m => Period { year: self.year, month: m - 1 },
        }
    }

    fn first_instant(year: i32, month: u8) -> Instant {
        let m = ::time::Month::try_from(month).expect("checked");
        let d = ::time::Date::from_calendar_date(year, m, 1).expect("checked");
        d.midnight().assume_offset(SHANGHAI).unix_timestamp()
    }

    /// [start, end) in unix seconds.
    pub fn bounds(&self) -> (Instant, Instant) {
        let next = if self.month == 12 { (self.year + 1, 1) } else { (self.year, self.month + 1) };
        (Self::first_instant(self.year, self.month), Self::first_instant(next.0, next.1))
    }

    pub fn contains(&self, t: Instant) -> bool {
        let (s, e) = self.bounds();
        (s..e).contains(&t)
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One node's ledger as fetched: verified entries, or why not.
pub struct NodeLedger {
    pub city: String,
    pub head: Head,
    pub chain: Result<Vec<Entry>, ChainError>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    BrokenChain,
    MissingIssuerSide,
    MissingProviderSide,
    AmountMismatch,
    PartyMismatch,
    DoubleDebit,
    DoubleRedemption,
    StaleHold,
    Overspent,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Break {
    pub kind: BreakKind,
    /// The operation, voucher or node the break is about.
    pub subject: String,
    pub city: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub city: String,
    pub province: String,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub chain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SettlementRow {
    pub issuer_city: String,
    pub issuer_province: String,
    pub provider_city: String,
    pub provider_province: String,
    pub provider_institution: String,
    pub provider_uscc: String,
    pub redemptions: u64,
    pub amount_fen: i64,
    pub amount_yuan: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Row and column labels, in the same order.
    pub parties: Vec<String>,
    /// owed_fen[payer][payee]: what the issuing party owes the providing one.
    pub owed_fen: Vec<Vec<i64>>,
    pub net: Vec<NetPosition>,
    /// The sum of every net position: zero when the books balance.
    pub net_sum_fen: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetPosition {
    pub party: String,
    pub receivable_fen: i64,
    pub payable_fen: i64,
    pub net_fen: i64,
    pub net_yuan: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    pub nodes: Vec<NodeSummary>,
    pub matched_redemptions: u64,
    pub matched_fen: i64,
    pub matched_yuan: String,
    pub breaks: Vec<Break>,
    pub settlement: Vec<SettlementRow>,
    pub cities: Matrix,
    pub provinces: Matrix,
}

fn province(city: &str) -> String {
    city_by_slug(city).map(|c| c.province.to_string()).unwrap_or_else(|| "?".into())
}

/// The provider's side of one operation.
struct ProviderSide {
    city: String,
    at: Instant,
    issuer_city: String,
    amount_fen: i64,
    institution: String,
    uscc: String,
}

/// The issuer's final word on one operation.
struct IssuerSide {
    city: String,
    provider_city: String,
    amount_fen: i64,
    service_at: Instant,
}

/// The issuer's latest word on one operation, from its ledger.
struct Op<'a> {
    voucher: &'a str,
    amount_fen: i64,
    state: DebitState,
    /// When an unconfirmed hold expires; only pending holds have one.
    expires_at: Instant,
}

impl<'a> Op<'a> {
    fn settled(voucher: &'a str, amount_fen: i64, state: DebitState) -> Self {
        Op { voucher, amount_fen, state, expires_at: 0 }
    }
}

/// Reconciles `period` over every node's ledger. `now` only bounds which
/// holds count as expired.
pub fn reconcile(period: Period, ledgers: &[NodeLedger], now: Instant) -> Report {
    let (start, end) = period.bounds();
    let cutoff = end.min(now);
    let mut breaks = Vec::new();
    let mut nodes = Vec::new();
    let mut provided: BTreeMap<String, Vec<ProviderSide>> = BTreeMap::new();
    let mut posted: BTreeMap<String, Vec<IssuerSide>> = BTreeMap::new();

    for l in ledgers {
        let (entries, chain) = match &l.chain {
            Ok(e) => (e.as_slice(), "ok".to_string()),
            Err(e) => {
                breaks.push(Break {
                    kind: BreakKind::BrokenChain,
                    subject: format!("{} ledger", l.city),
                    city: l.city.clone(),
                    detail: e.to_string(),
                });
                (&[][..], format!("broken: {e}"))
            }
        };
        nodes.push(NodeSummary {
            city: l.city.clone(),
            province: province(&l.city),
            entries: entries.len() as u64,
            head_seq: l.head.seq,
            head_hash: l.head.hash.clone(),
            chain,
        });
        // Per voucher: face, and per operation its latest state.
        let mut face: BTreeMap<&str, i64> = BTreeMap::new();
        let mut ops: BTreeMap<&str, Op> = BTreeMap::new();
        for e in entries {
            match &e.body {
                Body::VoucherIssued { voucher, face_fen, .. } => {
                    face.insert(voucher, *face_fen);
                }
                Body::DebitPending { op, voucher, amount_fen, expires_at, .. } => {
                    ops.insert(
                        op,
                        Op { voucher, amount_fen: *amount_fen, state: DebitState::Pending, expires_at: *expires_at },
                    );
                }
                Body::DebitConfirmed { op, voucher, amount_fen } => {
                    ops.insert(op, Op::settled(voucher, *amount_fen, DebitState::Confirmed));
                }
                Body::DebitPosted { op, voucher, amount_fen, provider_city, service_at, .. } => {
                    if ops.get(op.as_str()).is_some_and(|o| o.state == DebitState::Voided) {
                        breaks.push(Break {
                            kind: BreakKind::DoubleDebit,
                            subject: op.clone(),
                            city: l.city.clone(),
                            detail: "posted after it was voided".into(),
                        });
                    }
                    ops.insert(op, Op::settled(voucher, *amount_fen, DebitState::Posted));
                    posted.entry(op.clone()).or_default().push(IssuerSide {
                        city: l.city.clone(),
                        provider_city: provider_city.clone(),
                        amount_fen: *amount_fen,
                        service_at: *service_at,
                    });
                }
                Body::DebitVoided { op, voucher, amount_fen, .. } => {
                    if ops.get(op.as_str()).is_some_and(|o| o.state == DebitState::Posted) {
                        breaks.push(Break {
                            kind: BreakKind::DoubleDebit,
                            subject: op.clone(),
                            city: l.city.clone(),
                            detail: "voided after it was posted".into(),
                        });
                    }
                    ops.insert(op, Op::settled(voucher, *amount_fen, DebitState::Voided));
                }
                Body::Service { institution, institution_uscc, redemption: Some(r), .. } => {
                    provided.entry(r.op.clone()).or_default().push(ProviderSide {
                        city: l.city.clone(),
                        at: e.at,
                        issuer_city: r.issuer_city.clone(),
                        amount_fen: r.amount_fen,
                        institution: institution.clone(),
                        uscc: institution_uscc.clone(),
                    });
                }
                Body::Service { redemption: None, .. } => {}
            }
        }
        // Held or spent per voucher; and a hold that outlived its expiry
        // without being settled, within the period.
        let mut used: BTreeMap<&str, i64> = BTreeMap::new();
        for (op, Op { voucher, amount_fen: amount, state, expires_at: expires }) in &ops {
            if *state != DebitState::Voided {
                *used.entry(voucher).or_default() += amount;
            }
            if *state == DebitState::Pending && *expires < cutoff && *expires >= start {
                breaks.push(Break {
                    kind: BreakKind::StaleHold,
                    subject: op.to_string(),
                    city: l.city.clone(),
                    detail: format!(
                        "{} yuan on {voucher} held past its expiry at {}",
                        yuan(*amount),
                        crate::booking::time::format(*expires)
                    ),
                });
            }
        }
        for (voucher, f) in &face {
            let used = used.get(voucher).copied().unwrap_or(0);
            if used > *f {
                breaks.push(Break {
                    kind: BreakKind::Overspent,
                    subject: voucher.to_string(),
                    city: l.city.clone(),
                    detail: format!("{} yuan held or spent against a face value of {} yuan", yuan(used), yuan(*f)),
                });
            }
        }
    }

    // Match the two sides one to one, on operation id and amount.
    let mut settlement: BTreeMap<(String, String, String, String), (u64, i64)> = BTreeMap::new();
    let mut matched = (0u64, 0i64);
    let in_period = |op: &str| {
        provided.get(op).is_some_and(|v| v.iter().any(|p| (start..end).contains(&p.at)))
            || posted.get(op).is_some_and(|v| v.iter().any(|i| (start..end).contains(&i.service_at)))
    };
    let all_ops: BTreeSet<&String> = provided.keys().chain(posted.keys()).collect();
    for op in all_ops.into_iter().filter(|op| in_period(op)) {
        let p = provided.get(op).map(Vec::as_slice).unwrap_or_default();
        let i = posted.get(op).map(Vec::as_slice).unwrap_or_default();
        let brk = |kind, city: &str, detail: String| Break { kind, subject: op.clone(), city: city.into(), detail };
        if p.len() > 1 {
            breaks.push(brk(BreakKind::DoubleRedemption, &p[0].city, format!("{} provider entries", p.len())));
        }
        if i.len() > 1 {
            breaks.push(brk(BreakKind::DoubleDebit, &i[0].city, format!("posted {} times", i.len())));
        }
        if p.len() > 1 || i.len() > 1 {
            // Not settled until the duplicate is resolved.
            continue;
        }
        match (p.first(), i.first()) {
            (Some(p), None) => breaks.push(brk(
                BreakKind::MissingIssuerSide,
                &p.issuer_city,
                format!("{} recorded {} yuan; {} has no posted debit", p.city, yuan(p.amount_fen), p.issuer_city),
            )),
            (None, Some(i)) => breaks.push(brk(
                BreakKind::MissingProviderSide,
                &i.provider_city,
                format!("{} posted {} yuan; {} has no service entry", i.city, yuan(i.amount_fen), i.provider_city),
            )),
            (Some(p), Some(i)) if p.issuer_city != i.city || p.city != i.provider_city => breaks.push(brk(
                BreakKind::PartyMismatch,
                &p.city,
                format!("provider says {}→{}, issuer says {}→{}", p.issuer_city, p.city, i.city, i.provider_city),
            )),
            (Some(p), Some(i)) if p.amount_fen != i.amount_fen => breaks.push(brk(
                BreakKind::AmountMismatch,
                &p.city,
                format!(
                    "{} recorded {} yuan, {} posted {} yuan",
                    p.city,
                    yuan(p.amount_fen),
                    i.city,
                    yuan(i.amount_fen)
                ),
            )),
            (Some(p), Some(_)) => {
                let row = settlement
                    .entry((p.issuer_city.clone(), p.city.clone(), p.institution.clone(), p.uscc.clone()))
                    .or_default();
                row.0 += 1;
                row.1 += p.amount_fen;
                matched.0 += 1;
                matched.1 += p.amount_fen;
            }
            (None, None) => {}
        }
    }
    breaks.sort();

    let settlement: Vec<SettlementRow> = settlement
        .into_iter()
        .map(|((issuer, provider, institution, uscc), (n, fen))| SettlementRow {
            issuer_province: province(&issuer),
            provider_province: province(&provider),
            issuer_city: issuer,
            provider_city: provider,
            provider_institution: institution,
            provider_uscc: uscc,
            redemptions: n,
            amount_fen: fen,
            amount_yuan: yuan(fen),
        })
        .collect();
    let cities: Vec<String> = CITIES.iter().map(|c| c.slug.to_string()).collect();
    let provinces: Vec<String> = PROVINCES.iter().map(|p| p.to_string()).collect();
    let city_matrix = matrix(&cities, settlement.iter().map(|r| (&r.issuer_city, &r.provider_city, r.amount_fen)));
    let province_matrix =
        matrix(&provinces, settlement.iter().map(|r| (&r.issuer_province, &r.provider_province, r.amount_fen)));
    Report {
        period: period.to_string(),
        nodes,
        matched_redemptions: matched.0,
        matched_fen: matched.1,
        matched_yuan: yuan(matched.1),
        breaks,
        settlement,
        cities: city_matrix,
        provinces: province_matrix,
    }
}

fn matrix<'a>(parties: &[String], flows: impl Iterator<Item = (&'a String, &'a String, i64)>) -> Matrix {
    let index = |p: &str| parties.iter().position(|x| x == p);
    let mut owed = vec![vec![0i64; parties.len()]; parties.len()];
    for (payer, payee, fen) in flows {
        if let (Some(a), Some(b)) = (index(payer), index(payee)) {
            owed[a][b] += fen;
        }
    }
    let net: Vec<NetPosition> = parties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let receivable: i64 = (0..parties.len()).map(|j| owed[j][i]).sum();
            let payable: i64 = owed[i].iter().sum();
            NetPosition {
                party: p.clone(),
                receivable_fen: receivable,
                payable_fen: payable,
                net_fen: receivable - payable,
                net_yuan: yuan(receivable - payable),
            }
        })
        .collect();
    let net_sum_fen = net.iter().map(|n| n.net_fen).sum();
    Matrix { parties: parties.to_vec(), owed_fen: owed, net, net_sum_fen }
}

/// The settlement statement as CSV: UTF-8, a header, yuan with two decimals.
pub fn settlement_csv(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "period",
        "issuer_city",
        "issuer_province",
        "provider_city",
        "provider_province",
        "provider_institution",
        "provider_uscc",
        "redemptions",
        "amount_yuan",
    ])
    .expect("in memory");
    for r in &report.settlement {
        w.write_record([
            report.period.as_str(),
            &r.issuer_city,
            &r.issuer_province,
            &r.provider_city,
            &r.provider_province,
            &r.provider_institution,
            &r.provider_uscc,
            &r.redemptions.to_string(),
            &r.amount_yuan,
        ])
        .expect("in memory");
    }
    String::from_utf8(w.into_inner().expect("in memory")).expect("utf-8 in, utf-8 out")
}

/// The summary table printed at the end of a run.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "reconciliation {}: {} nodes, {} matched redemptions, {} yuan, {} breaks\n",
        report.period,
        report.nodes.len(),
        report.matched_redemptions,
        report.matched_yuan,
        report.breaks.len()
    );
    out.push_str(&format!("{:<12} {:<12} {:<40} {:>6} {:>14}\n", "issuer", "provider", "institution", "uses", "yuan"));
    for r in &report.settlement {
        out.push_str(&format!(
            "{:<12} {:<12} {:<40} {:>6} {:>14}\n",
            r.issuer_city, r.provider_city, r.provider_institution, r.redemptions, r.amount_yuan
        ));
    }
    out.push_str("net by province:");
    for n in report.provinces.net.iter() {
        out.push_str(&format!(" {} {}", n.party, n.net_yuan));
    }
    out.push('\n');
    for b in &report.breaks {
        out.push_str(&format!("BREAK {:?} {} ({}): {}\n", b.kind, b.subject, b.city, b.detail));
    }
    out
}

#[cfg(test)]
mod tests;
