//! Growth and maintenance with real agents and VMs: two hypervisor agents
//! full of VMs (each in its own network namespace and state directory),
//! one storage agent, the machine's libvirtd and QEMU.
//!
//! 1. **Growth.** A third hypervisor joins. `rebalance --dry-run` plans a
//!    move off each full host onto the new one, ending within the band,
//!    and moves nothing; executing it stops each VM, re-creates it on the
//!    new host with the same id, MAC and address, and reattaches its
//!    volume: the guest finds the pattern it wrote before the move. The
//!    `never` instances stay where they are.
//! 2. **Drain.** The new host is drained for maintenance: its VMs go back
//!    to the others, the volume with them, and the host ends empty.
//!
//! The hosts' vCPU capacity is made exactly three one-vCPU VMs (through the
//! scheduler's allocation ratio), so "full" means full to the scheduler.

mod support;

use std::time::{Duration, Instant};

use api::error::ErrorCode;
use api::ids::{HostId, InstanceId};
use api::resources::{
    AdminState, HostUpdate, ImageFormat, Instance, InstanceCreate, InstanceStatus,
    RebalanceRequest, Relocation, VolumeCreate, VolumeSource, VolumeStatus,
};
use support::fleet::{Fleet, FleetOptions};
use support::*;

/// VMs per full host.
const PER_HOST: usize = 3;

/// First boot (an empty volume): writes the pattern. Every later boot (the
/// VM re-created on another host) reads it back.
fn script(pattern: &str) -> String {
    let len = pattern.len();
    format!(
        "#!/bin/sh\n\
         i=0; while [ ! -b /dev/vdc ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done\n\
         [ -b /dev/vdc ] || {{ echo VOLUME-MISSING; exit 1; }}\n\
         head=$(dd if=/dev/vdc bs=512 count=1 2>/dev/null | head -c {len})\n\
         if [ \"$head\" = '{pattern}' ]; then echo PATTERN-INTACT; else\n\
           printf '{pattern}' | dd of=/dev/vdc bs=512 conv=sync,fsync 2>/dev/null\n\
           sync\n\
           echo VOLUME-WRITTEN\n\
         fi\n"
    )
}

/// The CPUs libvirt reports for this machine, which every fleet host
/// reports as its own.
fn node_cpus() -> u32 {
    let info = virsh(&["nodeinfo"]);
    info.lines()
        .find_map(|l| l.strip_prefix("CPU(s):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CPU(s) in virsh nodeinfo:\n{info}"))
}

fn set(state: AdminState) -> HostUpdate {
    HostUpdate { admin_state: state }
}

async fn vm(
    fleet: &Fleet,
    name: &str,
    user_data: Option<String>,
    relocation: Relocation,
) -> Instance {
    fleet
        .admin
        .instance_create(&InstanceCreate {
            name: name.into(),
            flavor: "t1.micro".into(),
            image: "tiny".into(),
            networks: vec!["grow".into()],
            keypair: Some("test-key".into()),
            user_data,
            anti_affinity_group: None,
            start: true,
            relocation,
        })
        .await
        .expect("create instance")
}

/// Waits until `id` runs on `host` and the domain on every other host is
/// gone.
async fn wait_on(fleet: &Fleet, id: InstanceId, host: usize, timeout: Duration) -> Instance {
    let want = fleet.host(host).host_id;
    let deadline = Instant::now() + timeout;
    loop {
        let i = fleet.admin.instance_get(id).await.expect("instance");
        let elsewhere: Vec<String> = (0..fleet.hypervisors())
            .filter(|&h| h != host)
            .flat_map(|h| domains_of(fleet.host(h).host_id))
            .filter(|d| d.ends_with(&id.to_string()))
            .collect();
        if i.host_id == Some(want) && i.status == InstanceStatus::Running && elsewhere.is_empty() {
            return i;
        }
        if Instant::now() > deadline {
            let events = fleet.admin.instance_events(id).await.unwrap_or_default();
            panic!(
                "instance {id} not running on host {host} alone within {timeout:?}: {} ({:?}) on \
                 {:?}, still defined elsewhere: {elsewhere:?}\nevents: {events:#?}\n\
                 stack manager log:\n{}",
                i.status.as_str(),
                i.status_reason,
                i.host_id,
                fleet.stack_manager_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn on(fleet: &Fleet, host: HostId) -> usize {
    fleet.index_of(host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_rebalances_and_drain_empties_a_host() {
    let t0 = Instant::now();
    let cpus = node_cpus();
    // Room for PER_HOST one-vCPU VMs and not one more (half a vCPU to
    // spare, so no rounding decides).
    let ratio = (PER_HOST as f64 + 0.5) / f64::from(cpus);
    let mut fleet = Fleet::start(FleetOptions {
        hypervisors: 2,
        storage: true,
        stack_manager_toml: format!("[scheduler]\ncpu_allocation_ratio = {ratio}\n"),
    })
    .await;
    eprintln!(
        "fleet up in {:?} ({cpus} CPUs per host, ratio {ratio:.3})",
        t0.elapsed()
    );
    let (image_path, sha) = guest_image("tiny.raw");
    fleet
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    fleet.tenant_basics("grow", "10.84.0.0/24").await;
    let vol = fleet
        .admin
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .expect("volume");
    let pattern = format!(
        "strato-grow-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // Each host gets one movable VM and two pinned ones; the movable VM on
    // host 0 holds the volume. Placement is made deterministic by
    // disabling the other host while a host fills.
    let (h0, h1) = (fleet.host(0).host_id, fleet.host(1).host_id);
    let mut movable = Vec::new();
    let mut pinned = Vec::new();
    for (host, other) in [(0, h1), (1, h0)] {
        fleet
            .admin
            .host_update(other, &set(AdminState::Disabled))
            .await
            .expect("disable");
        let user_data = (host == 0).then(|| script(&pattern));
        movable.push(
            vm(
                &fleet,
                &format!("mover-{host}"),
                user_data,
                Relocation::Allow,
            )
            .await,
        );
        for k in 0..PER_HOST - 1 {
            pinned.push(
                vm(
                    &fleet,
                    &format!("pinned-{host}-{k}"),
                    None,
                    Relocation::Never,
                )
                .await,
            );
        }
        fleet
            .admin
            .host_update(other, &set(AdminState::Enabled))
            .await
            .expect("enable");
    }
    let mut before = Vec::new();
    for v in movable.iter().chain(&pinned) {
        let v = fleet
            .wait_status(v.id, InstanceStatus::Running, Duration::from_secs(120))
            .await;
        before.push(v);
    }
    for (i, h) in [h0, h1].into_iter().enumerate() {
        let host = fleet.admin.host_get(h).await.expect("host");
        assert_eq!(host.allocated.instances as usize, PER_HOST, "host {i}");
        assert_eq!(host.pinned_instances as usize, PER_HOST - 1, "host {i}");
    }
    // A seventh VM has nowhere to go: the hosts are full.
    let err = fleet
        .admin
        .instance_create(&InstanceCreate {
            name: "no-room".into(),
            flavor: "t1.micro".into(),
            image: "tiny".into(),
            networks: vec!["grow".into()],
            keypair: None,
            user_data: None,
            anti_affinity_group: None,
            start: true,
            relocation: Relocation::Allow,
        })
        .await
        .expect_err("the hosts are full");
    assert_eq!(err.code(), Some(ErrorCode::CapacityExhausted), "{err}");

    let admin = fleet.admin.clone();
    wait_async(
        "the volume to be available",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                admin
                    .volume_get(vol.id)
                    .await
                    .ok()
                    .filter(|v| v.status == VolumeStatus::Available)
            }
        },
    )
    .await;
    fleet
        .admin
        .attachment_create(movable[0].id, "data")
        .await
        .expect("attach");
    fleet
        .wait_console(movable[0].id, "VOLUME-WRITTEN", 1, Duration::from_secs(120))
        .await;
    eprintln!("two full hosts, the volume written at {:?}", t0.elapsed());

    // 1. Growth: a third host joins.
    let new = fleet.grow().await;
    let h2 = fleet.host(new).host_id;
    let dry = fleet
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: true,
            band: None,
        })
        .await
        .expect("dry run");
    eprintln!(
        "dry run: {} moves (lower bound {}), mean vCPU share {:.2}, band ±{:.2}, {:.2} ms",
        dry.moves.len(),
        dry.lower_bound,
        dry.mean_vcpu_share,
        dry.band,
        dry.plan_ms
    );
    assert!(!dry.queued);
    assert!(dry.within_band, "{dry:#?}");
    assert_eq!(dry.moves.len(), 2, "one off each full host: {dry:#?}");
    assert_eq!(dry.lower_bound, 2);
    let mut planned: Vec<InstanceId> = dry.moves.iter().map(|m| m.instance_id).collect();
    planned.sort();
    let mut want: Vec<InstanceId> = movable.iter().map(|v| v.id).collect();
    want.sort();
    assert_eq!(planned, want, "only the movable VMs, never the pinned ones");
    for m in &dry.moves {
        assert_eq!(m.to, h2, "{m:?}");
    }
    for h in &dry.hosts {
        assert_eq!(h.within_band_after, Some(true), "{h:?}");
        if h.host_id == h2 {
            assert_eq!(h.before_vcpu_share, 0.0);
            assert!(h.after_vcpu_share > 0.0);
        }
    }
    assert_eq!(
        fleet
            .admin
            .host_get(h2)
            .await
            .expect("host")
            .allocated
            .instances,
        0,
        "a dry run moves nothing"
    );

    let moving = Instant::now();
    let run = fleet
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: false,
            band: None,
        })
        .await
        .expect("rebalance");
    assert!(run.queued);
    assert_eq!(run.moves.len(), 2);
    for was in &before[..2] {
        let moved = wait_on(&fleet, was.id, new, Duration::from_secs(120)).await;
        assert_eq!(moved.name, was.name);
        assert_eq!(moved.nics, was.nics, "same MAC and address");
        let xml = virsh(&["dumpxml", &fleet.domain(new, was.id)]);
        assert!(
            xml.contains(&format!("<mac address='{}'/>", was.nics[0].mac)),
            "{xml}"
        );
        let events: Vec<String> = fleet
            .admin
            .instance_events(was.id)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.event)
            .collect();
        for e in ["instance.move_started", "instance.moved"] {
            assert!(events.iter().any(|x| x == e), "{events:?}");
        }
    }
    eprintln!("both moves done {:?} after the rebalance", moving.elapsed());
    let console = fleet
        .wait_console(movable[0].id, "PATTERN-INTACT", 1, Duration::from_secs(120))
        .await;
    assert!(!console.contains("VOLUME-MISSING"), "{console}");
    assert!(
        console.contains(&format!("address={}/", before[0].nics[0].address)),
        "the guest has its address on the new host:\n{console}"
    );
    let xml = virsh(&["dumpxml", &fleet.domain(new, movable[0].id)]);
    assert!(
        xml.contains(&fleet.host(new).initiator_iqn),
        "the new host logs in to the volume with its own IQN:\n{xml}"
    );
    assert!(xml.contains(&vol.iqn), "{xml}");
    for p in &pinned {
        let i = fleet.admin.instance_get(p.id).await.expect("instance");
        assert_eq!(i.host_id, p.host_id, "a `never` instance stays");
        assert_eq!(i.status, InstanceStatus::Running);
    }
    let again = fleet
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: true,
            band: None,
        })
        .await
        .expect("dry run");
    assert!(again.moves.is_empty() && again.within_band, "{again:#?}");

    // 2. Drain the new host: its VMs go back where there is room.
    let draining = Instant::now();
    let host = fleet
        .admin
        .host_update(h2, &set(AdminState::Draining))
        .await
        .expect("drain");
    assert_eq!(host.admin_state, AdminState::Draining);
    for was in &before[..2] {
        let back = {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let i = fleet.admin.instance_get(was.id).await.expect("instance");
                if i.status == InstanceStatus::Running
                    && i.host_id.is_some_and(|h| h != h2)
                    && domains_of(h2).is_empty()
                {
                    break i;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not leave the draining host: {i:?}\nstack manager log:\n{}",
                    was.name,
                    fleet.stack_manager_log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        assert_eq!(back.nics, was.nics);
        let idx = on(&fleet, back.host_id.expect("placed"));
        wait_on(&fleet, was.id, idx, Duration::from_secs(30)).await;
    }
    fleet
        .wait_console(movable[0].id, "PATTERN-INTACT", 1, Duration::from_secs(120))
        .await;
    let host = fleet.admin.host_get(h2).await.expect("host");
    assert_eq!(host.allocated.instances, 0, "the drained host is empty");
    for h in [h0, h1] {
        let host = fleet.admin.host_get(h).await.expect("host");
        assert_eq!(host.allocated.instances as usize, PER_HOST);
    }
    eprintln!(
        "drained in {:?}; done in {:?}",
        draining.elapsed(),
        t0.elapsed()
    );
    fleet.assert_consistent().await;
}
