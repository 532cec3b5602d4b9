//! Every fixed guest-physical address the VMM uses, in one place.
//!
//! ```text
//! 0x0000_0500  BOOT_GDT_START    boot GDT (null, code64 0x08, data 0x10, TSS 0x18)
//! 0x0000_0520  BOOT_IDT_START    boot IDT (empty, limit 7)
//! 0x0000_8000  BOOT_STACK_TOP    initial RSP (stack grows down below it)
//! 0x0000_9000  BOOT_PML4_START   boot PML4 -> PDPT
//! 0x0000_a000  BOOT_PDPT_START   boot PDPT[0] -> PD
//! 0x0000_b000  BOOT_PD_START     boot PD: identity map of [0, 1 GiB) with 2 MiB pages
//! 0x0010_0000  GUEST_IMAGE_START built-in guest (flat binary), BSP entry
//! 0x0010_0010  GUEST_AP_ENTRY    where non-boot vCPUs start (a spin loop)
//! 0x0020_0000  GUEST_TABLE_POOL  the built-in guest's own page tables (2 MiB)
//! 0x0040_0000  GUEST_TEST_FRAMES the built-in guest's test frames, to 16 MiB
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
