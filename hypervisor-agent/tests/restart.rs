//! The agent is SIGKILLed while VMs run and while the stack manager keeps
//! changing desired state; after a restart the VMs are untouched, state
//! converges, nothing is duplicated, and only orphans this host created are
//! removed.

mod support;

use std::time::Duration;

use api::resources::{ImageFormat, InstanceStatus};
use support::*;

fn qemu_pid(domain: &str) -> Option<String> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Defines (not starts) a Strato-named domain carrying `host` as creator,
/// named and identified as agents before host-scoped names did: a
/// restarted agent must still recognize those it created.
fn define_foreign_domain(dir: &std::path::Path, uuid: &str, host: &str) {
    let xml = format!(
        "<domain type='qemu'><name>strato-{uuid}</name><uuid>{uuid}</uuid>\
         <metadata><strato:instance xmlns:strato='https://strato.dev/xmlns/libvirt/instance/1'>\
         <strato:host>{host}</strato:host></strato:instance></metadata>\
         <memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    );
    let path = dir.join(format!("{uuid}.xml"));
    std::fs::write(&path, xml).expect("write xml");
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "define"])
        .arg(&path)
        .output()
        .expect("virsh define");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_leaves_running_vms_alone() {
    let mut cloud = Cloud::start(AgentOptions {
        virt_type: "qemu",
        uplink: None,
    })
    .await;
    let host = cloud.host_id.expect("enrolled");
    let (image_path, sha) = guest_image("tiny.raw");
    cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    cloud.tenant_basics("restart", "10.78.0.0/24").await;

    let keep = cloud.create_vm("keep", "tiny", "restart", None).await;
    let doomed = cloud.create_vm("doomed", "tiny", "restart", None).await;
    for vm in [&keep, &doomed] {
        cloud
            .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(90))
            .await;
        cloud
            .wait_console(vm.id, "STRATO-GUEST ready", 1, Duration::from_secs(60))
            .await;
    }
    let pid_before = qemu_pid(&cloud.domain(keep.id)).expect("qemu pid of a running domain");

    cloud.kill_agent();
    // While the agent is dead: the tenant deletes one VM and creates
    // another, and two stray domains appear: one claiming this host as
    // creator (an orphan from a lost spec) and one from someone else.
    cloud
        .admin
        .instance_delete(doomed.id)
        .await
        .expect("delete while agent down");
    let late = cloud.create_vm("late", "tiny", "restart", None).await;
    let orphan = uuid::Uuid::new_v4().to_string();
    let foreign = uuid::Uuid::new_v4().to_string();
    // Undefined even if the test fails before it would have removed them.
    cloud.undefine_on_drop(&format!("strato-{orphan}"));
    cloud.undefine_on_drop(&format!("strato-{foreign}"));
    define_foreign_domain(cloud.dir.path(), &orphan, &host.to_string());
    define_foreign_domain(cloud.dir.path(), &foreign, "some-other-host");
    tokio::time::sleep(Duration::from_secs(2)).await;

    cloud.start_agent();
    cloud
        .wait_status(late.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    let admin = cloud.admin.clone();
    wait_async("the deleted VM to be gone", Duration::from_secs(60), || {
        let admin = admin.clone();
        async move {
            admin
                .instance_get(doomed.id)
                .await
                .err()
                .filter(|e| e.status() == Some(404))
        }
    })
    .await;
    wait_async(
        "the orphan domain to be removed",
        Duration::from_secs(30),
        || async { (!virsh(&["list", "--all", "--name"]).contains(&orphan)).then_some(()) },
    )
    .await;

    // The surviving VM never stopped: same QEMU process, one boot.
    assert_eq!(
        qemu_pid(&cloud.domain(keep.id)).as_deref(),
        Some(pid_before.as_str()),
        "the running VM was restarted"
    );
    let k = cloud
        .wait_status(keep.id, InstanceStatus::Running, Duration::from_secs(30))
        .await;
    assert_eq!(k.status, InstanceStatus::Running);
    let console = cloud.console(keep.id).await;
    assert_eq!(
        console.matches("STRATO-GUEST ready").count(),
        1,
        "the VM rebooted:\n{console}"
    );

    // Exactly the wanted domains, no duplicates; the foreign one untouched.
    let mut mine = domains_of(host);
    mine.sort();
    let mut want = vec![cloud.domain(keep.id), cloud.domain(late.id)];
    want.sort();
    assert_eq!(mine, want);
    assert!(
        virsh(&["list", "--all", "--name"]).contains(&foreign),
        "a domain of another creator was removed"
    );
    assert!(cloud
        .agent_log()
        .contains("leaving a Strato domain this host did not create"));

    cloud.delete_all(&[keep.id, late.id]).await;
    assert!(domains_of(host).is_empty());
}
