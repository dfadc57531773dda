//! The stable counterpart of the cargo-fuzz target: many random and mutated
//! datagrams through the parser and negotiation, then at a live server's
//! listener and transfer sockets, which must keep serving afterwards.

mod common;

use std::time::Duration;

use common::{Client, Fixture};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tftp::options::{negotiate, Limits};
use tftp::packet::{Packet, MAX_BLKSIZE, MIN_BLKSIZE};
use tftp::root::normalize;
use tokio::net::UdpSocket;

const SEEDS: &[&[u8]] = &[
    b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00",
    b"\x00\x01/boot/../x\x00netascii\x00timeout\x003\x00",
    b"\x00\x02upload\x00octet\x00",
    b"\x00\x04\x00\x01",
    b"\x00\x05\x00\x01File not found\x00",
    b"\x00\x06blksize\x00512\x00",
    b"\x00\x03\x00\x01data",
];

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        match rng.gen_range(0..6) {
            0 if !p.is_empty() => {
                let i = rng.gen_range(0..p.len());
                p[i] = rng.gen();
            }
            1 => {
                let i = rng.gen_range(0..=p.len());
                p.insert(i, rng.gen());
            }
            2 if !p.is_empty() => {
                let i = rng.gen_range(0..p.len());
                p.remove(i);
            }
            3 => p.truncate(rng.gen_range(0..=p.len())),
            4 => {
                let i = rng.gen_range(0..=p.len());
                let interesting: &[&[u8]] = &[
                    b"\x00",
                    b"..",
                    b"/",
                    b"\\",
                    b"65535",
                    b"0",
                    b"99999999999999999999",
                ];
                let s = interesting[rng.gen_range(0..interesting.len())];
                p.splice(i..i, s.iter().copied());
            }
            _ => p.extend((0..rng.gen_range(0..16)).map(|_| rng.gen::<u8>())),
        }
    }
    p
}

fn random_packet(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_bool(0.3) {
        let len = rng.gen_range(0..600);
        (0..len).map(|_| rng.gen()).collect()
    } else {
        let seed = SEEDS[rng.gen_range(0..SEEDS.len())];
        mutate(rng, seed)
    }
}

#[test]
fn parser_and_negotiation_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x7f7f_2024);
    let limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        default_timeout: Duration::from_secs(1),
    };
    let mut parsed = 0;
    for _ in 0..100_000 {
        let p = random_packet(&mut rng);
        let Ok(packet) = Packet::parse(&p) else {
            continue;
        };
        parsed += 1;
        let mut out = Vec::new();
        packet.encode(&mut out);
        assert!(
            Packet::parse(&out).is_ok(),
            "re-encoding of {p:?} does not parse"
        );
        if let Packet::Rrq(r) = packet {
            let n = negotiate(&r.options, &limits, Some(rng.gen()));
            assert!((MIN_BLKSIZE..=MAX_BLKSIZE).contains(&n.blksize));
            assert!(n.blksize <= 1468 || n.blksize == 512);
            assert!((1..=64).contains(&n.windowsize));
            if let Ok(path) = normalize(r.filename) {
                assert!(!path.split('/').any(|c| c == ".."), "{path}");
                assert!(!path.starts_with('/'));
            }
        }
    }
    // The mutator must actually reach the parser's success paths.
    assert!(parsed > 10_000, "only {parsed} packets parsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_server_survives_garbage() {
    let f = Fixture::with(|c| c.timeout = Duration::from_millis(100)).await;
    let want = f.put("pxelinux.0", 20_000);
    let mut rng = StdRng::seed_from_u64(0xbad_5eed);
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");

    // Open a transfer so garbage also reaches a transfer socket (TID).
    let mut rrq = Vec::new();
    Packet::Rrq(tftp::packet::Request {
        filename: "pxelinux.0",
        mode: "octet",
        options: vec![("windowsize", "4"), ("blksize", "1024")],
    })
    .encode(&mut rrq);
    sock.send_to(&rrq, f.addr()).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (_, tid) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("reply")
        .expect("recv");

    for i in 0..3000 {
        let p = random_packet(&mut rng);
        let target = if i % 2 == 0 { f.addr() } else { tid };
        sock.send_to(&p, target).await.expect("send garbage");
        // Drain replies so our socket buffer never fills.
        while sock.try_recv_from(&mut buf).is_ok() {}
    }

    let got = Client::default()
        .option("blksize", "1468")
        .option("windowsize", "8")
        .get(f.addr(), "pxelinux.0")
        .await
        .expect("server still serves");
    assert_eq!(got.data, want);
}
