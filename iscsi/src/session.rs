//! Full feature phase of one session (one connection: MaxConnections=1,
//! ErrorRecoveryLevel=0). Handles each received PDU and appends responses to
//! an output buffer; it never touches the socket, so it can be driven by
//! tests and fuzzers directly.
//!
//! Commands are delivered to the SCSI layer in CmdSN order. A write whose
//! data is still arriving does not hold back later commands (SIMPLE task
//! attribute semantics); its R2Ts go out at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::login::SessionType;
use crate::negotiation::{OperationalParams, NOT_UNDERSTOOD};
use crate::pdu::{
    self, decode_lun, reject, Bhs, DataIn, DataOut, LogoutRequest, LogoutResponse, NopIn, NopOut,
    R2t, Reject, Residual, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse,
    TextRequest, TextResponse, RESERVED_TAG,
};
use crate::sendtargets;
use crate::text;
use crate::wire::{Frame, Out};
use crate::{Error, Nexus, Registry, ScsiOutcome, Target, TmFunction, TmResponse};

/// What the connection should do after a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Flush what is queued and close the connection (logout, cold reset).
    Close,
}

/// Static facts a session needs besides its negotiated parameters.
#[derive(Clone)]
pub struct SessionSetup {
    pub kind: SessionType,
    pub nexus: Nexus,
    pub target: Option<Arc<dyn Target>>,
    pub registry: Arc<dyn Registry>,
    pub params: OperationalParams,
    pub queue_depth: u32,
    /// Portal advertised by SendTargets.
    pub portal: SocketAddr,
    pub cid: u16,
    pub exp_cmdsn: u32,
    pub statsn: u32,
    /// Set by the server to fence the session: no command runs after it.
    pub fenced: Arc<AtomicBool>,
}

/// A non-immediate PDU that arrived ahead of its CmdSN, or a hole left by a
/// command that was aborted before it arrived.
enum Queued {
    Pdu {
        bhs: Bhs,
        ahs: Vec<u8>,
        data: Vec<u8>,
    },
    Hole,
}

struct OutstandingR2t {
    ttt: u32,
    end: u32,
    next_datasn: u32,
}

/// A write waiting for Data-Out.
struct WriteTask {
    cmd: ScsiCommand,
    cdb: Vec<u8>,
    buf: Vec<u8>,
    /// Offset where the unsolicited part (immediate + unsolicited Data-Out)
    /// ends.
    unsolicited_end: u32,
    unsolicited_open: bool,
    unsolicited_datasn: u32,
    r2ts: VecDeque<OutstandingR2t>,
    next_r2t_offset: u32,
    next_r2tsn: u32,
}

/// A text response too long for one PDU, handed out piece by piece.
struct TextReply {
    ttt: u32,
    data: Vec<u8>,
    sent: usize,
}

/// Writes bigger than this are not preallocated; the buffer grows with the
/// data actually received so a bogus EDTL costs nothing.
const PREALLOC_LIMIT: usize = 256 << 10;

fn good(status: u8) -> bool {
    matches!(status, 0x00 | 0x04 | 0x10 | 0x14)
}

/// Residual of a command (RFC 7143 §11.4.5): writes compare EDTL with what
/// the CDB asks for; reads compare it with what was produced.
pub fn residual(
    cmd: &ScsiCommand,
    transfer_length: Option<u32>,
    produced: usize,
    sent: u32,
) -> Residual {
    let edtl = cmd.edtl as u64;
    let wanted = if cmd.write {
        match transfer_length {
            Some(t) => t as u64,
            None => return Residual::default(),
        }
    } else if (sent as u64) < edtl {
        sent as u64
    } else {
        (transfer_length.unwrap_or(0) as u64)
            .max(produced as u64)
            .max(sent as u64)
    };
    if wanted > edtl {
        Residual {
            overflow: true,
            underflow: false,
            count: (wanted - edtl).min(u32::MAX as u64) as u32,
        }
    } else if wanted < edtl {
        Residual {
            overflow: false,
            underflow: true,
            count: (edtl - wanted) as u32,
        }
    } else {
        Residual::default()
    }
}

pub struct Session {
    setup: SessionSetup,
    params: OperationalParams,
    exp_cmdsn: u32,
    max_cmdsn: u32,
    statsn: u32,
    pending: HashMap<u32, Queued>,
    writes: HashMap<u32, WriteTask>,
    next_ttt: u32,
    text_out: Option<TextReply>,
    text_in: Option<(u32, Vec<u8>)>,
    ping_ttt: Option<u32>,
}

impl Session {
    pub fn new(setup: SessionSetup) -> Self {
        let depth = setup.queue_depth.max(1);
        Session {
            params: setup.params,
            exp_cmdsn: setup.exp_cmdsn,
            max_cmdsn: setup.exp_cmdsn.wrapping_add(depth - 1),
            statsn: setup.statsn,
            pending: HashMap::new(),
            writes: HashMap::new(),
            next_ttt: 1,
            text_out: None,
            text_in: None,
            ping_ttt: None,
            setup,
        }
    }

    pub fn params(&self) -> &OperationalParams {
        &self.params
    }

    pub fn exp_cmdsn(&self) -> u32 {
        self.exp_cmdsn
    }

    /// Largest data segment this side accepts.
    pub fn max_recv(&self) -> u32 {
        self.params.target_max_recv_dsl.max(8192)
    }

    fn writes_limit(&self) -> usize {
        self.setup.queue_depth.max(1) as usize * 2 + 16
    }

    /// ExpCmdSN and MaxCmdSN for the next response. The window shrinks by
    /// the writes still waiting for data, which bounds memory, but MaxCmdSN
    /// never moves backwards (initiators ignore that).
    fn window(&mut self) -> (u32, u32) {
        let depth = self.setup.queue_depth.max(1);
        let busy = (self.writes.len() as u32).min(depth - 1);
        let candidate = self.exp_cmdsn.wrapping_add(depth - 1 - busy);
        if (candidate.wrapping_sub(self.max_cmdsn) as i32) > 0 {
            self.max_cmdsn = candidate;
        }
        (self.exp_cmdsn, self.max_cmdsn)
    }

    fn take_statsn(&mut self) -> u32 {
        let s = self.statsn;
        self.statsn = self.statsn.wrapping_add(1);
        s
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn reject(&mut self, reason: u8, raw: &[u8; pdu::BHS_LEN], out: &mut Out) {
        let (exp, max) = self.window();
        let statsn = self.take_statsn();
        let r = Reject {
            reason,
            statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
            datasn_r2tsn: 0,
        };
        out.pdu(&Bhs::Reject(r), &[raw]);
    }

    /// Completes the commands executed since the last flush before their
    /// responses leave (see [`crate::Target::barrier`]).
    pub fn barrier(&self) -> Result<(), Error> {
        match &self.setup.target {
            Some(t) => t.barrier().map_err(|e| {
                tracing::warn!(error = %e, "commands could not complete: dropping the connection");
                Error::Fenced
            }),
            None => Ok(()),
        }
    }

    /// Sends a keepalive NOP-In that the initiator must answer.
    pub fn ping(&mut self, out: &mut Out) {
        let ttt = self.new_ttt();
        self.ping_ttt = Some(ttt);
        let (exp, max) = self.window();
        let n = NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            statsn: self.statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
        };
        out.pdu(&Bhs::NopIn(n), &[]);
    }

    /// Handles one received PDU. An `Err` means the connection must be
    /// dropped (ERL 0 recovery for digest, sequence and framing errors).
    pub fn handle(
        &mut self,
        frame: &Frame,
        ahs: &[u8],
        data: &[u8],
        out: &mut Out,
    ) -> Result<Flow, Error> {
        let bhs = match &frame.bhs {
            Ok(b) => *b,
            Err(pdu::PduError::UnknownOpcode(_)) => {
                self.reject(reject::COMMAND_NOT_SUPPORTED, &frame.raw, out);
                return Ok(Flow::Continue);
            }
            Err(e) => return Err(e.clone().into()),
        };
        tracing::trace!(?bhs, len = data.len(), "received");
        match bhs {
            Bhs::DataOut(d) => self.data_out(&d, data, out),
            Bhs::SnackRequest(_) => {
                // ERL 0: there is nothing to retransmit from.
                self.reject(reject::PROTOCOL_ERROR, &frame.raw, out);
                Ok(Flow::Continue)
            }
            Bhs::NopOut(n) if n.itt == RESERVED_TAG => {
                if Some(n.ttt) == self.ping_ttt {
                    self.ping_ttt = None;
                }
                Ok(Flow::Continue)
            }
            Bhs::NopOut(NopOut {
                immediate, cmdsn, ..
            })
            | Bhs::ScsiCommand(ScsiCommand {
                immediate, cmdsn, ..
            })
            | Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate, cmdsn, ..
            })
            | Bhs::TextRequest(TextRequest {
                immediate, cmdsn, ..
            })
            | Bhs::LogoutRequest(LogoutRequest {
                immediate, cmdsn, ..
            }) => self.ordered(bhs, immediate, cmdsn, &frame.raw, ahs, data, out),
            _ => {
                self.reject(reject::PROTOCOL_ERROR, &frame.raw, out);
                Ok(Flow::Continue)
            }
        }
    }

    /// CmdSN ordering (RFC 7143 §4.2.2.1): immediate PDUs go at once,
    /// in-window ones in CmdSN order, out-of-window ones are dropped
    /// silently.
    #[allow(clippy::too_many_arguments)]
    fn ordered(
        &mut self,
        bhs: Bhs,
        immediate: bool,
        cmdsn: u32,
        raw: &[u8; pdu::BHS_LEN],
        ahs: &[u8],
        data: &[u8],
        out: &mut Out,
    ) -> Result<Flow, Error> {
        if immediate {
            return self.dispatch(bhs, raw, ahs, data, out);
        }
        let (exp, max) = self.window();
        let offset = cmdsn.wrapping_sub(exp);
        let window = max.wrapping_sub(exp).wrapping_add(1);
        if offset >= window {
            tracing::trace!(cmdsn, exp, max, "CmdSN outside the window; dropped");
            return Ok(Flow::Continue);
        }
        if offset != 0 {
            self.pending.entry(cmdsn).or_insert_with(|| Queued::Pdu {
                bhs,
                ahs: ahs.to_vec(),
                data: data.to_vec(),
            });
            return Ok(Flow::Continue);
        }
        self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
        if self.dispatch(bhs, raw, ahs, data, out)? == Flow::Close {
            return Ok(Flow::Close);
        }
        while let Some(q) = self.pending.remove(&self.exp_cmdsn) {
            self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
            if let Queued::Pdu { bhs, ahs, data } = q {
                let mut raw = [0u8; pdu::BHS_LEN];
                bhs.write(ahs.len(), data.len() as u32, &mut raw);
                if self.dispatch(bhs, &raw, &ahs, &data, out)? == Flow::Close {
                    return Ok(Flow::Close);
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn dispatch(
        &mut self,
        bhs: Bhs,
        raw: &[u8; pdu::BHS_LEN],
        ahs: &[u8],
        data: &[u8],
        out: &mut Out,
    ) -> Result<Flow, Error> {
        let discovery = self.setup.kind == SessionType::Discovery;
        match bhs {
            Bhs::ScsiCommand(c) if !discovery => self.scsi_command(&c, raw, ahs, data, out),
            Bhs::TaskMgmtRequest(t) if !discovery => self.task_management(&t, out),
            Bhs::TextRequest(t) => Ok(self.text(&t, raw, data, out)),
            Bhs::LogoutRequest(l) => Ok(self.logout(&l, raw, out)),
            Bhs::NopOut(n) => {
                let (exp, max) = self.window();
                let statsn = self.take_statsn();
                let len = data.len().min(self.params.initiator_max_recv_dsl as usize);
                let r = NopIn {
                    lun: n.lun,
                    itt: n.itt,
                    ttt: RESERVED_TAG,
                    statsn,
                    exp_cmdsn: exp,
                    max_cmdsn: max,
                };
                out.pdu(&Bhs::NopIn(r), &[&data[..len]]);
                Ok(Flow::Continue)
            }
            _ => {
                self.reject(reject::PROTOCOL_ERROR, raw, out);
                Ok(Flow::Continue)
            }
        }
    }

    fn scsi_command(
        &mut self,
        cmd: &ScsiCommand,
        raw: &[u8; pdu::BHS_LEN],
        ahs: &[u8],
        data: &[u8],
        out: &mut Out,
    ) -> Result<Flow, Error> {
        let ahs = match pdu::parse_ahs(ahs) {
            Ok(a) => a,
            Err(_) => {
                self.reject(reject::INVALID_PDU_FIELD, raw, out);
                return Ok(Flow::Continue);
            }
        };
        let long_cdb;
        let cdb: &[u8] = match ahs.extended_cdb {
            Some(ext) => {
                long_cdb = [&cmd.cdb[..], ext].concat();
                &long_cdb
            }
            None => &cmd.cdb,
        };
        let immediate_ok = self.params.immediate_data && cmd.write;
        if !data.is_empty()
            && (!immediate_ok
                || data.len() as u64 > cmd.edtl as u64
                || data.len() as u32 > self.params.first_burst_length)
        {
            self.reject(reject::PROTOCOL_ERROR, raw, out);
            return Ok(Flow::Continue);
        }
        if !cmd.write || data.len() as u32 == cmd.edtl {
            self.execute(cmd, cdb, data, out)?;
            return Ok(Flow::Continue);
        }
        if self.writes.contains_key(&cmd.itt) {
            self.reject(reject::TASK_IN_PROGRESS, raw, out);
            return Ok(Flow::Continue);
        }
        if self.writes.len() >= self.writes_limit() {
            return Err(Error::Protocol("too many writes waiting for data"));
        }
        let unsolicited_end = if self.params.initial_r2t {
            data.len() as u32
        } else {
            self.params
                .first_burst_length
                .min(cmd.edtl)
                .max(data.len() as u32)
        };
        let mut buf = Vec::with_capacity((cmd.edtl as usize).min(PREALLOC_LIMIT));
        buf.extend_from_slice(data);
        let mut task = WriteTask {
            cmd: *cmd,
            cdb: cdb.to_vec(),
            buf,
            unsolicited_end,
            unsolicited_open: unsolicited_end > data.len() as u32,
            unsolicited_datasn: 0,
            r2ts: VecDeque::new(),
            next_r2t_offset: unsolicited_end,
            next_r2tsn: 0,
        };
        if !task.unsolicited_open {
            self.issue_r2ts(&mut task, out);
        }
        self.writes.insert(cmd.itt, task);
        Ok(Flow::Continue)
    }

    fn issue_r2ts(&mut self, task: &mut WriteTask, out: &mut Out) {
        let max_out = self.params.max_outstanding_r2t.max(1) as usize;
        let burst = self.params.max_burst_length.max(512);
        while task.r2ts.len() < max_out && task.next_r2t_offset < task.cmd.edtl {
            let len = burst.min(task.cmd.edtl - task.next_r2t_offset);
            let ttt = self.new_ttt();
            let (exp, max) = self.window();
            let r = R2t {
                lun: task.cmd.lun,
                itt: task.cmd.itt,
                ttt,
                statsn: self.statsn,
                exp_cmdsn: exp,
                max_cmdsn: max,
                r2tsn: task.next_r2tsn,
                buffer_offset: task.next_r2t_offset,
                desired_length: len,
            };
            out.pdu(&Bhs::R2t(r), &[]);
            task.next_r2tsn = task.next_r2tsn.wrapping_add(1);
            task.next_r2t_offset += len;
            task.r2ts.push_back(OutstandingR2t {
                ttt,
                end: task.next_r2t_offset,
                next_datasn: 0,
            });
        }
    }

    fn data_out(&mut self, d: &DataOut, data: &[u8], out: &mut Out) -> Result<Flow, Error> {
        let Some(mut task) = self.writes.remove(&d.itt) else {
            // Data for an aborted (or finished) task is discarded.
            tracing::trace!(itt = d.itt, "Data-Out for no task");
            return Ok(Flow::Continue);
        };
        let offset = task.buf.len() as u64;
        let end = offset + data.len() as u64;
        // ERL 0 has no within-command recovery: a sequence error ends the
        // task with CHECK CONDITION and later Data-Out for it is discarded.
        // Dropping the connection instead would make initiators reconnect
        // and replay, hiding the error.
        if d.buffer_offset as u64 != offset {
            return self.fail_task(&task.cmd, (0x4b, 0x05), "Data-Out offset out of order", out);
        }
        if d.ttt == RESERVED_TAG {
            if !task.unsolicited_open || d.datasn != task.unsolicited_datasn {
                return self.fail_task(&task.cmd, (0x4b, 0x00), "bad unsolicited DataSN", out);
            }
            if end > task.unsolicited_end as u64 {
                return self.fail_task(
                    &task.cmd,
                    (0x4b, 0x02),
                    "unsolicited data beyond FirstBurstLength",
                    out,
                );
            }
            task.buf.extend_from_slice(data);
            task.unsolicited_datasn = task.unsolicited_datasn.wrapping_add(1);
            if d.final_ || task.buf.len() as u32 == task.unsolicited_end {
                task.unsolicited_open = false;
                // An initiator that ends its burst early gets R2Ts for the
                // rest rather than a stalled command.
                task.next_r2t_offset = task.buf.len() as u32;
                self.issue_r2ts(&mut task, out);
            }
        } else {
            let Some(r) = task.r2ts.front_mut() else {
                return self.fail_task(&task.cmd, (0x4b, 0x01), "Data-Out without an R2T", out);
            };
            if r.ttt != d.ttt {
                return self.fail_task(&task.cmd, (0x4b, 0x01), "Data-Out with a wrong TTT", out);
            }
            if d.datasn != r.next_datasn {
                return self.fail_task(&task.cmd, (0x4b, 0x00), "bad solicited DataSN", out);
            }
            if end > r.end as u64 {
                return self.fail_task(&task.cmd, (0x4b, 0x02), "data beyond the R2T", out);
            }
            r.next_datasn = r.next_datasn.wrapping_add(1);
            let done = end == r.end as u64;
            if d.final_ && !done {
                return self.fail_task(
                    &task.cmd,
                    (0x4b, 0x00),
                    "F bit before the end of the R2T",
                    out,
                );
            }
            task.buf.extend_from_slice(data);
            if done {
                task.r2ts.pop_front();
                self.issue_r2ts(&mut task, out);
            }
        }
        if task.buf.len() as u64 == task.cmd.edtl as u64 {
            let cdb = std::mem::take(&mut task.cdb);
            self.execute(&task.cmd, &cdb, &task.buf, out)?;
        } else {
            self.writes.insert(d.itt, task);
        }
        Ok(Flow::Continue)
    }

    /// Ends a write with CHECK CONDITION / ABORTED COMMAND and the given
    /// additional sense code.
    fn fail_task(
        &mut self,
        cmd: &ScsiCommand,
        asc: (u8, u8),
        why: &str,
        out: &mut Out,
    ) -> Result<Flow, Error> {
        tracing::debug!(itt = cmd.itt, "write aborted: {why}");
        let mut sense = vec![0u8; 18];
        sense[0] = 0x70;
        sense[2] = 0x0b;
        sense[7] = 10;
        sense[12] = asc.0;
        sense[13] = asc.1;
        let res = ScsiOutcome {
            status: 0x02,
            sense,
            data: Vec::new(),
        };
        self.respond(cmd, None, &res, out);
        Ok(Flow::Continue)
    }

    fn execute(
        &mut self,
        cmd: &ScsiCommand,
        cdb: &[u8],
        data_out: &[u8],
        out: &mut Out,
    ) -> Result<(), Error> {
        if self.setup.fenced.load(Ordering::Acquire) {
            return Err(Error::Fenced);
        }
        let Some(target) = self.setup.target.clone() else {
            return Err(Error::Protocol("SCSI command without a target"));
        };
        let lun = decode_lun(cmd.lun);
        let tl = target.transfer_length(lun, cdb);
        let res = target.execute(&self.setup.nexus, lun, cdb, data_out, cmd.edtl);
        self.respond(cmd, tl, &res, out);
        Ok(())
    }

    /// Sends Data-In (split at the initiator's MaxRecvDataSegmentLength,
    /// sequences at MaxBurstLength) and the status, collapsed into the last
    /// Data-In when there is no sense data.
    fn respond(&mut self, cmd: &ScsiCommand, tl: Option<u32>, res: &ScsiOutcome, out: &mut Out) {
        let sent = if cmd.read {
            res.data.len().min(cmd.edtl as usize)
        } else {
            0
        };
        let resid = residual(cmd, tl, res.data.len(), sent as u32);
        let collapse = good(res.status) && res.sense.is_empty();
        let seg = self.params.initiator_max_recv_dsl.max(512) as usize;
        let burst = self.params.max_burst_length.max(512) as usize;
        let mut datasn = 0u32;
        let mut off = 0usize;
        let mut burst_left = burst;
        while off < sent {
            let n = seg.min(sent - off).min(burst_left);
            let last = off + n == sent;
            burst_left -= n;
            let end_of_burst = burst_left == 0;
            if end_of_burst {
                burst_left = burst;
            }
            let with_status = last && collapse;
            let (exp, max) = self.window();
            let statsn = if with_status { self.take_statsn() } else { 0 };
            let d = DataIn {
                final_: last || end_of_burst,
                ack: false,
                status_present: with_status,
                residual: if with_status {
                    resid
                } else {
                    Residual::default()
                },
                status: res.status,
                lun: cmd.lun,
                itt: cmd.itt,
                ttt: RESERVED_TAG,
                statsn,
                exp_cmdsn: exp,
                max_cmdsn: max,
                datasn,
                buffer_offset: off as u32,
            };
            out.pdu(&Bhs::DataIn(d), &[&res.data[off..off + n]]);
            datasn = datasn.wrapping_add(1);
            off += n;
            if with_status {
                return;
            }
        }
        let (exp, max) = self.window();
        let statsn = self.take_statsn();
        let r = ScsiResponse {
            residual: resid,
            bidi_residual: Residual::default(),
            response: 0,
            status: res.status,
            itt: cmd.itt,
            snack_tag: 0,
            statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
            exp_datasn: datasn,
        };
        if res.sense.is_empty() {
            out.pdu(&Bhs::ScsiResponse(r), &[]);
        } else {
            let sense = &res.sense[..res.sense.len().min(u16::MAX as usize)];
            out.pdu(
                &Bhs::ScsiResponse(r),
                &[&(sense.len() as u16).to_be_bytes(), sense],
            );
        }
    }

    /// Drops every task of this session that `matches` (a waiting write or
    /// a queued command). Queued commands leave holes so the CmdSN window
    /// still advances past them.
    fn abort_where(&mut self, matches: impl Fn(&ScsiCommand) -> bool) {
        self.writes.retain(|_, w| !matches(&w.cmd));
        for q in self.pending.values_mut() {
            if let Queued::Pdu {
                bhs: Bhs::ScsiCommand(c),
                ..
            } = q
            {
                if matches(c) {
                    *q = Queued::Hole;
                }
            }
        }
    }

    fn abort_task(&mut self, t: &TaskMgmtRequest) -> TmResponse {
        if self.writes.remove(&t.rtt).is_some() {
            return TmResponse::Complete;
        }
        let queued = self.pending.iter().find_map(|(sn, q)| match q {
            Queued::Pdu {
                bhs: Bhs::ScsiCommand(c),
                ..
            } if c.itt == t.rtt => Some(*sn),
            _ => None,
        });
        if let Some(sn) = queued {
            self.pending.insert(sn, Queued::Hole);
            return TmResponse::Complete;
        }
        // RFC 7143 §11.5.1 b/c: a RefCmdSN inside the window and below the
        // TMF's own CmdSN names a command still in flight; it is considered
        // received (and aborted). Anything else does not exist.
        let (exp, max) = self.window();
        let off = t.ref_cmdsn.wrapping_sub(exp);
        let window = max.wrapping_sub(exp).wrapping_add(1);
        if off < window && off < t.cmdsn.wrapping_sub(exp) {
            self.pending.entry(t.ref_cmdsn).or_insert(Queued::Hole);
            return TmResponse::Complete;
        }
        TmResponse::TaskDoesNotExist
    }

    fn task_management(&mut self, t: &TaskMgmtRequest, out: &mut Out) -> Result<Flow, Error> {
        let function = match t.function {
            1 => Some(TmFunction::AbortTask),
            2 => Some(TmFunction::AbortTaskSet),
            3 => Some(TmFunction::ClearAca),
            4 => Some(TmFunction::ClearTaskSet),
            5 => Some(TmFunction::LogicalUnitReset),
            6 => Some(TmFunction::TargetWarmReset),
            7 => Some(TmFunction::TargetColdReset),
            8 => Some(TmFunction::TaskReassign),
            _ => None,
        };
        let lun = decode_lun(t.lun);
        let mut flow = Flow::Continue;
        let response = match function {
            None => TmResponse::Rejected,
            Some(TmFunction::AbortTask) => self.abort_task(t),
            Some(TmFunction::AbortTaskSet) => {
                self.abort_where(|c| c.lun == t.lun);
                TmResponse::Complete
            }
            Some(TmFunction::TaskReassign) => TmResponse::ReassignmentNotSupported,
            Some(f) => {
                if self.setup.fenced.load(Ordering::Acquire) {
                    return Err(Error::Fenced);
                }
                match f {
                    TmFunction::ClearTaskSet | TmFunction::LogicalUnitReset => {
                        self.abort_where(|c| c.lun == t.lun)
                    }
                    TmFunction::TargetWarmReset | TmFunction::TargetColdReset => {
                        self.abort_where(|_| true)
                    }
                    _ => {}
                }
                if f == TmFunction::TargetColdReset {
                    flow = Flow::Close;
                }
                match self.setup.target.clone() {
                    Some(target) => target.task_management(&self.setup.nexus, lun, f),
                    None => TmResponse::NotSupported,
                }
            }
        };
        let (exp, max) = self.window();
        let statsn = self.take_statsn();
        let r = TaskMgmtResponse {
            response: response.code(),
            itt: t.itt,
            statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
        };
        out.pdu(&Bhs::TaskMgmtResponse(r), &[]);
        Ok(flow)
    }

    fn text(
        &mut self,
        t: &TextRequest,
        raw: &[u8; pdu::BHS_LEN],
        data: &[u8],
        out: &mut Out,
    ) -> Flow {
        if t.ttt != RESERVED_TAG {
            if let Some(reply) = self.text_out.take() {
                if reply.ttt == t.ttt {
                    self.send_text(t, reply, out);
                    return Flow::Continue;
                }
            }
            match self.text_in.take() {
                Some((ttt, buf)) if ttt == t.ttt => self.text_in = Some((ttt, buf)),
                _ => {
                    self.reject(reject::INVALID_PDU_FIELD, raw, out);
                    return Flow::Continue;
                }
            }
        } else {
            // A new exchange resets any earlier one (RFC 7143 §11.10.4).
            self.text_out = None;
            if !t.cont {
                self.text_in = None;
            }
        }
        let mut buf = match self.text_in.take() {
            Some((_, b)) => b,
            None => Vec::new(),
        };
        if buf.len() + data.len() > text::MAX_TEXT_LEN {
            self.reject(reject::PROTOCOL_ERROR, raw, out);
            return Flow::Continue;
        }
        buf.extend_from_slice(data);
        if t.cont {
            let ttt = self.new_ttt();
            self.text_in = Some((ttt, buf));
            let reply = TextReply {
                ttt,
                data: Vec::new(),
                sent: 0,
            };
            self.send_text_piece(t, &reply, 0, false, out);
            return Flow::Continue;
        }
        let pairs = match text::parse(&buf) {
            Ok(p) => p,
            Err(_) => {
                self.reject(reject::PROTOCOL_ERROR, raw, out);
                return Flow::Continue;
            }
        };
        let mut answer = text::TextBuilder::new();
        let mut body = Vec::new();
        for (k, v) in &pairs {
            match k.as_str() {
                "SendTargets" => {
                    let current = match self.setup.kind {
                        SessionType::Normal => Some(self.setup.nexus.target_name.as_str()),
                        SessionType::Discovery => None,
                    };
                    body.extend(sendtargets::answer(
                        v,
                        &self.setup.nexus.initiator_name,
                        current,
                        self.setup.registry.as_ref(),
                        self.setup.portal,
                        self.setup.nexus.tpgt,
                    ));
                }
                "MaxRecvDataSegmentLength" => {
                    if let Ok(n) = v.parse::<u32>() {
                        if (512..=0xff_ffff).contains(&n) {
                            self.params.initiator_max_recv_dsl = n;
                        }
                    }
                }
                _ => {
                    answer.add(k, NOT_UNDERSTOOD);
                }
            }
        }
        let mut data = answer.into_bytes();
        data.extend(body);
        let reply = TextReply {
            ttt: RESERVED_TAG,
            data,
            sent: 0,
        };
        self.send_text(t, reply, out);
        Flow::Continue
    }

    /// Sends the next piece of a text reply; longer replies continue with
    /// C=1 and a TTT the initiator echoes to fetch the rest.
    fn send_text(&mut self, t: &TextRequest, mut reply: TextReply, out: &mut Out) {
        let seg = self.params.initiator_max_recv_dsl.max(512) as usize;
        let n = seg.min(reply.data.len() - reply.sent);
        let more = reply.sent + n < reply.data.len();
        if more {
            reply.ttt = self.new_ttt();
        }
        self.send_text_piece(t, &reply, n, !more, out);
        reply.sent += n;
        if more {
            self.text_out = Some(reply);
        }
    }

    fn send_text_piece(
        &mut self,
        t: &TextRequest,
        reply: &TextReply,
        n: usize,
        last: bool,
        out: &mut Out,
    ) {
        let (exp, max) = self.window();
        let statsn = self.take_statsn();
        let r = TextResponse {
            final_: last,
            cont: !last && n > 0,
            lun: t.lun,
            itt: t.itt,
            ttt: if last { RESERVED_TAG } else { reply.ttt },
            statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
        };
        out.pdu(
            &Bhs::TextResponse(r),
            &[&reply.data[reply.sent..reply.sent + n]],
        );
    }

    fn logout(&mut self, l: &LogoutRequest, raw: &[u8; pdu::BHS_LEN], out: &mut Out) -> Flow {
        let (response, flow) = match l.reason {
            0 => (0, Flow::Close),
            1 if l.cid == self.setup.cid => (0, Flow::Close),
            1 => (1, Flow::Continue),
            // Removing a connection for recovery needs ERL 2.
            2 => (2, Flow::Continue),
            _ => {
                self.reject(reject::INVALID_PDU_FIELD, raw, out);
                return Flow::Continue;
            }
        };
        if flow == Flow::Close {
            self.writes.clear();
            self.pending.clear();
        }
        let (exp, max) = self.window();
        let statsn = self.take_statsn();
        let r = LogoutResponse {
            response,
            itt: l.itt,
            statsn,
            exp_cmdsn: exp,
            max_cmdsn: max,
            time2wait: self.params.default_time2wait.min(3600) as u16,
            time2retain: self.params.default_time2retain.min(3600) as u16,
        };
        out.pdu(&Bhs::LogoutResponse(r), &[]);
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(read: bool, write: bool, edtl: u32) -> ScsiCommand {
        ScsiCommand {
            read,
            write,
            edtl,
            ..Default::default()
        }
    }

    #[test]
    fn read_residuals_follow_libiscsi_expectations() {
        let r = residual(&cmd(true, false, 0), Some(512), 512, 0);
        assert!(r.overflow && r.count == 512);
        let r = residual(&cmd(true, false, 10000), Some(512), 512, 512);
        assert!(r.underflow && r.count == 10000 - 512);
        let r = residual(&cmd(true, false, 200), Some(512), 512, 200);
        assert!(r.overflow && r.count == 312);
        let r = residual(&cmd(true, false, 512), Some(1024), 1024, 512);
        assert!(r.overflow && r.count == 512);
        let r = residual(&cmd(true, false, 255), None, 36, 36);
        assert!(r.underflow && r.count == 219);
        assert_eq!(
            residual(&cmd(false, false, 0), None, 0, 0),
            Residual::default()
        );
    }

    #[test]
    fn write_residuals_compare_with_the_cdb() {
        let r = residual(&cmd(false, true, 0), Some(512), 0, 0);
        assert!(r.overflow && r.count == 512);
        let r = residual(&cmd(false, true, 1024), Some(512), 0, 0);
        assert!(r.underflow && r.count == 512);
        assert_eq!(
            residual(&cmd(false, true, 512), Some(512), 0, 0),
            Residual::default()
        );
        assert_eq!(
            residual(&cmd(false, true, 512), None, 0, 0),
            Residual::default()
        );
    }
}
