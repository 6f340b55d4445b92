//! `corridor bench`: load generators against a running corridor (by default
//! the one `corridor up` started), printing latency percentiles and rates.
//! The direct-to-node figures are measured in the same run as the baseline.

use std::{
    future::Future,
    pin::Pin,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use corridor_certs::{Identity, client_channel};
use corridor_node::booking::time::format as rfc;
use corridor_proto::{self as pb, cities::City, node_client::NodeClient};
use serde_json::json;
use tonic::transport::Channel;

use crate::{ClientOpts, city, client::gateway, up};

#[derive(Subcommand)]
pub enum Bench {
    /// Confirmed bookings per second, latency and conflict rate.
    Reserve(ReserveArgs),
    /// Searches per second and latency, through the gateway and direct to one node.
    Search(SearchArgs),
    /// Pages of ListBookings straight to one node, through every stored
    /// booking: what one page costs with many stored.
    Bookings(BookingsArgs),
    /// A new client's first call (TCP, mTLS handshake, call) while many idle
    /// TCP connections sit on the server: whether they can starve handshakes.
    Handshake(HandshakeArgs),
}

#[derive(Args)]
pub struct HandshakeArgs {
    /// Idle TCP connections (never a byte sent) opened before measuring.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Spread the idle connections over this many loopback source addresses
    /// (127.0.0.2, 127.0.0.3, …) when the target is on loopback, so that the
    /// server's overall cap is tested, not only its per-address one.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// New clients measured, one after another.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Dial this city's node (`Info` as the gateway identity) instead of the
    /// gateway (`ListNodes` as org-demo).
    #[arg(long)]
    city: Option<String>,
    /// The node endpoint with --city; defaults to the demo's.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
pub struct BookingsArgs {
    /// The city whose node is read, as its admin.
    #[arg(long, default_value = "hefei")]
    city: String,
    /// The node endpoint; defaults to the demo's.
    #[arg(long)]
    node: Option<String>,
    /// Bookings per page.
    #[arg(long, default_value_t = 500)]
    size: u32,
    /// Walk the closed bookings too (cancelled, declined, expired, completed).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
pub struct ReserveArgs {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offer this many calls per second across all clients (open loop)
    /// instead of each client calling as fast as it can.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// City whose instruments are booked.
    #[arg(long, default_value = "hefei")]
    city: String,
    /// Also measure straight to the node (as the city's admin), as a baseline.
    #[arg(long)]
    direct: bool,
    /// The node endpoint for --direct; defaults to the demo's.
    #[arg(long)]
    node: Option<String>,
    /// Pay every booking partly with this voucher (held by the client's
    /// identity): each call is then a try/confirm across two cities. Runs the
    /// uncontended case through the gateway only.
    #[arg(long)]
    voucher: Option<String>,
    /// With --direct, measure only the node: no runs through the gateway.
    #[arg(long, requires = "direct", conflicts_with = "voucher")]
    no_gateway: bool,
    /// Also report the CPU that this process and its descendants spent in
    /// each timed run (the pid of `corridor up` covers the whole mesh).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offer this many searches per second across all clients (open loop)
    /// instead of each client searching as fast as it can.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Also measure this city's node directly, as the baseline.
    #[arg(long)]
    direct: Option<String>,
    #[arg(long)]
    node: Option<String>,
    /// Search this text every time, unfiltered, instead of the mix: the cost
    /// of one query, or (with text nothing holds) of the call around it.
    #[arg(long)]
    query: Option<String>,
    /// With --direct, measure only the node: no run through the gateway.
    #[arg(long, requires = "direct")]
    no_gateway: bool,
    /// Also report the CPU that this process and its descendants spent in
    /// each timed run (the pid of `corridor up` covers the whole mesh).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the query mix as JSON ([{"kind", "query"}, …]) and exit: other
    /// systems' benchmarks (bench/postgres) take it from here.
    #[arg(long)]
    list_queries: bool,
    #[command(flatten)]
    client: ClientOpts,
}

/// A `--rate` that is not a positive, finite number of calls per second.
#[derive(Debug)]
struct NotARate(String);

impl std::fmt::Display for NotARate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a positive number of calls per second", self.0)
    }
}

impl std::error::Error for NotARate {}

fn positive_rate(s: &str) -> Result<f64, NotARate> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(NotARate(s.to_string())),
    }
}

/// Latencies in microseconds, and what happened.
#[derive(Default)]
struct Tally {
    ok: Vec<u32>,
    refused: u64,
    failed: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        self.refused += other.refused;
        self.failed += other.failed;
    }

    fn report(&mut self, label: &str, elapsed: Duration, json_out: bool) -> serde_json::Value {
        self.ok.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.ok.is_empty() {
                return 0.0;
            }
            let i = ((self.ok.len() as f64 - 1.0) * p).round() as usize;
            self.ok[i] as f64 / 1000.0
        };
        let total = self.ok.len() as u64 + self.refused + self.failed;
        let rate = self.ok.len() as f64 / elapsed.as_secs_f64();
        let v = json!({
            "run": label, "ok": self.ok.len(), "refused": self.refused, "failed": self.failed,
            "per_second": (rate * 10.0).round() / 10.0,
            "conflict_rate": if total == 0 { 0.0 } else { self.refused as f64 / total as f64 },
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        });
        if !json_out {
            outln!(
                "{label:<34} {:>8.1}/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ok {:>6}  refused {:>6} ({:.1}%)  failed {}",
                rate,
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(1.0),
                self.ok.len(),
                self.refused,
                100.0 * self.refused as f64 / total.max(1) as f64,
                self.failed
            );
        }
        v
    }
}

/// The bookable instruments of a city, as the gateway lists them: every
/// page, so that load spreads over the whole inventory.
async fn available_instruments(
    gw: &mut corridor_proto::gateway_client::GatewayClient<Channel>,
    city: &str,
    vouchers: bool,
) -> Result<Vec<String>> {
    let mut req = pb::SearchRequest {
        filter: Some(pb::SearchFilter {
            cities: vec![city.into()],
            accepts_vouchers: vouchers.then_some(true),
            ..Default::default()
        }),
        limit: 200,
        allow_partial: Some(false),
        ..Default::default()
    };
    let mut ids = Vec::new();
    loop {
        let resp = gw.search(req.clone()).await.map_err(crate::client::status_error)?.into_inner();
        ids.extend(
            resp.hits
                .into_iter()
                .filter_map(|h| h.instrument)
                // Bookable by anyone: available, and no training needed.
                .filter(|i| i.status == pb::InstrumentStatus::Available as i32 && !i.training_required)
                .map(|i| i.id),
        );
        if resp.next_cursor.is_empty() {
            break;
        }
        req.cursor = resp.next_cursor;
    }
    if ids.len() < 8 {
        bail!("{city} has only {} bookable instruments; seed the demo first", ids.len());
    }
    Ok(ids)
}

/// Where a benchmark sends its calls: the gateway, or one node directly.
#[derive(Clone)]
enum Target {
    Gateway(corridor_proto::gateway_client::GatewayClient<Channel>),
    Node(NodeClient<Channel>),
}

impl Target {
    async fn reserve(&mut self, req: pb::ReserveRequest) -> Result<pb::Booking, tonic::Status> {
        match self {
            Target::Gateway(c) => c.reserve(req).await.map(|r| r.into_inner()),
            Target::Node(c) => c.reserve(req).await.map(|r| r.into_inner()),
        }
    }
}

/// `n` connections straight to `city`'s node at `url`, as `creds`.
fn node_targets(url: &str, creds: &corridor_certs::Credentials, city: &City, n: usize) -> Result<Vec<Target>> {
    (0..n)
        .map(|_| {
            client_channel(url, creds, Some(Identity::Node(city.slug.into())), Duration::from_secs(3))
                .map(|ch| Target::Node(NodeClient::new(ch)))
                .context("node channel")
        })
        .collect()
}

/// Slots are whole 30-minute steps inside default opening hours (08:00–22:00),
/// from a day offset chosen per run so that repeated runs rarely collide.
fn slot_start(day0: i64, n: u64) -> i64 {
    let per_day = 28;
    day0 + (n / per_day) as i64 * 86_400 + 8 * 3600 + (n % per_day) as i64 * 1800
}

/// One timed run of reservations.
struct Run<'a> {
    label: &'a str,
    load: Load,
    /// Local midnight of the first day slots are taken from.
    day0: i64,
    contended: bool,
    json: bool,
    voucher: Option<&'a str>,
}

/// What one call came to.
enum Outcome {
    Ok,
    Refused,
    Failed,
}

/// The `i`-th call of client `c`.
type Call = Arc<dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// How calls are paced.
#[derive(Clone, Copy)]
struct Load {
    concurrency: usize,
    seconds: u64,
    /// Calls per second across all clients (open loop), or as fast as the
    /// clients can go (closed loop).
    rate: Option<f64>,
    /// Whose CPU to count over the run: a process and its descendants.
    server: Option<u32>,
}

impl Load {
    fn describe(&self) -> String {
        match self.rate {
            Some(r) => format!("{} clients offering {r}/s (open loop)", self.concurrency),
            None => format!("{} clients (closed loop)", self.concurrency),
        }
    }
}

/// Runs `concurrency` clients for `seconds`, and reports the tally. In a
/// closed loop each client sends its next call when the last one returns. At
/// a fixed rate the k-th call is due at k / rate seconds; the first free
/// client sends it, and its latency counts from when it was due, so a stall
/// is charged to every call it delays (no coordinated omission).
async fn drive(label: &str, load: Load, json_out: bool, call: Call) -> serde_json::Value {
    let Load { concurrency, seconds, rate, server } = load;
    let cpu_before = server.map(tree_cpu);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // Due times come from a thread of their own: tokio's timer rounds to
    // whole milliseconds, which would add up to a millisecond of the load
    // generator's own lateness to every latency.
    let due = rate.map(|r| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        std::thread::spawn(move || {
            for k in 0u64.. {
                let offset = k as f64 / r;
                if offset >= seconds as f64 {
                    break;
                }
                let at = started + Duration::from_secs_f64(offset);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if tx.send(at).is_err() {
                    break;
                }
            }
        });
        Arc::new(tokio::sync::Mutex::new(rx))
    });
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let (call, due) = (call.clone(), due.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut i = 0u64;
                loop {
                    let t = match &due {
                        Some(due) => match due.lock().await.recv().await {
                            Some(at) => at,
                            None => break,
                        },
                        None if Instant::now() < deadline => Instant::now(),
                        None => break,
                    };
                    match call(c, i).await {
                        Outcome::Ok => tally.ok.push(t.elapsed().as_micros() as u32),
                        Outcome::Refused => tally.refused += 1,
                        Outcome::Failed => tally.failed += 1,
                    }
                    i += 1;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    let calls = total.ok.len();
    let mut v = total.report(label, elapsed, json_out);
    if let (Some(pid), Some(Ok(before))) = (server, cpu_before) {
        match tree_cpu(pid) {
            Ok(after) => {
                let cpu = after - before;
                v["server_cpu_s"] = json!(cpu);
                if !json_out {
                    outln!(
                        "{:<34} server (pid {pid} and descendants) CPU {cpu:.2} s, {:.3} ms per completed call",
                        "",
                        1000.0 * cpu / calls.max(1) as f64
                    );
                }
            }
            Err(e) => tracing::warn!("reading the CPU time of {pid}: {e}"),
        }
    }
    v["clients"] = json!(concurrency);
    v["offered_per_second"] = json!(rate);
    v
}

async fn run_reserve(run: Run<'_>, targets: Vec<Target>, instruments: Arc<Vec<String>>) -> serde_json::Value {
    let Run { label, load, day0, contended, json, voucher } = run;
    let voucher = voucher.unwrap_or_default().to_string();
    let counter = Arc::new(AtomicU64::new(0));
    let prefix = format!("{label}-{}", std::process::id());
    let call: Call = Arc::new(move |c, i| {
        let mut target = targets[c % targets.len()].clone();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        // Contended: every client fights over 4 instruments and one day.
        let (inst, start) = if contended {
            let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            (&instruments[(x % 4) as usize], slot_start(day0, (x / 4) % 28))
        } else {
            (&instruments[(n % instruments.len() as u64) as usize], slot_start(day0, n / instruments.len() as u64))
        };
        let req = pb::ReserveRequest {
            instrument_id: inst.clone(),
            start: rfc(start),
            end: rfc(start + 1800),
            hold_only: false,
            purpose: "bench".into(),
            idempotency_key: format!("{prefix}-{c}-{i}"),
            voucher_id: voucher.clone(),
        };
        Box::pin(async move {
            match target.reserve(req).await {
                Ok(_) => Outcome::Ok,
                Err(s) if s.code() == tonic::Code::FailedPrecondition => Outcome::Refused,
                Err(_) => Outcome::Failed,
            }
        })
    });
    drive(label, load, json, call).await
}

/// CPU seconds spent so far by `root` and its descendants: each live
/// process's own time, and the children `root` has reaped (a process that
/// exits moves its time there). Linux only: read from /proc.
fn tree_cpu(root: u32) -> std::io::Result<f64> {
    // The numeric fields after the command's closing parenthesis and the
    // state: ppid is 0, utime 10, stime 11, cutime 12, cstime 13.
    fn stat(pid: u32) -> std::io::Result<Vec<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
        Ok(rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect())
    }
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(f) = stat(pid) {
            children.entry(f[0] as u32).or_default().push(pid);
        }
    }
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut ticks, mut todo) = (0u64, vec![root]);
    while let Some(pid) = todo.pop() {
        let Ok(f) = stat(pid) else { continue };
        ticks += f[10] + f[11] + if pid == root { f[12] + f[13] } else { 0 };
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    Ok(ticks as f64 / hz)
}

/// Counts pairs of live bookings that overlap, instrument by instrument,
/// from one walk over the city's live bookings (a listing per instrument
/// would walk them all once per instrument).
async fn check_overlaps(gw: &mut corridor_proto::gateway_client::GatewayClient<Channel>, city: &str) -> Result<usize> {
    use time::format_description::well_known::Rfc3339;
    let t = |s: &str| time::OffsetDateTime::parse(s, &Rfc3339).map(|d| d.unix_timestamp()).unwrap_or(0);
    let req = pb::ListBookingsRequest { city: city.into(), page_size: 5_000, ..Default::default() };
    let list = crate::bookings::list_all(gw, req).await?.bookings;
    let mut spans: std::collections::HashMap<&str, Vec<(i64, i64)>> = Default::default();
    for b in &list {
        spans.entry(&b.instrument_id).or_default().push((t(&b.occupied_start), t(&b.occupied_end)));
    }
    Ok(spans
        .values_mut()
        .map(|s| {
            s.sort_unstable();
            s.windows(2).filter(|w| w[0].1 > w[1].0).count()
        })
        .sum())
}

pub async fn reserve(args: ReserveArgs) -> Result<ExitCode> {
    let c = city(&args.city)?;
    let mut admin_opts = args.client.clone();
    admin_opts.identity = Some(format!("admin-{}", c.slug));
    let mut admin = gateway(&admin_opts)?;
    let instruments = Arc::new(available_instruments(&mut admin, c.slug, args.voucher.is_some()).await?);
    // A day offset per run, 20 to 50 days ahead, so that every run's days
    // (about 12 each) stay inside the default 90-day window and apart.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let today = (now + 8 * 3600) / 86_400 * 86_400 - 8 * 3600;
    let pick = (now as u64 / 7) % 30;
    let day0 = today + (20 + pick as i64) * 86_400;

    // A few HTTP/2 connections, as a real client pool would use.
    let channels = (args.concurrency / 16).clamp(1, 8);
    let gw_targets: Vec<Target> =
        (0..channels).map(|_| gateway(&args.client).map(Target::Gateway)).collect::<Result<_>>()?;
    let mut results = Vec::new();
    let load = Load { concurrency: args.concurrency, seconds: args.seconds, rate: args.rate, server: args.server_pid };
    if !args.client.json {
        outln!(
            "bench reserve: {}, {} s per run, {} instruments in {}",
            load.describe(),
            args.seconds,
            instruments.len(),
            c.slug
        );
    }
    let run = |label, day0, contended| Run { label, load, day0, contended, json: args.client.json, voucher: None };
    if args.no_gateway {
        // Only the node's run, below.
    } else if let Some(v) = args.voucher.as_deref() {
        let paid = Run { voucher: Some(v), ..run("gateway uncontended, voucher-paid", day0, false) };
        results.push(run_reserve(paid, gw_targets, instruments.clone()).await);
    } else {
        results
            .push(run_reserve(run("gateway uncontended", day0, false), gw_targets.clone(), instruments.clone()).await);
        let contended = run("gateway contended (4 instr, 1 day)", today + 5 * 86_400, true);
        results.push(run_reserve(contended, gw_targets, instruments.clone()).await);
    }
    if args.direct && args.voucher.is_none() {
        let creds = args.client.credentials(&format!("admin-{}", c.slug))?;
        let url = args.node.clone().unwrap_or_else(|| up::demo_node_endpoint(up::DEFAULT_PORT_BASE, c));
        let targets = node_targets(&url, &creds, c, channels)?;
        let direct = run("direct node uncontended", day0 + 12 * 86_400, false);
        results.push(run_reserve(direct, targets, instruments.clone()).await);
    }
    let overlaps = check_overlaps(&mut admin, c.slug).await?;
    if args.client.json {
        outln!("{}", json!({"runs": results, "overlaps": overlaps}));
    } else {
        outln!("overlapping live bookings in {}: {overlaps}", c.slug);
    }
    Ok(if overlaps == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Walks the whole listing one page at a time, one call after another, and
/// reports each page's latency (the rate is pages per second).
pub async fn bookings(args: BookingsArgs) -> Result<ExitCode> {
    let c = city(&args.city)?;
    let creds = args.client.credentials(&format!("admin-{}", c.slug))?;
    let url = args.node.clone().unwrap_or_else(|| up::demo_node_endpoint(up::DEFAULT_PORT_BASE, c));
    let channel = client_channel(&url, &creds, Some(Identity::Node(c.slug.into())), Duration::from_secs(30))?;
    let mut node = NodeClient::new(channel).max_decoding_message_size(64 << 20);
    let mut req = pb::ListBookingsRequest {
        city: c.slug.into(),
        include_closed: args.all,
        page_size: args.size,
        ..Default::default()
    };
    let (mut tally, mut stored) = (Tally::default(), 0usize);
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let page = node.list_bookings(req.clone()).await.map_err(crate::client::status_error)?.into_inner();
        tally.ok.push(t.elapsed().as_micros() as u32);
        stored += page.bookings.len();
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let label = format!("pages of {} ({stored} bookings)", args.size);
    let mut v = tally.report(&label, started.elapsed(), args.client.json);
    v["bookings"] = json!(stored);
    if args.client.json {
        outln!("{}", json!({"runs": [v]}));
    }
    Ok(ExitCode::SUCCESS)
}

/// The query mix: Chinese, English, filtered and faceted, in turn.
const QUERIES: &[(&str, &str)] = &[
    ("zh", "电子显微镜"),
    ("zh", "核磁共振波谱仪"),
    ("zh", "比表面"),
    ("zh", "透射电镜 200kV"),
    ("en", "TEM"),
    ("en", "NMR"),
    ("en", "microscope"),
    ("en", "x-ray diffractometer"),
    ("filtered", "显微镜"),
    ("filtered", "spectrometer"),
    ("faceted", "质谱"),
    ("faceted", "BET"),
];

fn search_req(i: u64, fixed: Option<&str>) -> pb::SearchRequest {
    if let Some(q) = fixed {
        return pb::SearchRequest { query: q.into(), limit: 20, ..Default::default() };
    }
    let (kind, q) = QUERIES[(i % QUERIES.len() as u64) as usize];
    let filter = (kind == "filtered").then(|| pb::SearchFilter {
        provinces: vec!["Zhejiang".into(), "Anhui".into()],
        accepts_vouchers: Some(true),
        ..Default::default()
    });
    pb::SearchRequest { query: q.into(), filter, limit: 20, facets: kind == "faceted", ..Default::default() }
}

async fn run_search(
    label: &str,
    targets: Vec<Target>,
    fixed: Option<String>,
    load: Load,
    json_out: bool,
) -> serde_json::Value {
    let call: Call = Arc::new(move |c, i| {
        let mut target = targets[c % targets.len()].clone();
        // Clients start at different places in the query mix.
        let req = search_req(c as u64 + i, fixed.as_deref());
        Box::pin(async move {
            let ok = match &mut target {
                Target::Gateway(g) => g.search(req).await.map(|r| !r.get_ref().partial).unwrap_or(false),
                Target::Node(n) => n.search(req).await.is_ok(),
            };
            if ok { Outcome::Ok } else { Outcome::Failed }
        })
    });
    drive(label, load, json_out, call).await
}

pub async fn search(args: SearchArgs) -> Result<ExitCode> {
    if args.list_queries {
        let mix: Vec<_> = QUERIES.iter().map(|(kind, query)| json!({"kind": kind, "query": query})).collect();
        outln!("{}", serde_json::Value::from(mix));
        return Ok(ExitCode::SUCCESS);
    }
    let channels = (args.concurrency / 16).clamp(1, 8);
    let gw: Vec<Target> = (0..channels).map(|_| gateway(&args.client).map(Target::Gateway)).collect::<Result<_>>()?;
    let mut runs = vec![];
    let load = Load { concurrency: args.concurrency, seconds: args.seconds, rate: args.rate, server: args.server_pid };
    if !args.client.json {
        outln!(
            "bench search: {}, {} s per run, {}",
            load.describe(),
            args.seconds,
            match &args.query {
                Some(q) => format!("the query {q:?}"),
                None => "mixed Chinese, English, filtered and faceted queries".to_string(),
            }
        );
    }
    if !args.no_gateway {
        runs.push(run_search("gateway (nine cities)", gw, args.query.clone(), load, args.client.json).await);
    }
    if let Some(slug) = &args.direct {
        let c: &City = city(slug)?;
        let creds = args.client.credentials("gateway")?;
        let url = args.node.clone().unwrap_or_else(|| up::demo_node_endpoint(up::DEFAULT_PORT_BASE, c));
        let nodes = node_targets(&url, &creds, c, channels)?;
        runs.push(
            run_search(&format!("direct node {}", c.slug), nodes, args.query.clone(), load, args.client.json).await,
        );
    }
    if args.client.json {
        outln!("{}", json!({"runs": runs}));
    }
    Ok(ExitCode::SUCCESS)
}

/// Lets this process hold `want` more descriptors, up to the hard limit.
fn raise_fd_limit(want: usize) -> Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let need = (want as libc::rlim_t).saturating_add(256);
        if lim.rlim_cur < need {
            lim.rlim_cur = need.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
        if (lim.rlim_cur as usize) < want + 64 {
            bail!("only {} file descriptors allowed (hard limit); lower --idle", lim.rlim_cur);
        }
    }
    Ok(())
}

/// One new client, from nothing to its first answer.
async fn first_call(url: &str, creds: &corridor_certs::Credentials, city: Option<&City>) -> Result<Duration> {
    let started = Instant::now();
    match city {
        Some(c) => {
            let ch = client_channel(url, creds, Some(Identity::Node(c.slug.into())), Duration::from_secs(30))?;
            NodeClient::new(ch).info(pb::NodeInfoRequest {}).await.map_err(crate::client::status_error)?;
        }
        None => {
            let mut gw = crate::client::gateway_for(url, creds)?;
            gw.list_nodes(pb::ListNodesRequest {}).await.map_err(crate::client::status_error)?;
        }
    }
    Ok(started.elapsed())
}

async fn first_calls(
    label: &str,
    rounds: usize,
    url: &str,
    creds: &corridor_certs::Credentials,
    city: Option<&City>,
) -> Result<serde_json::Value> {
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        took.push(first_call(url, creds, city).await?);
    }
    took.sort_unstable();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let (p50, max) = (ms(took[took.len() / 2]), ms(took[took.len() - 1]));
    outln!("{label:<44} first call p50 {p50:>7.2} ms  max {max:>7.2} ms  ({rounds} new clients)");
    Ok(json!({"run": label, "rounds": rounds, "p50_ms": p50, "max_ms": max}))
}

pub async fn handshake(args: HandshakeArgs) -> Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let city = args.city.as_deref().map(city).transpose()?;
    let (url, creds) = match city {
        Some(c) => (
            args.node.clone().unwrap_or_else(|| up::demo_node_endpoint(up::DEFAULT_PORT_BASE, c)),
            args.client.credentials("gateway")?,
        ),
        None => (args.client.gateway.clone(), args.client.credentials("org-demo")?),
    };
    let authority = url.strip_prefix("https://").with_context(|| format!("{url:?}: expected https://host:port"))?;
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority}: no address"))?;
    raise_fd_limit(args.idle + args.rounds)?;

    let mut runs = vec![first_calls("no idle connections", args.rounds, &url, &creds, city).await?];

    let sources: Vec<std::net::IpAddr> = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() && args.sources > 1 => {
            (0..args.sources).map(|i| std::net::Ipv4Addr::new(127, 0, 0, 2 + i).into()).collect()
        }
        ip => vec![if ip.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        }],
    };
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let from = sources[i % sources.len()];
        let socket = if from.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind((from, 0).into()).with_context(|| format!("binding {from}"))?;
        idle.push(socket.connect(addr).await.with_context(|| format!("idle connection {i} to {addr}"))?);
    }
    let label = format!("{} idle connections open", args.idle);
    runs.push(first_calls(&label, args.rounds, &url, &creds, city).await?);

    // The server closes the idle connections it sheds; count what it kept.
    let open = futures_util::future::join_all(idle.iter().map(|s| async move {
        tokio::time::timeout(Duration::from_millis(5), s.readable()).await.is_err()
            || matches!(s.try_read(&mut [0u8; 1]), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }))
    .await
    .into_iter()
    .filter(|open| *open)
    .count();
    outln!("idle connections the server still held at the end: {open} of {}", args.idle);
    if args.client.json {
        outln!(
            "{}",
            json!({"target": url, "idle": args.idle, "sources": sources.len(), "still_open": open, "runs": runs})
        );
    }
    Ok(ExitCode::SUCCESS)
}
