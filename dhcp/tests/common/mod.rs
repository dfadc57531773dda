//! Shared helpers: packet builders, a config, a recording hook.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcp::dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcp::dhcproto::Encodable;
use dhcp::{Config, Engine, Event, Hooks, Lease, Mac, RecvCtx, Reply, Subnet, UnknownClient};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const RELAY_NET_GIADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

pub fn mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac([0x52, 0x54, b[0], b[1], b[2], b[3]])
}

pub fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// Direct subnet 10.0.0.0/24 with a 10-address pool, relayed subnet
/// 10.1.0.0/24.
pub fn config() -> Config {
    let mut direct = Subnet::new(
        "10.0.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 0, 0, 100),
        Ipv4Addr::new(10, 0, 0, 109),
    );
    direct.routers = vec![Ipv4Addr::new(10, 0, 0, 254)];
    direct.dns_servers = vec![SERVER];
    direct.domain_name = Some("prov.example".into());
    let relayed = Subnet::new(
        "10.1.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 1, 0, 100),
        Ipv4Addr::new(10, 1, 0, 199),
    );
    Config {
        server_ip: SERVER,
        subnets: vec![direct, relayed],
        lease_secs: 3600,
        offer_hold_secs: 30,
        ..Config::default()
    }
}

#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl Hooks for Recorder {
    fn unknown_client(&self, c: &UnknownClient) {
        self.0.lock().unwrap().push(Event::UnknownClient(c.clone()));
    }
    fn lease_bound(&self, l: &Lease) {
        self.0.lock().unwrap().push(Event::LeaseBound(l.clone()));
    }
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

pub fn engine(cfg: Config) -> (Engine, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let e = Engine::new(cfg, Arc::new(rec.clone())).expect("engine");
    (e, rec)
}

pub fn base(mac: Mac, ty: MessageType) -> Message {
    let mut m = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac.as_bytes(),
    );
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    m
}

pub fn discover(mac: Mac) -> Message {
    base(mac, MessageType::Discover)
}

pub fn selecting(mac: Mac, ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Request);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

pub fn init_reboot(mac: Mac, ip: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Request);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m
}

pub fn renewing(mac: Mac, ip: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Request);
    m.set_ciaddr(ip);
    m
}

pub fn release(mac: Mac, ip: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Release);
    m.set_ciaddr(ip);
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

pub fn decline(mac: Mac, ip: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Decline);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

pub fn inform(mac: Mac, ip: Ipv4Addr) -> Message {
    let mut m = base(mac, MessageType::Inform);
    m.set_ciaddr(ip);
    m
}

pub fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().expect("encode")
}

pub fn ctx() -> RecvCtx {
    RecvCtx::dhcp(SocketAddr::from(([0, 0, 0, 0], 68)))
}

pub fn send(e: &mut Engine, m: &Message, now: SystemTime) -> Option<Reply> {
    e.handle(&bytes(m), &ctx(), now)
}

pub fn ty(r: &Reply) -> MessageType {
    r.msg_type().expect("reply has a message type")
}

/// Full DORA; returns the bound address.
pub fn dora(e: &mut Engine, mac: Mac, now: SystemTime) -> Ipv4Addr {
    let offer = send(e, &discover(mac), now).expect("offer");
    assert_eq!(ty(&offer), MessageType::Offer);
    let ip = offer.message.yiaddr();
    let ack = send(e, &selecting(mac, ip, SERVER), now).expect("ack");
    assert_eq!(ty(&ack), MessageType::Ack, "{ack:?}");
    assert_eq!(ack.message.yiaddr(), ip);
    ip
}

pub fn fname(m: &Message) -> Option<String> {
    m.fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
}

pub fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}
