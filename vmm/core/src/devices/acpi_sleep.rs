//! The hardware-reduced ACPI sleep registers the FADT points at
//! ([`crate::arch::x86_64::acpi`]): how a Linux guest powers off. `poweroff` ends in
//! `acpi_hw_extended_sleep`, which writes the soft-off sleep type (from the DSDT's
//! `\_S5_`) with SLP_EN to the sleep control register; that write requests power-off,
//! which ends the VM cleanly ([`crate::exit::handle_exit`]).

use crate::arch::x86_64::acpi::{S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};

/// Sleep control bit 5: enter the sleep state in SLP_TYP.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control bits 2..=4: the sleep type.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The sleep control and status registers.
#[derive(Debug, Default)]
pub struct AcpiSleep {
    power_off_requested: bool,
}

impl AcpiSleep {
    /// Whether `port` is one of the two registers.
    pub fn claims(port: u16) -> bool {
        port == SLEEP_CONTROL_PORT || port == SLEEP_STATUS_PORT
    }

    /// A one-byte read: both registers read 0 (the machine never wakes: WAK_STS clear).
    pub fn read(&mut self, _port: u16) -> u8 {
        0
    }

    /// A one-byte write. Only SLP_EN with the soft-off sleep type does anything; the
    /// status register's write-one-to-clear bits have nothing to clear.
    pub fn write(&mut self, port: u16, value: u8) {
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if port == SLEEP_CONTROL_PORT && value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
            self.power_off_requested = true;
        }
    }

    /// Whether the guest asked to be powered off.
    pub fn power_off_requested(&self) -> bool {
        self.power_off_requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slp_en_with_the_s5_type_powers_off() {
        let mut sleep = AcpiSleep::default();
        assert_eq!(sleep.read(SLEEP_STATUS_PORT), 0);
        // The type without SLP_EN, another type with it, the status port: nothing.
        sleep.write(SLEEP_CONTROL_PORT, S5_SLEEP_TYPE << 2);
        sleep.write(SLEEP_CONTROL_PORT, (3 << 2) | SLP_EN);
        sleep.write(SLEEP_STATUS_PORT, (S5_SLEEP_TYPE << 2) | SLP_EN);
        assert!(!sleep.power_off_requested());
        // What Linux writes: (5 << 2) | 0x20 = 0x34.
        sleep.write(SLEEP_CONTROL_PORT, 0x34);
        assert!(sleep.power_off_requested());
        assert!(AcpiSleep::claims(0x5f0) && AcpiSleep::claims(0x5f1) && !AcpiSleep::claims(0x600));
    }
}
