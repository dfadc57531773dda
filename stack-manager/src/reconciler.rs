//! Per-host reconcilers: push desired state to each agent until what it
//! observes matches.
//!
//! One task per host with work, woken by [`Reconciler::notify`] whenever
//! that host's desired state changes and otherwise every
//! `resync_interval_secs`, so a missed update or an agent restart heals on
//! its own. Every push is an idempotent PUT or DELETE by id; a failed push
//! is retried with backoff. Tasks start lazily, so 20,000 idle hosts cost
//! nothing.
//!
//! Deletion: an instance whose desired state is `deleted` is finalized
//! (claims, addresses and quota released) only once its agent confirmed the
//! DELETE. While its host is down it stays `deleting`: the host may still be
//! running it, and its address and volumes must not be reused before the
//! host is fenced.
//!
//! Orphans: what an agent reports but the database does not place on that
//! host (deleted meanwhile, or moved) is deleted on the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api::ids::{HostId, VolumeId};
use api::resources::{HostKind, InstanceStatus};
use api::AgentClient;
use tokio::sync::Notify;

use crate::config::Config;
use crate::db::{Db, RowExt};
use crate::desired;
use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    config: Arc<Config>,
    workers: Mutex<HashMap<HostId, Arc<Notify>>>,
    /// Hosts whose last report named something not placed there.
    orphans: Mutex<std::collections::HashSet<HostId>>,
    state: OnceLock<AppState>,
}

impl Reconciler {
    pub fn new(db: Db, config: Arc<Config>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                config,
                workers: Mutex::new(HashMap::new()),
                orphans: Mutex::new(Default::default()),
                state: OnceLock::new(),
            }),
        }
    }

    /// Starts workers for every host that has unconverged work, and the
    /// periodic scheduler refresh.
    pub async fn start(&self, state: AppState) -> Result<(), sqlx::Error> {
        let _ = self.inner.state.set(state.clone());
        let rows = sqlx::query(
            "SELECT DISTINCT host_id FROM instances WHERE host_id IS NOT NULL AND deleted_at IS NULL \
               AND (applied_generation < generation OR desired = 'deleted' OR status = 'building') \
             UNION SELECT DISTINCT host_id FROM volumes WHERE host_id IS NOT NULL AND deleted_at IS NULL \
               AND (applied_generation < generation OR status = 'deleting')",
        )
        .fetch_all(&self.inner.db.pool)
        .await?;
        for r in &rows {
            if let Ok(h) = r.id::<HostId>("host_id") {
                self.notify(h);
            }
        }
        let refresh_state = state.clone();
        tokio::spawn(async move {
            let every =
                Duration::from_secs(refresh_state.config.hosts.heartbeat_interval_secs.max(1) * 5);
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = refresh_state.scheduler.refresh(&refresh_state.db).await {
                    tracing::warn!(error = %e, "scheduler refresh failed");
                }
            }
        });
        Ok(())
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
        if let Some(n) = workers.get(&host) {
            n.notify_one();
            return;
        }
        let Some(state) = self.inner.state.get().cloned() else {
            return;
        };
        let notify = Arc::new(Notify::new());
        notify.notify_one();
        workers.insert(host, notify.clone());
        let resync = Duration::from_secs(self.inner.config.hosts.resync_interval_secs.max(1));
        tokio::spawn(worker(state, host, notify, resync));
    }
}

async fn worker(state: AppState, host: HostId, notify: Arc<Notify>, resync: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let wait = tokio::time::timeout(resync, notify.notified()).await;
        let _ = wait; // woken or resync: either way, converge.
        loop {
            match sync_host(&state, host).await {
                Ok(Sync::HostGone) => {
                    state.reconciler.forget(host);
                    return;
                }
                Ok(Sync::Converged) => {
                    backoff = Duration::from_millis(200);
                    break;
                }
                Ok(Sync::Pending) => {
                    // The agent is unreachable or behind right now; retry soon.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if backoff >= Duration::from_secs(10) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "reconcile failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    break;
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
    let converged = match pass.kind {
        HostKind::Hypervisor => {
            sync_hypervisor(state, host, &agent, down, orphans, pass.work).await?
        }
        HostKind::Storage => sync_storage(state, host, &agent, down, orphans).await?,
    };
    Ok(Sync::from(converged))
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
