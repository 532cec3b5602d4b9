//! Events the VMM thread receives from the vCPU threads and devices.

use vm_memory::GuestAddress;

use crate::arch::x86_64::regs::RegisterDump;
use crate::exit::VcpuStop;

/// One event on the VM's event channel ([`crate::vm::Vm::wait_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest is ready; its descriptor is at this GPA.
    Ready {
        /// Where the descriptor is.
        descriptor: GuestAddress,
    },
    /// The guest is done; `status` 0 means success.
    Done {
        /// The guest's status.
        status: u64,
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
        /// Where the round record is ([`crate::guest::RoundRecord`]).
        record: GuestAddress,
    },
    /// A vCPU parked itself (debug-port PARK): it stays stopped at its `OUT`
    /// until [`crate::vm::Vm::resume_vcpu`] (or [`crate::vm::Vm::resume`] after a pause).
    Parked {
        /// Which vCPU.
        vcpu: u8,
        /// The argument latch at the time.
        argument: u64,
    },
    /// The guest sent an event code the protocol does not define.
    UnknownEvent {
        /// The code.
        code: u32,
        /// The argument latch at the time.
        argument: u64,
    },
    /// A vCPU stopped for good (its thread still answers state requests).
    VcpuStopped {
        /// Which vCPU.
        vcpu: u8,
        /// Why.
        stop: VcpuStop,
        /// Its registers when it stopped, when they could be read.
        dump: Option<Box<RegisterDump>>,
    },
}
