//! One TCP connection, on its own thread: the login phase, then the full
//! feature phase loop that reads everything the socket has, handles every
//! complete PDU, and flushes the batched responses in one write.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::login::{Login, LoginEnv, LoginResult, LoginStatus, SessionType};
use crate::negotiation::TargetLimits;
use crate::pdu::Bhs;
use crate::server::Shared;
use crate::session::{Flow, Session, SessionSetup};
use crate::wire::{Digests, Out, Reader};
use crate::{Error, Nexus};

/// Responses are flushed early once this much is queued, bounding memory
/// when an initiator queues many large reads.
const FLUSH_THRESHOLD: usize = 4 << 20;
/// Login text PDUs are small; this bounds them before negotiation.
const LOGIN_MAX_DATA: u32 = 65536;

fn flush(stream: &mut TcpStream, out: &mut Out) -> io::Result<()> {
    if !out.buf.is_empty() {
        stream.write_all(&out.buf)?;
        out.buf.clear();
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Serves a connection until it ends. Errors are logged, never returned:
/// a broken connection only ever affects itself.
pub(crate) fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let peer = stream.peer_addr().ok();
    match run(&mut stream, &shared) {
        Ok(()) => tracing::debug!(?peer, "connection closed"),
        Err(Error::Closed) | Err(Error::Fenced) => tracing::debug!(?peer, "connection ended"),
        Err(e) => tracing::info!(?peer, "connection dropped: {e}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn run(stream: &mut TcpStream, shared: &Arc<Shared>) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let cfg = &shared.config;
    let mut reader = Reader::new(cfg.max_recv_data_segment_length.max(8192) as usize * 2 + 4096);
    let mut out = Out::new();

    let result = login(stream, shared, &mut reader, &mut out)?;
    let Some(result) = result else { return Ok(()) };

    let portal = match cfg.portal {
        Some(p) => p,
        None => local,
    };
    let nexus = Nexus {
        initiator_name: result.initiator_name.clone(),
        isid: result.isid,
        target_name: result.target_name.clone(),
        tpgt: cfg.tpgt,
    };
    let fenced = Arc::new(AtomicBool::new(false));
    let setup = SessionSetup {
        kind: result.session_type,
        nexus: nexus.clone(),
        target: result.target.clone(),
        registry: shared.registry.clone(),
        params: result.params,
        queue_depth: cfg.queue_depth,
        portal,
        cid: result.cid,
        exp_cmdsn: result.exp_cmdsn,
        statsn: result.statsn,
        fenced: fenced.clone(),
    };
    out.digests = Digests {
        header: result.params.header_digest,
        data: result.params.data_digest,
    };

    match (&result.session_type, &result.target) {
        (SessionType::Normal, Some(target)) => {
            let target = target.clone();
            let registration = shared.register(&result, nexus.clone(), stream, fenced)?;
            target.session_opened(&nexus);
            let r = full_feature(stream, shared, &mut reader, &mut out, setup);
            target.session_closed(&nexus);
            drop(registration);
            r
        }
        _ => full_feature(stream, shared, &mut reader, &mut out, setup),
    }
}

/// Runs the login phase; `None` means the login was refused (the response
/// has been sent).
fn login(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    reader: &mut Reader,
    out: &mut Out,
) -> Result<Option<LoginResult>, Error> {
    let cfg = &shared.config;
    let deadline = Instant::now() + cfg.login_timeout;
    let sessions = shared.clone();
    let env = LoginEnv {
        registry: shared.registry.clone(),
        limits: TargetLimits {
            max_recv_data_segment_length: cfg.max_recv_data_segment_length,
            first_burst_length: cfg.first_burst_length,
            max_burst_length: cfg.max_burst_length,
            max_outstanding_r2t: cfg.max_outstanding_r2t,
        },
        tpgt: cfg.tpgt,
        queue_depth: cfg.queue_depth,
        new_tsih: shared.allocate_tsih(),
        session_exists: Box::new(move |tsih, initiator, isid| {
            sessions.session_exists(tsih, initiator, isid)
        }),
    };
    let mut machine = Login::new(env);
    loop {
        let frame = loop {
            if let Some(f) = reader.next_frame(Digests::default(), LOGIN_MAX_DATA)? {
                break f;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            stream.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
            match reader.fill(stream) {
                Ok(0) => return Err(Error::Closed),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        let req = match frame.bhs {
            Ok(Bhs::LoginRequest(r)) => r,
            _ => return Err(Error::Protocol("non-login PDU during login")),
        };
        let reply = machine.handle(&req, reader.slice(frame.data.clone()));
        out.pdu(&Bhs::LoginResponse(reply.response), &[&reply.data]);
        match reply.status {
            LoginStatus::Continue => flush(stream, out)?,
            LoginStatus::Failed => {
                flush(stream, out)?;
                return Ok(None);
            }
            // The final response stays queued until the session is
            // registered (and any session it reinstates is gone), so the
            // initiator never sees both sessions live.
            LoginStatus::Complete(r) => return Ok(Some(*r)),
        }
    }
}

fn full_feature(
    stream: &mut TcpStream,
    shared: &Arc<Shared>,
    reader: &mut Reader,
    out: &mut Out,
    setup: SessionSetup,
) -> Result<(), Error> {
    let cfg = &shared.config;
    let digests = out.digests;
    let mut session = Session::new(setup);
    let max_data = session.max_recv();
    let interval = cfg.nop_in_interval;
    let pinging = !interval.is_zero();
    let tick = if pinging {
        interval
            .min(cfg.nop_in_timeout)
            .max(Duration::from_millis(50))
    } else {
        Duration::from_secs(1)
    };
    stream.set_read_timeout(Some(tick))?;
    let mut last_rx = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        while let Some(frame) = reader.next_frame(digests, max_data)? {
            let flow = session.handle(
                &frame,
                reader.slice(frame.ahs.clone()),
                reader.slice(frame.data.clone()),
                out,
            )?;
            if flow == Flow::Close {
                session.barrier()?;
                flush(stream, out)?;
                return Ok(());
            }
            if out.buf.len() >= FLUSH_THRESHOLD {
                session.barrier()?;
                flush(stream, out)?;
            }
        }
        session.barrier()?;
        flush(stream, out)?;
        if shared.is_shutting_down() {
            return Err(Error::Fenced);
        }
        match reader.fill(stream) {
            Ok(0) => return Err(Error::Closed),
            Ok(_) => {
                last_rx = Instant::now();
                ping_sent = None;
            }
            Err(e) if is_timeout(&e) => {
                if !pinging {
                    continue;
                }
                match ping_sent {
                    Some(t) if t.elapsed() >= cfg.nop_in_timeout => return Err(Error::Timeout),
                    Some(_) => {}
                    None if last_rx.elapsed() >= interval => {
                        session.ping(out);
                        ping_sent = Some(Instant::now());
                    }
                    None => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
