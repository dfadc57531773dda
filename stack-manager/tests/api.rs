//! The stack manager's API end to end: real HTTP, a real database (SQLite
//! and PostgreSQL, every scenario on both), simulated agents speaking the
//! real internal API.

#[macro_use]
mod support;

use std::collections::{HashMap, HashSet};

use api::internal::PowerState;
use api::resources::*;
use api::ErrorCode;
use futures::StreamExt;
use support::sim_agent::{SimConsole, CONSOLE_LINES};
use support::{eventually, Backend, TestCloud};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

on_both_backends!(
    instance_lifecycle,
    volume_lifecycle,
    quota_exceeded_names_the_quota_and_changes_nothing,
    exhausted_addresses_and_capacity_change_nothing,
    address_rotation_continues_past_a_taken_window,
    parallel_creates_never_overcommit_or_break_anti_affinity,
    silent_host_goes_down_and_gets_no_work,
    lost_agent_state_is_pushed_again,
    a_guest_stopped_behind_the_agents_back_can_be_started,
    usage_and_audit_are_recorded,
    orphans_are_deleted_on_the_agent,
    deleting_on_a_down_host_waits_for_it,
    console_stream_relays_the_live_console,
    console_stream_refuses_strangers_and_unreachable_agents,
);

async fn tenant(cloud: &TestCloud) -> api::Client {
    cloud.project("acme").await;
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&c).await;
    c
}

async fn wait_status(c: &api::Client, id: api::ids::InstanceId, want: InstanceStatus) -> Instance {
    eventually(10, || async {
        let i = c.instance_get(id).await.ok()?;
        (i.status == want).then_some(i)
    })
    .await
}

async fn instance_lifecycle(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    let host = cloud.hypervisor("hv-1", 8, 16_384, None).await;

    let vm = c.instance_create(&TestCloud::vm("web-1")).await.unwrap();
    assert_eq!(vm.host_id, Some(host));
    assert_eq!(vm.desired, DesiredState::Running);
    assert_eq!(vm.nics.len(), 1);
    assert_eq!(
        vm.nics[0].address.to_string(),
        "10.20.0.2",
        "a new subnet starts at its first pool address"
    );
    let vm = wait_status(&c, vm.id, InstanceStatus::Running).await;

    // The agent got a complete spec.
    let spec = cloud
        .fleet
        .with_host("hv-1", |h| h.instances.get(&vm.id).cloned())
        .unwrap();
    assert_eq!(spec.hostname, "web-1");
    assert_eq!(spec.vcpus, 1);
    assert_eq!(spec.nics[0].address.to_string(), "10.20.0.2");
    assert_eq!(spec.nics[0].gateway.to_string(), "10.20.0.1");
    assert_eq!(spec.nics[0].prefix_len, 24);
    assert_eq!(spec.nics[0].mac, vm.nics[0].mac);
    assert_eq!(
        spec.ssh_authorized_keys,
        vec![support::TEST_KEY.to_string()]
    );

    let console = c.instance_console(vm.id).await.unwrap();
    assert!(console.data.contains("web-1"), "{}", console.data);

    // stop → stopped; a second stop is an illegal transition.
    c.instance_action(vm.id, "stop").await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Stopped).await;
    let err = c.instance_action(vm.id, "stop").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    assert!(err.to_string().contains("cannot stop"), "{err}");

    c.instance_action(vm.id, "start").await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;

    let rebooting = c.instance_action(vm.id, "reboot").await.unwrap();
    assert_eq!(rebooting.status, InstanceStatus::Rebooting);
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    let reboots = cloud
        .fleet
        .with_host("hv-1", |h| h.instances[&vm.id].reboot_count);
    assert_eq!(reboots, 1);

    // delete → gone everywhere, everything given back.
    c.instance_delete(vm.id).await.unwrap();
    eventually(10, || async {
        matches!(c.instance_get(vm.id).await, Err(e) if e.status() == Some(404)).then_some(())
    })
    .await;
    assert_eq!(cloud.fleet.instance_count(), 0);
    let quota = c.quota_get("acme").await.unwrap();
    assert_eq!(
        quota.usage,
        QuotaUsage {
            instances: 0,
            vcpus: 0,
            ram_mib: 0,
            volumes: 0,
            volume_gib: 0,
            addresses: 0
        }
    );
    let h = cloud.admin.host_get(host).await.unwrap();
    assert_eq!(h.allocated, Allocated::default());
    // Allocation rotates: the next instance gets the next address, and the
    // released one waits until the pool comes round.
    let again = c.instance_create(&TestCloud::vm("web-2")).await.unwrap();
    assert_eq!(again.nics[0].address.to_string(), "10.20.0.3");
}

async fn volume_lifecycle(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let storage = cloud.storage("st-1", 100).await;
    let vm = c.instance_create(&TestCloud::vm("db-1")).await.unwrap();

    let vol = c
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 10,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .unwrap();
    assert_eq!(vol.host_id, Some(storage));
    assert!(vol.iqn.starts_with("iqn.2026-11.io.strato:vol-"));
    eventually(10, || async {
        (c.volume_get(vol.id).await.ok()?.status == VolumeStatus::Available).then_some(())
    })
    .await;

    let att = c.attachment_create(vm.id, "data").await.unwrap();
    assert_eq!(att.device_index, 0);
    // The storage node lets exactly the instance's host in; the host knows where to log in.
    eventually(10, || async {
        let acl = cloud.fleet.with_host("st-1", |h| {
            h.volumes.get(&vol.id).map(|v| v.allowed_initiators.clone())
        })?;
        let disks = cloud.fleet.with_host("hv-1", |h| {
            h.instances.get(&vm.id).map(|i| i.volumes.clone())
        })?;
        (acl == vec!["iqn.2026-11.io.strato.sim:hv-1".to_string()]
            && disks.len() == 1
            && disks[0].iqn == vol.iqn
            && disks[0].portal == "127.0.0.1:3260")
            .then_some(())
    })
    .await;
    assert_eq!(
        c.volume_get(vol.id).await.unwrap().status,
        VolumeStatus::InUse
    );
    // The list (attachments read in one statement) shows the attachment.
    let listed = c.volume_list().await.unwrap();
    let listed = listed.iter().find(|v| v.id == vol.id).expect("listed");
    let attached = listed
        .attachment
        .as_ref()
        .expect("listed with its attachment");
    assert_eq!(
        (attached.instance_id, attached.device_index),
        (vm.id, att.device_index)
    );
    // Attached volumes cannot be deleted or attached twice.
    assert_eq!(
        c.volume_delete(vol.id).await.unwrap_err().code(),
        Some(ErrorCode::Conflict)
    );
    assert_eq!(
        c.attachment_create(vm.id, "data").await.unwrap_err().code(),
        Some(ErrorCode::Conflict)
    );

    let snap = c
        .snapshot_create(
            vol.id,
            &SnapshotCreate {
                name: "before".into(),
            },
        )
        .await
        .unwrap();
    eventually(10, || async {
        let s = c
            .snapshot_list()
            .await
            .ok()?
            .into_iter()
            .find(|s| s.id == snap.id)?;
        (s.status == SnapshotStatus::Available).then_some(())
    })
    .await;

    c.attachment_delete(vm.id, vol.id).await.unwrap();
    eventually(10, || async {
        let acl = cloud.fleet.with_host("st-1", |h| {
            h.volumes.get(&vol.id).map(|v| v.allowed_initiators.clone())
        })?;
        acl.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        c.volume_get(vol.id).await.unwrap().status,
        VolumeStatus::Available
    );

    // A volume with snapshots stays until they go.
    assert_eq!(
        c.volume_delete(vol.id).await.unwrap_err().code(),
        Some(ErrorCode::Conflict)
    );
    c.snapshot_delete(snap.id).await.unwrap();
    eventually(10, || async {
        c.snapshot_list().await.ok()?.is_empty().then_some(())
    })
    .await;
    c.volume_delete(vol.id).await.unwrap();
    eventually(10, || async {
        (c.volume_get(vol.id).await.err()?.status() == Some(404)).then_some(())
    })
    .await;
    assert!(cloud.fleet.with_host("st-1", |h| h.volumes.is_empty()));
    let q = c.quota_get("acme").await.unwrap();
    assert_eq!((q.usage.volumes, q.usage.volume_gib), (0, 0));
}

async fn quota_exceeded_names_the_quota_and_changes_nothing(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 64, 65_536, None).await;
    cloud
        .admin
        .quota_update(
            "acme",
            &QuotaUpdate {
                vcpus: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.instance_create(&TestCloud::vm("a")).await.unwrap();
    c.instance_create(&TestCloud::vm("b")).await.unwrap();
    let before = c.quota_get("acme").await.unwrap().usage;
    let err = c.instance_create(&TestCloud::vm("c")).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded));
    assert!(
        err.to_string().contains("vcpus"),
        "message names the quota: {err}"
    );
    assert_eq!(c.quota_get("acme").await.unwrap().usage, before);
    assert_eq!(c.instance_list().await.unwrap().len(), 2);
}

async fn exhausted_addresses_and_capacity_change_nothing(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    // No hypervisor yet: capacity is exhausted, nothing is written.
    let err = c
        .instance_create(&TestCloud::vm("early"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CapacityExhausted), "{err}");
    assert!(c.instance_list().await.unwrap().is_empty());
    assert_eq!(c.quota_get("acme").await.unwrap().usage.instances, 0);

    let host = cloud.hypervisor("hv-1", 64, 65_536, None).await;
    let small = c
        .network_create(&NetworkCreate {
            name: "small".into(),
            vlan: None,
            mtu: 1500,
        })
        .await
        .unwrap();
    c.subnet_create(
        small.id,
        &SubnetCreate {
            name: "tiny".into(),
            cidr: "192.168.50.0/29".parse().unwrap(),
            gateway: None,
            pools: vec![],
            reserved: vec![AddressRange {
                start: "192.168.50.5".parse().unwrap(),
                end: "192.168.50.6".parse().unwrap(),
            }],
            dns_servers: vec![],
        },
    )
    .await
    .unwrap();
    // .1 gateway, .5-.6 reserved: .2, .3, .4 are all there is.
    let mut got = HashSet::new();
    for i in 0..3 {
        let mut vm = TestCloud::vm(&format!("s{i}"));
        vm.networks = vec!["small".into()];
        got.insert(
            c.instance_create(&vm).await.unwrap().nics[0]
                .address
                .to_string(),
        );
    }
    assert_eq!(
        got,
        HashSet::from([
            "192.168.50.2".into(),
            "192.168.50.3".into(),
            "192.168.50.4".into()
        ])
    );
    let alloc_before = cloud.admin.host_get(host).await.unwrap().allocated;
    let usage_before = c.quota_get("acme").await.unwrap().usage;
    let mut vm = TestCloud::vm("s3");
    vm.networks = vec!["small".into()];
    let err = c.instance_create(&vm).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AddressesExhausted), "{err}");
    assert!(
        err.to_string().contains("small"),
        "names the network: {err}"
    );
    assert_eq!(
        cloud.admin.host_get(host).await.unwrap().allocated,
        alloc_before,
        "host claim rolled back"
    );
    assert_eq!(
        c.quota_get("acme").await.unwrap().usage,
        usage_before,
        "quota claim rolled back"
    );
    assert_eq!(c.instance_list().await.unwrap().len(), 3);

    // Once one is released, allocation wraps round the pool to find it.
    let s1 = c
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.name == "s1")
        .unwrap();
    let released = s1.nics[0].address.to_string();
    c.instance_delete(s1.id).await.unwrap();
    let again = eventually(10, || async {
        let mut vm = TestCloud::vm("s4");
        vm.networks = vec!["small".into()];
        c.instance_create(&vm).await.ok()
    })
    .await;
    assert_eq!(again.nics[0].address.to_string(), released);
}

/// Deletes an instance and waits until it is gone (its addresses released).
async fn delete_and_wait(c: &api::Client, id: api::ids::InstanceId) {
    c.instance_delete(id).await.unwrap();
    eventually(10, || async {
        matches!(c.instance_get(id).await, Err(e) if e.status() == Some(404)).then_some(())
    })
    .await;
}

async fn address_rotation_continues_past_a_taken_window(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    cloud.hypervisor("hv-1", 64, 262_144, None).await;
    let c = tenant(&cloud).await;
    cloud.quota_for("acme", 100).await;
    TestCloud::network(&c, "rot", "10.30.0.0/27").await;
    let on_rot = |name: &str| {
        let mut vm = TestCloud::vm(name);
        vm.networks = vec!["rot".into()];
        vm
    };
    let host_part = |vm: &Instance| {
        vm.nics[0]
            .address
            .to_string()
            .rsplit('.')
            .next()
            .unwrap()
            .parse::<u8>()
            .unwrap()
    };

    // Two NICs on one network: consecutive addresses, one transaction.
    let mut two = TestCloud::vm("two");
    two.networks = vec!["rot".into(), "rot".into()];
    let two = c.instance_create(&two).await.unwrap();
    let two: Vec<String> = two.nics.iter().map(|n| n.address.to_string()).collect();
    assert_eq!(two, ["10.30.0.2", "10.30.0.3"]);

    // Fill the rest of the /27 (.1 is the gateway, .31 the broadcast).
    let mut by_host = HashMap::new();
    for i in 4..=30u8 {
        let vm = c.instance_create(&on_rot(&format!("r{i}"))).await.unwrap();
        assert_eq!(host_part(&vm), i);
        by_host.insert(i, vm.id);
    }
    let err = c.instance_create(&on_rot("extra")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AddressesExhausted), "{err}");

    // .12 freed and taken again from the window after the wrap: the cursor
    // is at .12 now.
    delete_and_wait(&c, by_host[&12]).await;
    assert_eq!(
        host_part(&c.instance_create(&on_rot("again")).await.unwrap()),
        12
    );

    // Free .5 (behind the cursor) and .29 (beyond the 16 taken addresses
    // .13 to .28). The window is all taken, and the full read continues the
    // rotation to .29 rather than going back to the lowest hole, .5.
    delete_and_wait(&c, by_host[&5]).await;
    delete_and_wait(&c, by_host[&29]).await;
    assert_eq!(
        host_part(&c.instance_create(&on_rot("next")).await.unwrap()),
        29
    );
    assert_eq!(
        host_part(&c.instance_create(&on_rot("wrap")).await.unwrap()),
        5
    );
}

async fn parallel_creates_never_overcommit_or_break_anti_affinity(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.quota_for("acme", 1000).await;
    // 4 hosts × 2 pCPU × ratio 4.0 = 32 one-vCPU slots; RAM allows 64.
    for rack in ["r1", "r2"] {
        cloud
            .admin
            .rack_create(&RackCreate {
                name: rack.into(),
                location: String::new(),
            })
            .await
            .unwrap();
    }
    let mut hosts = Vec::new();
    for i in 0..4 {
        hosts.push(
            cloud
                .hypervisor(
                    &format!("hv-{i}"),
                    2,
                    32_768,
                    Some(if i < 2 { "r1" } else { "r2" }),
                )
                .await,
        );
    }
    let group = c
        .group_create(&GroupCreate { name: "ha".into() })
        .await
        .unwrap();
    let c = std::sync::Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut vm = TestCloud::vm(&format!("p{i}"));
            if i % 10 == 0 {
                vm.anti_affinity_group = Some("ha".into());
            }
            c.instance_create(&vm).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e.code(), Some(ErrorCode::CapacityExhausted)),
                "only capacity may run out: {e}"
            ),
        }
    }
    let instances = c.instance_list().await.unwrap();
    assert_eq!(instances.len(), ok);
    // The list reads every instance's NICs in one statement; each matches
    // what reading the instance alone shows.
    for i in &instances {
        assert_eq!(
            c.instance_get(i.id).await.unwrap().nics,
            i.nics,
            "{}",
            i.name
        );
    }
    assert_eq!(ok, 32, "every slot is used and none twice");
    let mut per_host: HashMap<_, u64> = HashMap::new();
    for i in &instances {
        *per_host.entry(i.host_id.unwrap()).or_default() += i.vcpus as u64;
    }
    for h in &hosts {
        let used = per_host.get(h).copied().unwrap_or(0);
        assert!(used <= 8, "host {h} has {used} vCPUs on 2 pCPUs × 4.0");
        assert_eq!(
            cloud.admin.host_get(*h).await.unwrap().allocated.vcpus,
            used,
            "claims match instances"
        );
    }
    let members: Vec<_> = instances
        .iter()
        .filter(|i| i.anti_affinity_group_id == Some(group.id))
        .collect();
    let distinct: HashSet<_> = members.iter().map(|i| i.host_id).collect();
    assert_eq!(
        distinct.len(),
        members.len(),
        "anti-affinity: one member per host"
    );
    assert!(members.len() <= 4);
    let addresses: HashSet<_> = instances.iter().map(|i| i.nics[0].address).collect();
    assert_eq!(
        addresses.len(),
        instances.len(),
        "no address handed out twice"
    );
}

async fn silent_host_goes_down_and_gets_no_work(backend: Backend) {
    let cloud = TestCloud::start_with(backend, |c| {
        c.hosts.heartbeat_interval_secs = 1;
        c.hosts.down_after_secs = 2;
    })
    .await;
    let c = tenant(&cloud).await;
    let host = cloud.hypervisor("hv-1", 8, 16_384, None).await;
    assert_eq!(
        cloud.admin.host_get(host).await.unwrap().health,
        HostHealth::Up
    );
    // Silent for longer than down_after_secs: the host is suspected.
    eventually(10, || async {
        (cloud.admin.host_get(host).await.ok()?.health == HostHealth::Suspected).then_some(())
    })
    .await;
    let err = c.instance_create(&TestCloud::vm("x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CapacityExhausted));
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    assert_eq!(
        cloud.admin.host_get(host).await.unwrap().health,
        HostHealth::Up
    );
    c.instance_create(&TestCloud::vm("x")).await.unwrap();
    // A disabled host takes nothing new.
    cloud
        .admin
        .host_update(
            host,
            &HostUpdate {
                admin_state: AdminState::Disabled,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.instance_create(&TestCloud::vm("y"))
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::CapacityExhausted)
    );
}

async fn lost_agent_state_is_pushed_again(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    // The agent restarts with nothing: its next heartbeat reports no instance.
    cloud.fleet.with_host("hv-1", |h| h.instances.clear());
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    eventually(10, || async {
        cloud
            .fleet
            .with_host("hv-1", |h| h.instances.contains_key(&vm.id))
            .then_some(())
    })
    .await;
    // Repeating pushes changes nothing: still one instance.
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    assert_eq!(cloud.fleet.instance_count(), 1);
}

/// The domain stopped without the API asking (the guest powered off, or an
/// operator used `virsh`): desired stays `running`, status is `stopped`,
/// and `start` must bring it back rather than refuse.
async fn a_guest_stopped_behind_the_agents_back_can_be_started(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    let generation = cloud.fleet.with_host("hv-1", |h| {
        let spec = h.instances.get_mut(&vm.id).expect("pushed");
        spec.power = PowerState::Stopped;
        spec.generation
    });
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    let stopped = wait_status(&c, vm.id, InstanceStatus::Stopped).await;
    assert_eq!(stopped.desired, DesiredState::Running);

    c.instance_action(vm.id, "start").await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    let (power, pushed) = cloud.fleet.with_host("hv-1", |h| {
        let spec = &h.instances[&vm.id];
        (spec.power, spec.generation)
    });
    assert_eq!(power, PowerState::Running);
    assert!(pushed > generation, "start pushed a new generation");
    // Running and desired running: a second start is still refused.
    let err = c.instance_action(vm.id, "start").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));

    // The mirror case: started behind the agent's back while stopped.
    c.instance_action(vm.id, "stop").await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Stopped).await;
    cloud.fleet.with_host("hv-1", |h| {
        h.instances.get_mut(&vm.id).expect("pushed").power = PowerState::Running
    });
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    let running = wait_status(&c, vm.id, InstanceStatus::Running).await;
    assert_eq!(running.desired, DesiredState::Stopped);
    c.instance_action(vm.id, "stop").await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Stopped).await;
}

async fn usage_and_audit_are_recorded(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    cloud.storage("st-1", 100).await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(1);
    c.instance_create(&TestCloud::vm("metered")).await.unwrap();
    c.volume_create(&VolumeCreate {
        name: "v".into(),
        size_gib: 10,
        source: VolumeSource::Empty,
        replicas: None,
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let report = cloud
        .admin
        .usage(&UsageQuery {
            start,
            end: None,
            project: Some("acme".into()),
        })
        .await
        .unwrap();
    let acme = report
        .projects
        .iter()
        .find(|p| p.project_name == "acme")
        .expect("acme has usage");
    assert_eq!(acme.instances.len(), 1);
    assert_eq!(acme.instances[0].flavor_name, "small");
    assert!(acme.instances[0].instance_hours > 0.0);
    assert!(acme.volume_gib_hours > 0.0);
    // Non-admins cannot read usage of all projects.
    assert_eq!(
        c.usage(&UsageQuery {
            start,
            end: None,
            project: None
        })
        .await
        .unwrap_err()
        .code(),
        Some(ErrorCode::Forbidden)
    );
    // Every mutating call, successful or not, is in the audit log.
    let _ = c
        .instance_create(&TestCloud::vm("Bad Name"))
        .await
        .unwrap_err();
    let records = eventually(5, || async {
        let r = cloud.admin.audit_list(1000).await.ok()?;
        r.iter().any(|a| a.result == "invalid_request").then_some(r)
    })
    .await;
    let create = records
        .iter()
        .find(|a| a.method == "POST" && a.path == "/v1/instances" && a.result == "ok")
        .expect("instance create audited");
    assert_eq!(create.user_name.as_deref(), Some("alice"));
    assert_eq!(create.status, 201);
    assert_eq!(
        c.audit_list(10).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
}

async fn orphans_are_deleted_on_the_agent(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    // The host runs something the database does not place there.
    let stray = cloud.fleet.with_host("hv-1", |h| {
        let mut spec = h.instances[&vm.id].clone();
        spec.id = api::ids::InstanceId::new();
        h.instances.insert(spec.id, spec.clone());
        spec.id
    });
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    eventually(10, || async {
        cloud
            .fleet
            .with_host("hv-1", |h| !h.instances.contains_key(&stray))
            .then_some(())
    })
    .await;
    assert!(
        cloud
            .fleet
            .with_host("hv-1", |h| h.instances.contains_key(&vm.id)),
        "ours stays"
    );
}

async fn deleting_on_a_down_host_waits_for_it(backend: Backend) {
    let cloud = TestCloud::start_with(backend, |c| {
        c.hosts.heartbeat_interval_secs = 1;
        c.hosts.down_after_secs = 2;
    })
    .await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    let host = cloud
        .fleet
        .with_host("hv-1", |h| h.host_id)
        .expect("enrolled");
    eventually(10, || async {
        (cloud.admin.host_get(host).await.ok()?.health == HostHealth::Suspected).then_some(())
    })
    .await;
    c.instance_delete(vm.id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    // The host may still run it: nothing is given back yet.
    let i = c.instance_get(vm.id).await.unwrap();
    assert_eq!(i.status, InstanceStatus::Deleting);
    assert_eq!(c.quota_get("acme").await.unwrap().usage.addresses, 1);
    // The host comes back, confirms the delete, and only then is it all freed.
    cloud
        .fleet
        .heartbeat(&cloud.internal_url, "hv-1")
        .await
        .unwrap();
    eventually(15, || async {
        (c.instance_get(vm.id).await.err()?.status() == Some(404)).then_some(())
    })
    .await;
    assert_eq!(cloud.fleet.instance_count(), 0);
    assert_eq!(c.quota_get("acme").await.unwrap().usage.addresses, 0);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens an instance's live console as a WebSocket, like the CLI does.
async fn console_socket(
    cloud: &TestCloud,
    id: api::ids::InstanceId,
    token: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let url = format!(
        "{}/v1/instances/{id}/console/stream",
        cloud.url.replacen("http://", "ws://", 1)
    );
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Status and JSON body of an upgrade the server refused.
fn refusal(result: Result<Socket, tungstenite::Error>) -> (u16, serde_json::Value) {
    match result {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got a WebSocket"),
    }
}

/// Every byte until the server closes, and its close frame.
async fn read_to_close(ws: &mut Socket) -> (String, Option<CloseFrame>) {
    let mut data = Vec::new();
    let close = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg.expect("WebSocket message") {
                Message::Binary(b) => data.extend_from_slice(&b),
                Message::Close(frame) => return frame,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("console bytes come as binary messages, got {other:?}"),
            }
        }
        None
    })
    .await
    .expect("the console stream ends within 10 s");
    (String::from_utf8(data).expect("UTF-8 console"), close)
}

async fn console_stream_relays_the_live_console(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web-1")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;
    let token = c.transport.token();

    // Everything the agent sends arrives, in order; its end is a normal close.
    let mut ws = console_socket(&cloud, vm.id, token).await.unwrap();
    let (data, close) = read_to_close(&mut ws).await;
    let mut want = format!("simulated console of web-1 ({})\n", vm.id);
    for n in 1..=CONSOLE_LINES {
        want.push_str(&format!("line {n}\n"));
    }
    assert_eq!(data, want);
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));

    // The agent breaks mid-stream: what came is relayed, then an error close.
    cloud
        .fleet
        .with_host("hv-1", |h| h.console = SimConsole::Breaks);
    let mut ws = console_socket(&cloud, vm.id, token).await.unwrap();
    let (data, close) = read_to_close(&mut ws).await;
    assert_eq!(
        data,
        format!("simulated console of web-1 ({})\nline 1\n", vm.id)
    );
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Error);
    assert!(
        close.reason.contains("lost the console stream"),
        "{}",
        close.reason
    );

    // The client goes away: the stack manager stops reading the agent.
    cloud
        .fleet
        .with_host("hv-1", |h| h.console = SimConsole::Endless);
    let mut ws = console_socket(&cloud, vm.id, token).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("line 2\n") {
        match ws.next().await.expect("more console").unwrap() {
            Message::Binary(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(cloud.fleet.open_console_streams(), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    eventually(5, || async {
        (cloud.fleet.open_console_streams() == 0).then_some(())
    })
    .await;
}

async fn console_stream_refuses_strangers_and_unreachable_agents(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    let c = tenant(&cloud).await;
    cloud.hypervisor("hv-1", 8, 16_384, None).await;
    let vm = c.instance_create(&TestCloud::vm("web-1")).await.unwrap();
    wait_status(&c, vm.id, InstanceStatus::Running).await;

    let (status, body) = refusal(console_socket(&cloud, vm.id, None).await);
    assert_eq!((status, &body["error"]), (401, &"unauthenticated".into()));

    // Another project's instance does not exist for the caller.
    cloud.project("rival").await;
    let bob = cloud.user("bob", "rival", ProjectRole::Member).await;
    let (status, body) = refusal(console_socket(&cloud, vm.id, bob.transport.token()).await);
    assert_eq!((status, &body["error"]), (404, &"not_found".into()));
    let (status, _) =
        refusal(console_socket(&cloud, api::ids::InstanceId::new(), c.transport.token()).await);
    assert_eq!(status, 404);

    // A plain GET is told what the endpoint wants.
    let path = format!("/v1/instances/{}/console/stream", vm.id);
    let resp = support::send(
        reqwest::Client::new()
            .get(format!("{}{path}", cloud.url))
            .bearer_auth(c.transport.token().unwrap()),
        &path,
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.raw);
    assert!(resp.raw.contains("WebSocket"), "{}", resp.raw);

    // The agent cannot be reached: a JSON error, not a socket.
    cloud.fleet.with_host("hv-1", |h| h.failing = true);
    let (status, body) = refusal(console_socket(&cloud, vm.id, c.transport.token()).await);
    assert_eq!((status, &body["error"]), (503, &"unavailable".into()));
    assert_eq!(cloud.fleet.open_console_streams(), 0);
}

/// PostgreSQL only (SQLite's planner keeps no statistics unless asked):
/// tables that fill up faster than autovacuum looks at them (once a minute)
/// are analyzed by the stack manager itself, so the generic plans that
/// prepared statements settle on look rows up by key instead of scanning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statistics_follow_a_burst_of_creates() {
    use sqlx::{Connection, Row};
    let cloud = TestCloud::start(Backend::Postgres).await;
    // Autovacuum may visit a new database early: keep it off this table so
    // that what analyzes it is the stack manager.
    sqlx::query("ALTER TABLE instances SET (autovacuum_enabled = false)")
        .execute(&cloud.state.db.pool)
        .await
        .unwrap();
    for i in 0..3 {
        cloud
            .hypervisor(&format!("hv-{i}"), 64, 262_144, None)
            .await;
    }
    let c = tenant(&cloud).await;
    cloud.quota_for("acme", 200).await;
    for i in 0..150 {
        c.instance_create(&TestCloud::vm(&format!("vm-{i}")))
            .await
            .unwrap();
    }

    // `last_analyze` is set by an explicit ANALYZE only: autovacuum's own
    // runs set `last_autoanalyze`.
    let pool = cloud.state.db.pool.clone();
    eventually(20, || {
        let pool = pool.clone();
        async move {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_stat_user_tables \
                 WHERE relname = 'instances' AND last_analyze IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (row.try_get::<i64, _>("n").ok()? == 1).then_some(())
        }
    })
    .await;

    // The plan every connection now settles on for the agents' status
    // reports: a primary-key lookup.
    let mut conn = cloud.state.db.pool.acquire().await.unwrap().detach();
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE report(text) AS UPDATE instances SET status = 'running' \
         WHERE id = $1 AND desired <> 'deleted' AND deleted_at IS NULL",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query("EXPLAIN EXECUTE report('x')")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("instances_pkey"), "{plan}");
    conn.close().await.unwrap();
}
