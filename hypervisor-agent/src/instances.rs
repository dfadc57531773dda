//! Realizing instance specs as libvirt domains.
//!
//! Each instance has a slot: the desired spec (persisted in
//! `instances/<id>/spec.json` before the PUT is answered), what was last
//! applied (`applied.json`), and one worker task that converges the host
//! towards the desired spec whenever it changes. A PUT returns at once
//! with the spec accepted; heartbeats report progress. Converging is
//! idempotent: every step checks what exists first, so repeating a spec,
//! restarting the agent or retrying after a crash changes nothing twice.
//!
//! Files of an instance, under `<state_dir>/instances/<id>/`:
//! `spec.json`, `applied.json`, `root.qcow2` (thin overlay on the cached
//! image), `cidata.iso` (+ `cidata.sha256`), `console.log`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::ids::{HostId, InstanceId, NetworkId};
use api::internal::{
    InstanceSpec, ObservedInstance, ObservedInstanceState, PowerState, VolumeAttachmentSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::configdrive::Seed;
use crate::domain::{DomainIdentity, DomainParams, NicParams, Templates, VolumeParams};
use crate::error::{AgentError, Result};
use crate::hypervisor::{DomainRun, Hypervisor, OffReason};
use crate::images::ImageCache;
use crate::{exec, network};

const GIB: u64 = 1 << 30;
/// Backoff for retrying transient failures.
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the agent last applied to an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    generation: u64,
    reboot_count: u64,
    /// Volumes hot-plugged into (or defined on) the domain.
    volumes: Vec<VolumeAttachmentSpec>,
    /// The power state the agent left the domain in: a domain off after
    /// the agent started it was stopped by something else. Absent in
    /// records of older agents, where the desired power stands in.
    #[serde(default)]
    power: Option<PowerState>,
}

#[derive(Debug, Clone, Default)]
struct Status {
    applied: Option<Applied>,
    /// The generation whose converge failed, why, and whether retrying
    /// may help.
    error: Option<(u64, String, bool)>,
}

struct Slot {
    id: InstanceId,
    /// This host's libvirt name and UUID for the instance.
    domain: DomainIdentity,
    dir: PathBuf,
    /// `None` once a delete was requested.
    desired: Mutex<Option<InstanceSpec>>,
    status: Mutex<Status>,
    wake: Notify,
    /// Held while converging or tearing down: one operation at a time.
    op: tokio::sync::Mutex<()>,
    /// Whether a worker task serves this slot.
    worker: std::sync::atomic::AtomicBool,
    /// Set while the agent itself takes the domain down (stop, cold
    /// reboot, teardown): that is not a crash to report.
    agent_stopped: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn desired(&self) -> Option<InstanceSpec> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn deleting(&self) -> bool {
        self.desired().is_none()
    }
    fn set_agent_stopped(&self, v: bool) {
        self.agent_stopped
            .store(v, std::sync::atomic::Ordering::Release)
    }
    fn agent_stopped(&self) -> bool {
        self.agent_stopped
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

pub struct RealizerConfig {
    pub host_id: HostId,
    pub state_dir: PathBuf,
    pub virt_type: &'static str,
    pub initiator_iqn: String,
    pub net: network::HostNet,
    pub shutdown_timeout: Duration,
}

pub struct Realizer {
    cfg: RealizerConfig,
    hv: Arc<Hypervisor>,
    images: ImageCache,
    templates: Templates,
    slots: Mutex<HashMap<InstanceId, Arc<Slot>>>,
    /// Bridges are shared between instances: creating and removing them is
    /// serialized so a removal never races a new user.
    net: tokio::sync::Mutex<()>,
    /// Instances whose domain on this host predates host-scoped names
    /// (see [`DomainIdentity`]): they keep their legacy identity until
    /// torn down.
    legacy: Mutex<HashSet<InstanceId>>,
    /// Woken when an instance converged or failed, so the next heartbeat
    /// goes out now: a re-created VM reads `running` as soon as it runs,
    /// not a heartbeat interval later.
    pub changed: Notify,
}

fn write_private_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(agent_support::fs::write_private_json(path, value)?)
}

use agent_support::fs::read_json;

/// Checks a spec before anything is touched for it.
pub fn validate(spec: &InstanceSpec) -> Result<()> {
    let bad = |m: String| Err(AgentError::Invalid(m));
    if spec.hostname.is_empty()
        || spec.hostname.len() > 63
        || !spec
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return bad(format!(
            "hostname {:?} is not a valid host name",
            spec.hostname
        ));
    }
    if spec.vcpus == 0 || spec.ram_mib < 16 || spec.disk_gib == 0 {
        return bad("vcpus, ram_mib and disk_gib must be positive".into());
    }
    for nic in &spec.nics {
        let ok = nic.mac.len() == 17
            && nic.mac.split(':').count() == 6
            && nic
                .mac
                .split(':')
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return bad(format!("NIC MAC {:?} is malformed", nic.mac));
        }
        if nic.mtu < 576 {
            return bad(format!("NIC MTU {} is too small", nic.mtu));
        }
    }
    let mut seen = HashSet::new();
    for v in &spec.volumes {
        if v.device_index >= 24 {
            return bad(format!(
                "volume device index {} is out of range (0-23)",
                v.device_index
            ));
        }
        if !seen.insert(v.device_index) {
            return bad(format!("two volumes use device index {}", v.device_index));
        }
        if v.portal
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return bad(format!(
                "volume {} portal {:?} is not host:port",
                v.volume_id, v.portal
            ));
        }
    }
    Ok(())
}

impl Realizer {
    pub fn new(
        cfg: RealizerConfig,
        hv: Arc<Hypervisor>,
        images: ImageCache,
        templates: Templates,
    ) -> Result<Arc<Self>> {
        let dir = cfg.state_dir.join("instances");
        std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
        Ok(Arc::new(Self {
            cfg,
            hv,
            images,
            templates,
            slots: Mutex::new(HashMap::new()),
            net: tokio::sync::Mutex::new(()),
            legacy: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }))
    }

    fn instances_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("instances")
    }

    fn slot(&self, id: InstanceId) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn known(&self) -> Vec<InstanceId> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// This host's libvirt identity for instance `id`.
    pub fn identity(&self, id: InstanceId) -> DomainIdentity {
        if self
            .legacy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            DomainIdentity::legacy(id)
        } else {
            DomainIdentity::scoped(self.cfg.host_id, id)
        }
    }

    /// Notes the domains this host created under the legacy identity, so
    /// they are adopted rather than duplicated under a scoped one.
    async fn find_legacy(&self) -> Result<()> {
        let me = self.cfg.host_id.to_string();
        let found = self.hv.strato_domains().await?;
        let mut legacy = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
        for d in found {
            let Some(id) = DomainIdentity::instance_of(&d.name) else {
                continue;
            };
            if d.host.as_deref() == Some(me.as_str()) && DomainIdentity::legacy(id).uuid == d.uuid {
                legacy.insert(id);
            }
        }
        Ok(())
    }

    /// Reloads the specs persisted before a restart and resumes converging
    /// them. Running domains are left as they are: converging a running
    /// instance whose spec did not change touches nothing.
    pub async fn resume(self: &Arc<Self>) -> Result<HashSet<InstanceId>> {
        self.find_legacy().await?;
        let mut resumed = HashSet::new();
        let Ok(entries) = std::fs::read_dir(self.instances_dir()) else {
            return Ok(resumed);
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Some(spec) = read_json::<InstanceSpec>(&dir.join("spec.json")) else {
                continue;
            };
            let applied = read_json::<Applied>(&dir.join("applied.json"));
            tracing::info!(instance = %spec.id, "resuming instance");
            let slot = self.insert_slot(spec.id);
            slot.set_status(|s| s.applied = applied);
            resumed.insert(spec.id);
            *slot.desired.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
            self.ensure_worker(slot);
        }
        Ok(resumed)
    }

    fn insert_slot(&self, id: InstanceId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    id,
                    domain: self.identity(id),
                    dir: self.instances_dir().join(id.to_string()),
                    desired: Mutex::new(None),
                    status: Mutex::new(Status::default()),
                    wake: Notify::new(),
                    op: tokio::sync::Mutex::new(()),
                    worker: std::sync::atomic::AtomicBool::new(false),
                    agent_stopped: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// `PUT /agent/v1/instances/{id}`: accepts the spec and returns what is
    /// observed now; the worker converges in the background. A spec older
    /// than the one held (a late or replayed push) changes nothing.
    pub async fn put(self: &Arc<Self>, spec: InstanceSpec) -> Result<ObservedInstance> {
        validate(&spec)?;
        let slot = self.insert_slot(spec.id);
        let changed = {
            let mut d = slot.desired.lock().unwrap_or_else(|p| p.into_inner());
            match d.as_ref() {
                Some(held) if held == &spec || held.generation > spec.generation => false,
                _ => {
                    *d = Some(spec.clone());
                    true
                }
            }
        };
        if changed {
            std::fs::create_dir_all(&slot.dir).map_err(AgentError::io(&slot.dir))?;
            write_private_json(&slot.dir.join("spec.json"), &spec)?;
            slot.wake.notify_one();
        }
        self.ensure_worker(slot.clone());
        Ok(self.observe(&slot).await)
    }

    /// Starts a worker for `slot` unless one serves it.
    fn ensure_worker(self: &Arc<Self>, slot: Arc<Slot>) {
        if !slot.worker.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move { me.worker(slot).await });
        }
    }

    async fn worker(self: Arc<Self>, slot: Arc<Slot>) {
        let mut retry = RETRY_FIRST;
        loop {
            let notified = slot.wake.notified();
            let Some(spec) = slot.desired() else {
                // The delete handler tears down. A PUT racing this exit sees
                // `worker` false and starts a new worker.
                slot.worker
                    .store(false, std::sync::atomic::Ordering::Release);
                if slot.desired().is_some()
                    && !slot.worker.swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    continue;
                }
                return;
            };
            let mut wait_for = None;
            {
                let _op = slot.op.lock().await;
                if slot.deleting() {
                    continue;
                }
                let status = slot.status();
                let applied = status.applied.as_ref().is_some_and(|a| {
                    a.generation == spec.generation && a.reboot_count == spec.reboot_count
                });
                let failed = status.error.as_ref().filter(|e| e.0 == spec.generation);
                if !applied && failed.is_none_or(|e| e.2) {
                    // "First" means nothing exists yet; after a crash the
                    // domain may exist without an applied record.
                    let existed = self
                        .hv
                        .domain_state(&slot.domain.uuid)
                        .await
                        .map_or(true, |d| d.is_some());
                    let first = status.applied.is_none() && !existed;
                    match self.converge(&slot, &spec).await {
                        Ok(applied) => {
                            if let Err(e) =
                                write_private_json(&slot.dir.join("applied.json"), &applied)
                            {
                                tracing::warn!(instance = %spec.id, error = %e, "cannot record what was applied");
                            }
                            slot.set_status(|s| {
                                s.applied = Some(applied);
                                s.error = None;
                            });
                            retry = RETRY_FIRST;
                            self.changed.notify_one();
                            tracing::info!(instance = %spec.id, generation = spec.generation, "instance converged");
                        }
                        Err(e) => {
                            let transient = e.is_transient();
                            tracing::warn!(instance = %spec.id, generation = spec.generation, error = %e, transient, "instance failed");
                            if first && !slot.deleting() {
                                // Nothing half-created stays behind.
                                if let Err(c) = self.teardown(&slot, Some(&spec), false).await {
                                    tracing::warn!(instance = %spec.id, error = %c, "cleanup after failure incomplete");
                                }
                            }
                            slot.set_status(|s| {
                                s.error = Some((spec.generation, e.to_string(), transient))
                            });
                            self.changed.notify_one();
                            if transient {
                                wait_for = Some(retry);
                                retry = (retry * 2).min(RETRY_MAX);
                            }
                        }
                    }
                }
            }
            match wait_for {
                // Transient failures (libvirt, host tools, I/O) are retried
                // with backoff; bad input waits for a new spec.
                Some(delay) => {
                    let _ = tokio::time::timeout(delay, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// What is true of the instance now.
    async fn observe(&self, slot: &Slot) -> ObservedInstance {
        let domain = self.hv.domain_run(&slot.domain.uuid).await;
        observed(slot, domain)
    }

    pub async fn observe_one(&self, id: InstanceId) -> Option<ObservedInstance> {
        let slot = self.slot(id)?;
        if slot.deleting() {
            return None;
        }
        Some(self.observe(&slot).await)
    }

    pub async fn observe_all(&self) -> Vec<ObservedInstance> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        // One listing for every instance, and one state query per VM of
        // this host (not per domain of the machine).
        let ours = slots.iter().map(|s| s.domain.uuid.clone()).collect();
        let domains: Result<HashMap<String, DomainRun>> = self.hv.domain_runs(ours).await;
        slots
            .iter()
            .filter(|s| !s.deleting())
            .map(|s| {
                let domain = match &domains {
                    Ok(ds) => Ok(ds.get(&s.domain.uuid).copied()),
                    Err(e) => Err(AgentError::Libvirt(e.to_string())),
                };
                observed(s, domain)
            })
            .collect()
    }

    pub fn console_log(&self, id: InstanceId) -> Option<PathBuf> {
        let slot = self.slot(id)?;
        Some(slot.dir.join("console.log"))
    }

    /// `DELETE /agent/v1/instances/{id}`: destroys the domain and removes
    /// everything created for it. Idempotent; waits for a running converge
    /// step to finish (a pending graceful shutdown is cut short).
    pub async fn delete(self: &Arc<Self>, id: InstanceId) -> Result<()> {
        let slot = self.insert_slot(id);
        let spec = {
            let mut d = slot.desired.lock().unwrap_or_else(|p| p.into_inner());
            d.take()
        };
        slot.wake.notify_one();
        let _op = slot.op.lock().await;
        let spec = spec.or_else(|| read_json::<InstanceSpec>(&slot.dir.join("spec.json")));
        self.teardown(&slot, spec.as_ref(), true).await?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let again = slot.desired();
        slot.set_status(|s| *s = Status::default());
        match again {
            None => {
                slots.remove(&id);
            }
            // A PUT arrived while tearing down: it starts from scratch.
            Some(spec) => {
                drop(slots);
                std::fs::create_dir_all(&slot.dir).map_err(AgentError::io(&slot.dir))?;
                write_private_json(&slot.dir.join("spec.json"), &spec)?;
                slot.wake.notify_one();
                self.ensure_worker(slot.clone());
            }
        }
        Ok(())
    }

    /// Removes the domain, its secrets and files. `forget` also removes the
    /// persisted spec (a delete); a failed first create keeps it so the
    /// error stays reportable across restarts.
    async fn teardown(&self, slot: &Slot, spec: Option<&InstanceSpec>, forget: bool) -> Result<()> {
        let id = slot.id;
        let uuid = &slot.domain.uuid;
        slot.set_agent_stopped(true);
        self.hv.destroy(uuid).await?;
        self.hv.undefine(uuid).await?;
        for usage in self.hv.iscsi_secrets(&slot.domain.secret_prefix()).await? {
            self.hv.remove_iscsi_secret(&usage).await?;
        }
        // Gone from libvirt: a re-created instance gets the scoped identity.
        self.legacy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let dir = slot.dir.clone();
        if forget {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(AgentError::io(&dir)(e))
                }
                _ => {}
            }
        } else if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name() != "spec.json" {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Some(spec) = spec {
            self.release_bridges(id, spec).await;
        }
        tracing::info!(instance = %id, "instance torn down");
        Ok(())
    }

    /// Removes the bridges of `spec`'s networks no other instance uses.
    async fn release_bridges(&self, id: InstanceId, spec: &InstanceSpec) {
        let _net = self.net.lock().await;
        let in_use: HashSet<NetworkId> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.id != id)
            .filter_map(|s| s.desired())
            .flat_map(|d| d.nics.into_iter().map(|n| n.network_id))
            .collect();
        for nic in &spec.nics {
            if !in_use.contains(&nic.network_id) {
                if let Err(e) =
                    network::remove_bridge(nic.network_id, nic.vlan, &self.cfg.net).await
                {
                    tracing::warn!(network = %nic.network_id, error = %e, "cannot remove bridge");
                }
            }
        }
    }

    fn volume_params(
        &self,
        domain: &DomainIdentity,
        v: &VolumeAttachmentSpec,
    ) -> Result<VolumeParams> {
        let (host, port) = v
            .portal
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.parse().ok()?,
                ))
            })
            .ok_or_else(|| {
                AgentError::Invalid(format!("portal {:?} is not host:port", v.portal))
            })?;
        Ok(VolumeParams {
            dev: self.templates.volume_dev(v.device_index)?,
            bus: self.templates.volume_bus(),
            iqn: v.iqn.clone(),
            lun: v.lun,
            host,
            port,
            initiator_iqn: self.cfg.initiator_iqn.clone(),
            chap_user: v.chap_user.clone(),
            secret_usage: domain.secret_usage(v.volume_id),
            serial: v
                .volume_id
                .to_string()
                .chars()
                .filter(|c| *c != '-')
                .take(20)
                .collect(),
        })
    }

    /// Brings the host in line with `spec`; returns what was applied.
    async fn converge(&self, slot: &Slot, spec: &InstanceSpec) -> Result<Applied> {
        let id = spec.id;
        let uuid = slot.domain.uuid.clone();
        std::fs::create_dir_all(&slot.dir).map_err(AgentError::io(&slot.dir))?;
        agent_support::fs::set_mode(&slot.dir, 0o755)?;

        // Disks: the cached image and a thin overlay grown to the flavor.
        let image = self.images.ensure(&spec.image).await?;
        let root = slot.dir.join("root.qcow2");
        let want = spec.disk_gib.saturating_mul(GIB);
        if want < image.virtual_size {
            return Err(AgentError::Invalid(format!(
                "the flavor's {} GiB root disk is smaller than image {} ({} bytes)",
                spec.disk_gib, spec.image.id, image.virtual_size
            )));
        }
        if !root.exists() {
            let tmp = slot.dir.join(".root.qcow2");
            let backing = format!("{}", image.path.display());
            exec::run(
                "qemu-img",
                [
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    &backing,
                    tmp.to_str()
                        .ok_or_else(|| AgentError::Invalid("state_dir is not UTF-8".into()))?,
                    &want.to_string(),
                ],
            )
            .await?;
            std::fs::rename(&tmp, &root).map_err(AgentError::io(&root))?;
        }

        // Config drive.
        let iso = slot.dir.join("cidata.iso");
        Seed::for_instance(spec)?.write_iso(&iso).await?;

        // Networks.
        let mut nics = Vec::new();
        {
            let _net = self.net.lock().await;
            for nic in &spec.nics {
                let bridge =
                    network::ensure_bridge(nic.network_id, nic.vlan, nic.mtu, &self.cfg.net)
                        .await?;
                nics.push(NicParams {
                    bridge,
                    mac: nic.mac.to_ascii_lowercase(),
                    mtu: nic.mtu,
                });
            }
        }

        // Volume secrets, then the domain definition with every volume.
        let mut volumes = Vec::new();
        for v in &spec.volumes {
            if !v.chap_user.is_empty() {
                self.hv
                    .set_iscsi_secret(&slot.domain.secret_usage(v.volume_id), &v.chap_secret)
                    .await?;
            }
            volumes.push(self.volume_params(&slot.domain, v)?);
        }
        let params = DomainParams {
            name: slot.domain.name.clone(),
            uuid: uuid.clone(),
            host_id: self.cfg.host_id.to_string(),
            generation: spec.generation,
            virt_type: self.cfg.virt_type,
            vcpus: spec.vcpus,
            memory_kib: spec.ram_mib * 1024,
            root_disk: root.display().to_string(),
            config_drive: iso.display().to_string(),
            console_log: slot.dir.join("console.log").display().to_string(),
            nics,
            volumes: volumes.clone(),
        };
        let xml = self.templates.domain_xml(&params)?;
        // Without a record (a crash right after starting it), the domain
        // is taken to match the spec: no reboot is owed, no volume to unplug.
        let previously = slot.status().applied.unwrap_or_else(|| Applied {
            generation: 0,
            reboot_count: spec.reboot_count,
            volumes: spec.volumes.clone(),
            power: None,
        });
        self.hv.define(xml).await?;

        let running = self.hv.domain_state(&uuid).await?.unwrap_or(false);
        let mut applied = Applied {
            generation: spec.generation,
            reboot_count: spec.reboot_count,
            volumes: spec.volumes.clone(),
            power: Some(spec.power),
        };
        match spec.power {
            // Also how a crashed domain comes back: only a new generation
            // (or reboot) gets here, never the agent on its own.
            PowerState::Running if !running => {
                self.hv.start(&uuid).await?;
                slot.set_agent_stopped(false);
                tracing::info!(instance = %id, "domain started");
            }
            PowerState::Running => {
                self.hotplug(slot, spec, &previously.volumes, &volumes)
                    .await?;
                if spec.reboot_count > previously.reboot_count {
                    // A cold reboot: certain to happen whatever the guest
                    // does, and it boots the current definition.
                    slot.set_agent_stopped(true);
                    self.hv.destroy(&uuid).await?;
                    self.hv.start(&uuid).await?;
                    slot.set_agent_stopped(false);
                    tracing::info!(instance = %id, "domain rebooted");
                }
            }
            PowerState::Stopped if running => {
                self.stop(slot, &uuid).await?;
            }
            PowerState::Stopped => {}
        }
        // Secrets of volumes no longer attached (detached while stopped,
        // or unplugged above) go too.
        let keep: HashSet<String> = spec
            .volumes
            .iter()
            .map(|v| slot.domain.secret_usage(v.volume_id))
            .collect();
        for usage in self.hv.iscsi_secrets(&slot.domain.secret_prefix()).await? {
            if !keep.contains(&usage) {
                self.hv.remove_iscsi_secret(&usage).await?;
            }
        }
        applied.reboot_count = spec.reboot_count;
        Ok(applied)
    }

    /// ACPI shutdown, then destroy after the timeout (or at once when the
    /// instance is being deleted meanwhile).
    async fn stop(&self, slot: &Slot, uuid: &str) -> Result<()> {
        slot.set_agent_stopped(true);
        self.hv.shutdown(uuid).await?;
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        while tokio::time::Instant::now() < deadline && !slot.deleting() {
            if self.hv.domain_state(uuid).await? != Some(true) {
                tracing::info!(instance = uuid, "guest powered off");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::info!(
            instance = uuid,
            "guest did not power off in time; destroying"
        );
        self.hv.destroy(uuid).await
    }

    /// Hot-plugs volumes into the running domain and unplugs removed ones,
    /// judged from the live XML so a crash between the two steps heals.
    async fn hotplug(
        &self,
        slot: &Slot,
        spec: &InstanceSpec,
        previous: &[VolumeAttachmentSpec],
        wanted: &[VolumeParams],
    ) -> Result<()> {
        let uuid = slot.domain.uuid.clone();
        let live = self.hv.live_xml(&uuid).await?.unwrap_or_default();
        let has_target = |xml: &str, dev: &str| {
            xml.contains(&format!("<target dev='{dev}'"))
                || xml.contains(&format!("<target dev=\"{dev}\""))
        };
        let wanted_devs: HashSet<&str> = wanted.iter().map(|v| v.dev.as_str()).collect();
        // Unplug what is no longer wanted.
        for v in previous {
            let params = self.volume_params(&slot.domain, v)?;
            if wanted_devs.contains(params.dev.as_str())
                && spec.volumes.iter().any(|w| w.volume_id == v.volume_id)
            {
                continue;
            }
            if has_target(&live, &params.dev) {
                let xml = self.templates.volume_xml(&params)?;
                self.hv.detach_live(&uuid, xml).await?;
                self.wait_for_target(slot, &uuid, &params.dev, false)
                    .await?;
                tracing::info!(instance = %spec.id, volume = %v.volume_id, dev = params.dev, "volume detached");
            }
            let _ = self
                .hv
                .remove_iscsi_secret(&slot.domain.secret_usage(v.volume_id))
                .await;
        }
        let live = self.hv.live_xml(&uuid).await?.unwrap_or_default();
        for (v, params) in spec.volumes.iter().zip(wanted) {
            if has_target(&live, &params.dev) {
                continue;
            }
            let xml = self.templates.volume_xml(params)?;
            self.hv.attach_live(&uuid, xml).await.map_err(|e| {
                AgentError::Libvirt(format!(
                    "cannot attach volume {} ({}): {e}",
                    v.volume_id, v.portal
                ))
            })?;
            tracing::info!(instance = %spec.id, volume = %v.volume_id, dev = params.dev, "volume attached");
        }
        Ok(())
    }

    async fn wait_for_target(
        &self,
        slot: &Slot,
        uuid: &str,
        dev: &str,
        present: bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let live = self.hv.live_xml(uuid).await?.unwrap_or_default();
            if live.contains(&format!("<target dev='{dev}'")) == present {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline || slot.deleting() {
                return Err(AgentError::Libvirt(format!(
                    "the guest did not release {dev} within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Reconciles with the stack manager's desired state after a start:
    /// instances persisted before the restart that it no longer wants are
    /// deleted, and so are Strato domains this host created that nobody
    /// wants. Pushes that arrived since (already known here) are kept, and
    /// domains of other creators are left alone. A failed delete is logged
    /// and left for the next pass rather than stopping the agent.
    pub async fn adopt(
        self: &Arc<Self>,
        desired: Vec<InstanceSpec>,
        persisted: &HashSet<InstanceId>,
    ) -> Result<()> {
        let wanted: HashSet<InstanceId> = desired.iter().map(|s| s.id).collect();
        for spec in desired {
            if let Err(e) = self.put(spec.clone()).await {
                tracing::warn!(instance = %spec.id, error = %e, "desired instance rejected");
            }
        }
        for id in persisted.iter().filter(|id| !wanted.contains(id)) {
            tracing::info!(instance = %id, "the stack manager no longer wants this instance; deleting");
            if let Err(e) = self.delete(*id).await {
                tracing::warn!(instance = %id, error = %e, "cannot delete an unwanted instance");
            }
        }
        let me = self.cfg.host_id.to_string();
        let known: HashSet<InstanceId> = self.known().into_iter().collect();
        for d in self.hv.strato_domains().await? {
            let Some(id) = DomainIdentity::instance_of(&d.name) else {
                continue;
            };
            if d.host.as_deref() != Some(me.as_str()) {
                tracing::warn!(domain = d.name, creator = ?d.host, "leaving a Strato domain this host did not create");
                continue;
            }
            if wanted.contains(&id) || known.contains(&id) {
                continue;
            }
            // Deleted under the identity it was created with.
            if DomainIdentity::legacy(id).uuid == d.uuid {
                self.legacy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            tracing::info!(instance = %id, "deleting an orphan domain this host created");
            if let Err(e) = self.delete(id).await {
                tracing::warn!(instance = %id, error = %e, "cannot delete an orphan domain");
            }
        }
        Ok(())
    }
}

/// The report on `slot` given its domain's state in libvirt.
fn observed(slot: &Slot, domain: Result<Option<DomainRun>>) -> ObservedInstance {
    let desired = slot.desired();
    let status = slot.status();
    let wanted = desired.as_ref().map_or(0, |d| d.generation);
    // The generation reported is the one applied (or the one that
    // failed): the stack manager keeps pushing until it catches up.
    let mut generation = status.applied.as_ref().map_or(0, |a| a.generation);
    let reboot_count = status.applied.as_ref().map_or(0, |a| a.reboot_count);
    let (state, reason) = match (&status.error, &status.applied) {
        (Some((g, reason, _)), _) if *g == wanted => {
            generation = wanted;
            (ObservedInstanceState::Error, Some(reason.clone()))
        }
        (_, None) => (ObservedInstanceState::Building, None),
        (_, Some(applied)) => {
            let left_running = applied
                .power
                .or(desired.as_ref().map(|d| d.power))
                .is_some_and(|p| p == PowerState::Running);
            domain_report(left_running, slot.agent_stopped(), domain)
        }
    };
    ObservedInstance {
        id: slot.id,
        state,
        generation,
        reboot_count,
        reason,
    }
}

/// What a domain's state means for an instance the agent last left
/// running (`left_running`) or stopped. A domain that went down without
/// the agent taking it down (`agent_stopped`) crashed, unless the guest
/// powered itself off; it stays down and reported `crashed` until a new
/// generation or reboot asks for it again (restart policy, with its
/// backoff, is the stack manager's).
fn domain_report(
    left_running: bool,
    agent_stopped: bool,
    domain: Result<Option<DomainRun>>,
) -> (ObservedInstanceState, Option<String>) {
    match domain {
        Ok(Some(DomainRun::Running)) => (ObservedInstanceState::Running, None),
        Ok(Some(DomainRun::Off(why))) if left_running && !agent_stopped => match why {
            OffReason::Shutdown => (ObservedInstanceState::Stopped, Some(why.describe())),
            _ => (ObservedInstanceState::Crashed, Some(why.describe())),
        },
        Ok(Some(DomainRun::Off(_))) => (ObservedInstanceState::Stopped, None),
        Ok(None) => (
            ObservedInstanceState::Crashed,
            Some("the domain vanished from libvirt".to_string()),
        ),
        Err(e) => (ObservedInstanceState::Error, Some(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_down_behind_the_agents_back_is_a_crash() {
        use ObservedInstanceState as S;
        let off = |r| Ok(Some(DomainRun::Off(r)));
        assert_eq!(
            domain_report(true, false, Ok(Some(DomainRun::Running))).0,
            S::Running
        );
        for why in [
            OffReason::Crashed,
            OffReason::Destroyed,
            OffReason::Panicked,
            OffReason::Daemon,
            OffReason::Other(0),
        ] {
            let (state, reason) = domain_report(true, false, off(why));
            assert_eq!(state, S::Crashed, "{why:?}");
            assert!(reason.is_some());
        }
        let (state, reason) = domain_report(true, false, off(OffReason::Crashed));
        assert_eq!(state, S::Crashed);
        assert!(reason.unwrap_or_default().contains("QEMU exited"));
        // The guest's own poweroff is a stop, not a crash.
        assert_eq!(
            domain_report(true, false, off(OffReason::Shutdown)).0,
            S::Stopped
        );
        // The agent's own stop, reboot or teardown is not a crash either.
        assert_eq!(
            domain_report(true, true, off(OffReason::Destroyed)),
            (S::Stopped, None)
        );
        assert_eq!(
            domain_report(false, false, off(OffReason::Shutdown)),
            (S::Stopped, None)
        );
        let (state, reason) = domain_report(true, false, Ok(None));
        assert_eq!(state, S::Crashed);
        assert_eq!(reason.as_deref(), Some("the domain vanished from libvirt"));
    }

    #[test]
    fn validation_rejects_bad_specs_before_side_effects() {
        let mut s = crate::tests_support::spec();
        validate(&s).unwrap();
        s.hostname = "bad host".into();
        assert!(validate(&s).is_err());
        let mut s = crate::tests_support::spec();
        s.nics[0].mac = "52:54:00:zz:00:01".into();
        assert!(validate(&s).is_err());
        let mut s = crate::tests_support::spec();
        s.vcpus = 0;
        assert!(validate(&s).is_err());
    }
}
