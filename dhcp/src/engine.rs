//! The DHCP state machine: one datagram in, at most one reply out. No
//! sockets and no clock of its own, so tests and the fuzzer drive it
//! directly and deterministically.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use tracing::{debug, error, info, warn};

use crate::codec::{self, Request};
use crate::config::{Config, Mode, Reservation, Subnet};
use crate::error::Error;
use crate::hooks::{Hooks, UnknownClient};
use crate::leases::{Lease, LeaseTable, Slot};
use crate::mac::Mac;
use crate::proxy;
use crate::relay::{self, RelayAgent, ReplyKind};
use crate::reply::{self, Reply};
use crate::reservations::Reservations;
use crate::store::{Journal, Record};

/// Which socket a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Port 67.
    Dhcp,
    /// PXE boot-server port 4011.
    Pxe,
}

/// Receive-side facts the reply depends on.
#[derive(Debug, Clone, Copy)]
pub struct RecvCtx {
    pub src: SocketAddr,
    pub listener: Listener,
}

impl RecvCtx {
    pub fn dhcp(src: SocketAddr) -> Self {
        RecvCtx {
            src,
            listener: Listener::Dhcp,
        }
    }
}

/// Unknown MACs remembered for de-duplicating discovery events; beyond
/// this (a MAC flood) we forget and may report a MAC twice.
const MAX_SEEN_UNKNOWN: usize = 65_536;
/// One "pool exhausted" line per this interval, however many DISCOVERs.
const EXHAUSTED_LOG_INTERVAL_MS: u64 = 10_000;

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Engine {
    cfg: Arc<Config>,
    leases: LeaseTable,
    reservations: Reservations,
    journal: Option<Journal>,
    hooks: Arc<dyn Hooks>,
    seen_unknown: HashSet<Mac>,
    exhausted_logged_ms: Option<u64>,
    exhausted_suppressed: u64,
}

impl Engine {
    /// Validates the config and loads the lease journal, if configured.
    pub fn new(config: Config, hooks: Arc<dyn Hooks>) -> Result<Engine, Error> {
        config.validate()?;
        let mut reservations = Reservations::default();
        for r in &config.reservations {
            check_reservation(&config, r)?;
            reservations.insert(r.clone())?;
        }
        let mut leases = LeaseTable::new();
        let mut journal = None;
        if let Some(path) = &config.lease_db {
            let (j, records) = Journal::open(path)?;
            for rec in records {
                match rec {
                    Record::Bind { lease } => {
                        leases.bind(lease);
                    }
                    Record::Release { ip, mac, at_ms } => {
                        leases.release(ip, mac, at_ms);
                    }
                    Record::Decline { ip, until_ms } => leases.quarantine(ip, until_ms),
                }
            }
            journal = Some(j);
        }
        let mut engine = Engine {
            cfg: Arc::new(config),
            leases,
            reservations,
            journal,
            hooks,
            seen_unknown: HashSet::new(),
            exhausted_logged_ms: None,
            exhausted_suppressed: 0,
        };
        let now = unix_ms(SystemTime::now());
        if let Err(e) = engine.compact(now) {
            warn!(error = %e, "could not compact lease journal at startup");
        }
        Ok(engine)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Handles one datagram. Never panics on any input; malformed packets
    /// are dropped with a debug log (they are common on shared segments).
    pub fn handle(&mut self, packet: &[u8], ctx: &RecvCtx, now: SystemTime) -> Option<Reply> {
        match codec::decode(packet) {
            Ok(req) => self.handle_request(&req, ctx, now),
            Err(e) => {
                debug!(src = %ctx.src, error = %e, "dropping packet");
                None
            }
        }
    }

    pub fn handle_request(
        &mut self,
        req: &Request,
        ctx: &RecvCtx,
        now: SystemTime,
    ) -> Option<Reply> {
        let now_ms = unix_ms(now);
        let cfg = Arc::clone(&self.cfg);
        if cfg.mode == Mode::Proxy || ctx.listener == Listener::Pxe {
            return proxy::handle(&cfg, req, ctx);
        }
        let agent = relay::parse(req.msg.giaddr(), req.relay_raw.as_deref());
        match req.msg_type {
            MessageType::Discover => self.discover(&cfg, req, agent, now_ms),
            MessageType::Request => self.request(&cfg, req, agent, now_ms),
            MessageType::Release => {
                self.release(&cfg, req, now_ms);
                None
            }
            MessageType::Decline => {
                self.decline(&cfg, req, now_ms);
                None
            }
            MessageType::Inform => self.inform(&cfg, req, agent.as_ref()),
            other => {
                debug!(mac = %req.mac, ?other, "ignoring message type");
                None
            }
        }
    }

    fn subnet<'c>(
        &self,
        cfg: &'c Config,
        req: &Request,
        agent: Option<&RelayAgent>,
    ) -> Option<&'c Subnet> {
        let sel = relay::selecting_address(req.msg.giaddr(), agent, cfg);
        let s = cfg.subnet_for(sel);
        if s.is_none() {
            debug!(mac = %req.mac, selector = %sel, "no subnet configured for this link");
        }
        s
    }

    /// Addresses the pool must never hand out.
    fn excluded(&self, cfg: &Config, subnet: &Subnet, ip: Ipv4Addr, mac: Mac) -> bool {
        ip == cfg.server_ip
            || ip == subnet.network.network()
            || ip == subnet.network.broadcast()
            || subnet.routers.contains(&ip)
            || self.reservations.owner_of(ip).is_some_and(|o| o != mac)
    }

    fn in_pool(subnet: &Subnet, ip: Ipv4Addr) -> bool {
        subnet
            .pool
            .is_some_and(|p| (u32::from(p.start)..=u32::from(p.end)).contains(&u32::from(ip)))
    }

    /// The reservation of `mac`, if it applies on this subnet.
    fn reservation_in<'a>(&'a self, mac: Mac, subnet: &Subnet) -> Option<&'a Reservation> {
        self.reservations
            .get(mac)
            .filter(|r| subnet.network.contains(&r.ip))
    }

    fn discover(
        &mut self,
        cfg: &Config,
        req: &Request,
        agent: Option<RelayAgent>,
        now_ms: u64,
    ) -> Option<Reply> {
        let subnet = self.subnet(cfg, req, agent.as_ref())?;
        let mac = req.mac;
        let ip = if let Some(r) = self.reservation_in(mac, subnet) {
            if self.leases.held_by_other(r.ip, mac, now_ms) {
                warn!(%mac, ip = %r.ip, "reserved address is still leased to another machine; not offering");
                return None;
            }
            r.ip
        } else {
            if self.reservations.get(mac).is_none() {
                self.report_unknown(req, agent.as_ref());
            }
            self.pick_pool_address(cfg, subnet, req, now_ms)?
        };
        if self.leases.bound(mac, now_ms).map(|l| l.ip) != Some(ip) {
            self.leases
                .offer(ip, mac, now_ms + u64::from(cfg.offer_hold_secs) * 1000);
        }
        debug!(%mac, %ip, "offer");
        let mut msg = reply::skeleton(req, MessageType::Offer, cfg.server_ip);
        msg.set_yiaddr(ip);
        self.add_lease_options(cfg, subnet, req, &mut msg, true);
        Some(Reply {
            dest: relay::destination(req.msg.giaddr(), req.msg.ciaddr(), ReplyKind::Offer, cfg),
            message: msg,
        })
    }

    fn pick_pool_address(
        &mut self,
        cfg: &Config,
        subnet: &Subnet,
        req: &Request,
        now_ms: u64,
    ) -> Option<Ipv4Addr> {
        let mac = req.mac;
        let usable = |this: &Self, ip: Ipv4Addr| {
            Self::in_pool(subnet, ip)
                && !this.excluded(cfg, subnet, ip, mac)
                && this.leases.available_to(ip, mac, now_ms)
        };
        // Same address as last time, then the one the client asks for.
        let previous = self.leases.address_of(mac).filter(|ip| usable(self, *ip));
        let requested = requested_ip(req).filter(|ip| usable(self, *ip));
        if let Some(ip) = previous.or(requested) {
            return Some(ip);
        }
        let Some(pool) = subnet.pool else {
            debug!(%mac, network = %subnet.network, "unknown machine on a subnet without a pool");
            return None;
        };
        let reservations = &self.reservations;
        let excluded = |ip: Ipv4Addr| {
            ip == cfg.server_ip
                || ip == subnet.network.network()
                || ip == subnet.network.broadcast()
                || subnet.routers.contains(&ip)
                || reservations.owner_of(ip).is_some_and(|o| o != mac)
        };
        match self.leases.allocate(pool, mac, now_ms, excluded) {
            Some(ip) => Some(ip),
            None => {
                self.log_exhausted(subnet, now_ms);
                None
            }
        }
    }

    fn log_exhausted(&mut self, subnet: &Subnet, now_ms: u64) {
        let due = self
            .exhausted_logged_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= EXHAUSTED_LOG_INTERVAL_MS);
        if due {
            warn!(
                network = %subnet.network,
                suppressed = self.exhausted_suppressed,
                "address pool exhausted; not offering (further occurrences suppressed for 10s)"
            );
            self.exhausted_logged_ms = Some(now_ms);
            self.exhausted_suppressed = 0;
        } else {
            self.exhausted_suppressed += 1;
        }
    }

    fn report_unknown(&mut self, req: &Request, agent: Option<&RelayAgent>) {
        if self.seen_unknown.contains(&req.mac) {
            return;
        }
        if self.seen_unknown.len() >= MAX_SEEN_UNKNOWN {
            self.seen_unknown.clear();
        }
        self.seen_unknown.insert(req.mac);
        let client = reply::client_info(req);
        let ev = UnknownClient {
            mac: req.mac,
            arch: client.effective_arch(),
            vendor_class: client
                .vendor_class
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            relay: agent.cloned(),
        };
        info!(mac = %ev.mac, arch = ?ev.arch, "unknown machine discovered");
        self.hooks.unknown_client(&ev);
    }

    fn request(
        &mut self,
        cfg: &Config,
        req: &Request,
        agent: Option<RelayAgent>,
        now_ms: u64,
    ) -> Option<Reply> {
        let mac = req.mac;
        let ciaddr = req.msg.ciaddr();
        let requested = requested_ip(req);
        if let Some(sid) = server_id(req) {
            if sid != cfg.server_ip {
                // SELECTING another server's offer: free ours now rather
                // than waiting for it to time out.
                if let Some(ip) = self.leases.address_of(mac) {
                    if matches!(self.leases.slot(ip), Some(Slot::Offered { .. })) {
                        self.leases.release(ip, mac, now_ms);
                    }
                }
                debug!(%mac, server = %sid, "client chose another server");
                return None;
            }
            let ip = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr))?;
            let subnet = self.subnet(cfg, req, agent.as_ref())?;
            return Some(self.commit(cfg, subnet, req, ip, agent, now_ms));
        }
        let subnet = self.subnet(cfg, req, agent.as_ref())?;
        let (ip, init_reboot) = match (requested, ciaddr.is_unspecified()) {
            (Some(ip), true) => (ip, true),
            (_, false) => (ciaddr, false),
            (None, true) => {
                debug!(%mac, "REQUEST without server id, requested address or ciaddr");
                return None;
            }
        };
        if !subnet.network.contains(&ip) {
            // Client moved to another network (RFC 2131 §4.3.2).
            return Some(self.nak(cfg, req, "address not on this network"));
        }
        let known = self.leases.address_of(mac) == Some(ip)
            || self.reservation_in(mac, subnet).is_some_and(|r| r.ip == ip);
        if init_reboot && !known {
            if self.leases.address_of(mac).is_some() || self.reservation_in(mac, subnet).is_some() {
                return Some(self.nak(cfg, req, "address belongs to someone else"));
            }
            // RFC 2131 §4.3.2: no record of this client, stay silent so
            // another server that has one can answer.
            debug!(%mac, %ip, "INIT-REBOOT from client without record; silent");
            return None;
        }
        // RENEWING/REBINDING with no record (e.g. lease DB lost) is accepted
        // if the address is free: we are authoritative for this subnet.
        Some(self.commit(cfg, subnet, req, ip, agent, now_ms))
    }

    /// Binds `ip` to the client and builds the ACK, or a NAK if it may not
    /// have it.
    fn commit(
        &mut self,
        cfg: &Config,
        subnet: &Subnet,
        req: &Request,
        ip: Ipv4Addr,
        agent: Option<RelayAgent>,
        now_ms: u64,
    ) -> Reply {
        let mac = req.mac;
        let reservation = self.reservation_in(mac, subnet).cloned();
        let verdict = match &reservation {
            Some(r) if r.ip != ip => Err("address does not match this machine's reservation"),
            _ if !subnet.network.contains(&ip) => Err("address not on this network"),
            _ if self.leases.held_by_other(ip, mac, now_ms) => Err("address in use"),
            Some(_) => Ok(()),
            None if self.excluded(cfg, subnet, ip, mac) || !Self::in_pool(subnet, ip) => {
                Err("address not available")
            }
            None => Ok(()),
        };
        if let Err(why) = verdict {
            debug!(%mac, %ip, why, "NAK");
            return self.nak(cfg, req, why);
        }
        let lease_secs = subnet.lease_secs.unwrap_or(cfg.lease_secs);
        let lease = Lease {
            mac,
            ip,
            hostname: reservation.and_then(|r| r.hostname),
            bound_ms: now_ms,
            expires_ms: now_ms + u64::from(lease_secs) * 1000,
            arch: reply::client_info(req).effective_arch(),
            relay: agent,
        };
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.append(&Record::Bind {
                lease: lease.clone(),
            }) {
                // An ACK we cannot remember would hand the address out
                // twice after a restart; let the client retry instead.
                error!(%mac, %ip, error = %e, "cannot persist lease; not acknowledging");
                return self.nak(cfg, req, "server cannot record lease");
            }
        }
        let prev = self.leases.bind(lease.clone());
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.ip != lease.ip || p.relay != lease.relay);
        if changed {
            info!(%mac, %ip, arch = ?lease.arch, "lease bound");
            self.hooks.lease_bound(&lease);
        }
        self.maybe_compact(now_ms);
        let mut msg = reply::skeleton(req, MessageType::Ack, cfg.server_ip);
        msg.set_yiaddr(ip);
        if !req.msg.ciaddr().is_unspecified() {
            msg.set_ciaddr(req.msg.ciaddr());
        }
        self.add_lease_options(cfg, subnet, req, &mut msg, true);
        Reply {
            dest: relay::destination(req.msg.giaddr(), req.msg.ciaddr(), ReplyKind::Ack, cfg),
            message: msg,
        }
    }

    fn nak(&self, cfg: &Config, req: &Request, why: &str) -> Reply {
        let mut msg = reply::skeleton(req, MessageType::Nak, cfg.server_ip);
        msg.opts_mut().insert(DhcpOption::Message(why.to_owned()));
        if !req.msg.giaddr().is_unspecified() {
            // RFC 2131 §4.3.2: the relay must broadcast the NAK because the
            // client's address is wrong.
            msg.set_flags(req.msg.flags().set_broadcast());
        }
        Reply {
            dest: relay::destination(req.msg.giaddr(), req.msg.ciaddr(), ReplyKind::Nak, cfg),
            message: msg,
        }
    }

    fn release(&mut self, cfg: &Config, req: &Request, now_ms: u64) {
        if server_id(req).is_some_and(|s| s != cfg.server_ip) {
            return;
        }
        let ip = req.msg.ciaddr();
        if self.leases.release(ip, req.mac, now_ms) {
            info!(mac = %req.mac, %ip, "lease released");
            self.persist(Record::Release {
                ip,
                mac: req.mac,
                at_ms: now_ms,
            });
        }
    }

    fn decline(&mut self, cfg: &Config, req: &Request, now_ms: u64) {
        if server_id(req).is_some_and(|s| s != cfg.server_ip) {
            return;
        }
        let Some(ip) = requested_ip(req) else { return };
        // Only the holder may decline, or anyone could knock addresses out.
        if self.leases.address_of(req.mac) != Some(ip) {
            debug!(mac = %req.mac, %ip, "DECLINE for an address the client does not hold");
            return;
        }
        let until_ms = now_ms + u64::from(cfg.decline_quarantine_secs) * 1000;
        warn!(mac = %req.mac, %ip, "client declined address (conflict on the wire); quarantined");
        self.leases.quarantine(ip, until_ms);
        self.persist(Record::Decline { ip, until_ms });
    }

    fn inform(&mut self, cfg: &Config, req: &Request, agent: Option<&RelayAgent>) -> Option<Reply> {
        let ciaddr = req.msg.ciaddr();
        let subnet = if ciaddr.is_unspecified() {
            self.subnet(cfg, req, agent)?
        } else {
            cfg.subnet_for(ciaddr)
                .or_else(|| self.subnet(cfg, req, agent))?
        };
        let mut msg = reply::skeleton(req, MessageType::Ack, cfg.server_ip);
        msg.set_ciaddr(ciaddr);
        // RFC 2131 §3.4: no lease parameters in an INFORM reply.
        self.add_lease_options(cfg, subnet, req, &mut msg, false);
        let dest = relay::destination(req.msg.giaddr(), ciaddr, ReplyKind::Ack, cfg);
        Some(Reply { dest, message: msg })
    }

    fn add_lease_options(
        &self,
        cfg: &Config,
        subnet: &Subnet,
        req: &Request,
        msg: &mut dhcproto::v4::Message,
        lease: bool,
    ) {
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::SubnetMask(subnet.network.netmask()));
        if !subnet.routers.is_empty() {
            opts.insert(DhcpOption::Router(subnet.routers.clone()));
        }
        if !subnet.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(subnet.dns_servers.clone()));
        }
        if let Some(d) = &subnet.domain_name {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(h) = self
            .reservation_in(req.mac, subnet)
            .and_then(|r| r.hostname.clone())
        {
            opts.insert(DhcpOption::Hostname(h));
        }
        if lease {
            let secs = subnet.lease_secs.unwrap_or(cfg.lease_secs);
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
        reply::add_boot(msg, req, cfg);
    }

    fn persist(&mut self, rec: Record) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.append(&rec) {
                error!(error = %e, "cannot write lease journal");
            }
        }
    }

    fn maybe_compact(&mut self, now_ms: u64) {
        // Entries in the table bound what a compacted journal would hold;
        // counting only live ones would cost O(n) per ACK.
        let entries = self.leases.len();
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.records() > 2 * entries + 1024)
        {
            if let Err(e) = self.compact(now_ms) {
                error!(error = %e, "lease journal compaction failed");
            }
        }
    }

    fn compact(&mut self, now_ms: u64) -> std::io::Result<()> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        let binds = self
            .leases
            .all_bound()
            .cloned()
            .map(|lease| Record::Bind { lease });
        let quarantines = self
            .leases
            .quarantines(now_ms)
            .map(|(ip, until_ms)| Record::Decline { ip, until_ms });
        j.compact(binds.chain(quarantines))
    }

    /// Periodic upkeep: forget dead offers and quarantines.
    pub fn housekeeping(&mut self, now: SystemTime) {
        let now_ms = unix_ms(now);
        self.leases.sweep(now_ms);
        self.maybe_compact(now_ms);
    }

    /// Adds or replaces a reservation at runtime. Takes effect on the
    /// machine's next DISCOVER/renewal (a different current address is
    /// NAKed at renewal so it moves over).
    pub fn add_reservation(&mut self, r: Reservation) -> Result<(), Error> {
        check_reservation(&self.cfg, &r)?;
        if let Some(holder) = self.holder_other_than(r.ip, r.mac) {
            warn!(mac = %r.mac, ip = %r.ip, %holder, "reserved address is currently leased to another machine");
        }
        self.seen_unknown.remove(&r.mac);
        self.reservations.insert(r)?;
        Ok(())
    }

    fn holder_other_than(&self, ip: Ipv4Addr, mac: Mac) -> Option<Mac> {
        match self.leases.slot(ip)? {
            Slot::Bound(l) if l.mac != mac && l.expires_ms > unix_ms(SystemTime::now()) => {
                Some(l.mac)
            }
            _ => None,
        }
    }

    pub fn remove_reservation(&mut self, mac: Mac) -> Option<Reservation> {
        self.seen_unknown.remove(&mac);
        self.reservations.remove(mac)
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        self.reservations.list()
    }

    /// Live bound leases, sorted by address.
    pub fn leases(&self, now: SystemTime) -> Vec<Lease> {
        let now_ms = unix_ms(now);
        let mut v: Vec<Lease> = self
            .leases
            .all_bound()
            .filter(|l| l.expires_ms > now_ms)
            .cloned()
            .collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    /// Addresses currently held by offers, leases or quarantine. Tests use
    /// it to prove nothing leaks.
    pub fn addresses_in_use(&self, now: SystemTime) -> usize {
        self.leases.live_count(unix_ms(now))
    }

    pub fn pending_offers(&self, now: SystemTime) -> usize {
        self.leases.offered_count(unix_ms(now))
    }
}

fn check_reservation(cfg: &Config, r: &Reservation) -> Result<(), Error> {
    if cfg.mode == Mode::Authoritative && cfg.subnet_for(r.ip).is_none() {
        return Err(Error::ReservationOutsideSubnets {
            mac: r.mac,
            ip: r.ip,
        });
    }
    Ok(())
}

fn requested_ip(req: &Request) -> Option<Ipv4Addr> {
    match req.msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(req: &Request) -> Option<Ipv4Addr> {
    match req.msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}
