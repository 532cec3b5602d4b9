//! Every fixed guest-physical address the VMM uses, in one place.
//!
//! ```text
//! 0x0000_0500  BOOT_GDT_START    boot GDT (null, code64 0x08, data 0x10, TSS 0x18)
//! 0x0000_0520  BOOT_IDT_START    boot IDT (empty, limit 7)
//! 0x0000_7000  BOOT_PARAMS_START Linux: the zero page (`struct boot_params`)
//! 0x0000_8000  BOOT_STACK_TOP    built-in guest: initial RSP (stack grows down below it)
//! 0x0000_8ff0  LINUX_STACK_TOP   Linux: initial RSP, stack in [0x8000, 0x8ff0)
//! 0x0000_9000  BOOT_PML4_START   boot PML4 -> PDPT
//! 0x0000_a000  BOOT_PDPT_START   boot PDPT[0..4] -> PDs
//! 0x0000_b000  BOOT_PD_START     boot PD: identity map of [0, 1 GiB) with 2 MiB pages
//!                                (Linux: 4 PDs to 0xf000, identity map of [0, 4 GiB))
//! 0x0000_c000  BOOT_PML5_START   built-in guest with LA57 only: boot PML5[0] -> PML4
//!                                (CR3 at entry; Linux never uses it: its PDs go there)
//! 0x0000_f000  LINUX_BOOT_PML5_START Linux entered in 5-level paging: PML5[0] -> PML4
//! 0x0002_0000  CMDLINE_START     Linux: kernel command line, at most CMDLINE_MAX_SIZE bytes
//! 0x0009_fc00  EBDA_START        Linux e820: RAM below it, [EBDA, 1 MiB) reserved
//! 0x000e_0000  (acpi::RSDP_START) Linux: ACPI tables, up to the reset vector
//! 0x000f_fff0  RESET_VECTOR      Linux: a 16-byte stub at F000:FFF0 that asks for a reset
//! 0x0010_0000  GUEST_IMAGE_START built-in guest (flat binary), BSP entry
//!              LINUX_KERNEL_START Linux: the bzImage's protected-mode kernel, 64-bit entry +0x200
//! 0x0010_0010  GUEST_AP_ENTRY    where non-boot vCPUs start (a spin loop)
//! 0x0020_0000  GUEST_TABLE_POOL  the built-in guest's own page tables (2 MiB)
//! 0x0040_0000  GUEST_TEST_FRAMES the built-in guest's test frames, to 16 MiB
//!              (Linux: the initrd goes as high as possible below the hole / RAM end)
//! 0xc000_0000  MMIO_HOLE_START   [3 GiB, 4 GiB) is never RAM; RAM above it goes to 4 GiB+
//! ```

use vm_memory::GuestAddress;

/// The boot GDT (4 entries, see [`super::regs::BOOT_GDT`]).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// The boot IDT: 8 zero bytes. The guest installs its own if it wants interrupts.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_TOP: GuestAddress = GuestAddress(0x8000);
/// The boot PML4 (CR3 at entry).
pub const BOOT_PML4_START: GuestAddress = GuestAddress(0x9000);
/// The boot PDPT.
pub const BOOT_PDPT_START: GuestAddress = GuestAddress(0xa000);
/// The built-in guest's boot PML5 (CR3 at entry when the vCPU's CPUID offers LA57):
/// entry 0 points to [`BOOT_PML4_START`], so the same identity map is reached with
/// 5-level paging. Only the built-in guest uses it (the Linux boot's PDs cover it).
pub const BOOT_PML5_START: GuestAddress = GuestAddress(0xc000);
/// The boot PD: 512 2 MiB identity leaves covering [0, 1 GiB).
pub const BOOT_PD_START: GuestAddress = GuestAddress(0xb000);
/// How much the boot page tables identity-map.
pub const BOOT_IDENTITY_MAP_SIZE: u64 = 1 << 30;
/// KVM's three-page TSS area for VMX real mode, just below 4 GiB (inside the MMIO
/// hole, never RAM).
pub const KVM_TSS_ADDRESS: GuestAddress = GuestAddress(0xfffb_d000);

/// Where the built-in guest is loaded, and where the boot vCPU starts.
pub const GUEST_IMAGE_START: GuestAddress = GuestAddress(0x10_0000);
/// Where the other vCPUs start: offset 0x10 of the image, a `pause` loop.
pub const GUEST_AP_ENTRY: GuestAddress = GuestAddress(0x10_0010);
/// The largest image that fits before [`GUEST_TABLE_POOL`].
pub const GUEST_IMAGE_MAX_SIZE: u64 = 0x10_0000;
/// The built-in guest's page-table pool (it allocates its tables here).
pub const GUEST_TABLE_POOL: GuestAddress = GuestAddress(0x20_0000);
/// The built-in guest's test frames (4 KiB frames from here, 2 MiB frames at 6, 8
/// and 10 MiB); it uses nothing at or above 16 MiB.
pub const GUEST_TEST_FRAMES: GuestAddress = GuestAddress(0x40_0000);
/// The smallest RAM the built-in guest runs in.
pub const BUILTIN_GUEST_MIN_MEMORY: u64 = 32 << 20;

/// Start of the 32-bit MMIO hole: RAM never covers [3 GiB, 4 GiB).
pub const MMIO_HOLE_START: GuestAddress = GuestAddress(0xc000_0000);
/// End of the 32-bit MMIO hole; RAM beyond 3 GiB continues here.
pub const MMIO_HOLE_END: GuestAddress = GuestAddress(0x1_0000_0000);

/// Linux, PVH boot of an ELF vmlinux: `struct hvm_start_info`, then its memory map at
/// [`PVH_MEMMAP_START`] and its module list (the initrd) at [`PVH_MODLIST_START`], all
/// in the page below the zero page (unused by the PVH path).
pub const PVH_START_INFO: GuestAddress = GuestAddress(0x6000);
/// Linux, PVH: the memory map (`hvm_memmap_table_entry`, 24 bytes each).
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6040);
/// Linux, PVH: the module list (`hvm_modlist_entry`, 32 bytes each).
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6f00);
/// Linux: the zero page (`struct boot_params`, 4 KiB), as in Firecracker.
pub const BOOT_PARAMS_START: GuestAddress = GuestAddress(0x7000);
/// Linux: initial stack pointer (the kernel switches to its own stack at once; this
/// one lives in [0x8000, 0x8ff0), clear of the zero page and the page tables).
pub const LINUX_STACK_TOP: GuestAddress = GuestAddress(0x8ff0);
/// Linux: how many boot PDs follow [`BOOT_PD_START`] (one per GiB identity-mapped).
pub const LINUX_BOOT_PD_COUNT: u64 = 4;
/// Linux: how much the boot page tables identity-map. The 64-bit boot protocol needs the
/// kernel, the zero page, the command line and the initrd mapped; they all lie below
/// the 3 GiB hole, and the 4 GiB cover it all with 2 MiB pages (no 1 GiB pages: PVM and
/// some hosts lack them).
pub const LINUX_IDENTITY_MAP_SIZE: u64 = LINUX_BOOT_PD_COUNT << 30;
/// Linux entered in 5-level paging (a bzImage vmm decompressed, on a vCPU with LA57):
/// the boot PML5, after the 4 PDs, whose entry 0 points to [`BOOT_PML4_START`].
pub const LINUX_BOOT_PML5_START: GuestAddress = GuestAddress(0xf000);
/// Linux: the kernel command line (NUL-terminated), as in Firecracker.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Linux: the longest command line including its NUL (x86's `COMMAND_LINE_SIZE`; a
/// kernel whose header says less gets less).
pub const CMDLINE_MAX_SIZE: u64 = 2048;
/// Linux: start of the Extended BIOS Data Area. The e820 map gives [0, EBDA) as RAM and
/// reserves [EBDA, 1 MiB) (legacy VGA/ROM area, never RAM on a PC).
pub const EBDA_START: GuestAddress = GuestAddress(0x9_fc00);
/// Linux: the real-mode reset vector F000:FFF0, the last 16 bytes below 1 MiB (inside
/// the reserved legacy area): `vmm` puts a stub there that asks for a reset
/// ([`crate::devices::reset::reset_vector_stub`]), for guests that reboot through it.
/// (The power-on alias at 0xffff_fff0 is in the MMIO hole and not backed: a vCPU is
/// never reset to it here, since a reset ends the VM.)
pub const RESET_VECTOR: GuestAddress = GuestAddress(0xf_fff0);
/// Linux: the first byte above the legacy area; e820 RAM resumes here.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Linux: where the bzImage's protected-mode part is loaded (the header's default
/// `code32_start`); the 64-bit entry point is 0x200 bytes in.
pub const LINUX_KERNEL_START: GuestAddress = GuestAddress(0x10_0000);
/// Linux: offset of `startup_64` from the load address (boot protocol 2.10+, `XLF_KERNEL_64`).
pub const LINUX_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Linux: the initrd's start is aligned down to this (2 MiB: one huge page of the boot map).
pub const INITRD_ALIGN: u64 = 2 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixed region of the low boot area: [start, end) and a name.
    fn linux_regions() -> Vec<(u64, u64, &'static str)> {
        vec![
            (BOOT_GDT_START.0, BOOT_GDT_START.0 + 32, "gdt"),
            (BOOT_IDT_START.0, BOOT_IDT_START.0 + 8, "idt"),
            (
                BOOT_PARAMS_START.0,
                BOOT_PARAMS_START.0 + 0x1000,
                "zero page",
            ),
            (0x8000, LINUX_STACK_TOP.0, "linux stack"),
            (BOOT_PML4_START.0, BOOT_PML4_START.0 + 0x1000, "pml4"),
            (BOOT_PDPT_START.0, BOOT_PDPT_START.0 + 0x1000, "pdpt"),
            (
                BOOT_PD_START.0,
                BOOT_PD_START.0 + LINUX_BOOT_PD_COUNT * 0x1000,
                "pds",
            ),
            (
                CMDLINE_START.0,
                CMDLINE_START.0 + CMDLINE_MAX_SIZE,
                "cmdline",
            ),
            (LINUX_KERNEL_START.0, LINUX_KERNEL_START.0 + 1, "kernel"),
        ]
    }

    #[test]
    fn linux_boot_regions_do_not_overlap() {
        let mut regions = linux_regions();
        regions.sort();
        for pair in regions.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
        // Everything the boot needs below 1 MiB sits in e820 RAM below the EBDA, the
        // kernel above the legacy area, all of it inside the identity map.
        for (_, end, name) in &regions {
            if *name != "kernel" {
                assert!(*end <= EBDA_START.0, "{name}");
            }
            assert!(*end <= LINUX_IDENTITY_MAP_SIZE, "{name}");
        }
        assert!(LINUX_KERNEL_START >= HIMEM_START);
        // The reset vector's stub is the last 16 bytes of the reserved legacy area.
        assert_eq!(RESET_VECTOR.0 + 16, HIMEM_START.0);
        const { assert!(RESET_VECTOR.0 >= EBDA_START.0) };
        const { assert!(MMIO_HOLE_END.0 <= LINUX_IDENTITY_MAP_SIZE) };
        assert!(KVM_TSS_ADDRESS >= MMIO_HOLE_START && KVM_TSS_ADDRESS < MMIO_HOLE_END);
    }

    #[test]
    fn builtin_tables_stay_where_they_were() {
        assert_eq!(BOOT_PD_START.0 + 0x1000, 0xc000);
        const { assert!(BOOT_STACK_TOP.0 <= BOOT_PML4_START.0) };
        // The PML5 follows the built-in guest's single PD, below its image.
        assert_eq!(BOOT_PML5_START.0, BOOT_PD_START.0 + 0x1000);
        const { assert!(BOOT_PML5_START.0 + 0x1000 <= GUEST_IMAGE_START.0) };
        assert_eq!(BOOT_PML5_START.0 % 0x1000, 0);
    }
}
