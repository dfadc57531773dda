//! A real VM through the public API: network, keypair, image, create →
//! running → the guest prints its identity from the config drive on the
//! serial console; stop, start, reboot, delete; nothing left in libvirt or
//! on disk. Real libvirtd, real QEMU, the tiny guest image.

mod support;

use std::time::{Duration, Instant};

use api::resources::{ImageFormat, InstanceStatus};
use support::*;

/// Puts a device node's owner, group and mode back when dropped.
struct KvmDeviceGuard {
    path: std::path::PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl KvmDeviceGuard {
    fn save(path: &std::path::Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).expect("stat the KVM device");
        Self {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

impl Drop for KvmDeviceGuard {
    fn drop(&mut self) {
        let _ = std::os::unix::fs::chown(&self.path, Some(self.uid), Some(self.gid));
        set_mode(&self.path, self.mode);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_through_the_public_api() {
    // A host without udev has a root-only /dev/kvm, which makes libvirt
    // re-probe QEMU on every call (a minute per start under QEMU 10); the
    // agent must repair it. Set it up that way, as a fresh machine has it.
    // The device is put back as it was, whatever happens below.
    let kvm = std::path::Path::new(hypervisor_agent::host::KVM_DEVICE);
    let _restore = kvm.exists().then(|| {
        let saved = KvmDeviceGuard::save(kvm);
        std::os::unix::fs::chown(kvm, Some(0), Some(0)).expect("chown /dev/kvm");
        set_mode(kvm, 0o600);
        saved
    });
    let mut cloud = Cloud::start(AgentOptions {
        virt_type: "auto",
        uplink: None,
    })
    .await;
    let host = cloud.host_id.expect("enrolled");
    let (image_path, sha) = guest_image("tiny.raw");
    let image = cloud
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    let net = cloud.tenant_basics("lifecycle", "10.77.0.0/24").await;
    let vm = cloud.create_vm("web-1", "tiny", "lifecycle", None).await;
    let vm = cloud
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    assert_eq!(vm.host_id, Some(host));
    assert_eq!(vm.image_id, image.id);

    // The guest read the config drive and says who it is.
    let console = cloud
        .wait_console(vm.id, "STRATO-GUEST ready", 1, Duration::from_secs(60))
        .await;
    let address = vm.nics[0].address;
    for line in [
        format!("STRATO-GUEST instance-id={}", vm.id),
        "STRATO-GUEST hostname=web-1".to_string(),
        format!("STRATO-GUEST address={address}/24"),
        format!(
            "STRATO-GUEST ssh-key={}",
            ssh_key::PublicKey::from_openssh(TEST_KEY)
                .expect("key")
                .fingerprint(ssh_key::HashAlg::Sha256)
        ),
    ] {
        assert!(
            console.contains(&line),
            "console lacks {line:?}:\n{console}"
        );
    }
    // The NIC is on the network's bridge with the MAC the API shows.
    let xml = virsh(&["dumpxml", &cloud.domain(vm.id)]);
    assert!(
        xml.contains(&format!(
            "<mac address='{}'/>",
            vm.nics[0].mac.to_lowercase()
        )),
        "{xml}"
    );
    let bridge = hypervisor_agent::network::bridge_name(net.id);
    assert!(
        xml.contains(&format!("<source bridge='{bridge}'/>")),
        "{xml}"
    );

    if kvm.exists() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(kvm).expect("stat /dev/kvm");
        assert_eq!(meta.mode() & 0o777, 0o660, "the agent repaired /dev/kvm");
        assert!(cloud.agent_log().contains("was not usable by QEMU's user"));
    }

    // Stop: the tiny guest ignores ACPI, so this also proves the
    // shutdown timeout falls back to destroy. It takes that timeout plus
    // a few seconds (a push, the destroy, a heartbeat), and no more.
    let asked = Instant::now();
    cloud.act(vm.id, "stop", InstanceStatus::Stopped).await;
    let took = asked.elapsed();
    assert!(virsh(&["domstate", &cloud.domain(vm.id)]).contains("shut off"));
    assert!(
        took >= SHUTDOWN_TIMEOUT && took < SHUTDOWN_TIMEOUT + Duration::from_secs(8),
        "a stop of a guest that ignores ACPI took {took:?}; the shutdown timeout is {SHUTDOWN_TIMEOUT:?}"
    );
    eprintln!("stop took {took:?} (shutdown timeout {SHUTDOWN_TIMEOUT:?})");

    let asked = Instant::now();
    cloud.act(vm.id, "start", InstanceStatus::Running).await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "a start took {took:?}: libvirt itself needs about a second"
    );
    eprintln!("start took {took:?}");
    cloud
        .wait_console(vm.id, "STRATO-GUEST ready", 2, Duration::from_secs(60))
        .await;

    // `strato vm console --follow` shows the reboot live, through the
    // stack manager's WebSocket relay of the agent's console stream.
    let mut follow = std::process::Command::new(sibling_bin("strato"))
        .args(["vm", "console", "web-1", "--follow"])
        .env("STRATO_URL", &cloud.public_url)
        .env("STRATO_TOKEN", cloud.admin_token())
        .env("STRATO_PROJECT", "admin")
        .env_remove("STRATO_CONFIG")
        .env("HOME", cloud.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run strato vm console --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let (connected_tx, connected) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = stdout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = connected_tx.send(());
            let text = String::from_utf8_lossy(&seen);
            // The stream starts with the log's tail, which already holds
            // the previous boot's marker: wait for the next one.
            if text.matches("STRATO-GUEST ready").count() >= 2 {
                let _ = tx.send(text.into_owned());
                return;
            }
        }
    });
    // The stream is relayed once the log's tail arrives.
    connected
        .recv_timeout(Duration::from_secs(30))
        .expect("strato vm console --follow prints the log's tail");
    cloud
        .admin
        .instance_action(vm.id, "reboot")
        .await
        .expect("reboot");
    let live = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the live console shows the guest booting again");
    assert!(
        live.contains(&format!("STRATO-GUEST instance-id={}", vm.id)),
        "{live}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    cloud
        .wait_console(vm.id, "STRATO-GUEST ready", 3, Duration::from_secs(60))
        .await;
    cloud
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(30))
        .await;

    // Delete: nothing left behind in libvirt, on disk or in host networking.
    cloud.admin.instance_delete(vm.id).await.expect("delete");
    let admin = cloud.admin.clone();
    wait_async(
        "the instance to be gone from the API",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                admin
                    .instance_get(vm.id)
                    .await
                    .err()
                    .filter(|e| e.status() == Some(404))
            }
        },
    )
    .await;
    assert!(
        domains_of(host).is_empty(),
        "domains left: {:?}",
        domains_of(host)
    );
    assert!(
        !cloud.instance_dir(vm.id).exists(),
        "instance files left behind"
    );
    assert!(virsh(&["secret-list"])
        .lines()
        .all(|l| !l.contains(&vm.id.to_string())));
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&bridge),
        "bridge {bridge} left behind"
    );
    // The image stays cached for the next instance.
    assert!(cloud
        .agent_state
        .join("images")
        .join(format!("{sha}.qcow2"))
        .exists());
    let log = cloud.agent_log();
    assert!(
        log.contains("guests run under"),
        "the agent logs its virtualization choice:\n{log}"
    );
    cloud.kill_agent();
}
