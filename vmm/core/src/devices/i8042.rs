//! Just enough of the i8042 keyboard controller (ports 0x60 data, 0x64 status/command)
//! for Linux to reset the machine: command 0xFE (pulse the reset line) records a reset
//! request, which ends the VM cleanly ([`crate::exit::handle_exit`]). Linux's
//! `reboot -f` (and `poweroff -f` without ACPI, and `panic=-1`) ends that way.
//!
//! The status register reads [`STATUS`]: input buffer empty, so `kb_wait` before the
//! reset returns at once (a floating bus, 0xff, would make it spin 65536 exits), and
//! output buffer *full*, forever: Linux's i8042 driver flushes at most 16 bytes, decides
//! "No controller found" and stops. With "output buffer empty" instead, it would wait
//! for replies to commands we do not emulate (measured: 1.3 s of a nested boot).

/// The data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status (read) and command (write) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;
/// Status bit 0, OBF: the output buffer holds a byte for the CPU.
pub const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Status bit 1, IBF: the controller has not taken the last byte written yet.
pub const STATUS_INPUT_FULL: u8 = 1 << 1;
/// What the status register always reads: OBF set, IBF clear (see the module docs).
pub const STATUS: u8 = STATUS_OUTPUT_FULL;

/// The keyboard controller.
#[derive(Debug, Default)]
pub struct I8042 {
    reset_requested: bool,
}

impl I8042 {
    /// Whether `port` belongs to the controller.
    pub fn claims(port: u16) -> bool {
        port == I8042_DATA_PORT || port == I8042_COMMAND_PORT
    }

    /// A one-byte read: [`STATUS`] from the status port, 0 from the data port.
    pub fn read(&mut self, port: u16) -> u8 {
        if port == I8042_COMMAND_PORT {
            STATUS
        } else {
            0
        }
    }

    /// A one-byte write; only the reset command does anything.
    pub fn write(&mut self, port: u16, value: u8) {
        if port == I8042_COMMAND_PORT && value == CMD_RESET_CPU {
            self.reset_requested = true;
        }
    }

    /// Whether the guest asked for a reset.
    pub fn reset_requested(&self) -> bool {
        self.reset_requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_command_fe_requests_a_reset() {
        let mut kbd = I8042::default();
        // kb_wait: IBF clear. i8042_flush: OBF never clears, so it gives up.
        assert_eq!(kbd.read(I8042_COMMAND_PORT) & STATUS_INPUT_FULL, 0);
        assert_ne!(kbd.read(I8042_COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(kbd.read(I8042_DATA_PORT), 0);
        kbd.write(I8042_DATA_PORT, CMD_RESET_CPU);
        kbd.write(I8042_COMMAND_PORT, 0xad);
        assert!(!kbd.reset_requested());
        kbd.write(I8042_COMMAND_PORT, CMD_RESET_CPU);
        assert!(kbd.reset_requested());
        assert!(I8042::claims(0x60) && I8042::claims(0x64) && !I8042::claims(0x61));
    }
}
