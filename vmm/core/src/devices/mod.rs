//! Emulated devices and the port/MMIO bus a vCPU's exits go to.

pub mod acpi_sleep;
pub mod console;
pub mod debug_port;
pub mod i8042;
pub mod pvpanic;
pub mod reset;
pub mod rtc;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::arch::x86_64::pio::PortIo;
pub use acpi_sleep::AcpiSleep;
pub use console::Console;
pub use debug_port::{DebugControl, DebugPort, DebugSignal, PortAccess, SignalSink, signal_sink};
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use reset::{ResetControl, ResetMethod};
pub use rtc::Rtc;
pub use serial::{SerialDevice, SerialInterrupt, SerialRecord};

/// The PC legacy devices a Linux guest needs beyond the UART: the CMOS RTC, the i8042
/// (for its reset line), the ACPI sleep registers (for power-off), the other reset
/// lines ([`ResetControl`]) and pvpanic. The built-in guest's VM has none of them.
#[derive(Debug, Default)]
pub struct LegacyDevices {
    /// CMOS RTC, ports 0x70/0x71.
    pub rtc: Rtc,
    /// Keyboard controller, ports 0x60/0x64.
    pub i8042: I8042,
    /// ACPI sleep control/status, ports 0x5f0/0x5f1.
    pub acpi_sleep: AcpiSleep,
    /// PCI reset control 0xcf9, ACPI reset register 0x5f2, reset-vector port 0x5f3.
    pub reset: ResetControl,
    /// pvpanic, port 0x505.
    pub pvpanic: PvPanic,
}

impl LegacyDevices {
    /// The reset the guest asked for, if it did (the i8042's first).
    pub fn reset_request(&self) -> Option<ResetMethod> {
        if self.i8042.reset_requested() {
            Some(ResetMethod::Keyboard)
        } else {
            self.reset.requested()
        }
    }
}

/// What a snapshot keeps of the devices: the guest-visible state a resumed guest reads
/// back. Requests that end the VM (reset, power-off, panic) are not state: a VM that
/// made one has ended. Nor is the debug port's command word: it is the VMM's side of the
/// protocol, and the VMM that restores sets its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    /// COM1.
    pub serial: SerialRecord,
    /// The Linux VM's legacy devices.
    pub legacy: Option<LegacyRecord>,
}

/// The legacy devices' state ([`DeviceRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegacyRecord {
    /// The CMOS register selected (port 0x70).
    pub rtc_index: u8,
    /// The 128 bytes of CMOS RAM.
    pub rtc_ram: Vec<u8>,
    /// The reset control register (port 0xCF9).
    pub reset_control: u8,
}

impl LegacyDevices {
    /// Their state, for a snapshot.
    pub fn record(&self) -> LegacyRecord {
        let (rtc_index, ram) = self.rtc.record();
        LegacyRecord {
            rtc_index,
            rtc_ram: ram.to_vec(),
            reset_control: self.reset.control(),
        }
    }

    /// Devices in the state of `record`; `None` when its CMOS RAM is not 128 bytes.
    pub fn from_record(record: &LegacyRecord) -> Option<Self> {
        let ram: [u8; 128] = record.rtc_ram.as_slice().try_into().ok()?;
        Some(Self {
            rtc: Rtc::from_record(record.rtc_index, ram),
            reset: ResetControl::with_control(record.reset_control),
            ..Self::default()
        })
    }
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
    last_io: Option<PortIo>,
}

impl IoBus {
    /// This vCPU's debug-port argument latch.
    pub fn debug_argument(&self) -> u64 {
        self.debug_port.argument()
    }

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
            last_io: None,
        }
    }

    /// This vCPU's last port access (`IN` with the value answered), if it made one.
    pub fn last_port_io(&self) -> Option<PortIo> {
        self.last_io
    }

    fn record(&mut self, port: u16, write: bool, data: &[u8]) {
        let count = self.last_io.map_or(0, |io| io.count).saturating_add(1);
        self.last_io = Some(PortIo::new(port, write, data, count));
    }

    /// The same bus with the VM's shared legacy devices (RTC, i8042) on it.
    pub fn with_legacy(mut self, legacy: Arc<Mutex<LegacyDevices>>) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// A one-byte access to a legacy device: `Some(value read)` when one claims `port`.
    fn legacy_access(&self, port: u16, write: Option<u8>) -> Option<u8> {
        let legacy = self.legacy.as_ref()?;
        if !(Rtc::claims(port)
            || I8042::claims(port)
            || AcpiSleep::claims(port)
            || ResetControl::claims(port)
            || PvPanic::claims(port))
        {
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
                } else if AcpiSleep::claims(port) {
                    d.acpi_sleep.write(port, value);
                } else if ResetControl::claims(port) {
                    d.reset.write(port, value);
                } else {
                    d.pvpanic.write(port, value);
                }
                0
            }
            None if Rtc::claims(port) => d.rtc.read(port),
            None if I8042::claims(port) => d.i8042.read(port),
            None if AcpiSleep::claims(port) => d.acpi_sleep.read(port),
            None if ResetControl::claims(port) => d.reset.read(port),
            None => d.pvpanic.read(port),
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
    /// The machine reset the guest asked for, if it did (i8042 command 0xFE, the ACPI
    /// reset register, 0xCF9, the reset-vector stub). Devices without a reset line
    /// never do.
    fn reset_request(&self) -> Option<ResetMethod> {
        None
    }
    /// Whether the guest reported a panic (pvpanic). Devices without pvpanic never do.
    fn panic_reported(&self) -> bool {
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

impl IoBus {
    fn route_read(&mut self, port: u16, data: &mut [u8]) {
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

    fn route_write(&mut self, port: u16, data: &[u8]) {
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
}

impl ExitDevices for IoBus {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        self.route_read(port, data);
        self.record(port, false, data);
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        self.record(port, true, data);
        self.route_write(port, data);
    }

    fn mmio_read(&mut self, _address: u64, data: &mut [u8]) {
        self.unhandled.mmio_reads.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }

    fn mmio_write(&mut self, _address: u64, _data: &[u8]) {
        self.unhandled.mmio_writes.fetch_add(1, Ordering::Relaxed);
    }

    fn reset_request(&self) -> Option<ResetMethod> {
        self.legacy
            .as_ref()
            .and_then(|legacy| legacy.lock().ok().and_then(|d| d.reset_request()))
    }

    fn panic_reported(&self) -> bool {
        self.legacy
            .as_ref()
            .and_then(|legacy| legacy.lock().ok().map(|d| d.pvpanic.panicked()))
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    fn bus() -> IoBus {
        let (tx, _rx) = channel::<DebugSignal>();
        let console = Console::capture();
        IoBus::new(
            DebugPort::new(
                Arc::new(DebugControl::default()),
                signal_sink(tx),
                console.clone(),
            ),
            Arc::new(Mutex::new(SerialDevice::new(console))),
            Arc::new(UnhandledAccesses::default()),
        )
    }

    #[test]
    fn the_last_port_access_is_kept_with_the_value_answered() {
        let mut bus = bus();
        assert_eq!(bus.last_port_io(), None);
        bus.port_write(0x3f8, b"[");
        let written = PortIo {
            port: 0x3f8,
            write: true,
            size: 1,
            value: u32::from(b'['),
            count: 1,
        };
        assert_eq!(bus.last_port_io(), Some(written));
        // LSR: the value the UART answered (THR empty, transmitter empty) is recorded.
        let mut lsr = [0u8];
        bus.port_read(0x3fd, &mut lsr);
        let Some(read) = bus.last_port_io() else {
            panic!("no access recorded");
        };
        assert_eq!(
            (read.port, read.write, read.size, read.value, read.count),
            (0x3fd, false, 1, u32::from(lsr[0]), 2)
        );
        assert_ne!(read.value & 0x20, 0);
        assert_eq!(
            read.to_string(),
            format!(
                "IN 0x03fd -> {:#04x} (1 byte; port access 2 of this vCPU)",
                lsr[0]
            )
        );
        // Unknown ports and wider accesses too (all ones answered).
        let mut wide = [0u8; 4];
        bus.port_read(0x1234, &mut wide);
        assert_eq!(
            bus.last_port_io().map(|io| (io.size, io.value, io.count)),
            Some((4, u32::MAX, 3))
        );
        assert_eq!(
            written.to_string(),
            "OUT 0x03f8 <- 0x5b (1 byte; port access 1 of this vCPU)"
        );
    }
}
