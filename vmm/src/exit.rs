//! What to do with one vCPU exit: a plain function of the exit and the devices, so it
//! is tested with made-up exits and no `/dev/kvm`.

use std::fmt;

use crate::devices::ExitDevices;
use crate::kvm::VmExit;

/// Why a vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The vCPU executed `HLT`. With the built-in guest this is how it ends after DONE.
    Halted,
    /// Triple fault: the vCPU shut down.
    Shutdown,
    /// The guest asked for a machine reset (i8042 command 0xFE), or shut down (triple
    /// fault) after asking: how Linux without ACPI ends `reboot -f` / `poweroff -f`. A
    /// clean end.
    ResetRequested,
    /// The guest powered off through ACPI (the sleep control register, soft-off): how
    /// Linux with ACPI ends `poweroff`. A clean end.
    PowerOff,
    /// KVM could not handle something the guest did.
    InternalError {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
    },
    /// Entering the guest failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// An exit the VMM does not handle.
    Unhandled(String),
    /// `KVM_RUN` itself failed.
    RunFailed(String),
    /// The vCPU's dirty ring was full and could not be emptied.
    DirtyRing(String),
}

impl VcpuStop {
    /// Whether this stop is a failure in itself (a HLT is judged by the guest's DONE).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Halted | Self::ResetRequested | Self::PowerOff)
    }
}

impl fmt::Display for VcpuStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Halted => write!(f, "the vCPU executed HLT"),
            Self::Shutdown => write!(f, "triple fault: the vCPU shut down (KVM_EXIT_SHUTDOWN)"),
            Self::ResetRequested => write!(
                f,
                "the guest asked for a reset (i8042 command 0xfe on port 0x64)"
            ),
            Self::PowerOff => write!(
                f,
                "the guest powered off (ACPI soft-off on the sleep control register)"
            ),
            Self::InternalError { suberror } => {
                let what = match suberror {
                    1 => "emulation failure",
                    2 => "simultaneous exceptions",
                    3 => "delivery event",
                    4 => "unexpected exit reason",
                    _ => "unknown suberror",
                };
                write!(
                    f,
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR), suberror {suberror}: {what}"
                )
            }
            Self::FailEntry { reason, cpu } => write!(
                f,
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY), hardware reason {reason:#x} on host CPU {cpu}"
            ),
            Self::Unhandled(name) => write!(f, "unhandled vCPU exit {name}"),
            Self::RunFailed(message) => write!(f, "KVM_RUN failed: {message}"),
            Self::DirtyRing(message) => write!(
                f,
                "the dirty ring was full (KVM_EXIT_DIRTY_RING_FULL) and could not be harvested: {message}"
            ),
        }
    }
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// Look at pending requests (pause, stop), then run again.
    Interrupted,
    /// Harvest the dirty rings and reset them, then run again (entering the guest with
    /// a full ring only exits again).
    HarvestDirtyRing,
    /// Stop this vCPU until the VMM resumes it (the guest sent PARK with this argument).
    Park(u64),
    /// Stop this vCPU for good.
    Stop(VcpuStop),
}

/// Handles one exit: I/O goes to `devices` (unknown ports and all MMIO read as all
/// ones, writes are ignored and counted), everything else decides whether the vCPU
/// stops. A write that makes the devices request a reset stops the vCPU with
/// [`VcpuStop::ResetRequested`]; a triple fault counts as that too, but only once a
/// reset was requested (otherwise it is the failure [`VcpuStop::Shutdown`]). A write
/// that requests ACPI soft-off stops it with [`VcpuStop::PowerOff`].
pub fn handle_exit(exit: VmExit<'_>, devices: &mut impl ExitDevices) -> ExitAction {
    match exit {
        VmExit::IoOut { port, data } => {
            devices.port_write(port, data);
            if devices.reset_requested() {
                ExitAction::Stop(VcpuStop::ResetRequested)
            } else if devices.power_off_requested() {
                ExitAction::Stop(VcpuStop::PowerOff)
            } else if let Some(argument) = devices.take_park() {
                ExitAction::Park(argument)
            } else {
                ExitAction::Continue
            }
        }
        VmExit::Shutdown if devices.reset_requested() => ExitAction::Stop(VcpuStop::ResetRequested),
        VmExit::IoIn { port, data } => {
            devices.port_read(port, data);
            ExitAction::Continue
        }
        VmExit::MmioRead { address, data } => {
            devices.mmio_read(address, data);
            ExitAction::Continue
        }
        VmExit::MmioWrite { address, data } => {
            devices.mmio_write(address, data);
            ExitAction::Continue
        }
        VmExit::Interrupted => ExitAction::Interrupted,
        VmExit::DirtyRingFull => ExitAction::HarvestDirtyRing,
        VmExit::Hlt => ExitAction::Stop(VcpuStop::Halted),
        VmExit::Shutdown => ExitAction::Stop(VcpuStop::Shutdown),
        VmExit::InternalError { suberror } => {
            ExitAction::Stop(VcpuStop::InternalError { suberror })
        }
        VmExit::FailEntry { reason, cpu } => ExitAction::Stop(VcpuStop::FailEntry { reason, cpu }),
        VmExit::Other(name) => ExitAction::Stop(VcpuStop::Unhandled(name)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, channel};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::debug_port::{ARG_LO_PORT, EVENT_PORT};
    use crate::devices::{
        Console, DebugControl, DebugPort, IoBus, SerialDevice, UnhandledAccesses, UnhandledCounts,
    };
    use crate::events::VmEvent;

    fn bus() -> (IoBus, Receiver<VmEvent>, Arc<UnhandledAccesses>, Console) {
        let (tx, rx) = channel();
        let console = Console::capture();
        let unhandled = Arc::new(UnhandledAccesses::default());
        let bus = IoBus::new(
            DebugPort::new(Arc::new(DebugControl::default()), tx, console.clone()),
            Arc::new(Mutex::new(SerialDevice::new(console.clone()))),
            unhandled.clone(),
        );
        (bus, rx, unhandled, console)
    }

    #[test]
    fn i8042_reset_ends_the_vm_cleanly_only_on_a_linux_bus() {
        use crate::devices::LegacyDevices;
        let (plain, _, unhandled, _) = bus();
        let mut linux = plain.with_legacy(Arc::new(Mutex::new(LegacyDevices::default())));
        // A triple fault before any reset request is a failure.
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut linux),
            ExitAction::Stop(VcpuStop::Shutdown)
        );
        let mut status = [0xffu8];
        handle_exit(
            VmExit::IoIn {
                port: 0x64,
                data: &mut status,
            },
            &mut linux,
        );
        assert_eq!(status[0] & 0x2, 0, "input buffer empty: kb_wait returns");
        let action = handle_exit(
            VmExit::IoOut {
                port: 0x64,
                data: &[0xfe],
            },
            &mut linux,
        );
        assert_eq!(action, ExitAction::Stop(VcpuStop::ResetRequested));
        assert!(!VcpuStop::ResetRequested.is_failure());
        // A triple fault after the request (another vCPU still running) is clean too.
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut linux),
            ExitAction::Stop(VcpuStop::ResetRequested)
        );
        assert_eq!(unhandled.counts(), UnhandledCounts::default());
        // The built-in guest's bus has no i8042: the same write is just unhandled.
        let (mut builtin, _, unhandled, _) = bus();
        let action = handle_exit(
            VmExit::IoOut {
                port: 0x64,
                data: &[0xfe],
            },
            &mut builtin,
        );
        assert_eq!(action, ExitAction::Continue);
        assert_eq!(unhandled.counts().port_writes, 1);
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut builtin),
            ExitAction::Stop(VcpuStop::Shutdown)
        );
    }

    #[test]
    fn acpi_soft_off_ends_the_vm_cleanly_only_on_a_linux_bus() {
        use crate::devices::LegacyDevices;
        let (plain, _, unhandled, _) = bus();
        let mut linux = plain.with_legacy(Arc::new(Mutex::new(LegacyDevices::default())));
        let out = |bus: &mut IoBus, port: u16, value: u8| {
            handle_exit(
                VmExit::IoOut {
                    port,
                    data: &[value],
                },
                bus,
            )
        };
        // Linux clears the status register, then writes SLP_TYP=5 | SLP_EN.
        assert_eq!(out(&mut linux, 0x5f1, 0x80), ExitAction::Continue);
        assert_eq!(
            out(&mut linux, 0x5f0, 0x34),
            ExitAction::Stop(VcpuStop::PowerOff)
        );
        assert!(!VcpuStop::PowerOff.is_failure());
        assert_eq!(unhandled.counts(), UnhandledCounts::default());
        let (mut builtin, _, unhandled, _) = bus();
        assert_eq!(out(&mut builtin, 0x5f0, 0x34), ExitAction::Continue);
        assert_eq!(unhandled.counts().port_writes, 1);
    }

    #[test]
    fn rtc_is_on_the_linux_bus_only() {
        use crate::devices::LegacyDevices;
        let (plain, _, _, _) = bus();
        let mut linux = plain.with_legacy(Arc::new(Mutex::new(LegacyDevices::default())));
        handle_exit(
            VmExit::IoOut {
                port: 0x70,
                data: &[0x0d],
            },
            &mut linux,
        );
        let mut data = [0u8];
        handle_exit(
            VmExit::IoIn {
                port: 0x71,
                data: &mut data,
            },
            &mut linux,
        );
        assert_eq!(data[0], 0x80, "register D: valid time");
        let (mut builtin, _, _, _) = bus();
        handle_exit(
            VmExit::IoIn {
                port: 0x71,
                data: &mut data,
            },
            &mut builtin,
        );
        assert_eq!(data[0], 0xff);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted() {
        let (mut bus, _, unhandled, _) = bus();
        let mut data = [0u8; 2];
        let action = handle_exit(
            VmExit::IoIn {
                port: 0x80,
                data: &mut data,
            },
            &mut bus,
        );
        assert_eq!(action, ExitAction::Continue);
        assert_eq!(data, [0xff, 0xff]);
        handle_exit(
            VmExit::IoOut {
                port: 0x80,
                data: &[1],
            },
            &mut bus,
        );
        assert_eq!(
            unhandled.counts(),
            UnhandledCounts {
                port_reads: 1,
                port_writes: 1,
                ..UnhandledCounts::default()
            }
        );
    }

    #[test]
    fn mmio_reads_all_ones_writes_ignored() {
        let (mut bus, _, unhandled, _) = bus();
        let mut data = [0u8; 8];
        let action = handle_exit(
            VmExit::MmioRead {
                address: 0xfee0_0000,
                data: &mut data,
            },
            &mut bus,
        );
        assert_eq!(action, ExitAction::Continue);
        assert_eq!(data, [0xff; 8]);
        handle_exit(
            VmExit::MmioWrite {
                address: 0xfee0_0000,
                data: &[0; 4],
            },
            &mut bus,
        );
        assert_eq!(unhandled.counts().mmio_reads, 1);
        assert_eq!(unhandled.counts().mmio_writes, 1);
    }

    #[test]
    fn debug_port_and_serial_exits_reach_devices() {
        let (mut bus, rx, unhandled, console) = bus();
        handle_exit(
            VmExit::IoOut {
                port: 0xe9,
                data: b"a",
            },
            &mut bus,
        );
        handle_exit(
            VmExit::IoOut {
                port: 0x3f8,
                data: b"b",
            },
            &mut bus,
        );
        handle_exit(
            VmExit::IoOut {
                port: ARG_LO_PORT,
                data: &42u32.to_le_bytes(),
            },
            &mut bus,
        );
        handle_exit(
            VmExit::IoOut {
                port: EVENT_PORT,
                data: &4u32.to_le_bytes(),
            },
            &mut bus,
        );
        assert_eq!(console.captured(), b"ab");
        assert_eq!(rx.try_recv().ok(), Some(VmEvent::Mark { value: 42 }));
        assert_eq!(unhandled.counts(), UnhandledCounts::default());
    }

    #[test]
    fn terminal_exits_stop_the_vcpu() {
        let (mut bus, ..) = bus();
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut bus),
            ExitAction::Stop(VcpuStop::Shutdown)
        );
        assert_eq!(
            handle_exit(VmExit::Hlt, &mut bus),
            ExitAction::Stop(VcpuStop::Halted)
        );
        assert_eq!(
            handle_exit(VmExit::InternalError { suberror: 1 }, &mut bus),
            ExitAction::Stop(VcpuStop::InternalError { suberror: 1 })
        );
        assert_eq!(
            handle_exit(VmExit::FailEntry { reason: 7, cpu: 1 }, &mut bus),
            ExitAction::Stop(VcpuStop::FailEntry { reason: 7, cpu: 1 })
        );
        assert_eq!(
            handle_exit(VmExit::Other("Debug".into()), &mut bus),
            ExitAction::Stop(VcpuStop::Unhandled("Debug".into()))
        );
        assert_eq!(
            handle_exit(VmExit::Interrupted, &mut bus),
            ExitAction::Interrupted
        );
    }

    #[test]
    fn a_full_dirty_ring_is_harvested_not_fatal() {
        let (mut bus, _, unhandled, _) = bus();
        assert_eq!(
            handle_exit(VmExit::DirtyRingFull, &mut bus),
            ExitAction::HarvestDirtyRing
        );
        assert_eq!(unhandled.counts(), UnhandledCounts::default());
        assert!(
            VcpuStop::DirtyRing("x".into())
                .to_string()
                .contains("KVM_EXIT_DIRTY_RING_FULL")
        );
    }

    #[test]
    fn stop_messages_name_the_cause() {
        assert!(VcpuStop::Shutdown.to_string().contains("triple fault"));
        assert!(
            VcpuStop::InternalError { suberror: 1 }
                .to_string()
                .contains("emulation failure")
        );
        assert!(!VcpuStop::Halted.is_failure());
        assert!(VcpuStop::Shutdown.is_failure());
    }
}
