//! An iSCSI target (RFC 7143).
//!
//! This crate owns the transport: PDU framing, login with negotiation and
//! CHAP, discovery, the CmdSN window, R2T/Data-Out flow control, Data-In
//! splitting, residuals, task management and logout. Executing SCSI commands
//! is delegated to a [`Target`] supplied by the caller through a
//! [`Registry`]; the storage agent glues a block-device emulator in there.
//!
//! Threading model: one OS thread per TCP connection with blocking sockets.
//! Every complete PDU in the read buffer is handled in order and responses
//! are batched into one write, which keeps syscalls per I/O low at high
//! queue depths without an async runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod chap;
pub mod connection;
pub mod digest;
pub mod login;
pub mod negotiation;
pub mod pdu;
pub mod sendtargets;
pub mod server;
pub mod session;
pub mod text;
pub mod wire;

pub use server::Server;

/// The I_T nexus of a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub target_name: String,
    pub tpgt: u16,
}

impl Nexus {
    /// The SCSI initiator port name (RFC 7143 §4.2.7.1).
    pub fn initiator_port(&self) -> String {
        format!("{},i,0x{}", self.initiator_name, hex::encode(self.isid))
    }

    /// The SCSI target port name (RFC 7143 §4.2.7.1).
    pub fn target_port(&self) -> String {
        format!("{},t,0x{:04x}", self.target_name, self.tpgt)
    }
}

/// How initiators must authenticate to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// One-way CHAP: the initiator proves it knows `secret` under `user`.
    Chap {
        user: String,
        secret: String,
    },
    /// CHAP in both directions: as `Chap`, and when the initiator asks the
    /// target to authenticate itself, the target answers as `target_user`
    /// with `target_secret`. Plain `Chap` refuses such a request.
    MutualChap {
        user: String,
        secret: String,
        target_user: String,
        target_secret: String,
    },
}

/// What the SCSI layer answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScsiOutcome {
    /// SAM status byte (0x00 GOOD, 0x02 CHECK CONDITION, ...).
    pub status: u8,
    /// Sense data, without the iSCSI SenseLength prefix; empty when none.
    pub sense: Vec<u8>,
    /// Data-In payload; the transport truncates it to the expected length.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmResponse {
    Complete,
    TaskDoesNotExist,
    LunDoesNotExist,
    TaskStillAllegiant,
    ReassignmentNotSupported,
    NotSupported,
    AuthorizationFailed,
    Rejected,
}

impl TmResponse {
    /// The Response byte of a Task Management Function Response PDU.
    pub fn code(self) -> u8 {
        match self {
            TmResponse::Complete => 0,
            TmResponse::TaskDoesNotExist => 1,
            TmResponse::LunDoesNotExist => 2,
            TmResponse::TaskStillAllegiant => 3,
            TmResponse::ReassignmentNotSupported => 4,
            TmResponse::NotSupported => 5,
            TmResponse::AuthorizationFailed => 6,
            TmResponse::Rejected => 255,
        }
    }
}

/// One iSCSI target (one IQN) as the transport sees it.
pub trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn auth(&self) -> Auth;
    /// The ACL: may this initiator name log in?
    fn allows(&self, initiator: &str) -> bool;
    /// Runs one SCSI command to completion (blocking). `data_out` holds all
    /// Data-Out (immediate+unsolicited+solicited), exactly EDTL bytes for
    /// writes. `lun` is the LUN number decoded from SAM addressing (see
    /// [`pdu::decode_lun`]).
    fn execute(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expected_len: u32,
    ) -> ScsiOutcome;
    /// Bytes the CDB itself asks to move (Some for reads/writes), for
    /// residual computation.
    fn transfer_length(&self, lun: u64, cdb: &[u8]) -> Option<u32>;
    /// LUN-scoped and target-scoped task management the transport cannot do
    /// alone (resets).
    fn task_management(&self, nexus: &Nexus, lun: u64, function: TmFunction) -> TmResponse;
    fn session_opened(&self, nexus: &Nexus);
    fn session_closed(&self, nexus: &Nexus);
    /// Called before responses are sent: completes whatever the commands
    /// executed since the last call left in flight (a replicated write on
    /// its way to the other copies). An error means those commands may not
    /// be complete: the connection is dropped without their responses, and
    /// the initiator retries them.
    fn barrier(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Where the server finds targets.
pub trait Registry: Send + Sync + 'static {
    /// Target names `initiator` may see in a SendTargets discovery (only
    /// those its ACL admits).
    fn discover(&self, initiator: &str) -> Vec<String>;
    fn target(&self, name: &str) -> Option<Arc<dyn Target>>;
}

/// Server settings. The numeric limits are what the target offers in
/// negotiation; the initiator may lower them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the listener binds. Default 0.0.0.0:3260.
    pub listen: SocketAddr,
    /// Address advertised in SendTargets (TargetAddress=ip:port,tpgt);
    /// defaults to the address the initiator connected to.
    pub portal: Option<SocketAddr>,
    /// Target portal group tag of this portal. Default 1.
    pub tpgt: u16,
    /// Largest data segment the target accepts in one PDU (declared to the
    /// initiator). Default 256 KiB.
    pub max_recv_data_segment_length: u32,
    /// Largest unsolicited (immediate + unsolicited Data-Out) burst offered.
    /// Default 64 KiB.
    pub first_burst_length: u32,
    /// Largest solicited burst per R2T and Data-In sequence offered.
    /// Default 1 MiB.
    pub max_burst_length: u32,
    /// R2Ts the target will keep outstanding per task at most. Default 1.
    pub max_outstanding_r2t: u32,
    /// Size of the CmdSN window (commands the initiator may have queued
    /// beyond ExpCmdSN). Default 128.
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator with a NOP-In;
    /// zero disables pings. Default 5 s.
    pub nop_in_interval: Duration,
    /// How long the target waits for any traffic after a ping before it
    /// drops the connection. Default 15 s.
    pub nop_in_timeout: Duration,
    /// Longest time a login (and each login PDU) may take. Default 15 s.
    pub login_timeout: Duration,
    /// Connections served at once; more are closed at accept. Default 1024.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 3260)),
            portal: None,
            tpgt: 1,
            max_recv_data_segment_length: 262_144,
            first_burst_length: 65_536,
            max_burst_length: 1_048_576,
            max_outstanding_r2t: 1,
            queue_depth: 128,
            nop_in_interval: Duration::from_secs(5),
            nop_in_timeout: Duration::from_secs(15),
            login_timeout: Duration::from_secs(15),
            max_connections: 1024,
        }
    }
}

/// Errors that end a connection. None of them escapes to the caller of the
/// public API; they are logged and the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed PDU: {0}")]
    Pdu(#[from] pdu::PduError),
    #[error("digest mismatch in {0}")]
    Digest(&'static str),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("connection closed by peer")]
    Closed,
    #[error("no traffic from the initiator within the NOP-In timeout")]
    Timeout,
    #[error("session closed by the target")]
    Fenced,
}
