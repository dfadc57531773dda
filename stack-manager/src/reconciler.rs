//! Per-host reconcilers: push desired state to each agent until what it
//! observes matches.
//!
//! One background task per host with work (`reconciler/<host>`, see
//! `crate::tasks`), woken by [`Reconciler::notify`] whenever that host's
//! desired state changes and otherwise every `resync_interval_secs`, so a
//! missed update or an agent restart heals on its own. Every push is an
//! idempotent PUT or DELETE by id; a failed push is retried with backoff.
//! Reconcilers start lazily (the `reconcilers` task starts one the first
//! time its host has work), so 20,000 idle hosts cost nothing.
//!
//! Deletion: an instance whose desired state is `deleted` is finalized
//! (claims, addresses and quota released) only once its agent confirmed the
//! DELETE. While its host is down it stays `deleting`: the host may still be
//! running it, and its address and volumes must not be reused before the
//! host is fenced.
//!
//! Orphans: what an agent reports but the database does not place on that
//! host (deleted meanwhile, or moved) is deleted on the agent.
//!
//! Several replicas: each host is reconciled by one of the live replicas,
//! the one [`Leases::owns`] names (rendezvous hashing over the membership
//! leases), so the pushes scale with replicas and a dead replica's hosts
//! move to the others within a TTL and a renewal. A replica whose request
//! changed another replica's host wakes it there through PostgreSQL
//! (`NOTIFY strato_reconcile`, see [`Forwarder`] and [`Listener`]). A wake
//! can be lost around a change of members (sent to a replica that just
//! died, or judged by views that disagree for a renewal), so each replica
//! also sweeps the hosts it owns with pending work whenever the members
//! change and every `resync_interval_secs` ([`Sweep`]). A reconciler's
//! run is fenced by its replica's membership: a replica paused past its
//! TTL, whose hosts another took, writes nothing of the run it was in.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::ids::{HostId, VolumeId};
use api::resources::{HostHealth, HostKind, InstanceStatus};
use api::AgentClient;
use serde_json::json;

use crate::db::Backend;
use crate::desired;
use crate::error::ApiResult;
use crate::lease::Leases;
use crate::state::AppState;
use crate::tasks::{Activator, BackgroundTask, Outcome, TaskError, TaskSpec};

/// The PostgreSQL channel replicas wake each other's reconcilers on.
const CHANNEL: &str = "strato_reconcile";

/// The handle everyone wakes host reconcilers through. It holds only
/// activators: the reconcilers themselves are background tasks
/// (`reconciler/<host>`), started by the `reconcilers` task with what they
/// need (see [`start`]).
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Shared>,
}

struct Shared {
    /// The activator of every host's reconciler, started or about to be.
    workers: Mutex<HashMap<HostId, Activator>>,
    /// Hosts notified for the first time, whose reconciler is not started.
    unstarted: Mutex<Vec<HostId>>,
    /// Wakes the task that starts them.
    starter: Activator,
    /// Hosts whose last report named something not placed there.
    orphans: Mutex<HashSet<HostId>>,
    /// Who owns which host (see `crate::lease`).
    leases: Leases,
    /// Wakes for hosts another replica owns, and whether each found
    /// orphans, for the [`Forwarder`].
    forward: Mutex<Vec<(HostId, bool)>>,
    forwarder: Activator,
    /// Wakes the [`Sweep`].
    sweep: Activator,
}

impl Reconciler {
    pub fn new(leases: Leases) -> Self {
        Self {
            inner: Arc::new(Shared {
                workers: Mutex::new(HashMap::new()),
                unstarted: Mutex::new(Vec::new()),
                starter: Activator::new(),
                orphans: Mutex::new(HashSet::new()),
                leases,
                forward: Mutex::new(Vec::new()),
                forwarder: Activator::new(),
                sweep: Activator::new(),
            }),
        }
    }

    /// What the `leases` task wakes when the members change.
    pub fn sweep_activator(&self) -> Activator {
        self.inner.sweep.clone()
    }

    /// The host reported something the database does not place there: the
    /// next pass lists the agent and deletes what is not ours.
    pub fn notify_orphans(&self, host: HostId) {
        if !self.inner.leases.owns(&host.to_string()) {
            self.forward(host, true);
            return;
        }
        self.mark_orphans(host);
        self.notify_local(host);
    }

    fn mark_orphans(&self, host: HostId) {
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host);
    }

    fn forward(&self, host: HostId, orphans: bool) {
        self.inner
            .forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((host, orphans));
        self.inner.forwarder.activate();
    }

    fn take_orphan_flag(&self, host: HostId) -> bool {
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host)
    }

    fn forget(&self, host: HostId) {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host);
    }

    /// Wakes the reconciler of `host`, on whichever replica owns it.
    pub fn notify(&self, host: HostId) {
        if self.inner.leases.owns(&host.to_string()) {
            self.notify_local(host);
        } else {
            self.forward(host, false);
        }
    }

    /// Wakes (starting if needed) this replica's reconciler of `host`.
    fn notify_local(&self, host: HostId) {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = workers.get(&host) {
            a.activate();
            return;
        }
        // Activated before it exists: its first run comes as soon as it starts.
        let activator = Activator::new();
        activator.activate();
        workers.insert(host, activator);
        self.inner
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(host);
        drop(workers);
        self.inner.starter.activate();
    }
}

/// Starts the host reconcilers: the `reconcilers` task, which starts one
/// reconciler per host as hosts get work; on PostgreSQL the listener for
/// other replicas' wakes, then this replica's membership, then the
/// forwarder; and the sweep, which wakes every host this replica owns that
/// has unconverged work now.
pub async fn start(state: &AppState) -> anyhow::Result<()> {
    let reconciler = &state.reconciler;
    // Listening before joining: a wake sent once others count this replica
    // in must find it listening.
    let listener = match state.db.backend {
        Backend::Postgres => {
            let mut l = sqlx::postgres::PgListener::connect(&state.config.database_url()).await?;
            l.listen(CHANNEL).await?;
            Some(l)
        }
        Backend::Sqlite => None,
    };
    state.leases.join().await?;
    if let Some(listener) = listener {
        let listening = Activator::new();
        listening.activate();
        state.tasks.start(
            TaskSpec {
                name: "reconciler-listener".into(),
                description:
                    "wakes this replica's host reconcilers when another replica changed their hosts"
                        .into(),
                // After a lost connection, listen again a second later.
                period: Some(Duration::from_secs(1)),
            },
            listening,
            Listener {
                state: state.clone(),
                listener: Some(listener),
                received: 0,
            },
        );
    }
    state.tasks.start(
        TaskSpec {
            name: "reconciler-forwarder".into(),
            description: "wakes the reconcilers of hosts another replica owns, there".into(),
            period: None,
        },
        reconciler.inner.forwarder.clone(),
        Forwarder {
            state: state.clone(),
            sent: 0,
        },
    );
    let resync = Duration::from_secs(state.config.hosts.resync_interval_secs.max(1));
    reconciler.inner.sweep.activate();
    state.tasks.start(
        TaskSpec {
            name: "reconciler-sweep".into(),
            description: "wakes the hosts this replica reconciles that have pending work, when the replicas change and periodically".into(),
            period: Some(resync),
        },
        reconciler.inner.sweep.clone(),
        Sweep {
            state: state.clone(),
        },
    );
    state.tasks.start(
        TaskSpec {
            name: "reconcilers".into(),
            description: "starts the reconciler of each host the first time it has work".into(),
            period: None,
        },
        reconciler.inner.starter.clone(),
        Starter {
            state: state.clone(),
            started: 0,
        },
    );
    Ok(())
}

/// Wakes the hosts this replica owns that have pending work: at start,
/// when the members change (hosts a dead replica owned), and every resync
/// interval (a wake lost in between).
struct Sweep {
    state: AppState,
}

impl BackgroundTask for Sweep {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        let pending = self.state.store.hosts_with_pending_work().await?;
        let mut woken = 0;
        for &h in &pending {
            if self.state.leases.owns(&h.to_string()) {
                self.state.reconciler.notify_local(h);
                woken += 1;
            }
        }
        Ok(Outcome::ran(json!({
            "pending_hosts": pending.len(),
            "woken_here": woken,
        })))
    }
}

/// A NOTIFY payload stays far below PostgreSQL's 8000-byte limit.
const PAYLOAD_BYTES: usize = 4000;

/// Sends the wakes for hosts other replicas own (`NOTIFY`, which
/// PostgreSQL delivers to every listening replica; the owner acts on it).
/// A payload is host ids separated by commas, an id prefixed with `o:`
/// when its report named orphans.
struct Forwarder {
    state: AppState,
    sent: u64,
}

impl BackgroundTask for Forwarder {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        let shared = &self.state.reconciler.inner;
        let mut wakes =
            std::mem::take(&mut *shared.forward.lock().unwrap_or_else(|e| e.into_inner()));
        wakes.sort_unstable();
        wakes.dedup();
        if self.state.db.backend == Backend::Sqlite {
            // The only replica: nobody else to wake.
            for (h, orphans) in wakes {
                if orphans {
                    self.state.reconciler.mark_orphans(h);
                }
                self.state.reconciler.notify_local(h);
            }
            return Ok(Outcome::ran(json!({ "sent_total": self.sent })));
        }
        let mut payloads = vec![String::new()];
        for (h, orphans) in &wakes {
            let last = payloads.last_mut().expect("one payload at least");
            if last.len() > PAYLOAD_BYTES {
                payloads.push(String::new());
            }
            let last = payloads.last_mut().expect("one payload at least");
            if !last.is_empty() {
                last.push(',');
            }
            if *orphans {
                last.push_str("o:");
            }
            last.push_str(&h.to_string());
        }
        for p in payloads.into_iter().filter(|p| !p.is_empty()) {
            let notify = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(p);
            if let Err(e) = notify.fetch_optional(&self.state.db.pool).await {
                // Sent again at the next activation (the owner's sweep
                // would find the work too, later).
                shared
                    .forward
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(wakes);
                return Err(format!("waking other replicas' reconcilers: {e}").into());
            }
        }
        self.sent += wakes.len() as u64;
        Ok(Outcome::ran(json!({ "sent_total": self.sent })))
    }
}

/// Receives the wakes replicas send (every listening replica gets each,
/// the sender too) and wakes the reconcilers of the hosts this replica
/// owns among those named. Where views of the members disagree for a
/// renewal, the sweep that follows a change of members finds the work.
struct Listener {
    state: AppState,
    /// `None` after the connection failed, until it is made again.
    listener: Option<sqlx::postgres::PgListener>,
    received: u64,
}

impl Listener {
    /// Listens again on a new connection (one that failed with an error
    /// may be kept by sqlx in a broken state) and sweeps: wakes sent while
    /// nobody listened are lost.
    async fn relisten(&mut self) -> Result<&mut sqlx::postgres::PgListener, TaskError> {
        if self.listener.is_none() {
            let mut l = sqlx::postgres::PgListener::connect(&self.state.config.database_url())
                .await
                .map_err(|e| format!("connecting to listen for other replicas' wakes: {e}"))?;
            l.listen(CHANNEL)
                .await
                .map_err(|e| format!("listening for other replicas' wakes: {e}"))?;
            self.state.reconciler.inner.sweep.activate();
            self.listener = Some(l);
        }
        Ok(self.listener.as_mut().expect("just made"))
    }
}

impl BackgroundTask for Listener {
    /// Runs until the connection fails; the next run (a second later)
    /// listens on a new one.
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        loop {
            let listener = self.relisten().await?;
            let n = match listener.try_recv().await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    // sqlx reconnected on its own: what was sent in
                    // between is lost, the sweep finds its work.
                    tracing::info!("listening again for other replicas' wakes");
                    self.state.reconciler.inner.sweep.activate();
                    continue;
                }
                Err(e) => {
                    self.listener = None;
                    return Err(format!(
                        "listening for other replicas' wakes (received {}): {e}",
                        self.received
                    )
                    .into());
                }
            };
            for id in n.payload().split(',') {
                let (orphans, id) = match id.strip_prefix("o:") {
                    Some(rest) => (true, rest),
                    None => (false, id),
                };
                let Ok(host) = id.parse::<HostId>() else {
                    tracing::warn!(payload = id, "a wake for no host id on {CHANNEL}");
                    continue;
                };
                self.received += 1;
                if !self.state.leases.owns(&host.to_string()) {
                    continue;
                }
                if orphans {
                    self.state.reconciler.mark_orphans(host);
                }
                self.state.reconciler.notify_local(host);
            }
        }
    }
}

/// Starts the reconciler of each newly notified host. Reconcilers start
/// lazily, so 20,000 idle hosts cost nothing.
struct Starter {
    // The reconcilers call `desired`'s functions, which take the whole
    // state; it is handed over once built, never stored inside it.
    state: AppState,
    started: u64,
}

impl BackgroundTask for Starter {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        let shared = &self.state.reconciler.inner;
        let hosts =
            std::mem::take(&mut *shared.unstarted.lock().unwrap_or_else(|e| e.into_inner()));
        let resync = Duration::from_secs(self.state.config.hosts.resync_interval_secs.max(1));
        for host in hosts {
            let activator = shared
                .workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&host)
                .cloned();
            let Some(activator) = activator else { continue };
            self.state.tasks.start(
                TaskSpec {
                    name: format!("reconciler/{host}"),
                    description: format!(
                        "pushes desired state to the agent of host {host} until it observes it"
                    ),
                    period: Some(resync),
                },
                activator,
                HostReconciler {
                    state: self.state.clone(),
                    host,
                    backoff: MIN_BACKOFF,
                    passes: 0,
                    pushes_pending: false,
                },
            );
            self.started += 1;
        }
        let running = shared
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        Ok(Outcome::ran(json!({
            "started_total": self.started,
            "hosts": running,
        })))
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One host's reconciler: activated whenever that host's desired state
/// changes, and every `resync_interval_secs` otherwise.
struct HostReconciler {
    state: AppState,
    host: HostId,
    backoff: Duration,
    passes: u64,
    pushes_pending: bool,
}

impl HostReconciler {
    fn details(&self) -> serde_json::Value {
        json!({
            "host": self.host,
            "passes": self.passes,
            "converged": !self.pushes_pending,
        })
    }
}

impl BackgroundTask for HostReconciler {
    /// Passes until the host converged, retrying soon (with backoff) while
    /// its agent is unreachable or behind, up to the longest backoff; a
    /// failed pass ends the run after its backoff.
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        if !self.state.leases.owns(&self.host.to_string()) {
            // Another replica owns the host now (one joined): it runs
            // there. Woken here again, a new reconciler starts.
            self.state.reconciler.forget(self.host);
            // A wake that came between the check and `forget` went to this
            // retiring task: hand it on (to a new one here, if the members
            // changed back, or to the owner).
            self.state.reconciler.notify(self.host);
            return Ok(Outcome::retire(json!({
                "host": self.host,
                "owner": "another replica",
            })));
        }
        let Some(fence) = self.state.leases.member_fence().await? else {
            tokio::time::sleep(self.backoff).await;
            return Err(format!(
                "reconciling host {}: this replica's membership lease is not live",
                self.host
            )
            .into());
        };
        crate::lease::fenced(fence, self.passes_until_settled()).await
    }
}

impl HostReconciler {
    async fn passes_until_settled(&mut self) -> Result<Outcome, TaskError> {
        loop {
            self.passes += 1;
            match sync_host(&self.state, self.host).await {
                Ok(Sync::HostGone) => {
                    self.state.reconciler.forget(self.host);
                    return Ok(Outcome::retire(json!({ "host": self.host, "gone": true })));
                }
                Ok(Sync::Converged) => {
                    self.backoff = MIN_BACKOFF;
                    self.pushes_pending = false;
                    return Ok(Outcome::ran(self.details()));
                }
                Ok(Sync::Pending) => {
                    self.pushes_pending = true;
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    if self.backoff >= MAX_BACKOFF {
                        return Ok(Outcome::ran(self.details()));
                    }
                }
                Err(e) => {
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return Err(format!("reconciling host {}: {e}", self.host).into());
                }
            }
        }
    }
}

/// How a pass over a host ended.
enum Sync {
    Converged,
    /// Something is still pending and worth retrying soon.
    Pending,
    /// The host was deleted: its reconciler ends.
    HostGone,
}

impl Sync {
    fn from(converged: bool) -> Self {
        if converged {
            Sync::Converged
        } else {
            Sync::Pending
        }
    }
}

/// One pass over `host` now, outside its worker (benchmarks and tests):
/// whether it converged. A host that is gone counts as converged.
pub async fn run_pass(state: &AppState, host: HostId) -> ApiResult<bool> {
    Ok(!matches!(sync_host(state, host).await?, Sync::Pending))
}

/// One pass over a host.
async fn sync_host(state: &AppState, host: HostId) -> ApiResult<Sync> {
    let Some(pass) = state.store.host_pass(host).await? else {
        return Ok(Sync::HostGone);
    };
    let agent = AgentClient::with_http(state.agent_http.clone(), &pass.agent_url, &pass.credential);
    // Judged from the database, not this replica's view: another replica
    // may be the one receiving this host's heartbeats.
    let alive_since = crate::db::now_ms() - (state.config.hosts.down_after_secs as i64) * 1000;
    let down = pass.last_heartbeat_at.is_none_or(|t| t < alive_since);
    let orphans = state.reconciler.take_orphan_flag(host);
    if pass.kind == HostKind::Hypervisor
        && matches!(pass.health, HostHealth::Fencing | HostHealth::Fenced)
    {
        return Ok(Sync::from(clear_fenced(host, &agent, down).await?));
    }
    let converged = match pass.kind {
        HostKind::Hypervisor => {
            sync_hypervisor(state, host, &agent, down, orphans, pass.work).await?
        }
        HostKind::Storage => sync_storage(state, host, &agent, down, orphans).await?,
    };
    Ok(Sync::from(converged))
}

/// A fencing or fenced host runs nothing: whatever its agent still has
/// (it was cut off, or came back) is deleted there, without touching the
/// volumes, which its targets refuse it anyway. Its instances are
/// re-created elsewhere by the health monitor.
async fn clear_fenced(host: HostId, agent: &AgentClient, down: bool) -> ApiResult<bool> {
    if down {
        // Nothing to reach; its next heartbeat reports what it still runs.
        return Ok(true);
    }
    let listed = match agent.instance_list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(%host, error = %e, "cannot list instances of a fenced host");
            return Ok(false);
        }
    };
    let mut converged = true;
    for o in listed {
        tracing::info!(%host, instance = %o.id, "removing a stale instance from a fenced host");
        match agent.instance_delete(o.id).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => {
                tracing::warn!(%host, instance = %o.id, error = %e, "cannot remove stale instance");
                converged = false;
            }
        }
    }
    Ok(converged)
}

async fn sync_hypervisor(
    state: &AppState,
    host: HostId,
    agent: &AgentClient,
    down: bool,
    orphans: bool,
    work: crate::store::agents::HostWork,
) -> ApiResult<bool> {
    if down {
        // Nothing can be confirmed by an agent that does not answer, and
        // nothing it may still run is given away before fencing.
        return Ok(false);
    }
    let mut converged = true;
    // Deletes first: they free capacity.
    for &id in &work.deleting {
        match agent.instance_delete(id).await {
            Ok(()) => desired::finalize_instance_delete(state, id).await?,
            Err(e) if e.status() == Some(404) => {
                desired::finalize_instance_delete(state, id).await?
            }
            Err(e) => {
                tracing::debug!(%host, instance = %id, error = %e, "delete not confirmed yet");
                converged = false;
            }
        }
    }
    if orphans {
        let ours = state.store.instance_ids_on(host).await?;
        let reported = agent
            .instance_list()
            .await
            .map(|l| l.into_iter().map(|o| o.id));
        match reported {
            Ok(ids) => {
                for id in ids.filter(|id| !ours.contains(id)) {
                    tracing::info!(%host, instance = %id, "deleting an instance the host should not have");
                    if let Err(e) = agent.instance_delete(id).await {
                        tracing::warn!(%host, instance = %id, error = %e, "cannot delete orphan");
                        converged = false;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%host, error = %e, "cannot list instances");
                converged = false;
            }
        }
    }
    // Only instances the agent is behind on were read (see `host_pass`).
    // Their answers are recorded together once every push is out: one
    // write for the pass, not one per instance.
    let mut pushed = Vec::with_capacity(work.to_push.len());
    for p in work.to_push {
        let spec = p.spec;
        if p.applied_generation >= spec.generation && p.status != InstanceStatus::Rebooting {
            continue;
        }
        match agent.instance_put(&spec).await {
            Ok(observed) => pushed.push((spec, observed)),
            Err(e) => {
                tracing::debug!(%host, instance = %spec.id, error = %e, "push failed");
                converged = false;
            }
        }
    }
    state.store.instance_record_pushes(host, &pushed).await?;
    Ok(converged)
}

async fn sync_storage(
    state: &AppState,
    host: HostId,
    agent: &AgentClient,
    down: bool,
    orphans: bool,
) -> ApiResult<bool> {
    if down {
        // A volume's data lives on its node: never forget it while the
        // node is away, or it would leak there when it returns.
        return Ok(false);
    }
    let mut converged = true;
    let pass = state.store.storage_pass(host).await?;
    for &id in &pass.deleting {
        match agent.volume_delete(id).await {
            Ok(()) => desired::finalize_volume_delete(state, id).await?,
            Err(e) if e.status() == Some(404) => desired::finalize_volume_delete(state, id).await?,
            Err(e) => {
                tracing::debug!(%host, volume = %id, error = %e, "delete not confirmed yet");
                converged = false;
            }
        }
    }
    if orphans {
        match agent.volume_list().await {
            Ok(list) => {
                let unknown: Vec<VolumeId> = list
                    .into_iter()
                    .map(|o| o.id)
                    .filter(|id| !pass.live.contains(id))
                    .collect();
                // Only volumes we know were deleted: a volume's data is
                // never dropped on a guess.
                for id in state.store.volumes_deleted(&unknown).await? {
                    if let Err(e) = agent.volume_delete(id).await {
                        tracing::warn!(%host, volume = %id, error = %e, "cannot delete orphan");
                        converged = false;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%host, error = %e, "cannot list volumes");
                converged = false;
            }
        }
    }
    for spec in pass.stale {
        match agent.volume_put(&spec).await {
            Ok(observed) => {
                state.store.volume_observe(host, &observed).await?;
            }
            Err(e) => {
                tracing::debug!(%host, volume = %spec.id, error = %e, "push failed");
                converged = false;
            }
        }
    }
    Ok(converged)
}
