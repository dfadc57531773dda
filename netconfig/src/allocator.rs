use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::IpamError;
use crate::plan::SubnetPlan;

/// In-memory stand-in for the stack manager's database-backed allocation,
/// for tests, simulations and the rack planner.
///
/// A single mutex around the set makes "find first free, then take it" one
/// atomic step, which is what the database's UNIQUE constraint plus retry
/// achieves in production. Each allocation costs O(allocated) (see
/// [`SubnetPlan::first_free`]), which is fine at these scales.
#[derive(Debug)]
pub struct Allocator {
    plan: SubnetPlan,
    allocated: Mutex<BTreeSet<IpAddr>>,
}

impl Allocator {
    pub fn new(plan: SubnetPlan) -> Self {
        Allocator {
            plan,
            allocated: Mutex::new(BTreeSet::new()),
        }
    }

    /// Takes the lowest free address, so results are deterministic for a
    /// given history, which keeps simulations and tests reproducible.
    pub fn allocate(&self) -> Result<IpAddr, IpamError> {
        let mut set = self.lock();
        let a = self.plan.first_free(&set)?;
        set.insert(a);
        Ok(a)
    }

    /// Claims a caller-chosen address (fixed IPs, importing existing state).
    pub fn allocate_specific(&self, a: IpAddr) -> Result<(), IpamError> {
        let mut set = self.lock();
        self.plan.check_specific(a, &set)?;
        set.insert(a);
        Ok(())
    }

    /// Returns whether `a` was allocated, so callers can detect double frees
    /// without a separate query.
    pub fn release(&self, a: IpAddr) -> bool {
        self.lock().remove(&a)
    }

    /// Number of addresses currently held.
    pub fn allocated(&self) -> usize {
        self.lock().len()
    }

    pub fn plan(&self) -> &SubnetPlan {
        &self.plan
    }

    /// Poisoning is ignored: no critical section here can leave the set
    /// half-updated (each does at most one insert or remove), so a panic in
    /// another thread is no reason to make every later call panic too.
    fn lock(&self) -> MutexGuard<'_, BTreeSet<IpAddr>> {
        self.allocated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
