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

/// A UART's registers and receive FIFO (vm-superio's `SerialState`, which has no serde).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SerialRecord {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
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

    /// A UART in the state `record` saved ([`SerialDevice::record`]), raising its
    /// interrupt at once if one was pending. `None` when the record's receive FIFO is
    /// larger than a UART's.
    pub fn from_record(
        console: Console,
        interrupt: SerialInterrupt,
        record: &SerialRecord,
    ) -> Option<Self> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: record.baud_divisor_low,
            baud_divisor_high: record.baud_divisor_high,
            interrupt_enable: record.interrupt_enable,
            interrupt_identification: record.interrupt_identification,
            line_control: record.line_control,
            line_status: record.line_status,
            modem_control: record.modem_control,
            modem_status: record.modem_status,
            scratch: record.scratch,
            in_buffer: record.in_buffer.clone(),
        };
        Serial::from_state(
            &state,
            interrupt,
            vm_superio::serial::NoEvents,
            ConsoleWriter(console),
        )
        .ok()
        .map(|uart| Self { uart })
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn record(&self) -> SerialRecord {
        let s = self.uart.state();
        SerialRecord {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
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

    #[test]
    fn a_recorded_uart_comes_back_with_its_registers() {
        let mut serial = SerialDevice::new(Console::capture());
        serial.write(COM1_BASE + 3, 0x83); // LCR: DLAB, 8 bits
        serial.write(COM1_BASE, 0x01); // divisor low
        serial.write(COM1_BASE + 3, 0x03);
        serial.write(COM1_BASE + 7, 0x5a); // scratch
        serial.write(COM1_BASE + 1, 0x02); // IER
        let record = serial.record();
        assert_eq!(
            (
                record.baud_divisor_low,
                record.scratch,
                record.interrupt_enable
            ),
            (1, 0x5a, 2)
        );
        let Some(mut again) =
            SerialDevice::from_record(Console::capture(), SerialInterrupt::None, &record)
        else {
            panic!("a recorded UART was refused");
        };
        assert_eq!(again.record(), record);
        assert_eq!(again.read(COM1_BASE + 7), 0x5a);
        let full = SerialRecord {
            in_buffer: vec![0; 4096],
            ..record
        };
        assert!(
            SerialDevice::from_record(Console::capture(), SerialInterrupt::None, &full).is_none()
        );
    }
}
