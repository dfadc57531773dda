//! Resync of a returning replica: a 10 GiB volume (every byte written),
//! 1 % of its 1 MiB regions changed while the replica was away. Measures
//! the bytes the primary sends and the time until the replica is in sync,
//! against a full copy through the same path (every region dirty), in the
//! same run. Primary and replica are in-process, over loopback, with the
//! resync rate unbounded.
//!
//! `cargo bench -p storage-agent --bench resync` (needs ~20 GiB free in
//! the temp dir). `STRATO_BENCH_GIB` sets the volume size (default 10).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::ids::{HostId, VolumeId};
use api::internal::{ObservedPeerState, PeerState, ReplicaPeer};
use scsi::Medium;
use storage_agent::regions::REGION_BYTES;
use storage_agent::replication::{PrimaryConfig, ReplicaCopy, ReplicaRegistry, Replicated};

const KEY: &str = "bench-replication-key";

fn fill(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).expect("volume file");
    let chunk: Vec<u8> = (0..REGION_BYTES as u32).map(|i| (i % 251) as u8).collect();
    for off in (0..bytes).step_by(chunk.len()) {
        f.write_all_at(&chunk, off).expect("fill");
    }
    f.sync_all().expect("sync");
}

fn config(peers: Vec<ReplicaPeer>) -> PrimaryConfig {
    PrimaryConfig {
        epoch: 1,
        key: KEY.into(),
        peers,
        resync_bytes_per_sec: 64 << 30,
    }
}

/// Waits until the primary reaches `host`, then until it sees it in sync;
/// (bytes resynced, time from the connection). Reconnection backoff is
/// not resync time.
fn until_in_sync(medium: &Replicated, host: HostId) -> (u64, Duration) {
    while medium
        .observe()
        .into_iter()
        .any(|p| p.host == host && p.state == ObservedPeerState::Unreachable)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    loop {
        if let Some(p) = medium
            .observe()
            .into_iter()
            .find(|p| p.host == host && p.state == ObservedPeerState::InSync)
        {
            return (p.resynced_bytes, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let gib: u64 = std::env::var("STRATO_BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let size = gib << 30;
    let regions = size / REGION_BYTES;
    let dir = tempfile::tempdir().expect("temp dir");
    let (primary, replica) = (
        dir.path().join("primary.raw"),
        dir.path().join("replica.raw"),
    );
    eprintln!("writing two {gib} GiB copies ...");
    fill(&primary, size);
    std::fs::copy(&primary, &replica).expect("replica copy");
    // Settled on disk, so the resync's closing flush measures only its own writes.
    std::fs::File::open(&replica)
        .and_then(|f| f.sync_all())
        .expect("sync the replica copy");
    let (pdir, rdir) = (dir.path().join("p"), dir.path().join("r"));
    std::fs::create_dir_all(&pdir).expect("dir");
    std::fs::create_dir_all(&rdir).expect("dir");

    let volume = VolumeId::new();
    let registry = Arc::new(ReplicaRegistry::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let address = listener.local_addr().expect("addr").to_string();
    {
        let registry = registry.clone();
        std::thread::spawn(move || registry.serve(listener));
    }
    // The replica is away: the registry does not hold the volume yet.
    let away = HostId::new();
    let peer = |host| ReplicaPeer {
        host,
        address: address.clone(),
        state: PeerState::OutOfSync,
    };
    let medium =
        Replicated::open(volume, &primary, &pdir, config(vec![peer(away)])).expect("primary");
    // 1 % of the regions change: one 4 KiB write in each, spread evenly.
    let changed = (regions / 100).max(1);
    let block = vec![0x5au8; 4096];
    for i in 0..changed {
        let region = i * regions / changed;
        medium
            .write_at(&block, region * REGION_BYTES + 8192)
            .expect("write while away");
    }
    medium.sync().expect("sync");

    // The replica returns.
    registry.insert(ReplicaCopy::open(volume, &replica, &rdir, 1, KEY).expect("replica"));
    let (partial_bytes, partial_time) = until_in_sync(&medium, away);

    // Baseline through the same path: a replacement replica that misses
    // every region.
    let fresh = HostId::new();
    std::fs::write(
        pdir.join(format!("dirty-{fresh}.map")),
        vec![0xffu8; regions.div_ceil(8) as usize],
    )
    .expect("all-dirty map");
    Arc::clone(&medium)
        .configure(config(vec![peer(fresh)]))
        .expect("reconfigure");
    let (full_bytes, full_time) = until_in_sync(&medium, fresh);

    println!("| resync of a {gib} GiB volume | bytes sent | time | MiB/s |");
    println!("|---|---:|---:|---:|");
    for (what, bytes, time) in [
        (
            format!("{changed} of {regions} regions changed (1 %)"),
            partial_bytes,
            partial_time,
        ),
        (
            "full copy (every region)".to_string(),
            full_bytes,
            full_time,
        ),
    ] {
        println!(
            "| {what} | {bytes} | {:.2} s | {:.0} |",
            time.as_secs_f64(),
            bytes as f64 / (1 << 20) as f64 / time.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "partial / full: {:.4}x the bytes, {:.4}x the time",
        partial_bytes as f64 / full_bytes.max(1) as f64,
        partial_time.as_secs_f64() / full_time.as_secs_f64().max(1e-9)
    );
}
