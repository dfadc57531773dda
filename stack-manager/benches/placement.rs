//! Scale benchmark: 20,000 simulated hosts enrolled through the real
//! internal API, then 10,000 instances created through the public HTTP API.
//! Reports placement latency (the scheduler's own histogram: filter, weigh
//! and claim) and end-to-end create latency and throughput, on SQLite and
//! on PostgreSQL.
//!
//! `cargo bench -p stack-manager --bench placement` — environment:
//! `BENCH_HOSTS` (20000), `BENCH_INSTANCES` (10000), `BENCH_CONCURRENCY` (32),
//! `BENCH_BACKENDS` (`sqlite,postgres`; PostgreSQL needs
//! `STRATO_TEST_POSTGRES_URL`, which `scripts/test.sh` sets up),
//! `BENCH_PROJECTS` (50; each gets one network with a subnet just big
//! enough for its share, so `BENCH_PROJECTS=1` puts every instance on one
//! /18), `BENCH_REPLICAS` (`1`; `1,2` also runs PostgreSQL with a second
//! stack-manager replica on the same database, the creates alternating
//! between the two, to compare creates/s and placement p99 with one).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use api::resources::*;
use futures::stream::{self, StreamExt};
use support::{env_num, percentile, Backend, TestCloud};

/// `histogram_quantile` over the scheduler's placement histogram, as
/// Prometheus would compute it from `/metrics` (of every replica: the
/// buckets of the same bound add up).
fn placement_quantile(metrics: &str, q: f64) -> f64 {
    let mut summed: Vec<(f64, f64)> = Vec::new();
    for (le, count) in metrics
        .lines()
        .filter(|l| {
            l.starts_with("strato_scheduler_placement_duration_seconds_bucket")
                && l.contains("kind=\"instance\"")
                && l.contains("result=\"ok\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
    {
        match summed.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => summed.push((le, count)),
        }
    }
    let mut buckets = summed;
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return prev.0;
            }
            let frac = if count > prev.1 {
                (target - prev.1) / (count - prev.1)
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    f64::NAN
}

async fn run(
    backend: Backend,
    replicas: usize,
    hosts: usize,
    instances: usize,
    concurrency: usize,
    projects: usize,
) {
    let projects = projects.clamp(1, instances.max(1));
    let per_project = instances.div_ceil(projects) as u64;
    // The smallest subnet that holds the share: room for the network,
    // gateway and broadcast addresses.
    let host_bits = (per_project + 3)
        .next_power_of_two()
        .trailing_zeros()
        .max(2);
    let prefix = 32 - host_bits;
    println!(
        "\n== {backend:?}, {replicas} replica(s): {hosts} hosts, {instances} instances, \
         concurrency {concurrency}, {projects} projects on a /{prefix} each"
    );
    let cloud = TestCloud::start_with(backend, |c| {
        // Simulated hosts heartbeat once, at enrollment.
        c.hosts.down_after_secs = 86_400;
        c.hosts.resync_interval_secs = 3600;
        if let Some(n) = std::env::var("BENCH_DB_CONNECTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            c.database_max_connections = n;
        }
    })
    .await;

    let t = Instant::now();
    let enrolled = stream::iter(0..hosts)
        .map(|i| {
            let cloud = &cloud;
            async move {
                cloud
                    .hypervisor(&format!("sim-{i:05}"), 64, 262_144, None)
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    let enroll_secs = t.elapsed().as_secs_f64();
    println!(
        "enrolled {enrolled} hosts in {enroll_secs:.1} s ({:.0}/s)",
        enrolled as f64 / enroll_secs
    );

    // Tenants, each with quota and a network for their share.
    let mut clients = Vec::new();
    for p in 0..projects {
        let name = format!("tenant-{p}");
        cloud.project(&name).await;
        cloud.quota_for(&name, per_project).await;
        let client = cloud
            .user(&format!("user-{p}"), &name, ProjectRole::Member)
            .await;
        cloud.basics(&client).await;
        TestCloud::network(&client, "share", &format!("10.64.0.0/{prefix}")).await;
        clients.push(client);
    }
    // A second replica on the same database, started once the hosts are
    // in (it loads them at start); every other create goes through it.
    let second = if replicas > 1 {
        Some(cloud.second_replica().await)
    } else {
        None
    };
    let clients: Vec<[api::Client; 2]> = clients
        .into_iter()
        .map(|c| {
            let token = c.transport.token().unwrap_or_default().to_string();
            let other = match &second {
                Some((url, _, _)) => api::Client::new(url, &token).with_project(c.project.clone()),
                None => c.clone(),
            };
            [c, other]
        })
        .collect();

    let t = Instant::now();
    let mut latencies: Vec<f64> = stream::iter(0..instances)
        .map(|i| {
            let client = &clients[i % projects][(i / projects) % 2];
            async move {
                let started = Instant::now();
                let mut vm = TestCloud::vm(&format!("vm-{i}"));
                vm.networks = vec!["share".into()];
                client.instance_create(&vm).await.expect("create instance");
                started.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = t.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let mut metrics = reqwest::get(format!("{}/metrics", cloud.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    if let Some((_, state, _)) = &second {
        metrics.push_str(&state.metrics.render());
    }
    println!(
        "created {instances} instances in {secs:.1} s: {:.0} creates/s sustained",
        instances as f64 / secs
    );
    println!(
        "placement latency (scheduler histogram): p50 {:.3} ms, p99 {:.3} ms",
        placement_quantile(&metrics, 0.50) * 1000.0,
        placement_quantile(&metrics, 0.99) * 1000.0
    );
    println!(
        "create request latency (client): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    // Every instance reached its simulated host through the reconcilers.
    let deadline = Instant::now() + Duration::from_secs(120);
    while cloud.fleet.instance_count() < instances && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "instances realized on simulated hosts: {}",
        cloud.fleet.instance_count()
    );
}

fn main() {
    let hosts = env_num("BENCH_HOSTS", 20_000);
    let instances = env_num("BENCH_INSTANCES", 10_000);
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let projects = env_num("BENCH_PROJECTS", 50);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let replicas: Vec<usize> = std::env::var("BENCH_REPLICAS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|r| r.trim().parse().expect("BENCH_REPLICAS: numbers, e.g. 1,2"))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for b in backends.split(',') {
        let backend = match b.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            other => panic!("unknown backend `{other}` in BENCH_BACKENDS"),
        };
        for &r in &replicas {
            // SQLite serves one replica.
            if r > 1 && backend == Backend::Sqlite {
                continue;
            }
            rt.block_on(run(backend, r, hosts, instances, concurrency, projects));
        }
    }
}
