//! A volume served by Strato's storage agent (its own iSCSI target) is
//! hot-plugged into a running VM as a libvirt network disk with CHAP; the
//! guest writes a pattern; the volume is detached, attached to a second VM,
//! and the pattern is read back there. A target that cannot be reached
//! puts the instance in `error` with the reason.

mod support;

use std::time::Duration;

use api::resources::{ImageFormat, InstanceStatus, VolumeCreate, VolumeSource, VolumeStatus};
use support::storage::start_storage;
use support::*;

const WAIT_FOR_DISK: &str = "echo WAITING-FOR-VOLUME\n\
    i=0; while [ ! -b /dev/vdc ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done\n\
    [ -b /dev/vdc ] || { echo VOLUME-MISSING; exit 1; }\n";

async fn wait_volume(cloud: &Cloud, id: api::ids::VolumeId, status: VolumeStatus) {
    let admin = cloud.admin.clone();
    wait_async(
        &format!("volume {id} to be {}", status.as_str()),
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                admin
                    .volume_get(id)
                    .await
                    .ok()
                    .filter(|v| v.status == status)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_moves_between_vms_with_its_data() {
    let cloud = Cloud::start(AgentOptions {
        virt_type: "qemu",
        uplink: None,
    })
    .await;
    let mut storage = start_storage(
        &cloud.admin,
        &cloud.internal_url,
        &cloud.dir.path().join("storage"),
    )
    .await;
    let (image_path, sha) = guest_image("tiny.raw");
    cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    cloud.tenant_basics("vols", "10.80.0.0/24").await;

    let vol = cloud
        .admin
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .expect("volume");
    wait_volume(&cloud, vol.id, VolumeStatus::Available).await;

    let pattern = format!(
        "strato-pattern-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let writer = cloud
        .create_vm(
            "writer",
            "tiny",
            "vols",
            Some(format!(
                "#!/bin/sh\n{WAIT_FOR_DISK}printf '{pattern}' | dd of=/dev/vdc bs=512 conv=sync,fsync 2>/dev/null\nsync\necho VOLUME-WRITTEN\n"
            )),
        )
        .await;
    cloud
        .wait_status(writer.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    cloud
        .wait_console(writer.id, "WAITING-FOR-VOLUME", 1, Duration::from_secs(60))
        .await;

    // Hot-plug into the running VM.
    cloud
        .admin
        .attachment_create(writer.id, "data")
        .await
        .expect("attach");
    cloud
        .wait_console(writer.id, "VOLUME-WRITTEN", 1, Duration::from_secs(90))
        .await;
    // Converging again with the CHAP volume attached (a reboot) keeps it:
    // the secret is updated, not defined twice.
    cloud
        .admin
        .instance_action(writer.id, "reboot")
        .await
        .expect("reboot");
    cloud
        .wait_console(writer.id, "VOLUME-WRITTEN", 2, Duration::from_secs(90))
        .await;
    cloud
        .wait_status(writer.id, InstanceStatus::Running, Duration::from_secs(30))
        .await;
    let xml = virsh(&["dumpxml", &cloud.domain(writer.id)]);
    assert!(
        xml.contains("protocol='iscsi'")
            && xml.contains(&storage.portal.replace("127.0.0.1:", "port='")),
        "{xml}"
    );
    assert!(
        xml.contains("<secret type='iscsi'"),
        "CHAP comes from a libvirt secret:\n{xml}"
    );

    // Detach (hot-unplug), then attach to a second VM.
    cloud
        .admin
        .attachment_delete(writer.id, vol.id)
        .await
        .expect("detach");
    wait_volume(&cloud, vol.id, VolumeStatus::Available).await;
    let admin = cloud.admin.clone();
    let dom = cloud.domain(writer.id);
    wait_async(
        "the disk to leave the writer",
        Duration::from_secs(60),
        || {
            let gone = !virsh(&["dumpxml", &dom]).contains("protocol='iscsi'");
            async move { gone.then_some(()) }
        },
    )
    .await;
    let _ = admin;

    let reader = cloud
        .create_vm(
            "reader",
            "tiny",
            "vols",
            Some(format!(
                "#!/bin/sh\n{WAIT_FOR_DISK}echo \"VOLUME-READ $(head -c {} /dev/vdc)\"\n",
                pattern.len()
            )),
        )
        .await;
    cloud
        .wait_status(reader.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    cloud
        .wait_console(reader.id, "WAITING-FOR-VOLUME", 1, Duration::from_secs(60))
        .await;
    cloud
        .admin
        .attachment_create(reader.id, "data")
        .await
        .expect("attach to the reader");
    let console = cloud
        .wait_console(reader.id, "VOLUME-READ", 1, Duration::from_secs(90))
        .await;
    assert!(
        console.contains(&format!("VOLUME-READ {pattern}")),
        "the reader saw:\n{console}"
    );

    // A target that cannot be reached: the instance shows why.
    let locked = cloud
        .admin
        .volume_create(&VolumeCreate {
            name: "locked".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .expect("volume");
    wait_volume(&cloud, locked.id, VolumeStatus::Available).await;
    storage.kill();
    cloud
        .admin
        .attachment_create(writer.id, "locked")
        .await
        .expect("attach request is accepted");
    let i = cloud
        .wait_status(writer.id, InstanceStatus::Error, Duration::from_secs(90))
        .await;
    let reason = i.status_reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("cannot attach volume {}", locked.id)),
        "{reason}"
    );
    // The node comes back: the agent's retries attach the volume.
    storage.restart();
    let admin = cloud.admin.clone();
    let writer_id = writer.id;
    wait_async(
        "the writer to recover once the storage node is back",
        Duration::from_secs(240),
        || {
            let admin = admin.clone();
            async move {
                let i = admin.instance_get(writer_id).await.ok()?;
                (i.status == InstanceStatus::Running).then_some(())
            }
        },
    )
    .await;
    let xml = virsh(&["dumpxml", &cloud.domain(writer.id)]);
    assert!(
        xml.contains(&format!("vol-{}", locked.id)),
        "the locked volume is attached after recovery:\n{xml}"
    );

    // Clean up through the API: nothing left in libvirt.
    cloud.delete_all(&[writer.id, reader.id]).await;
    assert!(domains_of(cloud.host_id.expect("host")).is_empty());
    let secrets = virsh(&["secret-list"]);
    for id in [writer.id, reader.id] {
        assert!(
            !secrets.contains(&id.to_string()),
            "CHAP secrets left behind:\n{secrets}"
        );
    }
}
