//! Basic Header Segments and Additional Header Segments of every iSCSI
//! opcode (RFC 7143 §11), parsed from and serialized to their 48-byte wire
//! form. Lengths live outside the typed headers so that the same header can
//! be written with any data segment.

pub const BHS_LEN: usize = 48;
/// The reserved tag meaning "no task" in ITT and TTT fields.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("PDU shorter than a basic header segment")]
    Short,
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("data segment of {0} bytes exceeds the limit of {1}")]
    DataTooLong(u32, u32),
    #[error("malformed additional header segment")]
    BadAhs,
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
/// StatSN, ExpCmdSN and MaxCmdSN: the same three words at the same place
/// in every PDU the target sends.
fn put_sequence(b: &mut [u8], statsn: u32, exp_cmdsn: u32, max_cmdsn: u32) {
    put32(b, 24, statsn);
    put32(b, 28, exp_cmdsn);
    put32(b, 32, max_cmdsn);
}
fn lun8(b: &[u8]) -> [u8; 8] {
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[8..16]);
    l
}

/// Decodes the 8-byte LUN field to a LUN number. Peripheral (00b) and flat
/// (01b) addressing give the plain number; other methods pass through as
/// the raw big-endian value so that they can never alias a real LUN.
pub fn decode_lun(l: [u8; 8]) -> u64 {
    match l[0] >> 6 {
        0b00 => ((l[0] as u64) << 8) | l[1] as u64,
        0b01 => (((l[0] & 0x3f) as u64) << 8) | l[1] as u64,
        _ => u64::from_be_bytes(l),
    }
}

/// Encodes a LUN number the way initiators address it: peripheral
/// addressing below 256, flat space addressing up to 16383.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else if lun < 0x4000 {
        l[0] = 0x40 | (lun >> 8) as u8;
        l[1] = lun as u8;
    } else {
        l = lun.to_be_bytes();
    }
    l
}

/// Lengths carried in every BHS: TotalAHSLength (bytes) and
/// DataSegmentLength.
pub fn segment_lengths(bhs: &[u8]) -> Result<(usize, u32), PduError> {
    if bhs.len() < BHS_LEN {
        return Err(PduError::Short);
    }
    let ahs = bhs[4] as usize * 4;
    let data = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]);
    Ok((ahs, data))
}

/// Total padded length of a data segment.
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub edtl: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub cdb: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub rtt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub ref_cmdsn: u32,
    pub exp_datasn: u32,
}

/// Login stage numbers (CSG/NSG).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub kind: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub residual: Residual,
    pub bidi_residual: Residual,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub exp_datasn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub status_present: bool,
    pub residual: Residual,
    pub status: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub r2tsn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: [u8; 8],
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn_r2tsn: u32,
}

/// A typed Basic Header Segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

fn residual_from(flags: u8, count: u32, over: u8, under: u8) -> Residual {
    Residual {
        overflow: flags & over != 0,
        underflow: flags & under != 0,
        count,
    }
}

fn residual_bits(r: &Residual, over: u8, under: u8) -> u8 {
    (if r.overflow { over } else { 0 }) | (if r.underflow { under } else { 0 })
}

impl Bhs {
    /// Parses a BHS. Fields the RFC marks reserved are ignored; fields whose
    /// values are impossible are errors.
    pub fn parse(b: &[u8]) -> Result<Bhs, PduError> {
        if b.len() < BHS_LEN {
            return Err(PduError::Short);
        }
        let imm = b[0] & 0x40 != 0;
        let f = b[1];
        let fin = f & 0x80 != 0;
        let op = b[0] & 0x3f;
        Ok(match op {
            opcode::NOP_OUT => Bhs::NopOut(NopOut {
                immediate: imm,
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
            }),
            opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: fin,
                    read: f & 0x40 != 0,
                    write: f & 0x20 != 0,
                    attr: f & 0x07,
                    lun: lun8(b),
                    itt: be32(b, 16),
                    edtl: be32(b, 20),
                    cmdsn: be32(b, 24),
                    exp_statsn: be32(b, 28),
                    cdb,
                })
            }
            opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: f & 0x7f,
                lun: lun8(b),
                itt: be32(b, 16),
                rtt: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
                ref_cmdsn: be32(b, 32),
                exp_datasn: be32(b, 36),
            }),
            opcode::LOGIN_REQUEST => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginRequest(LoginRequest {
                    transit: fin,
                    cont: f & 0x40 != 0,
                    csg: (f >> 2) & 3,
                    nsg: f & 3,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    cid: be16(b, 20),
                    cmdsn: be32(b, 24),
                    exp_statsn: be32(b, 28),
                })
            }
            opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest {
                immediate: imm,
                final_: fin,
                cont: f & 0x40 != 0,
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
            }),
            opcode::DATA_OUT => Bhs::DataOut(DataOut {
                final_: fin,
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_statsn: be32(b, 28),
                datasn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: f & 0x7f,
                itt: be32(b, 16),
                cid: be16(b, 20),
                cmdsn: be32(b, 24),
                exp_statsn: be32(b, 28),
            }),
            opcode::SNACK_REQUEST => Bhs::SnackRequest(SnackRequest {
                kind: f & 0x0f,
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_statsn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            opcode::NOP_IN => Bhs::NopIn(NopIn {
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
            }),
            opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_residual: residual_from(f, be32(b, 40), 0x10, 0x08),
                residual: residual_from(f, be32(b, 44), 0x04, 0x02),
                response: b[2],
                status: b[3],
                itt: be32(b, 16),
                snack_tag: be32(b, 20),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                exp_datasn: be32(b, 36),
            }),
            opcode::TASK_MGMT_RESPONSE => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt: be32(b, 16),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
            }),
            opcode::LOGIN_RESPONSE => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginResponse(LoginResponse {
                    transit: fin,
                    cont: f & 0x40 != 0,
                    csg: (f >> 2) & 3,
                    nsg: f & 3,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    statsn: be32(b, 24),
                    exp_cmdsn: be32(b, 28),
                    max_cmdsn: be32(b, 32),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse {
                final_: fin,
                cont: f & 0x40 != 0,
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
            }),
            opcode::DATA_IN => Bhs::DataIn(DataIn {
                final_: fin,
                ack: f & 0x40 != 0,
                status_present: f & 0x01 != 0,
                residual: residual_from(f, be32(b, 44), 0x04, 0x02),
                status: b[3],
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                datasn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse {
                response: b[2],
                itt: be32(b, 16),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            opcode::R2T => Bhs::R2t(R2t {
                lun: lun8(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                r2tsn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_length: be32(b, 44),
            }),
            opcode::ASYNC_MESSAGE => Bhs::AsyncMessage(AsyncMessage {
                lun: lun8(b),
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                event: b[36],
                vcode: b[37],
                param1: be16(b, 38),
                param2: be16(b, 40),
                param3: be16(b, 42),
            }),
            opcode::REJECT => Bhs::Reject(Reject {
                reason: b[2],
                statsn: be32(b, 24),
                exp_cmdsn: be32(b, 28),
                max_cmdsn: be32(b, 32),
                datasn_r2tsn: be32(b, 36),
            }),
            other => return Err(PduError::UnknownOpcode(other)),
        })
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Bhs::NopOut(_) => opcode::NOP_OUT,
            Bhs::ScsiCommand(_) => opcode::SCSI_COMMAND,
            Bhs::TaskMgmtRequest(_) => opcode::TASK_MGMT_REQUEST,
            Bhs::LoginRequest(_) => opcode::LOGIN_REQUEST,
            Bhs::TextRequest(_) => opcode::TEXT_REQUEST,
            Bhs::DataOut(_) => opcode::DATA_OUT,
            Bhs::LogoutRequest(_) => opcode::LOGOUT_REQUEST,
            Bhs::SnackRequest(_) => opcode::SNACK_REQUEST,
            Bhs::NopIn(_) => opcode::NOP_IN,
            Bhs::ScsiResponse(_) => opcode::SCSI_RESPONSE,
            Bhs::TaskMgmtResponse(_) => opcode::TASK_MGMT_RESPONSE,
            Bhs::LoginResponse(_) => opcode::LOGIN_RESPONSE,
            Bhs::TextResponse(_) => opcode::TEXT_RESPONSE,
            Bhs::DataIn(_) => opcode::DATA_IN,
            Bhs::LogoutResponse(_) => opcode::LOGOUT_RESPONSE,
            Bhs::R2t(_) => opcode::R2T,
            Bhs::AsyncMessage(_) => opcode::ASYNC_MESSAGE,
            Bhs::Reject(_) => opcode::REJECT,
        }
    }

    /// Writes the header with the given AHS length (bytes, a multiple of 4)
    /// and data segment length.
    pub fn write(&self, ahs_len: usize, data_len: u32, out: &mut [u8; BHS_LEN]) {
        *out = [0u8; BHS_LEN];
        let b = &mut out[..];
        b[0] = self.opcode();
        b[4] = (ahs_len / 4) as u8;
        let dl = data_len.to_be_bytes();
        b[5..8].copy_from_slice(&dl[1..4]);
        match self {
            Bhs::NopOut(p) => {
                if p.immediate {
                    b[0] |= 0x40;
                }
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
            }
            Bhs::ScsiCommand(p) => {
                if p.immediate {
                    b[0] |= 0x40;
                }
                b[1] = (if p.final_ { 0x80 } else { 0 })
                    | (if p.read { 0x40 } else { 0 })
                    | (if p.write { 0x20 } else { 0 })
                    | (p.attr & 7);
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.edtl);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            Bhs::TaskMgmtRequest(p) => {
                if p.immediate {
                    b[0] |= 0x40;
                }
                b[1] = 0x80 | (p.function & 0x7f);
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.rtt);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
                put32(b, 32, p.ref_cmdsn);
                put32(b, 36, p.exp_datasn);
            }
            Bhs::LoginRequest(p) => {
                b[0] |= 0x40;
                b[1] = (if p.transit { 0x80 } else { 0 })
                    | (if p.cont { 0x40 } else { 0 })
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
            }
            Bhs::TextRequest(p) => {
                if p.immediate {
                    b[0] |= 0x40;
                }
                b[1] = (if p.final_ { 0x80 } else { 0 }) | (if p.cont { 0x40 } else { 0 });
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
            }
            Bhs::DataOut(p) => {
                b[1] = if p.final_ { 0x80 } else { 0 };
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 28, p.exp_statsn);
                put32(b, 36, p.datasn);
                put32(b, 40, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                if p.immediate {
                    b[0] |= 0x40;
                }
                b[1] = 0x80 | (p.reason & 0x7f);
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmdsn);
                put32(b, 28, p.exp_statsn);
            }
            Bhs::SnackRequest(p) => {
                b[1] = 0x80 | (p.kind & 0x0f);
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 28, p.exp_statsn);
                put32(b, 40, p.beg_run);
                put32(b, 44, p.run_length);
            }
            Bhs::NopIn(p) => {
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
            }
            Bhs::ScsiResponse(p) => {
                b[1] = 0x80
                    | residual_bits(&p.bidi_residual, 0x10, 0x08)
                    | residual_bits(&p.residual, 0x04, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put32(b, 16, p.itt);
                put32(b, 20, p.snack_tag);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                put32(b, 36, p.exp_datasn);
                put32(b, 40, p.bidi_residual.count);
                put32(b, 44, p.residual.count);
            }
            Bhs::TaskMgmtResponse(p) => {
                b[1] = 0x80;
                b[2] = p.response;
                put32(b, 16, p.itt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
            }
            Bhs::LoginResponse(p) => {
                b[1] = (if p.transit { 0x80 } else { 0 })
                    | (if p.cont { 0x40 } else { 0 })
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Bhs::TextResponse(p) => {
                b[1] = (if p.final_ { 0x80 } else { 0 }) | (if p.cont { 0x40 } else { 0 });
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
            }
            Bhs::DataIn(p) => {
                b[1] = (if p.final_ { 0x80 } else { 0 })
                    | (if p.ack { 0x40 } else { 0 })
                    | (if p.status_present { 0x01 } else { 0 })
                    | residual_bits(&p.residual, 0x04, 0x02);
                if p.status_present {
                    b[3] = p.status;
                }
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                put32(b, 36, p.datasn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.residual.count);
            }
            Bhs::LogoutResponse(p) => {
                b[1] = 0x80;
                b[2] = p.response;
                put32(b, 16, p.itt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                put16(b, 40, p.time2wait);
                put16(b, 42, p.time2retain);
            }
            Bhs::R2t(p) => {
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                put32(b, 36, p.r2tsn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.desired_length);
            }
            Bhs::AsyncMessage(p) => {
                b[1] = 0x80;
                b[8..16].copy_from_slice(&p.lun);
                put32(b, 16, RESERVED_TAG);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(b, 38, p.param1);
                put16(b, 40, p.param2);
                put16(b, 42, p.param3);
            }
            Bhs::Reject(p) => {
                b[1] = 0x80;
                b[2] = p.reason;
                put32(b, 16, RESERVED_TAG);
                put_sequence(b, p.statsn, p.exp_cmdsn, p.max_cmdsn);
                put32(b, 36, p.datasn_r2tsn);
            }
        }
    }
}

/// AHS types (RFC 7143 §11.2.2).
pub const AHS_EXTENDED_CDB: u8 = 1;
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// The Additional Header Segments a SCSI Command may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ahs<'a> {
    /// CDB bytes beyond the first 16.
    pub extended_cdb: Option<&'a [u8]>,
    pub bidi_read_length: Option<u32>,
}

/// Parses the AHS area. Unknown types are skipped; truncated or duplicate
/// entries are errors.
pub fn parse_ahs(mut b: &[u8]) -> Result<Ahs<'_>, PduError> {
    let mut ahs = Ahs::default();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(PduError::BadAhs);
        }
        let len = be16(b, 0) as usize;
        let kind = b[2];
        // AHSLength counts the byte after AHSType, so it is at least 1.
        if len == 0 || 3 + len > b.len() {
            return Err(PduError::BadAhs);
        }
        let body = &b[4..3 + len];
        match kind {
            AHS_EXTENDED_CDB => {
                if ahs.extended_cdb.is_some() {
                    return Err(PduError::BadAhs);
                }
                ahs.extended_cdb = Some(body);
            }
            AHS_BIDI_READ_LENGTH => {
                if len != 5 || ahs.bidi_read_length.is_some() {
                    return Err(PduError::BadAhs);
                }
                ahs.bidi_read_length = Some(be32(body, 0));
            }
            _ => {}
        }
        let total = padded(3 + len);
        if total > b.len() {
            return Err(PduError::BadAhs);
        }
        b = &b[total..];
    }
    Ok(ahs)
}

/// Serializes AHS entries (used by tests and tools that play initiator).
pub fn write_ahs(ahs: &Ahs<'_>, out: &mut Vec<u8>) {
    if let Some(ext) = ahs.extended_cdb {
        let len = ext.len() + 1;
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.push(AHS_EXTENDED_CDB);
        out.push(0);
        out.extend_from_slice(ext);
        while out.len() & 3 != 0 {
            out.push(0);
        }
    }
    if let Some(l) = ahs.bidi_read_length {
        out.extend_from_slice(&5u16.to_be_bytes());
        out.push(AHS_BIDI_READ_LENGTH);
        out.push(0);
        out.extend_from_slice(&l.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bhs: Bhs) {
        let mut raw = [0u8; BHS_LEN];
        bhs.write(8, 1234, &mut raw);
        let (ahs, data) = segment_lengths(&raw).expect("lengths");
        assert_eq!((ahs, data), (8, 1234));
        assert_eq!(Bhs::parse(&raw).expect("parse"), bhs);
    }

    #[test]
    fn every_opcode_roundtrips() {
        let lun = encode_lun(3);
        let r = Residual {
            overflow: true,
            underflow: false,
            count: 77,
        };
        let cases = vec![
            Bhs::NopOut(NopOut {
                immediate: true,
                lun,
                itt: 1,
                ttt: RESERVED_TAG,
                cmdsn: 5,
                exp_statsn: 6,
            }),
            Bhs::ScsiCommand(ScsiCommand {
                immediate: false,
                final_: true,
                read: true,
                write: false,
                attr: 1,
                lun,
                itt: 9,
                edtl: 4096,
                cmdsn: 10,
                exp_statsn: 11,
                cdb: [0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
            }),
            Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: 1,
                lun,
                itt: 2,
                rtt: 3,
                cmdsn: 4,
                exp_statsn: 5,
                ref_cmdsn: 6,
                exp_datasn: 7,
            }),
            Bhs::LoginRequest(LoginRequest {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 0,
                itt: 1,
                cid: 0,
                cmdsn: 1,
                exp_statsn: 0,
            }),
            Bhs::TextRequest(TextRequest {
                immediate: true,
                final_: true,
                cont: false,
                lun,
                itt: 4,
                ttt: RESERVED_TAG,
                cmdsn: 1,
                exp_statsn: 2,
            }),
            Bhs::DataOut(DataOut {
                final_: true,
                lun,
                itt: 4,
                ttt: 5,
                exp_statsn: 6,
                datasn: 7,
                buffer_offset: 8192,
            }),
            Bhs::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 5,
                cid: 0,
                cmdsn: 3,
                exp_statsn: 4,
            }),
            Bhs::SnackRequest(SnackRequest {
                kind: 1,
                lun,
                itt: 5,
                ttt: 6,
                exp_statsn: 7,
                beg_run: 8,
                run_length: 9,
            }),
            Bhs::NopIn(NopIn {
                lun,
                itt: RESERVED_TAG,
                ttt: 9,
                statsn: 1,
                exp_cmdsn: 2,
                max_cmdsn: 3,
            }),
            Bhs::ScsiResponse(ScsiResponse {
                residual: r,
                bidi_residual: Residual::default(),
                response: 0,
                status: 2,
                itt: 1,
                snack_tag: 0,
                statsn: 2,
                exp_cmdsn: 3,
                max_cmdsn: 4,
                exp_datasn: 5,
            }),
            Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: 1,
                itt: 2,
                statsn: 3,
                exp_cmdsn: 4,
                max_cmdsn: 5,
            }),
            Bhs::LoginResponse(LoginResponse {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_active: 0,
                isid: [1; 6],
                tsih: 7,
                itt: 1,
                statsn: 2,
                exp_cmdsn: 3,
                max_cmdsn: 4,
                status_class: 2,
                status_detail: 1,
            }),
            Bhs::TextResponse(TextResponse {
                final_: false,
                cont: true,
                lun,
                itt: 1,
                ttt: 2,
                statsn: 3,
                exp_cmdsn: 4,
                max_cmdsn: 5,
            }),
            Bhs::DataIn(DataIn {
                final_: true,
                ack: false,
                status_present: true,
                residual: r,
                status: 0,
                lun,
                itt: 1,
                ttt: RESERVED_TAG,
                statsn: 2,
                exp_cmdsn: 3,
                max_cmdsn: 4,
                datasn: 5,
                buffer_offset: 6,
            }),
            Bhs::LogoutResponse(LogoutResponse {
                response: 0,
                itt: 1,
                statsn: 2,
                exp_cmdsn: 3,
                max_cmdsn: 4,
                time2wait: 2,
                time2retain: 20,
            }),
            Bhs::R2t(R2t {
                lun,
                itt: 1,
                ttt: 2,
                statsn: 3,
                exp_cmdsn: 4,
                max_cmdsn: 5,
                r2tsn: 6,
                buffer_offset: 7,
                desired_length: 8,
            }),
            Bhs::AsyncMessage(AsyncMessage {
                lun,
                statsn: 1,
                exp_cmdsn: 2,
                max_cmdsn: 3,
                event: 1,
                vcode: 0,
                param1: 0,
                param2: 2,
                param3: 20,
            }),
            Bhs::Reject(Reject {
                reason: reject::PROTOCOL_ERROR,
                statsn: 1,
                exp_cmdsn: 2,
                max_cmdsn: 3,
                datasn_r2tsn: 0,
            }),
        ];
        for c in cases {
            roundtrip(c);
        }
    }

    #[test]
    fn unknown_opcode_and_short_input_are_errors() {
        let mut raw = [0u8; BHS_LEN];
        raw[0] = 0x1c;
        assert_eq!(Bhs::parse(&raw), Err(PduError::UnknownOpcode(0x1c)));
        assert_eq!(Bhs::parse(&raw[..10]), Err(PduError::Short));
    }

    #[test]
    fn ahs_parses_extended_cdb_and_rejects_truncation() {
        let ext = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut out = Vec::new();
        write_ahs(
            &Ahs {
                extended_cdb: Some(&ext),
                bidi_read_length: Some(512),
            },
            &mut out,
        );
        assert_eq!(out.len() % 4, 0);
        let a = parse_ahs(&out).expect("ahs");
        assert_eq!(a.extended_cdb, Some(&ext[..]));
        assert_eq!(a.bidi_read_length, Some(512));
        assert_eq!(parse_ahs(&out[..6]), Err(PduError::BadAhs));
        assert_eq!(parse_ahs(&[0, 0, 1, 0]), Err(PduError::BadAhs));
    }

    #[test]
    fn luns_encode_and_decode() {
        for l in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(decode_lun(encode_lun(l)), l);
        }
        assert_eq!(decode_lun([0, 5, 0, 0, 0, 0, 0, 0]), 5);
        assert_eq!(decode_lun([0x40, 5, 0, 0, 0, 0, 0, 0]), 5);
    }
}
