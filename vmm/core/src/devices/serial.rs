//! A 16550 UART on COM1 (ports 0x3f8..=0x3ff) via `vm-superio`, writing to the
//! console. The built-in guest's VM has no interrupt controller, so its UART's
//! interrupt line goes nowhere ([`SerialInterrupt::None`]: guests poll the line-status
//! register). A Linux VM has the in-kernel irqchip: there the line is an `EventFd`
//! registered as an irqfd for IRQ 4 ([`SerialInterrupt::Irqfd`]).

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::{Console, ConsoleWriter};

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of a 16550.
pub const COM1_PORTS: u16 = 8;

/// COM1's interrupt line on a PC.
pub const COM1_IRQ: u32 = 4;

/// Where the UART's interrupt line goes.
#[derive(Debug, Default)]
pub enum SerialInterrupt {
    /// Nowhere (no interrupt controller).
    #[default]
    None,
    /// An `EventFd` that KVM turns into an edge on a GSI (`KVM_IRQFD`).
    Irqfd(EventFd),
}

impl Trigger for SerialInterrupt {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        match self {
            Self::None => Ok(()),
            Self::Irqfd(event) => event.write(1),
        }
    }
}

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<SerialInterrupt, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that writes transmitted bytes to `console`.
    pub fn new(console: Console) -> Self {
        Self::with_interrupt(console, SerialInterrupt::None)
    }

    /// A UART that writes to `console` and raises `interrupt`.
    pub fn with_interrupt(console: Console, interrupt: SerialInterrupt) -> Self {
        Self {
            uart: Serial::new(interrupt, ConsoleWriter(console)),
        }
    }

    /// Whether `port` belongs to this device.
    pub fn claims(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + COM1_PORTS).contains(&port)
    }

    /// A one-byte read of register `port - COM1_BASE`.
    pub fn read(&mut self, port: u16) -> u8 {
        self.uart.read(port.wrapping_sub(COM1_BASE) as u8)
    }

    /// A one-byte write of register `port - COM1_BASE`.
    pub fn write(&mut self, port: u16, value: u8) {
        // Errors: a failing writer (our console never reports one) or a failed eventfd
        // write (the guest then misses one interrupt; nothing to do about it here).
        let _ = self.uart.write(port.wrapping_sub(COM1_BASE) as u8, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitted_bytes_reach_the_console() {
        let console = Console::capture();
        let mut serial = SerialDevice::new(console.clone());
        for byte in b"hi" {
            serial.write(COM1_BASE, *byte);
        }
        assert_eq!(console.captured(), b"hi");
        // Line status: transmitter empty.
        assert_ne!(serial.read(COM1_BASE + 5) & 0x20, 0);
    }

    #[test]
    fn transmit_interrupt_reaches_the_eventfd() {
        let Ok(event) = EventFd::new(libc::EFD_NONBLOCK) else {
            panic!("cannot create an eventfd");
        };
        let Ok(mine) = event.try_clone() else {
            panic!("cannot clone the eventfd");
        };
        let console = Console::capture();
        let mut serial = SerialDevice::with_interrupt(console, SerialInterrupt::Irqfd(event));
        // IER: THR-empty interrupt on, then a byte: the UART raises its line.
        serial.write(COM1_BASE + 1, 0x02);
        serial.write(COM1_BASE, b'x');
        assert!(mine.read().is_ok_and(|n| n >= 1));
    }
}
