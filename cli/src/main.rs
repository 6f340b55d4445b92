//! The `corridor` command: start the nine-city mesh, run a node or the
//! gateway, issue certificates, import inventories, and search.

/// `print!`/`println!` for command output. When stdout is closed early
/// (`corridor search 显微镜 --json | head`), the command ends quietly with
/// success, as Unix tools do, instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*), false)
    };
}
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*), true)
    };
}

mod bench;
mod bookings;
mod client;
mod eval;
mod ics;
mod instrument;
mod rules;
mod up;
mod vouchers;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use corridor_certs::Credentials;
use corridor_proto::cities::{CITIES, city_by_slug};

/// Every corridor process allocates for each call it serves (messages,
/// hits, facet maps) from several threads at once; glibc's malloc and free
/// were a seventh of the gateway's and the nodes' profiles, and the tail
/// latency of searches is lower with mimalloc (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => panic!("writing to stdout: {e}"),
    }
}

#[derive(Parser)]
#[command(name = "corridor", version, about = "Share large research instruments across the G60 corridor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a client reaches the gateway. Defaults point at `corridor up`.
#[derive(Args, Clone, Debug)]
pub struct ClientOpts {
    /// Gateway endpoint.
    #[arg(long, env = "CORRIDOR_GATEWAY", default_value = "https://127.0.0.1:7443", global = true)]
    gateway: String,
    /// Directory holding ca.pem and the identity's NAME.pem / NAME.key.
    #[arg(long, env = "CORRIDOR_CERTS", default_value = ".corridor/certs", global = true)]
    certs: PathBuf,
    /// Identity to present (file stem under --certs).
    #[arg(long, env = "CORRIDOR_IDENTITY", global = true)]
    identity: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Print times in UTC instead of Asia/Shanghai (every printed time names its zone).
    #[arg(long, global = true)]
    utc: bool,
}

impl ClientOpts {
    pub(crate) fn certs_dir(&self) -> &std::path::Path {
        &self.certs
    }

    pub(crate) fn credentials(&self, default_identity: &str) -> Result<Credentials> {
        let name = self.identity.as_deref().unwrap_or(default_identity);
        Credentials::load(&self.certs, name).with_context(|| {
            format!(
                "loading identity {name:?} from {} (start the demo with `corridor up`, or pass --certs/--identity)",
                self.certs.display()
            )
        })
    }
}

/// How long a server keeps a connection: the bound on how long a revoked
/// identity keeps one it opened before its revocation.
#[derive(Args, Clone, Copy, Debug)]
struct ConnectionAge {
    /// Ask a connection this many seconds old to go away (HTTP/2 GOAWAY); the
    /// client's next call reconnects, and handshakes again.
    #[arg(long, default_value_t = corridor_certs::MAX_CONNECTION_AGE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connection_age: u64,
    /// Seconds that calls still running then may go on before the connection is closed.
    #[arg(long, default_value_t = corridor_certs::MAX_CONNECTION_AGE_GRACE.as_secs())]
    max_connection_age_grace: u64,
}

impl ConnectionAge {
    fn accept(self) -> corridor_certs::TlsAcceptOptions {
        corridor_certs::TlsAcceptOptions {
            max_connection_age: Some(std::time::Duration::from_secs(self.max_connection_age)),
            max_connection_age_grace: std::time::Duration::from_secs(self.max_connection_age_grace),
            ..Default::default()
        }
    }
}

// Parsed once per process; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start the whole corridor on this machine: a CA, nine city nodes and a gateway.
    Up(up::UpArgs),
    /// Run one city node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Run the gateway.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Manage certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Import a city's instruments from JSON Lines or CSV (as that city's admin).
    Import {
        file: PathBuf,
        #[arg(long)]
        city: String,
        /// The city node's endpoint; defaults to the demo's port for the city.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Search instruments in every city.
    Search {
        /// Words to look for, in Chinese or English.
        query: Vec<String>,
        /// Only these cities (repeatable).
        #[arg(long = "city")]
        cities: Vec<String>,
        /// Only these provinces (repeatable): Shanghai, Zhejiang, Jiangsu, Anhui.
        #[arg(long = "province")]
        provinces: Vec<String>,
        /// Only these taxonomy codes or their children (repeatable), e.g. 01.01.
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Only instruments of this institution (repeatable; exact name).
        #[arg(long = "institution")]
        institutions: Vec<String>,
        /// Lowest external price per unit, in yuan.
        #[arg(long)]
        min_price: Option<f64>,
        /// Highest external price per unit, in yuan.
        #[arg(long)]
        max_price: Option<f64>,
        /// Only instruments that accept innovation vouchers.
        #[arg(long)]
        vouchers: bool,
        /// Only instruments with this accreditation (repeatable): CMA, CNAS.
        #[arg(long = "accreditation")]
        accreditations: Vec<String>,
        /// Only these service modes (repeatable): self_operated, staff_operated, mail_in.
        #[arg(long = "mode")]
        modes: Vec<String>,
        /// Only these statuses (repeatable): available, maintenance, retired.
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Only instruments free for at least this many hours between --free-from and --free-to.
        #[arg(long)]
        free_hours: Option<f64>,
        #[arg(long)]
        free_from: Option<String>,
        #[arg(long)]
        free_to: Option<String>,
        /// Continue after a previous page (its next_cursor).
        #[arg(long, default_value = "")]
        cursor: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Deadline for the whole search, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        deadline_ms: u64,
        /// Fail instead of returning partial results when a city does not answer.
        #[arg(long)]
        no_partial: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one instrument by id (`<city>/<local-id>`).
    Get {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show every city node and whether it answers.
    Nodes {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Free and busy time of an instrument.
    Availability {
        instrument: String,
        /// Start of the window (default: now). RFC 3339, or "YYYY-MM-DD HH:MM" in Asia/Shanghai.
        #[arg(long)]
        from: Option<String>,
        /// Days to show (at most 31).
        #[arg(long, default_value_t = 7)]
        days: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Book a slot: hold and confirm in one step, or only hold it.
    Reserve {
        instrument: String,
        /// RFC 3339, or "YYYY-MM-DD HH:MM" in Asia/Shanghai.
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        /// Hold the slot only; confirm it later with `corridor confirm`.
        #[arg(long)]
        hold_only: bool,
        #[arg(long, default_value = "")]
        purpose: String,
        /// Pay the voucher's share of the fee with this voucher ("<city>/v-<n>").
        #[arg(long)]
        voucher: Option<String>,
        /// Idempotency key; give the same one to retry safely (default: a new one).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Confirm a held booking.
    Confirm {
        booking: String,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cancel a booking. A late cancellation costs a fee: it is shown first,
    /// and asked for, or accepted ahead with --accept-fee.
    Cancel {
        booking: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Accept the late-cancellation fee shown (refused if it grows before the cancellation lands).
        #[arg(long)]
        accept_fee: bool,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Approve a pending booking (city admin).
    Approve {
        booking: String,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Decline a pending booking (city admin).
    Decline {
        booking: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Record the actual use of a booking and its fee (city admin).
    Complete {
        booking: String,
        #[arg(long)]
        minutes: u32,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Innovation vouchers: issue one (as the issuing city's admin), or show one.
    Voucher {
        #[command(subcommand)]
        command: vouchers::VoucherCommand,
    },
    /// Settle a month of voucher redemptions across all nodes (as the reconciler):
    /// writes report.json and settlement.csv, and exits 1 if any break is found.
    Reconcile(vouchers::ReconcileArgs),
    /// Your bookings (a city admin sees the whole city's).
    Bookings {
        #[arg(long)]
        city: Option<String>,
        #[arg(long)]
        instrument: Option<String>,
        /// Include cancelled, declined, expired and completed bookings.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The deterministic demo inventory, as JSON Lines that `corridor import` reads.
    Demo {
        #[command(subcommand)]
        command: DemoCommand,
    },
    /// Change one instrument's fields, or retire it (as its city's admin).
    Instrument {
        #[command(subcommand)]
        command: instrument::InstrumentCommand,
    },
    /// An instrument's booking rules: show them, or change some (as its city's admin).
    Rules {
        #[command(subcommand)]
        command: rules::Rules,
    },
    /// Training grants: who may book an instrument that needs training (as its city's admin).
    Training {
        #[command(subcommand)]
        command: rules::Training,
    },
    /// A city's audit log of admin changes: who, when, what, before and after (as its admin).
    Audit(rules::AuditArgs),
    /// Load generators against a running corridor.
    Bench {
        #[command(subcommand)]
        command: bench::Bench,
    },
    /// Measure search relevance on judged queries.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// An instrument's busy time, as iCalendar with --ics.
    Calendar {
        instrument: String,
        #[arg(long)]
        ics: bool,
        #[arg(long, default_value_t = 31)]
        days: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Take a consistent, checksummed backup of a city's store while its node serves (as the city's admin).
    Backup {
        #[arg(long)]
        city: String,
        #[arg(long)]
        out: PathBuf,
        /// The node's endpoint; defaults to the demo's port for the city.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Verify a backup's checksum, then restore it into a new, empty data directory.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Only verify the file.
        #[arg(long)]
        verify_only: bool,
    },
    /// Serve one city's node until SIGTERM or Ctrl-C.
    Run {
        #[arg(long)]
        city: String,
        #[arg(long)]
        listen: SocketAddr,
        /// The node's sled directory.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = ".corridor/certs")]
        certs: PathBuf,
        /// Identity to serve as; defaults to node-<city>.
        #[arg(long)]
        identity: Option<String>,
        /// Seed this demo inventory (g60, yrd or yrd10) when the store is empty.
        #[arg(long)]
        seed: Option<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Serve the gRPC health service alone, in plaintext, for probes.
        #[arg(long)]
        health: Option<SocketAddr>,
        /// Another city's node (or this one's), CITY=https://host:port; repeat for
        /// each. Needed for voucher payments, which reach the issuing city's node.
        #[arg(long = "peer", env = "CORRIDOR_PEERS", value_delimiter = ',')]
        peers: Vec<String>,
        /// Threads serving calls; default one per core. `corridor up` gives
        /// each of its nine nodes one, as they share the machine's cores.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// A thesaurus CSV to use instead of the one shipped with the node
        /// (same columns as node/data/thesaurus.csv); reloaded when it changes.
        #[arg(long)]
        thesaurus: Option<PathBuf>,
        /// The city's own synonyms, in the thesaurus's CSV columns, added to it;
        /// reloaded when the file changes, no restart needed.
        #[arg(long)]
        synonyms: Option<PathBuf>,
        #[command(flatten)]
        age: ConnectionAge,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Run judged queries through the gateway and print recall@10, MRR and
    /// nDCG@10, with every miss named.
    Search(eval::EvalArgs),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Write the demo inventory (one city, or the whole corridor) as JSON Lines.
    Export {
        /// g60, yrd or yrd10.
        #[arg(long, default_value = "g60")]
        scale: String,
        /// Only this city (the file can then be imported with `corridor import --city`).
        #[arg(long)]
        city: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Serve the gateway until SIGTERM or Ctrl-C.
    Run {
        /// TOML file mapping cities to node endpoints.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = ".corridor/certs")]
        certs: PathBuf,
        #[arg(long, default_value = "gateway")]
        identity: String,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Serve the gRPC health service alone, in plaintext, for probes.
        #[arg(long)]
        health: Option<SocketAddr>,
        /// Threads serving calls; default one per core. `corridor up` gives
        /// the gateway one, as it shares the machine's cores with nine nodes.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        #[command(flatten)]
        age: ConnectionAge,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Issue (or re-issue) one identity from the CA in --dir: NAME.pem and NAME.key (mode 0600).
    Issue {
        /// gateway, reconciler, node-<city>, admin-<city> or org-<name>.
        name: String,
        #[arg(long, default_value = ".corridor/certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Extra DNS names the identity serves on (comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
    },
    /// Renew an existing identity: a new key and certificate, same identity.
    /// Running processes pick it up without a restart.
    Renew {
        name: String,
        #[arg(long, default_value = ".corridor/certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke the identity's current certificate: it is refused at every
    /// handshake once processes reload the CRL (within seconds).
    Revoke {
        name: String,
        #[arg(long, default_value = ".corridor/certs")]
        dir: PathBuf,
    },
    /// Make a private key (mode 0600) and a certificate signing request for
    /// NAME in --out, where the key will be used: DIR/NAME.key and DIR/NAME.csr.
    /// Send NAME.csr to the CA (`corridor certs sign`); the key never travels.
    Request {
        /// gateway, reconciler, node-<city>, admin-<city> or org-<name>.
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names the identity serves on (comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
    },
    /// At the CA: check a certificate signing request and sign it. Writes only
    /// the certificate (default: the request's path with .pem).
    Sign {
        csr: PathBuf,
        /// The CA's directory (ca.pem, ca.key).
        #[arg(long, default_value = ".corridor/certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create a development CA and every corridor identity.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Cities to issue node and admin identities for (comma-separated); all nine by default.
        #[arg(long, value_delimiter = ',')]
        cities: Vec<String>,
        /// Replace an existing CA and every identity.
        #[arg(long)]
        force: bool,
    },
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A metrics registry, served at `addr` when one is given.
async fn serve_metrics(addr: Option<SocketAddr>) -> Result<std::sync::Arc<corridor_telemetry::Metrics>> {
    let metrics = corridor_telemetry::Metrics::new();
    if let Some(listener) = bind_optional(addr, "metrics").await? {
        tokio::spawn(corridor_telemetry::serve(listener, metrics.clone(), shutdown_signal()));
    }
    Ok(metrics)
}

/// Binds `what` (metrics, the health port) on `addr`, when asked for: the
/// binary binds every socket, and the servers take what it bound.
async fn bind_optional(addr: Option<SocketAddr>, what: &str) -> Result<Option<tokio::net::TcpListener>> {
    match addr {
        None => Ok(None),
        Some(addr) => {
            Ok(Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {what} on {addr}"))?))
        }
    }
}

/// Issues NAME from the CA in `dir`, valid for `days`, and writes it.
fn issue_identity(dir: &std::path::Path, name: &str, days: u32, dns: Vec<String>) -> Result<()> {
    let id = corridor_certs::Identity::from_name(name)?;
    if let Some(c) = id.city() {
        city(c)?;
    }
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let ca = corridor_certs::Ca::load(dir)?;
    let mut opts = corridor_certs::IssueOptions::for_identity(&id);
    opts.not_after = opts.not_before + std::time::Duration::from_secs(days as u64 * 86_400);
    opts.dns_names.extend(dns);
    corridor_certs::write_identity(dir, name, &ca.issue(&id, &opts)?)?;
    outln!("issued {name} ({}) in {}, valid {days} days", id.uri(), dir.display());
    Ok(())
}

pub(crate) fn city(slug: &str) -> Result<&'static corridor_proto::cities::City> {
    city_by_slug(slug)
        .with_context(|| format!("{slug:?} is not a corridor city; cities are {}", CITIES.map(|c| c.slug).join(", ")))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Node { command: NodeCommand::Run { workers: Some(n), .. } }
    | Command::Gateway { command: GatewayCommand::Run { workers: Some(n), .. } } = &cli.command
    {
        runtime.worker_threads(usize::from(*n));
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(start(cli)),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> std::process::ExitCode {
    let server = matches!(cli.command, Command::Up(_) | Command::Node { .. } | Command::Gateway { .. });
    let service = match &cli.command {
        Command::Node { command: NodeCommand::Run { city, .. } } => format!("corridor-node-{city}"),
        Command::Gateway { .. } => "corridor-gateway".to_string(),
        _ => "corridor-cli".to_string(),
    };
    // Kept to the end of main: dropping it flushes exported spans.
    let _tracing = corridor_telemetry::init_tracing(if server { "info" } else { "warn" }, &service);
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match command {
        Command::Up(args) => up::up(args).await?,
        Command::Node {
            command:
                NodeCommand::Run {
                    city: slug,
                    listen,
                    data,
                    certs,
                    identity,
                    seed,
                    metrics,
                    health,
                    peers,
                    workers: _,
                    thesaurus,
                    synonyms,
                    age,
                },
        } => {
            let city = city(&slug)?;
            let seed = match seed.as_deref() {
                None => None,
                Some(s) => Some(
                    corridor_node::ops::demo::Scale::parse(s)
                        .with_context(|| format!("--seed {s:?}: use g60, yrd or yrd10"))?,
                ),
            };
            let identity = identity.unwrap_or_else(|| format!("node-{slug}"));
            let creds = corridor_certs::CredentialSource::load(&certs, &identity)?;
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let peers = corridor_node::parse_peers(&peers).map_err(anyhow::Error::msg)?;
            let config = corridor_node::NodeConfig {
                city,
                data_dir: data,
                seed,
                peers,
                clock_skew: None,
                thesaurus: corridor_node::ThesaurusFiles { replace: thesaurus, add: synonyms },
                accept: age.accept(),
            };
            let registry = serve_metrics(metrics).await?;
            let health = bind_optional(health, "the health port").await?;
            corridor_node::run(config, creds, listener, registry, health, shutdown_signal()).await?;
        }
        Command::Node { command: NodeCommand::Backup { city: slug, out, node, client } } => {
            let city = city(&slug)?;
            return client::backup(city, &out, node, &client).await;
        }
        Command::Node { command: NodeCommand::Restore { file, data, verify_only } } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let backup = corridor_node::ops::backup::verify(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}; nothing restored", file.display()))?;
            outln!(
                "{}: a backup of {} taken {}, {} entries, checksum verified",
                file.display(),
                backup.city,
                backup.taken_at,
                backup.len()
            );
            if !verify_only {
                corridor_node::ops::backup::restore(&backup, &data)
                    .map_err(|e| anyhow::anyhow!("{e}; nothing restored"))?;
                outln!("restored into {}; start the node with --data {}", data.display(), data.display());
            }
        }
        Command::Gateway {
            command: GatewayCommand::Run { config, listen, certs, identity, metrics, health, workers: _, age },
        } => {
            let mut config = corridor_gateway::GatewayConfig::load(&config)?;
            config.accept = age.accept();
            let creds = corridor_certs::CredentialSource::load(&certs, &identity)?;
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let registry = serve_metrics(metrics).await?;
            let health = bind_optional(health, "the health port").await?;
            corridor_gateway::run(config, creds, listener, registry, health, shutdown_signal()).await?;
        }
        Command::Demo { command: DemoCommand::Export { scale, city: only, out } } => {
            let scale = corridor_node::ops::demo::Scale::parse(&scale)
                .with_context(|| format!("--scale {scale:?}: use g60, yrd or yrd10"))?;
            if let Some(c) = &only {
                city(c)?;
            }
            let mut text = String::new();
            let mut n = 0;
            for (c, record) in corridor_node::ops::demo::corridor_inventory(scale) {
                if only.as_deref().is_none_or(|o| o == c.slug) {
                    text.push_str(&serde_json::to_string(&record)?);
                    text.push('\n');
                    n += 1;
                }
            }
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            outln!("wrote {n} instruments to {}", out.display());
        }
        Command::Certs { command: CertsCommand::Issue { name, dir, days, dns } } => {
            issue_identity(&dir, &name, days, dns)?;
        }
        Command::Certs { command: CertsCommand::Renew { name, dir, days } } => {
            if !dir.join(format!("{name}.pem")).exists() {
                bail!(
                    "{} does not exist; use `corridor certs issue {name}`",
                    dir.join(format!("{name}.pem")).display()
                );
            }
            issue_identity(&dir, &name, days, Vec::new())?;
        }
        Command::Certs { command: CertsCommand::Revoke { name, dir } } => {
            let serial = corridor_certs::revoke(&dir, &name)?;
            outln!("revoked {name} (serial {serial}); {} updated", corridor_certs::crl_path(&dir).display());
        }
        Command::Certs { command: CertsCommand::Request { name, out, dns } } => {
            let id = corridor_certs::Identity::from_name(&name)?;
            if let Some(c) = id.city() {
                city(c)?;
            }
            let mut opts = corridor_certs::IssueOptions::for_identity(&id);
            opts.dns_names.extend(dns);
            corridor_certs::write_request(&out, &name, &corridor_certs::request(&id, &opts)?)?;
            outln!(
                "wrote {0}/{name}.key (keep it here) and {0}/{name}.csr for {1}; have the CA run `corridor certs sign {name}.csr`, then put the certificate beside the key as {name}.pem with the CA's ca.pem",
                out.display(),
                id.uri()
            );
        }
        Command::Certs { command: CertsCommand::Sign { csr, dir, days, out } } => {
            if days == 0 {
                bail!("--days must be at least 1");
            }
            let pem = std::fs::read_to_string(&csr).with_context(|| format!("reading {}", csr.display()))?;
            let now = time::OffsetDateTime::now_utc();
            // A minute of slack for clocks that disagree a little, as `issue` gives.
            let (from, to) = (now - time::Duration::minutes(1), now + time::Duration::days(days.into()));
            let signed = corridor_certs::Ca::load(&dir)?
                .sign_request(&pem, from, to)
                .map_err(|e| anyhow::anyhow!("{}: {e}", csr.display()))?;
            let name = signed.identity.name();
            if let Some(c) = signed.identity.city() {
                city(c)?;
            }
            // A file named for one identity that asks for another is a mix-up, or worse.
            let stem = csr.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if corridor_certs::Identity::from_name(stem).is_ok_and(|named| named != signed.identity) {
                bail!(
                    "{}: the file is named for {stem}, but the request asks for {name}; nothing written",
                    csr.display()
                );
            }
            let out = out.unwrap_or_else(|| csr.with_extension("pem"));
            std::fs::write(&out, &signed.cert_pem).with_context(|| format!("writing {}", out.display()))?;
            outln!("signed {name} ({}), valid {days} days: {}", signed.identity.uri(), out.display());
        }
        Command::Certs { command: CertsCommand::Init { out, cities, force } } => {
            let cities: Vec<String> =
                if cities.is_empty() { CITIES.iter().map(|c| c.slug.to_string()).collect() } else { cities };
            for c in &cities {
                city(c)?;
            }
            let refs: Vec<&str> = cities.iter().map(String::as_str).collect();
            let names = corridor_certs::init_dir(&out, &refs, force)?;
            outln!("wrote ca.pem and {} identities to {}", names.len(), out.display());
        }
        Command::Import { file, city: slug, node, client } => {
            let city = city(&slug)?;
            return client::import(&file, city, node, &client).await;
        }
        Command::Search {
            query,
            cities,
            provinces,
            categories,
            institutions,
            min_price,
            max_price,
            vouchers,
            accreditations,
            modes,
            statuses,
            free_hours,
            free_from,
            free_to,
            cursor,
            limit,
            deadline_ms,
            no_partial,
            client,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let fen = |y: f64| (y * 100.0).round() as i64;
            let free_window = match (free_hours, free_from, free_to) {
                (None, None, None) => None,
                (Some(h), Some(from), Some(to)) if h > 0.0 => Some(corridor_proto::FreeWindowFilter {
                    from: bookings::cli_time(&from)?,
                    to: bookings::cli_time(&to)?,
                    min_minutes: (h * 60.0).round() as u32,
                }),
                _ => bail!("a free-window filter needs --free-hours (above 0), --free-from and --free-to together"),
            };
            let service_modes = modes
                .iter()
                .map(|m| match m.as_str() {
                    "self_operated" => Ok(corridor_proto::ServiceMode::SelfOperated as i32),
                    "staff_operated" => Ok(corridor_proto::ServiceMode::StaffOperated as i32),
                    "mail_in" => Ok(corridor_proto::ServiceMode::MailIn as i32),
                    _ => bail!("--mode {m:?}: use self_operated, staff_operated or mail_in"),
                })
                .collect::<Result<Vec<_>>>()?;
            let statuses = statuses
                .iter()
                .map(|m| match m.as_str() {
                    "available" => Ok(corridor_proto::InstrumentStatus::Available as i32),
                    "maintenance" => Ok(corridor_proto::InstrumentStatus::Maintenance as i32),
                    "retired" => Ok(corridor_proto::InstrumentStatus::Retired as i32),
                    _ => bail!("--status {m:?}: use available, maintenance or retired"),
                })
                .collect::<Result<Vec<_>>>()?;
            let req = corridor_proto::SearchRequest {
                query: query.join(" "),
                filter: Some(corridor_proto::SearchFilter {
                    cities,
                    provinces,
                    categories,
                    institutions,
                    min_price_fen: min_price.map(fen),
                    max_price_fen: max_price.map(fen),
                    accepts_vouchers: vouchers.then_some(true),
                    accreditations,
                    service_modes,
                    statuses,
                    free_window,
                }),
                limit,
                allow_partial: Some(!no_partial),
                cursor,
                facets: true,
                stats: None,
            };
            return client::search(req, deadline_ms, &client).await;
        }
        Command::Get { id, client } => return client::get(&id, &client).await,
        Command::Nodes { client } => return client::nodes(&client).await,
        Command::Availability { instrument, from, days, client } => {
            return bookings::availability(&instrument, from.as_deref(), days, &client).await;
        }
        Command::Reserve { instrument, start, end, hold_only, purpose, voucher, key, client } => {
            let req = corridor_proto::ReserveRequest {
                instrument_id: instrument,
                start: bookings::cli_time(&start)?,
                end: bookings::cli_time(&end)?,
                hold_only,
                purpose,
                idempotency_key: key.unwrap_or_else(bookings::new_key),
                voucher_id: voucher.unwrap_or_default(),
            };
            return bookings::reserve(req, &client).await;
        }
        Command::Confirm { booking, key, client } => {
            return bookings::action(bookings::Action::Confirm, booking, String::new(), key, &client).await;
        }
        Command::Cancel { booking, reason, accept_fee, key, client } => {
            return bookings::cancel(booking, reason, key, accept_fee, &client).await;
        }
        Command::Approve { booking, key, client } => {
            return bookings::action(bookings::Action::Approve, booking, String::new(), key, &client).await;
        }
        Command::Decline { booking, reason, key, client } => {
            return bookings::action(bookings::Action::Decline, booking, reason, key, &client).await;
        }
        Command::Complete { booking, minutes, key, client } => {
            return bookings::complete(booking, minutes, key, &client).await;
        }
        Command::Voucher { command } => return vouchers::voucher(command).await,
        Command::Instrument { command } => return instrument::instrument(command).await,
        Command::Rules { command } => return rules::rules(command).await,
        Command::Training { command } => return rules::training(command).await,
        Command::Audit(args) => return rules::audit(args).await,
        Command::Reconcile(args) => return vouchers::reconcile(args).await,
        Command::Bookings { city, instrument, all, client } => {
            return bookings::list(city, instrument, all, &client).await;
        }
        Command::Eval { command: EvalCommand::Search(args) } => return eval::search(args).await,
        Command::Bench { command: bench::Bench::Reserve(args) } => return bench::reserve(args).await,
        Command::Bench { command: bench::Bench::Search(args) } => return bench::search(args).await,
        Command::Bench { command: bench::Bench::Handshake(args) } => return bench::handshake(args).await,
        Command::Bench { command: bench::Bench::Bookings(args) } => return bench::bookings(args).await,
        Command::Calendar { instrument, ics, days, client } => {
            return bookings::calendar(&instrument, ics, days, &client).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
