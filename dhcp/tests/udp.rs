//! The real server over UDP on 127.0.0.1. A test socket plays relay agent
//! (giaddr = 127.0.0.1) so replies come back unicast.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{bytes, discover, mac, selecting};
use dhcp::dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcp::dhcproto::Decodable;
use dhcp::{Config, Event, Mode, Reservation, Server, Subnet};
use tokio::net::UdpSocket;

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

async fn recv(sock: &UdpSocket) -> Message {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("reply within 5s")
        .expect("recv");
    Message::decode(&mut dhcp::dhcproto::Decoder::new(&buf[..n])).expect("decodable reply")
}

async fn setup(
    mode: Mode,
) -> (
    Server,
    UdpSocket,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let relay = UdpSocket::bind((LO, 0)).await.unwrap();
    let cfg = Config {
        listen: SocketAddr::from((LO, 0)),
        pxe_listen: Some(SocketAddr::from((LO, 0))),
        server_ip: LO,
        mode,
        subnets: vec![Subnet::new(
            "127.0.0.0/8".parse().unwrap(),
            Ipv4Addr::new(127, 0, 1, 1),
            Ipv4Addr::new(127, 0, 1, 200),
        )],
        relay_port: relay.local_addr().unwrap().port(),
        ..Config::default()
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::bind(cfg, tx).await.unwrap();
    let s = server.clone();
    let task = tokio::spawn(async move { s.run().await });
    (server, relay, rx, task)
}

#[tokio::test]
async fn dora_over_udp_with_events_and_shutdown() {
    let (server, relay, mut events, task) = setup(Mode::Authoritative).await;
    let addr = server.local_addr().unwrap();
    server
        .add_reservation(Reservation {
            mac: mac(2),
            ip: Ipv4Addr::new(127, 0, 0, 50),
            hostname: None,
        })
        .unwrap();
    assert_eq!(server.reservations().len(), 1);

    // Junk first: the server must keep serving.
    relay.send_to(b"garbage", addr).await.unwrap();

    for (m, want) in [(mac(1), None), (mac(2), Some(Ipv4Addr::new(127, 0, 0, 50)))] {
        let mut d = discover(m);
        d.set_giaddr(LO);
        relay.send_to(&bytes(&d), addr).await.unwrap();
        let offer = recv(&relay).await;
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        if let Some(w) = want {
            assert_eq!(offer.yiaddr(), w);
        }
        let mut r = selecting(m, offer.yiaddr(), LO);
        r.set_giaddr(LO);
        relay.send_to(&bytes(&r), addr).await.unwrap();
        let ack = recv(&relay).await;
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
    }
    assert_eq!(server.leases().len(), 2);
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push(ev);
    }
    assert!(
        matches!(&seen[0], Event::UnknownClient(u) if u.mac == mac(1)),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, Event::LeaseBound(_)))
            .count(),
        2
    );
    assert!(server.remove_reservation(mac(2)).is_some());

    server.shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn proxy_mode_over_udp_on_both_ports() {
    let (server, relay, _events, task) = setup(Mode::Proxy).await;
    let addr = server.local_addr().unwrap();
    let pxe_addr = server.pxe_local_addr().unwrap().unwrap();
    let mut d = discover(mac(3));
    d.set_giaddr(LO);
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    relay.send_to(&bytes(&d), addr).await.unwrap();
    let offer = recv(&relay).await;
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        offer.fname().map(|f| f.starts_with(b"undionly.kpxe")),
        Some(true)
    );

    // Port 4011: unicast REQUEST from a client that has an address.
    let client = UdpSocket::bind((LO, 0)).await.unwrap();
    let mut r = d.clone();
    r.set_giaddr(Ipv4Addr::UNSPECIFIED);
    r.set_ciaddr(LO);
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    client.send_to(&bytes(&r), pxe_addr).await.unwrap();
    let ack = recv(&client).await;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert!(server.leases().is_empty());
    server.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bind_reports_errors() {
    let cfg = Config {
        listen: SocketAddr::from((LO, 0)),
        ..Config::default()
    };
    // server_ip unset: configuration error, not a panic.
    assert!(Server::bind(cfg, dhcp::NoHooks).await.is_err());
    let cfg = Config {
        listen: SocketAddr::from((LO, 0)),
        server_ip: LO,
        interface: Some("no-such-if0".into()),
        subnets: vec![Subnet::new(
            "127.0.0.0/8".parse().unwrap(),
            Ipv4Addr::new(127, 0, 1, 1),
            Ipv4Addr::new(127, 0, 1, 2),
        )],
        ..Config::default()
    };
    let err = Server::bind(cfg, dhcp::NoHooks)
        .await
        .err()
        .expect("unknown interface");
    assert!(err.to_string().contains("DHCP socket"), "{err}");
}
