//! Create → running latency: from `POST /v1/instances` until the tiny
//! guest's `STRATO-GUEST ready` marker appears on its console (read through
//! the public API), for 1 and for 20 concurrent creates on one host.
//!
//! Peer: the same image booted by bare `qemu-system-x86_64` (same
//! accelerator, memory and config drive), timed to the same marker in the
//! same run; the ratio is Strato's overhead on top of QEMU itself.
//!
//! Run: `cargo bench -p hypervisor-agent --bench boot` (needs what the test
//! suite needs: libvirtd, QEMU, the guest images; `scripts/test.sh` sets
//! them up). `BOOT_BENCH_SINGLE_RUNS` (default 5) and `BOOT_BENCH_CONCURRENT`
//! (default 20) resize it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::resources::{ImageFormat, InstanceStatus};
use hypervisor_agent::configdrive::Seed;
use support::*;

const MARKER: &str = "STRATO-GUEST ready";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

/// What the bare guests' config drive describes: like a Strato instance's.
fn bare_spec() -> api::internal::InstanceSpec {
    use api::internal::*;
    InstanceSpec {
        id: api::ids::InstanceId::from(uuid::Uuid::new_v4()),
        hostname: "bare".into(),
        generation: 1,
        power: PowerState::Running,
        reboot_count: 0,
        vcpus: 1,
        ram_mib: 160,
        disk_gib: 1,
        image: ImageSpec {
            id: api::ids::ImageId::from(uuid::Uuid::new_v4()),
            source: String::new(),
            format: ImageFormat::Qcow2,
            sha256: String::new(),
        },
        nics: vec![NicSpec {
            network_id: api::ids::NetworkId::from(uuid::Uuid::new_v4()),
            mac: "52:54:00:12:34:56".into(),
            address: "10.81.0.5".parse().expect("address"),
            prefix_len: 16,
            gateway: "10.81.0.1".parse().expect("gateway"),
            dns_servers: vec![],
            vlan: None,
            mtu: 1500,
        }],
        ssh_authorized_keys: vec![TEST_KEY.into()],
        user_data: None,
        volumes: vec![],
    }
}

/// Boots `n` bare QEMU guests at once; seconds until each printed the marker.
async fn bare_qemu(n: usize, accel: &str, image: &Path, work: &Path) -> Vec<f64> {
    let spec = bare_spec();
    let iso = work.join("cidata.iso");
    Seed::for_instance(&spec)
        .expect("seed")
        .write_iso(&iso)
        .await
        .expect("iso");
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        let log = work.join(format!("bare-{i}.log"));
        let _ = std::fs::remove_file(&log);
        let child = tokio::process::Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                accel,
                "-m",
                "160",
                "-display",
                "none",
                "-nodefaults",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio,snapshot=on",
                image.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                iso.display()
            ))
            // A NIC like the instances have (no option ROM, as in the
            // domain template), on a QEMU-internal hub that leads nowhere.
            .args(["-netdev", "hubport,id=n0,hubid=0", "-device"])
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:{:02x}",
                i % 256
            ))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64");
        children.push((log, child, None::<f64>));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while children.iter().any(|c| c.2.is_none()) && Instant::now() < deadline {
        for c in children.iter_mut().filter(|c| c.2.is_none()) {
            if std::fs::read_to_string(&c.0)
                .unwrap_or_default()
                .contains(MARKER)
            {
                c.2 = Some(start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    children
        .into_iter()
        .map(|c| c.2.unwrap_or(f64::NAN))
        .collect()
}

/// Creates `n` instances at once through the API; seconds from each POST
/// until its console showed the marker, and until all were `running`.
/// Consoles are polled every 100 ms for one instance and every 500 ms for
/// many, so the polling itself does not steal the guests' CPU.
async fn strato(cloud: &Cloud, n: usize, round: usize) -> (Vec<f64>, f64) {
    let poll = if n == 1 {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    };
    let start = Instant::now();
    let creates = (0..n).map(|i| async move {
        let t0 = Instant::now();
        let vm = cloud
            .create_vm(&format!("b{round}-{i}"), "tiny", "bench", None)
            .await;
        loop {
            if cloud.console(vm.id).await.contains(MARKER) {
                return (vm.id, t0.elapsed().as_secs_f64());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "instance {} never booted",
                vm.id
            );
            tokio::time::sleep(poll).await;
        }
    });
    let results = futures::future::join_all(creates).await;
    for (id, _) in &results {
        cloud
            .wait_status(*id, InstanceStatus::Running, Duration::from_secs(60))
            .await;
    }
    let all_running = start.elapsed().as_secs_f64();
    for (id, _) in &results {
        cloud.admin.instance_delete(*id).await.expect("delete");
    }
    let admin = cloud.admin.clone();
    wait_async("bench instances deleted", Duration::from_secs(120), || {
        let admin = admin.clone();
        async move { admin.instance_list().await.ok().filter(|l| l.is_empty()) }
    })
    .await;
    (results.into_iter().map(|r| r.1).collect(), all_running)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let single_runs = env_usize("BOOT_BENCH_SINGLE_RUNS", 5);
    let concurrent = env_usize("BOOT_BENCH_CONCURRENT", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cloud = Cloud::start(AgentOptions {
            virt_type: "auto",
            uplink: None,
        })
        .await;
        let accel = if cloud.agent_log().contains("virt_type=\"kvm\"") {
            "kvm"
        } else {
            "tcg"
        };
        let (image_path, sha) = guest_image("tiny.raw");
        cloud
            .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
            .await;
        cloud.tenant_basics("bench", "10.81.0.0/16").await;
        // Warm the image cache: the first create converts the image once,
        // which is not what this measures.
        let (_, _) = strato(&cloud, 1, 0).await;
        let cached: PathBuf = cloud
            .agent_state
            .join("images")
            .join(format!("{sha}.qcow2"));
        let work = cloud.dir.path().join("bare");
        std::fs::create_dir_all(&work).expect("work dir");

        let mut strato_single = Vec::new();
        let mut bare_single = Vec::new();
        for round in 1..=single_runs {
            strato_single.extend(strato(&cloud, 1, round).await.0);
            bare_single.extend(bare_qemu(1, accel, &cached, &work).await);
        }
        let (strato_many, all_running) = strato(&cloud, concurrent, 100).await;
        let bare_many = bare_qemu(concurrent, accel, &cached, &work).await;

        let (s1p50, s1p95, _) = summary(strato_single);
        let (b1p50, b1p95, _) = summary(bare_single);
        let (snp50, snp95, snmax) = summary(strato_many);
        let (bnp50, bnp95, bnmax) = summary(bare_many);
        println!("create -> guest marker on the console, accelerator: {accel} (KVM probe decided)");
        println!("{:<28} {:>9} {:>9} {:>9}", "", "p50 s", "p95 s", "max s");
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9}",
            format!("strato, 1 at a time (x{single_runs})"),
            s1p50,
            s1p95,
            ""
        );
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9}",
            format!("bare qemu, 1 (x{single_runs})"),
            b1p50,
            b1p95,
            ""
        );
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2}",
            format!("strato, {concurrent} concurrent"),
            snp50,
            snp95,
            snmax
        );
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2}",
            format!("bare qemu, {concurrent} concurrent"),
            bnp50,
            bnp95,
            bnmax
        );
        println!("all {concurrent} strato instances running (API) after {all_running:.2} s");
        println!(
            "ratio strato/bare: single p50 {:.2}x, {concurrent}-concurrent p50 {:.2}x, max {:.2}x",
            s1p50 / b1p50,
            snp50 / bnp50,
            snmax / bnmax
        );
        println!(
            "targets: single p50 < 5 s: {}; all {concurrent} within 60 s: {}",
            if s1p50 < 5.0 { "met" } else { "NOT met" },
            if snmax < 60.0 { "met" } else { "NOT met" }
        );
    });
}
