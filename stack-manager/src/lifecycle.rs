//! What a user's action does to an instance: one pure function of the
//! desired state, the observed status and the action, so every rule is in
//! one place and tested over every combination.
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
//! makes the host's agent converge again; a refusal changes nothing and is
//! a 409.

use api::resources::{DesiredState, InstanceStatus};

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
        (A::Start, D::Running, S::Error) => to(D::Running, S::Building, false),
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
}
