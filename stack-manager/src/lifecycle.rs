//! What a user's action does to an instance or a volume: pure functions of
//! the state and the action, so every rule is in one place and tested over
//! every combination. A refusal changes nothing and is a 409.
//!
//! ## Instances
//!
//! ```text
//!                    start                         stop
//!   desired stopped ───────▶ desired running ───────▶ desired stopped
//!                                │    ▲
//!                                └────┘ reboot (status rebooting, reboot_count + 1)
//!
//!   desired running, status error    ── start ──▶ desired running, status building (a retry)
//!   desired running, status stopped  ── start ──▶ desired running  (the guest powered off
//!                                                 by itself or behind the agent's back)
//!   desired stopped, status running  ── stop  ──▶ desired stopped  (started behind its back)
//!   desired deleted                  ── any   ──▶ refused
//! ```
//!
//! Every accepted action bumps the instance's generation, which is what
//! makes the host's agent converge again.
//!
//! ## Volumes
//!
//! ```text
//!              agent confirms            attach
//!   creating ─────────────────▶ available ─────▶ in_use
//!      │                          │  ▲  ◀─────── │
//!      │ agent fails              │  │   detach  │ snapshot (stays in_use)
//!      ▼                          │  └───────────┘
//!    error ──── delete ──▶ deleting ◀── delete ── available, creating, error
//!                            │
//!                            └── storage node confirms ──▶ deleted
//! ```
//!
//! A volume in use can be neither deleted nor attached again; snapshots
//! are taken of an available or in-use volume. The store's conditional
//! updates take their `status IN (…)` from [`VolumeAction::allowed_from`],
//! so the SQL and this table cannot disagree.

use api::internal::{ObservedInstance, ObservedInstanceState, ObservedVolume, ObservedVolumeState};
use api::resources::{DesiredState, InstanceStatus, VolumeStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    Start,
    Stop,
    Reboot,
}

impl InstanceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAction::Start => "start",
            InstanceAction::Stop => "stop",
            InstanceAction::Reboot => "reboot",
        }
    }
}

/// The instance's new desired state and status after an accepted action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub desired: DesiredState,
    pub status: InstanceStatus,
    /// Whether one more reboot is owed by the agent.
    pub reboot: bool,
}

/// An action the instance's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub action: InstanceAction,
    pub desired: DesiredState,
    pub status: InstanceStatus,
}

impl Refusal {
    /// What the user reads: the action, the instance, and why not.
    pub fn message(&self, instance: impl std::fmt::Display) -> String {
        format!(
            "cannot {} instance {instance}: it is {} (desired {})",
            self.action.as_str(),
            self.status.as_str(),
            self.desired.as_str()
        )
    }
}

pub fn instance_action(
    desired: DesiredState,
    status: InstanceStatus,
    action: InstanceAction,
) -> Result<Transition, Refusal> {
    use DesiredState as D;
    use InstanceAction as A;
    use InstanceStatus as S;
    let to = |desired, status, reboot| {
        Ok(Transition {
            desired,
            status,
            reboot,
        })
    };
    match (action, desired, status) {
        (A::Start, D::Stopped, s) => to(D::Running, s, false),
        (A::Start, D::Running, S::Error | S::Crashed) => to(D::Running, S::Building, false),
        (A::Start, D::Running, S::Stopped) => to(D::Running, S::Stopped, false),
        (A::Stop, D::Running, s) => to(D::Stopped, s, false),
        (A::Stop, D::Stopped, S::Running) => to(D::Stopped, S::Running, false),
        (A::Reboot, D::Running, _) => to(D::Running, S::Rebooting, true),
        _ => Err(Refusal {
            action,
            desired,
            status,
        }),
    }
}

/// A user's request on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAction {
    Attach,
    Detach,
    Snapshot,
    Delete,
}

impl VolumeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeAction::Attach => "attach",
            VolumeAction::Detach => "detach",
            VolumeAction::Snapshot => "snapshot",
            VolumeAction::Delete => "delete",
        }
    }

    /// The statuses the action is accepted in.
    pub fn allowed_from(self) -> &'static [VolumeStatus] {
        use VolumeStatus as S;
        match self {
            VolumeAction::Attach => &[S::Available],
            VolumeAction::Detach => &[S::InUse],
            VolumeAction::Snapshot => &[S::Available, S::InUse],
            // Deleting again is accepted: a retried request is not an error.
            VolumeAction::Delete => &[S::Available, S::Error, S::Creating, S::Deleting],
        }
    }

    /// `'a', 'b'` for a SQL `status IN (…)` of [`allowed_from`](Self::allowed_from).
    pub fn allowed_sql(self) -> String {
        self.allowed_from()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A volume action its status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeRefusal {
    pub action: VolumeAction,
    pub status: VolumeStatus,
}

impl VolumeRefusal {
    /// What the user reads: the volume, what it is, and what would do.
    pub fn message(&self, volume: impl std::fmt::Display) -> String {
        let status = self.status.as_str();
        match self.action {
            VolumeAction::Attach => {
                format!("volume {volume} is {status}; only an available volume can be attached")
            }
            VolumeAction::Detach => {
                format!("volume {volume} is {status}; only an in-use volume can be detached")
            }
            VolumeAction::Snapshot => {
                format!("volume {volume} is {status}; snapshots need an available or in-use volume")
            }
            VolumeAction::Delete if self.status == VolumeStatus::InUse => {
                format!("volume {volume} is attached; detach it first")
            }
            VolumeAction::Delete => format!("volume {volume} is {status}; it cannot be deleted"),
        }
    }
}

/// The status a volume has after `action` is accepted.
pub fn volume_action(
    status: VolumeStatus,
    action: VolumeAction,
) -> Result<VolumeStatus, VolumeRefusal> {
    use VolumeAction as A;
    use VolumeStatus as S;
    if !action.allowed_from().contains(&status) {
        return Err(VolumeRefusal { action, status });
    }
    Ok(match action {
        A::Attach => S::InUse,
        A::Detach => S::Available,
        A::Snapshot => status,
        A::Delete => S::Deleting,
    })
}

// What an agent's report means for the row: the observed half of both
// machines.

/// The status an agent's report means: running with a reboot still owed
/// is `rebooting`.
pub fn instance_status(o: &ObservedInstance, desired_reboot_count: u64) -> InstanceStatus {
    match o.state {
        ObservedInstanceState::Building => InstanceStatus::Building,
        ObservedInstanceState::Running if o.reboot_count < desired_reboot_count => {
            InstanceStatus::Rebooting
        }
        ObservedInstanceState::Running => InstanceStatus::Running,
        ObservedInstanceState::Stopped => InstanceStatus::Stopped,
        ObservedInstanceState::Error => InstanceStatus::Error,
        ObservedInstanceState::Crashed => InstanceStatus::Crashed,
        ObservedInstanceState::Unknown => InstanceStatus::Unknown,
    }
}

/// The status a storage node's report means: an available, attached
/// volume is `in_use`.
pub fn volume_status(o: &ObservedVolume, attached: bool) -> VolumeStatus {
    match o.state {
        ObservedVolumeState::Creating => VolumeStatus::Creating,
        ObservedVolumeState::Error => VolumeStatus::Error,
        ObservedVolumeState::Available if attached => VolumeStatus::InUse,
        ObservedVolumeState::Available => VolumeStatus::Available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DesiredState as D;
    use InstanceAction as A;
    use InstanceStatus as S;

    const STATUSES: [InstanceStatus; 7] = [
        S::Building,
        S::Running,
        S::Stopped,
        S::Rebooting,
        S::Error,
        S::Deleting,
        S::Deleted,
    ];

    /// Every combination, against the rules written out one by one.
    #[test]
    fn every_combination_follows_the_diagram() {
        for action in [A::Start, A::Stop, A::Reboot] {
            for desired in [D::Running, D::Stopped, D::Deleted] {
                for status in STATUSES {
                    let want = match (action, desired) {
                        (_, D::Deleted) => None,
                        (A::Start, D::Stopped) => Some((D::Running, status, false)),
                        (A::Start, D::Running) => match status {
                            S::Error => Some((D::Running, S::Building, false)),
                            S::Stopped => Some((D::Running, S::Stopped, false)),
                            _ => None,
                        },
                        (A::Stop, D::Running) => Some((D::Stopped, status, false)),
                        (A::Stop, D::Stopped) => {
                            (status == S::Running).then_some((D::Stopped, S::Running, false))
                        }
                        (A::Reboot, D::Running) => Some((D::Running, S::Rebooting, true)),
                        (A::Reboot, D::Stopped) => None,
                    };
                    let got = instance_action(desired, status, action)
                        .ok()
                        .map(|t| (t.desired, t.status, t.reboot));
                    assert_eq!(
                        got, want,
                        "{action:?} on desired {desired:?}, status {status:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_refusal_says_what_the_instance_is() {
        let e = instance_action(D::Running, S::Running, A::Start).unwrap_err();
        assert_eq!(
            e.message("web-1"),
            "cannot start instance web-1: it is running (desired running)"
        );
    }

    #[test]
    fn every_volume_combination_follows_the_diagram() {
        use VolumeAction as A;
        use VolumeStatus as V;
        let all = [
            V::Creating,
            V::Available,
            V::InUse,
            V::Error,
            V::Deleting,
            V::Deleted,
        ];
        for action in [A::Attach, A::Detach, A::Snapshot, A::Delete] {
            for status in all {
                let want = match (action, status) {
                    (A::Attach, V::Available) => Some(V::InUse),
                    (A::Detach, V::InUse) => Some(V::Available),
                    (A::Snapshot, V::Available | V::InUse) => Some(status),
                    (A::Delete, V::Available | V::Error | V::Creating | V::Deleting) => {
                        Some(V::Deleting)
                    }
                    _ => None,
                };
                assert_eq!(
                    volume_action(status, action).ok(),
                    want,
                    "{action:?} on {status:?}"
                );
            }
        }
        assert_eq!(
            A::Delete.allowed_sql(),
            "'available', 'error', 'creating', 'deleting'"
        );
        assert_eq!(
            volume_action(V::InUse, A::Delete)
                .unwrap_err()
                .message("v1"),
            "volume v1 is attached; detach it first"
        );
        assert_eq!(
            volume_action(V::Creating, A::Attach)
                .unwrap_err()
                .message("v1"),
            "volume v1 is creating; only an available volume can be attached"
        );
    }
}
