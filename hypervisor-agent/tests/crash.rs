//! A VM that dies behind the agent's back is reported `crashed`, with
//! libvirt's reason, and stays down: restarting is the stack manager's
//! policy, by pushing a new generation. Three ways to die: QEMU SIGKILLed,
//! `virsh destroy`, the domain undefined altogether.

mod support;

use std::time::Duration;

use api::ids::InstanceId;
use api::internal::{InstanceSpec, ObservedInstance, ObservedInstanceState};
use api::resources::{ImageFormat, InstanceStatus};
use support::*;

/// Waits until the agent reports `id` in `state` at generation `generation`
/// or later.
async fn wait_observed(
    agent: &api::AgentClient,
    id: InstanceId,
    state: ObservedInstanceState,
    generation: u64,
) -> ObservedInstance {
    wait_async(
        &format!("the agent to report {id} {state:?} at generation {generation}"),
        Duration::from_secs(60),
        || async move {
            agent
                .instance_list()
                .await
                .ok()?
                .into_iter()
                .find(|o| o.id == id && o.state == state && o.generation >= generation)
        },
    )
    .await
}

fn qemu_pid(domain: &str) -> i32 {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no QEMU pid file for running domain {domain}"))
}

fn running(domain: &str) -> bool {
    virsh(&["list", "--name"]).lines().any(|l| l == domain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_vms_are_reported_and_only_a_new_generation_restarts_them() {
    // The agent alone is under test: the stack manager's restart policy
    // (tests/healing.rs) would restart the VM behind this test's back.
    let cloud = Cloud::start_with(
        AgentOptions {
            virt_type: "qemu",
            uplink: None,
        },
        "[health]\nmonitor_interval_ms = 0\n",
    )
    .await;
    let host = cloud.host_id.expect("enrolled");
    let (image_path, sha) = guest_image("tiny.raw");
    cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    cloud.tenant_basics("crash", "10.82.0.0/24").await;
    let vm = cloud.create_vm("victim", "tiny", "crash", None).await;
    cloud
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    let domain = cloud.domain(vm.id);
    let agent = cloud.agent_client().await;
    let desired = cloud
        .internal_client()
        .desired(host)
        .await
        .expect("desired state");
    let mut spec: InstanceSpec = desired
        .instances
        .into_iter()
        .find(|s| s.id == vm.id)
        .expect("the VM is in its host's desired state");

    // 1. QEMU is SIGKILLed.
    let pid = qemu_pid(&domain);
    // SAFETY: a plain kill(2) of a process this test found by its pid file.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill QEMU {pid}"
    );
    let o = wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Crashed,
        spec.generation,
    )
    .await;
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains("QEMU exited"), "{reason}");
    // The stack manager sees it.
    let i = cloud
        .wait_status(vm.id, InstanceStatus::Crashed, Duration::from_secs(30))
        .await;
    assert_eq!(i.status_reason.as_deref(), Some(reason.as_str()));
    // Pushing the same spec again (what every resync does) restarts nothing.
    let again = agent.instance_put(&spec).await.expect("same spec again");
    assert_eq!(again.state, ObservedInstanceState::Crashed, "{again:?}");
    assert!(
        !running(&domain),
        "the agent restarted a crashed VM by itself"
    );

    // A new generation does.
    spec.generation += 1;
    agent.instance_put(&spec).await.expect("new generation");
    wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Running,
        spec.generation,
    )
    .await;
    assert!(running(&domain));
    assert_ne!(qemu_pid(&domain), pid, "a new QEMU runs the VM");

    // 2. Destroyed behind the agent's back.
    virsh(&["destroy", &domain]);
    let o = wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Crashed,
        spec.generation,
    )
    .await;
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains("destroyed"), "{reason}");
    spec.generation += 1;
    agent.instance_put(&spec).await.expect("new generation");
    wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Running,
        spec.generation,
    )
    .await;

    // 3. Gone from libvirt altogether: a new generation defines it again.
    virsh(&["destroy", &domain]);
    virsh(&["undefine", &domain, "--nvram"]);
    let o = wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Crashed,
        spec.generation,
    )
    .await;
    assert_eq!(
        o.reason.as_deref(),
        Some("the domain vanished from libvirt")
    );
    spec.generation += 1;
    agent.instance_put(&spec).await.expect("new generation");
    wait_observed(
        &agent,
        vm.id,
        ObservedInstanceState::Running,
        spec.generation,
    )
    .await;
    assert_eq!(domains_of(host), vec![domain.clone()]);
    cloud
        .wait_console(vm.id, "STRATO-GUEST ready", 1, Duration::from_secs(60))
        .await;
}
