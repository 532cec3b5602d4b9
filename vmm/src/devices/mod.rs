//! Emulated devices and the port/MMIO bus a vCPU's exits go to.

pub mod console;
pub mod debug_port;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use console::Console;
pub use debug_port::{DebugControl, DebugPort, PortAccess};
pub use serial::SerialDevice;

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
            unhandled,
        }
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
}

impl ExitDevices for IoBus {
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        if SerialDevice::claims(port) && data.len() == 1 {
            if let Ok(mut serial) = self.serial.lock() {
                data[0] = serial.read(port);
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
}
