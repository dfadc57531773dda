//! Replicated volumes through the stack manager, on three real storage
//! agents: a 2-replica volume is placed on two distinct nodes, its copies
//! are pushed their parts (primary with its peer, replica) and reported in
//! sync; the primary's node dies and the health monitor promotes the
//! in-sync copy under a new epoch; the dead node returns as a replica,
//! resyncs, and is marked in sync again from the primary's report; the
//! delete removes every copy.

#[macro_use]
mod support;

use api::ids::{HostId, VolumeId};
use api::internal::{ObservedPeerState, ObservedVolume, ReplicaRole};
use api::resources::{
    CopyState, EnrollmentTokenCreate, HostKind, ProjectRole, VolumeCreate, VolumeSource,
    VolumeStatus,
};
use support::{eventually, Backend, TestCloud};
use testkit::{workspace_bin, StorageAgent};

async fn reported(agent: &StorageAgent, id: VolumeId) -> Option<ObservedVolume> {
    agent
        .client()
        .volume_list()
        .await
        .ok()?
        .into_iter()
        .find(|o| o.id == id)
}

on_both_backends!(a_replicated_volume_is_placed_fails_over_resyncs_and_is_deleted_through_the_api);

async fn a_replicated_volume_is_placed_fails_over_resyncs_and_is_deleted_through_the_api(
    backend: Backend,
) {
    let cloud = TestCloud::start_with(backend, |c| {
        c.hosts.heartbeat_interval_secs = 1;
        c.hosts.down_after_secs = 3;
        c.health.suspect_grace_secs = 1;
        c.health.monitor_interval_ms = 200;
        c.health.storage_failover_after_secs = 3;
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut agents = Vec::new();
    let mut hosts: Vec<HostId> = Vec::new();
    for i in 0..3 {
        let token = cloud
            .admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind: HostKind::Storage,
                rack: None,
                expires_in_secs: 600,
            })
            .await
            .expect("token")
            .secret;
        let agent = StorageAgent::start(
            &workspace_bin(env!("CARGO_BIN_EXE_stack-manager"), "storage-agent"),
            &dir.path().join(format!("storage-{i}")),
            &cloud.internal_url,
            &token,
        );
        hosts.push(agent.enrolled(&cloud.admin).await);
        agents.push(agent);
    }
    cloud.project("data").await;
    let alice = cloud.user("alice", "data", ProjectRole::Member).await;

    // Out of range is refused, and changes nothing.
    let err = alice
        .volume_create(&VolumeCreate {
            name: "four".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: Some(4),
        })
        .await
        .expect_err("4 replicas");
    assert_eq!(err.status(), Some(400), "{err}");

    let v = alice
        .volume_create(&VolumeCreate {
            name: "db".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: Some(2),
        })
        .await
        .expect("volume");
    let v = eventually(30, || async {
        let v = alice.volume_get(v.id).await.ok()?;
        (v.status == VolumeStatus::Available).then_some(v)
    })
    .await;
    assert_eq!(v.replicas, 2);
    assert_eq!(v.copies.len(), 1, "{v:?}");
    let primary = v.host_id.expect("placed");
    let copy = v.copies[0].host_id;
    assert_ne!(primary, copy, "both copies on one node");
    let at = |h: HostId| hosts.iter().position(|x| *x == h).expect("known host");
    let (p, c) = (at(primary), at(copy));

    // The nodes were given their parts, and the primary reaches its peer.
    let o = eventually(30, || async {
        let o = reported(&agents[p], v.id).await?;
        let r = o.replication.as_ref()?;
        (r.role == ReplicaRole::Primary
            && r.peers
                .iter()
                .any(|x| x.host == copy && x.state == ObservedPeerState::InSync))
        .then_some(o)
    })
    .await;
    let epoch = o.replication.expect("replicated").epoch;
    let r = reported(&agents[c], v.id)
        .await
        .expect("the copy's node holds it");
    assert_eq!(r.replication.map(|r| r.role), Some(ReplicaRole::Replica));

    // The primary's node dies: the in-sync copy is promoted.
    let started = std::time::Instant::now();
    agents[p].kill();
    let promoted = eventually(30, || async {
        let v = alice.volume_get(v.id).await.ok()?;
        (v.host_id == Some(copy)).then_some(v)
    })
    .await;
    assert_eq!(promoted.copies.len(), 1);
    assert_eq!(promoted.copies[0].host_id, primary);
    assert_eq!(promoted.copies[0].state, CopyState::OutOfSync);
    eventually(30, || async {
        let r = reported(&agents[c], v.id).await?.replication?;
        (r.role == ReplicaRole::Primary && r.epoch > epoch).then_some(())
    })
    .await;

    eprintln!(
        "primary killed to copy promoted and serving: {:?}",
        started.elapsed()
    );
    let metrics = || async {
        reqwest::get(format!("{}/metrics", cloud.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    };
    let m = metrics().await;
    assert!(
        m.contains("strato_volume_copies{state=\"out_of_sync\"} 1"),
        "{m}"
    );

    // It returns: a replica of the new epoch, resynced, then in sync.
    let started = std::time::Instant::now();
    agents[p].restart();
    eventually(60, || async {
        let v = alice.volume_get(v.id).await.ok()?;
        (v.copies.first()?.state == CopyState::InSync).then_some(())
    })
    .await;
    eprintln!(
        "old primary restarted to in sync again: {:?}",
        started.elapsed()
    );
    let m = metrics().await;
    assert!(
        m.contains("strato_volume_copies{state=\"in_sync\"} 1"),
        "{m}"
    );
    assert!(m.contains("strato_volume_copies_behind_bytes 0"), "{m}");
    let r = reported(&agents[p], v.id)
        .await
        .expect("the old primary holds it");
    assert_eq!(r.replication.map(|r| r.role), Some(ReplicaRole::Replica));

    cloud.assert_consistent().await;

    // Deleted: both nodes drop their copies.
    alice.volume_delete(v.id).await.expect("delete");
    eventually(60, || async {
        let a = reported(&agents[p], v.id).await;
        let b = reported(&agents[c], v.id).await;
        (a.is_none() && b.is_none() && alice.volume_get(v.id).await.is_err()).then_some(())
    })
    .await;
    cloud.assert_consistent().await;
}
