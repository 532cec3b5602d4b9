//! What to do with one vCPU exit: a plain function of the exit and the devices, so it
//! is tested with made-up exits and no `/dev/kvm`.

use std::fmt;

use crate::devices::{ExitDevices, ResetMethod};
use crate::kvm::VmExit;

/// Why a vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The vCPU executed `HLT`. With the built-in guest this is how it ends after DONE.
    Halted,
    /// Triple fault with no reset request before it: the vCPU shut down. A crash (Linux
    /// resets this way on purpose only with `reboot=t`, which nothing tells apart).
    Shutdown,
    /// The guest asked for a machine reset (how, in the method), or shut down (triple
    /// fault) after asking: how Linux ends `reboot -f` and `panic=-1`. A clean end.
    ResetRequested(ResetMethod),
    /// The guest reported a panic through pvpanic. A crash.
    Panicked,
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
        !matches!(
            self,
            Self::Halted | Self::ResetRequested(_) | Self::PowerOff
        )
    }
}

impl fmt::Display for VcpuStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Halted => write!(f, "the vCPU executed HLT"),
            Self::Shutdown => write!(
                f,
                "triple fault with no reset request before it: the vCPU shut down (KVM_EXIT_SHUTDOWN)"
            ),
            Self::ResetRequested(method) => write!(f, "the guest asked for a reset ({method})"),
            Self::Panicked => write!(
                f,
                "the guest reported a kernel panic (pvpanic, port {:#x})",
                crate::devices::pvpanic::PVPANIC_PORT
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
/// reset was requested (otherwise it is the crash [`VcpuStop::Shutdown`]). A write
/// that requests ACPI soft-off stops it with [`VcpuStop::PowerOff`], one that reports a
/// panic (pvpanic) with [`VcpuStop::Panicked`].
pub fn handle_exit(exit: VmExit<'_>, devices: &mut impl ExitDevices) -> ExitAction {
    match exit {
        VmExit::IoOut { port, data } => {
            devices.port_write(port, data);
            if let Some(method) = devices.reset_request() {
                ExitAction::Stop(VcpuStop::ResetRequested(method))
            } else if devices.power_off_requested() {
                ExitAction::Stop(VcpuStop::PowerOff)
            } else if devices.panic_reported() {
                ExitAction::Stop(VcpuStop::Panicked)
            } else if let Some(argument) = devices.take_park() {
                ExitAction::Park(argument)
            } else {
                ExitAction::Continue
            }
        }
        VmExit::Shutdown => match devices.reset_request() {
            Some(method) => ExitAction::Stop(VcpuStop::ResetRequested(method)),
            None => ExitAction::Stop(VcpuStop::Shutdown),
        },
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
            DebugPort::new(
                Arc::new(DebugControl::default()),
                crate::devices::signal_sink(tx),
                console.clone(),
            ),
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
        let keyboard = VcpuStop::ResetRequested(ResetMethod::Keyboard);
        assert_eq!(action, ExitAction::Stop(keyboard.clone()));
        assert!(!keyboard.is_failure());
        // A triple fault after the request (another vCPU still running) is clean too.
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut linux),
            ExitAction::Stop(keyboard)
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

    fn out(bus: &mut IoBus, port: u16, value: u8) -> ExitAction {
        handle_exit(
            VmExit::IoOut {
                port,
                data: &[value],
            },
            bus,
        )
    }

    fn linux_bus() -> (IoBus, Arc<UnhandledAccesses>) {
        use crate::devices::LegacyDevices;
        let (plain, _, unhandled, _) = bus();
        (
            plain.with_legacy(Arc::new(Mutex::new(LegacyDevices::default()))),
            unhandled,
        )
    }

    /// Every reset line Linux uses, as its reboot methods drive them, ends the VM with
    /// the method named; the built-in guest's bus has none of them.
    #[test]
    fn every_reset_line_ends_the_vm_naming_its_method() {
        use crate::arch::x86_64::acpi::{ACPI_RESET_PORT, ACPI_RESET_VALUE};
        use crate::devices::reset::{RESET_CONTROL_PORT, RESET_VECTOR_PORT, reset_vector_stub};
        let reset = |method| ExitAction::Stop(VcpuStop::ResetRequested(method));

        // reboot=a: acpi_reset() writes RESET_VALUE to the FADT's register.
        let (mut linux, unhandled) = linux_bus();
        assert_eq!(
            out(&mut linux, ACPI_RESET_PORT, ACPI_RESET_VALUE),
            reset(ResetMethod::AcpiResetRegister)
        );
        assert_eq!(unhandled.counts(), UnhandledCounts::default());

        // reboot=p: read 0xcf9, write SYS_RST (arms), then SYS_RST|RST_CPU|FULL_RST.
        let (mut linux, _) = linux_bus();
        let mut cf9 = [0xffu8];
        handle_exit(
            VmExit::IoIn {
                port: RESET_CONTROL_PORT,
                data: &mut cf9,
            },
            &mut linux,
        );
        assert_eq!(cf9[0], 0);
        assert_eq!(
            out(&mut linux, RESET_CONTROL_PORT, 0x02),
            ExitAction::Continue
        );
        assert_eq!(
            out(&mut linux, RESET_CONTROL_PORT, 0x0e),
            reset(ResetMethod::PciResetControl)
        );

        // reboot=b (and the default's fallback): the stub at F000:FFF0 writes its port.
        let (mut linux, _) = linux_bus();
        assert_eq!(
            out(&mut linux, RESET_VECTOR_PORT, reset_vector_stub()[4]),
            reset(ResetMethod::ResetVector)
        );
        // A triple fault after it is the same clean end, with the same method.
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut linux),
            reset(ResetMethod::ResetVector)
        );

        // The built-in guest's bus: all three are unknown ports.
        let (mut builtin, _, unhandled, _) = bus();
        for (port, value) in [
            (ACPI_RESET_PORT, ACPI_RESET_VALUE),
            (RESET_CONTROL_PORT, 0x0e),
            (RESET_VECTOR_PORT, 1),
        ] {
            assert_eq!(out(&mut builtin, port, value), ExitAction::Continue);
        }
        assert_eq!(unhandled.counts().port_writes, 3);
    }

    /// pvpanic: the capabilities read at probe, then PANICKED from the panic notifier
    /// ends the VM as a crash; CRASH_LOADED alone does not.
    #[test]
    fn a_pvpanic_report_is_a_crash() {
        use crate::devices::pvpanic::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_PORT};
        let (mut linux, unhandled) = linux_bus();
        let mut capabilities = [0u8];
        handle_exit(
            VmExit::IoIn {
                port: PVPANIC_PORT,
                data: &mut capabilities,
            },
            &mut linux,
        );
        assert_eq!(capabilities[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        assert_eq!(
            out(&mut linux, PVPANIC_PORT, PVPANIC_CRASH_LOADED),
            ExitAction::Continue
        );
        assert_eq!(
            out(&mut linux, PVPANIC_PORT, PVPANIC_PANICKED),
            ExitAction::Stop(VcpuStop::Panicked)
        );
        assert!(VcpuStop::Panicked.is_failure());
        assert!(VcpuStop::Panicked.to_string().contains("pvpanic"));
        assert_eq!(unhandled.counts(), UnhandledCounts::default());
        // A triple fault with no reset request before it stays a crash.
        assert_eq!(
            handle_exit(VmExit::Shutdown, &mut linux),
            ExitAction::Stop(VcpuStop::Shutdown)
        );
        let (mut builtin, _, _, _) = bus();
        assert_eq!(
            out(&mut builtin, PVPANIC_PORT, PVPANIC_PANICKED),
            ExitAction::Continue
        );
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
        assert_eq!(
            rx.try_recv().ok(),
            Some(VmEvent::Signal {
                code: 4,
                argument: 42
            })
        );
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
