//! The built-in guest's protocol on the debug port ([`crate::devices::debug_port`]).
//!
//! The VM core carries signals and command words without reading them; this module says
//! what they mean to the built-in guest (`guest-images/builtin/guest.S`) and to the Linux
//! test guest's programs, which use the same codes.
//!
//! | code | signal | argument |
//! |---|---|---|
//! | 1 | READY | GPA of the guest's [`super::Descriptor`] |
//! | 2 | DONE (the transport's [`SIGNAL_DONE`]) | status, 0 = success |
//! | 3 | HEARTBEAT | iteration count |
//! | 4 | MARK | any value, for tests |
//! | 5 | ROUND_DONE | GPA of the dirty-writer guest's [`super::RoundRecord`] |
//! | 6 | PARK (the transport's [`SIGNAL_PARK`]) | any value (the THP process: its buffer) |
//!
//! Commands the guest reads: 0 keep going, [`COMMAND_FINISH`] (sticky: every later read
//! returns it), [`COMMAND_NEXT_ROUND`] (one-shot: one post starts exactly one round of
//! the dirty-writer guest however often it polls).
//!
//! [`BuiltinProtocol`] gives a [`Vm`] the protocol's waits and commands.

use std::time::Duration;

use vm_memory::GuestAddress;

pub use crate::devices::debug_port::{SIGNAL_DONE, SIGNAL_PARK};
use crate::events::VmEvent;
use crate::vm::{Vm, VmError};

/// Signal READY.
pub const SIGNAL_READY: u32 = 1;
/// Signal HEARTBEAT.
pub const SIGNAL_HEARTBEAT: u32 = 3;
/// Signal MARK.
pub const SIGNAL_MARK: u32 = 4;
/// Signal ROUND_DONE.
pub const SIGNAL_ROUND_DONE: u32 = 5;

/// Command: keep going.
pub const COMMAND_CONTINUE: u32 = 0;
/// Command: finish, report DONE and stop (sticky).
pub const COMMAND_FINISH: u32 = 1;
/// Command: do one more round (dirty-writer guest; one-shot).
pub const COMMAND_NEXT_ROUND: u32 = 2;

/// A [`VmEvent::Signal`] as the built-in guest means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestSignal {
    /// The guest is ready; its descriptor is at this GPA.
    Ready {
        /// Where the descriptor is.
        descriptor: GuestAddress,
    },
    /// The guest is alive after `iteration` iterations.
    Heartbeat {
        /// The guest's iteration count.
        iteration: u64,
    },
    /// A free value from the guest, for tests.
    Mark {
        /// The value.
        value: u64,
    },
    /// The dirty-writer guest finished a round; its record is at this GPA.
    RoundDone {
        /// Where the round record is.
        record: GuestAddress,
    },
    /// A code the protocol does not define.
    Unknown {
        /// The code.
        code: u32,
        /// The argument latch at the time.
        argument: u64,
    },
}

impl GuestSignal {
    /// The meaning of signal `code` with `argument`.
    pub fn decode(code: u32, argument: u64) -> Self {
        match code {
            SIGNAL_READY => Self::Ready {
                descriptor: GuestAddress(argument),
            },
            SIGNAL_HEARTBEAT => Self::Heartbeat {
                iteration: argument,
            },
            SIGNAL_MARK => Self::Mark { value: argument },
            SIGNAL_ROUND_DONE => Self::RoundDone {
                record: GuestAddress(argument),
            },
            _ => Self::Unknown { code, argument },
        }
    }

    /// The guest's signal in `event`, if it is one.
    pub fn of(event: &VmEvent) -> Option<Self> {
        match *event {
            VmEvent::Signal { code, argument } => Some(Self::decode(code, argument)),
            _ => None,
        }
    }
}

/// The built-in guest's protocol, on a running [`Vm`].
pub trait BuiltinProtocol {
    /// Waits for READY and returns the descriptor's GPA; other events before it are
    /// dropped. If the guest stops first, the error ([`VmError::Stopped`]) carries how
    /// it ended.
    fn wait_ready(&self, timeout: Duration) -> Result<GuestAddress, VmError>;

    /// Tells the dirty-writer guest to do one more round.
    fn next_round(&self);

    /// One round of the dirty-writer guests ([`super::GuestMode::Dirty`],
    /// [`super::GuestMode::DirtyBulk`]): NEXT_ROUND, then waits (a hard deadline of
    /// `timeout`, letting parked vCPUs go) for the guest's ROUND_DONE and returns the GPA
    /// of its round record; other events are dropped.
    fn run_round(&self, timeout: Duration) -> Result<GuestAddress, VmError>;

    /// Tells the guest to finish: it reports DONE and halts.
    fn finish(&self);
}

impl BuiltinProtocol for Vm {
    fn wait_ready(&self, timeout: Duration) -> Result<GuestAddress, VmError> {
        self.wait_for(
            timeout,
            "before reporting READY",
            |event| match GuestSignal::of(event) {
                Some(GuestSignal::Ready { descriptor }) => Some(descriptor),
                _ => None,
            },
        )
    }

    fn next_round(&self) {
        self.post_guest_command(COMMAND_NEXT_ROUND);
    }

    fn run_round(&self, timeout: Duration) -> Result<GuestAddress, VmError> {
        self.next_round();
        self.wait_for(timeout, "during a round", |event| {
            match GuestSignal::of(event) {
                Some(GuestSignal::RoundDone { record }) => Some(record),
                _ => None,
            }
        })
    }

    fn finish(&self) {
        self.set_guest_command(COMMAND_FINISH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_to_its_signal() {
        let cases = [
            (
                SIGNAL_READY,
                GuestSignal::Ready {
                    descriptor: GuestAddress(7),
                },
            ),
            (SIGNAL_HEARTBEAT, GuestSignal::Heartbeat { iteration: 7 }),
            (SIGNAL_MARK, GuestSignal::Mark { value: 7 }),
            (
                SIGNAL_ROUND_DONE,
                GuestSignal::RoundDone {
                    record: GuestAddress(7),
                },
            ),
            (
                99,
                GuestSignal::Unknown {
                    code: 99,
                    argument: 7,
                },
            ),
        ];
        for (code, want) in cases {
            assert_eq!(GuestSignal::decode(code, 7), want);
            let event = VmEvent::Signal { code, argument: 7 };
            assert_eq!(GuestSignal::of(&event), Some(want));
        }
        assert_eq!(GuestSignal::of(&VmEvent::Done { status: 0 }), None);
    }
}
