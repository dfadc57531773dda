//! The machine lifecycle, as one transition function: which request or
//! report moves a machine from which state to which. Everything else (the
//! API, boot decisions, callbacks, the timeout sweeper) asks this module,
//! so an illegal move is refused the same way wherever it comes from.
//!
//! ```text
//!            commission              inventory
//!   NEW ───────────────▶ COMMISSIONING ─────────▶ READY ◀──────────┐
//!    ▲                      │ timeout/failure      │ deploy        │ powered off
//!    │ mark_fixed           ▼                      ▼               │
//!  BROKEN         FAILED_COMMISSIONING       DEPLOYING ──▶ DEPLOYED ──release──▶ RELEASING
//!    ▲ mark_broken (any)   │ commission          │ timeout/failure               │ timeout
//!    │                     └─▶ COMMISSIONING     ▼                               ▼
//!    │                                     FAILED_DEPLOYMENT ─release/deploy─▶   BROKEN
//!  RESCUE ◀─rescue─ READY | DEPLOYED | BROKEN | FAILED_*;  exit_rescue ─▶ the state it came from
//! ```
//!
//! DEPLOYING has steps that are not states (each is an event in the
//! history): the image is written (from then on the machine boots from its
//! disk); with post-install, the installed system phones home, the
//! provisioner installs keys, agent and config over SSH, and the machine is
//! DEPLOYED only once its agent is up in the stack manager. The deploying
//! timeout covers all of it.

use std::time::Duration;

use api::provision::MachineState::{self, *};

/// What can happen to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Commission,
    Deploy,
    Release,
    MarkBroken,
    MarkFixed,
    Rescue,
    /// Leave rescue for the state the machine was in before.
    ExitRescue(MachineState),
    /// The ephemeral environment reported the hardware.
    InventoryReported,
    /// The deploy environment wrote the image.
    Deployed,
    /// The environment reported a failure.
    Failed,
    /// The machine is off (after a release).
    PoweredOff,
    /// The in-progress state's deadline passed.
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a machine that is {} cannot {what}", from.as_str())]
pub struct IllegalTransition {
    pub from: MachineState,
    pub what: &'static str,
}

fn describe(e: Event) -> &'static str {
    match e {
        Event::Commission => "be commissioned",
        Event::Deploy => "be deployed",
        Event::Release => "be released",
        Event::MarkBroken => "be marked broken",
        Event::MarkFixed => "be marked fixed",
        Event::Rescue => "enter rescue",
        Event::ExitRescue(_) => "exit rescue",
        Event::InventoryReported => "report an inventory",
        Event::Deployed => "report a finished deployment",
        Event::Failed => "report a failure",
        Event::PoweredOff => "finish releasing",
        Event::TimedOut => "time out",
    }
}

/// The state `event` moves a machine in `from` to, or why it may not.
pub fn next(from: MachineState, event: Event) -> Result<MachineState, IllegalTransition> {
    let to = match (from, event) {
        (New | Ready | FailedCommissioning, Event::Commission) => Some(Commissioning),
        (Ready | FailedDeployment, Event::Deploy) => Some(Deploying),
        (Deployed | FailedDeployment | Deploying, Event::Release) => Some(Releasing),
        (s, Event::MarkBroken) if s != Broken => Some(Broken),
        (Broken, Event::MarkFixed) => Some(New),
        (Ready | Deployed | Broken | FailedCommissioning | FailedDeployment, Event::Rescue) => {
            Some(Rescue)
        }
        (Rescue, Event::ExitRescue(back)) if back != Rescue => Some(back),
        (Commissioning, Event::InventoryReported) => Some(Ready),
        (Deploying, Event::Deployed) => Some(Deployed),
        (Commissioning, Event::Failed | Event::TimedOut) => Some(FailedCommissioning),
        (Deploying, Event::Failed | Event::TimedOut) => Some(FailedDeployment),
        (Releasing, Event::PoweredOff) => Some(Ready),
        (Releasing, Event::TimedOut) => Some(Broken),
        _ => None,
    };
    to.ok_or(IllegalTransition {
        from,
        what: describe(event),
    })
}

/// How long each in-progress state may last.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub commissioning: Duration,
    pub deploying: Duration,
    pub releasing: Duration,
}

impl Timeouts {
    /// The deadline of `state`, if it is an in-progress state.
    pub fn of(&self, state: MachineState) -> Option<Duration> {
        match state {
            Commissioning => Some(self.commissioning),
            Deploying => Some(self.deploying),
            Releasing => Some(self.releasing),
            _ => None,
        }
    }
}

/// Whether a machine in `state` that PXE-boots gets the ephemeral
/// environment (and in which mode) or is told to boot from its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootChoice {
    Commission,
    Deploy,
    Rescue,
    LocalDisk,
}

/// `image_written`: a deploying machine whose image is on its disk boots
/// that (post-install follows), rather than writing it again.
pub fn boot_choice(state: MachineState, image_written: bool) -> BootChoice {
    match state {
        Deploying if image_written => BootChoice::LocalDisk,
        // An unknown or new machine is inventoried as soon as it boots:
        // auto-discovery leads straight into commissioning.
        New | Commissioning => BootChoice::Commission,
        Deploying => BootChoice::Deploy,
        Rescue => BootChoice::Rescue,
        _ => BootChoice::LocalDisk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [MachineState; 10] = MachineState::ALL;

    #[test]
    fn a_written_image_boots_from_disk_while_post_install_runs() {
        assert_eq!(boot_choice(Deploying, false), BootChoice::Deploy);
        assert_eq!(boot_choice(Deploying, true), BootChoice::LocalDisk);
        assert_eq!(boot_choice(Commissioning, true), BootChoice::Commission);
        assert_eq!(boot_choice(Deployed, false), BootChoice::LocalDisk);
    }

    #[test]
    fn the_happy_path() {
        let mut s = New;
        for e in [
            Event::Commission,
            Event::InventoryReported,
            Event::Deploy,
            Event::Deployed,
            Event::Release,
            Event::PoweredOff,
        ] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, Ready);
    }

    #[test]
    fn every_in_progress_state_times_out_to_a_failure() {
        let t = Timeouts {
            commissioning: Duration::from_secs(1),
            deploying: Duration::from_secs(1),
            releasing: Duration::from_secs(1),
        };
        for s in ALL {
            match t.of(s) {
                Some(_) => {
                    let to = next(s, Event::TimedOut).unwrap();
                    assert!(
                        matches!(to, FailedCommissioning | FailedDeployment | Broken),
                        "{s:?}"
                    );
                }
                None => assert!(next(s, Event::TimedOut).is_err(), "{s:?} cannot time out"),
            }
        }
    }

    #[test]
    fn illegal_moves_are_refused_with_a_reason() {
        let e = next(New, Event::Deploy).unwrap_err();
        assert_eq!(e.to_string(), "a machine that is new cannot be deployed");
        assert!(next(Deployed, Event::Commission).is_err());
        assert!(
            next(Ready, Event::Deployed).is_err(),
            "a stray callback moves nothing"
        );
        assert!(next(Broken, Event::MarkBroken).is_err());
        assert!(next(Rescue, Event::ExitRescue(Rescue)).is_err());
    }

    #[test]
    fn anything_but_broken_can_be_marked_broken_and_rescue_returns() {
        for s in ALL.into_iter().filter(|s| *s != Broken) {
            assert_eq!(next(s, Event::MarkBroken).unwrap(), Broken);
        }
        assert_eq!(next(Rescue, Event::ExitRescue(Deployed)).unwrap(), Deployed);
    }
}
