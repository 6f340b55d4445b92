//! Voucher commands (`corridor voucher issue|show`) and the reconciliation
//! job (`corridor reconcile`).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use corridor_node::catalog::model::yuan;
use corridor_node::money::reconcile::{self, Period};
use corridor_proto as pb;
use serde_json::json;

use crate::{
    ClientOpts,
    bookings::new_key,
    client::{at, gateway_as, node_endpoints},
};

// Parsed once per process; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum VoucherCommand {
    /// Issue a voucher to an enterprise (as the issuing city's admin).
    Issue(IssueArgs),
    /// Show a voucher and its balance (as its holder, by default org-demo).
    Show {
        voucher: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
pub struct IssueArgs {
    /// The issuing city.
    #[arg(long)]
    city: String,
    /// The enterprise's 18-character Unified Social Credit Code.
    #[arg(long)]
    uscc: String,
    #[arg(long, default_value = "")]
    name: String,
    /// Who may spend it: an org identity name (org-demo) or URI.
    #[arg(long, default_value = "org-demo")]
    holder: String,
    /// Face value in yuan, e.g. 50000 or 50000.00.
    #[arg(long)]
    face: String,
    /// The share of a fee it may pay, in percent.
    #[arg(long, default_value_t = 50)]
    share: u32,
    /// YYYY-MM-DD (default: today, Asia/Shanghai).
    #[arg(long)]
    from: Option<String>,
    /// YYYY-MM-DD (default: a year from today).
    #[arg(long)]
    until: Option<String>,
    /// Cap per use in yuan (default 20000).
    #[arg(long)]
    per_use: Option<String>,
    /// Cap per enterprise per year at this city, in yuan (default 100000).
    #[arg(long)]
    annual: Option<String>,
    /// provider-redeemed (通兑) or enterprise-reimbursed (通用).
    #[arg(long, default_value = "provider-redeemed", value_parser = ["provider-redeemed", "enterprise-reimbursed"])]
    mode: String,
    /// Cities where it is recognised, comma-separated (default: all nine).
    #[arg(long, value_delimiter = ',')]
    cities: Vec<String>,
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// The month to settle, YYYY-MM (Asia/Shanghai), or "previous" for the
    /// month before this one (for a monthly job).
    #[arg(long)]
    period: String,
    /// Where report.json and settlement.csv are written; "{period}" in it is
    /// replaced by the month, e.g. /reports/{period}.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The nodes, as a gateway config file (TOML, [[nodes]] city/endpoint);
    /// default: gateway.toml beside --certs (as `corridor up` writes it),
    /// else the demo's ports.
    #[arg(long)]
    nodes: Option<PathBuf>,
    /// Per-node time limit, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(flatten)]
    client: ClientOpts,
}

/// "1234", "1234.5" or "1234.56" yuan, as fen.
pub fn yuan_to_fen(field: &str, s: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("--{field} {s:?}: give yuan, e.g. 20000 or 20000.50");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    whole.checked_mul(100).and_then(|w| w.checked_add(frac)).ok_or_else(bad)
}

fn print_voucher(v: &pb::Voucher, opts: &ClientOpts) {
    if opts.json {
        outln!(
            "{}",
            json!({
                "id": v.id, "city": v.city, "province": v.province, "enterprise_uscc": v.enterprise_uscc,
                "enterprise_name": v.enterprise_name, "holder": v.holder, "face_yuan": yuan(v.face_fen),
                "valid_from": v.valid_from, "valid_until": v.valid_until, "share_percent": v.share_percent,
                "per_use_cap_yuan": yuan(v.per_use_cap_fen), "annual_cap_yuan": yuan(v.annual_cap_fen),
                "mode": pb::VoucherMode::try_from(v.mode).map(|m| m.as_str_name()).unwrap_or("?"),
                "cities": v.cities, "held_yuan": yuan(v.held_fen), "spent_yuan": yuan(v.spent_fen),
                "balance_yuan": yuan(v.balance_fen), "issued_at": v.issued_at,
            })
        );
        return;
    }
    outln!(
        "{} ({}, {}): {} for {} {}\n  face {} yuan, balance {} yuan ({} held, {} spent)\n  pays {}% of a fee, at most {} yuan a use; valid {} to {}; in {}",
        v.id,
        v.city,
        v.province,
        v.holder,
        v.enterprise_uscc,
        v.enterprise_name,
        yuan(v.face_fen),
        yuan(v.balance_fen),
        yuan(v.held_fen),
        yuan(v.spent_fen),
        v.share_percent,
        yuan(v.per_use_cap_fen),
        v.valid_from,
        v.valid_until,
        v.cities.join(", ")
    );
}

pub async fn voucher(cmd: VoucherCommand) -> Result<ExitCode> {
    match cmd {
        VoucherCommand::Issue(a) => {
            let city = crate::city(&a.city)?;
            let holder = if a.holder.starts_with("spiffe://") {
                a.holder.clone()
            } else {
                corridor_certs::Identity::from_name(&a.holder)
                    .with_context(|| format!("--holder {:?}: an identity name such as org-demo, or a URI", a.holder))?
                    .uri()
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let (today, year_on) = corridor_node::money::voucher::default_validity(now);
            let req = pb::IssueVoucherRequest {
                city: city.slug.into(),
                enterprise_uscc: a.uscc,
                enterprise_name: a.name,
                holder,
                face_fen: yuan_to_fen("face", &a.face)?,
                valid_from: a.from.unwrap_or(today),
                valid_until: a.until.unwrap_or(year_on),
                share_percent: a.share,
                per_use_cap_fen: a.per_use.as_deref().map(|s| yuan_to_fen("per-use", s)).transpose()?.unwrap_or(0),
                annual_cap_fen: a.annual.as_deref().map(|s| yuan_to_fen("annual", s)).transpose()?.unwrap_or(0),
                mode: if a.mode == "enterprise-reimbursed" {
                    pb::VoucherMode::EnterpriseReimbursed
                } else {
                    pb::VoucherMode::ProviderRedeemed
                } as i32,
                cities: a.cities,
                idempotency_key: a.key.unwrap_or_else(new_key),
            };
            let mut client = gateway_as(&a.client, &format!("admin-{}", city.slug))?;
            let v = client.issue_voucher(req).await.map_err(at(&a.client.gateway))?.into_inner();
            print_voucher(&v, &a.client);
        }
        VoucherCommand::Show { voucher, client: opts } => {
            let mut client = gateway_as(&opts, "org-demo")?;
            let v = client
                .get_voucher(pb::GetVoucherRequest { voucher_id: voucher })
                .await
                .map_err(at(&opts.gateway))?
                .into_inner();
            print_voucher(&v, &opts);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the reconciliation: exit 0 when clean, 1 when it found breaks; an
/// error (and no files) when a node cannot be read.
pub async fn reconcile(a: ReconcileArgs) -> Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let period = if a.period == "previous" {
        Period::containing(now).previous()
    } else {
        Period::parse(&a.period).map_err(anyhow::Error::msg)?
    };
    let out = PathBuf::from(a.out.to_string_lossy().replace("{period}", &period.to_string()));
    // `corridor up` writes gateway.toml beside its certs directory: use it
    // when no file is named, so a demo on any port base is found.
    let beside_certs = a.client.certs_dir().parent().map(|d| d.join("gateway.toml")).filter(|p| p.exists());
    let endpoints: Vec<(String, String)> = match a.nodes.as_ref().or(beside_certs.as_ref()) {
        Some(path) => {
            corridor_gateway::GatewayConfig::load(path)?.nodes.into_iter().map(|n| (n.city, n.endpoint)).collect()
        }
        None => node_endpoints(&a.client, "reconciler").await?,
    };
    if endpoints.is_empty() {
        bail!("no nodes to reconcile");
    }
    let creds = a.client.credentials("reconciler")?;
    let ledgers = corridor_node::wire::reconciler::fetch(&endpoints, &creds, Duration::from_secs(a.timeout)).await?;
    let report = reconcile::reconcile(period, &ledgers, now);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("report.json");
    let mut body = serde_json::to_string_pretty(&report).expect("serialisable");
    body.push('\n');
    std::fs::write(&json_path, body).with_context(|| format!("writing {}", json_path.display()))?;
    let csv_path = out.join("settlement.csv");
    std::fs::write(&csv_path, reconcile::settlement_csv(&report))
        .with_context(|| format!("writing {}", csv_path.display()))?;
    out!("{}", reconcile::summary(&report));
    outln!("wrote {} and {}", json_path.display(), csv_path.display());
    Ok(if report.breaks.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
