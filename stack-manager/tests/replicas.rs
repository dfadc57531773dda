//! Several stack-manager replicas on one database (`crate::lease`).
//!
//! - On PostgreSQL, real `stack-manager` processes: both serve the API;
//!   each lease (health monitor, mover, planner statistics) is held by one
//!   of them at a time; `kill -9` of the holder hands every lease to the
//!   survivor within a TTL and an activation; a holder stopped with SIGSTOP
//!   past its TTL loses its leases and, woken, says so and takes none back
//!   while the other renews; a storage agent given both replicas' URLs
//!   keeps heartbeating through the one left; killing every replica and
//!   starting one again converges.
//! - Host reconcilers are shared: with two replicas each host's pushes
//!   come from one of them, a create through one replica on a host the
//!   other owns is woken there at once (PostgreSQL NOTIFY; no resync), and
//!   `kill -9` of one moves its hosts to the other within a TTL and a
//!   renewal. That replica runs with its clock 30 s behind (libfaketime):
//!   it keeps the database's time, so the heartbeats it stamps do not make
//!   the other replica's health monitor fence every host.
//! - The fencing token itself, in process: a run that was paused while its
//!   lease changed hands has its write refused, and nothing of it lands.
//! - On SQLite, a second replica is refused with a clear message, and a
//!   replica killed with `kill -9` starts again at once (the kernel drops
//!   the lock of a dead process).

#[macro_use]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::resources::{
    EnrollmentTokenCreate, GroupCreate, HostHealth, HostKind, Instance, InstanceStatus,
    ProjectCreate, ProjectRole, Replica, VolumeStatus,
};
use api::Client;
use api::ErrorCode;
use stack_manager::config::ReplicasConfig;
use stack_manager::db::Db;
use stack_manager::lease::{Leased, Leases, HEALTH_MONITOR, MOVER, PLANNER_STATISTICS};
use stack_manager::tasks::{BackgroundTask, Outcome, TaskError};
use support::sim_agent::Beats;
use support::{Backend, TestCloud};
use testkit::{free_port, wait_async, workspace_bin, StorageAgent};

const LEASES: [&str; 3] = [HEALTH_MONITOR, MOVER, PLANNER_STATISTICS];
/// SQLite has no planner statistics to gather: that task never runs there.
const SQLITE_LEASES: [&str; 2] = [HEALTH_MONITOR, MOVER];

/// One `stack-manager serve` process, killed on drop.
struct Process {
    name: String,
    child: Option<Child>,
    client: Client,
    log: PathBuf,
}

impl Process {
    fn pid(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} {}", self.name);
    }

    /// `kill -9`, and reaps it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A test that failed between SIGSTOP and SIGCONT leaves it
            // stopped; continued, it dies at once.
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        self.kill();
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stack-manager"))
}

/// Writes `dir/<name>.toml` for a replica on `database_url`.
fn config(dir: &Path, name: &str, database_url: &str) -> PathBuf {
    config_with(dir, name, database_url, "")
}

/// [`config`] with `extra` TOML tables after its own.
fn config_with(dir: &Path, name: &str, database_url: &str, extra: &str) -> PathBuf {
    let state = dir.join(name);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{}\"\ninternal_listen = \"127.0.0.1:{}\"\n\
             state_dir = \"{}\"\ndatabase_url = \"{database_url}\"\nlog = \"info\"\n\
             [replicas]\nname = \"{name}\"\n{extra}",
            free_port(),
            free_port(),
            state.display()
        ),
    )
    .expect("write config");
    path
}

/// The `http://` URL of `key` (`listen`, `internal_listen`) in `config`.
fn url_of(config: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(config).expect("config");
    let prefix = format!("{key} = \"");
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line");
    format!("http://{listen}")
}

fn listen_url(config: &Path) -> String {
    url_of(config, "listen")
}

/// `stack-manager init` against `config`: the admin token.
fn init(config: &Path) -> String {
    let out = Command::new(bin())
        .args(["init", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run stack-manager init");
    assert!(
        out.status.success(),
        "stack-manager init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init --json");
    v["token"].as_str().expect("token").to_string()
}

async fn serve(dir: &Path, name: &str, config: &Path, token: &str) -> Process {
    serve_under(dir, name, config, token, Command::new(bin())).await
}

/// [`serve`], started by `command` (the binary, or a wrapper such as
/// `faketime` with the binary as its argument).
async fn serve_under(
    dir: &Path,
    name: &str,
    config: &Path,
    token: &str,
    mut command: Command,
) -> Process {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let child = command
        .args(["serve", "--config"])
        .arg(config)
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("start stack-manager");
    let client = Client::new(&listen_url(config), token).with_project(Some("admin".into()));
    let probe = client.clone();
    wait_async(
        &format!("replica {name} to answer"),
        Duration::from_secs(30),
        || {
            let probe = probe.clone();
            async move { probe.whoami().await.ok() }
        },
    )
    .await;
    Process {
        name: name.into(),
        child: Some(child),
        client,
        log,
    }
}

/// Who holds each lease, as `r` reports it: (lease, replica name, token).
async fn holders(r: &Process) -> Vec<(String, String, i64)> {
    let replicas: Vec<Replica> = r.client.system_replicas().await.unwrap_or_default();
    let mut out: Vec<(String, String, i64)> = replicas
        .iter()
        .flat_map(|x| {
            x.leases
                .iter()
                .map(|l| (l.name.clone(), x.name.clone(), l.token))
        })
        .collect();
    out.sort();
    out
}

/// Waits until `who` holds every lease (as `asked` reports), returning the
/// time it took and the tokens.
async fn all_held_by(asked: &Process, who: &str, timeout: Duration) -> (Duration, Vec<i64>) {
    held_by(asked, who, &LEASES, timeout).await
}

async fn held_by(
    asked: &Process,
    who: &str,
    leases: &[&str],
    timeout: Duration,
) -> (Duration, Vec<i64>) {
    let started = Instant::now();
    loop {
        let h = holders(asked).await;
        if h.len() == leases.len()
            && h.iter()
                .all(|(l, n, _)| n == who && leases.contains(&l.as_str()))
        {
            return (started.elapsed(), h.iter().map(|x| x.2).collect());
        }
        assert!(
            started.elapsed() < timeout,
            "{who} does not hold every lease after {timeout:?}: {h:?}\n--- {} log:\n{}",
            asked.name,
            asked.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_share_the_api_and_hand_leases_over() {
    let url = support::fresh_postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cb) = (
        config(dir.path(), "sm-a", &url),
        config(dir.path(), "sm-b", &url),
    );
    let token = init(&ca);
    let a = serve(dir.path(), "sm-a", &ca, &token).await;
    let b = serve(dir.path(), "sm-b", &cb, &token).await;

    // Each lease has exactly one holder, and both list the same.
    let h = wait_async("every lease held", Duration::from_secs(15), || async {
        let h = holders(&a).await;
        (h.len() == LEASES.len()).then_some(h)
    })
    .await;
    for lease in LEASES {
        assert_eq!(
            h.iter().filter(|x| x.0 == lease).count(),
            1,
            "{lease}: {h:?}"
        );
    }
    assert_eq!(holders(&b).await, h, "both replicas see the same holders");
    let replicas = a.client.system_replicas().await.expect("replicas");
    assert_eq!(
        replicas.iter().filter(|r| r.alive).count(),
        2,
        "{replicas:?}"
    );
    assert_eq!(replicas.iter().filter(|r| r.this).count(), 1);

    // No request depends on which replica answers.
    a.client
        .project_create(&ProjectCreate {
            name: "acme".into(),
            description: "made on sm-a".into(),
        })
        .await
        .expect("create on sm-a");
    let seen = b.client.project_get("acme").await.expect("read on sm-b");
    assert_eq!(seen.description, "made on sm-a");

    // An agent that knows both replicas' internal APIs.
    let enroll = a
        .client
        .enrollment_token_create(&EnrollmentTokenCreate {
            kind: HostKind::Storage,
            rack: None,
            expires_in_secs: 600,
        })
        .await
        .expect("enrollment token")
        .secret;
    let agent = StorageAgent::start(
        &workspace_bin(env!("CARGO_BIN_EXE_stack-manager"), "storage-agent"),
        &dir.path().join("storage"),
        &format!(
            "{},{}",
            url_of(&ca, "internal_listen"),
            url_of(&cb, "internal_listen")
        ),
        &enroll,
    );
    let storage = agent.enrolled(&a.client).await;

    // The health monitor's holder is paused past its TTL: the other takes
    // every lease.
    let (paused, other) = if h.iter().any(|x| x.0 == HEALTH_MONITOR && x.1 == "sm-a") {
        (a, b)
    } else {
        (b, a)
    };
    paused.signal("-STOP");
    all_held_by(&other, &other.name, Duration::from_secs(20)).await;
    // Woken, it finds its leases gone, says so, and takes none back while
    // the other renews them (checked over several renewals).
    paused.signal("-CONT");
    wait_async(
        "the woken replica to log its lost lease",
        Duration::from_secs(10),
        || async {
            paused
                .log()
                .contains("lost the lease to another replica")
                .then_some(())
        },
    )
    .await;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let h = holders(&paused).await;
        assert!(
            h.len() == LEASES.len() && h.iter().all(|x| x.1 == other.name),
            "a woken replica took a lease back: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kill -9 of the holder of everything: the woken one takes over.
    let mut other = other;
    let killed_at = Instant::now();
    other.kill();
    let (_, tokens) = all_held_by(&paused, &paused.name, Duration::from_secs(20)).await;
    let took = killed_at.elapsed();
    println!(
        "lease handover after kill -9 of the holder: {:.2} s for all of {LEASES:?} \
         (lease_ttl_ms 3000; tokens now {tokens:?})",
        took.as_secs_f64()
    );
    assert!(
        tokens.iter().all(|&t| t >= 2),
        "every lease changed hands: {tokens:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "handover took {took:?} with a 3 s TTL"
    );
    // The agent heartbeats through the replica that is left, whichever it
    // used before.
    let since = chrono::Utc::now();
    wait_async(
        "the storage agent's heartbeats to reach the replica left",
        Duration::from_secs(20),
        || async {
            let h = paused.client.host_get(storage).await.ok()?;
            (h.last_heartbeat_at? > since + chrono::Duration::seconds(2)).then_some(())
        },
    )
    .await;
    drop(agent);

    // The only replica killed and started again: once the dead one's
    // leases expire it holds them all, and serves what was made before.
    let mut paused = paused;
    paused.kill();
    let cc = config(dir.path(), "sm-c", &url);
    let again = serve(dir.path(), "sm-c", &cc, &token).await;
    all_held_by(&again, "sm-c", Duration::from_secs(20)).await;
    again
        .client
        .project_get("acme")
        .await
        .expect("read after the restart");
    let report = again.client.system_check().await.expect("check");
    assert!(report.consistent, "drift after the kills: {report:#?}");
}

/// A leased run that waits for a signal before it writes: a replica
/// paused in the middle of its run.
struct PausedWriter {
    db: Db,
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    go: Option<tokio::sync::oneshot::Receiver<()>>,
    name: &'static str,
}

impl BackgroundTask for PausedWriter {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        if let Some(e) = self.entered.take() {
            let _ = e.send(());
        }
        if let Some(go) = self.go.take() {
            let _ = go.await;
        }
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO replicas (id, name, public_url, internal_url, started_at, heartbeat_at) \
             VALUES ($1, $1, '', '', 0, 0)",
        )
        .bind(self.name)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::ran(serde_json::json!({})))
    }
}

async fn rows_named(db: &Db, name: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM replicas WHERE id = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_lease_lost_while_paused_is_refused() {
    let url = support::fresh_postgres().await;
    let db = Db::connect(&url, 4).await.expect("database");
    let cfg = ReplicasConfig {
        lease_ttl_ms: 500,
        renew_interval_ms: 100,
        name: None,
    };
    let metrics = stack_manager::metrics::Metrics::new();
    let a = Leases::new(db.clone(), &cfg, metrics.leases.clone());
    let b = Leases::new(
        db.clone(),
        &cfg,
        stack_manager::metrics::Metrics::new().leases,
    );

    // Positive control: a run on a lease it holds writes.
    let mut direct = Leased::new(
        a.clone(),
        HEALTH_MONITOR,
        PausedWriter {
            db: db.clone(),
            entered: None,
            go: None,
            name: "control",
        },
    );
    direct
        .activate()
        .await
        .expect("a run on a held lease writes");
    assert_eq!(rows_named(&db, "control").await, 1);
    assert!(
        b.hold(HEALTH_MONITOR).await.expect("hold").is_none(),
        "a lease another replica holds is not taken"
    );

    // A run that pauses mid-way while its lease expires and changes hands.
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    let mut paused = Leased::new(
        a.clone(),
        HEALTH_MONITOR,
        PausedWriter {
            db: db.clone(),
            entered: Some(entered_tx),
            go: Some(go_rx),
            name: "stale",
        },
    );
    let run = tokio::spawn(async move { paused.activate().await.map_err(|e| e.to_string()) });
    entered.await.expect("the run started");
    let fence = wait_async(
        "b to take the expired lease",
        Duration::from_secs(10),
        || {
            let b = b.clone();
            async move { b.hold(HEALTH_MONITOR).await.ok().flatten() }
        },
    )
    .await;
    assert_eq!(fence.token, 2, "a new holder increments the token");
    let _ = go.send(());
    let result = run.await.expect("run joined");
    let err = result.expect_err("the stale write is refused");
    assert!(err.contains("stale lease `health-monitor`"), "{err}");
    assert!(err.contains("token 1"), "{err}");
    assert_eq!(rows_named(&db, "stale").await, 0, "nothing of it landed");
    let text = metrics.render();
    assert!(
        text.contains("strato_lease_refused_writes_total{lease=\"health-monitor\"} 1"),
        "{text}"
    );
    // The old holder does not get it back while b holds it.
    assert!(a.hold(HEALTH_MONITOR).await.expect("hold").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serves_one_replica_and_a_killed_one_starts_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("sm");
    let db = format!("sqlite://{}", state.join("strato.db").display());
    let cfg = config(dir.path(), "sm", &db);
    let token = init(&cfg);
    let mut first = serve(dir.path(), "sm", &cfg, &token).await;
    held_by(&first, "sm", &SQLITE_LEASES, Duration::from_secs(15)).await;

    // A second one on the same file, on other ports, is refused.
    let second_cfg = config(dir.path(), "sm-2", &db);
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&second_cfg)
        .stdin(Stdio::null())
        .output()
        .expect("run a second stack-manager");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second replica on SQLite started");
    assert!(
        stderr.contains("SQLite serves one replica") && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    first.client.whoami().await.expect("the first still serves");

    // kill -9, then at once again on the same file.
    first.kill();
    let again = serve(dir.path(), "sm", &cfg, &token).await;
    held_by(&again, "sm", &SQLITE_LEASES, Duration::from_secs(15)).await;
}

/// What one storm of creates ended with.
struct Storm {
    created: Vec<Instance>,
    /// Refused with an API error (code), never a 5xx.
    refused: Vec<ErrorCode>,
    /// Cut off by the kill: the instance may or may not exist.
    lost: usize,
}

/// `n` creates at once, alternately through "A,B" and "B,A"; every tenth
/// one in the anti-affinity group. After the `kill_after`-th answer,
/// `kill` runs (a kill -9 in the middle of the storm).
async fn storm(
    clients: &[Client; 2],
    prefix: &str,
    n: usize,
    kill_after: Option<(usize, &mut Process)>,
) -> Storm {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = clients[i % 2].clone();
        let mut vm = TestCloud::vm(&format!("{prefix}-{i}"));
        if i % 10 == 0 {
            vm.anti_affinity_group = Some("spread".into());
        }
        set.spawn(async move { c.instance_create(&vm).await });
    }
    let (mut created, mut refused, mut lost) = (Vec::new(), Vec::new(), 0);
    let mut kill_after = kill_after;
    let mut answers = 0;
    while let Some(r) = set.join_next().await {
        answers += 1;
        match r.expect("create task") {
            Ok(i) => created.push(i),
            Err(e) => match (e.status(), e.code()) {
                (Some(s), Some(code)) if s < 500 => refused.push(code),
                (Some(s), _) => panic!("a create got {s}: {e}"),
                (None, _) => lost += 1,
            },
        }
        if let Some((k, p)) = kill_after.as_mut() {
            if answers == *k {
                p.kill();
                kill_after = None;
            }
        }
    }
    Storm {
        created,
        refused,
        lost,
    }
}

/// Waits until no instance is pending or building, and returns them all.
async fn settled(c: &Client) -> Vec<Instance> {
    wait_async(
        "every instance running or in error",
        Duration::from_secs(90),
        || async {
            let all = c.instance_list().await.ok()?;
            all.iter()
                .all(|i| matches!(i.status, InstanceStatus::Running | InstanceStatus::Error))
                .then_some(all)
        },
    )
    .await
}

/// No host over its capacity, no address given twice, no two members of
/// the group on one host, and the checker finds no drift.
async fn invariants(admin: &Client, all: &[Instance], slots: usize) {
    let running: Vec<&Instance> = all
        .iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .collect();
    assert!(
        running.len() <= slots,
        "{} running on {slots} slots",
        running.len()
    );
    for h in admin.host_list().await.expect("hosts") {
        assert!(
            h.allocated.ram_mib <= h.capacity.ram_mib && h.allocated.instances <= 8,
            "overcommitted: {h:#?}"
        );
    }
    let mut addresses = std::collections::HashSet::new();
    for i in all {
        for nic in &i.nics {
            assert!(addresses.insert(nic.address), "{} given twice", nic.address);
        }
    }
    let mut group_hosts = std::collections::HashSet::new();
    for i in all.iter().filter(|i| i.anti_affinity_group_id.is_some()) {
        if let Some(h) = i.host_id {
            assert!(group_hosts.insert(h), "two members of the group on {h}");
        }
    }
    for i in all.iter().filter(|i| i.status == InstanceStatus::Error) {
        assert!(
            i.status_reason.is_some(),
            "an error without a reason: {i:#?}"
        );
    }
    let report = admin.system_check().await.expect("check");
    assert!(report.consistent, "drift: {report:#?}");
}

async fn delete_all(c: &Client) {
    for i in c.instance_list().await.expect("list") {
        c.instance_delete(i.id).await.expect("delete");
    }
    wait_async("every instance gone", Duration::from_secs(60), || async {
        c.instance_list().await.ok()?.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_through_two_replicas_never_overcommit_and_a_kill_mid_storm_leaves_nothing_half_made(
) {
    // Replica A in process, with the simulated hosts; B a real process on
    // the same PostgreSQL. Self-healing is off on both (the simulated
    // hosts do not heartbeat, so they never count as down either); resyncs
    // every 2 s, so that what one replica wrote before dying is pushed by
    // the other.
    let cloud = TestCloud::start_with(Backend::Postgres, |c| {
        c.hosts.resync_interval_secs = 2;
        c.hosts.down_after_secs = 86_400;
    })
    .await;
    cloud.project("acme").await;
    cloud.quota_for("acme", 1000).await;
    let alice = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&alice).await;
    alice
        .group_create(&GroupCreate {
            name: "spread".into(),
        })
        .await
        .expect("group");
    // Six hosts of eight `small` VMs each (RAM bound).
    const HOSTS: usize = 6;
    const SLOTS: usize = HOSTS * 8;
    for h in 0..HOSTS {
        cloud.hypervisor(&format!("hv-{h}"), 4, 4096, None).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = cloud.state.config.database_url();
    let extra = "[hosts]\nresync_interval_secs = 2\ndown_after_secs = 86400\n\
                 [health]\nmonitor_interval_ms = 0\n";
    let start_b = |name: &'static str| {
        let cfg = config_with(dir.path(), name, &url, extra);
        let token = cloud.admin_token.clone();
        let dir = dir.path().to_path_buf();
        async move {
            let b = serve(&dir, name, &cfg, &token).await;
            (b, listen_url(&cfg))
        }
    };
    let token = alice.transport.token().expect("token").to_string();
    let clients = |b_url: &str| {
        [
            Client::new(&format!("{},{b_url}", cloud.url), &token)
                .with_project(Some("acme".into())),
            Client::new(&format!("{b_url},{}", cloud.url), &token)
                .with_project(Some("acme".into())),
        ]
    };

    // 200 creates at once through both: exactly the slots there are fill,
    // the rest are refused for capacity, nothing is overcommitted.
    let (b, b_url) = start_b("sm-b").await;
    let started = Instant::now();
    let s = storm(&clients(&b_url), "a", 200, None).await;
    println!(
        "200 creates through two replicas: {} placed, {} refused, in {:.2} s",
        s.created.len(),
        s.refused.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(s.lost, 0);
    assert_eq!(s.created.len(), SLOTS, "every slot filled once");
    assert!(
        s.refused.iter().all(|c| *c == ErrorCode::CapacityExhausted),
        "{:?}",
        s.refused
    );
    let all = settled(&alice).await;
    assert_eq!(all.len(), SLOTS);
    invariants(&cloud.admin, &all, SLOTS).await;
    delete_all(&alice).await;
    drop(b);

    // kill -9 of B at points of the storm chosen by seed: whatever B had
    // committed is finished by A, whatever it had not left nothing.
    for (seed, kill_after) in [(1u32, 23usize), (2, 71)] {
        let (mut b, b_url) = start_b(if seed == 1 { "sm-b1" } else { "sm-b2" }).await;
        let s = storm(
            &clients(&b_url),
            &format!("k{seed}"),
            200,
            Some((kill_after, &mut b)),
        )
        .await;
        let all = settled(&alice).await;
        println!(
            "seed {seed}: kill -9 after {kill_after} answers: {} created, {} refused, {} cut off; {} instances after",
            s.created.len(),
            s.refused.len(),
            s.lost,
            all.len()
        );
        for c in &s.created {
            assert!(
                all.iter().any(|i| i.id == c.id),
                "an acknowledged create vanished: {c:#?}"
            );
        }
        assert!(all.len() <= s.created.len() + s.lost);
        invariants(&cloud.admin, &all, SLOTS).await;
        delete_all(&alice).await;
    }
}

/// Who holds `lease`, by replica name, as `asked` reports.
async fn holder_of(asked: &Client, lease: &str) -> Option<String> {
    let rs = asked.system_replicas().await.ok()?;
    rs.into_iter()
        .find(|r| r.alive && r.leases.iter().any(|l| l.name == lease))
        .map(|r| r.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_health_monitor_s_holder_mid_evacuation_re_creates_nothing_twice() {
    // A in process holds the simulated hosts (their heartbeats go to it)
    // and runs no health monitor; B and C are real processes that do, one
    // at a time.
    let cloud = TestCloud::start_with(Backend::Postgres, |c| {
        c.hosts.heartbeat_interval_secs = 1;
        c.hosts.down_after_secs = 2;
        c.hosts.resync_interval_secs = 2;
    })
    .await;
    let beats = Beats::default();
    cloud.project("acme").await;
    let alice = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&alice).await;
    for key in ["hv-1", "hv-2", "hv-3"] {
        cloud.hypervisor(key, 8, 16_384, None).await;
        cloud.beat(&beats, key);
    }
    cloud.storage("st-1", 100).await;
    cloud.beat(&beats, "st-1");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = cloud.state.config.database_url();
    let extra =
        "[hosts]\nheartbeat_interval_secs = 1\ndown_after_secs = 2\nresync_interval_secs = 2\n\
                 [health]\nmonitor_interval_ms = 200\nsuspect_grace_secs = 1\n";
    let mut replicas = Vec::new();
    for name in ["sm-b", "sm-c"] {
        let cfg = config_with(dir.path(), name, &url, extra);
        replicas.push(serve(dir.path(), name, &cfg, &cloud.admin_token).await);
    }
    let holder = wait_async("a health monitor holder", Duration::from_secs(15), || {
        holder_of(&cloud.admin, HEALTH_MONITOR)
    })
    .await;
    assert_ne!(holder, "", "{holder}");

    let mut vms = Vec::new();
    for i in 0..6 {
        vms.push(
            alice
                .instance_create(&TestCloud::vm(&format!("vm-{i}")))
                .await
                .expect("create"),
        );
    }
    let victim = vms[0].host_id.expect("placed");
    let victim_key = cloud
        .fleet
        .hosts
        .lock()
        .unwrap()
        .iter()
        .find(|(_, h)| h.host_id == Some(victim))
        .map(|(k, _)| k.clone())
        .expect("sim host");
    let on_victim: Vec<_> = vms
        .iter()
        .filter(|v| v.host_id == Some(victim))
        .map(|v| v.id)
        .collect();
    wait_async("every VM running", Duration::from_secs(30), || async {
        let all = alice.instance_list().await.ok()?;
        all.iter()
            .all(|i| i.status == InstanceStatus::Running)
            .then_some(())
    })
    .await;

    // A volume on the victim's first VM: fencing must be confirmed by
    // its storage node.
    let volume = TestCloud::available_volume(&alice, "data", 1).await;
    alice
        .attachment_create(vms[0].id, "data")
        .await
        .expect("attach");
    wait_async("the volume in use", Duration::from_secs(15), || async {
        (alice.volume_get(volume.id).await.ok()?.status == VolumeStatus::InUse).then_some(())
    })
    .await;

    // Power loss of the victim while its storage node does not answer:
    // fencing starts and cannot be confirmed, so nothing moves yet. The
    // health monitor's holder is killed in that state.
    cloud.fleet.with_host("st-1", |h| h.failing = true);
    beats.stop(&victim_key);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = cloud.admin.host_get(victim).await.expect("victim");
        if h.health == HostHealth::Fencing {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| format!("--- {} log:\n{}", r.name, r.log()))
                .collect();
            panic!(
                "victim: {:?} {:?}\n{}",
                h.health,
                h.health_reason,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holder = holder_of(&cloud.admin, HEALTH_MONITOR)
        .await
        .expect("a holder while fencing");
    let killed_at = Instant::now();
    for r in replicas.iter_mut().filter(|r| r.name == holder) {
        r.kill();
    }
    for id in &on_victim {
        let i = alice.instance_get(*id).await.expect("vm");
        assert_eq!(
            i.host_id,
            Some(victim),
            "nothing moves before fencing is confirmed"
        );
    }
    let survivor = if holder == "sm-b" { "sm-c" } else { "sm-b" };
    wait_async(
        "the survivor to take the health monitor",
        Duration::from_secs(20),
        || async { (holder_of(&cloud.admin, HEALTH_MONITOR).await? == survivor).then_some(()) },
    )
    .await;
    let took_over = killed_at.elapsed();
    // The storage node answers again: the survivor confirms the fencing
    // its predecessor began and re-creates the VMs.
    cloud.fleet.with_host("st-1", |h| h.failing = false);

    // The survivor finishes the evacuation: each of the victim's VMs runs
    // on one other host, re-created once.
    for id in &on_victim {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let i = alice.instance_get(*id).await.expect("vm");
            if i.status == InstanceStatus::Running && i.host_id != Some(victim) {
                break;
            }
            if Instant::now() > deadline {
                let h = cloud.admin.host_get(victim).await.expect("victim");
                let logs: Vec<String> = replicas
                    .iter()
                    .map(|r| format!("--- {} log:\n{}", r.name, r.log()))
                    .collect();
                panic!(
                    "{id} did not run elsewhere: {i:#?}\nvictim: {:?} {:?}\nevents: {:#?}\n{}",
                    h.health,
                    h.health_reason,
                    cloud.admin.host_events(victim).await,
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let finished = killed_at.elapsed();
    println!(
        "{holder} killed while fencing {victim_key}: {survivor} held the health monitor after \
         {:.2} s, all {} of its VMs ran elsewhere {:.2} s after the kill",
        took_over.as_secs_f64(),
        on_victim.len(),
        finished.as_secs_f64()
    );
    assert_eq!(
        cloud.admin.host_get(victim).await.expect("victim").health,
        HostHealth::Fenced
    );
    for id in &on_victim {
        let events = alice.instance_events(*id).await.expect("events");
        let relocated = events
            .iter()
            .filter(|e| e.event == "instance.relocated")
            .count();
        assert_eq!(relocated, 1, "re-created once: {events:#?}");
        let live_holders: Vec<String> = cloud
            .fleet
            .hosts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, h)| **k != victim_key && h.instances.contains_key(id))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(live_holders.len(), 1, "{id} on {live_holders:?}");
    }
    let report = cloud.admin.system_check().await.expect("check");
    assert!(report.consistent, "drift: {report:#?}");
}

/// The runs of each host reconciler `tasks` lists, by host id.
fn reconciler_runs(tasks: &[api::resources::TaskStatus]) -> HashMap<String, u64> {
    tasks
        .iter()
        .filter_map(|t| Some((t.name.strip_prefix("reconciler/")?.to_string(), t.runs)))
        .collect()
}

/// The hosts whose reconciler ran between two listings of one replica's
/// tasks (a reconciler that retired, its host owned elsewhere, is gone
/// from the second).
fn ran_between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashSet<String> {
    after
        .iter()
        .filter(|(h, runs)| **runs > 0 && before.get(*h).is_none_or(|b| *runs > b))
        .map(|(h, _)| h.clone())
        .collect()
}

/// How many replicas share the host reconcilers, as a replica's `leases`
/// task last read them.
fn members_seen(tasks: &[api::resources::TaskStatus]) -> Option<u64> {
    tasks.iter().find(|t| t.name == "leases")?.details["members"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reconcilers_are_shared_by_the_replicas_and_move_when_one_dies() {
    // A in process, B a real process whose clock is 30 s behind (libfaketime).
    // The simulated hosts heartbeat into B first (A if B is gone), and A's
    // health monitor judges those heartbeats with a 5 s deadline: on
    // B's own clock they would all look 30 s old, and every host would be
    // fenced. Resync once an hour: a push that lands within seconds was
    // woken, here or through the other replica.
    let cloud = TestCloud::start_with(Backend::Postgres, |c| {
        c.hosts.resync_interval_secs = 3600;
        c.hosts.down_after_secs = 5;
        c.hosts.heartbeat_interval_secs = 1;
        c.health.monitor_interval_ms = 200;
        c.health.suspect_grace_secs = 1;
    })
    .await;
    cloud.project("acme").await;
    cloud.quota_for("acme", 1000).await;
    let alice = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&alice).await;
    // A holds the health monitor's lease before B starts (B has none to
    // take: its monitor is off).
    wait_async(
        "A to hold the health monitor",
        Duration::from_secs(15),
        || async { holder_of(&cloud.admin, HEALTH_MONITOR).await.map(drop) },
    )
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = cloud.state.config.database_url();
    let cfg = config_with(
        dir.path(),
        "sm-b",
        &url,
        "[hosts]\nresync_interval_secs = 3600\ndown_after_secs = 5\nheartbeat_interval_secs = 1\n\
         [health]\nmonitor_interval_ms = 0\n",
    );
    // libfaketime preloaded into the binary itself (the `faketime` command
    // would run it as a child, which kill -9 would not reach).
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime (scripts/test.sh does)"
    );
    let mut faked = Command::new(bin());
    faked
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", "-30s")
        // Tokio's timers keep the real monotonic clock.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut b = serve_under(dir.path(), "sm-b", &cfg, &cloud.admin_token, faked).await;
    let b_internal = url_of(&cfg, "internal_listen");

    // Sixteen hosts, heartbeating from now on.
    const HOSTS: usize = 16;
    let beats = Beats::default();
    let mut hosts = Vec::new();
    for h in 0..HOSTS {
        let key = format!("hv-{h}");
        hosts.push(cloud.hypervisor(&key, 4, 4096, None).await.to_string());
        beats.start(
            &cloud.fleet,
            &format!("{b_internal},{}", cloud.internal_url),
            &key,
        );
    }
    let both_members = |n: u64| {
        let b = b.client.clone();
        let a = cloud.state.tasks.clone();
        async move {
            let (a_tasks, _) = a.statuses(None, usize::MAX);
            let b_tasks = b.system_tasks().await.ok()?;
            (members_seen(&a_tasks) == Some(n) && members_seen(&b_tasks) == Some(n)).then_some(())
        }
    };
    wait_async(
        "both replicas to count two members",
        Duration::from_secs(15),
        || both_members(2),
    )
    .await;
    // B's scheduler learns of the hosts enrolled through A at its refresh:
    // two of its runs, so that one began after the last enrollment.
    let refreshes = |tasks: &[api::resources::TaskStatus]| {
        tasks
            .iter()
            .find(|t| t.name == "scheduler-refresh")
            .map(|t| t.runs)
    };
    let seen = refreshes(&b.client.system_tasks().await.expect("B's tasks")).unwrap_or(0);
    wait_async(
        "B's scheduler to refresh",
        Duration::from_secs(30),
        || async {
            let now = refreshes(&b.client.system_tasks().await.ok()?)?;
            (now >= seen + 2).then_some(())
        },
    )
    .await;

    // 32 creates, every other one through each replica: each host's pushes
    // come from one replica, whichever took the create, and both replicas
    // reconcile some.
    let a_before = reconciler_runs(&cloud.state.tasks.statuses(None, usize::MAX).0);
    let b_before = reconciler_runs(&b.client.system_tasks().await.expect("B's tasks"));
    let alice_on_b = Client::new(
        &listen_url(&cfg),
        alice.transport.token().expect("alice's token"),
    )
    .with_project(Some("acme".into()));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let c = if i % 2 == 0 {
            alice.clone()
        } else {
            alice_on_b.clone()
        };
        set.spawn(async move { c.instance_create(&TestCloud::vm(&format!("s-{i}"))).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("create task").expect("create");
    }
    let running = |n: usize| {
        let alice = alice.clone();
        async move {
            let all = alice.instance_list().await.ok()?;
            (all.len() == n && all.iter().all(|i| i.status == InstanceStatus::Running))
                .then_some(all)
        }
    };
    let all = wait_async("32 instances running", Duration::from_secs(30), || {
        running(32)
    })
    .await;
    println!(
        "32 creates through two replicas running on hosts shared by them in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let a_ran = ran_between(
        &a_before,
        &reconciler_runs(&cloud.state.tasks.statuses(None, usize::MAX).0),
    );
    let b_ran = ran_between(
        &b_before,
        &reconciler_runs(&b.client.system_tasks().await.expect("B's tasks")),
    );
    let used: HashSet<String> = all
        .iter()
        .filter_map(|i| i.host_id.map(|h| h.to_string()))
        .collect();
    println!(
        "hosts reconciled: {} by A, {} by B, of {} with instances",
        a_ran.len(),
        b_ran.len(),
        used.len()
    );
    assert!(
        a_ran.is_disjoint(&b_ran),
        "a host reconciled by both: {a_ran:?} {b_ran:?}"
    );
    assert!(
        used.iter().all(|h| a_ran.contains(h) || b_ran.contains(h)),
        "a used host reconciled by neither"
    );
    assert!(
        !a_ran.is_empty() && !b_ran.is_empty(),
        "one replica reconciled every host: A {a_ran:?}, B {b_ran:?}"
    );
    // Deletes through A of every instance on B's hosts: B's reconcilers
    // were woken through PostgreSQL (no resync for an hour) and pushed
    // them.
    let b_before = reconciler_runs(&b.client.system_tasks().await.expect("B's tasks"));
    let on_b: Vec<&Instance> = all
        .iter()
        .filter(|i| i.host_id.is_some_and(|h| b_ran.contains(&h.to_string())))
        .collect();
    let started = Instant::now();
    for i in &on_b {
        alice.instance_delete(i.id).await.expect("delete through A");
    }
    let left = 32 - on_b.len();
    wait_async(
        "the deletes on B's hosts done",
        Duration::from_secs(30),
        || async { (alice.instance_list().await.ok()?.len() == left).then_some(()) },
    )
    .await;
    println!(
        "{} deletes through A on B's hosts done by B in {:.2} s",
        on_b.len(),
        started.elapsed().as_secs_f64()
    );
    let b_pushed = ran_between(
        &b_before,
        &reconciler_runs(&b.client.system_tasks().await.expect("B's tasks")),
    );
    assert!(
        on_b.iter()
            .all(|i| b_pushed.contains(&i.host_id.expect("placed").to_string())),
        "B did not reconcile its hosts' deletes: {b_pushed:?}"
    );
    // No host was ever suspected on the skewed replica's heartbeats.
    for h in cloud.admin.host_list().await.expect("hosts") {
        assert_eq!(
            h.health,
            HostHealth::Up,
            "{} judged on a wrong clock: {h:#?}",
            h.name
        );
    }

    // kill -9 of B: its hosts move to A within a TTL and a renewal; a
    // create on one of them and every delete converge.
    let killed = Instant::now();
    b.kill();
    let a_tasks = cloud.state.tasks.clone();
    wait_async("A to count itself alone", Duration::from_secs(15), || {
        let a_tasks = a_tasks.clone();
        async move { (members_seen(&a_tasks.statuses(None, usize::MAX).0) == Some(1)).then_some(()) }
    })
    .await;
    println!(
        "B's hosts moved to A {:.2} s after kill -9 (lease_ttl_ms 3000)",
        killed.elapsed().as_secs_f64()
    );
    let a_before = reconciler_runs(&cloud.state.tasks.statuses(None, usize::MAX).0);
    for i in 0..16 {
        alice
            .instance_create(&TestCloud::vm(&format!("t-{i}")))
            .await
            .expect("create after the kill");
    }
    wait_async("every instance running", Duration::from_secs(30), || {
        running(left + 16)
    })
    .await;
    let a_ran = ran_between(
        &a_before,
        &reconciler_runs(&cloud.state.tasks.statuses(None, usize::MAX).0),
    );
    assert!(
        b_ran.iter().any(|h| a_ran.contains(h)),
        "no host of B's was reconciled by A after the kill: {a_ran:?}"
    );
    delete_all(&alice).await;
    for h in cloud.admin.host_list().await.expect("hosts") {
        assert_eq!(h.health, HostHealth::Up, "{}: {h:#?}", h.name);
    }
    let log = b.log();
    assert!(
        log.contains("clock differs from the database's"),
        "B did not notice its clock was 30 s off:\n{log}"
    );
    cloud.assert_consistent().await;
}
