//! The metrics registry: counters, the per-method call counts and latency
//! histograms, and gauges read at scrape time; and its Prometheus text.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::process;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

pub type Labels = Vec<(&'static str, String)>;
/// A gauge family's series: labels and value.
type Series = Vec<(Labels, f64)>;
/// Reads a gauge family's series, at every scrape.
type Read = Box<dyn Fn() -> Series + Send + Sync>;

/// Calls by (method, code name) and latency by method. Every key is a
/// `&'static str` from a bounded set: the methods the services define (or
/// `unknown`) and the gRPC code names.
#[derive(Default)]
struct RpcStats {
    calls: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// One process's metrics.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    rpc: Mutex<RpcStats>,
    gauges: Mutex<Vec<(&'static str, &'static str, Read)>>,
    help: Mutex<BTreeMap<&'static str, &'static str>>,
}

fn labels(l: &Labels) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// Adds one to a counter. Every label must take its values from a
    /// bounded set: each new value is a new series, kept for the life of
    /// the process.
    pub fn inc(&self, name: &'static str, help: &'static str, l: Labels) {
        self.help.lock().expect("poisoned").insert(name, help);
        *self.counters.lock().expect("poisoned").entry((name, l)).or_default() += 1;
    }

    /// Registers a gauge read at every scrape.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        l: Labels,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.gauges.lock().expect("poisoned").push((name, help, Box::new(move || vec![(l.clone(), read())])));
    }

    /// Registers a gauge family whose series are read together at every
    /// scrape, for values that one pass over the data gives at once.
    pub fn gauges(&self, name: &'static str, help: &'static str, read: impl Fn() -> Series + Send + Sync + 'static) {
        self.gauges.lock().expect("poisoned").push((name, help, Box::new(read)));
    }

    /// Records one finished gRPC call: `method` is a known method path or
    /// `unknown`, `code` a gRPC code name (see [`code_name`]).
    pub fn rpc(&self, method: &'static str, code: &'static str, took: Duration) {
        let mut rpc = self.rpc.lock().expect("poisoned");
        *rpc.calls.entry((method, code)).or_default() += 1;
        let h = rpc.latency.entry(method).or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The metrics in the Prometheus text format. Gauges are read here, and
    /// some read the store: call it off the async workers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.lock().expect("poisoned").clone();
        let mut last = "";
        for ((name, l), v) in self.counters.lock().expect("poisoned").iter() {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", help.get(name).unwrap_or(&""));
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", labels(l));
        }
        let (calls, lat) = {
            let rpc = self.rpc.lock().expect("poisoned");
            (rpc.calls.clone(), rpc.latency.clone())
        };
        if !calls.is_empty() {
            let name = "corridor_rpc_requests_total";
            let _ = writeln!(out, "# HELP {name} gRPC calls served, by method and status code\n# TYPE {name} counter");
            for ((method, code), n) in &calls {
                let _ = writeln!(out, "{name}{{method=\"{method}\",code=\"{code}\"}} {n}");
            }
        }
        if !lat.is_empty() {
            let name = "corridor_rpc_duration_seconds";
            let _ = writeln!(out, "# HELP {name} gRPC call latency by method\n# TYPE {name} histogram");
            for (method, h) in &lat {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{{method=\"{method}\",le=\"{b}\"}} {}", h.counts[i]);
                }
                let _ = writeln!(out, "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {}", h.count);
            }
        }
        // A family's series together, whatever order they were registered in.
        let mut families: BTreeMap<&'static str, (&'static str, Series)> = BTreeMap::new();
        for (name, help, read) in self.gauges.lock().expect("poisoned").iter() {
            families.entry(name).or_insert((help, Vec::new())).1.extend(read());
        }
        for (name, (help, series)) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (l, v) in series {
                let _ = writeln!(out, "{name}{} {v}", labels(&l));
            }
        }
        process::render(&mut out);
        render_tls_refusals(&mut out);
        out
    }
}

/// The TLS accept path's refusals, counted process-wide in the certs crate
/// (it sits below this crate and keeps no registry).
fn render_tls_refusals(out: &mut String) {
    let name = "corridor_tls_handshakes_refused_total";
    let _ = writeln!(out, "# HELP {name} TLS handshakes refused or shed, by reason\n# TYPE {name} counter");
    for (reason, n) in corridor_certs::handshake_refusals() {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.rpc("/corridor.v1.Gateway/Search", "OK", Duration::from_millis(3));
        m.rpc("/corridor.v1.Gateway/Search", "UNAVAILABLE", Duration::from_millis(30));
        m.gauge("corridor_open_holds", "holds not yet confirmed", vec![("city", "hefei".into())], || 2.0);
        let text = m.render();
        assert!(
            text.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Gateway/Search\",code=\"UNAVAILABLE\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "corridor_rpc_duration_seconds_bucket{method=\"/corridor.v1.Gateway/Search\",le=\"0.005\"} 1"
            )
        );
        assert!(text.contains("corridor_rpc_duration_seconds_count{method=\"/corridor.v1.Gateway/Search\"} 2"));
        assert!(text.contains("# TYPE corridor_open_holds gauge\ncorridor_open_holds{city=\"hefei\"} 2"));
        assert!(text.contains("corridor_tls_handshakes_refused_total{reason=\"shed_silent\"} "), "{text}");
    }
}
