//! SPC-3/SPC-4 persistent reservations: PERSISTENT RESERVE IN/OUT, the
//! reservation conflict rules, and APTPL persistence.
//!
//! The cloud fences failed hosts by preempting their registrations, so every
//! state change is computed on a copy, persisted first when APTPL asks for it,
//! and only then made visible.
//!
//! # Admissions: the target's own fence
//!
//! The storage node's management (never the wire) admits iSCSI initiator
//! *names* with [`Reservations::admit`] and revokes them with
//! [`Reservations::revoke`]. An admission covers every I_T nexus of that
//! name, whatever its ISID and target port (as an iSCSI TransportID of
//! format 00b names an initiator without its ISID): QEMU's initiator never
//! registers itself and picks a new ISID per session, so the host cannot
//! hold a registration of its own.
//!
//! Once a logical unit has seen one admission it is *managed*, and stays so:
//! it then behaves as if the target held an Exclusive Access – All
//! Registrants reservation (type 8) of which only admitted names are
//! registrants. A nexus of a name not admitted gets RESERVATION CONFLICT for
//! every command the conflict table lets only registrants run, reads
//! included, so a fenced host cannot even read stale data. With no
//! admission left the unit refuses everybody: a volume attached to nobody is
//! written by nobody, until the next host is admitted.
//!
//! This fence is deliberately not an SPC reservation in the wire state:
//! under a real all-registrants reservation any nexus may REGISTER itself
//! in, and any registrant may RELEASE it, so it would fence nothing against
//! an initiator that speaks PR; and every wire RESERVE of the admitted host
//! would conflict with it. Here a wire registration never opens the medium,
//! only an admission does, and the wire cannot admit. On top of the fence
//! the wire-level persistent reservations work as SPC-4 says, and the
//! admissions take part as registrations made on the hosts' behalf: READ
//! KEYS lists their keys, READ FULL STATUS lists them with ALL_TG_PT set and
//! a TransportID of format 00b, CLEAR removes them and PREEMPT removes
//! those holding the preempted key (so the wire can take access away, never
//! give it; the management admits again at its next apply). The admissions
//! are persisted whether or not the wire state has APTPL.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cdb::{at, be64_at, op, Cdb, CmdResult, Failure};
use crate::sense::{self, Sense};
use crate::unit_attention::UnitAttentions;
use crate::{Error, Nexus};

pub const WRITE_EXCLUSIVE: u8 = 0x1;
pub const EXCLUSIVE_ACCESS: u8 = 0x3;
pub const WRITE_EXCLUSIVE_RO: u8 = 0x5;
pub const EXCLUSIVE_ACCESS_RO: u8 = 0x6;
pub const WRITE_EXCLUSIVE_AR: u8 = 0x7;
pub const EXCLUSIVE_ACCESS_AR: u8 = 0x8;

const SA_REGISTER: u8 = 0x0;
const SA_RESERVE: u8 = 0x1;
const SA_RELEASE: u8 = 0x2;
const SA_CLEAR: u8 = 0x3;
const SA_PREEMPT: u8 = 0x4;
const SA_PREEMPT_AND_ABORT: u8 = 0x5;
const SA_REGISTER_AND_IGNORE: u8 = 0x6;

const PROUT_PARAMETER_LIST: usize = 24;

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        WRITE_EXCLUSIVE
            | EXCLUSIVE_ACCESS
            | WRITE_EXCLUSIVE_RO
            | EXCLUSIVE_ACCESS_RO
            | WRITE_EXCLUSIVE_AR
            | EXCLUSIVE_ACCESS_AR
    )
}

fn all_registrants(t: u8) -> bool {
    matches!(t, WRITE_EXCLUSIVE_AR | EXCLUSIVE_ACCESS_AR)
}

fn registrants_only(t: u8) -> bool {
    matches!(t, WRITE_EXCLUSIVE_RO | EXCLUSIVE_ACCESS_RO)
}

fn exclusive_access(t: u8) -> bool {
    matches!(
        t,
        EXCLUSIVE_ACCESS | EXCLUSIVE_ACCESS_RO | EXCLUSIVE_ACCESS_AR
    )
}

/// Who a registration belongs to: an initiator port, through one target port or
/// (ALL_TG_PT) through all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RegId {
    initiator: String,
    target: Option<String>,
    /// `initiator` is an iSCSI name standing for all its ports: only ever
    /// built for an admission, to address unit attentions to its nexuses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    by_name: bool,
}

impl RegId {
    fn matches(&self, n: &Nexus) -> bool {
        let initiator = if self.by_name {
            port_name(&n.initiator_port).eq_ignore_ascii_case(&self.initiator)
        } else {
            self.initiator == n.initiator_port
        };
        initiator && self.target.as_ref().map_or(true, |t| t == &n.target_port)
    }

    fn of_name(name: &str) -> RegId {
        RegId {
            initiator: name.to_string(),
            target: None,
            by_name: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Registration {
    id: RegId,
    key: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    /// None for the all-registrants types, where every registrant is a holder.
    holder: Option<RegId>,
    kind: u8,
}

/// An initiator name the management admitted, with the key it is listed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Admission {
    name: String,
    key: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PrState {
    generation: u32,
    aptpl: bool,
    registrations: Vec<Registration>,
    reservation: Option<Reservation>,
    /// Set by the first admission and never cleared: from then on only
    /// admitted names get at the medium.
    #[serde(default)]
    managed: bool,
    #[serde(default)]
    admitted: Vec<Admission>,
}

/// The iSCSI name of an initiator port `<name>,i,0x<isid>` (or the whole
/// string when it has no ISID part; iSCSI names never contain a comma).
fn port_name(initiator_port: &str) -> &str {
    initiator_port
        .split_once(",i,0x")
        .map_or(initiator_port, |(n, _)| n)
}

impl PrState {
    /// Whether the fence lets `n` through: not managed, or its name admitted.
    /// iSCSI names compare case-insensitively (RFC 3722 folds them to lower case).
    fn admits(&self, n: &Nexus) -> bool {
        !self.managed || self.admission(n).is_some()
    }

    fn admission(&self, n: &Nexus) -> Option<&Admission> {
        let name = port_name(&n.initiator_port);
        self.admitted
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn find(&self, n: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| r.id.matches(n))
    }

    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation { holder: None, .. }) => self.find(n).is_some(),
            Some(Reservation {
                holder: Some(h), ..
            }) => self.find(n).is_some_and(|i| &self.registrations[i].id == h),
        }
    }

    /// Key reported for the reservation: zero for all-registrants types (SPC-4 6.15.3).
    fn reservation_key(&self) -> u64 {
        match &self.reservation {
            Some(Reservation {
                holder: Some(h), ..
            }) => self
                .registrations
                .iter()
                .find(|r| &r.id == h)
                .map_or(0, |r| r.key),
            _ => 0,
        }
    }

    /// Whether any command may conflict at all.
    fn guards(&self) -> bool {
        self.reservation.is_some() || self.managed
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes registration `i`, releasing the reservation as SPC-4 5.13.11.3 says
    /// when it held it, and returns the UAs that causes.
    fn unregister(&mut self, i: usize, uas: &mut Vec<(RegId, Option<Nexus>, Sense)>, by: &Nexus) {
        let reg = self.registrations.remove(i);
        let Some(res) = self.reservation.clone() else {
            return;
        };
        match &res.holder {
            None => {
                if self.registrations.is_empty() {
                    self.reservation = None;
                }
            }
            Some(h) if h == &reg.id => {
                self.reservation = None;
                if registrants_only(res.kind) {
                    for r in &self.registrations {
                        uas.push((
                            r.id.clone(),
                            Some(by.clone()),
                            sense::UA_RESERVATIONS_RELEASED,
                        ));
                    }
                }
            }
            Some(_) => {}
        }
    }
}

pub struct Reservations {
    state: Mutex<PrState>,
    /// Lets the I/O path skip the lock when nothing is reserved and no
    /// fence is up.
    reserved: AtomicBool,
    path: Option<PathBuf>,
}

/// Which rule of the conflict tables (SPC-4 table 66, SBC-3 table 13) applies.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Allowed,
    /// Conflicts only under the exclusive-access types.
    Read,
    /// Conflicts under every type.
    Write,
}

fn access_class(cdb: &Cdb) -> Access {
    match cdb.opcode() {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::TEST_UNIT_READY
        | op::MAINTENANCE_IN
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::READ_CAPACITY_10 => Access::Allowed,
        op::SERVICE_ACTION_IN_16 if cdb.service_action() == op::SAI_READ_CAPACITY_16 => {
            Access::Allowed
        }
        op::START_STOP_UNIT if cdb.u8(4) & 0x01 != 0 && cdb.u8(4) >> 4 == 0 => Access::Allowed,
        op::PREVENT_ALLOW if cdb.u8(4) & 0x03 == 0 => Access::Allowed,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::SERVICE_ACTION_IN_16 => Access::Read,
        _ => Access::Write,
    }
}

impl Reservations {
    pub fn open(path: Option<PathBuf>) -> Result<Reservations, Error> {
        let mut state = PrState::default();
        if let Some(p) = &path {
            match fs::read(p) {
                Ok(bytes) => {
                    let saved: PrState =
                        serde_json::from_slice(&bytes).map_err(|e| Error::PrState {
                            path: p.clone(),
                            reason: e.to_string(),
                        })?;
                    // Without APTPL the wire state did not survive the restart
                    // (SPC-4 5.13.5); the management's admissions always do.
                    if saved.aptpl {
                        state = saved;
                    } else {
                        state.generation = saved.generation;
                        state.managed = saved.managed;
                        state.admitted = saved.admitted;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::PrState {
                        path: p.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Reservations {
            reserved: AtomicBool::new(state.guards()),
            state: Mutex::new(state),
            path,
        })
    }

    /// Whether `nexus` must get RESERVATION CONFLICT for this command.
    pub fn conflicts(&self, nexus: &Nexus, cdb: &Cdb) -> bool {
        if !self.reserved.load(Ordering::Acquire) {
            return false;
        }
        let class = access_class(cdb);
        if class == Access::Allowed {
            return false;
        }
        let st = self.state.lock();
        if !st.admits(nexus) {
            return true;
        }
        let Some(res) = &st.reservation else {
            return false;
        };
        if st.is_holder(nexus) {
            return false;
        }
        // Registrants-only and all-registrants reservations admit every registrant.
        if (registrants_only(res.kind) || all_registrants(res.kind)) && st.find(nexus).is_some() {
            return false;
        }
        class == Access::Write || exclusive_access(res.kind)
    }

    pub fn persistent_reserve_in(&self, cdb: &Cdb) -> CmdResult {
        let alloc = usize::from(cdb.be16(7));
        let st = self.state.lock();
        let mut d = Vec::with_capacity(64);
        match cdb.service_action() {
            0x00 => {
                d.extend_from_slice(&st.generation.to_be_bytes());
                let len = ((st.registrations.len() + st.admitted.len()) * 8) as u32;
                d.extend_from_slice(&len.to_be_bytes());
                for r in &st.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
                for a in &st.admitted {
                    d.extend_from_slice(&a.key.to_be_bytes());
                }
            }
            0x01 => {
                d.extend_from_slice(&st.generation.to_be_bytes());
                match &st.reservation {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(res) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        d.extend_from_slice(&st.reservation_key().to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, res.kind & 0x0f, 0, 0]);
                    }
                }
            }
            0x02 => {
                d.extend_from_slice(&8u16.to_be_bytes());
                // ATP_C; PTPL_C only when there is somewhere to persist to.
                d.push(0x04 | u8::from(self.path.is_some()));
                // TMV: the type mask is valid; PTPL_A: APTPL currently active.
                d.push(0x80 | u8::from(st.aptpl));
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; then EX_AC_AR.
                d.extend_from_slice(&[0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            0x03 => {
                d.extend_from_slice(&st.generation.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0]);
                for r in &st.registrations {
                    let holder = match &st.reservation {
                        Some(Reservation { holder: None, .. }) => true,
                        Some(Reservation {
                            holder: Some(h), ..
                        }) => h == &r.id,
                        None => false,
                    };
                    d.extend_from_slice(&r.key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0]);
                    d.push(u8::from(r.id.target.is_none()) << 1 | u8::from(holder));
                    d.push(if holder {
                        st.reservation.as_ref().map_or(0, |x| x.kind & 0x0f)
                    } else {
                        0
                    });
                    d.extend_from_slice(&[0, 0, 0, 0]);
                    // One target port per target here: relative port 1.
                    d.extend_from_slice(&[0, u8::from(r.id.target.is_some())]);
                    let tid = transport_id(&r.id.initiator);
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
                // Admissions: every port of the name, through every target
                // port (ALL_TG_PT), holding no wire reservation.
                for a in &st.admitted {
                    d.extend_from_slice(&a.key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0]);
                    d.push(0x02);
                    d.push(0);
                    d.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    let tid = transport_id(&a.name);
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
                let len = (d.len() - 8) as u32;
                d[4..8].copy_from_slice(&len.to_be_bytes());
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
        drop(st);
        d.truncate(alloc);
        Ok(d)
    }

    pub fn persistent_reserve_out(
        &self,
        nexus: &Nexus,
        cdb: &Cdb,
        data_out: &[u8],
        ua: &UnitAttentions,
    ) -> CmdResult {
        let action = cdb.service_action();
        if action > SA_REGISTER_AND_IGNORE {
            // REGISTER AND MOVE and REPLACE LOST RESERVATION are not supported.
            return Err(Sense::invalid_cdb_field(1, Some(4)).into());
        }
        let scope = cdb.u8(2) >> 4;
        let kind = cdb.u8(2) & 0x0f;
        let param_len = cdb.be32(5) as usize;
        if param_len != PROUT_PARAMETER_LIST || data_out.len() < PROUT_PARAMETER_LIST {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let list = &data_out[..PROUT_PARAMETER_LIST];
        let key = be64_at(list, 0);
        let sa_key = be64_at(list, 8);
        let flags = at(list, 20);
        if flags & 0x08 != 0 {
            // SPEC_I_PT is not supported (SIP_C=0).
            return Err(Sense::invalid_param_field(20, Some(3)).into());
        }
        let all_tg_pt = flags & 0x04 != 0;
        let aptpl = flags & 0x01 != 0;
        if aptpl && self.path.is_none() {
            return Err(Sense::invalid_param_field(20, Some(0)).into());
        }
        if matches!(
            action,
            SA_RESERVE | SA_RELEASE | SA_PREEMPT | SA_PREEMPT_AND_ABORT
        ) && scope != 0
        {
            return Err(Sense::invalid_cdb_field(2, Some(7)).into());
        }

        let mut st = self.state.lock();
        let mut next = st.clone();
        // (registration to notify, nexus to exclude, condition)
        let mut uas: Vec<(RegId, Option<Nexus>, Sense)> = Vec::new();
        let me = next.find(nexus);
        match action {
            SA_REGISTER | SA_REGISTER_AND_IGNORE => {
                let ignore = action == SA_REGISTER_AND_IGNORE;
                match me {
                    None => {
                        if !ignore && key != 0 {
                            return Err(Failure::ReservationConflict);
                        }
                        if sa_key == 0 {
                            return Ok(Vec::new());
                        }
                        let target = if all_tg_pt {
                            None
                        } else {
                            Some(nexus.target_port.clone())
                        };
                        next.registrations.push(Registration {
                            id: RegId {
                                initiator: nexus.initiator_port.clone(),
                                target,
                                by_name: false,
                            },
                            key: sa_key,
                        });
                    }
                    Some(i) => {
                        if !ignore && key != next.registrations[i].key {
                            return Err(Failure::ReservationConflict);
                        }
                        if sa_key == 0 {
                            next.unregister(i, &mut uas, nexus);
                        } else {
                            next.registrations[i].key = sa_key;
                        }
                    }
                }
                next.aptpl = aptpl;
                next.bump();
            }
            SA_RESERVE => {
                let Some(i) = me else {
                    return Err(Failure::ReservationConflict);
                };
                if key != next.registrations[i].key {
                    return Err(Failure::ReservationConflict);
                }
                if !valid_type(kind) {
                    return Err(Sense::invalid_cdb_field(2, Some(3)).into());
                }
                match &next.reservation {
                    Some(res) => {
                        if !(next.is_holder(nexus) && res.kind == kind) {
                            return Err(Failure::ReservationConflict);
                        }
                    }
                    None => {
                        let holder = if all_registrants(kind) {
                            None
                        } else {
                            Some(next.registrations[i].id.clone())
                        };
                        next.reservation = Some(Reservation { holder, kind });
                    }
                }
            }
            SA_RELEASE => {
                let Some(i) = me else {
                    return Err(Failure::ReservationConflict);
                };
                if key != next.registrations[i].key {
                    return Err(Failure::ReservationConflict);
                }
                if let Some(res) = next.reservation.clone() {
                    if next.is_holder(nexus) {
                        if res.kind != kind {
                            return Err(sense::INVALID_RELEASE_OF_PR.into());
                        }
                        next.reservation = None;
                        if registrants_only(res.kind) || all_registrants(res.kind) {
                            for r in &next.registrations {
                                uas.push((
                                    r.id.clone(),
                                    Some(nexus.clone()),
                                    sense::UA_RESERVATIONS_RELEASED,
                                ));
                            }
                        }
                    }
                }
            }
            SA_CLEAR => {
                let Some(i) = me else {
                    return Err(Failure::ReservationConflict);
                };
                if key != next.registrations[i].key {
                    return Err(Failure::ReservationConflict);
                }
                for r in &next.registrations {
                    uas.push((
                        r.id.clone(),
                        Some(nexus.clone()),
                        sense::UA_RESERVATIONS_PREEMPTED,
                    ));
                }
                // Admissions are registrations too, and CLEAR removes every
                // one: the wire can take access away, never give it.
                for a in &next.admitted {
                    uas.push((
                        RegId::of_name(&a.name),
                        Some(nexus.clone()),
                        sense::UA_RESERVATIONS_PREEMPTED,
                    ));
                }
                next.registrations.clear();
                next.admitted.clear();
                next.reservation = None;
                next.bump();
            }
            _ => {
                let Some(i) = me else {
                    return Err(Failure::ReservationConflict);
                };
                if key != next.registrations[i].key {
                    return Err(Failure::ReservationConflict);
                }
                preempt(&mut next, i, nexus, sa_key, kind, &mut uas)?;
                next.bump();
            }
        }

        if next != *st {
            // A managed unit is saved on every change: its file holds the
            // admissions, which must not go back to an older generation.
            if next.aptpl || st.aptpl || next.managed {
                if let Some(p) = &self.path {
                    save(p, &next).map_err(|e| {
                        tracing::error!(path = %p.display(), error = %e, "persisting reservations failed");
                        Failure::Check(sense::INTERNAL_TARGET_FAILURE)
                    })?;
                }
            }
            *st = next;
            self.reserved.store(st.guards(), Ordering::Release);
        }
        drop(st);
        for (id, except, s) in uas {
            ua.establish_where(s, |n| id.matches(n) && except.as_ref() != Some(n));
        }
        Ok(Vec::new())
    }

    /// Management: lets every I_T nexus of the iSCSI initiator `name` (any
    /// ISID, any target port) at the medium, listed under `key` (non-zero),
    /// and makes the unit managed (see the module comment). Idempotent;
    /// persisted before it takes effect.
    pub fn admit(&self, name: &str, key: u64) -> Result<(), Error> {
        let mut st = self.state.lock();
        let mut next = st.clone();
        next.managed = true;
        match next
            .admitted
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(name))
        {
            Some(a) if a.key == key => {}
            Some(a) => {
                a.key = key;
                next.bump();
            }
            None => {
                next.admitted.push(Admission {
                    name: name.to_string(),
                    key,
                });
                next.bump();
            }
        }
        self.commit(&mut st, next)
    }

    /// Management: removes the admissions listed under `key`, as a PREEMPT
    /// by the target's own authority would, together with the wire
    /// registrations of those initiators (releasing a reservation they
    /// held). Their nexuses get REGISTRATIONS PREEMPTED and from then on
    /// RESERVATION CONFLICT. Returns whether anything was admitted under `key`.
    pub fn revoke(&self, key: u64, ua: &UnitAttentions) -> Result<bool, Error> {
        let mut st = self.state.lock();
        let mut next = st.clone();
        let names: Vec<String> = next
            .admitted
            .iter()
            .filter(|a| a.key == key)
            .map(|a| a.name.clone())
            .collect();
        if names.is_empty() {
            return Ok(false);
        }
        next.admitted.retain(|a| a.key != key);
        let of_names = |initiator_port: &str| {
            let n = port_name(initiator_port);
            names.iter().any(|x| x.eq_ignore_ascii_case(n))
        };
        let mut uas = Vec::new();
        // The target itself preempts: no nexus is exempt from the UAs.
        let by = Nexus {
            initiator_port: String::new(),
            target_port: String::new(),
        };
        while let Some(i) = next
            .registrations
            .iter()
            .position(|r| of_names(&r.id.initiator))
        {
            next.unregister(i, &mut uas, &by);
        }
        next.bump();
        self.commit(&mut st, next)?;
        drop(st);
        ua.establish_where(sense::UA_REGISTRATIONS_PREEMPTED, |n| {
            of_names(&n.initiator_port)
        });
        for (id, except, s) in uas {
            ua.establish_where(s, |n| id.matches(n) && except.as_ref() != Some(n));
        }
        Ok(true)
    }

    /// Management: the admitted names and their keys.
    pub fn admitted(&self) -> Vec<(String, u64)> {
        self.state
            .lock()
            .admitted
            .iter()
            .map(|a| (a.name.clone(), a.key))
            .collect()
    }

    fn commit(
        &self,
        st: &mut parking_lot::MutexGuard<'_, PrState>,
        next: PrState,
    ) -> Result<(), Error> {
        if next == **st {
            return Ok(());
        }
        if let Some(p) = &self.path {
            save(p, &next).map_err(|e| Error::PrState {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        }
        **st = next;
        self.reserved.store(st.guards(), Ordering::Release);
        Ok(())
    }
}

/// PREEMPT / PREEMPT AND ABORT (SPC-4 5.13.11.2.4). Tasks are never queued in this
/// device, so there is nothing extra to abort.
fn preempt(
    st: &mut PrState,
    me: usize,
    nexus: &Nexus,
    sa_key: u64,
    kind: u8,
    uas: &mut Vec<(RegId, Option<Nexus>, Sense)>,
) -> Result<(), Failure> {
    let my_id = st.registrations[me].id.clone();
    let my_name = port_name(&nexus.initiator_port).to_string();
    // Admissions are preempted like registrations, except the preempting
    // nexus's own (it does not remove its own registration either).
    let other_admission = |a: &Admission| !a.name.eq_ignore_ascii_case(&my_name);
    let remove_key =
        |st: &mut PrState, uas: &mut Vec<(RegId, Option<Nexus>, Sense)>, key: u64| -> usize {
            let before = st.registrations.len() + st.admitted.len();
            let mut removed = Vec::new();
            st.registrations.retain(|r| {
                let gone = r.key == key && r.id != my_id;
                if gone {
                    removed.push(r.id.clone());
                }
                !gone
            });
            st.admitted.retain(|a| {
                let gone = a.key == key && other_admission(a);
                if gone {
                    removed.push(RegId::of_name(&a.name));
                }
                !gone
            });
            for id in removed {
                uas.push((id, None, sense::UA_REGISTRATIONS_PREEMPTED));
            }
            before - st.registrations.len() - st.admitted.len()
        };
    let res = st.reservation.clone();
    match res {
        Some(res) if all_registrants(res.kind) && sa_key == 0 => {
            if !valid_type(kind) {
                return Err(Sense::invalid_cdb_field(2, Some(3)).into());
            }
            let others: Vec<RegId> = st
                .registrations
                .iter()
                .filter(|r| r.id != my_id)
                .map(|r| r.id.clone())
                .collect();
            st.registrations.retain(|r| r.id == my_id);
            let others: Vec<RegId> = others
                .into_iter()
                .chain(
                    st.admitted
                        .iter()
                        .filter(|a| other_admission(a))
                        .map(|a| RegId::of_name(&a.name)),
                )
                .collect();
            st.admitted.retain(|a| !other_admission(a));
            for id in others {
                uas.push((id, None, sense::UA_REGISTRATIONS_PREEMPTED));
            }
            let holder = if all_registrants(kind) {
                None
            } else {
                Some(my_id)
            };
            st.reservation = Some(Reservation { holder, kind });
        }
        Some(res) if !all_registrants(res.kind) && sa_key == st.reservation_key() => {
            if !valid_type(kind) {
                return Err(Sense::invalid_cdb_field(2, Some(3)).into());
            }
            remove_key(st, uas, sa_key);
            let holder = if all_registrants(kind) {
                None
            } else {
                Some(my_id.clone())
            };
            st.reservation = Some(Reservation { holder, kind });
            if kind != res.kind {
                for r in &st.registrations {
                    if r.id != my_id {
                        uas.push((
                            r.id.clone(),
                            Some(nexus.clone()),
                            sense::UA_RESERVATIONS_RELEASED,
                        ));
                    }
                }
            }
        }
        _ => {
            // No reservation is affected: only registrations holding SA_KEY go.
            if sa_key == 0 {
                return Err(Sense::invalid_param_field(8, None).into());
            }
            if remove_key(st, uas, sa_key) == 0 {
                return Err(Failure::ReservationConflict);
            }
        }
    }
    Ok(())
}

/// An iSCSI TransportID (SPC-4 7.6.4.6): format 01b with the ",i,0x<ISID>" port
/// name when the initiator port has one, else format 00b with the name alone.
fn transport_id(initiator_port: &str) -> Vec<u8> {
    let format = if initiator_port.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let mut name: Vec<u8> = initiator_port.bytes().take(1000).collect();
    name.push(0);
    while name.len() < 20 || name.len() % 4 != 0 {
        name.push(0);
    }
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// temp file, fsync, rename, fsync of the directory: the state on disk is always
/// either the old or the new one.
fn save(path: &Path, st: &PrState) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_forms() {
        let t = transport_id("iqn.x,i,0x123");
        assert_eq!(t[0], 0x45);
        assert_eq!(t.len() % 4, 0);
        assert!(t.len() >= 24);
        assert_eq!(usize::from(u16::from_be_bytes([t[2], t[3]])), t.len() - 4);
        let t = transport_id("iqn.x");
        assert_eq!(t[0], 0x05);
    }

    #[test]
    fn access_classes() {
        let c = |b: &[u8]| Cdb::parse(b).unwrap();
        assert_eq!(access_class(&c(&[0x12, 0, 0, 0, 0, 0])), Access::Allowed);
        assert_eq!(
            access_class(&c(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            Access::Read
        );
        assert_eq!(
            access_class(&c(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            Access::Write
        );
        assert_eq!(access_class(&c(&[0x1b, 0, 0, 0, 1, 0])), Access::Allowed);
        assert_eq!(access_class(&c(&[0x1b, 0, 0, 0, 0, 0])), Access::Write);
        assert_eq!(access_class(&c(&[0x1e, 0, 0, 0, 1, 0])), Access::Write);
    }
}
