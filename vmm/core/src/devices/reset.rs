//! The reset lines of a PC besides the i8042's ([`super::I8042`]), so that every way a
//! Linux guest resets the machine ends the VM ([`crate::exit::handle_exit`]):
//!
//! - the **PCI reset control register**, port [`RESET_CONTROL_PORT`] (0xCF9): a write
//!   with [`RCR_RESET_CPU`] set resets (Linux `reboot=p`/`reboot=pci` writes 0x02, then
//!   0x0e). Reads give the last value written, RST_CPU clear, as on QEMU's q35;
//! - the **ACPI reset register** the FADT advertises ([`crate::arch::x86_64::acpi`],
//!   `RESET_REG` with `RESET_REG_SUP`), port [`ACPI_RESET_PORT`]: a write of
//!   [`ACPI_RESET_VALUE`] resets (Linux `reboot=a`). Its own port, not 0xCF9 as on
//!   QEMU, so that the VM's end says which of the two the guest used;
//! - the **reset vector**: a jump to F000:FFF0 in real mode, where a PC's firmware
//!   starts. Linux's BIOS reboot (`reboot=b`, and the fallback of its default and EFI
//!   reboots when there is no EFI) does that, and so does any guest that expects a BIOS.
//!   There is no firmware here, so `vmm` puts a 16-byte stub at the vector
//!   ([`reset_vector_stub`], at [`crate::arch::x86_64::layout::RESET_VECTOR`]) that
//!   writes [`RESET_VECTOR_PORT`]: without it, the vCPU would execute zeros forever.
//!
//! Each request is kept with its [`ResetMethod`], which the VM's end names.

use std::fmt;

use crate::arch::x86_64::acpi::{ACPI_RESET_PORT, ACPI_RESET_VALUE};

/// The PCI reset control register (Intel ICH/PCH "RST_CNT").
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Reset control bit 2: reset the CPU (with bits 1, SYS_RST, and 3, FULL_RST, saying how).
pub const RCR_RESET_CPU: u8 = 1 << 2;
/// The port the reset-vector stub writes (any value): it only exists for that stub.
pub const RESET_VECTOR_PORT: u16 = 0x5f3;

/// How the guest asked for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResetMethod {
    /// i8042 command 0xFE on port 0x64 (Linux `reboot=k`).
    Keyboard,
    /// The FADT's ACPI reset register (Linux `reboot=a`).
    AcpiResetRegister,
    /// The PCI reset control register 0xCF9 (Linux `reboot=p`).
    PciResetControl,
    /// A jump to the reset vector F000:FFF0 in real mode (Linux `reboot=b`, and its
    /// default and EFI reboots without EFI firmware).
    ResetVector,
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyboard => write!(f, "i8042 command 0xfe on port 0x64"),
            Self::AcpiResetRegister => write!(
                f,
                "the FADT's ACPI reset register, port {ACPI_RESET_PORT:#x}"
            ),
            Self::PciResetControl => write!(
                f,
                "the PCI reset control register, port {RESET_CONTROL_PORT:#x}"
            ),
            Self::ResetVector => write!(
                f,
                "a jump to the reset vector F000:FFF0 in real mode, where no firmware runs"
            ),
        }
    }
}

/// The 16 bytes at the reset vector: `mov dx, RESET_VECTOR_PORT; mov al, 1; out dx, al;`
/// then `hlt` in a loop (never reached: the `OUT` ends the VM). 16-bit real-mode code.
pub fn reset_vector_stub() -> [u8; 16] {
    let [lo, hi] = RESET_VECTOR_PORT.to_le_bytes();
    [
        0xba, lo, hi, // mov dx, RESET_VECTOR_PORT
        0xb0, 0x01, // mov al, 1
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
        0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, // nop padding
    ]
}

/// The reset control register, the ACPI reset register and the reset-vector port.
#[derive(Debug, Default)]
pub struct ResetControl {
    control: u8,
    requested: Option<ResetMethod>,
}

impl ResetControl {
    /// The reset control register's value, for a snapshot (a reset request is not
    /// state: it ends the VM).
    pub fn control(&self) -> u8 {
        self.control
    }

    /// Reset lines with the reset control register at `control` and no request.
    pub fn with_control(control: u8) -> Self {
        Self {
            control,
            requested: None,
        }
    }

    /// Whether `port` is one of the three.
    pub fn claims(port: u16) -> bool {
        matches!(
            port,
            RESET_CONTROL_PORT | ACPI_RESET_PORT | RESET_VECTOR_PORT
        )
    }

    /// A one-byte read: the reset control register's value (RST_CPU reads 0); 0 elsewhere.
    pub fn read(&mut self, port: u16) -> u8 {
        if port == RESET_CONTROL_PORT {
            self.control & !RCR_RESET_CPU
        } else {
            0
        }
    }

    /// A one-byte write; the first reset request is kept.
    pub fn write(&mut self, port: u16, value: u8) {
        let method = match port {
            RESET_CONTROL_PORT => {
                self.control = value;
                (value & RCR_RESET_CPU != 0).then_some(ResetMethod::PciResetControl)
            }
            ACPI_RESET_PORT => {
                (value == ACPI_RESET_VALUE).then_some(ResetMethod::AcpiResetRegister)
            }
            RESET_VECTOR_PORT => Some(ResetMethod::ResetVector),
            _ => None,
        };
        if self.requested.is_none() {
            self.requested = method;
        }
    }

    /// The reset the guest asked for, if it did.
    pub fn requested(&self) -> Option<ResetMethod> {
        self.requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_pci_reboot_resets_on_the_second_write() {
        let mut rcr = ResetControl::default();
        // reboot=p: cf9 = inb(0xcf9) & ~0x0e; outb(cf9 | 2); outb(cf9 | 0x0e).
        let cf9 = rcr.read(RESET_CONTROL_PORT) & !0x0e;
        rcr.write(RESET_CONTROL_PORT, cf9 | 2);
        assert_eq!(rcr.requested(), None, "SYS_RST alone only arms the reset");
        assert_eq!(rcr.read(RESET_CONTROL_PORT), 2);
        rcr.write(RESET_CONTROL_PORT, cf9 | 0x0e);
        assert_eq!(rcr.requested(), Some(ResetMethod::PciResetControl));
        assert_eq!(rcr.read(RESET_CONTROL_PORT), 0x0a, "RST_CPU reads 0");
    }

    #[test]
    fn acpi_reset_needs_the_fadt_value_and_the_first_request_wins() {
        let mut reset = ResetControl::default();
        reset.write(ACPI_RESET_PORT, ACPI_RESET_VALUE.wrapping_add(1));
        assert_eq!(reset.requested(), None);
        reset.write(ACPI_RESET_PORT, ACPI_RESET_VALUE);
        assert_eq!(reset.requested(), Some(ResetMethod::AcpiResetRegister));
        reset.write(RESET_VECTOR_PORT, 1);
        assert_eq!(reset.requested(), Some(ResetMethod::AcpiResetRegister));
        assert_eq!(reset.read(ACPI_RESET_PORT), 0);
        assert!(ResetControl::claims(0xcf9) && !ResetControl::claims(0xcf8));
    }

    #[test]
    fn the_stub_writes_the_reset_vector_port() {
        let stub = reset_vector_stub();
        assert_eq!(stub[0], 0xba);
        assert_eq!(u16::from_le_bytes([stub[1], stub[2]]), RESET_VECTOR_PORT);
        assert_eq!(&stub[3..9], &[0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]);
        let mut reset = ResetControl::default();
        reset.write(RESET_VECTOR_PORT, stub[4]);
        assert_eq!(reset.requested(), Some(ResetMethod::ResetVector));
        assert!(ResetMethod::ResetVector.to_string().contains("F000:FFF0"));
        assert!(ResetMethod::PciResetControl.to_string().contains("0xcf9"));
    }
}
