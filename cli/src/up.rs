//! `corridor up`: the whole corridor on one machine. Each city node and the
//! gateway run as separate OS processes of this same binary, each node with
//! its own sled directory, so that killing one behaves as it would in
//! production. The gateway listens on P, nodes on P+1..P+9, and the same
//! processes serve Prometheus metrics on P+10..P+19. Layout under `--data`: `certs/`, `nodes/<city>/` (sled),
//! `logs/<name>.log` (appended to, each start after a separator line), `run/<name>.pid` and
//! `gateway.toml`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use corridor_certs::Credentials;
use corridor_proto::cities::{CITIES, City};
use tokio::process::{Child, Command};

use crate::client;

pub const DEFAULT_PORT_BASE: u16 = 7443;

/// How long `up` waits for the mesh before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each process may take to drain and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where certificates, node databases, logs and the gateway config live.
    #[arg(long, default_value = ".corridor")]
    data: PathBuf,
    /// The gateway listens on P, the nine nodes on P+1..P+9.
    #[arg(long, default_value_t = DEFAULT_PORT_BASE)]
    port_base: u16,
    /// Demo inventory seeded on first start: g60 (1,746 instruments), yrd (26,733) or yrd10 (267,330).
    #[arg(long, default_value = "g60", value_parser = ["g60", "yrd", "yrd10"])]
    scale: String,
}

/// The demo's endpoint for a city node.
pub fn demo_node_endpoint(port_base: u16, city: &City) -> String {
    let i = CITIES.iter().position(|c| c.slug == city.slug).expect("a corridor city");
    format!("https://127.0.0.1:{}", port_base as usize + 1 + i)
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

fn spawn(name: &str, args: &[String], log: &Path) -> Result<Proc> {
    let exe = std::env::current_exe().context("locating the corridor binary")?;
    let out = open_log(log, &time::OffsetDateTime::now_utc())?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    // Each process is its own service in traces.
    cmd.env("OTEL_SERVICE_NAME", format!("corridor-{name}"));
    // If `up` itself dies, even by SIGKILL, its children must not linger.
    // SAFETY: prctl is async-signal-safe and touches only this child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    // Operators (and tests) find a process by name: DATA/run/NAME.pid.
    if let (Some(pid), Some(data)) = (child.id(), log.parent().and_then(Path::parent)) {
        let run = data.join("run");
        std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        std::fs::write(run.join(format!("{name}.pid")), format!("{pid}\n"))?;
    }
    Ok(Proc { name: name.into(), child, log: log.into() })
}

/// Opens a process's log for appending, after a line that marks where this
/// start begins: the lines of earlier runs (why the last one stopped, say)
/// stay for whoever reads the log later.
fn open_log(log: &Path, now: &time::OffsetDateTime) -> Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let at = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    writeln!(file, "==== corridor up started at {at} ====").with_context(|| format!("writing {}", log.display()))?;
    Ok(file)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn gateway_config(port_base: u16) -> String {
    let mut out = String::from("# Written by `corridor up`: the demo's nine city nodes.\ndefault_deadline_ms = 1500\n");
    for c in CITIES.iter() {
        out.push_str(&format!(
            "\n[[nodes]]\ncity = \"{}\"\nendpoint = \"{}\"\n",
            c.slug,
            demo_node_endpoint(port_base, c)
        ));
    }
    out
}

fn exited(procs: &mut [Proc]) -> Option<(String, ExitStatus, PathBuf)> {
    procs.iter_mut().find_map(|p| match p.child.try_wait() {
        Ok(Some(status)) => Some((p.name.clone(), status, p.log.clone())),
        _ => None,
    })
}

pub async fn up(args: UpArgs) -> Result<()> {
    let started = Instant::now();
    if args.port_base > u16::MAX - 20 {
        bail!("--port-base {} leaves no room for the nine node ports and the metrics ports above it", args.port_base);
    }
    let data = args.data.clone();
    let certs = data.join("certs");
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    if !certs.join("ca.pem").exists() {
        let cities: Vec<&str> = CITIES.iter().map(|c| c.slug).collect();
        corridor_certs::init_dir(&certs, &cities, false)?;
        eprintln!("created a development CA and identities in {}", certs.display());
    }
    let config_path = data.join("gateway.toml");
    std::fs::write(&config_path, gateway_config(args.port_base))
        .with_context(|| format!("writing {}", config_path.display()))?;

    let s = |p: &Path| p.display().to_string();
    let mut procs = Vec::new();
    for c in CITIES.iter() {
        let port = args.port_base as usize + 1 + CITIES.iter().position(|x| x.slug == c.slug).unwrap_or(0);
        let node_args = [
            "node",
            "run",
            "--city",
            c.slug,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            &s(&data.join("nodes").join(c.slug)),
            "--certs",
            &s(&certs),
            "--seed",
            &args.scale,
            "--metrics",
            &format!("127.0.0.1:{}", port + 10),
            // Ten processes share this machine's cores: a second thread per
            // process only adds cross-thread wakeups (about a tenth of a
            // search's CPU, BENCHMARKS.md).
            "--workers",
            "1",
        ]
        .map(String::from)
        .into_iter()
        // Every node knows every node: voucher payments reach the issuing city.
        .chain(CITIES.iter().map(|p| format!("--peer={}={}", p.slug, demo_node_endpoint(args.port_base, p))))
        .collect::<Vec<_>>();
        procs.push(spawn(&format!("node-{}", c.slug), &node_args, &logs.join(format!("node-{}.log", c.slug)))?);
    }
    let gw_args = [
        "gateway",
        "run",
        "--config",
        &s(&config_path),
        "--listen",
        &format!("127.0.0.1:{}", args.port_base),
        "--certs",
        &s(&certs),
        "--metrics",
        &format!("127.0.0.1:{}", args.port_base as usize + 10),
        "--workers",
        "1",
    ]
    .map(String::from);
    procs.push(spawn("gateway", &gw_args, &logs.join("gateway.log"))?);

    // Ready means: the gateway answers and every city answers through it.
    let creds = Credentials::load(&certs, "org-demo")?;
    let url = format!("https://127.0.0.1:{}", args.port_base);
    let mut client = client::gateway_for(&url, &creds)?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (cities, instruments) = loop {
        tick.tick().await;
        if let Some((name, status, log)) = exited(&mut procs) {
            stop(&mut procs).await;
            bail!("{name} exited during start ({status}); last lines of {}:\n{}", log.display(), tail(&log));
        }
        if let Some(ready) = client::all_nodes_ok(&mut client).await {
            break ready;
        }
        if started.elapsed() > READY_TIMEOUT {
            stop(&mut procs).await;
            bail!("the mesh was not ready within {} s; see the logs in {}", READY_TIMEOUT.as_secs(), logs.display());
        }
    };
    // Not outln!: a reader that has seen this line and gone (`| head -1`)
    // must not end the command here, which would leave the mesh running
    // unowned. The mesh serves on until Ctrl-C or SIGTERM stops it.
    let _ = writeln!(
        std::io::stdout(),
        "corridor ready: gateway {url}, {cities} cities, {instruments} instruments, in {:.1} s (metrics on http://127.0.0.1:{}-{}/metrics; logs in {}; Ctrl-C stops)",
        started.elapsed().as_secs_f64(),
        args.port_base as usize + 10,
        args.port_base as usize + 19,
        logs.display()
    );

    // Watch the children until asked to stop; a child that dies is reported,
    // and the rest keep serving (that is what partial results are for).
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    let mut reported = std::collections::HashSet::new();
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watch.tick() => {
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait()
                        && reported.insert(p.name.clone())
                    {
                        eprintln!("{} exited ({status}); see {}", p.name, p.log.display());
                    }
                }
            }
        }
    }
    eprintln!("stopping…");
    stop(&mut procs).await;
    eprintln!("stopped");
    Ok(())
}

/// SIGTERM to every process, then wait for each to drain; SIGKILL whatever
/// is still running after the grace period.
async fn stop(procs: &mut [Proc]) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop within {} s; killing it", p.name, STOP_TIMEOUT.as_secs());
                let _ = p.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_earlier_runs_and_marks_each_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gateway.log");
        let first = time::macros::datetime!(2026-12-01 08:00 UTC);
        let mut f = open_log(&log, &first).unwrap();
        writeln!(f, "gateway stopped drain_ms=12").unwrap();
        drop(f);
        let mut f = open_log(&log, &time::macros::datetime!(2026-12-02 09:30 UTC)).unwrap();
        writeln!(f, "gateway serving").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "==== corridor up started at 2026-12-01T08:00:00Z ====\n\
             gateway stopped drain_ms=12\n\
             ==== corridor up started at 2026-12-02T09:30:00Z ====\n\
             gateway serving\n"
        );
    }
}
