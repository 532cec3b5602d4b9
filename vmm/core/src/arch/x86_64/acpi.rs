//! ACPI tables for Linux guests: how a kernel without MP-table support (Debian's cloud
//! kernel has no `CONFIG_X86_MPPARSE`) finds its CPUs and interrupt controllers, and how
//! it powers the machine off.
//!
//! The platform is *hardware-reduced* ACPI, as in Firecracker and Cloud Hypervisor: no
//! PM1 blocks, no SCI, no PM timer, no legacy PIC. What the guest gets:
//!
//! - **RSDP** at [`RSDP_START`] (inside the reserved `[EBDA, 1 MiB)` range, where Linux
//!   also scans for it; the zero page's `acpi_rsdp_addr` points at it too), revision 2,
//!   pointing to the XSDT;
//! - **XSDT** listing the FADT and the MADT;
//! - **FADT** (revision 6.5) with `HW_REDUCED_ACPI`, the DSDT's address, the
//!   sleep control / status registers at I/O ports [`SLEEP_CONTROL_PORT`] /
//!   [`SLEEP_STATUS_PORT`], so `poweroff` works ([`crate::devices::AcpiSleep`]), and the
//!   reset register (`RESET_REG_SUP`: [`ACPI_RESET_VALUE`] written to [`ACPI_RESET_PORT`],
//!   [`crate::devices::ResetControl`]), which Linux uses with `reboot=a`. (Its default
//!   reboot does not: on a hardware-reduced platform `reboot_init` picks the EFI method,
//!   which without EFI falls back to the BIOS one, a jump to the reset vector; see
//!   [`crate::devices::reset`].)
//! - **DSDT** with `\_S5_`, the sleep-type value of the soft-off state (without it Linux
//!   would not offer ACPI power-off), and COM1 (`PNP0501`: ports 0x3f8..0x3ff, IRQ 4
//!   edge-triggered active-high). A hardware-reduced platform has no legacy PIC, so
//!   Linux sets up no ISA IRQs by itself: without this description the UART's
//!   interrupt would not be configured, and everything user space writes to the
//!   console would stay in the guest's tty buffer (kernel messages, written by
//!   polling, would still appear); and the CMOS RTC (`PNP0B00`: ports 0x70..0x71, IRQ 8),
//!   which `rtc_cmos` otherwise fails to probe for the same reason; and pvpanic
//!   (`QEMU0001`: port 0x505, [`crate::devices::PvPanic`]), which Linux's `pvpanic-mmio`
//!   driver binds to;
//! - **MADT**: the local APIC address, one enabled local APIC per vCPU (APIC ID = vCPU
//!   index, as the CPUID given to each vCPU says), and KVM's in-kernel I/O APIC (ID 0,
//!   GSI base 0). No interrupt source overrides: KVM's default routing sends ISA IRQ *n*
//!   to I/O APIC pin *n*, which is what Linux assumes without them.
//!
//! All tables lie in `[RSDP_START, ACPI_END)`, which the e820 map reserves.

use acpi_tables::Aml;
use acpi_tables::aml::{Device, EISAName, IO, Interrupt, Name, Package, Path, ResourceTemplate};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Where the RSDP goes: the start of the BIOS read-only area Linux scans
/// (`[0xe0000, 0x100000)`, 16-byte aligned).
pub const RSDP_START: GuestAddress = GuestAddress(0xe_0000);
/// End (exclusive) of the area the tables may use: the reset-vector stub follows.
pub const ACPI_END: GuestAddress = super::layout::RESET_VECTOR;
/// The FADT's sleep control register (an 8-bit I/O port). Not 0x600 as on QEMU's q35:
/// the debug port ([`crate::devices::debug_port`]) is there.
pub const SLEEP_CONTROL_PORT: u16 = 0x5f0;
/// The FADT's sleep status register (an 8-bit I/O port).
pub const SLEEP_STATUS_PORT: u16 = 0x5f1;
/// The FADT's reset register (an 8-bit I/O port of its own, so that a reset through it
/// is told apart from one through 0xCF9).
pub const ACPI_RESET_PORT: u16 = 0x5f2;
/// What the guest writes to [`ACPI_RESET_PORT`] to reset (the FADT's `RESET_VALUE`).
pub const ACPI_RESET_VALUE: u8 = 1;
/// The sleep-type value `\_S5_` gives for soft-off; the guest writes it to the sleep
/// control register (bits 2..=4) with SLP_EN (bit 5).
pub const S5_SLEEP_TYPE: u8 = 5;
/// COM1's first port and port count, and its interrupt (ISA IRQ 4 = GSI 4).
const COM1_PORT: u16 = 0x3f8;
const COM1_PORTS: u8 = 8;
const COM1_GSI: u32 = 4;
/// The CMOS RTC's ports (0x70, 0x71) and its interrupt (ISA IRQ 8 = GSI 8).
const RTC_PORT: u16 = 0x70;
const RTC_PORTS: u8 = 2;
const RTC_GSI: u32 = 8;
/// pvpanic's port ([`crate::devices::pvpanic::PVPANIC_PORT`]; arch cannot import devices).
const PVPANIC_PORT: u16 = 0x505;
/// KVM's in-kernel local APIC.
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// KVM's in-kernel I/O APIC.
pub const IO_APIC_ADDRESS: u32 = 0xfec0_0000;

const OEM_ID: [u8; 6] = *b"GSTWLK";
const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity.
const HYPERVISOR_VENDOR: [u8; 8] = *b"GUESTWLK";
/// Each table starts on this alignment.
const TABLE_ALIGN: u64 = 16;
/// IA-PC boot architecture flags (FADT `iapc_boot_arch`): an 8042 is present (our
/// [`crate::devices::I8042`]), no VGA, MSI not supported (no PCI at all), no ASPM
/// control. Bit 5 (no CMOS RTC) stays clear: the RTC is emulated.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU, or more than 8-bit local APIC IDs can name (0..=254; 255 is broadcast).
    #[error("ACPI: {0} vCPUs do not fit 8-bit local APIC IDs")]
    TooManyVcpus(usize),
    /// The tables do not fit below 1 MiB.
    #[error("ACPI: the tables need {needed} bytes from {:#x}, more than the {available} available", RSDP_START.0)]
    TooBig {
        /// Bytes of all tables.
        needed: u64,
        /// Bytes in `[RSDP_START, ACPI_END)`.
        available: u64,
    },
    /// Guest memory refused a write.
    #[error("ACPI: cannot write the {table} at {address:#x}: {reason}")]
    Write {
        /// Which table.
        table: &'static str,
        /// Where.
        address: u64,
        /// What guest memory said.
        reason: String,
    },
}

/// The tables as bytes at their guest-physical addresses, RSDP first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// `(name, address, bytes)` of every table.
    pub tables: Vec<(&'static str, GuestAddress, Vec<u8>)>,
}

impl AcpiTables {
    /// Lays out the tables for `vcpus` vCPUs.
    pub fn build(vcpus: usize) -> Result<AcpiTables, AcpiError> {
        let apic_ids = u8::try_from(vcpus)
            .ok()
            .filter(|&n| n > 0 && n < u8::MAX)
            .ok_or(AcpiError::TooManyVcpus(vcpus))?;
        let mut next = align(RSDP_START.0 + Rsdp::len() as u64);
        let mut place = |len: usize| {
            let at = next;
            next = align(at + len as u64);
            at
        };

        let dsdt = dsdt();
        let dsdt_at = place(dsdt.len());
        let fadt = bytes_of(&fadt(dsdt_at));
        let fadt_at = place(fadt.len());
        let madt = bytes_of(&madt(apic_ids));
        let madt_at = place(madt.len());
        let mut xsdt = XSDT::new(OEM_ID, *b"GWXSDT  ", OEM_REVISION);
        xsdt.add_entry(fadt_at);
        xsdt.add_entry(madt_at);
        let xsdt = bytes_of(&xsdt);
        let xsdt_at = place(xsdt.len());
        let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_at));

        let available = ACPI_END.0 - RSDP_START.0;
        let needed = next - RSDP_START.0;
        if needed > available {
            return Err(AcpiError::TooBig { needed, available });
        }
        Ok(AcpiTables {
            tables: vec![
                ("RSDP", RSDP_START, rsdp),
                ("DSDT", GuestAddress(dsdt_at), dsdt.as_slice().to_vec()),
                ("FADT", GuestAddress(fadt_at), fadt),
                ("MADT", GuestAddress(madt_at), madt),
                ("XSDT", GuestAddress(xsdt_at), xsdt),
            ],
        })
    }

    /// Writes every table into `memory`; returns the RSDP's address.
    pub fn write<M: GuestMemoryBackend>(&self, memory: &M) -> Result<GuestAddress, AcpiError> {
        for (table, at, bytes) in &self.tables {
            memory
                .write_slice(bytes, *at)
                .map_err(|e| AcpiError::Write {
                    table,
                    address: at.0,
                    reason: e.to_string(),
                })?;
        }
        Ok(RSDP_START)
    }
}

fn align(at: u64) -> u64 {
    at.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT: `Name (_S5_, Package () { 5 })`, `Device (\_SB.COM1)`, `Device (\_SB.RTC)`
/// and `Device (\_SB.PEVT)` (pvpanic).
fn dsdt() -> Sdt {
    let header_len = 36;
    let mut dsdt = Sdt::new(*b"DSDT", header_len, 2, OEM_ID, *b"GWDSDT  ", OEM_REVISION);
    let s5 = Name::new(Path::new("_S5_"), &Package::new(vec![&S5_SLEEP_TYPE]));
    dsdt.append_slice(&bytes_of(&s5));
    let com1 = isa_device("_SB_.COM1", "PNP0501", COM1_PORT, COM1_PORTS, COM1_GSI);
    dsdt.append_slice(&com1);
    let rtc = isa_device("_SB_.RTC_", "PNP0B00", RTC_PORT, RTC_PORTS, RTC_GSI);
    dsdt.append_slice(&rtc);
    dsdt.append_slice(&pvpanic_device());
    dsdt
}

/// `Device (\_SB.PEVT)`: `_HID "QEMU0001"` (an ACPI ID, not an EISA one) and one port,
/// as QEMU describes its ISA pvpanic.
fn pvpanic_device() -> Vec<u8> {
    let io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let resources = ResourceTemplate::new(vec![&io]);
    let hid = "QEMU0001".to_string();
    let hid_name = Name::new(Path::new("_HID"), &hid);
    let crs_name = Name::new(Path::new("_CRS"), &resources);
    bytes_of(&Device::new(
        Path::new("_SB_.PEVT"),
        vec![&hid_name, &crs_name],
    ))
}

/// A PNP device with one I/O range and one edge-triggered, active-high interrupt.
fn isa_device(path: &str, hid: &str, port: u16, ports: u8, gsi: u32) -> Vec<u8> {
    let io = IO::new(port, port, 1, ports);
    // consumer, edge-triggered, active-high, exclusive.
    let irq = Interrupt::new(true, true, false, false, gsi);
    let resources = ResourceTemplate::new(vec![&io, &irq]);
    let hid = EISAName::new(hid);
    let uid: u8 = 0;
    let hid_name = Name::new(Path::new("_HID"), &hid);
    let uid_name = Name::new(Path::new("_UID"), &uid);
    let crs_name = Name::new(Path::new("_CRS"), &resources);
    bytes_of(&Device::new(
        Path::new(path),
        vec![&hid_name, &uid_name, &crs_name],
    ))
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_at: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"GWFADT  ", OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch =
        (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_PCIE_ASPM_CONTROLS)
            .into();
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.reset_reg = io_register(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    fadt.finalize()
}

fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        *b"GWMADT  ",
        OEM_REVISION,
        LocalInterruptController::Address(LOCAL_APIC_ADDRESS),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IO_APIC_ADDRESS, 0));
    madt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(tables: &'a AcpiTables, name: &str) -> (u64, &'a [u8]) {
        let (_, at, bytes) = tables.tables.iter().find(|(n, _, _)| *n == name).unwrap();
        (at.0, bytes)
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// Reads the tables back the way a guest does: RSDP -> XSDT -> FADT/MADT -> DSDT,
    /// checking every signature, length and checksum on the way.
    #[test]
    fn a_guest_finds_every_table_from_the_rsdp() {
        let tables = AcpiTables::build(3).unwrap();
        let (rsdp_at, rsdp) = table(&tables, "RSDP");
        assert_eq!(rsdp_at, RSDP_START.0);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: XSDT");

        let by_address = |address: u64| {
            let (name, _, bytes) = tables
                .tables
                .iter()
                .find(|(_, at, _)| at.0 == address)
                .unwrap_or_else(|| panic!("nothing at {address:#x}"));
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{name} length");
            assert_eq!(sum(bytes), 0, "{name} checksum");
            assert!(address + bytes.len() as u64 <= ACPI_END.0);
            bytes.as_slice()
        };
        let xsdt = by_address(u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|at| u64_at(xsdt, at))
            .collect();
        let signatures: Vec<&[u8]> = entries.iter().map(|&a| &by_address(a)[..4]).collect();
        assert_eq!(signatures, [b"FACP", b"APIC"]);

        let fadt = by_address(entries[0]);
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let dsdt = by_address(u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        // NameOp "_S5_" PackageOp len 1-element BytePrefix 5
        assert_eq!(
            &dsdt[36..46],
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 5]
        );
        // Then Device (\_SB.COM1): ExtOpPrefix DeviceOp, with its IO and IRQ resources.
        let com1 = &dsdt[46..];
        assert_eq!(&com1[..2], &[0x5b, 0x82]);
        let find = |needle: &[u8]| com1.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"COM1") && find(b"_HID") && find(b"_CRS"));
        // IO descriptor: decode16, min = max = 0x3f8, alignment 1, length 8.
        assert!(find(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        // Extended IRQ descriptor: consumer + edge, one interrupt, GSI 4.
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00
        ]));
        // The RTC: its name, ports 0x70..0x71 and GSI 8.
        assert!(find(b"RTC_"));
        assert!(find(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]));
        assert!(find(&[
            0x89, 0x06, 0x00, 0x03, 0x01, 0x08, 0x00, 0x00, 0x00
        ]));
        // Sleep control / status: SystemIO, 8 bits, byte access, our ports.
        assert_eq!(&fadt[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(SLEEP_STATUS_PORT));
        // RESET_REG_SUP, and the reset register: SystemIO, 8 bits, byte access, our
        // port, then RESET_VALUE.
        assert_ne!(u32_at(fadt, 112) & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // pvpanic: its ACPI ID as a string, port 0x505, one byte.
        assert!(find(b"PEVT"));
        assert!(find(b"\x0dQEMU0001\x00"));
        assert!(find(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));

        let madt = by_address(entries[1]);
        assert_eq!(u32_at(madt, 36), LOCAL_APIC_ADDRESS);
        let mut at = 44;
        let mut apic_ids = Vec::new();
        let mut io_apics = Vec::new();
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(madt, at + 4), 1, "enabled");
                    apic_ids.push(madt[at + 3]);
                }
                1 => io_apics.push(u32_at(madt, at + 4)),
                other => panic!("unexpected MADT structure {other}"),
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(apic_ids, [0, 1, 2]);
        assert_eq!(io_apics, [IO_APIC_ADDRESS]);
    }

    #[test]
    fn vcpu_counts_outside_8_bit_apic_ids_are_refused() {
        assert!(matches!(
            AcpiTables::build(0),
            Err(AcpiError::TooManyVcpus(0))
        ));
        assert!(matches!(
            AcpiTables::build(255),
            Err(AcpiError::TooManyVcpus(255))
        ));
        let big = AcpiTables::build(254).unwrap();
        let (_, madt) = table(&big, "MADT");
        assert_eq!(madt.len(), 44 + 254 * 8 + 12);
    }
}
