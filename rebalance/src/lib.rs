//! The rebalancing planner: which instances to live-migrate, and where, so
//! that every hypervisor's vCPU and RAM allocation ends within a band around
//! the cloud-wide mean, with as few moves as a greedy can find.
//!
//! Pure: no I/O, no clock, no database. The stack manager loads hosts and
//! instances from its store into a [`Cloud`], calls [`plan`], and runs the
//! returned [`Plan::moves`] (see [`Move::depends_on`] for what the order
//! means to an executor that runs several at once). It runs when hosts are
//! added, on demand, and when [`Plan::hosts_outside_before`] of a dry run
//! says the cloud has drifted out of the band.
//!
//! # What "balanced" means
//!
//! A host's *share* in a dimension is its allocation divided by its
//! effective capacity (`capacity × allocation ratio`, what the scheduler
//! fills up to). The *mean* is the cloud-wide allocation over the
//! cloud-wide effective capacity of the hosts that count ([`HostState::Active`]
//! with non-zero capacity), where the allocation includes what must arrive
//! from draining hosts: it is the share every host would have if the cloud
//! were perfectly level, so the band is reachable in principle. A host is
//! within the band when both its shares are within `mean ± band`.
//!
//! # Rules every plan keeps, at every step
//!
//! - capacity: a target's allocation plus the instance's demand never
//!   exceeds its effective capacity, in both dimensions;
//! - hard anti-affinity: a target never holds another member of the
//!   instance's group (a group that already shares a host is not repaired,
//!   but never made worse);
//! - only [`HostState::Active`] hosts receive instances; instances only
//!   leave active and draining hosts (disabled and down hosts are out of
//!   the rebalancer's hands: a down host is the evacuator's);
//! - [`Relocation::Never`] instances never move;
//! - every movable instance on a draining host moves off (or is reported in
//!   [`Plan::stuck`]).
//!
//! Rack spread is a preference: among moves of equal balance gain (within
//! [`EQUAL_GAIN`]), one that does not concentrate the instance's group on
//! fewer racks wins, then the one whose target rack holds fewest members.
//!
//! # Algorithm and complexity
//!
//! 1. Drain: movable instances on draining hosts, largest first, each to the
//!    feasible target whose balance suffers least (preferring hosts below
//!    the band).
//! 2. Balance: while a host is above the band, take the most over-loaded
//!    one and move off it the instance whose move gains most (the source's
//!    excess plus the target's deficit it removes), to the best of a few
//!    candidate targets: the most under-loaded hosts and the hosts with the
//!    most room. When no host is above but one is below, fill the most
//!    under-loaded from the donors with the most surplus (overall, in the
//!    dimension it lacks, and per instance size: the best donor of every
//!    size that fits its gap). A move must lower the sum of every host's
//!    distance outside the band (the potential), by at least 1 percentage
//!    point if it pushes its source below or its target above the band, so
//!    the loop ends. Where no single move helps a host, a pair is tried: one
//!    instance out, then one in (a host under in RAM with its vCPU at the
//!    upper edge needs a vCPU-heavy instance gone first). A host for which
//!    nothing works is set aside; a later pass retries it if the pass moved
//!    anything.
//!
//! The hosts are kept in ordered sets (by excess, deficit, room and surplus
//! per dimension, and per instance size the donors) updated in O(f log H)
//! per move (f: sizes on a host). Each move evaluates a few `candidates`
//! hosts against the few instances of one host, plus one donor per size
//! (sizes: distinct movable demands, at most 64 indexed). A plan costs
//! O((H + I) log H) to set up (H hosts, I instances) plus
//! O(M · (c · k + F) · log H) for M moves, c candidates, k instances per
//! host and F sizes — never O(H) per move, except a drain instance that fits
//! none of the candidates, which falls back to a scan of every host.
//!
//! [`Plan::lower_bound`] is a proven lower bound on the moves of any plan
//! that ends within the band (see `bound.rs`), so `moves / lower_bound`
//! bounds how far the greedy is from optimal.

mod bound;
mod planner;
mod ranked;
#[cfg(test)]
mod tests;
mod world;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Index of a host in [`Cloud::hosts`]. The caller keeps the mapping from
/// its own ids (UUIDs in the store) to these indices.
pub type HostIx = u32;
/// Index of an instance in [`Cloud::instances`].
pub type InstanceIx = u32;

/// Balance gains (in share units summed over hosts and dimensions) closer
/// than this are "equal" moves, among which rack spread decides: 0.1
/// percentage point is far below what one instance changes and far above
/// floating-point noise.
pub const EQUAL_GAIN: f64 = 1e-3;

/// Everything the planner looks at.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Cloud {
    pub hosts: Vec<Host>,
    pub instances: Vec<Instance>,
}

/// One hypervisor.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Host {
    /// Opaque rack identity; only compared for equality (rack spread).
    pub rack: u32,
    pub vcpus: u32,
    pub ram_mib: u64,
    /// vCPU allocation ratio: the host takes up to `vcpus × cpu_ratio`.
    pub cpu_ratio: f64,
    /// RAM allocation ratio: the host takes up to `ram_mib × ram_ratio`.
    pub ram_ratio: f64,
    pub state: HostState,
}

/// Whether a host takes work, as the rebalancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum HostState {
    /// Takes new work; counts toward the band.
    Active,
    /// Takes no new work; keeps its instances; not counted.
    Disabled,
    /// Takes no new work; every movable instance must leave it.
    Draining,
    /// Unreachable: nothing is moved to or from it (evacuation is not
    /// rebalancing); not counted.
    Down,
}

/// One instance and what it asks of its host.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Instance {
    pub host: HostIx,
    pub vcpus: u32,
    pub ram_mib: u64,
    /// Hard anti-affinity group: no two members on one host, ever.
    pub group: Option<u32>,
    pub policy: Relocation,
}

/// Whether the rebalancer may live-migrate an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Relocation {
    Allow,
    Never,
}

/// Tuning of [`plan`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct Options {
    /// Half-width of the band around the mean, as a share (0.10 = ±10
    /// percentage points), the same in both dimensions. Default 0.10.
    pub band: f64,
    /// How many targets of each kind (most under-loaded, most room) or
    /// sources (most surplus) a move considers. More finds better moves
    /// where anti-affinity or sizes block the first few, at linear cost.
    /// Default 8; at least 1 is used.
    pub candidates: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            band: 0.10,
            candidates: 8,
        }
    }
}

/// One live migration.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Move {
    pub instance: InstanceIx,
    pub from: HostIx,
    pub to: HostIx,
    pub reason: MoveReason,
    /// Indices into [`Plan::moves`] of the earlier moves that must have
    /// *completed* before this one starts: every earlier move off this
    /// move's target (it may need the room or the anti-affinity slot they
    /// free) and the previous move of the same instance.
    ///
    /// Order matters: the plan is checked step by step in its order, and a
    /// move may fit only because an earlier one made room. Running the moves
    /// strictly in order is always safe. Running several at once is safe
    /// too if a move starts only after its `depends_on` completed, even
    /// while a migrating instance holds resources on both hosts: the load
    /// on any target `t` is then at most its allocation after the latest
    /// started move into `t` in the sequential plan (every earlier
    /// departure from `t` completed, no later arrival started), which the
    /// plan checked. Any prefix of the plan is itself a valid plan, so an
    /// executor may also stop after a batch.
    pub depends_on: Vec<usize>,
}

/// Why a move is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MoveReason {
    /// Off a draining host.
    Drain,
    /// Toward the band.
    Balance,
}

/// Allocation as a share of effective capacity, per dimension.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Utilization {
    pub vcpu: f64,
    pub ram: f64,
}

/// Where a host stands against the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Standing {
    Within,
    Outside,
    /// Not part of the band: not active, or no capacity.
    NotCounted,
}

/// One host before and after the plan, index-aligned with [`Cloud::hosts`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct HostReport {
    pub before: Utilization,
    pub after: Utilization,
    pub standing_before: Standing,
    pub standing_after: Standing,
}

/// The band the plan aims at, as shares.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Band {
    pub mean: Utilization,
    pub lower: Utilization,
    pub upper: Utilization,
}

/// An instance the plan had to handle and could not.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Stuck {
    pub instance: InstanceIx,
    pub reason: StuckReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum StuckReason {
    /// On a draining host, but its relocation policy is `never`.
    RelocationNever,
    /// On a draining host, and no active host has room for it without
    /// breaking its anti-affinity group.
    NoTarget,
    /// Its host index is not in [`Cloud::hosts`]; the instance is ignored.
    UnknownHost,
}

/// What [`plan`] returns.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct Plan {
    /// In an order that is executable step by step (see
    /// [`Move::depends_on`]).
    pub moves: Vec<Move>,
    pub hosts: Vec<HostReport>,
    pub band: Band,
    /// No plan that ends with every counted host within the band and every
    /// draining host empty of movable instances has fewer moves.
    pub lower_bound: usize,
    /// Every counted host ends within the band.
    pub within_band: bool,
    pub hosts_outside_before: usize,
    pub hosts_outside_after: usize,
    pub stuck: Vec<Stuck>,
}

/// Plans the moves; see the crate documentation.
pub fn plan(cloud: &Cloud, options: &Options) -> Plan {
    planner::plan(cloud, options)
}
