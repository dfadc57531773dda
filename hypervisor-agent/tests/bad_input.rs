//! Bad images and libvirt failures: the instance goes to `error` with the
//! reason visible through the API, and nothing half-created stays behind.

mod support;

use std::time::Duration;

use api::ids::InstanceId;
use api::resources::{ImageFormat, InstanceStatus};
use support::*;

async fn expect_error(cloud: &Cloud, id: InstanceId, needle: &str) {
    let i = cloud
        .wait_status(id, InstanceStatus::Error, Duration::from_secs(60))
        .await;
    let reason = i.status_reason.unwrap_or_default();
    assert!(
        reason.contains(needle),
        "reason {reason:?} lacks {needle:?}"
    );
}

/// Nothing but the persisted spec remains for a failed first create.
fn nothing_half_created(cloud: &Cloud, id: InstanceId) {
    assert!(
        !virsh(&["list", "--all", "--name"]).contains(&id.to_string()),
        "a domain was left defined"
    );
    let left: Vec<String> = std::fs::read_dir(cloud.instance_dir(id))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|f| f == "spec.json"),
        "files left behind: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_libvirt_errors_end_in_error_with_a_reason() {
    let cloud = Cloud::start(AgentOptions {
        virt_type: "qemu",
        uplink: None,
    })
    .await;
    let host = cloud.host_id.expect("enrolled");
    let (image_path, sha) = guest_image("tiny.raw");
    cloud.tenant_basics("bad", "10.79.0.0/24").await;

    // Checksum mismatch.
    cloud
        .register_image("wrong-sum", &image_path, ImageFormat::Raw, &"ab".repeat(32))
        .await;
    let vm = cloud.create_vm("sum", "wrong-sum", "bad", None).await;
    expect_error(&cloud, vm.id, "checksum mismatch").await;
    nothing_half_created(&cloud, vm.id);

    // Declared qcow2, but the file is raw.
    cloud
        .register_image("wrong-format", &image_path, ImageFormat::Qcow2, &sha)
        .await;
    let vm2 = cloud.create_vm("fmt", "wrong-format", "bad", None).await;
    expect_error(&cloud, vm2.id, "declared format qcow2 but the file is raw").await;
    nothing_half_created(&cloud, vm2.id);

    // The image file does not exist.
    let missing = cloud.dir.path().join("no-such-image.raw");
    cloud
        .register_image("missing", &missing, ImageFormat::Raw, &sha)
        .await;
    let vm3 = cloud.create_vm("gone", "missing", "bad", None).await;
    expect_error(&cloud, vm3.id, "cannot read").await;
    nothing_half_created(&cloud, vm3.id);
    // No half-fetched image in the cache either.
    let cached: Vec<_> = std::fs::read_dir(cloud.agent_state.join("images"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "cache holds {cached:?}");

    // A path outside the image directories (here a host file) is refused
    // before it is read.
    cloud
        .register_image(
            "host-file",
            std::path::Path::new("/etc/hostname"),
            ImageFormat::Raw,
            &sha,
        )
        .await;
    let vm5 = cloud.create_vm("snoop", "host-file", "bad", None).await;
    expect_error(&cloud, vm5.id, "outside the image directories").await;
    nothing_half_created(&cloud, vm5.id);

    // A libvirt failure on a later change: the root disk is corrupted while
    // the VM is stopped, so QEMU refuses to start it.
    cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    let vm4 = cloud.create_vm("corrupt", "tiny", "bad", None).await;
    cloud
        .wait_status(vm4.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    cloud.act(vm4.id, "stop", InstanceStatus::Stopped).await;
    std::fs::write(
        cloud.instance_dir(vm4.id).join("root.qcow2"),
        b"not a disk image",
    )
    .expect("corrupt");
    cloud
        .admin
        .instance_action(vm4.id, "start")
        .await
        .expect("start");
    expect_error(&cloud, vm4.id, "libvirt").await;

    // Errored instances delete cleanly.
    cloud
        .delete_all(&[vm.id, vm2.id, vm3.id, vm4.id, vm5.id])
        .await;
    assert!(domains_of(host).is_empty());
    for id in [vm.id, vm2.id, vm3.id, vm4.id] {
        assert!(!cloud.instance_dir(id).exists());
    }
}
