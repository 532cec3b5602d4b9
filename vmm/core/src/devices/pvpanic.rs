//! QEMU's pvpanic device on an ISA port ([`PVPANIC_PORT`], 0x505), described in the DSDT
//! as `QEMU0001` ([`crate::arch::x86_64::acpi`]): how a guest says it panicked. Linux's
//! driver (`pvpanic-mmio`, which also takes an I/O port resource) reads the capabilities
//! at probe and, from its panic notifier, writes [`PVPANIC_PANICKED`]; that write ends the
//! VM as a crash ([`crate::exit::handle_exit`]) before the kernel's own `panic=` action.
//! [`PVPANIC_CRASH_LOADED`] (a kdump kernel takes over) is accepted and does not end it:
//! the crash kernel runs on, and ends the VM itself.

/// The ISA port, as on QEMU (`-device pvpanic`).
pub const PVPANIC_PORT: u16 = 0x505;
/// Event bit 0: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit 1: the guest panicked and is loading a crash kernel.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// What a read answers: the events this device understands.
pub const PVPANIC_CAPABILITIES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// The pvpanic register.
#[derive(Debug, Default)]
pub struct PvPanic {
    panicked: bool,
}

impl PvPanic {
    /// Whether `port` is the pvpanic register.
    pub fn claims(port: u16) -> bool {
        port == PVPANIC_PORT
    }

    /// A one-byte read: the capabilities.
    pub fn read(&mut self, _port: u16) -> u8 {
        PVPANIC_CAPABILITIES
    }

    /// A one-byte write of events.
    pub fn write(&mut self, _port: u16, value: u8) {
        if value & PVPANIC_PANICKED != 0 {
            self.panicked = true;
        }
    }

    /// Whether the guest reported a panic.
    pub fn panicked(&self) -> bool {
        self.panicked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_panicked_event_reports_a_panic() {
        let mut pvpanic = PvPanic::default();
        assert_eq!(pvpanic.read(PVPANIC_PORT), 0x3);
        pvpanic.write(PVPANIC_PORT, PVPANIC_CRASH_LOADED);
        pvpanic.write(PVPANIC_PORT, 0);
        assert!(!pvpanic.panicked());
        pvpanic.write(PVPANIC_PORT, PVPANIC_PANICKED);
        assert!(pvpanic.panicked());
        assert!(PvPanic::claims(0x505) && !PvPanic::claims(0x504));
    }
}
