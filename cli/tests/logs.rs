//! `corridor up` keeps its processes' logs across restarts, and each
//! process says in its log when it stopped and how long its drain took.

mod common;

fn log(data: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(data.join("logs").join(format!("{name}.log"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_keep_earlier_runs_and_say_when_each_process_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("corridor");
    for run in 1..=2 {
        let (up, line) = common::start_up(&data, common::free_port_base(), &[]).await;
        assert!(line.starts_with("corridor ready"), "run {run}: {line:?}");
        // SIGTERM, and wait until `up` has stopped every process.
        drop(up);
    }
    for name in ["gateway", "node-hefei"] {
        let text = log(&data, name);
        let runs: Vec<&str> = text.split("==== corridor up started at ").skip(1).collect();
        assert_eq!(runs.len(), 2, "two runs, each after its separator, in {name}.log:\n{text}");
        let what = if name == "gateway" { "gateway stopped" } else { "node stopped" };
        for run in runs {
            let stopped = run.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{name}.log:\n{text}"));
            assert!(stopped.contains("drain_ms="), "{stopped}");
        }
    }
}
