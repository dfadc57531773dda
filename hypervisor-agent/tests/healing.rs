//! Self-healing with real agents and VMs: two hypervisor agents, each in
//! its own network namespace with its own state directory, one storage
//! agent (Strato's own iSCSI target), the machine's libvirtd and QEMU.
//!
//! 1. **Partition.** Host 0 is cut off from the stack manager while its VM
//!    keeps writing to its iSCSI volume (QEMU's iSCSI traffic does not
//!    cross the agent's namespace). The stack manager suspects host 0,
//!    fences it (the target revokes its initiator and closes its session)
//!    and re-creates the VM on host 1 with the same id, MAC and address and
//!    the volume attached. The re-created VM finds the pattern intact and
//!    sees that the stale VM's writes no longer reach the volume. When the
//!    partition heals, host 0's agent removes the stale domain: no
//!    duplicate.
//! 2. **Power loss.** Host 0 re-admitted, host 1 is killed (agent SIGKILLed,
//!    its domains destroyed): the VM comes back on host 0, pattern intact.
//!    The time from the kill to the VM running again is printed with its
//!    breakdown (detection, fencing, placement, boot).
//! 3. **Crash.** QEMU of that VM is killed on its healthy host: the stack
//!    manager restarts it in place.

mod support;

use std::time::{Duration, Instant};

use api::ids::InstanceId;
use api::resources::{
    Event, HostHealth, ImageFormat, Instance, InstanceStatus, VolumeCreate, VolumeSource,
    VolumeStatus,
};
use support::fleet::{Fleet, FleetOptions};
use support::*;

const DOWN_AFTER_SECS: u64 = 4;

/// The guest's user-data. First boot (an empty volume): write the pattern
/// to block 0, then a tick to block 1 every half second, forever. A boot
/// that finds the pattern (the VM re-created elsewhere) only reads: block 1
/// twice, six seconds apart, to see whether anyone still writes.
fn script(pattern: &str) -> String {
    let len = pattern.len();
    format!(
        "#!/bin/sh\n\
         echo WAITING-FOR-VOLUME\n\
         i=0; while [ ! -b /dev/vdc ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done\n\
         [ -b /dev/vdc ] || {{ echo VOLUME-MISSING; exit 1; }}\n\
         head=$(dd if=/dev/vdc bs=512 count=1 2>/dev/null | head -c {len})\n\
         if [ \"$head\" = '{pattern}' ]; then\n\
           echo PATTERN-INTACT\n\
           echo 3 > /proc/sys/vm/drop_caches\n\
           a=$(dd if=/dev/vdc bs=512 skip=1 count=1 2>/dev/null | head -c 13)\n\
           sleep 6\n\
           echo 3 > /proc/sys/vm/drop_caches\n\
           b=$(dd if=/dev/vdc bs=512 skip=1 count=1 2>/dev/null | head -c 13)\n\
           echo \"TICKS-SEEN <$a> <$b>\"\n\
         else\n\
           printf '{pattern}' | dd of=/dev/vdc bs=512 conv=sync,fsync 2>/dev/null\n\
           sync\n\
           echo VOLUME-WRITTEN\n\
           ( n=0; while true; do n=$((n+1)); \
               if printf 'tick-%08d' $n | dd of=/dev/vdc bs=512 seek=1 conv=sync,fsync 2>/dev/null; \
               then echo \"WROTE $n\"; else echo \"WRITE-FAILED $n\"; fi; sleep 0.5; done ) &\n\
         fi\n"
    )
}

fn mac_in_xml(xml: &str, mac: &str) -> bool {
    xml.contains(&format!("<mac address='{mac}'/>"))
}

/// When the last event named `name` happened, if it did.
fn at(events: &[Event], name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    events.iter().rev().find(|e| e.event == name).map(|e| e.at)
}

async fn wait_moved(fleet: &Fleet, id: InstanceId, to: usize, timeout: Duration) -> Instance {
    let want = fleet.host(to).host_id;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(i) = fleet.admin.instance_get(id).await {
            if i.host_id == Some(want) && i.status == InstanceStatus::Running {
                return i;
            }
            if Instant::now() > deadline {
                let mut hosts = String::new();
                for h in fleet.admin.host_list().await.unwrap_or_default() {
                    hosts.push_str(&format!(
                        "  {} {}: {} {:?}, last heartbeat {:?}\n",
                        h.name,
                        h.id,
                        h.health.as_str(),
                        h.health_reason,
                        h.last_heartbeat_at
                    ));
                }
                panic!(
                    "instance {id} not running on host {to} within {timeout:?}: {} ({:?}) on {:?}\n\
                     hosts at {:?}:\n{hosts}stack manager log:\n{}\nagent 0 log:\n{}",
                    i.status.as_str(),
                    i.status_reason,
                    i.host_id,
                    chrono::Utc::now(),
                    fleet.stack_manager_log(),
                    fleet.agent_log(0)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_power_loss_and_crash() {
    let t0 = Instant::now();
    let mut fleet = Fleet::start(FleetOptions {
        hypervisors: 2,
        storage: true,
        stack_manager_toml: format!(
            "[hosts]\ndown_after_secs = {DOWN_AFTER_SECS}\nheartbeat_interval_secs = 1\nresync_interval_secs = 5\n\
             [health]\nsuspect_grace_secs = 2\nmonitor_interval_ms = 250\n"
        ),
    })
    .await;
    eprintln!("fleet up in {:?}", t0.elapsed());
    let (image_path, sha) = guest_image("tiny.raw");
    fleet
        .register_image("tiny", &image_path, ImageFormat::Raw, &sha)
        .await;
    fleet.tenant_basics("heal", "10.82.0.0/24").await;
    let vol = fleet
        .admin
        .volume_create(&VolumeCreate {
            name: "data".into(),
            size_gib: 1,
            source: VolumeSource::Empty,
            replicas: None,
        })
        .await
        .expect("volume");
    let pattern = format!(
        "strato-heal-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    // Host 1 takes nothing while the VM is placed: it lands on host 0.
    let h1 = fleet.host(1).host_id;
    fleet
        .admin
        .host_update(
            h1,
            &api::resources::HostUpdate {
                admin_state: api::resources::AdminState::Disabled,
            },
        )
        .await
        .expect("disable host 1");
    let vm = fleet
        .create_vm_in("keeper", "tiny", "heal", Some(script(&pattern)), None)
        .await;
    fleet
        .admin
        .host_update(
            h1,
            &api::resources::HostUpdate {
                admin_state: api::resources::AdminState::Enabled,
            },
        )
        .await
        .expect("enable host 1");
    let first = fleet
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(90))
        .await;
    assert_eq!(first.host_id, Some(fleet.host(0).host_id));
    let mac = first.nics[0].mac.clone();
    let address = first.nics[0].address;
    let admin = fleet.admin.clone();
    wait_async(
        "the volume to be available",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                admin
                    .volume_get(vol.id)
                    .await
                    .ok()
                    .filter(|v| v.status == VolumeStatus::Available)
            }
        },
    )
    .await;
    fleet
        .admin
        .attachment_create(vm.id, "data")
        .await
        .expect("attach");
    fleet
        .wait_console(vm.id, "WROTE 3", 1, Duration::from_secs(90))
        .await;
    eprintln!("VM writing to its volume on host 0 at {:?}", t0.elapsed());

    // 1. Partition host 0. Its agent and VM live on; the VM keeps writing.
    let stale_domain = fleet.domain(0, vm.id);
    fleet.partition(0);
    let cut = Instant::now();
    let unknown = fleet
        .wait_status(
            vm.id,
            InstanceStatus::Unknown,
            Duration::from_secs(DOWN_AFTER_SECS + 10),
        )
        .await;
    assert!(
        unknown
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains(&fleet.host(0).name)),
        "{:?}",
        unknown.status_reason
    );
    let moved = wait_moved(&fleet, vm.id, 1, Duration::from_secs(90)).await;
    eprintln!(
        "re-created on host 1 {:?} after the partition",
        cut.elapsed()
    );
    assert_eq!(fleet.health(0).await, HostHealth::Fenced);
    assert_eq!(moved.id, vm.id);
    assert_eq!(moved.nics[0].mac, mac, "same MAC");
    assert_eq!(moved.nics[0].address, address, "same address");
    let xml = virsh(&["dumpxml", &fleet.domain(1, vm.id)]);
    assert!(
        mac_in_xml(&xml, &mac),
        "host 1's domain has the MAC:\n{xml}"
    );
    assert!(
        xml.contains(&fleet.host(1).initiator_iqn),
        "host 1 logs in with its own IQN:\n{xml}"
    );
    // The stale VM still runs on the partitioned host...
    assert!(virsh(&["list", "--name"]).contains(&stale_domain));
    // ... but its writes no longer reach the volume: the re-created VM
    // reads the last tick twice, six seconds apart, and finds it unchanged.
    let console = fleet
        .wait_console(vm.id, "TICKS-SEEN", 1, Duration::from_secs(120))
        .await;
    assert!(console.contains("PATTERN-INTACT"), "{console}");
    assert!(
        console.contains(&format!("address={address}/")),
        "the guest has its address:\n{console}"
    );
    let seen = console
        .lines()
        .find(|l| l.contains("TICKS-SEEN"))
        .unwrap_or_default()
        .to_string();
    let ticks: Vec<&str> = seen
        .split(['<', '>'])
        .filter(|s| s.starts_with("tick-"))
        .collect();
    assert_eq!(ticks.len(), 2, "{seen}");
    assert_eq!(ticks[0], ticks[1], "the fenced VM still writes: {seen}");
    eprintln!(
        "fenced VM's writes refused; pattern intact ({seen}) at {:?}",
        t0.elapsed()
    );

    // The partition heals: host 0's agent removes the stale domain (its
    // volumes untouched), and stays fenced until re-admitted.
    fleet.heal(0);
    let h0 = fleet.host(0).host_id;
    wait_async(
        "the stale domain to be removed from host 0",
        Duration::from_secs(60),
        || {
            let gone = domains_of(h0).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await;
    assert_eq!(fleet.health(0).await, HostHealth::Fenced);
    let again = fleet.admin.instance_get(vm.id).await.expect("instance");
    assert_eq!(again.host_id, Some(h1), "no duplicate, no move back");
    assert_eq!(domains_of(h1).len(), 1);
    let events = fleet.admin.host_events(h0).await.expect("host events");
    for want in ["host.suspected", "host.fencing", "host.fenced"] {
        assert!(at(&events, want).is_some(), "{events:?}");
    }
    fleet.admin.host_readmit(h0).await.expect("readmit host 0");

    // 2. Power loss on host 1: the VM comes back on host 0.
    fleet
        .wait_console(vm.id, "TICKS-SEEN", 1, Duration::from_secs(30))
        .await;
    fleet.kill_host(1);
    let killed = chrono::Utc::now();
    let lost = Instant::now();
    let back = wait_moved(&fleet, vm.id, 0, Duration::from_secs(90)).await;
    let running_after = lost.elapsed();
    assert_eq!(back.nics[0].mac, mac);
    assert_eq!(back.nics[0].address, address);
    let console = fleet
        .wait_console(vm.id, "PATTERN-INTACT", 1, Duration::from_secs(90))
        .await;
    let intact_after = lost.elapsed();
    assert!(!console.contains("VOLUME-MISSING"), "{console}");
    let events = fleet.admin.host_events(h1).await.expect("host events");
    let secs = |a: chrono::DateTime<chrono::Utc>, b: Option<chrono::DateTime<chrono::Utc>>| {
        b.map_or(f64::NAN, |b| (b - a).num_milliseconds() as f64 / 1000.0)
    };
    let suspected = at(&events, "host.suspected");
    let fencing = at(&events, "host.fencing");
    let fenced = at(&events, "host.fenced");
    let placed = at(
        &fleet.admin.instance_events(vm.id).await.expect("events"),
        "instance.relocated",
    );
    eprintln!(
        "host death to running elsewhere: {:.1} s, its volume read back {:.1} s (detected {:.1} s, \
         fencing began {:.1} s, fenced {:.1} s, placed {:.1} s after the kill; the rest is the boot)",
        running_after.as_secs_f64(),
        intact_after.as_secs_f64(),
        secs(killed, suspected),
        secs(killed, fencing),
        secs(killed, fenced),
        secs(killed, placed),
    );

    // 3. QEMU of the VM is killed on its healthy host: restarted in place.
    let domain = fleet.domain(0, vm.id);
    let out = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("guest={domain}")])
        .output()
        .expect("pkill");
    assert!(out.status.success(), "no QEMU process for {domain}");
    let admin = fleet.admin.clone();
    wait_async(
        "the crashed VM to be restarted in place",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                let events = admin.instance_events(vm.id).await.ok()?;
                events
                    .iter()
                    .any(|e| e.event == "instance.restarted")
                    .then_some(())
            }
        },
    )
    .await;
    let restarted = fleet
        .wait_status(vm.id, InstanceStatus::Running, Duration::from_secs(60))
        .await;
    assert_eq!(restarted.host_id, Some(h0), "restarted in place");
    // libvirt starts QEMU paused and resumes it once its devices are set
    // up; the agent may report the restart before the resume lands.
    let state = tokio::task::spawn_blocking({
        let domain = domain.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let state = virsh(&["domstate", "--reason", &domain]);
                if state.trim().starts_with("running") || Instant::now() > deadline {
                    return state;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
    .await
    .expect("domstate");
    assert!(
        state.trim().starts_with("running"),
        "QEMU runs again: {state}"
    );
    eprintln!("done in {:?}", t0.elapsed());
    fleet.assert_consistent().await;
}
