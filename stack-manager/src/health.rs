//! The health monitor: detection, fencing, evacuation and crash restarts.
//!
//! Hypervisors are not clustered among themselves; this task is what
//! notices that one is gone and brings its instances back elsewhere. One
//! pass every `health.monitor_interval_ms`:
//!
//! 1. **Detection.** A hypervisor whose last heartbeat is older than
//!    `hosts.down_after_secs` becomes `suspected`; if heartbeats return
//!    within `health.suspect_grace_secs` it is `up` again and nothing moved
//!    (flapping is damped).
//! 2. **Fencing, before anything moves.** A host still silent after the
//!    grace is `fencing`: in the same transaction every volume its
//!    instances hold gets a new generation whose spec no longer allows the
//!    host's initiator, so the storage agents refuse its logins and close
//!    its live sessions (the target enforces it, even against a host that
//!    is half alive). Fencing is confirmed when every such volume's storage
//!    node has applied that generation, and, where the host has a machine
//!    behind it, when the provisioner's power driver reports it off. An
//!    unconfirmed step is named on the host and retried; its instances stay
//!    where they are, `unknown`, until it is confirmed.
//! 3. **Evacuation.** A `fenced` host's instances are re-created elsewhere
//!    with the same id, MACs, addresses, keypair, user-data and volumes
//!    (`Store::instance_relocate`); one that no host can take waits in
//!    `pending` and is placed as soon as capacity appears.
//! 4. **Mass-failure guard.** When more than `mass_failure_share` of the
//!    hypervisors (and at least `mass_failure_min_hosts`) were lost within
//!    the window, no new fencing starts until an operator resumes or
//!    evacuates hosts one by one: a partitioned controller must not fence
//!    the whole cloud.
//! 5. **Crash restarts in place**, with Diego's policy: a few immediate
//!    restarts, then a doubling delay up to a cap, reset once it stays up.
//!
//! Every step is an event on the host or the instance (`store::health`).

use std::time::Duration;

use api::ids::HostId;
use api::resources::{DesiredState, HostHealth};
use serde_json::json;

use crate::config::HealthConfig;
use crate::db::now_ms;
use crate::error::ApiResult;
use crate::power::{PowerFence, PowerFences};
use crate::state::AppState;
use crate::store::health::{HealthRow, ToPlace};
use crate::tasks::{BackgroundTask, Outcome, TaskError};

/// The monitor's period, or `None` when self-healing is turned off.
pub fn period(cfg: &HealthConfig) -> Option<Duration> {
    (cfg.monitor_interval_ms > 0).then(|| Duration::from_millis(cfg.monitor_interval_ms))
}

/// The restart delay after the `n`th crash in a row (1-based), or `None`
/// when the policy gives up.
pub fn restart_delay(cfg: &HealthConfig, n: u64) -> Option<Duration> {
    if n > cfg.crash_give_up_after {
        return None;
    }
    if n <= cfg.crash_immediate_restarts {
        return Some(Duration::ZERO);
    }
    let doublings = (n - cfg.crash_immediate_restarts - 1).min(32) as u32;
    let secs = cfg
        .crash_backoff_base_secs
        .saturating_mul(1u64 << doublings)
        .min(cfg.crash_backoff_max_secs);
    Some(Duration::from_secs(secs))
}

/// What one pass did, for the task's details.
#[derive(Debug, Default)]
struct PassCounts {
    suspected: u64,
    recovered: u64,
    fencing_started: u64,
    fenced: u64,
    relocated: u64,
    pending: u64,
    restarts: u64,
    errors: u64,
}

pub struct HealthMonitor {
    pub state: AppState,
    passes: u64,
    totals: PassCounts,
    power: PowerFences,
    /// The lease token of the last pass: power-off results from before a
    /// change of holder are forgotten (the other holder may have moved the
    /// host on meanwhile).
    lease_token: Option<i64>,
    /// When this monitor started (ms): for one heartbeat deadline after
    /// it, no host is judged silent. Heartbeats from before a stack
    /// manager's restart say nothing about the hosts now, and agents need
    /// a heartbeat interval to reach the new process.
    started_at: i64,
    /// When waiting instances were last tried (ms).
    pending_tried_at: i64,
}

/// Instances waiting for a host are tried this often (each try is a
/// transaction per instance), and at once when a host comes up.
const PENDING_RETRY_MS: i64 = 5_000;

impl HealthMonitor {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            passes: 0,
            totals: PassCounts::default(),
            power: PowerFences::default(),
            lease_token: None,
            started_at: now_ms(),
            pending_tried_at: i64::MIN,
        }
    }

    async fn pass(&mut self) -> ApiResult<PassCounts> {
        let token = crate::lease::current_fence().map(|f| f.token);
        if token != self.lease_token {
            self.power = PowerFences::default();
            self.lease_token = token;
        }
        let mut n = PassCounts::default();
        let store = &self.state.store;
        let now = now_ms();
        let deadline = (self.state.config.hosts.down_after_secs as i64) * 1000;
        let hosts = store.health_hypervisors().await?;
        let warming_up = now - self.started_at < deadline;
        let fresh =
            |h: &HealthRow| warming_up || h.last_heartbeat_ms.is_some_and(|t| now - t <= deadline);

        let mut paused = store.evacuation_state().await?.paused;
        if !paused {
            paused = self.guard(&hosts, now, &fresh).await?;
        }
        self.state.metrics.evacuation_paused.set(i64::from(paused));

        for h in &hosts {
            // One host's trouble (a failed statement, an instance that
            // cannot be re-placed) must not hold up every other host.
            if let Err(e) = self.host_step(h, now, paused, fresh(h), &mut n).await {
                n.errors += 1;
                tracing::warn!(host = %h.id, error = %e.message, "health step failed; retrying next pass");
            }
        }
        let waiting_due =
            n.recovered > 0 || now.saturating_sub(self.pending_tried_at) >= PENDING_RETRY_MS;
        let waiting = if waiting_due {
            self.pending_tried_at = now;
            store.instances_to_place(None).await?
        } else {
            Vec::new()
        };
        for p in waiting {
            let id = p.id;
            if let Err(e) = self.relocate(p, None, "its host failed", &mut n).await {
                n.errors += 1;
                tracing::warn!(instance = %id, error = %e.message, "placing a waiting instance failed");
            }
        }
        self.crash_restarts(&mut n).await?;
        if !warming_up {
            self.storage_fail_over(now).await;
        }
        Ok(n)
    }

    /// Replicated volumes whose storage node went silent for
    /// `health.storage_failover_after_secs` move to an in-sync copy, or go
    /// on without the lost one. The copies refuse the
    /// old primary from then on, which fences it at the storage layer
    /// even if it is only partitioned.
    async fn storage_fail_over(&self, now: i64) {
        let cfg = &self.state.config;
        let silent_for = (cfg.health.storage_failover_after_secs as i64) * 1000;
        // An heir must have been heard from more recently than that.
        let alive_since = now - silent_for;
        let hosts = match self
            .state
            .store
            .storage_hosts_to_fail_over(now - silent_for)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot list silent storage nodes");
                return;
            }
        };
        for dead in hosts {
            match self.state.store.storage_fail_over(dead, alive_since).await {
                Ok(wake) => {
                    for h in wake {
                        self.state.reconciler.notify(h);
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %dead, error = %e.message, "storage fail-over failed; retrying next pass")
                }
            }
        }
    }

    /// One look at one hypervisor.
    async fn host_step(
        &self,
        h: &HealthRow,
        now: i64,
        paused: bool,
        fresh: bool,
        n: &mut PassCounts,
    ) -> ApiResult<()> {
        let cfg = &self.state.config.health;
        let silent_for = h.last_heartbeat_ms.map(|t| (now - t) / 1000);
        match h.health {
            HostHealth::Up | HostHealth::Down if !fresh => {
                let message = match silent_for {
                    Some(s) => format!("no heartbeat for {s} s"),
                    None => "no heartbeat yet".to_string(),
                };
                if self
                    .moved(
                        h.id,
                        &[HostHealth::Up, HostHealth::Down],
                        HostHealth::Suspected,
                        &message,
                        "host.suspected",
                    )
                    .await?
                {
                    n.suspected += 1;
                }
            }
            HostHealth::Suspected if fresh => {
                let message = "heartbeats returned during suspicion; nothing was moved";
                if self
                    .moved(
                        h.id,
                        &[HostHealth::Suspected],
                        HostHealth::Up,
                        message,
                        "host.recovered",
                    )
                    .await?
                {
                    n.recovered += 1;
                }
            }
            HostHealth::Suspected
                if !paused
                    && h.since
                        .is_some_and(|s| now - s >= (cfg.suspect_grace_secs as i64) * 1000) =>
            {
                let message = format!(
                    "no heartbeat for {} s: revoking its volumes{}",
                    silent_for.unwrap_or(0),
                    if h.machine_id.is_some() {
                        " and powering it off"
                    } else {
                        ""
                    }
                );
                // Only if no heartbeat landed since this pass read the host.
                let silent_before = now - (self.state.config.hosts.down_after_secs as i64) * 1000;
                if fence_begin(&self.state, h.id, &message, Some(silent_before)).await? {
                    n.fencing_started += 1;
                }
            }
            HostHealth::Fencing if self.fence_step(h, now).await? => {
                n.fenced += 1;
                self.evacuate(h, n).await?;
            }
            HostHealth::Fenced => self.evacuate(h, n).await?,
            _ => {}
        }
        Ok(())
    }

    /// Trips the mass-failure guard when too many hypervisors were lost
    /// within the window (since the guard was last lifted); whether
    /// evacuation is now paused.
    async fn guard(
        &self,
        hosts: &[HealthRow],
        now: i64,
        fresh: &(dyn Fn(&HealthRow) -> bool + Sync),
    ) -> ApiResult<bool> {
        let cfg = &self.state.config.health;
        let resumed = self
            .state
            .store
            .evacuation_resumed_at()
            .await?
            .unwrap_or(i64::MIN);
        let since = (now - (cfg.mass_failure_window_secs as i64) * 1000).max(resumed);
        let lost = hosts
            .iter()
            .filter(|h| match h.health {
                HostHealth::Up | HostHealth::Down => !fresh(h),
                // When it was first found silent, not when it last moved:
                // fencing what was suspected before a resume must not trip
                // the guard again.
                _ => h.lost_at.is_some_and(|s| s >= since),
            })
            .count() as u64;
        let total = hosts.len() as u64;
        let tripped = cfg.mass_failure_share < 1.0
            && lost >= cfg.mass_failure_min_hosts
            && (lost as f64) > cfg.mass_failure_share * (total as f64);
        if !tripped {
            return Ok(false);
        }
        let reason = format!(
            "{lost} of {total} hypervisors lost within {} s (more than {:.0} %): automatic evacuation is paused; \
             evacuate hosts one by one (`strato host evacuate HOST`) or resume (`strato system evacuation resume`)",
            cfg.mass_failure_window_secs,
            cfg.mass_failure_share * 100.0
        );
        if self.state.store.evacuation_pause(&reason).await? {
            tracing::warn!(lost, total, "mass-failure guard tripped: {reason}");
        }
        Ok(true)
    }

    async fn moved(
        &self,
        host: HostId,
        from: &[HostHealth],
        to: HostHealth,
        message: &str,
        event: &str,
    ) -> ApiResult<bool> {
        let reason = (to != HostHealth::Up).then_some(message);
        let moved = self
            .state
            .store
            .host_health_move(host, from, to, reason, event, message)
            .await?;
        if moved {
            tracing::info!(%host, to = to.as_str(), "{message}");
            self.state.scheduler.set_health(host, to);
        }
        Ok(moved)
    }

    /// One look at a fencing host; whether it is now fenced.
    async fn fence_step(&self, h: &HealthRow, now: i64) -> ApiResult<bool> {
        let store = &self.state.store;
        let cfg = &self.state.config.health;
        let overdue = h
            .since
            .is_some_and(|s| now - s >= (cfg.fence_timeout_secs as i64) * 1000);
        let pending = store.host_fence_pending(h.id).await?;
        if !pending.is_empty() {
            for node in pending.iter().filter_map(|u| u.node) {
                self.state.reconciler.notify(node);
            }
            if overdue {
                let first = &pending[0];
                let reason = format!(
                    "fencing unconfirmed: storage node {} has not applied the revocation of volume {}{}; \
                     its instances stay until it does",
                    first.node_name.as_deref().unwrap_or("(none)"),
                    first.volume,
                    if pending.len() > 1 {
                        format!(" (and {} more)", pending.len() - 1)
                    } else {
                        String::new()
                    }
                );
                store
                    .host_health_note(h.id, HostHealth::Fencing, &reason, "host.fence_unconfirmed")
                    .await?;
            }
            return Ok(false);
        }
        let how = match &h.machine_id {
            None => "fenced by its storage targets alone (no power driver): its volumes refuse it"
                .to_string(),
            Some(machine) => match self.power.poll(cfg, h.id, machine) {
                PowerFence::InFlight => return Ok(false),
                PowerFence::Off(how) => {
                    format!("fenced: its volumes refuse it and machine {machine} was {how}")
                }
                PowerFence::Failed(e) => {
                    let reason = format!(
                        "fencing unconfirmed: cannot power off machine {machine}: {e}; its instances stay until it is off"
                    );
                    store
                        .host_health_note(
                            h.id,
                            HostHealth::Fencing,
                            &reason,
                            "host.fence_unconfirmed",
                        )
                        .await?;
                    return Ok(false);
                }
            },
        };
        self.moved(
            h.id,
            &[HostHealth::Fencing],
            HostHealth::Fenced,
            &how,
            "host.fenced",
        )
        .await
    }

    /// Re-creates a fenced host's instances elsewhere; deletes that were
    /// waiting on it finish (it runs nothing any more).
    async fn evacuate(&self, h: &HealthRow, n: &mut PassCounts) -> ApiResult<()> {
        let why = format!("host {} failed and was fenced", h.name);
        for p in self.state.store.instances_to_place(Some(h.id)).await? {
            if p.desired == DesiredState::Deleted {
                crate::desired::finalize_instance_delete(&self.state, p.id).await?;
                continue;
            }
            let id = p.id;
            if let Err(e) = self.relocate(p, Some(h.id), &why, n).await {
                n.errors += 1;
                tracing::warn!(instance = %id, error = %e.message, "re-placing an instance failed");
            }
        }
        Ok(())
    }

    async fn relocate(
        &self,
        p: ToPlace,
        from: Option<HostId>,
        why: &str,
        n: &mut PassCounts,
    ) -> ApiResult<()> {
        if from.is_none() && p.desired == DesiredState::Deleted {
            crate::desired::finalize_instance_delete(&self.state, p.id).await?;
            return Ok(());
        }
        let placed = relocate(&self.state, p, from, why).await?;
        if placed {
            n.relocated += 1;
        } else {
            n.pending += 1;
        }
        Ok(())
    }

    async fn crash_restarts(&self, n: &mut PassCounts) -> ApiResult<()> {
        let cfg = &self.state.config.health;
        let store = &self.state.store;
        let now = now_ms();
        for c in store.instances_crashed().await? {
            match c.restart_at {
                None => {
                    let count = c.crash_count + 1;
                    match restart_delay(cfg, count) {
                        Some(d) => {
                            let message = format!(
                                "crashed ({count} in a row); restarting {}",
                                if d.is_zero() {
                                    "now".to_string()
                                } else {
                                    format!("in {} s", d.as_secs())
                                }
                            );
                            store
                                .instance_crash_schedule(c.id, now + d.as_millis() as i64, &message)
                                .await?;
                            if d.is_zero()
                                && store
                                    .instance_crash_restart(
                                        c.id,
                                        "restarted in place after a crash",
                                    )
                                    .await?
                            {
                                n.restarts += 1;
                                self.state.reconciler.notify(c.host);
                            }
                        }
                        None => {
                            let message = format!(
                                "crashed {count} times in a row: no more restarts (start it to try again)"
                            );
                            store
                                .instance_crash_schedule(
                                    c.id,
                                    crate::store::health::GAVE_UP,
                                    &message,
                                )
                                .await?;
                        }
                    }
                }
                Some(at) if at <= now => {
                    if store
                        .instance_crash_restart(c.id, "restarted in place after a crash")
                        .await?
                    {
                        n.restarts += 1;
                        self.state.reconciler.notify(c.host);
                    }
                }
                Some(_) => {}
            }
        }
        store
            .instance_crashes_reset((cfg.crash_reset_after_secs as i64) * 1000)
            .await?;
        Ok(())
    }
}

/// Starts fencing `host` and wakes the storage nodes that must revoke it;
/// false when it was fencing or fenced already.
pub async fn fence_begin(
    state: &AppState,
    host: HostId,
    message: &str,
    silent_before: Option<i64>,
) -> ApiResult<bool> {
    let Some(nodes) = state
        .store
        .host_fence_begin(host, message, silent_before)
        .await?
    else {
        return Ok(false);
    };
    tracing::warn!(%host, "fencing: {message}");
    state.scheduler.set_health(host, HostHealth::Fencing);
    for node in nodes {
        state.reconciler.notify(node);
    }
    // The host itself: it runs nothing any more (see `reconciler`).
    state.reconciler.notify(host);
    Ok(true)
}

/// Re-places one instance (see `Store::instance_relocate`) and tells the
/// scheduler's view and the reconcilers; whether a host took it.
pub async fn relocate(
    state: &AppState,
    mut p: ToPlace,
    from: Option<HostId>,
    why: &str,
) -> ApiResult<bool> {
    if let Some(group) = p.group {
        // Ranked against where the group is now; the transaction checks
        // again under the group's lock.
        let (hosts, racks) = state.store.group_footprint(group).await?;
        p.demand.group_hosts = hosts;
        p.demand.group_racks = racks;
        if let Some(f) = from {
            p.demand.group_hosts.remove(&f);
        }
    }
    let ranking = state.scheduler.rank_instance(&p.demand);
    let placement = state.scheduler.placement(ranking);
    let done = state
        .store
        .instance_relocate(p.id, from, p.demand, placement, why)
        .await?;
    if let Some(c) = done.released {
        state.scheduler.apply(c.reversed());
    }
    for node in &done.storage {
        state.reconciler.notify(*node);
    }
    match done.placed {
        Some(c) => {
            state.scheduler.apply(c);
            state.reconciler.notify(c.host);
            tracing::info!(instance = %p.id, to = %c.host, "{why}: re-created elsewhere");
            Ok(true)
        }
        None => Ok(false),
    }
}

impl BackgroundTask for HealthMonitor {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        self.passes += 1;
        let n = self
            .pass()
            .await
            .map_err(|e| format!("health pass: {}", e.message))?;
        let t = &mut self.totals;
        t.suspected += n.suspected;
        t.recovered += n.recovered;
        t.fencing_started += n.fencing_started;
        t.fenced += n.fenced;
        t.relocated += n.relocated;
        t.restarts += n.restarts;
        Ok(Outcome::ran(json!({
            "passes": self.passes,
            "suspected_total": t.suspected,
            "recovered_total": t.recovered,
            "fencing_started_total": t.fencing_started,
            "fenced_total": t.fenced,
            "relocated_total": t.relocated,
            "pending_now": n.pending,
            "crash_restarts_total": t.restarts,
            "errors_now": n.errors,
        })))
    }
}
