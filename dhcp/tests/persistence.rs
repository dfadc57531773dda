//! The lease journal survives restarts, torn writes and compaction.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;

use common::*;
use dhcp::dhcproto::v4::MessageType;

#[test]
fn leases_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leases.jsonl");
    let mut cfg = config();
    cfg.lease_db = Some(db.clone());
    let (a, b, c);
    {
        let (mut e, _) = engine(cfg.clone());
        a = dora(&mut e, mac(1), t(0));
        b = dora(&mut e, mac(2), t(0));
        c = dora(&mut e, mac(3), t(0));
        send(&mut e, &release(mac(2), b), t(10));
        send(&mut e, &decline(mac(3), c), t(10));
        // An offer that was never requested is not persisted.
        send(&mut e, &discover(mac(4)), t(10)).unwrap();
    }
    // Simulate a crash mid-write: a torn trailing line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&db)
        .unwrap()
        .write_all(b"{\"op\":\"bind\",\"lea")
        .unwrap();

    let (mut e, _) = engine(cfg.clone());
    let leases = e.leases(t(20));
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!((leases[0].mac, leases[0].ip), (mac(1), a));
    // Renewal after restart works without a new DISCOVER.
    assert_eq!(
        ty(&send(&mut e, &renewing(mac(1), a), t(30)).unwrap()),
        MessageType::Ack
    );
    // The bound address is not handed to a newcomer, nor is the declined one.
    for n in 10..17 {
        let ip = dora(&mut e, mac(n), t(40));
        assert_ne!(ip, a);
        assert_ne!(ip, c, "quarantine must survive restart");
    }
    // Released client gets its old address back (history kept).
    assert_eq!(
        send(&mut e, &discover(mac(2)), t(50))
            .unwrap()
            .message
            .yiaddr(),
        b
    );
}

#[test]
fn journal_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leases.jsonl");
    let mut cfg = config();
    cfg.lease_db = Some(db.clone());
    let (mut e, _) = engine(cfg.clone());
    let a = dora(&mut e, mac(1), t(0));
    for i in 0..5000 {
        assert_eq!(
            ty(&send(&mut e, &renewing(mac(1), a), t(i)).unwrap()),
            MessageType::Ack
        );
    }
    let lines = std::fs::read_to_string(&db).unwrap().lines().count();
    assert!(
        lines < 2100,
        "journal has {lines} lines; compaction not happening"
    );
    drop(e);
    let (e, _) = engine(cfg);
    let l = e.leases(t(5000));
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].ip, a);
    assert_eq!(l[0].expires_ms, (1_700_000_000 + 4999 + 3600) * 1000);
}

#[test]
fn unwritable_lease_db_fails_startup() {
    let mut cfg = config();
    cfg.lease_db = Some("/nonexistent-dir/leases.jsonl".into());
    let err = dhcp::Engine::new(cfg, std::sync::Arc::new(dhcp::NoHooks))
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    let _ = Ipv4Addr::UNSPECIFIED;
}
