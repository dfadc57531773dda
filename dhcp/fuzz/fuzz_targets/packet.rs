//! Arbitrary bytes → decode → Engine::handle. Any panic is a finding.
//! A few requests per input share one engine so stateful paths (offer then
//! request, release, decline) are reachable, and every reply must encode.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dhcp::{Config, Engine, Listener, Mode, NoHooks, RecvCtx, Reservation, Subnet};
use libfuzzer_sys::fuzz_target;

fn config(proxy: bool) -> Config {
    let mut s = Subnet::new("10.0.0.0/24".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 103));
    s.routers = vec![Ipv4Addr::new(10, 0, 0, 254)];
    let relayed = Subnet::new("10.1.0.0/24".parse().unwrap(), Ipv4Addr::new(10, 1, 0, 10), Ipv4Addr::new(10, 1, 0, 11));
    let mut c = Config {
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        subnets: vec![s, relayed],
        reservations: vec![Reservation { mac: "52:54:00:00:00:01".parse().unwrap(), ip: Ipv4Addr::new(10, 0, 0, 50), hostname: Some("n1".into()) }],
        ..Config::default()
    };
    c.boot.ipxe_script_url = Some("http://10.0.0.1/boot/{mac}.ipxe".into());
    c.boot.http_x64_url = Some("http://10.0.0.1/ipxe.efi".into());
    if proxy {
        c.mode = Mode::Proxy;
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let mut engine = Engine::new(config(ctl & 1 == 1), Arc::new(NoHooks)).expect("valid config");
    let listener = if ctl & 2 == 2 { Listener::Pxe } else { Listener::Dhcp };
    let ctx = RecvCtx { src: SocketAddr::from(([10, 0, 0, 9], 68)), listener };
    // Inputs may hold several packets separated by a marker byte; with the
    // top control bit set the whole input is one packet.
    let packets: Vec<&[u8]> = if ctl & 0x80 != 0 { vec![rest] } else { rest.split(|b| *b == 0xA5).take(8).collect() };
    for (i, pkt) in packets.into_iter().enumerate() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + (i as u64) * u64::from((ctl >> 2) & 0x1f));
        if let Some(r) = engine.handle(pkt, &ctx, now) {
            r.encode().expect("reply must encode");
        }
        engine.housekeeping(now);
    }
});
