//! The `seed_http` binary as a child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::poll_until;

/// A running `seed_http`; killed if a test fails before it exits.
pub struct Seed {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Seed {
    pub fn spawn(args: &[&str]) -> Seed {
        Self::spawn_env(args, &[])
    }

    /// [`Seed::spawn`] with environment variables set (`Some`) or removed
    /// (`None`).
    pub fn spawn_env(args: &[&str], envs: &[(&str, Option<&str>)]) -> Seed {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seed_http"));
        for (k, v) in envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start seed_http");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("no address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Seed {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    /// `POST path` with a raw body (panics if the request fails).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The server process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn wait_ready(&self) {
        let ok = poll_until(Duration::from_secs(30), || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "seed_http did not become ready");
    }

    pub async fn backlog(&self) -> u64 {
        match self.client.get(self.url("/debug")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["backlog"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "seed_http did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
