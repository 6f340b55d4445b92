//! The `corridor` binary as a user runs it: against an in-process mesh, and
//! `corridor up` as real processes.

mod common;

use std::{path::Path, process::Command, time::Duration};

use corridor_node::demo::{Scale, city_inventory};
use corridor_tests::{Mesh, pb};

fn corridor(certs: &Path, gateway: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corridor"));
    cmd.env("CORRIDOR_CERTS", certs).env("CORRIDOR_GATEWAY", gateway).env_remove("CORRIDOR_IDENTITY");
    cmd
}

async fn run(mut cmd: Command) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run corridor")).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn jsonl(records: &[corridor_node::model::InstrumentRecord]) -> String {
    records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
}

async fn hefei_count(mesh: &Mesh) -> u64 {
    mesh.node("hefei", "gateway").info(pb::NodeInfoRequest {}).await.unwrap().into_inner().instruments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_all_or_nothing_and_idempotent() {
    let mesh = Mesh::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut records = city_inventory(Scale::G60, "hefei");
    records.truncate(50);

    // Line 3 is bad: nothing of the file may be stored.
    let mut bad = records.clone();
    bad[2].institution_uscc = "91340100XXXX".into();
    let bad_file = dir.path().join("bad.jsonl");
    std::fs::write(&bad_file, jsonl(&bad)).unwrap();
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["import", bad_file.to_str().unwrap(), "--city", "hefei", "--node", &mesh.node_url("hefei")]);
    let (ok, _, err) = run(cmd).await;
    assert!(!ok);
    assert!(err.contains("line 3: institution_uscc"), "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    assert_eq!(hefei_count(&mesh).await, 0);

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, jsonl(&records)).unwrap();
    let import = |file: &Path| {
        let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
        cmd.args(["import", file.to_str().unwrap(), "--city", "hefei", "--node", &mesh.node_url("hefei"), "--json"]);
        cmd
    };
    let (ok, out, err) = run(import(&good)).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["inserted"], 50);
    assert_eq!(hefei_count(&mesh).await, 50);

    // The same file again changes nothing.
    let (ok, out, _) = run(import(&good)).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["inserted"].as_u64(), v["updated"].as_u64(), v["unchanged"].as_u64()), (Some(0), Some(0), Some(50)));

    // Another city's admin is refused by the node, with the reason.
    let mut cmd = import(&good);
    cmd.args(["--identity", "admin-wuhu"]);
    let (ok, _, err) = run(cmd).await;
    assert!(!ok);
    assert!(err.contains("PermissionDenied") && err.contains("may not write hefei"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_json_has_hits_nodes_and_partial() {
    let mesh = Mesh::start(Some(Scale::G60)).await;
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["search", "显微镜", "--json"]);
    let (ok, out, err) = run(cmd).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partial"], false);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 9);
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 20);
    for h in hits {
        assert!(h["id"].as_str().unwrap().starts_with(h["city"].as_str().unwrap()));
        assert!(h["name"].as_str().unwrap().contains("显微镜"));
    }

    // Output into a pipe already closed (`| head` that has had enough): a
    // quiet success, not a panic.
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["search", "显微镜", "--json"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{:?}: {err}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_mesh_as_processes_and_survives_a_killed_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_port_base();
    let data = dir.path().join("corridor");
    let gateway = format!("https://127.0.0.1:{base}");
    let certs = data.join("certs");
    let (up, line) = common::start_up(&data, base, &[]).await;
    assert!(line.starts_with("corridor ready"), "{line:?}");
    assert!(line.contains("9 cities") && line.contains("1746 instruments"), "{line}");

    let mut cmd = corridor(&certs, &gateway);
    cmd.args(["nodes", "--json"]);
    let (ok, out, err) = run(cmd).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 9);
    assert!(nodes.iter().all(|n| n["status"] == "ok"), "{out}");

    // kill -9 one node process: the search still answers, marking it.
    let pid: i32 = std::fs::read_to_string(data.join("run/node-suzhou.pid")).unwrap().trim().parse().unwrap();
    // SAFETY: signalling a grandchild whose pid `up` just wrote.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let mut cmd = corridor(&certs, &gateway);
    cmd.args(["search", "显微镜", "--json", "--deadline-ms", "1500"]);
    let started = std::time::Instant::now();
    let (ok, out, err) = run(cmd).await;
    assert!(ok, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partial"], true, "{out}");
    let suzhou = v["nodes"].as_array().unwrap().iter().find(|n| n["city"] == "suzhou").unwrap().clone();
    assert_ne!(suzhou["status"], "ok");
    assert!(!v["hits"].as_array().unwrap().is_empty());

    // Every process serves Prometheus metrics, ten ports above its gRPC port.
    let get = |port: u16| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let gw = get(base + 10);
    assert!(gw.contains("corridor_rpc_requests_total{method=\"/corridor.v1.Gateway/Search\",code=\"0\"}"), "{gw}");
    assert!(gw.contains("corridor_fanout_total{city=\"suzhou\",state=\"unavailable\"}"), "{gw}");
    assert!(gw.contains("corridor_cert_not_after_seconds{identity=\"spiffe://corridor/gateway\"}"), "{gw}");
    let hefei = get(base + 10 + 7);
    for metric in [
        "corridor_sled_disk_bytes{city=\"hefei\"}",
        "corridor_open_holds{city=\"hefei\"} 0",
        "corridor_rpc_duration_seconds_bucket",
    ] {
        assert!(hefei.contains(metric), "{metric} in {hefei}");
    }
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_identity_is_told_why_with_its_name_and_the_address() {
    let mesh = Mesh::start(None).await;
    let nodes = |identity: &str| {
        let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
        cmd.args(["nodes", "--identity", identity]);
        cmd
    };
    let (ok, _, err) = run(nodes("org-demo")).await;
    assert!(ok, "{err}");

    corridor_certs::revoke(&mesh.certs, "org-demo").unwrap();
    mesh.reload_all();
    let (ok, _, err) = run(nodes("org-demo")).await;
    assert!(!ok);
    assert!(err.contains("certificate was revoked"), "{err}");
    assert!(err.contains("identity org-demo") && err.contains(&mesh.gateway_url()), "{err}");

    let id = corridor_certs::Identity::Org("late".into());
    let mut expired = corridor_certs::IssueOptions::for_identity(&id);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    mesh.issue("org-late", &id, &expired);
    let (ok, _, err) = run(nodes("org-late")).await;
    assert!(!ok);
    assert!(err.contains("identity org-late") && err.contains("has expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_enrolled_by_request_works_and_its_key_never_leaves() {
    let mesh = Mesh::start(None).await;
    let lab = tempfile::tempdir().unwrap();
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["certs", "request", "org-acme", "--out", lab.path().to_str().unwrap()]);
    let (ok, _, err) = run(cmd).await;
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.path().join("org-acme.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // At the CA, only the request: the signed certificate comes back.
    let at_ca = tempfile::tempdir().unwrap();
    std::fs::copy(lab.path().join("org-acme.csr"), at_ca.path().join("org-acme.csr")).unwrap();
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["certs", "sign", at_ca.path().join("org-acme.csr").to_str().unwrap(), "--dir"]).arg(&mesh.certs);
    let (ok, out, err) = run(cmd).await;
    assert!(ok, "{err}");
    assert!(out.contains("signed org-acme (spiffe://corridor/org/acme)"), "{out}");
    let names: Vec<_> = std::fs::read_dir(at_ca.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "the request and the certificate, no key: {names:?}");

    std::fs::copy(at_ca.path().join("org-acme.pem"), lab.path().join("org-acme.pem")).unwrap();
    std::fs::copy(mesh.certs.join("ca.pem"), lab.path().join("ca.pem")).unwrap();
    let mut cmd = corridor(lab.path(), &mesh.gateway_url());
    cmd.args(["nodes", "--identity", "org-acme"]);
    let (ok, _, err) = run(cmd).await;
    assert!(ok, "{err}");

    // A request renamed to pass for another identity is not signed.
    std::fs::copy(lab.path().join("org-acme.csr"), at_ca.path().join("admin-hefei.csr")).unwrap();
    let mut cmd = corridor(&mesh.certs, &mesh.gateway_url());
    cmd.args(["certs", "sign", at_ca.path().join("admin-hefei.csr").to_str().unwrap(), "--dir"]).arg(&mesh.certs);
    let (ok, _, err) = run(cmd).await;
    assert!(!ok);
    assert!(err.contains("asks for org-acme; nothing written"), "{err}");
}
