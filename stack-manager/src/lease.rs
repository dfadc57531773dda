//! Leases: background work that must run on one replica at a time.
//!
//! Any number of stack managers may serve one PostgreSQL database. Request
//! handlers are safe side by side (every write is a transaction that locks
//! what it changes), but some background tasks would act twice if every
//! replica ran them: two health monitors fencing the same host, two movers
//! starting the same move. Such a task runs under a lease, a row of the
//! `leases` table naming its holder and a *fencing token*:
//!
//! - **Taking and keeping one.** One statement takes a lease that is free
//!   or expired (a new holder increments the token) or renews one this
//!   replica holds; the `leases` task renews every held lease each
//!   `replicas.renew_interval_ms` for `replicas.lease_ttl_ms`. A replica
//!   acts on a lease only while its own monotonic clock says the last
//!   renewal is younger than the TTL, and that clock starts before the
//!   statement is sent, so it gives up no later than the database expires
//!   the row. A standby tries at each activation of the task (the health
//!   monitor's is every second): a holder killed with `kill -9` is replaced
//!   within a TTL and an activation.
//! - **Fencing.** A replica paused (GC, SIGSTOP, a slow disk) in the middle
//!   of a run wakes up still believing it holds the lease. So the run is
//!   scoped with its [`Fence`] (a task-local), and every write transaction
//!   begun inside it first reads the lease row `FOR SHARE` and refuses to
//!   go on unless the row still names this replica and token
//!   ([`crate::db::Db::begin_write`]). The share lock also makes a
//!   takeover wait for a write already past the check to commit: the new
//!   holder sees it, and nothing of the old holder lands after it.
//! - **Membership.** Each replica keeps a row in `replicas` (a heartbeat
//!   with its renewals): what `GET /v1/system/replicas` lists, with the
//!   leases each holds. It also holds a lease of its own, `member/<id>`,
//!   renewed with the others: the replicas whose membership lease is live
//!   share the per-host reconcilers among them ([`Leases::owns`], by
//!   rendezvous hashing, so a replica that dies or joins moves only its
//!   own share), and a reconciler's writes are fenced by its replica's
//!   membership token. A membership that lapsed (a pause past the TTL)
//!   comes back with a new token: what the paused replica was doing when
//!   it stopped cannot land after another took its hosts.
//!
//! SQLite serves one replica (a second one is refused when it opens the
//! file, see `Db::connect`): the leases are then always this replica's,
//! and the check in each write is a read under the write gate.
//!
//! Times on PostgreSQL are the database's clock, so replicas on machines
//! whose clocks disagree still agree on when a lease expired; the `leases`
//! task also measures this replica's offset from that clock every renewal
//! (`crate::db::sync_clock`), so every timestamp the replica writes (a
//! heartbeat's, which another replica's health monitor judges) is on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::resources::{Replica, ReplicaLease};
use prometheus::{IntCounterVec, IntGaugeVec};
use serde_json::json;

use crate::config::ReplicasConfig;
use crate::db::{from_ms, now_ms, Backend, Db, RowExt};
use crate::tasks::{BackgroundTask, Outcome, TaskError};

/// The leases the stack manager's singleton tasks run under.
pub const HEALTH_MONITOR: &str = "health-monitor";
pub const MOVER: &str = "mover";
pub const PLANNER_STATISTICS: &str = "planner-statistics";
/// The prefix of each replica's membership lease, `member/<replica id>`.
pub const MEMBER_PREFIX: &str = "member/";

/// The authority a leased run acts on: checked by every write transaction
/// begun inside the run.
#[derive(Clone)]
pub struct Fence {
    pub lease: &'static str,
    pub holder: Arc<str>,
    pub token: i64,
    /// A membership fence's transactions are cut off by PostgreSQL when
    /// idle this long: the TTL less a renewal interval (see [`check`]).
    max_idle_ms: i64,
    /// Counts the writes it refused.
    refused: prometheus::IntCounter,
}

impl Fence {
    fn refuse(&self, e: &StaleLease) {
        tracing::warn!(lease = e.lease, token = e.token, now = %e.now, "{e}");
        self.refused.inc();
    }
}

tokio::task_local! {
    static FENCE: Fence;
}

/// Runs `f` under `fence`: every write transaction it begins checks it.
pub async fn fenced<F: std::future::Future>(fence: Fence, f: F) -> F::Output {
    FENCE.scope(fence, f).await
}

/// The fence of the leased run being polled, if any.
pub fn current_fence() -> Option<Fence> {
    FENCE.try_with(Fence::clone).ok()
}

/// A write refused because the lease it was made under changed hands.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "stale lease `{lease}`: this replica acted on token {token}, but the lease is now {now}; \
     the write was refused"
)]
pub struct StaleLease {
    pub lease: &'static str,
    pub token: i64,
    /// Who holds it now, as the row says.
    pub now: String,
}

/// The per-lease series of `/metrics`.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub held: IntGaugeVec,
    pub token: IntGaugeVec,
    pub acquired: IntCounterVec,
    pub lost: IntCounterVec,
    pub refused_writes: IntCounterVec,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    /// This replica's own deadline: the start of the last renewal + TTL.
    valid_until: Instant,
}

struct Inner {
    db: Db,
    id: Arc<str>,
    name: String,
    ttl: Duration,
    started_at: i64,
    urls: Mutex<(String, String)>,
    held: Mutex<HashMap<&'static str, Held>>,
    /// How long a membership-fenced transaction may idle (see [`check`]).
    max_idle_ms: i64,
    /// This replica's membership lease, `member/<id>`.
    member: &'static str,
    /// The replicas whose membership is live, as of the last renewal,
    /// sorted: who shares the host reconcilers.
    members: Mutex<Arc<[Arc<str>]>>,
    metrics: LeaseMetrics,
}

/// This replica's identity and the leases it holds. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

impl Leases {
    pub fn new(db: Db, cfg: &ReplicasConfig, metrics: LeaseMetrics) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}:{}", std::process::id()));
        let id = uuid::Uuid::new_v4().to_string();
        // Lease names are `&'static str` (constants, and labels of
        // metrics); this one is made once per replica's start.
        let member: &'static str = Box::leak(format!("{MEMBER_PREFIX}{id}").into_boxed_str());
        Self {
            inner: Arc::new(Inner {
                db,
                id: id.into(),
                member,
                members: Mutex::new(Arc::from(Vec::new())),
                name,
                ttl: Duration::from_millis(cfg.lease_ttl_ms.max(1)),
                // A membership checked live stays so at least a TTL less a
                // renewal interval: a transaction idle longer may outlive it.
                max_idle_ms: (cfg.lease_ttl_ms.saturating_sub(cfg.renew_interval_ms) as i64)
                    .max(cfg.lease_ttl_ms as i64 / 3)
                    .max(1),
                started_at: now_ms(),
                urls: Mutex::new((String::new(), String::new())),
                held: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// This replica's id (a new one at every start).
    pub fn replica_id(&self) -> &str {
        &self.inner.id
    }

    /// Where this replica serves, for the replica list.
    pub fn set_urls(&self, public: String, internal: String) {
        *self.inner.urls.lock().unwrap_or_else(|e| e.into_inner()) = (public, internal);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Held>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fence to run `lease`'s task under, taking the lease if it is
    /// free or expired; `None` while another replica holds it.
    pub async fn hold(&self, lease: &'static str) -> Result<Option<Fence>, sqlx::Error> {
        let now = Instant::now();
        let current = self.held().get(lease).copied();
        if let Some(h) = current.filter(|h| h.valid_until > now) {
            return Ok(Some(self.fence(lease, h.token)));
        }
        Ok(self
            .take_or_renew(lease)
            .await?
            .map(|token| self.fence(lease, token)))
    }

    fn fence(&self, lease: &'static str, token: i64) -> Fence {
        Fence {
            lease,
            holder: self.inner.id.clone(),
            token,
            max_idle_ms: self.inner.max_idle_ms,
            refused: self
                .inner
                .metrics
                .refused_writes
                .with_label_values(&[lease]),
        }
    }

    /// One statement: takes `lease` if it is free or expired, renews it if
    /// this replica holds it. Returns the token, or `None` (held elsewhere).
    /// A lease this replica let expire is taken anew, with a new token,
    /// even if nobody took it meanwhile: whatever it was doing under the
    /// old token was done without authority for a while.
    async fn take_or_renew(&self, lease: &'static str) -> Result<Option<i64>, sqlx::Error> {
        let db = &self.inner.db;
        let started = Instant::now();
        let now = crate::db::database_clock(db).await?;
        let expires = now + self.inner.ttl.as_millis() as i64;
        let insert = sqlx::query(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at) \
             VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               token = CASE WHEN leases.holder = $2 AND leases.expires_at >= $3 \
                            THEN leases.token ELSE leases.token + 1 END, \
               acquired_at = CASE WHEN leases.holder = $2 AND leases.expires_at >= $3 \
                                  THEN leases.acquired_at ELSE $3 END, \
               holder = $2, expires_at = $4 \
             WHERE leases.holder = $2 OR leases.expires_at < $3 \
             RETURNING token",
        )
        .bind(lease)
        .bind(&*self.inner.id)
        .bind(now)
        .bind(expires);
        let token = match db.gated(insert.fetch_optional(&db.pool)).await? {
            Some(row) => Some(row.int("token")?),
            None => None,
        };
        let before = {
            let mut held = self.held();
            let before = held.get(lease).copied();
            match token {
                Some(token) => {
                    held.insert(
                        lease,
                        Held {
                            token,
                            valid_until: started + self.inner.ttl,
                        },
                    );
                }
                None => {
                    held.remove(lease);
                }
            }
            before
        };
        let m = &self.inner.metrics;
        match (before, token) {
            (Some(b), Some(t)) if b.token == t => {}
            (_, Some(t)) => {
                tracing::info!(lease, token = t, replica = %self.inner.id, "took the lease: its task runs on this replica");
                m.acquired.with_label_values(&[lease]).inc();
                m.held.with_label_values(&[lease]).set(1);
                m.token.with_label_values(&[lease]).set(t);
            }
            (Some(b), None) => {
                tracing::warn!(lease, token = b.token, replica = %self.inner.id, "lost the lease to another replica: its task stops here");
                m.lost.with_label_values(&[lease]).inc();
                m.held.with_label_values(&[lease]).set(0);
            }
            (None, None) => {
                m.held.with_label_values(&[lease]).set(0);
            }
        }
        Ok(token)
    }

    /// Renews every lease this replica holds, its membership lease and
    /// row, and reads who the live members are. Returns what it kept and
    /// whether the members changed.
    async fn renew(&self) -> Result<(serde_json::Value, bool), sqlx::Error> {
        crate::db::sync_clock(&self.inner.db).await?;
        let member = self.inner.member;
        let mut names: Vec<&'static str> = self.held().keys().copied().collect();
        if !names.contains(&member) {
            names.push(member);
        }
        let member_before = self.held().get(member).map(|h| h.token);
        let mut kept = Vec::new();
        let mut member_now = None;
        for lease in names {
            let token = self.take_or_renew(lease).await?;
            if lease == member {
                member_now = token;
            } else if token.is_some() {
                kept.push(lease);
            }
        }
        self.heartbeat(None).await?;
        // A membership that lapsed and came back may find the same members,
        // but its hosts went to others meanwhile and come back now.
        let changed = self.refresh_members().await? || member_before != member_now;
        kept.sort_unstable();
        let members = self.members().len();
        Ok((json!({ "held": kept, "members": members }), changed))
    }

    /// Takes this replica's membership (and its place among the members)
    /// before it starts the work members share.
    pub async fn join(&self) -> Result<(), sqlx::Error> {
        // Each start leaves a membership row: those of replicas gone for an
        // hour are forgotten here.
        let db = &self.inner.db;
        let forget =
            sqlx::query("DELETE FROM leases WHERE name LIKE 'member/%' AND expires_at < $1")
                .bind(crate::db::database_clock(db).await? - 3_600_000);
        db.gated(forget.execute(&db.pool)).await?;
        self.renew().await.map(drop)
    }

    /// Reads the live members; whether they changed.
    async fn refresh_members(&self) -> Result<bool, sqlx::Error> {
        let db = &self.inner.db;
        let now = crate::db::database_clock(db).await?;
        let mut live: Vec<Arc<str>> = sqlx::query(
            "SELECT holder FROM leases WHERE name LIKE 'member/%' AND expires_at >= $1",
        )
        .bind(now)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| r.text("holder").map(Arc::from))
        .collect::<Result<_, _>>()?;
        live.sort_unstable();
        let mut members = self.inner.members.lock().unwrap_or_else(|e| e.into_inner());
        if **members == *live {
            return Ok(false);
        }
        tracing::info!(
            replica = %self.inner.id,
            members = live.len(),
            "the replicas sharing host reconcilers changed"
        );
        *members = live.into();
        Ok(true)
    }

    fn members(&self) -> Arc<[Arc<str>]> {
        self.inner
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this replica reconciles `host`: the live member whose
    /// rendezvous weight for it is highest. Before the first membership is
    /// read (or if none is live), every replica does, which is safe
    /// (pushes are idempotent), only wasteful.
    pub fn owns(&self, host: &str) -> bool {
        let members = self.members();
        match members
            .iter()
            .max_by_key(|m| (rendezvous_weight(host, m), *m))
        {
            Some(owner) => **owner == *self.inner.id,
            None => true,
        }
    }

    /// The fence a host reconciler's run goes under: this replica's
    /// membership, renewed if this replica let it lapse.
    pub async fn member_fence(&self) -> Result<Option<Fence>, sqlx::Error> {
        self.hold(self.inner.member).await
    }

    async fn heartbeat(&self, stopped_at: Option<i64>) -> Result<(), sqlx::Error> {
        let db = &self.inner.db;
        let now = crate::db::database_clock(db).await?;
        let (public, internal) = self
            .inner
            .urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let upsert = sqlx::query(
            "INSERT INTO replicas (id, name, public_url, internal_url, started_at, heartbeat_at, stopped_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET public_url = $3, internal_url = $4, heartbeat_at = $6, stopped_at = $7",
        )
        .bind(&*self.inner.id)
        .bind(&self.inner.name)
        .bind(public)
        .bind(internal)
        .bind(self.inner.started_at)
        .bind(now)
        .bind(stopped_at);
        db.gated(upsert.execute(&db.pool)).await?;
        Ok(())
    }

    /// A clean stop: every lease this replica holds expires now (a standby
    /// takes it at its next activation instead of waiting out the TTL),
    /// and its row says it stopped.
    pub async fn release(&self) {
        self.held().clear();
        let db = &self.inner.db;
        let release = sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE holder = $1 AND name NOT LIKE 'member/%'",
        )
        .bind(&*self.inner.id);
        let leave = sqlx::query("DELETE FROM leases WHERE name = $1").bind(self.inner.member);
        if let Err(e) = db.gated(leave.execute(&db.pool)).await {
            tracing::warn!(error = %e, "could not leave the members; the membership expires on its own");
        }
        if let Err(e) = db.gated(release.execute(&db.pool)).await {
            tracing::warn!(error = %e, "could not release this replica's leases; they expire on their own");
        }
        if let Err(e) = self.heartbeat(Some(now_ms())).await {
            tracing::warn!(error = %e, "could not mark this replica stopped");
        }
    }

    /// Every replica heard from within `window`, and the stopped or silent
    /// ones of the last day, with the leases each holds, newest first.
    pub async fn replicas(&self) -> Result<Vec<Replica>, sqlx::Error> {
        let db = &self.inner.db;
        let now = crate::db::database_clock(db).await?;
        let rows = sqlx::query(
            "SELECT id, name, public_url, internal_url, started_at, heartbeat_at, stopped_at \
             FROM replicas WHERE heartbeat_at >= $1 ORDER BY started_at DESC, id",
        )
        .bind(now - 86_400_000)
        .fetch_all(&db.pool)
        .await?;
        let leases = sqlx::query(
            "SELECT name, holder, token, acquired_at, expires_at FROM leases ORDER BY name",
        )
        .fetch_all(&db.pool)
        .await?;
        let silent_after = 3 * self.inner.ttl.as_millis() as i64;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id = r.text("id")?;
            let stopped_at = r.opt_int("stopped_at")?;
            let heartbeat_at = r.int("heartbeat_at")?;
            let mut held = Vec::new();
            for l in &leases {
                // Membership is what `alive` says; the list is of tasks.
                if l.text("name")?.starts_with(MEMBER_PREFIX) {
                    continue;
                }
                if l.text("holder")? == id && l.int("expires_at")? >= now {
                    held.push(ReplicaLease {
                        name: l.text("name")?,
                        token: l.int("token")?,
                        since: from_ms(l.int("acquired_at")?),
                        expires_at: from_ms(l.int("expires_at")?),
                    });
                }
            }
            out.push(Replica {
                this: id == *self.inner.id,
                alive: stopped_at.is_none() && now - heartbeat_at <= silent_after,
                id,
                name: r.text("name")?,
                public_url: r.text("public_url")?,
                internal_url: r.text("internal_url")?,
                started_at: from_ms(r.int("started_at")?),
                last_heartbeat_at: from_ms(heartbeat_at),
                stopped_at: stopped_at.map(from_ms),
                leases: held,
            });
        }
        Ok(out)
    }
}

/// Checks `fence` inside `tx`, before its first write: the lease row must
/// still name this holder and token, and not have expired (a membership
/// lease is never taken over, only let lapse, and others act on its
/// lapse).
///
/// On PostgreSQL a task lease's row is read `FOR SHARE`, so a takeover (an
/// `UPDATE` of the row) waits until `tx` ends. A membership lease is never
/// taken over, and its renewal must not queue behind the many short
/// reconciler transactions that check it (share locks let newcomers pass a
/// waiting update), so it is read `FOR KEY SHARE`, which a renewal does
/// not wait for; instead PostgreSQL ends the transaction if it idles for
/// the TTL less a renewal interval (a replica paused between its check and
/// its commit), so nothing checked under a live membership commits long
/// after it lapsed.
pub(crate) async fn check(
    tx: &mut crate::db::WriteTx,
    fence: &Fence,
) -> Result<(), crate::db::DbError> {
    let membership = fence.lease.starts_with(MEMBER_PREFIX);
    let sql = match (tx.backend, membership) {
        (Backend::Postgres, false) => {
            "SELECT holder, token, expires_at FROM leases WHERE name = $1 FOR SHARE"
        }
        (Backend::Postgres, true) => {
            "SELECT holder, token, expires_at, \
                    set_config('idle_in_transaction_session_timeout', $2, true) AS idle \
             FROM leases WHERE name = $1 FOR KEY SHARE"
        }
        (Backend::Sqlite, _) => "SELECT holder, token, expires_at FROM leases WHERE name = $1",
    };
    let mut query = sqlx::query(sql).bind(fence.lease);
    if membership && tx.backend == Backend::Postgres {
        query = query.bind(format!("{}ms", fence.max_idle_ms));
    }
    let row = query.fetch_optional(&mut ***tx).await?;
    let now = match row {
        Some(r) => {
            let (holder, token) = (r.text("holder")?, r.int("token")?);
            let expires_at = r.int("expires_at")?;
            let live = expires_at >= now_ms();
            if holder == *fence.holder && token == fence.token && live {
                return Ok(());
            }
            if live {
                format!("token {token} of replica {holder}")
            } else {
                format!("token {token} of replica {holder}, expired")
            }
        }
        None => "released".into(),
    };
    let e = StaleLease {
        lease: fence.lease,
        token: fence.token,
        now,
    };
    fence.refuse(&e);
    Err(crate::db::DbError::StaleLease(e))
}

/// A task that runs only on the replica holding its lease; elsewhere its
/// runs are standbys that try to take the lease.
pub struct Leased<B> {
    leases: Leases,
    lease: &'static str,
    body: B,
}

impl<B> Leased<B> {
    pub fn new(leases: Leases, lease: &'static str, body: B) -> Self {
        Self {
            leases,
            lease,
            body,
        }
    }
}

impl<B: BackgroundTask> BackgroundTask for Leased<B> {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        match self.leases.hold(self.lease).await? {
            Some(fence) => {
                let token = fence.token;
                let mut outcome = FENCE.scope(fence, self.body.activate()).await?;
                if let serde_json::Value::Object(m) = &mut outcome.details {
                    m.insert(
                        "lease".into(),
                        json!({ "name": self.lease, "token": token }),
                    );
                }
                Ok(outcome)
            }
            None => Ok(Outcome::ran(json!({
                "standby": true,
                "lease": { "name": self.lease, "held_by": "another replica" },
            }))),
        }
    }
}

/// The `leases` task: renews this replica's leases and membership, and
/// wakes `members_changed` when the replicas sharing host reconcilers
/// change.
pub struct Keeper {
    pub leases: Leases,
    pub members_changed: crate::tasks::Activator,
}

impl BackgroundTask for Keeper {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        let (details, changed) = self.leases.renew().await?;
        if changed {
            self.members_changed.activate();
        }
        Ok(Outcome::ran(details))
    }
}

/// A host's rendezvous weight for a replica: FNV-1a over both ids. Every
/// replica must compute the same weights, whatever its build, so this is
/// a fixed function rather than the standard library's hasher (whose
/// algorithm may change between Rust releases).
fn rendezvous_weight(host: &str, replica: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([0]).chain(replica.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for inputs that differ only at the end:
    // one more avalanche round (splitmix64's finalizer).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::rendezvous_weight;

    /// Hosts spread evenly over replicas, and a replica leaving moves only
    /// its own hosts.
    #[test]
    fn rendezvous_spreads_and_moves_only_the_lost_share() {
        let replicas: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let owner = |host: &str, among: &[String]| {
            among
                .iter()
                .max_by_key(|r| rendezvous_weight(host, r))
                .cloned()
                .unwrap()
        };
        let hosts: Vec<String> = (0..3000)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let mut counts = [0usize; 3];
        for h in &hosts {
            let o = owner(h, &replicas);
            counts[replicas.iter().position(|r| *r == o).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 850 && c < 1150), "{counts:?}");
        let left = &replicas[..2];
        for h in &hosts {
            let before = owner(h, &replicas);
            if before != replicas[2] {
                assert_eq!(owner(h, left), before, "a host of a live replica moved");
            }
        }
    }
}
