//! Lease handover: from `kill -9` of the replica holding the cloud-wide
//! tasks' leases to each lease held (its task running) on the other
//! replica, with default settings (`replicas.lease_ttl_ms` 3000, renewals
//! every second), on PostgreSQL; and to the other replica counting itself
//! alone among the members, so that it reconciles every host (the dead
//! one's share of the host reconcilers moved).
//!
//! `cargo bench -p stack-manager --bench handover` — needs
//! `STRATO_TEST_POSTGRES_URL` (`scripts/test.sh` sets one up).
//! `BENCH_KILLS` (10) kills, each of the replica holding every lease; a
//! new standby is started before each kill.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use api::Client;

const LEASES: [&str; 3] = ["health-monitor", "mover", "planner-statistics"];
/// What the last column times: the dead replica's hosts reconciled here.
const HOSTS: &str = "host reconcilers";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stack-manager"))
}

struct Replica {
    name: String,
    child: Child,
    client: Client,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, name: &str, url: &str) -> (PathBuf, String) {
    let port = free_port();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ninternal_listen = \"127.0.0.1:{}\"\n\
             state_dir = \"{}\"\ndatabase_url = \"{url}\"\nlog = \"warn\"\n\
             [replicas]\nname = \"{name}\"\n",
            free_port(),
            dir.join(name).display()
        ),
    )
    .expect("config");
    (path, format!("http://127.0.0.1:{port}"))
}

async fn start(dir: &Path, name: &str, url: &str, token: &str) -> Replica {
    let (cfg, public) = config(dir, name, url);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start stack-manager");
    let client = Client::new(&public, token).with_project(Some("admin".into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.whoami().await.is_err() {
        assert!(Instant::now() < deadline, "{name} does not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Replica {
        name: name.into(),
        child,
        client,
    }
}

/// Lease → holder name, as `r` reports.
async fn holders(r: &Replica) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for x in r.client.system_replicas().await.unwrap_or_default() {
        for l in &x.leases {
            out.push((l.name.clone(), x.name.clone()));
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(kills: usize) {
    let url = support::fresh_postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (cfg, _) = config(dir.path(), "init", &url);
    let init = Command::new(binary())
        .args(["init", "--json", "--config"])
        .arg(&cfg)
        .output()
        .expect("stack-manager init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let token = serde_json::from_slice::<serde_json::Value>(&init.stdout).expect("init --json")
        ["token"]
        .as_str()
        .expect("token")
        .to_string();

    let mut n = 0;
    let mut holder = start(dir.path(), &format!("sm-{n}"), &url, &token).await;
    n += 1;
    let mut per_lease: Vec<Vec<f64>> = vec![Vec::new(); LEASES.len() + 1];
    for _ in 0..kills {
        let standby = start(dir.path(), &format!("sm-{n}"), &url, &token).await;
        n += 1;
        // Every lease on the one about to be killed.
        loop {
            let h = holders(&standby).await;
            if h.len() == LEASES.len() && h.iter().all(|(_, who)| *who == holder.name) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Somewhere in its renewal cycle, as a real crash would be.
        tokio::time::sleep(Duration::from_millis(137 * (n as u64 % 7))).await;
        let killed = Instant::now();
        drop(holder);
        let mut done = [None; LEASES.len() + 1];
        while done.iter().any(Option::is_none) {
            let tasks = standby.client.system_tasks().await.unwrap_or_default();
            let alone = tasks
                .iter()
                .any(|t| t.name == "leases" && t.details["members"] == 1);
            if alone {
                done[LEASES.len()].get_or_insert(killed.elapsed().as_secs_f64());
            }
            for (lease, who) in holders(&standby).await {
                if who == standby.name {
                    if let Some(i) = LEASES.iter().position(|l| *l == lease) {
                        done[i].get_or_insert(killed.elapsed().as_secs_f64());
                    }
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no handover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (i, d) in done.iter().enumerate() {
            per_lease[i].push(d.unwrap_or(f64::NAN));
        }
        holder = standby;
    }
    println!("lease handover after kill -9 of the holder, {kills} kills, default settings:");
    for (lease, mut t) in LEASES.iter().chain([&HOSTS]).zip(per_lease) {
        t.sort_by(f64::total_cmp);
        println!(
            "  {lease:<20} p50 {:.2} s, p90 {:.2} s, max {:.2} s",
            percentile(&t, 50.0),
            percentile(&t, 90.0),
            t.last().copied().unwrap_or(f64::NAN)
        );
    }
}

fn main() {
    let kills = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(kills));
}
