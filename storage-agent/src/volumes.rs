//! Volumes on this node. Each volume has a slot: the desired spec, the
//! observed status, and one operation lock under which everything that
//! touches the volume's files runs, so a PUT, a retry and a DELETE never
//! interleave.
//!
//! Pool layout, one directory per volume (`<pool>/<id>/`, 0700):
//! - `spec.json` (0600: it holds the CHAP secret): the spec last applied;
//! - `data`: the sparse data file the logical unit serves;
//! - `pr.json`: persistent reservations with APTPL, and the admissions
//!   that fence the volume to its allowed initiators (always kept);
//! - `snapshots/<snapshot>.raw`: point-in-time copies.
//!
//! Work files start with `.` and are replaced by rename, so a crash leaves
//! either the old state or the new one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_support::fs::{read_json, write_private_json};
use agent_support::images::ImageCache;
use api::ids::{SnapshotId, VolumeId};
use api::internal::{
    ObservedReplication, ObservedVolume, ObservedVolumeState, ReplicaRole, VolumeSourceSpec,
    VolumeSpec,
};
use scsi::{DeviceInfo, LogicalUnit};

use crate::error::{Result, VolumeError};
use crate::exports::{Access, Exports};
use crate::pool;
use crate::replication::{PrimaryConfig, ReplicaCopy, ReplicaRegistry, Replicated};

const BLOCK: u64 = 512;

#[derive(Debug, Clone)]
struct Status {
    state: ObservedVolumeState,
    generation: u64,
    size_bytes: u64,
    snapshots: Vec<SnapshotId>,
    reason: Option<String>,
}

struct Slot {
    id: VolumeId,
    dir: PathBuf,
    /// `None` once a delete is asked for.
    desired: Mutex<Option<VolumeSpec>>,
    status: Mutex<Status>,
    /// The operation lock; it also holds the open logical unit and the IQN
    /// it is exported as.
    op: Arc<tokio::sync::Mutex<Realized>>,
    failures: AtomicU32,
    /// A retry is already scheduled: failures never start a second chain.
    retry_pending: AtomicBool,
    /// Persisted but not in the stack manager's desired state: kept,
    /// unexported, and left alone until a spec or a delete arrives.
    parked: AtomicBool,
    /// This copy's part in a replicated volume. Changed only under `op`;
    /// its own lock lets observation read it without waiting for `op`.
    part: Mutex<Part>,
}

impl Slot {
    fn part(&self) -> Part {
        lock(&self.part).clone()
    }
}

#[derive(Clone, Default)]
enum Part {
    #[default]
    Single,
    Primary(Arc<Replicated>),
    Replica(Arc<ReplicaCopy>),
}

#[derive(Default)]
struct Realized {
    lu: Option<Arc<LogicalUnit>>,
    exported_as: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Volumes {
    pool: PathBuf,
    images: ImageCache,
    exports: Arc<Exports>,
    target: Arc<iscsi::Server>,
    slots: Mutex<HashMap<VolumeId, Arc<Slot>>>,
    replicas: Arc<ReplicaRegistry>,
    resync_bytes_per_sec: u64,
    /// Generation each volume had when deleted: a late PUT of it (a retry,
    /// a stale push) must not bring the volume back.
    deleted: Mutex<HashMap<VolumeId, u64>>,
}

/// What a DELETE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Done,
    NotFound,
    /// A newer PUT arrived while the delete waited: the volume stays.
    Superseded,
}

/// SCSI identity of a volume: stable across restarts and unique per volume,
/// so initiators and multipath recognise the same disk.
pub fn device_info(id: VolumeId) -> DeviceInfo {
    let uuid = id.0.as_bytes();
    let mut naa = [0u8; 16];
    // NAA 6 (IEEE Registered Extended) with a locally administered company
    // id; the 100 bits after it are the volume's UUID.
    naa[0] = 0x6A;
    naa[1] = 0x5A;
    naa[2] = 0x70;
    naa[3..16].copy_from_slice(&uuid[..13]);
    DeviceInfo {
        vendor: "STRATO".into(),
        product: "VOLUME".into(),
        revision: "0001".into(),
        serial: id.0.simple().to_string(),
        naa,
        block_size: BLOCK as u32,
    }
}

fn validate(spec: &VolumeSpec) -> Result<()> {
    let bad = |m: String| Err(VolumeError::Invalid(m));
    if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(BLOCK) {
        return bad(format!(
            "size {} is not a positive multiple of {BLOCK} bytes",
            spec.size_bytes
        ));
    }
    if !valid_iqn(&spec.iqn) {
        return bad(format!("{:?} is not an iSCSI qualified name", spec.iqn));
    }
    if spec.chap_user.is_empty() != spec.chap_secret.is_empty() {
        return bad("CHAP needs both a user and a secret".into());
    }
    // RFC 7143 §12.1.3: secrets shorter than 12 bytes are too weak to offer.
    if !spec.chap_secret.is_empty() && !(12..=255).contains(&spec.chap_secret.len()) {
        return bad("the CHAP secret must be 12 to 255 bytes".into());
    }
    if spec.chap_user.len() > 255 {
        return bad("the CHAP user name is longer than 255 bytes".into());
    }
    if let Some(i) = spec.allowed_initiators.iter().find(|i| !valid_iqn(i)) {
        return bad(format!("allowed initiator {i:?} is not an iSCSI name"));
    }
    Ok(())
}

/// `iqn.` or `eui.` names of the RFC 3722 character set, bounded.
fn valid_iqn(s: &str) -> bool {
    (s.starts_with("iqn.") || s.starts_with("eui.") || s.starts_with("naa."))
        && s.len() <= 223
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

fn snapshot_file(dir: &Path, id: SnapshotId) -> PathBuf {
    dir.join("snapshots").join(format!("{id}.raw"))
}

fn present_snapshots(dir: &Path) -> Vec<SnapshotId> {
    let mut out: Vec<SnapshotId> = std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".raw")?.parse().ok())
        .collect();
    out.sort();
    out
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumeError::Invalid(format!("worker failed: {e}")))?
}

impl Volumes {
    pub fn new(
        pool: PathBuf,
        images: ImageCache,
        exports: Arc<Exports>,
        target: Arc<iscsi::Server>,
        replicas: Arc<ReplicaRegistry>,
        resync_bytes_per_sec: u64,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&pool).map_err(VolumeError::io(&pool))?;
        agent_support::fs::set_mode(&pool, 0o700)?;
        Ok(Arc::new(Self {
            pool,
            images,
            exports,
            target,
            slots: Mutex::new(HashMap::new()),
            replicas,
            resync_bytes_per_sec,
            deleted: Mutex::new(HashMap::new()),
        }))
    }

    fn new_slot(&self, id: VolumeId) -> Arc<Slot> {
        Arc::new(Slot {
            id,
            dir: self.pool.join(id.to_string()),
            desired: Mutex::new(None),
            status: Mutex::new(Status {
                state: ObservedVolumeState::Creating,
                generation: 0,
                size_bytes: 0,
                snapshots: Vec::new(),
                reason: None,
            }),
            op: Arc::new(tokio::sync::Mutex::new(Realized::default())),
            failures: AtomicU32::new(0),
            retry_pending: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            part: Mutex::new(Part::Single),
        })
    }

    fn observed(slot: &Slot) -> ObservedVolume {
        let s = lock(&slot.status).clone();
        ObservedVolume {
            id: slot.id,
            state: s.state,
            generation: s.generation,
            size_bytes: s.size_bytes,
            snapshots: s.snapshots,
            reason: s.reason,
            lun: 0,
            replication: match slot.part() {
                Part::Single => None,
                Part::Primary(p) => Some(ObservedReplication {
                    epoch: p.epoch(),
                    role: ReplicaRole::Primary,
                    peers: p.observe(),
                }),
                Part::Replica(c) => Some(ObservedReplication {
                    epoch: c.epoch(),
                    role: ReplicaRole::Replica,
                    peers: Vec::new(),
                }),
            },
        }
    }

    pub fn observe_all(&self) -> Vec<ObservedVolume> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter(|s| lock(&s.desired).is_some() && !s.parked.load(Ordering::Relaxed))
            .map(|s| Self::observed(s))
            .collect()
    }

    pub fn observe(&self, id: VolumeId) -> Option<ObservedVolume> {
        let slot = lock(&self.slots).get(&id).cloned()?;
        let wanted = lock(&slot.desired).is_some() && !slot.parked.load(Ordering::Relaxed);
        wanted.then(|| Self::observed(&slot))
    }

    /// Records `spec` as desired. Under the slots lock, so a concurrent
    /// delete either sees it (and stands down) or has already removed the
    /// slot (and this creates a fresh one).
    fn set_desired(&self, spec: VolumeSpec) -> Result<(Arc<Slot>, bool)> {
        let mut slots = lock(&self.slots);
        if let Some(&gone) = lock(&self.deleted).get(&spec.id) {
            if spec.generation <= gone {
                return Err(VolumeError::Gone(format!(
                    "volume {} was deleted at generation {gone}",
                    spec.id
                )));
            }
        }
        let slot = slots
            .entry(spec.id)
            .or_insert_with(|| self.new_slot(spec.id))
            .clone();
        let mut desired = lock(&slot.desired);
        if let Some(held) = desired.as_ref() {
            if held.generation > spec.generation {
                // A late push of an older spec: the newer one stands.
                return Ok((slot.clone(), false));
            }
        }
        *desired = Some(spec);
        slot.parked.store(false, Ordering::Relaxed);
        drop(desired);
        Ok((slot, true))
    }

    /// Takes a new desired spec and converges towards it. Answers once the
    /// volume has converged or after `wait`, whichever is first; heartbeats
    /// report the rest.
    pub async fn put(self: &Arc<Self>, spec: VolumeSpec, wait: Duration) -> Result<ObservedVolume> {
        validate(&spec)?;
        let (slot, changed) = self.set_desired(spec)?;
        if changed {
            let task = tokio::spawn(self.clone().converge(slot.clone()));
            let _ = tokio::time::timeout(wait, task).await;
        }
        Ok(Self::observed(&slot))
    }

    /// Volumes persisted before a restart are served again at once, before
    /// the stack manager is even reachable: initiators reconnect to them.
    /// Each converges on its own task, so one slow volume (an image still
    /// to fetch) delays no other.
    pub async fn resume(self: &Arc<Self>) -> HashSet<VolumeId> {
        let mut found = HashSet::new();
        let entries: Vec<_> = std::fs::read_dir(&self.pool)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        let mut tasks = Vec::new();
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".deleting-") {
                // A delete interrupted by a crash: finish it.
                let path = e.path();
                tasks.push(tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(path);
                }));
                continue;
            }
            let Ok(id) = name.parse::<VolumeId>() else {
                continue;
            };
            let Some(spec) = read_json::<VolumeSpec>(&e.path().join("spec.json")) else {
                continue;
            };
            if spec.id != id {
                continue;
            }
            found.insert(id);
            if let Ok((slot, true)) = self.set_desired(spec) {
                tasks.push(tokio::spawn(self.clone().converge(slot)));
            }
        }
        // Exporting is quick; waiting for the batch means initiators find
        // their targets before the agent answers anyone.
        let _ = tokio::time::timeout(Duration::from_secs(10), futures_join(tasks)).await;
        found
    }

    /// Adoption after a restart: the stack manager's desired state wins.
    /// A persisted volume it does not list is unexported but its data is
    /// kept: only an explicit DELETE destroys a volume.
    pub async fn adopt(self: &Arc<Self>, desired: Vec<VolumeSpec>, persisted: &HashSet<VolumeId>) {
        let wanted: HashSet<VolumeId> = desired.iter().map(|s| s.id).collect();
        for spec in desired {
            let id = spec.id;
            if let Err(e) = self.put(spec, Duration::from_secs(0)).await {
                tracing::warn!(volume = %id, error = %e, "desired spec refused");
            }
        }
        for id in persisted.iter().filter(|id| !wanted.contains(id)) {
            let Some(slot) = lock(&self.slots).get(id).cloned() else {
                continue;
            };
            tracing::warn!(volume = %id, "volume not in the desired state: unexported, data kept");
            slot.parked.store(true, Ordering::Relaxed);
            let mut realized = slot.op.lock().await;
            self.unexport(&mut realized).await;
        }
    }

    async fn unexport(&self, realized: &mut Realized) {
        if let Some(iqn) = realized.exported_as.take() {
            self.exports.remove(&iqn);
            let closed = self.close_sessions(&iqn, Vec::new()).await;
            tracing::info!(%iqn, sessions = closed, "unexported");
        }
    }

    /// Ends the sessions on `iqn` of initiators not in `keep`. Off the
    /// runtime: the target waits for each session's thread to stop.
    async fn close_sessions(&self, iqn: &str, keep: Vec<String>) -> usize {
        let (target, iqn) = (self.target.clone(), iqn.to_string());
        tokio::task::spawn_blocking(move || {
            target.close_sessions(&iqn, &|i| keep.iter().any(|k| k == i))
        })
        .await
        .unwrap_or(0)
    }

    /// A retry of [`Self::converge`], boxed: the future refers to itself.
    fn converge_later(
        self: Arc<Self>,
        slot: Arc<Slot>,
        delay: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            slot.retry_pending.store(false, Ordering::Relaxed);
            self.converge(slot).await;
        })
    }

    async fn converge(self: Arc<Self>, slot: Arc<Slot>) {
        let mut realized = slot.op.lock().await;
        if slot.parked.load(Ordering::Relaxed) {
            return;
        }
        let Some(spec) = lock(&slot.desired).clone() else {
            return;
        };
        match self.apply(&slot, &spec, &mut realized).await {
            Ok(()) => {
                slot.failures.store(0, Ordering::Relaxed);
                let size = match (&realized.lu, spec.replication.as_ref()) {
                    (Some(l), _) => l.size_bytes(),
                    (None, Some(_)) => spec.size_bytes,
                    (None, None) => 0,
                };
                *lock(&slot.status) = Status {
                    state: ObservedVolumeState::Available,
                    generation: spec.generation,
                    size_bytes: size,
                    snapshots: present_snapshots(&slot.dir),
                    reason: None,
                };
            }
            Err(e) => {
                tracing::warn!(volume = %slot.id, error = %e, "cannot realize volume");
                {
                    // The generation stays the last one fully applied, so
                    // the stack manager keeps pushing this one.
                    let mut st = lock(&slot.status);
                    st.state = ObservedVolumeState::Error;
                    st.reason = Some(e.to_string());
                    st.snapshots = present_snapshots(&slot.dir);
                }
                if e.is_transient() && !slot.retry_pending.swap(true, Ordering::Relaxed) {
                    let n = slot.failures.fetch_add(1, Ordering::Relaxed).min(5);
                    let delay = Duration::from_secs(10 << n).min(Duration::from_secs(300));
                    let retry = self.clone().converge_later(slot.clone(), delay);
                    tokio::spawn(retry);
                }
            }
        }
    }

    /// Access first: whatever else fails, the ACL and CHAP of the spec are
    /// in force and revoked initiators are gone. Then snapshots (of the
    /// volume as it is), then growth.
    async fn apply(&self, slot: &Slot, spec: &VolumeSpec, realized: &mut Realized) -> Result<()> {
        let dir = slot.dir.clone();
        let data = dir.join("data");
        let d = dir.clone();
        let spec_copy = spec.clone();
        let exists = blocking(move || {
            if !d.try_exists().map_err(VolumeError::io(&d))? {
                std::fs::create_dir_all(d.join("snapshots")).map_err(VolumeError::io(&d))?;
                agent_support::fs::set_mode(&d, 0o700)?;
                if let Some(parent) = d.parent() {
                    pool::sync_dir(parent).map_err(VolumeError::io(parent))?;
                }
            }
            write_private_json(&d.join("spec.json"), &spec_copy)?;
            let data = d.join("data");
            data.try_exists().map_err(VolumeError::io(&data))
        })
        .await?;
        if !exists {
            self.create_data(spec, &dir, &data).await?;
        }
        if let Some(r) = spec
            .replication
            .as_ref()
            .filter(|r| r.role == ReplicaRole::Replica)
        {
            return self.apply_replica(slot, spec, r, realized).await;
        }
        if matches!(slot.part(), Part::Replica(_)) {
            // Promoted: no older primary's change may land from now on.
            self.retire_part(slot);
        }
        let replicated = spec.replication.as_ref().map(|r| PrimaryConfig {
            epoch: r.epoch,
            key: r.key.clone(),
            peers: r.peers.clone(),
            resync_bytes_per_sec: self.resync_bytes_per_sec,
        });
        let primary = match slot.part() {
            Part::Primary(p) => Some(p),
            _ => None,
        };
        if realized.lu.is_some() && primary.is_some() != replicated.is_some() {
            // Replication turned on or off: the unit is reopened on the
            // other kind of medium.
            self.unexport(realized).await;
            realized.lu = None;
            self.retire_part(slot);
        } else if let (Some(p), Some(config)) = (primary, replicated.clone()) {
            blocking(move || p.configure(config).map_err(VolumeError::io("replication"))).await?;
        }
        let lu = match &realized.lu {
            Some(lu) => lu.clone(),
            None => {
                let (d, pr, info) = (data.clone(), dir.join("pr.json"), device_info(spec.id));
                let (id, dir2) = (spec.id, dir.clone());
                let (lu, primary) = blocking(move || match replicated {
                    Some(config) => {
                        let medium =
                            Replicated::open(id, &d, &dir2, config).map_err(VolumeError::io(&d))?;
                        let lu = LogicalUnit::with_medium(medium.clone(), info, Some(pr))?;
                        Ok((lu, Some(medium)))
                    }
                    None => Ok((LogicalUnit::open(&d, info, Some(pr))?, None)),
                })
                .await?;
                let lu = Arc::new(lu);
                realized.lu = Some(lu.clone());
                *lock(&slot.part) = primary.map_or(Part::Single, Part::Primary);
                lu
            }
        };
        let access = Access {
            chap_user: spec.chap_user.clone(),
            chap_secret: spec.chap_secret.clone(),
            allowed_initiators: spec.allowed_initiators.clone(),
        };
        if realized.exported_as.as_deref() != Some(spec.iqn.as_str()) {
            self.unexport(realized).await;
        }
        // The reservation-level fence moves with the ACL: admissions before
        // the ACL lets a new host in (its first write must not conflict),
        // revocations before its sessions are closed (a command racing the
        // close gets RESERVATION CONFLICT, not the medium).
        let (l, allowed) = (lu.clone(), spec.allowed_initiators.clone());
        // A failure here (the state file cannot be written) still lets the
        // ACL below take effect; the error then fails the apply, to be retried.
        let fenced = blocking(move || Ok(crate::exports::fence(&l, &allowed)?)).await;
        if let Ok(names) = &fenced {
            if !names.is_empty() {
                tracing::info!(volume = %spec.id, ?names, "initiator registrations preempted");
            }
        }
        let revoked = self.exports.upsert(&spec.iqn, &lu, access);
        realized.exported_as = Some(spec.iqn.clone());
        if !revoked.is_empty() {
            // Fencing: an initiator that lost access must lose its live
            // sessions too, not just future logins.
            let closed = self
                .close_sessions(&spec.iqn, spec.allowed_initiators.clone())
                .await;
            tracing::info!(volume = %spec.id, ?revoked, sessions = closed, "initiator access revoked");
        }
        fenced?;
        self.converge_snapshots(spec, &dir, &data, &lu).await?;
        let current = lu.size_bytes();
        if spec.size_bytes > current {
            let (l, size) = (lu.clone(), spec.size_bytes);
            blocking(move || Ok(l.resize(size)?)).await?;
            tracing::info!(volume = %spec.id, from = current, to = spec.size_bytes, "grown");
        } else if spec.size_bytes < current {
            return Err(VolumeError::Invalid(format!(
                "volumes only grow: {} bytes asked, {current} held",
                spec.size_bytes
            )));
        }
        Ok(())
    }

    /// A replica serves no initiator: it is unexported and applies what its
    /// primary streams; it grows with its spec.
    async fn apply_replica(
        &self,
        slot: &Slot,
        spec: &VolumeSpec,
        r: &api::internal::ReplicationSpec,
        realized: &mut Realized,
    ) -> Result<()> {
        if matches!(slot.part(), Part::Primary(_)) {
            // Demoted: a newer primary exists; nothing waiting here may
            // complete, and the sessions it holds can then be closed.
            self.retire_part(slot);
        }
        self.unexport(realized).await;
        realized.lu = None;
        let data = slot.dir.join("data");
        let (d, size) = (data.clone(), spec.size_bytes);
        blocking(move || {
            let len = std::fs::metadata(&d).map_err(VolumeError::io(&d))?.len();
            if size > len {
                pool::resize_synced(&d, size).map_err(VolumeError::io(&d))?;
            }
            Ok(())
        })
        .await?;
        match slot.part() {
            Part::Replica(copy) => copy
                .configure(r.epoch, &r.key)
                .map_err(VolumeError::io(&slot.dir))?,
            _ => {
                let (id, dir, epoch, key) = (spec.id, slot.dir.clone(), r.epoch, r.key.clone());
                let copy = blocking(move || {
                    ReplicaCopy::open(id, &data, &dir, epoch, &key).map_err(VolumeError::io(&dir))
                })
                .await?;
                self.replicas.insert(copy.clone());
                *lock(&slot.part) = Part::Replica(copy);
            }
        }
        Ok(())
    }

    /// Ends this copy's part in a replicated volume: a primary is closed
    /// (the writes waiting on it fail), a replica stops taking changes.
    /// Under the slot's operation lock.
    fn retire_part(&self, slot: &Slot) {
        match std::mem::take(&mut *lock(&slot.part)) {
            Part::Single => {}
            Part::Primary(p) => p.close(),
            Part::Replica(_) => self.replicas.remove(slot.id),
        }
    }

    async fn create_data(&self, spec: &VolumeSpec, dir: &Path, data: &Path) -> Result<()> {
        let tmp = dir.join(".data.tmp");
        let result = self.fill(spec, &tmp).await;
        let (t, d, dir) = (tmp.clone(), data.to_path_buf(), dir.to_path_buf());
        blocking(move || {
            if let Err(e) = result {
                let _ = std::fs::remove_file(&t);
                return Err(e);
            }
            // Never over an existing file: a stat that failed for another
            // reason than absence must not cost a tenant their data.
            std::fs::hard_link(&t, &d).map_err(VolumeError::io(&d))?;
            std::fs::remove_file(&t).map_err(VolumeError::io(&t))?;
            pool::sync_dir(&dir).map_err(VolumeError::io(&dir))
        })
        .await?;
        tracing::info!(volume = %spec.id, size = spec.size_bytes, "created");
        Ok(())
    }

    /// Writes the volume's initial content to `tmp`, sized and synced.
    async fn fill(&self, spec: &VolumeSpec, tmp: &Path) -> Result<()> {
        let size = spec.size_bytes;
        let t = tmp.to_path_buf();
        blocking(move || match std::fs::remove_file(&t) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::io(&t)(e)),
            _ => Ok(()),
        })
        .await?;
        match &spec.source {
            VolumeSourceSpec::Empty => {
                let t = tmp.to_path_buf();
                blocking(move || pool::create_sparse(&t, size).map_err(VolumeError::io(&t))).await
            }
            VolumeSourceSpec::Image { image } => {
                let cached = self.images.ensure(image).await?;
                if cached.virtual_size > size {
                    return Err(VolumeError::Invalid(format!(
                        "image {} is {} bytes, larger than the volume",
                        image.id, cached.virtual_size
                    )));
                }
                agent_support::exec::run(
                    "qemu-img",
                    [
                        "convert".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        "-O".as_ref(),
                        "raw".as_ref(),
                        cached.path.as_os_str(),
                        tmp.as_os_str(),
                    ],
                )
                .await?;
                let t = tmp.to_path_buf();
                blocking(move || pool::resize_synced(&t, size).map_err(VolumeError::io(&t))).await
            }
            VolumeSourceSpec::Snapshot {
                volume_id,
                snapshot_id,
            } => {
                let src = snapshot_file(&self.pool.join(volume_id.to_string()), *snapshot_id);
                let (volume_id, snapshot_id) = (*volume_id, *snapshot_id);
                let t = tmp.to_path_buf();
                blocking(move || {
                    let len = match std::fs::metadata(&src) {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(VolumeError::Invalid(format!(
                                "snapshot {snapshot_id} of volume {volume_id} is not on this node"
                            )))
                        }
                        Err(e) => return Err(VolumeError::io(&src)(e)),
                    };
                    if len > size {
                        return Err(VolumeError::Invalid(format!(
                            "snapshot {snapshot_id} is {len} bytes, larger than the volume"
                        )));
                    }
                    pool::copy_sparse(&src, &t).map_err(VolumeError::io(&src))?;
                    pool::resize_synced(&t, size).map_err(VolumeError::io(&t))
                })
                .await
            }
        }
    }

    /// Takes the snapshots the spec names that do not exist yet and drops
    /// those it no longer names. A snapshot is consistent: writes are held
    /// (after a flush) while the data file is copied.
    async fn converge_snapshots(
        &self,
        spec: &VolumeSpec,
        dir: &Path,
        data: &Path,
        lu: &Arc<LogicalUnit>,
    ) -> Result<()> {
        let present: HashSet<SnapshotId> = present_snapshots(dir).into_iter().collect();
        for &snap in spec.snapshots.iter().filter(|s| !present.contains(s)) {
            let file = snapshot_file(dir, snap);
            let tmp = dir.join("snapshots").join(format!(".{snap}.tmp"));
            let (l, d, t, f) = (lu.clone(), data.to_path_buf(), tmp.clone(), file.clone());
            let started = std::time::Instant::now();
            blocking(move || {
                let _ = std::fs::remove_file(&t);
                let held = l.quiesce()?;
                let copied = pool::copy_sparse(&d, &t).map_err(VolumeError::io(&t));
                drop(held);
                if let Err(e) = copied {
                    let _ = std::fs::remove_file(&t);
                    return Err(e);
                }
                std::fs::rename(&t, &f).map_err(VolumeError::io(&f))?;
                let parent = f.parent().unwrap_or(&f);
                pool::sync_dir(parent).map_err(VolumeError::io(parent))
            })
            .await?;
            tracing::info!(volume = %spec.id, snapshot = %snap, held_writes_ms = started.elapsed().as_millis() as u64, "snapshot taken");
        }
        for gone in present.iter().filter(|s| !spec.snapshots.contains(s)) {
            let file = snapshot_file(dir, *gone);
            std::fs::remove_file(&file).map_err(VolumeError::io(&file))?;
            tracing::info!(volume = %spec.id, snapshot = %gone, "snapshot deleted");
        }
        Ok(())
    }

    /// Destroys a volume: sessions ended, target removed, data deleted.
    /// Runs on its own task, so a caller that gives up (an HTTP timeout)
    /// cannot leave it half done.
    pub async fn delete(self: &Arc<Self>, id: VolumeId) -> Result<Deleted> {
        let this = self.clone();
        tokio::spawn(async move { this.delete_now(id).await })
            .await
            .map_err(|e| VolumeError::Invalid(format!("delete failed: {e}")))?
    }

    async fn delete_now(self: Arc<Self>, id: VolumeId) -> Result<Deleted> {
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(&id).cloned() {
                Some(s) => s,
                // Unknown in memory, but its directory may survive a crash.
                None if self.pool.join(id.to_string()).exists() => {
                    let s = self.new_slot(id);
                    slots.insert(id, s.clone());
                    s
                }
                None => return Ok(Deleted::NotFound),
            }
        };
        let generation = lock(&slot.desired).take().map(|s| s.generation);
        let mut realized = slot.op.clone().lock_owned().await;
        let tombstone = {
            let mut slots = lock(&self.slots);
            if lock(&slot.desired).is_some() {
                return Ok(Deleted::Superseded);
            }
            slots.remove(&id);
            if let Some(g) = generation {
                lock(&self.deleted).insert(id, g);
            }
            // Out of the way at once, under the slots lock: a PUT arriving
            // now starts a fresh directory, and a crash mid-delete leaves a
            // tombstone that `resume` finishes, never a half volume.
            let tomb = self
                .pool
                .join(format!(".deleting-{id}-{}", uuid::Uuid::new_v4().simple()));
            match std::fs::rename(&slot.dir, &tomb) {
                Ok(()) => Some(tomb),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(VolumeError::io(&slot.dir)(e)),
            }
        };
        self.unexport(&mut realized).await;
        realized.lu = None;
        self.retire_part(&slot);
        if let Some(tomb) = tombstone {
            let pool_dir = self.pool.clone();
            blocking(move || {
                pool::sync_dir(&pool_dir).map_err(VolumeError::io(&pool_dir))?;
                std::fs::remove_dir_all(&tomb).map_err(VolumeError::io(&tomb))
            })
            .await?;
        }
        tracing::info!(volume = %id, "deleted");
        Ok(Deleted::Done)
    }
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_iqn("iqn.2026-11.io.strato:vol-1"));
        assert!(!valid_iqn("iqn.2026-11.io.strato:Vol 1"));
        assert!(!valid_iqn("vol-1"));
    }

    #[test]
    fn device_identity_is_stable_and_distinct() {
        let a = VolumeId::new();
        let b = VolumeId::new();
        assert_eq!(device_info(a).naa, device_info(a).naa);
        assert_ne!(device_info(a).naa, device_info(b).naa);
        assert_eq!(device_info(a).naa[0] >> 4, 6);
    }
}
