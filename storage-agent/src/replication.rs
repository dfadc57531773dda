//! Replicated volumes: the primary's medium, which streams every change to
//! the volume's other copies before the command completes, and the replica
//! side, which applies them. The wire protocol is `api::replication`.
//!
//! Ordering: one lock (`order`) is held while a change is numbered, sent to
//! every connected peer and applied locally, so each copy applies the same
//! changes in the same order. Waiting for acknowledgements happens outside
//! it, so the stream stays full (the peers apply while the next command is
//! sent).
//!
//! Acknowledgement: a change completes when every peer the stack manager
//! calls in sync holds it — it acknowledged the change, or it came back
//! and resynced every region it missed. A peer that is in sync but
//! unreachable holds writes back (the guest sees a pause) until it returns
//! or the stack manager marks it out of sync or moves the primary: the
//! primary never decides alone to go on with fewer copies, which is what
//! keeps a partitioned primary from acknowledging what the others never saw.
//!
//! Resync: each peer has a persistent dirty map of the regions it missed
//! (changes made while it was away, changes it never acknowledged). On
//! connecting, the peer adds the regions of its own activity log (changes
//! it made that may not be everywhere, as a former primary's last writes),
//! and the primary its own; the regions are then sent in the background at
//! a bounded rate.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use api::ids::{HostId, VolumeId};
use api::internal::{ObservedPeer, ObservedPeerState, PeerState, ReplicaPeer};
use api::replication::{
    decode_reply, decode_request, encode_hello, encode_op, encode_reply, frame_len, Hello, Op,
    OpKind, RefusedReason, Reply, Request, Welcome,
};
use scsi::{FileMedium, Medium};

use crate::regions::{regions_of, ActivityLog, RegionMap, REGION_BYTES};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a blocked send or an unanswered handshake may take before the
/// peer counts as gone.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> io::Result<()> {
    stream.write_all(frame)
}

fn read_frame(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let n = frame_len(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; n];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn keys_equal(a: &str, b: &str) -> bool {
    // Constant time in the key's content: a stranger learns nothing from timing.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The regions a change touches.
fn op_regions(kind: &OpKind) -> std::ops::Range<u64> {
    match kind {
        OpKind::Write { offset, data } => regions_of(*offset, data.len() as u64),
        OpKind::PunchHole { offset, len }
        | OpKind::ZeroRange { offset, len }
        | OpKind::Pattern { offset, len, .. } => regions_of(*offset, *len),
        OpKind::SetLen { .. } | OpKind::Sync => 0..0,
    }
}

fn apply(local: &FileMedium, kind: &OpKind) -> io::Result<()> {
    match kind {
        OpKind::Write { offset, data } => local.write_at(data, *offset),
        OpKind::PunchHole { offset, len } => local.punch_hole(*offset, *len),
        OpKind::ZeroRange { offset, len } => local.zero_range(*offset, *len),
        OpKind::Pattern {
            offset,
            len,
            pattern,
        } => local.write_pattern(pattern, *offset, *len),
        OpKind::SetLen { len } => {
            // Copies only grow: a late or repeated size never truncates data.
            if *len > local.size_bytes()? {
                local.set_len(*len)?;
            }
            Ok(())
        }
        OpKind::Sync => local.sync(),
    }
}

// ---------------------------------------------------------------- primary

/// The numbering of changes; held while a change is sent and applied.
struct Order {
    next_seq: u64,
}

impl Order {
    fn take(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

fn op_frame(seq: u64, settled: u64, kind: OpKind) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_op(&Op { seq, settled, kind }, &mut frame);
    frame
}

struct Conn {
    stream: TcpStream,
    /// Changes sent and not yet acknowledged, oldest first, with their regions.
    pending: VecDeque<(u64, std::ops::Range<u64>)>,
    id: u64,
}

struct LinkState {
    conn: Option<Conn>,
    /// Every change up to here was acknowledged on the current connection.
    acked_through: u64,
    /// The last change a resync pass sent: the peer is whole only once it
    /// has acknowledged it.
    resynced_through: u64,
    /// The peer refused this primary's epoch: stop trying until reconfigured.
    fenced: bool,
    state: PeerState,
    address: String,
}

struct Link {
    host: HostId,
    inner: Mutex<LinkState>,
    dirty: RegionMap,
    resynced_bytes: AtomicU64,
    stop: AtomicBool,
}

impl Link {
    /// When the peer is whole — connected, accepting this primary, missing
    /// no region, and every resent region acknowledged — the change up to
    /// which it holds everything.
    fn whole_through(&self, st: &LinkState) -> Option<u64> {
        (st.conn.is_some()
            && !st.fenced
            && self.dirty.count() == 0
            && st.acked_through >= st.resynced_through)
            .then_some(st.acked_through)
    }

    /// Whether the peer holds every change up to `seq`.
    fn holds(&self, seq: u64) -> bool {
        self.whole_through(&lock(&self.inner))
            .is_some_and(|t| t >= seq)
    }

    /// Connection lost: what it had not acknowledged is dirty.
    fn lose(&self, st: &mut LinkState, why: &str) {
        if let Some(conn) = st.conn.take() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            let regions: Vec<u64> = conn.pending.iter().flat_map(|(_, r)| r.clone()).collect();
            if let Err(e) = self.dirty.mark(regions) {
                tracing::error!(peer = %self.host, error = %e, "cannot record the regions a peer missed");
            }
            tracing::warn!(peer = %self.host, reason = why, unacknowledged = conn.pending.len(), "replica connection lost");
        }
    }
}

/// Replication settings of the primary, from its spec and the agent config.
#[derive(Clone)]
pub struct PrimaryConfig {
    pub epoch: u64,
    pub key: String,
    pub peers: Vec<ReplicaPeer>,
    /// Bound on resync traffic per peer, bytes per second.
    pub resync_bytes_per_sec: u64,
}

pub struct Replicated {
    volume: VolumeId,
    local: FileMedium,
    dir: PathBuf,
    al: ActivityLog,
    order: Mutex<Order>,
    links: Mutex<Vec<Arc<Link>>>,
    config: Mutex<PrimaryConfig>,
    /// Bumped (and notified) whenever a peer's holdings change.
    progress: Mutex<u64>,
    changed: Condvar,
    next_conn: AtomicU64,
    /// Set when this primary is retired: waiting writes fail.
    closed: AtomicBool,
    /// The settled watermark last computed (when a change completed), sent
    /// in every frame: reading it costs the write path no lock.
    settled_mark: AtomicU64,
}

impl Replicated {
    /// Opens the primary's side of a volume whose data file is `data` and
    /// whose maps live in `dir`.
    pub fn open(
        volume: VolumeId,
        data: &Path,
        dir: &Path,
        config: PrimaryConfig,
    ) -> io::Result<Arc<Replicated>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(data)?;
        // Changes are numbered after anything a previous life of this copy
        // numbered, so its unsettled regions stay until settled past them.
        let start = read_u64(&dir.join("seq")).unwrap_or(0) + (1 << 32);
        write_u64(&dir.join("seq"), start)?;
        let al = ActivityLog::open(&dir.join("activity.map"), start)?;
        let r = Arc::new(Replicated {
            volume,
            local: FileMedium(file),
            dir: dir.to_path_buf(),
            al,
            order: Mutex::new(Order {
                next_seq: start + 1,
            }),
            links: Mutex::new(Vec::new()),
            config: Mutex::new(config.clone()),
            progress: Mutex::new(0),
            changed: Condvar::new(),
            next_conn: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            settled_mark: AtomicU64::new(0),
        });
        r.configure(config)?;
        Ok(r)
    }

    /// Takes a new spec: new epoch, key, peers or peer states. Links to
    /// peers no longer listed stop; a new epoch reconnects every link.
    pub fn configure(self: &Arc<Self>, config: PrimaryConfig) -> io::Result<()> {
        let old = std::mem::replace(&mut *lock(&self.config), config.clone());
        let mut links = lock(&self.links);
        links.retain(|l| {
            let keep = config.peers.iter().any(|p| p.host == l.host);
            if !keep {
                l.stop.store(true, Ordering::Relaxed);
                l.lose(&mut lock(&l.inner), "no longer a peer");
            }
            keep
        });
        for peer in &config.peers {
            match links.iter().find(|l| l.host == peer.host) {
                Some(l) => {
                    let mut st = lock(&l.inner);
                    st.state = peer.state;
                    if old.epoch != config.epoch || st.address != peer.address {
                        st.address = peer.address.clone();
                        st.fenced = false;
                        l.lose(&mut st, "new epoch");
                    }
                }
                None => {
                    let dirty =
                        RegionMap::open(&self.dir.join(format!("dirty-{}.map", peer.host)))?;
                    let link = Arc::new(Link {
                        host: peer.host,
                        inner: Mutex::new(LinkState {
                            conn: None,
                            acked_through: 0,
                            resynced_through: 0,
                            fenced: false,
                            state: peer.state,
                            address: peer.address.clone(),
                        }),
                        dirty,
                        resynced_bytes: AtomicU64::new(0),
                        stop: AtomicBool::new(false),
                    });
                    links.push(link.clone());
                    let this = self.clone();
                    std::thread::Builder::new()
                        .name(format!("repl-{}", peer.host))
                        .spawn(move || this.tend(link))?;
                }
            }
        }
        drop(links);
        self.notify();
        Ok(())
    }

    /// Stops every link; writes still waiting fail.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for l in lock(&self.links).drain(..) {
            l.stop.store(true, Ordering::Relaxed);
            l.lose(&mut lock(&l.inner), "primary retired");
        }
        self.notify();
    }

    fn notify(&self) {
        *lock(&self.progress) += 1;
        self.changed.notify_all();
    }

    pub fn observe(&self) -> Vec<ObservedPeer> {
        lock(&self.links)
            .iter()
            .map(|l| {
                let st = lock(&l.inner);
                let behind = l.dirty.count() * REGION_BYTES;
                let state = if st.fenced {
                    ObservedPeerState::Fenced
                } else if st.conn.is_none() {
                    ObservedPeerState::Unreachable
                } else if l.whole_through(&st).is_none() {
                    ObservedPeerState::Resyncing
                } else {
                    ObservedPeerState::InSync
                };
                ObservedPeer {
                    host: l.host,
                    state,
                    behind_bytes: behind,
                    resynced_bytes: l.resynced_bytes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    pub fn epoch(&self) -> u64 {
        lock(&self.config).epoch
    }

    /// Every change up to the returned number is on every in-sync peer.
    fn settled(&self, upto: u64) -> u64 {
        let links = lock(&self.links);
        let mut settled = upto;
        for l in links.iter() {
            let st = lock(&l.inner);
            if st.state != PeerState::InSync {
                continue;
            }
            settled = settled.min(l.whole_through(&st).unwrap_or(0));
        }
        settled
    }

    /// Numbers `kind`, sends it to every connected peer and applies it
    /// locally, in that order, under the order lock. Returns its number.
    fn stream(
        &self,
        kind: OpKind,
        local: impl FnOnce(&FileMedium) -> io::Result<()>,
    ) -> io::Result<u64> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(io::Error::other("this copy is no longer the primary"));
        }
        let regions = op_regions(&kind);
        let mut order = lock(&self.order);
        let seq = order.take();
        if !regions.is_empty() {
            self.al.mark(regions.clone(), seq)?;
        }
        let links: Vec<Arc<Link>> = lock(&self.links).clone();
        let frame = op_frame(seq, self.settled_mark.load(Ordering::Acquire), kind);
        for l in &links {
            let mut st = lock(&l.inner);
            let sent = match st.conn.as_mut() {
                Some(conn) => match write_frame(&mut conn.stream, &frame) {
                    Ok(()) => {
                        conn.pending.push_back((seq, regions.clone()));
                        true
                    }
                    Err(e) => {
                        l.lose(&mut st, &e.to_string());
                        false
                    }
                },
                None => false,
            };
            if !sent && !regions.is_empty() {
                l.dirty.mark(regions.clone())?;
            }
        }
        local(&self.local)?;
        drop(order);
        Ok(seq)
    }

    /// Waits until every in-sync peer holds change `seq`.
    fn await_peers(&self, seq: u64) -> io::Result<()> {
        let started = Instant::now();
        let mut warned = false;
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(io::Error::other("this copy is no longer the primary"));
            }
            let links: Vec<Arc<Link>> = lock(&self.links).clone();
            let guard = lock(&self.progress);
            let missing = links
                .iter()
                .filter(|l| lock(&l.inner).state == PeerState::InSync && !l.holds(seq))
                .count();
            if missing == 0 {
                drop(guard);
                let settled = self.settled(seq);
                self.settled_mark.fetch_max(settled, Ordering::AcqRel);
                self.al.settle(settled);
                return Ok(());
            }
            if !warned && started.elapsed() > Duration::from_secs(2) {
                warned = true;
                tracing::warn!(volume = %self.volume, seq, missing, "writes held: an in-sync replica does not answer");
            }
            let _ = self
                .changed
                .wait_timeout(guard, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn change(
        &self,
        kind: OpKind,
        local: impl FnOnce(&FileMedium) -> io::Result<()>,
    ) -> io::Result<()> {
        let seq = self.stream(kind, local)?;
        self.complete(seq)
    }

    /// Waits for `seq` now, or, under deferred completion, owes it to the
    /// thread's next barrier.
    fn complete(&self, seq: u64) -> io::Result<()> {
        if scsi::completion_deferred() {
            OWED.with(|o| {
                let mut o = o.borrow_mut();
                let at = self as *const Self as usize;
                match o.iter_mut().find(|(m, _)| *m == at) {
                    Some((_, s)) => *s = (*s).max(seq),
                    None => o.push((at, seq)),
                }
            });
            return Ok(());
        }
        self.await_peers(seq)
    }

    /// One link's life: connect, say hello, read acknowledgements, resync.
    fn tend(self: Arc<Self>, link: Arc<Link>) {
        let mut backoff = RECONNECT_EVERY;
        while !link.stop.load(Ordering::Relaxed) && !self.closed.load(Ordering::Relaxed) {
            let (address, fenced) = {
                let st = lock(&link.inner);
                (st.address.clone(), st.fenced)
            };
            if fenced || lock(&link.inner).conn.is_some() {
                std::thread::sleep(RECONNECT_EVERY);
                continue;
            }
            match self.connect(&link, &address) {
                Ok(reader) => {
                    backoff = RECONNECT_EVERY;
                    let this = self.clone();
                    let l = link.clone();
                    let resync = std::thread::Builder::new()
                        .name(format!("resync-{}", link.host))
                        .spawn(move || this.resync(l));
                    if resync.is_err() {
                        tracing::error!("cannot start a resync thread");
                    }
                    self.read_acks(&link, reader);
                }
                Err(e) => {
                    tracing::debug!(peer = %link.host, %address, error = %e, "cannot reach replica");
                    std::thread::sleep(backoff);
                    // A peer that is down or refuses is retried ever more
                    // slowly, up to a few seconds: failover waits on it.
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn connect(&self, link: &Link, address: &str) -> io::Result<(TcpStream, u64)> {
        let addr: SocketAddr = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{address} resolves to nothing")))?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let (epoch, key) = {
            let c = lock(&self.config);
            (c.epoch, c.key.clone())
        };
        let mut hello = Vec::new();
        encode_hello(
            &Hello {
                volume: self.volume,
                epoch,
                key,
            },
            &mut hello,
        );
        write_frame(&mut stream, &hello)?;
        let body = read_frame(&mut stream)?;
        let welcome = match decode_reply(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            Reply::Welcome(w) => w,
            Reply::Refused { reason, message } => {
                if reason == RefusedReason::StaleEpoch {
                    tracing::warn!(volume = %self.volume, peer = %link.host, epoch, %message, "a replica knows a newer epoch: this primary is fenced");
                    lock(&link.inner).fenced = true;
                    self.notify();
                }
                return Err(io::Error::other(format!("refused: {message}")));
            }
            Reply::Ack { .. } => return Err(io::Error::other("acknowledgement before welcome")),
        };
        stream.set_read_timeout(None)?;
        let reader = stream.try_clone()?;
        // Under the order lock: no change slips between the regions the
        // peer may differ on being recorded and the stream starting.
        let mut order = lock(&self.order);
        let mut unsettled = welcome.unsettled.clone();
        if welcome.region_bytes != REGION_BYTES {
            return Err(io::Error::other("the replica uses another region size"));
        }
        unsettled.extend(self.al.unsettled());
        link.dirty.mark(unsettled.iter().copied())?;
        let size = self.local.size_bytes()?;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn {
            stream,
            pending: VecDeque::new(),
            id,
        };
        if welcome.size_bytes < size {
            let seq = order.take();
            let f = op_frame(seq, 0, OpKind::SetLen { len: size });
            write_frame(&mut conn.stream, &f)?;
            conn.pending.push_back((seq, 0..0));
        }
        let mut st = lock(&link.inner);
        st.conn = Some(conn);
        st.acked_through = 0;
        drop(st);
        drop(order);
        tracing::info!(volume = %self.volume, peer = %link.host, epoch, behind_regions = link.dirty.count(), "replica connected");
        self.notify();
        Ok((reader, id))
    }

    fn read_acks(&self, link: &Link, (mut reader, id): (TcpStream, u64)) {
        loop {
            let reply = read_frame(&mut reader).and_then(|b| {
                decode_reply(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            });
            let mut st = lock(&link.inner);
            if st.conn.as_ref().map(|c| c.id) != Some(id) {
                return;
            }
            match reply {
                Ok(Reply::Ack { seq }) => {
                    let conn = st.conn.as_mut().expect("checked above");
                    while conn.pending.front().is_some_and(|(s, _)| *s <= seq) {
                        conn.pending.pop_front();
                    }
                    st.acked_through = seq;
                }
                Ok(Reply::Refused { reason, message }) => {
                    if reason == RefusedReason::StaleEpoch {
                        tracing::warn!(volume = %self.volume, peer = %link.host, %message, "fenced by a replica");
                        st.fenced = true;
                    }
                    link.lose(&mut st, &message);
                }
                Ok(Reply::Welcome(_)) => link.lose(&mut st, "unexpected welcome"),
                Err(e) => link.lose(&mut st, &e.to_string()),
            }
            let gone = st.conn.is_none();
            drop(st);
            self.notify();
            if gone {
                return;
            }
        }
    }

    /// Sends the regions the peer misses, oldest region first, at the
    /// configured rate, then a flush; ends when the connection does.
    fn resync(&self, link: Arc<Link>) {
        let id = match lock(&link.inner).conn.as_ref() {
            Some(c) => c.id,
            None => return,
        };
        let mut buf = vec![0u8; REGION_BYTES as usize];
        let mut sent_since_flush = false;
        loop {
            if link.stop.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) {
                return;
            }
            let rate = lock(&self.config).resync_bytes_per_sec.max(1 << 20);
            let Some(region) = link.dirty.first() else {
                if sent_since_flush {
                    sent_since_flush = false;
                    if self.resync_send(&link, id, None, &mut buf).is_err() {
                        return;
                    }
                    tracing::info!(volume = %self.volume, peer = %link.host, bytes = link.resynced_bytes.load(Ordering::Relaxed), "resync pass done");
                }
                std::thread::sleep(Duration::from_millis(50));
                if lock(&link.inner).conn.as_ref().map(|c| c.id) != Some(id) {
                    return;
                }
                continue;
            };
            let started = Instant::now();
            match self.resync_send(&link, id, Some(region), &mut buf) {
                Ok(bytes) => {
                    sent_since_flush = true;
                    link.resynced_bytes.fetch_add(bytes, Ordering::Relaxed);
                    let budget = Duration::from_secs_f64(bytes as f64 / rate as f64);
                    if let Some(rest) = budget.checked_sub(started.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// One resync step under the order lock: the region as it is now (a
    /// hole stays a hole), or a flush when `region` is `None`.
    fn resync_send(
        &self,
        link: &Link,
        id: u64,
        region: Option<u64>,
        buf: &mut [u8],
    ) -> io::Result<u64> {
        let mut order = lock(&self.order);
        let mut st = lock(&link.inner);
        if st.conn.as_ref().map(|c| c.id) != Some(id) {
            return Err(io::Error::other("connection replaced"));
        }
        let size = self.local.size_bytes()?;
        let (kind, regions, bytes) = match region {
            None => (OpKind::Sync, 0..0, 0),
            Some(r) => {
                let offset = r * REGION_BYTES;
                link.dirty.clear(r);
                if offset >= size {
                    return Ok(0);
                }
                let len = REGION_BYTES.min(size - offset);
                let (mapped, end) = self.local.extent_at(offset, offset + len)?;
                if !mapped && end >= offset + len {
                    (OpKind::PunchHole { offset, len }, r..r + 1, 0)
                } else {
                    self.local.read_at(&mut buf[..len as usize], offset)?;
                    (
                        OpKind::Write {
                            offset,
                            data: buf[..len as usize].to_vec(),
                        },
                        r..r + 1,
                        len,
                    )
                }
            }
        };
        let seq = order.take();
        let frame = op_frame(seq, 0, kind);
        let conn = st.conn.as_mut().expect("checked above");
        if let Err(e) = write_frame(&mut conn.stream, &frame) {
            if let Some(r) = region {
                let _ = link.dirty.mark([r]);
            }
            link.lose(&mut st, &e.to_string());
            return Err(e);
        }
        conn.pending.push_back((seq, regions));
        st.resynced_through = seq;
        Ok(bytes)
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        self.close();
    }
}

impl Medium for Replicated {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.local.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(
            OpKind::Write {
                offset,
                data: buf.to_vec(),
            },
            |l| l.write_at(buf, offset),
        )
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(OpKind::PunchHole { offset, len }, |l| {
            l.punch_hole(offset, len)
        })
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(OpKind::ZeroRange { offset, len }, |l| {
            l.zero_range(offset, len)
        })
    }
    fn write_pattern(&self, pattern: &[u8], offset: u64, len: u64) -> io::Result<()> {
        if pattern.len() > api::replication::MAX_PATTERN {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.change(
            OpKind::Pattern {
                offset,
                len,
                pattern: pattern.to_vec(),
            },
            |l| l.write_pattern(pattern, offset, len),
        )
    }
    /// The flush is sent to the peers first and the local fdatasync runs
    /// outside the order lock: writes keep streaming while it runs.
    fn sync(&self) -> io::Result<()> {
        let seq = self.stream(OpKind::Sync, |_| Ok(()))?;
        self.local.sync()?;
        self.complete(seq)
    }
    /// Changes are acknowledged in order, so waiting for the newest one
    /// this thread owes completes them all.
    fn barrier(&self) -> io::Result<()> {
        let at = self as *const Self as usize;
        let owed = OWED.with(|o| {
            let mut o = o.borrow_mut();
            let i = o.iter().position(|(m, _)| *m == at)?;
            Some(o.swap_remove(i).1)
        });
        match owed {
            Some(seq) => self.await_peers(seq),
            None => Ok(()),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(OpKind::SetLen { len }, |l| l.set_len(len))
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.local.size_bytes()
    }
    fn extent_at(&self, offset: u64, end: u64) -> io::Result<(bool, u64)> {
        self.local.extent_at(offset, end)
    }
}

thread_local! {
    /// Per medium (by address), the newest change this thread made with
    /// completion deferred and has not yet waited for.
    static OWED: std::cell::RefCell<Vec<(usize, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_u64(path: &Path, v: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(v.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

// ---------------------------------------------------------------- replica

/// A volume this node holds as a replica.
pub struct ReplicaCopy {
    volume: VolumeId,
    local: FileMedium,
    dir: PathBuf,
    al: ActivityLog,
    /// The newest epoch this copy has seen; older primaries are refused.
    epoch: AtomicU64,
    key: Mutex<String>,
    /// The live connection's id: a newer one (or a retire) ends the older.
    current: AtomicU64,
    streams: Mutex<HashMap<u64, TcpStream>>,
}

impl ReplicaCopy {
    pub fn open(
        volume: VolumeId,
        data: &Path,
        dir: &Path,
        epoch: u64,
        key: &str,
    ) -> io::Result<Arc<ReplicaCopy>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(data)?;
        let seen = read_u64(&dir.join("epoch")).unwrap_or(0).max(epoch);
        write_u64(&dir.join("epoch"), seen)?;
        Ok(Arc::new(ReplicaCopy {
            volume,
            local: FileMedium(file),
            dir: dir.to_path_buf(),
            al: ActivityLog::open(&dir.join("activity.map"), u64::MAX)?,
            epoch: AtomicU64::new(seen),
            key: Mutex::new(key.to_string()),
            current: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
        }))
    }

    /// A new spec: a higher epoch ends connections from older primaries.
    pub fn configure(&self, epoch: u64, key: &str) -> io::Result<()> {
        *lock(&self.key) = key.to_string();
        self.adopt_epoch(epoch)
    }

    fn adopt_epoch(&self, epoch: u64) -> io::Result<()> {
        if epoch > self.epoch.load(Ordering::Acquire) {
            write_u64(&self.dir.join("epoch"), epoch)?;
            self.epoch.store(epoch, Ordering::Release);
            tracing::info!(volume = %self.volume, epoch, "replica epoch raised");
        }
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Ends every connection (the copy is deleted or becomes the primary).
    pub fn retire(&self) {
        self.current.store(u64::MAX, Ordering::Release);
        for (_, s) in lock(&self.streams).drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The volumes this node holds as replicas, by id.
#[derive(Default)]
pub struct ReplicaRegistry {
    copies: Mutex<HashMap<VolumeId, Arc<ReplicaCopy>>>,
    next_conn: AtomicU64,
}

impl ReplicaRegistry {
    pub fn insert(&self, copy: Arc<ReplicaCopy>) {
        lock(&self.copies).insert(copy.volume, copy);
    }

    pub fn get(&self, id: VolumeId) -> Option<Arc<ReplicaCopy>> {
        lock(&self.copies).get(&id).cloned()
    }

    pub fn remove(&self, id: VolumeId) {
        if let Some(c) = lock(&self.copies).remove(&id) {
            c.retire();
        }
    }

    /// Serves primaries on `listener` until the process ends, one thread
    /// per connection (a primary holds one per volume).
    pub fn serve(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let this = self.clone();
            let _ = std::thread::Builder::new()
                .name("replica-conn".into())
                .spawn(move || {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = this.connection(stream) {
                        tracing::debug!(?peer, error = %e, "replication connection ended");
                    }
                });
        }
    }

    fn refuse(stream: &mut TcpStream, reason: RefusedReason, message: String) -> io::Result<()> {
        tracing::warn!(?reason, %message, "refusing a primary");
        let mut out = Vec::new();
        encode_reply(&Reply::Refused { reason, message }, &mut out);
        write_frame(stream, &out)
    }

    fn connection(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let body = read_frame(&mut stream)?;
        let hello = match decode_request(&body) {
            Ok(Request::Hello(h)) => h,
            Ok(Request::Op(_)) => {
                return Self::refuse(
                    &mut stream,
                    RefusedReason::Malformed,
                    "hello expected".into(),
                )
            }
            Err(e) => return Self::refuse(&mut stream, RefusedReason::Malformed, e.to_string()),
        };
        let Some(copy) = self.get(hello.volume) else {
            return Self::refuse(
                &mut stream,
                RefusedReason::UnknownVolume,
                format!("volume {} is not a replica here", hello.volume),
            );
        };
        if !keys_equal(&hello.key, &lock(&copy.key)) {
            return Self::refuse(
                &mut stream,
                RefusedReason::BadKey,
                "wrong replication key".into(),
            );
        }
        if hello.epoch < copy.epoch() {
            return Self::refuse(
                &mut stream,
                RefusedReason::StaleEpoch,
                format!("epoch {} is older than {}", hello.epoch, copy.epoch()),
            );
        }
        // Only the stack manager issues epochs: a primary of a newer one is
        // legitimate, and from now on every older primary is refused.
        copy.adopt_epoch(hello.epoch)?;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        copy.current.store(id, Ordering::Release);
        lock(&copy.streams).insert(id, stream.try_clone()?);
        let result = self.stream(&copy, &mut stream, hello.epoch, id);
        lock(&copy.streams).remove(&id);
        result
    }

    fn stream(
        &self,
        copy: &ReplicaCopy,
        stream: &mut TcpStream,
        epoch: u64,
        id: u64,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        encode_reply(
            &Reply::Welcome(Welcome {
                size_bytes: copy.local.size_bytes()?,
                unsettled: copy.al.unsettled(),
                region_bytes: REGION_BYTES,
            }),
            &mut out,
        );
        write_frame(stream, &out)?;
        stream.set_read_timeout(None)?;
        // Buffered: a burst of changes costs a few reads, and one
        // acknowledgement (of the last) once the burst is applied.
        let mut rx = io::BufReader::with_capacity(1 << 20, stream.try_clone()?);
        let mut unacked = 0u32;
        let mut first = true;
        loop {
            let body = read_frame(&mut rx)?;
            let op = match decode_request(&body) {
                Ok(Request::Op(op)) => op,
                Ok(Request::Hello(_)) => {
                    return Self::refuse(stream, RefusedReason::Malformed, "second hello".into())
                }
                Err(e) => return Self::refuse(stream, RefusedReason::Malformed, e.to_string()),
            };
            if copy.current.load(Ordering::Acquire) != id || copy.epoch() > epoch {
                return Self::refuse(
                    stream,
                    RefusedReason::StaleEpoch,
                    format!("epoch {epoch} is older than {}", copy.epoch()),
                );
            }
            if first {
                // The primary recorded our unsettled regions before it sent
                // anything: they are its to resend now.
                first = false;
                copy.al.reset();
            }
            let regions = op_regions(&op.kind);
            if !regions.is_empty() {
                copy.al.mark(regions, op.seq)?;
            }
            if let Err(e) = apply(&copy.local, &op.kind) {
                tracing::error!(volume = %copy.volume, error = %e, "cannot apply a replicated change");
                return Self::refuse(stream, RefusedReason::Io, e.to_string());
            }
            if op.settled > 0 {
                copy.al.settle(op.settled);
            }
            unacked += 1;
            if rx.buffer().is_empty() || unacked >= 256 {
                unacked = 0;
                out.clear();
                encode_reply(&Reply::Ack { seq: op.seq }, &mut out);
                write_frame(stream, &out)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(keys_equal("abc", "abc"));
        assert!(!keys_equal("abc", "abd"));
        assert!(!keys_equal("abc", "abcd"));
    }
}
