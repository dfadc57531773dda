//! Fencing by the target itself: the storage agent admits a volume's
//! allowed initiators at the SCSI level (a persistent reservation key per
//! initiator name, registered on the host's behalf) and preempts them when
//! a new spec takes their access away. Judged over the wire by a raw
//! initiator that keeps its session open across the change.

mod support;

use std::time::Duration;

use storage_agent::exports::initiator_key;
use support::raw::Session;
use support::*;

const ISID_A: [u8; 6] = [0x80, 0, 0, 0, 0, 0x0a];
const ISID_B: [u8; 6] = [0x80, 0, 0, 0, 0, 0x0b];

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_is_preempted_at_the_target() {
    let mut node = Node::start().await;
    let mut spec = volume_spec(4 << 20);
    spec.chap_user.clear();
    spec.chap_secret.clear();
    node.realize(&spec).await;
    let (key_a, key_b) = (initiator_key(INITIATOR), initiator_key(INITIATOR_2));
    assert_ne!(key_a, key_b);

    let portal = node.portal.clone();
    let iqn = spec.iqn.clone();
    let (mut a, mut b, g0) = tokio::task::spawn_blocking(move || {
        let mut a = Session::login(&portal, INITIATOR, &iqn, ISID_A).expect("login a");
        a.settle();
        let mut b = Session::login(&portal, INITIATOR_2, &iqn, ISID_B).expect("login b");
        b.settle();
        // Both hosts are registered on their behalf, whatever their ISID.
        let (g0, keys) = b.read_keys();
        assert_eq!(sorted(keys), sorted(vec![key_a, key_b]));
        let w = a.write_block(0, &[0xa5; 512]).expect("write answered");
        assert_eq!(w.status, 0, "admitted host cannot write: {w:?}");
        (a, b, g0)
    })
    .await
    .expect("initiator thread");

    // The stack manager fences host A: a new spec without it.
    spec.generation += 1;
    spec.allowed_initiators = vec![INITIATOR_2.into()];
    node.realize(&spec).await;

    let iqn = spec.iqn.clone();
    let portal = node.portal.clone();
    let (b, g1) = tokio::task::spawn_blocking(move || {
        // A's live session gets no further write in: the agent closed it,
        // and a command racing the close meets the reservation.
        match a.write_block(1, &[0x5a; 512]) {
            None => {}
            Some(r) => assert!(
                r.status == 0x18 || r.status == 0x02,
                "the fenced host's write went through: {r:?}"
            ),
        }
        assert!(
            Session::login(&portal, INITIATOR, &iqn, ISID_A).is_err(),
            "the fenced host logged in again"
        );
        // Its key is gone; B's stays, and B still writes and reads A's data.
        let (g1, keys) = b.read_keys();
        assert_eq!(keys, vec![key_b]);
        assert!(g1 > g0, "generation did not move: {g0} -> {g1}");
        let w = b.write_block(1, &[0xb5; 512]).expect("write answered");
        assert_eq!(w.status, 0, "the remaining host cannot write: {w:?}");
        let r = b.read_block(0).expect("read answered");
        assert_eq!((r.status, r.data), (0, vec![0xa5; 512]));
        (b, g1)
    })
    .await
    .expect("initiator thread");
    drop(b);

    // The admissions are the target's persisted state: after a crash and
    // restart host A is still out and B still in, under the same keys, and
    // the generation carries on from where it was (a fresh state would
    // restart it). The stack manager never heard of this volume (the test
    // put it on the agent directly), so the spec is pushed again, as its
    // reconciler does after a restart.
    node.kill_agent();
    node.start_agent();
    node.realize(&spec).await;
    let iqn = spec.iqn.clone();
    let portal = node.portal.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = testkit::wait_for(
            "the restarted target to let host B in",
            Duration::from_secs(60),
            || Session::login(&portal, INITIATOR_2, &iqn, ISID_A).ok(),
        );
        b.settle();
        let (g2, keys) = b.read_keys();
        assert_eq!(keys, vec![key_b]);
        assert!(g2 >= g1, "generation went back: {g1} -> {g2}");
        let w = b.write_block(2, &[0xc5; 512]).expect("write answered");
        assert_eq!(w.status, 0, "host B cannot write after a restart: {w:?}");
    })
    .await
    .expect("initiator thread");
}
