//! The agent's life: probe the hypervisor, enroll once (or load the
//! credential from an earlier enrollment), serve the agent API, adopt what
//! the stack manager wants, and heartbeat.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use agent_support::enroll::{enroll_or_load, retry, Identity};
use agent_support::fs::{fs_space, set_mode};
use api::ids::HostId;
use api::internal::{EnrollRequest, Heartbeat, ObservedInstance, ObservedInstanceState};
use api::resources::{Capacity, HostKind};
use api::InternalClient;

use crate::config::{Config, VirtTypeSetting};
use crate::domain::Templates;
use crate::error::{AgentError, Result};
use crate::hypervisor::{kvm_works, Hypervisor};
use crate::images::ImageCache;
use crate::instances::{Realizer, RealizerConfig};
use crate::server::{router, ServerState};

async fn capacity(cfg: &Config, hv: &Arc<Hypervisor>) -> Result<Capacity> {
    let node = hv.node_capacity().await?;
    let disk_gib = fs_space(&cfg.state_dir).unwrap_or_default().total >> 30;
    Ok(Capacity {
        vcpus: node.cpus,
        ram_mib: node.memory_mib.saturating_sub(cfg.reserved_ram_mib),
        disk_gib: disk_gib.saturating_sub(cfg.reserved_disk_gib),
        storage_bytes_total: 0,
        storage_bytes_free: 0,
    })
}

async fn enroll(cfg: &Config, hv: &Arc<Hypervisor>) -> anyhow::Result<Identity> {
    enroll_or_load(
        &cfg.state_dir,
        &cfg.stack_manager_url,
        cfg.enrollment_token()?,
        |token| async move {
            Ok(EnrollRequest {
                token,
                name: cfg.host_name(),
                kind: HostKind::Hypervisor,
                agent_url: cfg.agent_url(),
                capacity: capacity(cfg, hv).await?,
                initiator_iqn: Some(cfg.initiator_iqn()),
                iscsi_portal: None,
                machine_id: cfg.machine_id.clone(),
                replication_address: None,
            })
        },
    )
    .await
}

/// `caps` is libvirt's capabilities XML (QEMU hosts only).
async fn choose_virt_type(cfg: &Config, caps: &str) -> Result<&'static str> {
    let kind = match cfg.virt_type {
        VirtTypeSetting::Kvm => "kvm",
        VirtTypeSetting::Qemu => "qemu",
        VirtTypeSetting::Auto => {
            let timeout = Duration::from_secs(cfg.kvm_probe_timeout_secs);
            if kvm_works(caps, &cfg.state_dir.join("probe"), timeout).await {
                "kvm"
            } else {
                "qemu"
            }
        }
    };
    tracing::info!(
        virt_type = kind,
        "guests run under {}",
        if kind == "kvm" {
            "KVM"
        } else {
            "plain emulation (TCG)"
        }
    );
    Ok(kind)
}

/// QEMU runs as its own user (`libvirt-qemu` on Debian) and opens disks
/// under `state_dir`: every directory above it must be world-traversable.
/// Failing here beats every VM failing later with "permission denied".
fn reachable_by_qemu(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let abs = std::fs::canonicalize(state_dir)?;
    for dir in abs.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "state_dir {} is not reachable by QEMU: {} has mode {:o} (not world-traversable); \
                 choose a state_dir under /var/lib",
                state_dir.display(),
                dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// Runs the agent until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(AgentError::io(&cfg.state_dir))?;
    // QEMU runs as its own user and must reach disks under state_dir.
    set_mode(&cfg.state_dir, 0o755)?;
    if !cfg.is_xen() {
        reachable_by_qemu(&cfg.state_dir)?;
    }
    let hv = Arc::new(Hypervisor::new(&cfg.libvirt_uri));
    let virt_type = if cfg.is_xen() {
        "xen"
    } else {
        // One capabilities query serves both: the device check comes before
        // anything else asks libvirt about QEMU (see `host`).
        let caps = hv.capabilities().await?;
        crate::host::check_kvm_device(
            &caps,
            Path::new(crate::host::KVM_DEVICE),
            cfg.repair_kvm_device,
        );
        choose_virt_type(&cfg, &caps).await?
    };
    let identity = enroll(&cfg, &hv).await?;
    let images = ImageCache::new(
        cfg.state_dir.join("images"),
        cfg.max_image_bytes,
        &cfg.image_roots,
    )?;
    set_mode(&cfg.state_dir.join("images"), 0o755)?;
    let templates = Templates::load(cfg.template_dir.as_deref(), cfg.is_xen())?;
    let realizer = Realizer::new(
        RealizerConfig {
            host_id: identity.host_id,
            state_dir: cfg.state_dir.clone(),
            virt_type,
            initiator_iqn: cfg.initiator_iqn(),
            net: crate::network::HostNet {
                uplink: cfg.uplink.clone(),
                netns: cfg.bridge_netns.clone(),
            },
            shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs),
        },
        hv.clone(),
        images,
        templates,
    )?;
    set_mode(&cfg.state_dir.join("instances"), 0o755)?;
    let persisted = realizer.resume().await?;

    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, url = cfg.agent_url(), "agent API listening");
    let app = router(ServerState {
        realizer: realizer.clone(),
        credential: Arc::new(identity.credential.clone()),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = InternalClient::new(&cfg.stack_manager_url, Some(identity.credential.clone()));
    // Adoption: the stack manager's desired state is the truth; until it
    // answers, nothing is deleted.
    let desired = retry("fetch desired state", || client.desired(identity.host_id)).await?;
    tracing::info!(
        instances = desired.instances.len(),
        "adopting desired state"
    );
    realizer.adopt(desired.instances, &persisted).await?;

    let heartbeat = heartbeat_loop(
        cfg.clone(),
        hv.clone(),
        realizer.clone(),
        client,
        identity.host_id,
    );
    tokio::select! {
        r = server => { r??; Ok(()) }
        r = heartbeat => r,
    }
}

/// The newest reading of this host's instances, and when it was taken.
#[derive(Clone)]
struct Reading {
    instances: Vec<ObservedInstance>,
    at: Instant,
}

/// Reads the instances in a task of its own, every interval and as soon
/// as one converged or failed: a heartbeat then reports the newest reading
/// without waiting on libvirt. A libvirtd starved by busy guests (or
/// queueing the agent's reads behind domain starts) answers in seconds;
/// liveness must not stop for it, and a reading that took long is still
/// used rather than thrown away. `report` is woken after a reading that
/// a change asked for, so that it goes out at once.
fn spawn_observer(
    realizer: Arc<Realizer>,
    every: Duration,
    report: Arc<Notify>,
) -> watch::Receiver<Option<Reading>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut asked = false;
        loop {
            let started = Instant::now();
            let instances = realizer.observe_all().await;
            let took = started.elapsed();
            if took > every {
                tracing::warn!(
                    ?took,
                    "reading the instances took longer than a heartbeat interval"
                );
            }
            if tx
                .send(Some(Reading {
                    instances,
                    at: Instant::now(),
                }))
                .is_err()
            {
                return;
            }
            if asked {
                report.notify_one();
            }
            // Instances that converge together share one reading.
            asked = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                _ = realizer.changed.notified() => {
                    tokio::time::sleep(CHANGE_PAUSE.min(every)).await;
                    true
                }
            };
        }
    });
    rx
}

/// How long a reading asked for by a change waits for other instances.
const CHANGE_PAUSE: Duration = Duration::from_millis(200);

/// What a heartbeat says of the instances: the newest reading, or, when
/// libvirt has not answered for longer than `stale_after`, that their
/// state is unknown (a frozen reading must not pass for the present).
fn report_of(reading: &Reading, stale_after: Duration) -> Vec<ObservedInstance> {
    let age = reading.at.elapsed();
    if age <= stale_after {
        return reading.instances.clone();
    }
    reading
        .instances
        .iter()
        .map(|o| ObservedInstance {
            state: ObservedInstanceState::Unknown,
            reason: Some(format!(
                "libvirt has not answered the agent for {} s (last seen {})",
                age.as_secs(),
                o.state.as_str()
            )),
            ..o.clone()
        })
        .collect()
}

async fn heartbeat_loop(
    cfg: Config,
    hv: Arc<Hypervisor>,
    realizer: Arc<Realizer>,
    client: InternalClient,
    host: HostId,
) -> anyhow::Result<()> {
    let mut every = Duration::from_secs(cfg.heartbeat_interval_secs);
    let report = Arc::new(Notify::new());
    let mut readings = spawn_observer(realizer, every, report.clone());
    // The first heartbeat carries a reading if one comes soon (adoption
    // has just looked at every domain, so it should).
    let _ = tokio::time::timeout(every, readings.wait_for(Option::is_some)).await;
    let stale_after = Duration::from_secs(cfg.stale_reading_secs);
    let mut capacity_seen: Option<Capacity> = None;
    loop {
        // Liveness must not wait on a slow libvirt: a domain whose QEMU
        // takes seconds to die holds libvirt's locks, and a host whose
        // heartbeats stop for that long is suspected and fenced with all
        // its healthy VMs. Past the budget, the last reading is reported.
        let budget = (every / 2).max(Duration::from_millis(500));
        match tokio::time::timeout(budget, capacity(&cfg, &hv)).await {
            Ok(Ok(c)) => capacity_seen = Some(c),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read host capacity"),
            Err(_) => tracing::warn!(
                ?budget,
                "reading host capacity is slow; reporting the last reading"
            ),
        }
        let instances = readings
            .borrow()
            .as_ref()
            .map(|r| report_of(r, stale_after))
            .unwrap_or_default();
        match capacity_seen {
            Some(capacity) => {
                let hb = Heartbeat {
                    capacity,
                    instances,
                    volumes: Vec::new(),
                };
                let sent = Instant::now();
                match client.heartbeat(host, &hb).await {
                    Ok(ack) => every = Duration::from_secs(ack.heartbeat_interval_secs.max(1)),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
                if sent.elapsed() > every {
                    tracing::warn!(took = ?sent.elapsed(), "the stack manager took longer than a heartbeat interval to answer a heartbeat");
                }
            }
            None => tracing::warn!("no capacity reading yet; skipping a heartbeat"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = report.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::ids::InstanceId;

    fn reading(age: Duration) -> Reading {
        Reading {
            instances: vec![ObservedInstance {
                id: InstanceId::new(),
                state: ObservedInstanceState::Running,
                generation: 3,
                reboot_count: 0,
                reason: None,
            }],
            at: Instant::now().checked_sub(age).expect("a past instant"),
        }
    }

    #[test]
    fn a_frozen_reading_is_reported_unknown_with_its_age() {
        let stale_after = Duration::from_secs(10);
        let fresh = report_of(&reading(Duration::from_secs(2)), stale_after);
        assert_eq!(fresh[0].state, ObservedInstanceState::Running);
        assert_eq!(fresh[0].reason, None);

        let frozen = report_of(&reading(Duration::from_secs(25)), stale_after);
        assert_eq!(frozen[0].state, ObservedInstanceState::Unknown);
        assert_eq!(frozen[0].generation, 3, "what was applied stays known");
        let reason = frozen[0].reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("25 s") && reason.contains("running"),
            "{reason}"
        );
    }
}
