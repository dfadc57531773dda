//! Stable-toolchain stand-in for the fuzzer: many random and mutated
//! packets through handle(); no panic, and afterwards no address is leaked.

mod common;

use common::*;
use dhcp::dhcproto::v4::{Architecture, DhcpOption, MessageType};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for n in 0..4 {
        let m = mac(n);
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 100 + n as u8);
        let mut d = discover(m);
        d.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        d.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::BC));
        let mut relayed = discover(m);
        relayed.set_giaddr(RELAY_NET_GIADDR);
        for msg in [
            d,
            relayed,
            selecting(m, ip, SERVER),
            init_reboot(m, ip),
            renewing(m, ip),
            release(m, ip),
            decline(m, ip),
            inform(m, ip),
        ] {
            out.push(bytes(&msg));
        }
    }
    // One with a raw option 82.
    let mut b = bytes(&discover(mac(9)));
    b.pop();
    b.extend_from_slice(&[82, 8, 1, 2, b'p', b'1', 2, 2, b's', b'1', 255]);
    out.push(b);
    out
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    match rng.gen_range(0..6) {
        0 => {
            let len = rng.gen_range(0..700);
            (0..len).map(|_| rng.gen()).collect()
        }
        1 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..p.len());
                p[i] = rng.gen();
            }
            p
        }
        2 => {
            // Mutate only the options area so headers stay plausible.
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(240..p.len());
                p[i] = rng.gen();
            }
            p
        }
        3 => {
            p.truncate(rng.gen_range(0..p.len()));
            p
        }
        4 => {
            p.truncate(p.len().saturating_sub(1));
            for _ in 0..rng.gen_range(1..20) {
                let code: u8 = rng.gen();
                let len: u8 = rng.gen_range(0..12);
                p.push(code);
                p.push(len);
                p.extend((0..len).map(|_| rng.gen::<u8>()));
            }
            p.push(255);
            p
        }
        _ => {
            // Random MAC and message type on an otherwise valid packet.
            for b in &mut p[28..34] {
                *b = rng.gen();
            }
            if let Some(pos) = p[240..].windows(2).position(|w| w == [53, 1]) {
                p[240 + pos + 2] = rng.gen_range(0..12);
            }
            p
        }
    }
}

#[test]
fn random_and_mutated_packets_do_not_panic_or_leak() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let seeds = seeds();
    let (mut e, _) = engine(config());
    let mut replies = 0;
    for i in 0..200_000u64 {
        let seed = &seeds[rng.gen_range(0..seeds.len())];
        let pkt = mutate(&mut rng, seed);
        let now = t(i / 1000);
        if let Some(r) = e.handle(&pkt, &ctx(), now) {
            r.encode().expect("every reply encodes");
            replies += 1;
        }
    }
    assert!(
        replies > 1000,
        "mutations too destructive to exercise handle(): {replies}"
    );
    // Let every offer, lease and quarantine run out; then the whole pool
    // must be allocatable again.
    let later = t(200 + 3600 + 700);
    e.housekeeping(later);
    assert_eq!(e.addresses_in_use(later), 0);
    for n in 0..10 {
        let offer =
            send(&mut e, &discover(mac(10_000 + n)), later).expect("pool address available");
        assert_eq!(ty(&offer), MessageType::Offer);
        let ack = send(
            &mut e,
            &selecting(mac(10_000 + n), offer.message.yiaddr(), SERVER),
            later,
        )
        .unwrap();
        assert_eq!(ty(&ack), MessageType::Ack);
    }
    assert_eq!(e.leases(later).len(), 10);
}
