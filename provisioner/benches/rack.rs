//! Ten bare QEMU VMs network-boot at once on one provisioner's segment:
//! each is discovered and commissioned, then all are deployed with the tiny
//! image at once and boot it from their disks. Reports the time until all
//! are READY and until all are DEPLOYED (and booted from disk), with each
//! VM's times. Emulated (TCG) VMs on this machine's cores: the figures are
//! dominated by emulation, so the single-VM times of the same run are the
//! baseline to compare against.
//!
//! `cargo bench -p provisioner --bench rack` (root; `STRATO_RACK_VMS` sets
//! the count, default 10).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn main() {
    let n: u8 = std::env::var("STRATO_RACK_VMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut rack = Rack::start();
    let dir = rack.dir.path().to_path_buf();
    let vms: Vec<Vm> = (1..=n).map(|i| Vm::new(&dir, &rack.seg, i)).collect();

    let start = Instant::now();
    let mut qemus: Vec<usize> = vms.iter().map(|vm| vm.boot(&mut rack.seg, &dir)).collect();
    let mut ready = vec![None; vms.len()];
    while ready.iter().any(Option::is_none) {
        let (_, list) = rack.seg.api(TOKEN, "GET", "/v1/machines", None);
        for (i, vm) in vms.iter().enumerate() {
            let m = list
                .as_array()
                .and_then(|l| l.iter().find(|m| m["mac"] == vm.mac.as_str()).cloned());
            if let Some(m) = m {
                assert_ne!(m["state"], "failed_commissioning", "{m}\n{}", vm.console());
                if m["state"] == "ready" && ready[i].is_none() {
                    ready[i] = Some((
                        start.elapsed(),
                        m["id"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "commissioning took over 30 min"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_ready = start.elapsed();
    for q in &qemus {
        wait("the VMs to power off", 300, || {
            (!rack.seg.running(*q)).then_some(())
        });
    }

    let deploy_start = Instant::now();
    for (_, id) in ready.iter().flatten() {
        let (code, m) = rack.seg.api(
            TOKEN,
            "POST",
            &format!("/v1/machines/{id}/actions"),
            Some(r#"{"action":"deploy","image":"tiny.raw"}"#),
        );
        assert_eq!(code, 200, "{m}");
    }
    qemus = vms.iter().map(|vm| vm.boot(&mut rack.seg, &dir)).collect();
    let mut booted = vec![None; vms.len()];
    while booted.iter().any(Option::is_none) {
        for (i, vm) in vms.iter().enumerate() {
            if booted[i].is_none() && vm.console().contains("STRATO-GUEST ready") {
                booted[i] = Some(deploy_start.elapsed());
            }
        }
        assert!(
            deploy_start.elapsed() < Duration::from_secs(1800),
            "deploying took over 30 min"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_deployed = deploy_start.elapsed();
    let (_, list) = rack.seg.api(TOKEN, "GET", "/v1/machines", None);
    let deployed = list
        .as_array()
        .map(|l| l.iter().filter(|m| m["state"] == "deployed").count())
        .unwrap_or(0);
    assert_eq!(deployed, vms.len(), "{list}");
    for q in qemus {
        rack.seg.kill(q);
    }

    let secs = |d: Duration| format!("{:.1}", d.as_secs_f64());
    let mut r: Vec<Duration> = ready.iter().flatten().map(|(d, _)| *d).collect();
    let mut b: Vec<Duration> = booted.iter().flatten().copied().collect();
    r.sort();
    b.sort();
    println!("{n} VMs (TCG, 2 vCPUs and 384 MiB each) PXE-booted at once");
    println!("| phase | first | median | all |");
    println!("|---|---:|---:|---:|");
    println!(
        "| discovered + commissioned (READY) | {} s | {} s | {} s |",
        secs(r[0]),
        secs(r[r.len() / 2]),
        secs(all_ready)
    );
    println!(
        "| deployed + booted from disk | {} s | {} s | {} s |",
        secs(b[0]),
        secs(b[b.len() / 2]),
        secs(all_deployed)
    );
    println!(
        "total to all DEPLOYED and booted: {} s",
        secs(all_ready + all_deployed)
    );
}
