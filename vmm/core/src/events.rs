//! Events the VMM thread receives from the vCPU threads and devices.
//!
//! They carry nothing any one guest defines: a guest's own signals arrive as
//! [`VmEvent::Signal`] (code and argument, from the debug port) for the guest's module to
//! interpret ([`crate::guest::protocol`] for the built-in guest).

use crate::arch::x86_64::regs::RegisterDump;
use crate::devices::DebugSignal;
use crate::exit::VcpuStop;

/// One event on the VM's event channel ([`crate::vm::Vm::wait_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest signalled that it is done ([`crate::devices::debug_port::SIGNAL_DONE`]);
    /// `status` 0 means success.
    Done {
        /// The guest's status.
        status: u64,
    },
    /// A signal the VMM does not interpret: the guest's module does.
    Signal {
        /// The code.
        code: u32,
        /// The argument latch at the time.
        argument: u64,
    },
    /// A vCPU parked itself ([`crate::devices::debug_port::SIGNAL_PARK`]): it stays
    /// stopped at its `OUT` until [`crate::vm::Vm::resume_vcpu`] (or
    /// [`crate::vm::Vm::resume`] after a pause).
    Parked {
        /// Which vCPU.
        vcpu: u8,
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
    /// Another thread of the VMM wants the VMM thread's attention ([`VmWaker`]): a
    /// control-API request is waiting.
    Woken,
}

/// Wakes a VMM thread waiting for events ([`crate::vm::Vm::waker`]): it receives a
/// [`VmEvent::Woken`]. Cheap to clone and to send from any thread.
#[derive(Debug, Clone)]
pub struct VmWaker(pub(crate) std::sync::mpsc::Sender<VmEvent>);

impl VmWaker {
    /// Sends a [`VmEvent::Woken`]; returns false when the VM is gone.
    pub fn wake(&self) -> bool {
        self.0.send(VmEvent::Woken).is_ok()
    }
}

impl From<DebugSignal> for VmEvent {
    fn from(signal: DebugSignal) -> Self {
        match signal {
            DebugSignal::Done { status } => Self::Done { status },
            DebugSignal::Guest { code, argument } => Self::Signal { code, argument },
        }
    }
}
