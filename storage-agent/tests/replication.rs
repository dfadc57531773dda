//! Replicated volumes across three real storage agents (separate processes,
//! separate pools, one stack manager for enrollment), driven through the
//! agent contract as the stack manager drives them, judged by a raw iSCSI
//! initiator that records every write the target acknowledged.
//!
//! The story: a primary with two in-sync replicas dies mid-stream; a
//! replica is promoted and holds every acknowledged write; the dead node
//! returns with its stale spec and cannot get a write acknowledged (split
//! brain refused by the epoch); demoted, it resyncs only the regions that
//! changed meanwhile plus its own unsettled ones; then the second primary
//! dies too and the first holds everything.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::ids::HostId;
use api::internal::{
    ObservedPeerState, ObservedVolume, PeerState, ReplicaPeer, ReplicaRole, ReplicationSpec,
    VolumeSpec,
};
use support::raw::Session;
use support::*;
use testkit::{wait_async, StackManager, StorageAgent};

const SIZE: u64 = 64 << 20;
const BLOCKS_PER_REGION: u32 = (1 << 20) / 512;
const KEY: &str = "replication-key-for-the-test-volume";

struct Cluster {
    _dir: tempfile::TempDir,
    _sm: StackManager,
    nodes: Vec<StorageAgent>,
    hosts: Vec<HostId>,
    /// Each spec put gets a newer generation, whatever its epoch.
    generation: std::sync::atomic::AtomicU64,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        require_tools();
        let dir = tempfile::tempdir().expect("temp dir");
        let sm = stack_manager(dir.path()).await;
        let mut nodes = Vec::new();
        let mut hosts = Vec::new();
        for i in 0..n {
            let (agent, host) = storage_agent(&sm, &dir.path().join(format!("storage-{i}"))).await;
            hosts.push(host);
            nodes.push(agent);
        }
        Cluster {
            _dir: dir,
            _sm: sm,
            nodes,
            hosts,
            generation: 1.into(),
        }
    }

    fn peer(&self, i: usize, state: PeerState) -> ReplicaPeer {
        ReplicaPeer {
            host: self.hosts[i],
            address: self.nodes[i].replication.clone(),
            state,
        }
    }

    /// Puts `spec` with this node's part and waits for it to be realized.
    async fn realize(&self, i: usize, base: &VolumeSpec, part: ReplicationSpec) -> ObservedVolume {
        let mut spec = base.clone();
        spec.generation = self.generation.fetch_add(1, Ordering::Relaxed);
        spec.replication = Some(part);
        let client = self.nodes[i].client();
        let id = spec.id;
        wait_async(
            "the agent to take the spec",
            Duration::from_secs(30),
            || {
                let (client, spec) = (client.clone(), spec.clone());
                async move { client.volume_put(&spec).await.ok() }
            },
        )
        .await;
        let o = wait_async("the spec to be realized", Duration::from_secs(60), || {
            let client = client.clone();
            let generation = spec.generation;
            async move {
                client
                    .volume_list()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|o| o.id == id && o.generation >= generation)
            }
        })
        .await;
        assert!(
            o.reason.is_none(),
            "node {i}: {:?}\n{}",
            o.reason,
            self.nodes[i].log_text()
        );
        o
    }

    async fn replica(&self, i: usize, base: &VolumeSpec, epoch: u64) {
        let o = self
            .realize(
                i,
                base,
                ReplicationSpec {
                    epoch,
                    role: ReplicaRole::Replica,
                    key: KEY.into(),
                    peers: Vec::new(),
                },
            )
            .await;
        assert_eq!(o.replication.map(|r| r.role), Some(ReplicaRole::Replica));
    }

    async fn primary(&self, i: usize, base: &VolumeSpec, epoch: u64, peers: Vec<ReplicaPeer>) {
        self.realize(
            i,
            base,
            ReplicationSpec {
                epoch,
                role: ReplicaRole::Primary,
                key: KEY.into(),
                peers,
            },
        )
        .await;
    }

    /// Waits until primary `i` sees `peer` connected and whole; returns
    /// the bytes it sent to bring it back.
    async fn in_sync(&self, i: usize, base: &VolumeSpec, peer: usize) -> u64 {
        let client = self.nodes[i].client();
        let (id, host) = (base.id, self.hosts[peer]);
        let p = wait_async("the replica to be in sync", Duration::from_secs(60), || {
            let client = client.clone();
            async move {
                let o = client
                    .volume_list()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|o| o.id == id)?;
                o.replication?
                    .peers
                    .into_iter()
                    .find(|p| p.host == host && p.state == ObservedPeerState::InSync)
            }
        })
        .await;
        p.resynced_bytes
    }
}

/// A block that names its address and the phase that wrote it, with a
/// checksum over the rest, so a torn, stale or misplaced block shows.
fn block(lba: u32, phase: u8) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..4].copy_from_slice(&lba.to_be_bytes());
    b[4] = phase;
    for (i, x) in b[8..504].iter_mut().enumerate() {
        *x = (lba as usize * 31 + i * 7 + phase as usize) as u8;
    }
    let sum: u64 = b[..504].iter().map(|&x| u64::from(x)).sum();
    b[504..].copy_from_slice(&sum.to_be_bytes());
    b
}

type Acked = Arc<Mutex<BTreeMap<u32, [u8; 512]>>>;

fn login(portal: &str, iqn: &str) -> Session {
    let mut s = Session::login(portal, INITIATOR, iqn, [0x80, 0, 0, 0, 0, 0x0c]).expect("login");
    s.settle();
    s
}

/// Writes `lbas` in order with `phase` until one is not acknowledged or
/// `stop` is set; records the acknowledged ones.
fn write_until_lost(
    mut s: Session,
    lbas: Vec<u32>,
    phase: u8,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    for lba in lbas {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let b = block(lba, phase);
        match s.write_block(lba, &b) {
            Some(r) if r.status == 0 => {
                acked.lock().unwrap().insert(lba, b);
            }
            _ => return,
        }
    }
}

fn verify(portal: &str, iqn: &str, acked: &Acked) {
    let mut s = login(portal, iqn);
    let acked = acked.lock().unwrap().clone();
    for (lba, want) in &acked {
        let r = s.read_block(*lba).expect("read answered");
        assert_eq!(r.status, 0, "read of {lba} failed");
        assert!(r.data == want.to_vec(), "block {lba} lost or changed");
    }
}

fn same_files(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "copies differ in size");
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("copies differ at byte {at} (region {})", at >> 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_volume_survives_its_primary_twice_without_losing_an_acknowledged_write() {
    let mut c = Cluster::start(3).await;
    let (a, b, cc) = (0, 1, 2);
    let mut base = volume_spec(SIZE);
    base.chap_user.clear();
    base.chap_secret.clear();
    let iqn = base.iqn.clone();

    // Epoch 1: A primary, B and C in sync. Replicas first, as the stack
    // manager orders it.
    c.replica(b, &base, 1).await;
    c.replica(cc, &base, 1).await;
    c.primary(
        a,
        &base,
        1,
        vec![c.peer(b, PeerState::InSync), c.peer(cc, PeerState::InSync)],
    )
    .await;
    c.in_sync(a, &base, b).await;
    c.in_sync(a, &base, cc).await;

    // Phase 1: blocks spread over every region, written until A dies.
    let acked: Acked = Arc::default();
    let lbas: Vec<u32> = (0..100_000u32)
        .map(|i| (i * 8 + (i / 64) % 8) % (SIZE as u32 / 512))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, acked, stop) = (login(&c.nodes[a].portal, &iqn), acked.clone(), stop.clone());
        std::thread::spawn(move || write_until_lost(s, lbas, 1, acked, stop))
    };
    wait_async("writes to be acknowledged", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 2000).then_some(()) }
    })
    .await;
    c.nodes[a].kill();
    writer.join().expect("writer");
    let phase1 = acked.lock().unwrap().len();
    eprintln!("phase 1: {phase1} writes acknowledged before the primary was killed");

    // Epoch 2: B promoted, C in sync, A out of sync.
    let promoted = Instant::now();
    c.replica(cc, &base, 2).await;
    c.primary(
        b,
        &base,
        2,
        vec![
            c.peer(cc, PeerState::InSync),
            c.peer(a, PeerState::OutOfSync),
        ],
    )
    .await;
    c.in_sync(b, &base, cc).await;
    eprintln!("promotion to C in sync: {:?}", promoted.elapsed());
    verify(&c.nodes[b].portal, &iqn, &acked);

    // Phase 2: a few regions change while A is away.
    let changed_regions = 5u32;
    {
        let mut s = login(&c.nodes[b].portal, &iqn);
        for r in 0..changed_regions {
            for k in 0..16 {
                let lba = r * 7 * BLOCKS_PER_REGION + k * 3 + 1;
                let blk = block(lba, 2);
                assert_eq!(s.write_block(lba, &blk).expect("answered").status, 0);
                acked.lock().unwrap().insert(lba, blk);
            }
        }
        assert_eq!(s.synchronize_cache().expect("answered").status, 0);
    }
    same_files(
        &c.nodes[b]
            .state
            .join("volumes")
            .join(base.id.to_string())
            .join("data"),
        &c.nodes[cc]
            .state
            .join("volumes")
            .join(base.id.to_string())
            .join("data"),
    );

    // A returns and is given its old spec, as a controller that missed the
    // promotion would: primary of epoch 1 in its eyes. It serves the
    // volume again, but no write it takes is acknowledged: C knows epoch 2
    // and B is no replica of it.
    c.nodes[a].restart();
    c.primary(
        a,
        &base,
        1,
        vec![c.peer(b, PeerState::InSync), c.peer(cc, PeerState::InSync)],
    )
    .await;
    let fenced_lba = 3 * BLOCKS_PER_REGION + 77;
    let portal_a = c.nodes[a].portal.clone();
    let iqn2 = iqn.clone();
    let split = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match Session::login(&portal_a, INITIATOR, &iqn2, [0x80, 0, 0, 0, 0, 0x0d]) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    return Err(format!(
                        "the returning node never served its stale volume: {e:?}"
                    ))
                }
            }
        };
        s.settle();
        s.set_timeout(Duration::from_secs(5));
        Ok(s.write_block(fenced_lba, &block(fenced_lba, 9)))
    })
    .await
    .expect("split-brain writer")
    .unwrap_or_else(|e| panic!("{e}\n{}", c.nodes[a].log_text()));
    assert!(
        split.as_ref().is_none_or(|r| r.status != 0),
        "a deposed primary acknowledged a write: {split:?}"
    );

    // Demoted, A resyncs from B: only what changed while it was away and
    // what it may have changed alone.
    c.replica(a, &base, 2).await;
    let resynced = c.in_sync(b, &base, a).await;
    eprintln!(
        "resync of the returning node: {resynced} bytes of a {SIZE}-byte volume ({changed_regions} regions changed while it was away)"
    );
    assert!(resynced > 0, "nothing was resynced");
    assert!(
        resynced <= 16 << 20,
        "resync sent {resynced} bytes: more than the changed and unsettled regions"
    );

    // Epoch 3: everyone in sync; then B dies and A takes over (epoch 4).
    c.replica(a, &base, 3).await;
    c.replica(cc, &base, 3).await;
    c.primary(
        b,
        &base,
        3,
        vec![c.peer(a, PeerState::InSync), c.peer(cc, PeerState::InSync)],
    )
    .await;
    c.in_sync(b, &base, a).await;
    {
        let mut s = login(&c.nodes[b].portal, &iqn);
        assert_eq!(s.synchronize_cache().expect("answered").status, 0);
    }
    c.nodes[b].kill();
    c.replica(cc, &base, 4).await;
    c.primary(
        a,
        &base,
        4,
        vec![
            c.peer(cc, PeerState::InSync),
            c.peer(b, PeerState::OutOfSync),
        ],
    )
    .await;
    c.in_sync(a, &base, cc).await;
    verify(&c.nodes[a].portal, &iqn, &acked);
    let r = login(&c.nodes[a].portal, &iqn)
        .read_block(fenced_lba)
        .expect("read");
    assert!(
        r.data != block(fenced_lba, 9).to_vec(),
        "the write the deposed primary took survived"
    );
}

/// The other failure: a replica dies. Writes are held (the primary never
/// decides alone to go on with fewer copies) until the stack manager marks
/// the replica out of sync; then they complete, the primary records what
/// the replica misses — durably: the primary itself restarts meanwhile —
/// and the returning replica is sent only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replica_holds_writes_until_marked_out_of_sync_and_then_resyncs_what_it_missed() {
    let mut c = Cluster::start(2).await;
    let (a, b) = (0, 1);
    let mut base = volume_spec(SIZE);
    base.chap_user.clear();
    base.chap_secret.clear();
    let iqn = base.iqn.clone();
    c.replica(b, &base, 1).await;
    c.primary(a, &base, 1, vec![c.peer(b, PeerState::InSync)])
        .await;
    c.in_sync(a, &base, b).await;
    let acked: Acked = Arc::default();
    {
        let mut s = login(&c.nodes[a].portal, &iqn);
        for lba in (0..64u32).map(|r| r * BLOCKS_PER_REGION) {
            let blk = block(lba, 1);
            assert_eq!(s.write_block(lba, &blk).expect("answered").status, 0);
            acked.lock().unwrap().insert(lba, blk);
        }
    }

    c.nodes[b].kill();
    let held_lba = 2 * BLOCKS_PER_REGION + 5;
    let (portal, iqn2) = (c.nodes[a].portal.clone(), iqn.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut s = login(&portal, &iqn2);
        s.set_timeout(Duration::from_secs(60));
        let started = Instant::now();
        let r = s.write_block(held_lba, &block(held_lba, 2));
        let _ = tx.send(());
        (r, started.elapsed())
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "a write was acknowledged while its in-sync replica was down"
    );
    // The stack manager's decision: go on without B.
    c.primary(a, &base, 2, vec![c.peer(b, PeerState::OutOfSync)])
        .await;
    let (r, held) = writer.join().expect("writer");
    assert_eq!(r.expect("answered").status, 0, "the held write failed");
    eprintln!("write held for {held:?} until the replica was marked out of sync");
    acked.lock().unwrap().insert(held_lba, block(held_lba, 2));
    let changed_regions = 4u32;
    {
        let mut s = login(&c.nodes[a].portal, &iqn);
        for r in 10..10 + changed_regions {
            let lba = r * BLOCKS_PER_REGION + 9;
            let blk = block(lba, 3);
            assert_eq!(s.write_block(lba, &blk).expect("answered").status, 0);
            acked.lock().unwrap().insert(lba, blk);
        }
        assert_eq!(s.synchronize_cache().expect("answered").status, 0);
    }

    // The primary restarts while B is still away: what B misses is on disk.
    c.nodes[a].kill();
    c.nodes[a].restart();
    c.primary(a, &base, 2, vec![c.peer(b, PeerState::OutOfSync)])
        .await;
    c.nodes[b].restart();
    let resynced = c.in_sync(a, &base, b).await;
    eprintln!("resync after the replica returned: {resynced} bytes ({} regions changed while it was away)", changed_regions + 1);
    assert!(resynced > 0, "nothing was resynced");
    assert!(
        resynced <= u64::from(changed_regions + 3) << 20,
        "resync sent {resynced} bytes: more than the regions B missed"
    );

    // B is whole: with A gone, B holds every acknowledged write.
    c.primary(a, &base, 3, vec![c.peer(b, PeerState::InSync)])
        .await;
    c.in_sync(a, &base, b).await;
    c.nodes[a].kill();
    c.primary(b, &base, 4, vec![c.peer(a, PeerState::OutOfSync)])
        .await;
    verify(&c.nodes[b].portal, &iqn, &acked);
}
