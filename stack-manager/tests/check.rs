//! The consistency checker (`GET /v1/system/check`, `strato system check`,
//! `stack-manager check`), on both backends: a cloud built and torn down
//! through the API has no drift; each kind of drift made by hand in the
//! database is found, named and counted, by the API and by the binary
//! reading the database beside the running stack manager (exit 1), and
//! putting the rows right again makes it consistent.

#[macro_use]
mod support;

use std::process::Command;

use api::resources::*;
use support::{eventually, Backend, TestCloud};

on_both_backends!(drift_made_by_hand_is_found_and_named);

async fn exec(cloud: &TestCloud, sql: &str) {
    cloud
        .state
        .db
        .gated(sqlx::query(sql).execute(&cloud.state.db.pool))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `stack-manager check --json` on the cloud's database: exit code and report.
fn check_binary(cloud: &TestCloud, dir: &std::path::Path) -> (i32, ConsistencyReport) {
    let config = dir.join("check.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ndatabase_url = \"{}\"\n",
            dir.display(),
            cloud.state.config.database_url()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_stack-manager"))
        .args(["check", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run stack-manager check");
    let report: ConsistencyReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stack-manager check --json: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

async fn drift_made_by_hand_is_found_and_named(backend: Backend) {
    let cloud = TestCloud::start(backend).await;
    cloud.project("acme").await;
    let alice = cloud.user("alice", "acme", ProjectRole::Member).await;
    cloud.basics(&alice).await;
    cloud.hypervisor("hv-1", 16, 65_536, None).await;
    cloud.storage("st-1", 500).await;
    let mut vms = Vec::new();
    for i in 0..3 {
        vms.push(
            alice
                .instance_create(&TestCloud::vm(&format!("vm-{i}")))
                .await
                .expect("vm"),
        );
    }
    let volume = TestCloud::available_volume(&alice, "data", 2).await;
    eventually(15, || async {
        let all = alice.instance_list().await.ok()?;
        all.iter()
            .all(|i| i.status == InstanceStatus::Running)
            .then_some(())
    })
    .await;
    alice
        .attachment_create(vms[0].id, "data")
        .await
        .expect("attach");
    alice.instance_delete(vms[2].id).await.expect("delete");
    eventually(15, || async {
        alice.instance_get(vms[2].id).await.is_err().then_some(())
    })
    .await;

    // Built and torn down through the API: nothing drifted.
    let report = cloud.admin.system_check().await.expect("check");
    assert!(report.consistent, "{report:#?}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "quota_usage",
            "host_allocations",
            "addresses",
            "attachments"
        ]
    );
    let rows = |n: &str| report.checks.iter().find(|c| c.name == n).unwrap().rows;
    assert!(rows("quota_usage") >= 2, "admin and acme: {report:#?}");
    assert_eq!(rows("host_allocations"), 2);
    assert_eq!(rows("attachments"), 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, from_binary) = check_binary(&cloud, dir.path());
    assert_eq!(code, 0, "{from_binary:#?}");
    assert!(from_binary.consistent);

    // Drift of every kind, by hand.
    let acme = cloud.admin.project_get("acme").await.unwrap().id;
    exec(
        &cloud,
        &format!("UPDATE quotas SET used_vcpus = used_vcpus + 3 WHERE project_id = '{acme}'"),
    )
    .await;
    exec(
        &cloud,
        "UPDATE hosts SET alloc_instances = alloc_instances + 1 WHERE name = 'hv-1'",
    )
    .await;
    exec(
        &cloud,
        &format!(
            "UPDATE addresses SET instance_id = '{}' WHERE instance_id = '{}'",
            vms[2].id, vms[1].id
        ),
    )
    .await;
    exec(
        &cloud,
        &format!(
            "UPDATE attachments SET instance_id = '{}' WHERE volume_id = '{}'",
            vms[2].id, volume.id
        ),
    )
    .await;

    let report = cloud.admin.system_check().await.expect("check");
    assert!(!report.consistent);
    let find = |check: &str, field: &str| {
        report
            .drift
            .iter()
            .find(|d| d.check == check && d.field == field)
            .unwrap_or_else(|| panic!("no {check}/{field} drift in {report:#?}"))
            .clone()
    };
    let q = find("quota_usage", "used_vcpus");
    assert_eq!(
        (
            q.subject.as_str(),
            q.actual.map(|a| q.recorded.unwrap() - a)
        ),
        ("acme", Some(3))
    );
    // Moving vm-1's addresses to the deleted vm-2 also shows in acme's
    // address usage: the live instances now hold fewer.
    let a = find("quota_usage", "used_addresses");
    assert_eq!(a.subject, "acme");
    let h = find("host_allocations", "alloc_instances");
    assert_eq!(h.subject, "hv-1");
    assert_eq!(h.recorded.unwrap() - h.actual.unwrap(), 1);
    let addr = find("addresses", "instance_id");
    assert!(
        addr.message.contains(&vms[2].id.to_string()),
        "{}",
        addr.message
    );
    let att = find("attachments", "attachment");
    assert!(
        att.message.contains("its instance is deleted or gone"),
        "{}",
        att.message
    );
    let count = |n: &str| report.checks.iter().find(|c| c.name == n).unwrap().drift;
    assert_eq!(count("quota_usage"), 2, "{report:#?}");
    assert_eq!(count("host_allocations"), 1);
    assert!(count("addresses") >= 1);
    assert_eq!(count("attachments"), 1);

    // The binary, beside the running stack manager, finds the same and
    // exits 1.
    let (code, from_binary) = check_binary(&cloud, dir.path());
    assert_eq!(code, 1);
    assert_eq!(from_binary.drift, report.drift);

    // Put right, it is consistent again.
    exec(
        &cloud,
        &format!("UPDATE quotas SET used_vcpus = used_vcpus - 3 WHERE project_id = '{acme}'"),
    )
    .await;
    exec(
        &cloud,
        "UPDATE hosts SET alloc_instances = alloc_instances - 1 WHERE name = 'hv-1'",
    )
    .await;
    exec(
        &cloud,
        &format!(
            "UPDATE addresses SET instance_id = '{}' WHERE instance_id = '{}'",
            vms[1].id, vms[2].id
        ),
    )
    .await;
    exec(
        &cloud,
        &format!(
            "UPDATE attachments SET instance_id = '{}' WHERE volume_id = '{}'",
            vms[0].id, volume.id
        ),
    )
    .await;
    let report = cloud.admin.system_check().await.expect("check");
    assert!(report.consistent, "{report:#?}");
}
