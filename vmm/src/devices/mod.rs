//! Emulated devices and the port/MMIO bus a vCPU's exits go to.

pub mod acpi_sleep;
pub mod console;
pub mod debug_port;
pub mod i8042;
pub mod rtc;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use acpi_sleep::AcpiSleep;
pub use console::Console;
pub use debug_port::{DebugControl, DebugPort, PortAccess};
pub use i8042::I8042;
pub use rtc::Rtc;
pub use serial::{SerialDevice, SerialInterrupt};

/// The PC legacy devices a Linux guest needs beyond the UART: the CMOS RTC, the i8042
/// (for its reset line) and the ACPI sleep registers (for power-off). The built-in
/// guest's VM has none of them.
#[derive(Debug, Default)]
pub struct LegacyDevices {
    /// CMOS RTC, ports 0x70/0x71.
    pub rtc: Rtc,
    /// Keyboard controller, ports 0x60/0x64.
    pub i8042: I8042,
    /// ACPI sleep control/status, ports 0x5f0/0x5f1.
    pub acpi_sleep: AcpiSleep,
}

/// Counters of accesses no device claimed (shared by all vCPUs).
#[derive(Debug, Default)]
pub struct UnhandledAccesses {
    /// `IN` from unknown ports (answered with all ones).
    pub port_reads: AtomicU64,
    /// `OUT` to unknown ports (ignored).
    pub port_writes: AtomicU64,
    /// MMIO reads (answered with all ones: there are no MMIO devices).
    pub mmio_reads: AtomicU64,
    /// MMIO writes (ignored).
    pub mmio_writes: AtomicU64,
}

/// A snapshot of [`UnhandledAccesses`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnhandledCounts {
    /// `IN` from unknown ports.
    pub port_reads: u64,
    /// `OUT` to unknown ports.
    pub port_writes: u64,
    /// MMIO reads.
    pub mmio_reads: u64,
    /// MMIO writes.
    pub mmio_writes: u64,
}

impl UnhandledAccesses {
    /// The current counts.
    pub fn counts(&self) -> UnhandledCounts {
        UnhandledCounts {
            port_reads: self.port_reads.load(Ordering::Relaxed),
            port_writes: self.port_writes.load(Ordering::Relaxed),
            mmio_reads: self.mmio_reads.load(Ordering::Relaxed),
            mmio_writes: self.mmio_writes.load(Ordering::Relaxed),
        }
    }
}

/// What one vCPU's I/O exits are routed to.
#[derive(Debug)]
pub struct IoBus {
    debug_port: DebugPort,
    serial: Arc<Mutex<SerialDevice>>,
    legacy: Option<Arc<Mutex<LegacyDevices>>>,
    unhandled: Arc<UnhandledAccesses>,
}

impl IoBus {
    /// A bus with this vCPU's debug port and the VM's shared UART and counters.
    pub fn new(
        debug_port: DebugPort,
        serial: Arc<Mutex<SerialDevice>>,
        unhandled: Arc<UnhandledAccesses>,
    ) -> Self {
        Self {
            debug_port,
            serial,
            legacy: None,
            unhandled,
        }
    }

    /// The same bus with the VM's shared legacy devices (RTC, i8042) on it.
    pub fn with_legacy(mut self, legacy: Arc<Mutex<LegacyDevices>>) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// A one-byte access to a legacy device: `Some(value read)` when one claims `port`.
    fn legacy_access(&self, port: u16, write: Option<u8>) -> Option<u8> {
        let legacy = self.legacy.as_ref()?;
        if !(Rtc::claims(port) || I8042::claims(port) || AcpiSleep::claims(port)) {
            return None;
        }
        let mut devices = legacy.lock().ok()?;
        let d = &mut *devices;
        Some(match write {
            Some(value) => {
                if Rtc::claims(port) {
                    d.rtc.write(port, value);
                } else if I8042::claims(port) {
                    d.i8042.write(port, value);
                } else {
                    d.acpi_sleep.write(port, value);
                }
                0
            }
            None if Rtc::claims(port) => d.rtc.read(port),
            None if I8042::claims(port) => d.i8042.read(port),
            None => d.acpi_sleep.read(port),
        })
    }
}

/// The device side of exit handling, so [`crate::exit::handle_exit`] can be fed
/// made-up exits in tests.
pub trait ExitDevices {
    /// `IN` from `port`: fill `data`.
    fn port_read(&mut self, port: u16, data: &mut [u8]);
    /// `OUT` to `port`.
    fn port_write(&mut self, port: u16, data: &[u8]);
    /// A read from non-RAM guest-physical memory.
    fn mmio_read(&mut self, address: u64, data: &mut [u8]);
    /// A write to non-RAM guest-physical memory.
    fn mmio_write(&mut self, address: u64, data: &[u8]);
    /// Whether the guest asked for a machine reset (i8042 command 0xFE). Devices
    /// without a reset line never do.
    fn reset_requested(&self) -> bool {
        false
    }
    /// Whether the guest asked to be powered off (ACPI soft-off). Devices without the
    /// ACPI sleep registers never do.
    fn power_off_requested(&self) -> bool {
        false
    }
    /// A PARK the guest just sent through the debug port: its argument, once.
    fn take_park(&mut self) -> Option<u64> {
        None
    }
}

impl ExitDevices for IoBus {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        if SerialDevice::claims(port) && data.len() == 1 {
            if let Ok(mut serial) = self.serial.lock() {
                data[0] = serial.read(port);
                return;
            }
        }
        if data.len() == 1 {
            if let Some(value) = self.legacy_access(port, None) {
                data[0] = value;
                return;
            }
        }
        if self.debug_port.read(port, data) == PortAccess::Handled {
            return;
        }
        self.unhandled.port_reads.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        if SerialDevice::claims(port) && data.len() == 1 {
            if let Ok(mut serial) = self.serial.lock() {
                serial.write(port, data[0]);
                return;
            }
        }
        if let [value] = data {
            if self.legacy_access(port, Some(*value)).is_some() {
                return;
            }
        }
        if self.debug_port.write(port, data) == PortAccess::Handled {
            return;
        }
        self.unhandled.port_writes.fetch_add(1, Ordering::Relaxed);
    }

    fn mmio_read(&mut self, _address: u64, data: &mut [u8]) {
        self.unhandled.mmio_reads.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }

    fn mmio_write(&mut self, _address: u64, _data: &[u8]) {
        self.unhandled.mmio_writes.fetch_add(1, Ordering::Relaxed);
    }

    fn reset_requested(&self) -> bool {
        self.legacy
            .as_ref()
            .and_then(|legacy| legacy.lock().ok().map(|d| d.i8042.reset_requested()))
            .unwrap_or(false)
    }

    fn take_park(&mut self) -> Option<u64> {
        self.debug_port.take_park()
    }

    fn power_off_requested(&self) -> bool {
        self.legacy
            .as_ref()
            .and_then(|legacy| {
                legacy
                    .lock()
                    .ok()
                    .map(|d| d.acpi_sleep.power_off_requested())
            })
            .unwrap_or(false)
    }
}
