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
//! - The fencing token itself, in process: a run that was paused while its
//!   lease changed hands has its write refused, and nothing of it lands.
//! - On SQLite, a second replica is refused with a clear message, and a
//!   replica killed with `kill -9` starts again at once (the kernel drops
//!   the lock of a dead process).

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::resources::{EnrollmentTokenCreate, HostKind, ProjectCreate, Replica};
use api::Client;
use stack_manager::config::ReplicasConfig;
use stack_manager::db::Db;
use stack_manager::lease::{Leased, Leases, HEALTH_MONITOR, MOVER, PLANNER_STATISTICS};
use stack_manager::tasks::{BackgroundTask, Outcome, TaskError};
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
    let state = dir.join(name);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{}\"\ninternal_listen = \"127.0.0.1:{}\"\n\
             state_dir = \"{}\"\ndatabase_url = \"{database_url}\"\nlog = \"info\"\n\
             [replicas]\nname = \"{name}\"\n",
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
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(bin())
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
