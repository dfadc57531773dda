//! The multi-host harness proves itself with what exists today: two
//! hypervisors in their own network namespaces and a storage node; two
//! VMs in one anti-affinity group land on different hosts and boot; one
//! writes to an iSCSI volume; a partitioned host goes down in the admin API
//! within the deadline and comes back when healed; its agent restarts and
//! adopts its VM; a host that loses power leaves no running domain behind.

mod support;

use std::time::{Duration, Instant};

use api::resources::{
    GroupCreate, HostHealth, ImageFormat, InstanceStatus, VolumeCreate, VolumeSource, VolumeStatus,
};
use support::fleet::{Fleet, FleetOptions};
use support::*;

const DOWN_AFTER_SECS: u64 = 4;

const WAIT_FOR_DISK: &str = "echo WAITING-FOR-VOLUME\n\
    i=0; while [ ! -b /dev/vdc ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done\n\
    [ -b /dev/vdc ] || { echo VOLUME-MISSING; exit 1; }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_partition_heal_and_power_loss() {
    let t0 = Instant::now();
    let mut fleet = Fleet::start(FleetOptions {
        hypervisors: 2,
        storage: true,
        stack_manager_toml: format!("[hosts]\ndown_after_secs = {DOWN_AFTER_SECS}\n"),
    })
    .await;
    eprintln!("fleet up in {:?}", t0.elapsed());
    let (h0, h1) = (fleet.host(0), fleet.host(1));
    assert_ne!(h0.host_id, h1.host_id);
    assert_ne!(h0.initiator_iqn, h1.initiator_iqn);

    let (image_path, sha) = guest_image("tiny.raw");
    fleet
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    fleet.tenant_basics("fleet", "10.81.0.0/24").await;
    fleet
        .admin
        .group_create(&GroupCreate {
            name: "spread".into(),
        })
        .await
        .expect("anti-affinity group");
    let vol = fleet
        .admin
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
        })
        .await
        .expect("volume");

    let pattern = format!(
        "strato-fleet-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // Both guests wait for a disk; only the one on host 0 gets it.
    let script = format!(
        "#!/bin/sh\n{WAIT_FOR_DISK}printf '{pattern}' | dd of=/dev/vdc bs=512 conv=sync,fsync 2>/dev/null\nsync\necho VOLUME-WRITTEN\n"
    );
    let mut vms = Vec::new();
    for name in ["spread-a", "spread-b"] {
        vms.push(
            fleet
                .create_vm_in(name, "tiny", "fleet", Some(script.clone()), Some("spread"))
                .await,
        );
    }
    let mut on = Vec::new();
    for vm in &vms {
        let vm = fleet
            .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(90))
            .await;
        on.push(fleet.index_of(vm.host_id.expect("placed")));
    }
    assert_ne!(on[0], on[1], "anti-affinity put both VMs on one host");
    for vm in &vms {
        fleet
            .wait_console(vm.id, "WAITING-FOR-VOLUME", 1, Duration::from_secs(60))
            .await;
    }
    eprintln!("both VMs running and printing at {:?}", t0.elapsed());
    let on_h0 = vms[on.iter().position(|&h| h == 0).expect("a VM on host 0")].id;
    let on_h1 = vms[on.iter().position(|&h| h == 1).expect("a VM on host 1")].id;
    // Each domain is named for its host, and lives in the shared libvirtd.
    assert_eq!(domains_of(h0.host_id), vec![fleet.domain(0, on_h0)]);
    assert_eq!(domains_of(h1.host_id), vec![fleet.domain(1, on_h1)]);

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
        .attachment_create(on_h0, "data")
        .await
        .expect("attach");
    fleet
        .wait_console(on_h0, "VOLUME-WRITTEN", 1, Duration::from_secs(90))
        .await;
    let xml = virsh(&["dumpxml", &fleet.domain(0, on_h0)]);
    assert!(
        xml.contains(&format!("initiator iqn='{}'", h0.initiator_iqn))
            || xml.contains(&h0.initiator_iqn),
        "host 0 logs in with its own IQN:\n{xml}"
    );
    eprintln!("volume written at {:?}", t0.elapsed());

    // Partition host 0: its agent lives on, the stack manager stops
    // hearing from it and says so within the deadline.
    assert_eq!(fleet.health(0).await, HostHealth::Up);
    fleet.partition(0);
    let took = fleet
        .wait_health(
            0,
            HostHealth::Down,
            Duration::from_secs(DOWN_AFTER_SECS + 6),
        )
        .await;
    eprintln!("host 0 down {took:?} after the partition");
    assert!(
        fleet
            .host(0)
            .agent_pid
            .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()),
        "the partitioned agent keeps running"
    );
    assert_eq!(fleet.health(1).await, HostHealth::Up);
    let running = virsh(&["list", "--name"]);
    assert!(
        running.contains(&fleet.domain(0, on_h0)),
        "the partitioned host's VM keeps running:\n{running}"
    );
    fleet.heal(0);
    let took = fleet
        .wait_health(0, HostHealth::Up, Duration::from_secs(15))
        .await;
    eprintln!("host 0 up {took:?} after healing");

    // Its agent restarts in its namespace and adopts the running VM.
    let pid_before = fleet.host(0).agent_pid;
    fleet.restart_agent(0);
    assert_ne!(fleet.host(0).agent_pid, pid_before);
    let agent = fleet.agent_client(0);
    wait_async(
        "the restarted agent to report its VM running",
        Duration::from_secs(30),
        || {
            let agent = agent.clone();
            async move {
                agent.instance_list().await.ok()?.into_iter().find(|o| {
                    o.id == on_h0 && o.state == api::internal::ObservedInstanceState::Running
                })
            }
        },
    )
    .await;

    // Power loss on host 1: its domain no longer runs.
    fleet.kill_host(1);
    let running = virsh(&["list", "--name"]);
    assert!(
        !running.contains(&fleet.domain(1, on_h1)),
        "the powered-off host's VM still runs:\n{running}"
    );
    assert!(
        running.contains(&fleet.domain(0, on_h0)),
        "host 0's VM was touched:\n{running}"
    );
    fleet
        .wait_health(
            1,
            HostHealth::Down,
            Duration::from_secs(DOWN_AFTER_SECS + 6),
        )
        .await;
    eprintln!("done in {:?}", t0.elapsed());
}
