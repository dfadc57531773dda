//! Host networking: a tenant network becomes a Linux bridge at the
//! network's MTU; two VMs on it reach each other over real L2 (one pings
//! the other from inside the guest); the bridge goes with the last VM.
//!
//! VLAN sub-interfaces (`<uplink>.<vlan>` enslaved to the bridge) are not
//! exercised here: this machine's kernel has no 8021q support
//! (`ip link add ... type vlan` answers "Unknown device type").

mod support;

use std::process::Command;
use std::time::Duration;

use api::resources::{ImageFormat, InstanceStatus, NetworkCreate, SubnetCreate};
use support::*;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_on_a_network_share_a_bridge_and_reach_each_other() {
    let cloud = Cloud::start(AgentOptions {
        virt_type: "qemu",
        uplink: None,
    })
    .await;
    let (image_path, sha) = guest_image("tiny.raw");
    cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    cloud.tenant_basics("plain", "10.83.0.0/24").await;
    let net = cloud
        .admin
        .network_create(&NetworkCreate {
            name: "lan".into(),
            vlan: Some(42),
            mtu: 1400,
        })
        .await
        .expect("network");
    cloud
        .admin
        .subnet_create(
            net.id,
            &SubnetCreate {
                name: "v4".into(),
                cidr: "10.84.0.0/24".parse().expect("cidr"),
                gateway: None,
                pools: vec![],
                reserved: vec![],
                dns_servers: vec![],
            },
        )
        .await
        .expect("subnet");

    let a = cloud.create_vm("a", "tiny", "lan", None).await;
    let a = cloud
        .wait_status(a.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    cloud
        .wait_console(a.id, "STRATO-GUEST ready", 1, Duration::from_secs(60))
        .await;
    let target = a.nics[0].address;
    let b = cloud
        .create_vm(
            "b",
            "tiny",
            "lan",
            Some(format!("#!/bin/sh\nif ping -c 3 -W 2 {target} >/dev/null; then echo PING-OK; else echo PING-FAILED; fi\n")),
        )
        .await;
    let console = cloud
        .wait_console(b.id, "PING-", 1, Duration::from_secs(90))
        .await;
    assert!(
        console.contains("PING-OK"),
        "b could not reach a at {target}:\n{console}"
    );

    // The bridge, at the network's MTU, carries both domains' NICs. The
    // network has a VLAN but this agent has no uplink: the bridge stays
    // local, and the agent says so.
    let bridge = hypervisor_agent::network::bridge_name(net.id);
    let members = ip(&["-o", "link", "show", "master", &bridge]);
    assert_eq!(members.lines().count(), 2, "two VM taps:\n{members}");
    assert!(ip(&["-o", "link", "show", &bridge]).contains("mtu 1400"));
    assert!(cloud.agent_log().contains("no uplink is configured"));

    cloud.delete_all(&[a.id, b.id]).await;
    // The last instance gone takes the bridge along.
    assert!(ip(&["-o", "link", "show"])
        .lines()
        .all(|l| !l.contains(&bridge)));
}
