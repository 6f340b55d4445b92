//! Shared by the tests that run `corridor up` as real processes.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

/// Twenty consecutive free ports (gRPC and metrics), checked by binding them all.
pub fn free_port_base() -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base > u16::MAX - 20 {
            continue;
        }
        if (1..20).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no twenty consecutive free ports");
}

/// A running `corridor up`; dropping it stops the whole mesh with SIGTERM.
pub struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM lets `up` stop its children; they also die with it.
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Starts `corridor up` with `env`, and returns once it prints its one
/// ready line (or exits), with that line.
pub async fn start_up(data: &Path, base: u16, env: &[(&str, &str)]) -> (Up, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corridor"));
    cmd.args(["up", "--data", data.to_str().unwrap(), "--port-base", &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    (Up(child), line)
}
