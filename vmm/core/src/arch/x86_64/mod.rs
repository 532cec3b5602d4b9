//! x86-64 boot state: the guest-physical layout, registers and CPUID.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod pio;
pub mod regs;
