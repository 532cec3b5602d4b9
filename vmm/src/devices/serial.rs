//! A 16550 UART on COM1 (ports 0x3f8..=0x3ff) via `vm-superio`, writing to the
//! console. There is no interrupt controller in the VM, so the UART's interrupt line
//! goes nowhere: guests must poll (the line-status register says when to write).

use vm_superio::{Serial, Trigger};

use super::console::{Console, ConsoleWriter};

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of a 16550.
pub const COM1_PORTS: u16 = 8;

/// An interrupt line connected to nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<NoInterrupt, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that writes transmitted bytes to `console`.
    pub fn new(console: Console) -> Self {
        Self {
            uart: Serial::new(NoInterrupt, ConsoleWriter(console)),
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
        // The only error is a failing writer, which our console never reports.
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
}
