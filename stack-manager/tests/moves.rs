//! Planned moves through the real API, the real mover and a real database
//! (both backends), with simulated agents: a rebalancing plan onto a new
//! host (dry run, then executed: same id, MACs and addresses, run on one
//! host only, `never` instances untouched), a drain (an attached volume's
//! ACL follows its instance; `never` instances stay and are counted), and
//! moves that fail — the target's agent fails, the source never confirms
//! the stop — are aborted with the instance running where it was; and,
//! with two replicas on PostgreSQL, a plan accepted by the one that does
//! not hold the mover's lease runs on the one that does.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::time::Instant;

use api::ids::{HostId, InstanceId};
use api::internal::PowerState;
use api::resources::*;
use support::sim_agent::{sim_iqn, Beats};
use support::{eventually, Backend, TestCloud};

on_both_backends!(
    rebalancing_moves_instances_onto_a_new_host,
    a_drain_moves_every_allowed_instance_and_its_volume,
    a_move_whose_target_agent_fails_is_aborted,
    a_move_whose_source_never_confirms_is_aborted,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_plan_accepted_by_a_replica_without_the_mover_runs_on_the_one_with_it() {
    let cloud = moving_cloud(Backend::Postgres, |_| {}).await;
    // This replica takes the mover's lease at its first pass; the second
    // one, started after, stands by.
    eventually(15, || async {
        let rs = cloud.admin.system_replicas().await.ok()?;
        rs.iter()
            .any(|r| r.this && r.leases.iter().any(|l| l.name == "mover"))
            .then_some(())
    })
    .await;
    let (url, second, _dir) = cloud.second_replica().await;
    let admin_b = api::Client::new(&url, &cloud.admin_token);
    eventually(15, || async {
        let t = second.tasks.status("mover")?;
        (t.runs > 0 && t.details["standby"] == true).then_some(())
    })
    .await;

    let beats = Beats::default();
    let c = tenant(&cloud, 10).await;
    hypervisor(&cloud, &beats, "hv-1").await;
    hypervisor(&cloud, &beats, "hv-2").await;
    let vms = create_vms(&c, "web", 6).await;
    for v in &vms {
        running_on(&c, v.id, v.host_id.unwrap()).await;
    }
    let hv3 = hypervisor(&cloud, &beats, "hv-3").await;
    let plan = admin_b
        .host_rebalance(&RebalanceRequest {
            dry_run: false,
            band: Some(0.1),
        })
        .await
        .expect("the plan, through the replica without the mover");
    assert!(plan.queued && !plan.moves.is_empty(), "{plan:#?}");
    for m in &plan.moves {
        assert_eq!(m.to, hv3);
        running_on(&c, m.instance_id, hv3).await;
    }
    // Its moves ran on the mover's holder; the plan is forgotten once done.
    let mover = cloud.state.tasks.status("mover").expect("mover");
    assert!(
        mover.details["moved_total"].as_u64().unwrap_or(0) >= plan.moves.len() as u64,
        "{mover:?}"
    );
    eventually(10, || async {
        let t = cloud.state.tasks.status("mover")?;
        (t.details["planned_pending"] == 0).then_some(())
    })
    .await;
    cloud.assert_consistent().await;
    second.stop().await;
}

async fn moving_cloud(
    backend: Backend,
    tweak: impl FnOnce(&mut stack_manager::config::Config),
) -> TestCloud {
    TestCloud::start_with(backend, |c| {
        c.hosts.resync_interval_secs = 2;
        c.moves.interval_ms = 200;
        tweak(c);
    })
    .await
}

async fn tenant(cloud: &TestCloud, instances: u64) -> api::Client {
    cloud.project("acme").await;
    cloud.quota_for("acme", instances).await;
    let c = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&c).await;
    c
}

async fn hypervisor(cloud: &TestCloud, beats: &Beats, key: &str) -> HostId {
    // 4 vCPU (16 allocatable) and 4 GiB: eight `small` VMs fill it by RAM.
    let id = cloud.hypervisor(key, 4, 4096, None).await;
    cloud.beat(beats, key);
    id
}

/// The simulated hosts whose agent holds a spec of `id`.
fn holders(cloud: &TestCloud, id: InstanceId) -> Vec<String> {
    cloud
        .fleet
        .hosts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| h.instances.contains_key(&id))
        .map(|(k, _)| k.clone())
        .collect()
}

fn power_on(cloud: &TestCloud, key: &str, id: InstanceId) -> Option<PowerState> {
    cloud
        .fleet
        .with_host(key, |h| h.instances.get(&id).map(|s| s.power))
}

async fn running_on(c: &api::Client, id: InstanceId, host: HostId) -> Instance {
    eventually(30, || async {
        let i = c.instance_get(id).await.ok()?;
        (i.host_id == Some(host) && i.status == InstanceStatus::Running && i.moving_to.is_none())
            .then_some(i)
    })
    .await
}

async fn events_of(c: &api::Client, id: InstanceId) -> Vec<String> {
    c.instance_events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

async fn create_vms(c: &api::Client, prefix: &str, n: usize) -> Vec<Instance> {
    let mut vms = Vec::new();
    for i in 0..n {
        vms.push(
            c.instance_create(&TestCloud::vm(&format!("{prefix}-{i}")))
                .await
                .unwrap(),
        );
    }
    vms
}

async fn rebalancing_moves_instances_onto_a_new_host(backend: Backend) {
    let cloud = moving_cloud(backend, |_| {}).await;
    let beats = Beats::default();
    let c = tenant(&cloud, 20).await;
    let hv1 = hypervisor(&cloud, &beats, "hv-1").await;
    let hv2 = hypervisor(&cloud, &beats, "hv-2").await;
    let mut pinned = TestCloud::vm("pinned");
    pinned.relocation = Relocation::Never;
    let pinned = c.instance_create(&pinned).await.unwrap();
    assert_eq!(pinned.relocation, Relocation::Never);
    let mut vms = create_vms(&c, "web", 15).await;
    vms.push(pinned.clone());
    for v in &vms {
        running_on(&c, v.id, v.host_id.unwrap()).await;
    }
    for h in [hv1, hv2] {
        assert_eq!(
            cloud.admin.host_get(h).await.unwrap().allocated.instances,
            8
        );
    }
    let hv3 = hypervisor(&cloud, &beats, "hv-3").await;

    let asked = Instant::now();
    let plan = cloud
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: true,
            band: Some(0.1),
        })
        .await
        .unwrap();
    let took = asked.elapsed();
    eprintln!(
        "plan of {} moves (lower bound {}) over 3 hosts / 16 VMs: {:.3} ms planning, {:?} through the API",
        plan.moves.len(),
        plan.lower_bound,
        plan.plan_ms,
        took
    );
    assert!(!plan.queued);
    assert!(plan.within_band, "{plan:#?}");
    assert!(!plan.moves.is_empty());
    assert!(plan.moves.len() as u64 >= plan.lower_bound);
    for m in &plan.moves {
        assert_eq!(m.to, hv3, "every move goes onto the new host: {m:?}");
        assert_ne!(
            m.instance_id, pinned.id,
            "a `never` instance is not planned"
        );
    }
    for h in &plan.hosts {
        assert_eq!(h.within_band_after, Some(true), "{h:?}");
    }
    let new = plan.hosts.iter().find(|h| h.host_id == hv3).unwrap();
    assert_eq!(new.before_ram_share, 0.0);
    // A dry run moves nothing.
    assert_eq!(
        cloud.admin.host_get(hv3).await.unwrap().allocated.instances,
        0
    );

    let plan = cloud
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: false,
            band: Some(0.1),
        })
        .await
        .unwrap();
    assert!(plan.queued);
    let before: HashMap<InstanceId, Instance> = vms.iter().map(|v| (v.id, v.clone())).collect();
    for m in &plan.moves {
        let moved = running_on(&c, m.instance_id, m.to).await;
        let was = &before[&m.instance_id];
        assert_eq!(moved.name, was.name);
        assert_eq!(moved.nics, was.nics, "same MACs and addresses");
        // It runs on one host only: the source deleted it as an orphan.
        eventually(20, || async {
            (holders(&cloud, m.instance_id) == vec!["hv-3".to_string()]).then_some(())
        })
        .await;
        assert_eq!(
            power_on(&cloud, "hv-3", m.instance_id),
            Some(PowerState::Running)
        );
        let events = events_of(&c, m.instance_id).await;
        for want in ["instance.move_started", "instance.moved"] {
            assert!(events.iter().any(|e| e == want), "{events:?}");
        }
    }
    let after = cloud.admin.host_get(hv3).await.unwrap();
    assert_eq!(after.allocated.instances as usize, plan.moves.len());
    let p = c.instance_get(pinned.id).await.unwrap();
    assert_eq!(p.host_id, pinned.host_id, "a `never` instance stays put");
    // The cloud is now within the band: a new plan has nothing to do.
    let again = cloud
        .admin
        .host_rebalance(&RebalanceRequest {
            dry_run: true,
            band: Some(0.1),
        })
        .await
        .unwrap();
    assert!(again.moves.is_empty(), "{again:#?}");
    assert!(again.within_band);
    cloud.assert_consistent().await;
}

async fn a_drain_moves_every_allowed_instance_and_its_volume(backend: Backend) {
    let cloud = moving_cloud(backend, |_| {}).await;
    let beats = Beats::default();
    let c = tenant(&cloud, 10).await;
    let hv1 = hypervisor(&cloud, &beats, "hv-1").await;
    cloud.storage("st-1", 100).await;
    cloud.beat(&beats, "st-1");
    let vms = create_vms(&c, "app", 3).await;
    let mut pinned = TestCloud::vm("pinned");
    pinned.relocation = Relocation::Never;
    let pinned = c.instance_create(&pinned).await.unwrap();
    // Pinned after the fact too, through PATCH.
    let late = c.instance_create(&TestCloud::vm("late")).await.unwrap();
    let late = c
        .instance_update(
            late.id,
            &InstanceUpdate {
                relocation: Some(Relocation::Never),
            },
        )
        .await
        .unwrap();
    assert_eq!(late.relocation, Relocation::Never);
    let vol = c
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .unwrap();
    eventually(10, || async {
        (c.volume_get(vol.id).await.ok()?.status == VolumeStatus::Available).then_some(())
    })
    .await;
    c.attachment_create(vms[0].id, "data").await.unwrap();
    for v in vms.iter().chain([&pinned, &late]) {
        running_on(&c, v.id, hv1).await;
    }
    eventually(10, || async {
        let acl = cloud.fleet.with_host("st-1", |h| {
            h.volumes.get(&vol.id).map(|v| v.allowed_initiators.clone())
        })?;
        (acl == vec![sim_iqn("hv-1")]).then_some(())
    })
    .await;
    let hv2 = hypervisor(&cloud, &beats, "hv-2").await;

    let h = cloud
        .admin
        .host_update(
            hv1,
            &HostUpdate {
                admin_state: AdminState::Draining,
            },
        )
        .await
        .unwrap();
    assert_eq!(h.pinned_instances, 2);
    for v in &vms {
        let moved = running_on(&c, v.id, hv2).await;
        assert_eq!(moved.nics, v.nics);
        eventually(20, || async {
            (holders(&cloud, v.id) == vec!["hv-2".to_string()]).then_some(())
        })
        .await;
    }
    // The volume followed its instance: attached there, and its target now
    // lets in only the new host.
    let spec = cloud
        .fleet
        .with_host("hv-2", |h| h.instances.get(&vms[0].id).cloned())
        .expect("pushed to the new host");
    assert_eq!(spec.volumes.len(), 1);
    assert_eq!(spec.volumes[0].iqn, vol.iqn);
    eventually(10, || async {
        let acl = cloud.fleet.with_host("st-1", |h| {
            h.volumes.get(&vol.id).map(|v| v.allowed_initiators.clone())
        })?;
        (acl == vec![sim_iqn("hv-2")]).then_some(())
    })
    .await;
    assert_eq!(
        c.volume_get(vol.id).await.unwrap().status,
        VolumeStatus::InUse
    );
    // `never` instances stay, and the host says how many.
    for v in [&pinned, &late] {
        let i = c.instance_get(v.id).await.unwrap();
        assert_eq!(i.host_id, Some(hv1));
        assert_eq!(i.status, InstanceStatus::Running);
    }
    let h = cloud.admin.host_get(hv1).await.unwrap();
    assert_eq!(h.allocated.instances, 2);
    assert_eq!(h.pinned_instances, 2);
    // Taken back.
    let h = cloud
        .admin
        .host_update(
            hv1,
            &HostUpdate {
                admin_state: AdminState::Enabled,
            },
        )
        .await
        .unwrap();
    assert_eq!(h.admin_state, AdminState::Enabled);
    let more = c.instance_create(&TestCloud::vm("after")).await.unwrap();
    assert_eq!(
        more.host_id,
        Some(hv1),
        "an enabled, emptier host takes work again"
    );
    cloud.assert_consistent().await;
}

async fn a_move_whose_target_agent_fails_is_aborted(backend: Backend) {
    let cloud = moving_cloud(backend, |_| {}).await;
    let beats = Beats::default();
    let c = tenant(&cloud, 4).await;
    let hv1 = hypervisor(&cloud, &beats, "hv-1").await;
    let vm = c.instance_create(&TestCloud::vm("db")).await.unwrap();
    running_on(&c, vm.id, hv1).await;
    let hv2 = hypervisor(&cloud, &beats, "hv-2").await;
    // It heartbeats, but its agent answers nothing but errors.
    cloud.fleet.with_host("hv-2", |h| h.failing = true);

    cloud
        .admin
        .host_update(
            hv1,
            &HostUpdate {
                admin_state: AdminState::Draining,
            },
        )
        .await
        .unwrap();
    eventually(30, || async {
        let events = events_of(&c, vm.id).await;
        events
            .iter()
            .any(|e| e == "instance.move_failed")
            .then_some(())
    })
    .await;
    let events = events_of(&c, vm.id).await;
    assert!(
        events.iter().any(|e| e == "instance.move_started"),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "instance.moved"), "{events:?}");
    let i = running_on(&c, vm.id, hv1).await;
    assert_eq!(i.nics, vm.nics);
    assert_eq!(power_on(&cloud, "hv-1", vm.id), Some(PowerState::Running));
    assert_eq!(holders(&cloud, vm.id), vec!["hv-1".to_string()]);
    let target = cloud.admin.host_get(hv2).await.unwrap();
    assert_eq!(
        target.allocated.instances, 0,
        "the target's claim was released"
    );
    assert_eq!(target.allocated.vcpus, 0);
    cloud.assert_consistent().await;
}

async fn a_move_whose_source_never_confirms_is_aborted(backend: Backend) {
    let cloud = moving_cloud(backend, |c| c.moves.stop_timeout_secs = 2).await;
    let beats = Beats::default();
    let c = tenant(&cloud, 4).await;
    let hv1 = hypervisor(&cloud, &beats, "hv-1").await;
    let vm = c.instance_create(&TestCloud::vm("db")).await.unwrap();
    running_on(&c, vm.id, hv1).await;
    let hv2 = hypervisor(&cloud, &beats, "hv-2").await;
    // The source keeps heartbeating (the VM running) but takes no push.
    cloud.fleet.with_host("hv-1", |h| h.failing = true);

    cloud
        .admin
        .host_update(
            hv1,
            &HostUpdate {
                admin_state: AdminState::Draining,
            },
        )
        .await
        .unwrap();
    let moving = eventually(10, || async {
        let i = c.instance_get(vm.id).await.ok()?;
        i.moving_to.is_some().then_some(i)
    })
    .await;
    assert_eq!(moving.moving_to, Some(hv2));
    assert_eq!(moving.host_id, Some(hv1));
    eventually(30, || async {
        let events = events_of(&c, vm.id).await;
        events
            .iter()
            .any(|e| e == "instance.move_failed")
            .then_some(())
    })
    .await;
    let failed = c.instance_events(vm.id).await.unwrap();
    let last = failed
        .iter()
        .rev()
        .find(|e| e.event == "instance.move_failed")
        .unwrap();
    assert!(
        last.message.contains("did not confirm the stop"),
        "{}",
        last.message
    );
    // Nothing ever reached the target, and its claim is gone.
    assert!(holders(&cloud, vm.id) == vec!["hv-1".to_string()]);
    let target = cloud.admin.host_get(hv2).await.unwrap();
    assert_eq!(target.allocated.instances, 0);
    // The source is told to run it again as soon as it answers.
    cloud.fleet.with_host("hv-1", |h| h.failing = false);
    running_on(&c, vm.id, hv1).await;
    eventually(20, || async {
        (power_on(&cloud, "hv-1", vm.id) == Some(PowerState::Running)).then_some(())
    })
    .await;
    cloud.assert_consistent().await;
}
