//! What the iSCSI target serves: one target per volume (its IQN), LUN 0
//! backed by the volume's logical unit, with the volume's CHAP account and
//! initiator ACL. This is the glue between the transport (`iscsi`) and the
//! device (`scsi`); both crates stay ignorant of each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use iscsi::{Auth, Registry, ScsiOutcome, Target, TmFunction, TmResponse};
use scsi::{DataDirection, LogicalUnit};

/// The persistent reservation key an initiator is admitted under on every
/// volume: the first 8 bytes of SHA-256 of its IQN, so it is the same on
/// every storage node and across restarts without being stored anywhere;
/// never 0, which SPC reserves for "no key".
pub fn initiator_key(iqn: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(iqn.as_bytes());
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    match u64::from_be_bytes(k) {
        0 => 1,
        k => k,
    }
}

/// Brings the logical unit's admissions (its target-side fence, see the
/// `scsi` crate) in line with `allowed`: admits each allowed initiator under
/// [`initiator_key`], and revokes every other admission — including ones
/// persisted before a restart, which no in-memory ACL remembers. Returns
/// the names revoked. Call it with the new initiators admitted before the
/// ACL lets them log in, and the revocations before their sessions close.
pub fn fence(lu: &LogicalUnit, allowed: &[String]) -> Result<Vec<String>, scsi::Error> {
    for i in allowed {
        lu.admit(i, initiator_key(i))?;
    }
    let mut revoked = Vec::new();
    for (name, key) in lu.admitted() {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
            lu.revoke(key)?;
            revoked.push(name);
        }
    }
    Ok(revoked)
}

/// Who may log in to one target, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub chap_user: String,
    pub chap_secret: String,
    /// Initiator IQNs admitted; empty admits nobody.
    pub allowed_initiators: Vec<String>,
}

pub struct Export {
    iqn: String,
    lu: Arc<LogicalUnit>,
    /// Cleared when the export is removed or replaced: a session that
    /// logged in through it (even one whose login raced the removal) then
    /// gets no further access.
    live: AtomicBool,
    access: RwLock<Access>,
    /// SCSI-level names of the sessions' I_T nexuses, built once per
    /// session rather than formatted on every command.
    nexuses: RwLock<HashMap<iscsi::Nexus, scsi::Nexus>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// ACCESS DENIED - NO ACCESS RIGHTS (SPC-4).
const ACCESS_DENIED: scsi::sense::Sense =
    scsi::sense::Sense::new(scsi::sense::key::ILLEGAL_REQUEST, 0x20, 0x02);

fn scsi_nexus(n: &iscsi::Nexus) -> scsi::Nexus {
    scsi::Nexus {
        initiator_port: n.initiator_port(),
        target_port: n.target_port(),
    }
}

impl Export {
    fn nexus(&self, n: &iscsi::Nexus) -> scsi::Nexus {
        if let Some(s) = read(&self.nexuses).get(n) {
            return s.clone();
        }
        scsi_nexus(n)
    }
}

impl Target for Export {
    fn name(&self) -> &str {
        &self.iqn
    }

    fn auth(&self) -> Auth {
        let a = read(&self.access);
        if a.chap_user.is_empty() {
            Auth::None
        } else {
            Auth::Chap {
                user: a.chap_user.clone(),
                secret: a.chap_secret.clone(),
            }
        }
    }

    fn allows(&self, initiator: &str) -> bool {
        read(&self.access)
            .allowed_initiators
            .iter()
            .any(|i| i == initiator)
    }

    fn execute(
        &self,
        nexus: &iscsi::Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expected_len: u32,
    ) -> ScsiOutcome {
        // Checked on every command, not only at login: a login that raced
        // a detach or delete must not outlive it.
        if !self.live.load(Ordering::Acquire) || !self.allows(&nexus.initiator_name) {
            return ScsiOutcome {
                status: scsi::sense::status::CHECK_CONDITION,
                sense: ACCESS_DENIED.fixed(),
                data: Vec::new(),
            };
        }
        let r = if lun == 0 {
            // Many commands in flight: a replicated change completes at
            // the barrier, before the batch's responses are sent.
            scsi::defer_completion(|| {
                self.lu
                    .execute(&self.nexus(nexus), cdb, data_out, expected_len)
            })
        } else {
            scsi::lun_not_supported(cdb, expected_len)
        };
        ScsiOutcome {
            status: r.status,
            sense: r.sense,
            data: r.data,
        }
    }

    fn transfer_length(&self, lun: u64, cdb: &[u8]) -> Option<u32> {
        if lun != 0 {
            return None;
        }
        match self.lu.transfer(cdb) {
            DataDirection::None => Some(0),
            DataDirection::In(n) | DataDirection::Out(n) => Some(n),
        }
    }

    fn task_management(&self, nexus: &iscsi::Nexus, lun: u64, function: TmFunction) -> TmResponse {
        match function {
            TmFunction::LogicalUnitReset if lun != 0 => TmResponse::LunDoesNotExist,
            TmFunction::LogicalUnitReset
            | TmFunction::TargetWarmReset
            | TmFunction::TargetColdReset => {
                self.lu.lun_reset(&self.nexus(nexus));
                TmResponse::Complete
            }
            // Commands run to completion in order, so there is never a
            // task set left to abort or clear by the time this arrives.
            TmFunction::AbortTask | TmFunction::AbortTaskSet | TmFunction::ClearTaskSet => {
                TmResponse::Complete
            }
            TmFunction::ClearAca => TmResponse::NotSupported,
            TmFunction::TaskReassign => TmResponse::ReassignmentNotSupported,
        }
    }

    fn session_opened(&self, nexus: &iscsi::Nexus) {
        let s = scsi_nexus(nexus);
        self.lu.nexus_added(&s);
        write(&self.nexuses).insert(nexus.clone(), s);
    }

    fn barrier(&self) -> Result<(), String> {
        self.lu.barrier().map_err(|e| e.to_string())
    }

    fn session_closed(&self, nexus: &iscsi::Nexus) {
        if let Some(s) = write(&self.nexuses).remove(nexus) {
            self.lu.nexus_removed(&s);
        }
    }
}

/// Every exported volume, by IQN.
#[derive(Default)]
pub struct Exports {
    targets: RwLock<HashMap<String, Arc<Export>>>,
}

impl Exports {
    /// Exports `lu` as `iqn`, or updates the access of an existing export.
    /// Returns the initiators that lost access, whose live sessions the
    /// caller must end.
    pub fn upsert(&self, iqn: &str, lu: &Arc<LogicalUnit>, access: Access) -> Vec<String> {
        let mut targets = write(&self.targets);
        match targets.get(iqn) {
            Some(e) if Arc::ptr_eq(&e.lu, lu) => {
                let mut a = write(&e.access);
                let revoked = a
                    .allowed_initiators
                    .iter()
                    .filter(|i| !access.allowed_initiators.contains(i))
                    .cloned()
                    .collect();
                *a = access;
                revoked
            }
            _ => {
                let old = targets.insert(
                    iqn.to_string(),
                    Arc::new(Export {
                        iqn: iqn.to_string(),
                        lu: lu.clone(),
                        live: AtomicBool::new(true),
                        access: RwLock::new(access),
                        nexuses: RwLock::new(HashMap::new()),
                    }),
                );
                if let Some(old) = old {
                    old.live.store(false, Ordering::Release);
                }
                Vec::new()
            }
        }
    }

    pub fn remove(&self, iqn: &str) -> bool {
        match write(&self.targets).remove(iqn) {
            Some(e) => {
                e.live.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    pub fn access(&self, iqn: &str) -> Option<Access> {
        read(&self.targets)
            .get(iqn)
            .map(|e| read(&e.access).clone())
    }
}

impl Registry for Exports {
    fn discover(&self, initiator: &str) -> Vec<String> {
        let mut names: Vec<String> = read(&self.targets)
            .values()
            .filter(|e| e.allows(initiator))
            .map(|e| e.iqn.clone())
            .collect();
        names.sort();
        names
    }

    fn target(&self, name: &str) -> Option<Arc<dyn Target>> {
        read(&self.targets)
            .get(name)
            .map(|e| e.clone() as Arc<dyn Target>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "iqn.2026-11.io.strato:host-a";
    const B: &str = "iqn.2026-11.io.strato:host-b";

    fn lu(dir: &std::path::Path) -> LogicalUnit {
        let data = dir.join("data");
        std::fs::File::create(&data)
            .and_then(|f| f.set_len(1 << 20))
            .expect("data file");
        LogicalUnit::open(
            &data,
            crate::volumes::device_info(api::ids::VolumeId::new()),
            Some(dir.join("pr.json")),
        )
        .expect("open LU")
    }

    fn nexus(name: &str, isid: &str) -> scsi::Nexus {
        scsi::Nexus {
            initiator_port: format!("{name},i,0x{isid}"),
            target_port: "iqn.2026-11.io.strato:vol-x,t,0x0001".into(),
        }
    }

    fn write(lu: &LogicalUnit, n: &scsi::Nexus) -> u8 {
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        // Twice: the first may only report the nexus's pending unit attention.
        let _ = lu.execute(n, &cdb, &[0; 512], 0);
        lu.execute(n, &cdb, &[0; 512], 0).status
    }

    #[test]
    fn keys_are_stable_distinct_and_never_zero() {
        assert_eq!(initiator_key(A), initiator_key(A));
        assert_ne!(initiator_key(A), initiator_key(B));
        assert_ne!(initiator_key(""), 0);
    }

    /// What the ACL cannot show: a nexus of a fenced host that is still
    /// talking to the logical unit gets RESERVATION CONFLICT.
    #[test]
    fn fence_follows_the_allowed_list_and_outlives_the_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let l = lu(dir.path());
        let a = nexus(A, "23d000000001");
        let b = nexus(B, "23d000000002");
        l.nexus_added(&a);
        l.nexus_added(&b);
        assert!(fence(&l, &[A.into(), B.into()]).expect("fence").is_empty());
        assert_eq!(write(&l, &a), scsi::sense::status::GOOD);
        assert_eq!(write(&l, &b), scsi::sense::status::GOOD);
        // Same IQN, a new ISID (QEMU reconnecting): still admitted.
        assert_eq!(
            write(&l, &nexus(A, "23d000000009")),
            scsi::sense::status::GOOD
        );
        assert_eq!(fence(&l, &[B.into()]).expect("fence"), vec![A.to_string()]);
        assert_eq!(write(&l, &a), scsi::sense::status::RESERVATION_CONFLICT);
        assert_eq!(write(&l, &b), scsi::sense::status::GOOD);
        drop(l);
        // A restart forgets no revocation, and a spec that names nobody
        // leaves nobody writing.
        let l = lu(dir.path());
        assert_eq!(l.admitted(), vec![(B.to_string(), initiator_key(B))]);
        assert_eq!(write(&l, &a), scsi::sense::status::RESERVATION_CONFLICT);
        assert_eq!(fence(&l, &[]).expect("fence"), vec![B.to_string()]);
        assert_eq!(write(&l, &b), scsi::sense::status::RESERVATION_CONFLICT);
    }
}
