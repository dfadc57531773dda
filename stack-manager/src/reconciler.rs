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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::ids::{HostId, VolumeId};
use api::resources::{HostHealth, HostKind, InstanceStatus};
use api::AgentClient;
use serde_json::json;

use crate::desired;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tasks::{Activator, BackgroundTask, Outcome, TaskError, TaskSpec};

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
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Shared {
                workers: Mutex::new(HashMap::new()),
                unstarted: Mutex::new(Vec::new()),
                starter: Activator::new(),
                orphans: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The host reported something the database does not place there: the
    /// next pass lists the agent and deletes what is not ours.
    pub fn notify_orphans(&self, host: HostId) {
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host);
        self.notify(host);
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

    /// Wakes (starting if needed) the reconciler of `host`.
    pub fn notify(&self, host: HostId) {
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
/// reconciler per host as hosts get work, and wakes every host that has
/// unconverged work now.
pub async fn start(state: &AppState) -> ApiResult<()> {
    let reconciler = &state.reconciler;
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
    for h in state.store.hosts_with_pending_work().await? {
        reconciler.notify(h);
    }
    Ok(())
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
