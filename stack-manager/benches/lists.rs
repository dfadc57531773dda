//! What a list page and a reconciler pass cost: SQL statements (counted as
//! sqlx executes them, see `store::statements`) and time, on SQLite and on
//! PostgreSQL.
//!
//! 1. A project holding `BENCH_LIST_INSTANCES` (10,000) instances with one
//!    NIC each, made through the public API; then every page of
//!    `GET /v1/instances?<BENCH_LIST_QUERY>` (`limit=1000`), walked
//!    `BENCH_LIST_ROUNDS` (5) times: latency p50/p99 and statements per
//!    request.
//! 2. One hypervisor holding `BENCH_PASS_INSTANCES` (500) instances: one
//!    reconciler pass when it is converged, and one after every spec
//!    changed (each instance pushed again to its simulated agent).
//!
//! `cargo bench -p stack-manager --bench lists`; `BENCH_BACKENDS`
//! (`sqlite,postgres`; PostgreSQL needs `STRATO_TEST_POSTGRES_URL`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use api::resources::*;
use futures::stream::{self, StreamExt};
use stack_manager::store::statements::StatementCounter;
use support::{env_num, percentile, Backend, TestCloud};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// Creates `n` instances named `<prefix>-<i>` through `client`.
async fn create_many(client: &api::Client, prefix: &str, n: usize, network: &str) {
    stream::iter(0..n)
        .map(|i| async move {
            let mut vm = TestCloud::vm(&format!("{prefix}-{i}"));
            vm.networks = vec![network.into()];
            client.instance_create(&vm).await.expect("create instance");
        })
        .buffer_unordered(32)
        .count()
        .await;
}

async fn wait_realized(cloud: &TestCloud, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while cloud.fleet.instance_count() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} instances reached their hosts",
            cloud.fleet.instance_count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn list_pages(backend: Backend, counter: &StatementCounter) {
    let instances = env_num("BENCH_LIST_INSTANCES", 10_000);
    let rounds = env_num("BENCH_LIST_ROUNDS", 5);
    let query = std::env::var("BENCH_LIST_QUERY").unwrap_or_else(|_| "limit=1000".into());
    let cloud = TestCloud::start_quiet(backend).await;
    let hosts = instances.div_ceil(150);
    for h in 0..hosts {
        cloud
            .hypervisor(&format!("sim-{h:03}"), 1024, 1 << 22, None)
            .await;
    }
    cloud.project("big").await;
    cloud.quota_for("big", instances as u64).await;
    let client = cloud.user("owner", "big", ProjectRole::Member).await;
    cloud.basics(&client).await;
    TestCloud::network(&client, "wide", "10.64.0.0/16").await;
    let t = Instant::now();
    create_many(&client, "vm", instances, "wide").await;
    println!(
        "made {instances} instances in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    wait_realized(&cloud, instances).await;

    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut statements = Vec::new();
    let mut seen = 0usize;
    for _ in 0..rounds {
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/instances?project=big", cloud.url);
            if !query.is_empty() {
                url.push('&');
                url.push_str(&query);
            }
            if let Some(t) = &token {
                url.push_str(&format!("&page_token={t}"));
            }
            let before = counter.get();
            let started = Instant::now();
            let resp = http
                .get(&url)
                .bearer_auth(&cloud.admin_token)
                .send()
                .await
                .expect("list");
            assert!(resp.status().is_success(), "{}", resp.status());
            // Read as JSON: the benchmark also measures the API before pages.
            let page: serde_json::Value = resp.json().await.expect("page");
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            statements.push(counter.get() - before);
            seen += page["items"].as_array().map_or(0, Vec::len);
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
    }
    assert_eq!(
        seen,
        rounds * instances,
        "every instance listed once per round"
    );
    latencies.sort_by(f64::total_cmp);
    statements.sort();
    println!(
        "GET /v1/instances?{query}: {} requests, latency p50 {:.1} ms, p99 {:.1} ms; \
         SQL statements per request: min {}, max {}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        statements.first().copied().unwrap_or(0),
        statements.last().copied().unwrap_or(0),
    );
}

async fn reconciler_pass(backend: Backend, counter: &StatementCounter) {
    let instances = env_num("BENCH_PASS_INSTANCES", 500);
    let cloud = TestCloud::start_quiet(backend).await;
    let host = cloud
        .enroll(
            "one-big-host",
            HostKind::Hypervisor,
            Capacity {
                vcpus: 4096,
                ram_mib: 1 << 24,
                disk_gib: 100_000,
                ..Default::default()
            },
            None,
        )
        .await;
    cloud.project("dense").await;
    cloud.quota_for("dense", instances as u64).await;
    let client = cloud.user("owner", "dense", ProjectRole::Member).await;
    cloud.basics(&client).await;
    TestCloud::network(&client, "wide", "10.64.0.0/20").await;
    create_many(&client, "vm", instances, "wide").await;
    wait_realized(&cloud, instances).await;

    let measure = |label: &'static str| {
        let cloud = &cloud;
        async move {
            let before = counter.get();
            let started = Instant::now();
            let converged = stack_manager::reconciler::run_pass(&cloud.state, host)
                .await
                .expect("pass");
            println!(
                "reconciler pass over {instances} instances, {label}: {:.1} ms, {} SQL statements, converged {converged}",
                started.elapsed().as_secs_f64() * 1000.0,
                counter.get() - before,
            );
        }
    };
    // Twice: the first may still find a report to fold in.
    measure("converged").await;
    measure("converged").await;
    // Every spec changes (as an MTU change of their network would do).
    sqlx::query("UPDATE instances SET generation = generation + 1 WHERE host_id = $1")
        .bind(host.to_string())
        .execute(&cloud.state.db.pool)
        .await
        .expect("bump generations");
    measure("every instance pushed").await;
    measure("converged again").await;
}

fn main() {
    let counter = StatementCounter::new();
    let subscriber = tracing_subscriber::registry().with(counter.layer()).with(
        tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )),
    );
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for b in backends.split(',') {
        let backend = match b.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            other => panic!("unknown backend {other}"),
        };
        println!("\n== {backend:?}");
        rt.block_on(list_pages(backend, &counter));
        rt.block_on(reconciler_pass(backend, &counter));
    }
}
