//! handle() for every message type and error path, no sockets.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use dhcp::dhcproto::v4::{Architecture, DhcpOption, MessageType, OptionCode};
use dhcp::{Config, Event, Listener, Mode, Pool, RecvCtx, Reservation};

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

fn one_address_config() -> Config {
    let mut c = config();
    c.subnets[0].pool = Some(Pool {
        start: ip(100),
        end: ip(100),
    });
    c
}

#[test]
fn dora_carries_all_options_and_fires_hooks() {
    let (mut e, rec) = engine(config());
    let m = mac(1);
    let offer = send(&mut e, &discover(m), t(0)).expect("offer");
    assert_eq!(ty(&offer), MessageType::Offer);
    let o = &offer.message;
    assert_eq!(o.yiaddr(), ip(100));
    assert_eq!(o.xid(), 0x1234_5678);
    assert_eq!(o.chaddr(), m.as_bytes());
    assert_eq!(offer.dest, SocketAddr::from(([255, 255, 255, 255], 68)));
    assert_eq!(
        opt(o, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opt(o, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(254)]))
    );
    assert_eq!(
        opt(o, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
    assert_eq!(
        opt(o, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("prov.example".into()))
    );
    assert_eq!(
        opt(o, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opt(o, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opt(o, OptionCode::Renewal),
        Some(&DhcpOption::Renewal(1800))
    );
    assert_eq!(
        opt(o, OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
    // Encoded replies are padded to the BOOTP minimum.
    assert!(offer.encode().unwrap().len() >= 300);

    let ack = send(&mut e, &selecting(m, ip(100), SERVER), t(1)).expect("ack");
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(ack.message.yiaddr(), ip(100));
    let leases = e.leases(t(2));
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].mac, leases[0].ip), (m, ip(100)));
    assert_eq!(leases[0].expires_ms, (1_700_000_001 + 3600) * 1000);

    let ev = rec.events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(&ev[0], Event::UnknownClient(u) if u.mac == m));
    assert!(matches!(&ev[1], Event::LeaseBound(l) if l.mac == m && l.ip == ip(100)));
}

#[test]
fn reservation_gets_fixed_address_and_hostname() {
    let mut c = config();
    c.reservations.push(Reservation {
        mac: mac(7),
        ip: ip(50),
        hostname: Some("node-7".into()),
    });
    let (mut e, rec) = engine(c);
    let offer = send(&mut e, &discover(mac(7)), t(0)).unwrap();
    assert_eq!(offer.message.yiaddr(), ip(50));
    assert_eq!(
        opt(&offer.message, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node-7".into()))
    );
    assert_eq!(dora(&mut e, mac(7), t(1)), ip(50));
    assert_eq!(e.leases(t(2))[0].hostname.as_deref(), Some("node-7"));
    // Known machine: no discovery event.
    assert!(rec
        .events()
        .iter()
        .all(|e| !matches!(e, Event::UnknownClient(_))));
    // The reserved address is never handed to anyone else from the pool,
    // and an unknown machine asking for it specifically does not get it.
    let mut d = discover(mac(8));
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(50)));
    assert_ne!(send(&mut e, &d, t(3)).unwrap().message.yiaddr(), ip(50));
    assert_eq!(
        ty(&send(&mut e, &selecting(mac(8), ip(50), SERVER), t(3)).unwrap()),
        MessageType::Nak
    );
}

#[test]
fn duplicate_discover_and_request_are_idempotent() {
    let (mut e, rec) = engine(config());
    let a = send(&mut e, &discover(mac(1)), t(0))
        .unwrap()
        .message
        .yiaddr();
    let b = send(&mut e, &discover(mac(1)), t(1))
        .unwrap()
        .message
        .yiaddr();
    assert_eq!(a, b);
    assert_eq!(e.pending_offers(t(1)), 1);
    for i in 0..3 {
        let ack = send(&mut e, &selecting(mac(1), a, SERVER), t(2 + i)).unwrap();
        assert_eq!((ty(&ack), ack.message.yiaddr()), (MessageType::Ack, a));
    }
    assert_eq!(e.leases(t(5)).len(), 1);
    assert_eq!(e.addresses_in_use(t(5)), 1);
    let bound = rec
        .events()
        .iter()
        .filter(|e| matches!(e, Event::LeaseBound(_)))
        .count();
    assert_eq!(
        bound, 1,
        "duplicate REQUESTs must not re-fire the bound hook"
    );
    // A DISCOVER from a bound client re-offers its address without
    // disturbing the binding.
    assert_eq!(
        send(&mut e, &discover(mac(1)), t(6))
            .unwrap()
            .message
            .yiaddr(),
        a
    );
    assert_eq!(e.leases(t(6)).len(), 1);
}

#[test]
fn unanswered_offer_expires_and_address_is_reusable() {
    let (mut e, _) = engine(one_address_config());
    assert_eq!(
        send(&mut e, &discover(mac(1)), t(0))
            .unwrap()
            .message
            .yiaddr(),
        ip(100)
    );
    // Held for offer_hold_secs: nobody else gets it.
    assert!(send(&mut e, &discover(mac(2)), t(10)).is_none());
    // After the hold it is free again; no lease leaked.
    assert_eq!(e.addresses_in_use(t(31)), 0);
    assert_eq!(
        send(&mut e, &discover(mac(2)), t(31))
            .unwrap()
            .message
            .yiaddr(),
        ip(100)
    );
    // The first client's late REQUEST is refused now.
    assert_eq!(
        ty(&send(&mut e, &selecting(mac(1), ip(100), SERVER), t(32)).unwrap()),
        MessageType::Nak
    );
    assert_eq!(
        ty(&send(&mut e, &selecting(mac(2), ip(100), SERVER), t(32)).unwrap()),
        MessageType::Ack
    );
    e.housekeeping(t(100));
    assert_eq!(e.leases(t(100)).len(), 1);
}

#[test]
fn exhausted_pool_gives_no_offer_and_recovers() {
    let (mut e, _) = engine(config());
    for n in 0..10 {
        dora(&mut e, mac(n), t(0));
    }
    for n in 10..200 {
        assert!(send(&mut e, &discover(mac(n)), t(1)).is_none());
    }
    // Leases run out after an hour; the pool serves again.
    assert!(send(&mut e, &discover(mac(500)), t(3601)).is_some());
}

#[test]
fn request_for_another_server_frees_our_offer() {
    let (mut e, _) = engine(one_address_config());
    send(&mut e, &discover(mac(1)), t(0)).unwrap();
    assert!(send(
        &mut e,
        &selecting(mac(1), ip(100), Ipv4Addr::new(10, 0, 0, 9)),
        t(1)
    )
    .is_none());
    assert_eq!(e.pending_offers(t(1)), 0);
    assert_eq!(
        send(&mut e, &discover(mac(2)), t(2))
            .unwrap()
            .message
            .yiaddr(),
        ip(100)
    );
}

#[test]
fn init_reboot_paths() {
    let (mut e, _) = engine(config());
    let a = dora(&mut e, mac(1), t(0));
    // Known binding: ACK.
    assert_eq!(
        ty(&send(&mut e, &init_reboot(mac(1), a), t(10)).unwrap()),
        MessageType::Ack
    );
    // Wrong address for a client we know: NAK.
    assert_eq!(
        ty(&send(&mut e, &init_reboot(mac(1), ip(105)), t(11)).unwrap()),
        MessageType::Nak
    );
    // Address from a different network (machine moved): NAK, broadcast.
    let nak = send(
        &mut e,
        &init_reboot(mac(1), Ipv4Addr::new(192, 168, 1, 5)),
        t(12),
    )
    .unwrap();
    assert_eq!(ty(&nak), MessageType::Nak);
    assert_eq!(nak.dest, SocketAddr::from(([255, 255, 255, 255], 68)));
    assert!(opt(&nak.message, OptionCode::AddressLeaseTime).is_none());
    // No record of this client at all: stay silent (RFC 2131 4.3.2).
    assert!(send(&mut e, &init_reboot(mac(99), ip(104)), t(13)).is_none());
}

#[test]
fn renewing_and_rebinding() {
    let (mut e, _) = engine(config());
    let a = dora(&mut e, mac(1), t(0));
    let ack = send(&mut e, &renewing(mac(1), a), t(1800)).unwrap();
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(
        ack.dest,
        SocketAddr::from((a, 68)),
        "renewal replies unicast to ciaddr"
    );
    assert_eq!(
        e.leases(t(1801))[0].expires_ms,
        (1_700_000_000 + 1800 + 3600) * 1000
    );
    // Someone else's address: NAK.
    let b = dora(&mut e, mac(2), t(1));
    assert_eq!(
        ty(&send(&mut e, &renewing(mac(1), b), t(2)).unwrap()),
        MessageType::Nak
    );
    // Lost DB / unknown renewer with a free pool address: we are
    // authoritative, so accept and record it.
    assert_eq!(
        ty(&send(&mut e, &renewing(mac(3), ip(108)), t(3)).unwrap()),
        MessageType::Ack
    );
    assert!(e
        .leases(t(4))
        .iter()
        .any(|l| l.mac == mac(3) && l.ip == ip(108)));
    // Outside any pool/reservation: NAK.
    assert_eq!(
        ty(&send(&mut e, &renewing(mac(4), ip(20)), t(5)).unwrap()),
        MessageType::Nak
    );
    // REQUEST with nothing to go on: ignored.
    assert!(send(&mut e, &base(mac(5), MessageType::Request), t(6)).is_none());
}

#[test]
fn release_frees_the_address_but_keeps_affinity() {
    let (mut e, _) = engine(config());
    let a = dora(&mut e, mac(1), t(0));
    assert!(send(&mut e, &release(mac(1), a), t(5)).is_none());
    assert!(e.leases(t(6)).is_empty());
    assert_eq!(e.addresses_in_use(t(6)), 0);
    // Released by the wrong MAC: ignored.
    let b = dora(&mut e, mac(2), t(7));
    send(&mut e, &release(mac(3), b), t(8));
    assert_eq!(e.leases(t(8)).len(), 1);
    // Same machine comes back to the same address.
    assert_eq!(
        send(&mut e, &discover(mac(1)), t(9))
            .unwrap()
            .message
            .yiaddr(),
        a
    );
}

#[test]
fn decline_quarantines_the_address() {
    let (mut e, _) = engine(config());
    let a = dora(&mut e, mac(1), t(0));
    // Decline from a machine that does not hold the address: ignored.
    send(&mut e, &decline(mac(2), a), t(1));
    assert_eq!(e.leases(t(1)).len(), 1);
    assert!(send(&mut e, &decline(mac(1), a), t(2)).is_none());
    assert!(e.leases(t(3)).is_empty());
    let next = send(&mut e, &discover(mac(1)), t(3))
        .unwrap()
        .message
        .yiaddr();
    assert_ne!(
        next, a,
        "declined address must not be offered again during quarantine"
    );
    // Quarantine (600 s) ends eventually.
    assert_eq!(e.addresses_in_use(t(700)), 0);
}

#[test]
fn inform_gets_config_without_lease() {
    let (mut e, _) = engine(config());
    let r = send(&mut e, &inform(mac(1), ip(20)), t(0)).unwrap();
    assert_eq!(ty(&r), MessageType::Ack);
    assert_eq!(r.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.dest, SocketAddr::from((ip(20), 68)));
    assert!(opt(&r.message, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&r.message, OptionCode::SubnetMask).is_some());
    assert!(e.leases(t(0)).is_empty());
}

#[test]
fn malformed_packets_are_dropped() {
    let (mut e, _) = engine(config());
    let good = bytes(&discover(mac(1)));
    let c = ctx();
    assert!(e.handle(&[], &c, t(0)).is_none());
    assert!(e.handle(&good[..100], &c, t(0)).is_none());
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    assert!(e.handle(&reply_op, &c, t(0)).is_none());
    let mut big_hlen = good.clone();
    big_hlen[2] = 200; // dhcproto would slice chaddr out of bounds
    assert!(e.handle(&big_hlen, &c, t(0)).is_none());
    let mut magic = good.clone();
    magic[236] = 0;
    assert!(e.handle(&magic, &c, t(0)).is_none());
    // Fixed-length options with wrong lengths that trip dhcproto asserts.
    for (code, body) in [
        (94u8, vec![1u8, 2]),
        (81, vec![]),
        (80, vec![1]),
        (151, vec![]),
        (152, vec![1, 2]),
    ] {
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1, code, body.len() as u8]);
        p.extend_from_slice(&body);
        p.push(255);
        assert!(e.handle(&p, &c, t(0)).is_none(), "option {code}");
    }
    // No message type: plain BOOTP, not served.
    let mut p = good[..240].to_vec();
    p.push(255);
    assert!(e.handle(&p, &c, t(0)).is_none());
    // Truncated trailing option is tolerated like dhcproto does.
    let mut p = good[..240].to_vec();
    p.extend_from_slice(&[53, 1, 1, 12, 40, b'x']);
    assert_eq!(
        e.handle(&p, &c, t(0)).map(|r| ty(&r)),
        Some(MessageType::Offer)
    );
    // Server-to-client message types are ignored.
    assert!(send(&mut e, &base(mac(2), MessageType::Offer), t(0)).is_none());
    assert!(send(&mut e, &base(mac(2), MessageType::Ack), t(0)).is_none());
    assert_eq!(e.addresses_in_use(t(40)), 0);
}

fn relay_option(circuit: &[u8], remote: &[u8]) -> Vec<u8> {
    let mut v = vec![1, circuit.len() as u8];
    v.extend_from_slice(circuit);
    v.extend_from_slice(&[2, remote.len() as u8]);
    v.extend_from_slice(remote);
    v
}

/// Appends option 82 raw (dhcproto would re-encode a parsed one).
fn with_82(m: &dhcp::dhcproto::v4::Message, raw: &[u8]) -> Vec<u8> {
    let mut b = bytes(m);
    assert_eq!(b.pop(), Some(255));
    b.extend_from_slice(&[82, raw.len() as u8]);
    b.extend_from_slice(raw);
    b.push(255);
    b
}

#[test]
fn relayed_requests_use_giaddr_subnet_and_echo_option_82() {
    let (mut e, rec) = engine(config());
    let raw = relay_option(b"swp12", b"leaf-3");
    let mut d = discover(mac(1));
    d.set_giaddr(RELAY_NET_GIADDR);
    d.set_hops(1);
    let offer = e.handle(&with_82(&d, &raw), &ctx(), t(0)).unwrap();
    let a = offer.message.yiaddr();
    assert_eq!(a, Ipv4Addr::new(10, 1, 0, 100), "pool chosen from giaddr");
    assert_eq!(offer.dest, SocketAddr::from((RELAY_NET_GIADDR, 67)));
    assert_eq!(offer.message.giaddr(), RELAY_NET_GIADDR);
    // Echoed byte-exact.
    let enc = offer.encode().unwrap();
    let needle = [&[82u8, raw.len() as u8][..], &raw].concat();
    assert!(
        enc.windows(needle.len()).any(|w| w == needle),
        "option 82 echoed verbatim"
    );

    let mut r = selecting(mac(1), a, SERVER);
    r.set_giaddr(RELAY_NET_GIADDR);
    let ack = e.handle(&with_82(&r, &raw), &ctx(), t(1)).unwrap();
    assert_eq!(ty(&ack), MessageType::Ack);
    let lease = &e.leases(t(2))[0];
    let relay = lease.relay.as_ref().expect("relay info recorded");
    assert_eq!(relay.giaddr, RELAY_NET_GIADDR);
    assert_eq!(relay.circuit_id_lossy().as_deref(), Some("swp12"));
    assert_eq!(relay.remote_id_lossy().as_deref(), Some("leaf-3"));
    assert!(rec.events().iter().any(|e| matches!(e, Event::UnknownClient(u) if u.relay.as_ref().and_then(|r| r.circuit_id_lossy()).as_deref() == Some("swp12"))));

    // Relayed NAK asks the relay to broadcast.
    let mut bad = selecting(mac(1), Ipv4Addr::new(10, 1, 0, 7), SERVER);
    bad.set_giaddr(RELAY_NET_GIADDR);
    let nak = send(&mut e, &bad, t(3)).unwrap();
    assert_eq!(ty(&nak), MessageType::Nak);
    assert!(nak.message.flags().broadcast());
    assert_eq!(nak.dest, SocketAddr::from((RELAY_NET_GIADDR, 67)));

    // A relay on a link we do not serve gets nothing.
    let mut d = discover(mac(2));
    d.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(send(&mut e, &d, t(4)).is_none());
}

#[test]
fn unknown_client_reported_once() {
    let (mut e, rec) = engine(config());
    let mut d = discover(mac(1));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::X86_64));
    for i in 0..5 {
        send(&mut e, &d, t(i));
    }
    let unknown: Vec<_> = rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::UnknownClient(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].arch, Some(9));
}

#[test]
fn runtime_reservations() {
    let (mut e, rec) = engine(config());
    let a = dora(&mut e, mac(1), t(0));
    assert_eq!(a, ip(100));
    e.add_reservation(Reservation {
        mac: mac(1),
        ip: ip(60),
        hostname: Some("n1".into()),
    })
    .unwrap();
    assert_eq!(e.reservations().len(), 1);
    // Conflicting reservation rejected; outside all subnets rejected.
    assert!(e
        .add_reservation(Reservation {
            mac: mac(2),
            ip: ip(60),
            hostname: None
        })
        .is_err());
    assert!(e
        .add_reservation(Reservation {
            mac: mac(2),
            ip: Ipv4Addr::new(192, 168, 0, 1),
            hostname: None
        })
        .is_err());
    // Renewing the old pool address is refused so the machine moves over.
    assert_eq!(
        ty(&send(&mut e, &renewing(mac(1), a), t(10)).unwrap()),
        MessageType::Nak
    );
    assert_eq!(dora(&mut e, mac(1), t(11)), ip(60));
    assert_eq!(
        e.leases(t(12)).len(),
        1,
        "old pool lease replaced, not leaked"
    );
    // Removing it makes the machine unknown again.
    assert!(e.remove_reservation(mac(1)).is_some());
    assert!(e.remove_reservation(mac(1)).is_none());
    send(&mut e, &discover(mac(1)), t(13));
    let unknown = rec
        .events()
        .iter()
        .filter(|e| matches!(e, Event::UnknownClient(u) if u.mac == mac(1)))
        .count();
    assert_eq!(unknown, 2);
}

#[test]
fn pxe_client_gets_boot_file_in_authoritative_mode() {
    let mut c = config();
    c.boot.ipxe_script_url = Some("http://10.0.0.1:8080/boot/{mac}.ipxe".into());
    let (mut e, _) = engine(c);
    let mut d = discover(mac(1));
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    d.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::BC));
    let o = send(&mut e, &d, t(0)).unwrap();
    assert_eq!(fname(&o.message).as_deref(), Some("ipxe.efi"));
    assert_eq!(o.message.siaddr(), SERVER);
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let o = send(&mut e, &d, t(1)).unwrap();
    assert_eq!(
        fname(&o.message).as_deref(),
        Some("http://10.0.0.1:8080/boot/52:54:00:00:00:01.ipxe")
    );
    // Plain OS client: no boot info.
    let o = send(&mut e, &discover(mac(2)), t(2)).unwrap();
    assert_eq!(fname(&o.message), None);
    // Arch is recorded on the lease.
    let mut r = selecting(mac(1), ip(100), SERVER);
    r.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::BC));
    send(&mut e, &r, t(3)).unwrap();
    assert_eq!(e.leases(t(3))[0].arch, Some(7));
}

#[test]
fn proxy_mode_answers_only_pxe_clients_without_address() {
    let mut c = config();
    c.mode = Mode::Proxy;
    c.subnets.clear();
    let (mut e, _) = engine(c);
    assert!(
        send(&mut e, &discover(mac(1)), t(0)).is_none(),
        "non-PXE client ignored"
    );
    let mut d = discover(mac(1));
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    d.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
        Architecture::Intelx86PC,
    ));
    d.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
    let o = send(&mut e, &d, t(0)).unwrap();
    assert_eq!(ty(&o), MessageType::Offer);
    assert_eq!(o.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(fname(&o.message).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        opt(&o.message, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert!(opt(&o.message, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&o.message, OptionCode::ClientMachineIdentifier).is_some());
    // Port 4011 REQUEST: ACK unicast back to the source.
    let mut r = d.clone();
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    r.set_ciaddr(Ipv4Addr::new(192, 168, 5, 20));
    let src = SocketAddr::from(([192, 168, 5, 20], 68));
    let ack = e
        .handle(
            &bytes(&r),
            &RecvCtx {
                src,
                listener: Listener::Pxe,
            },
            t(1),
        )
        .unwrap();
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(ack.dest, src);
    assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    // Nothing is ever leased in proxy mode.
    assert!(e.leases(t(2)).is_empty());
    // A REQUEST on 67 meant for the real DHCP server is not ours.
    let mut other = r.clone();
    other.set_ciaddr(Ipv4Addr::UNSPECIFIED);
    other
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 77)));
    assert!(send(&mut e, &other, t(3)).is_none());
}

#[test]
fn config_validation() {
    let mut c = config();
    c.server_ip = Ipv4Addr::UNSPECIFIED;
    assert!(c.validate().is_err());
    let mut c = config();
    c.subnets[0].pool = Some(Pool {
        start: ip(200),
        end: ip(100),
    });
    assert!(c.validate().is_err());
    let mut c = config();
    c.subnets[0].pool = Some(Pool {
        start: ip(200),
        end: Ipv4Addr::new(10, 0, 1, 5),
    });
    assert!(c.validate().is_err());
    let mut c = config();
    c.subnets.clear();
    assert!(c.validate().is_err());
    // Serde round trip with defaults filled in.
    let json = serde_json::to_string(&config()).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config());
    let minimal: Config =
        serde_json::from_str(r#"{"server_ip":"10.0.0.1","subnets":[{"network":"10.0.0.0/24"}]}"#)
            .unwrap();
    assert!(minimal.validate().is_ok());
}
