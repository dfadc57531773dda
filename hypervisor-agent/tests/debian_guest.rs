//! A real Debian 12 guest (built with debootstrap by
//! `scripts/guest-images.sh`) whose real cloud-init consumes the config
//! drive Strato writes: hostname and authorized key are set by cloud-init
//! itself, which the guest reports on its serial console.

mod support;

use std::time::Duration;

use api::resources::{FlavorCreate, ImageFormat, InstanceStatus};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_in_a_debian_guest_applies_hostname_and_key() {
    let cloud = Cloud::start(AgentOptions {
        virt_type: "qemu",
        uplink: None,
    })
    .await;
    let (image_path, sha) = guest_image("debian.qcow2");
    cloud
        .register_image("debian-12", &image_path, ImageFormat::Qcow2, &sha)
        .await;
    cloud.tenant_basics("deb", "10.82.0.0/24").await;
    cloud
        .admin
        .flavor_create(&FlavorCreate {
            name: "t1.small".into(),
            vcpus: 1,
            ram_mib: 512,
            disk_gib: 3,
        })
        .await
        .expect("flavor");
    let vm = cloud
        .admin
        .instance_create(&api::resources::InstanceCreate {
            name: "deb-1".into(),
            flavor: "t1.small".into(),
            image: "debian-12".into(),
            networks: vec!["deb".into()],
            keypair: Some("test-key".into()),
            user_data: None,
            anti_affinity_group: None,
            start: true,
            relocation: Default::default(),
        })
        .await
        .expect("create");
    let vm = cloud
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(120))
        .await;
    // cloud-init's final stage comes ~45 s after boot under emulation.
    let console = cloud
        .wait_console(vm.id, "STRATO-DEBIAN ready", 1, Duration::from_secs(300))
        .await;
    let fingerprint = ssh_key::PublicKey::from_openssh(TEST_KEY)
        .expect("key")
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    for line in [
        format!("STRATO-DEBIAN instance-id={}", vm.id),
        "STRATO-DEBIAN hostname=deb-1".to_string(),
        format!("STRATO-DEBIAN address={}/24", vm.nics[0].address),
        format!("STRATO-DEBIAN ssh-key={fingerprint}"),
    ] {
        assert!(
            console.contains(&line),
            "console lacks {line:?}:\n{console}"
        );
    }
    // The root disk is a thin overlay grown to the flavor, on the cached image.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(cloud.instance_dir(vm.id).join("root.qcow2"))
        .output()
        .expect("qemu-img");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["virtual-size"], 3u64 << 30);
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.ends_with(&format!("{sha}.qcow2"))),
        "{info}"
    );

    cloud.admin.instance_delete(vm.id).await.expect("delete");
    let admin = cloud.admin.clone();
    wait_async(
        "the Debian VM to be deleted",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move { admin.instance_list().await.ok().filter(|l| l.is_empty()) }
        },
    )
    .await;
    assert!(domains_of(cloud.host_id.expect("host")).is_empty());
}
