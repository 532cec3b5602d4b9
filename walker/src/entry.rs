//! Page-table entries: raw bits, flags and their decoded meaning.
//!
//! Bit positions follow the Intel SDM, Vol. 3A, §4.5 (Tables 4-15 to 4-20) and the AMD APM,
//! Vol. 2, §5.3. Entries are decoded against a [`PagingContext`](crate::PagingContext),
//! because whether bit 63 means NX and how wide a frame number is depend on the vCPU.

use bitflags::bitflags;
use vm_memory::GuestAddress;

use crate::level::{Level, PageSize};

bitflags! {
    /// Hardware bits of a page-table entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EntryFlags: u64 {
        /// Bit 0, P: the entry is present.
        const PRESENT = 1 << 0;
        /// Bit 1, R/W: writes allowed (subject to every level and CR0.WP).
        const WRITABLE = 1 << 1;
        /// Bit 2, U/S: user-mode accesses allowed (subject to every level).
        const USER = 1 << 2;
        /// Bit 3, PWT: page-level write-through (memory-type index bit 0).
        const PWT = 1 << 3;
        /// Bit 4, PCD: page-level cache disable (memory-type index bit 1).
        const PCD = 1 << 4;
        /// Bit 5, A: set by the CPU when the entry is used for a translation.
        const ACCESSED = 1 << 5;
        /// Bit 6, D: set by the CPU on a write through a leaf entry.
        const DIRTY = 1 << 6;
        /// Bit 7: PS in a PMD or PUD (the entry is a huge leaf); PAT in a PTE;
        /// reserved in a PML4 or PML5 entry.
        const HUGE_OR_PAT = 1 << 7;
        /// Bit 8, G: global translation (leaves only, with CR4.PGE).
        const GLOBAL = 1 << 8;
        /// Bit 12: PAT (memory-type index bit 2) in a 2 MiB or 1 GiB leaf.
        const PAT_HUGE = 1 << 12;
        /// Bit 63, XD/NX: instruction fetches not allowed (with EFER.NXE; reserved without).
        const NO_EXECUTE = 1 << 63;
    }
}

/// Bits 51:12 of an entry: the physical address of a table or of a 4 KiB frame.
pub(crate) const ADDR_MASK_4K: u64 = 0x000f_ffff_ffff_f000;
/// Bits 51:21: the physical address of a 2 MiB frame.
pub(crate) const ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;
/// Bits 51:30: the physical address of a 1 GiB frame.
pub(crate) const ADDR_MASK_1G: u64 = 0x000f_ffff_c000_0000;
/// Bits 62:59: the protection key of a leaf (with CR4.PKE or CR4.PKS).
pub(crate) const PKEY_MASK: u64 = 0x7800_0000_0000_0000;
const PKEY_SHIFT: u32 = 59;

/// A raw 64-bit page-table entry, exactly as read from the guest or synthesized by a split.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entry(pub u64);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({:#018x})", self.0)
    }
}

impl Entry {
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The known hardware flag bits (other bits are dropped).
    pub const fn flags(self) -> EntryFlags {
        EntryFlags::from_bits_truncate(self.0)
    }

    /// Bit 0, P.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & EntryFlags::PRESENT.bits() != 0
    }

    /// Whether this entry, found at `level`, maps a page rather than pointing to a table.
    /// Only meaningful for present entries without reserved bits.
    #[inline]
    pub const fn is_leaf(self, level: Level) -> bool {
        match level {
            Level::Pte => true,
            Level::Pmd | Level::Pud => self.0 & EntryFlags::HUGE_OR_PAT.bits() != 0,
            Level::Pml4 | Level::Pml5 => false,
        }
    }

    /// The guest-physical address this entry holds: a table's address, or a leaf's frame,
    /// using the address bits for its level and kind.
    #[inline]
    pub const fn address(self, level: Level) -> GuestAddress {
        let mask = match (self.is_leaf(level), level) {
            (true, Level::Pmd) => ADDR_MASK_2M,
            (true, Level::Pud) => ADDR_MASK_1G,
            _ => ADDR_MASK_4K,
        };
        GuestAddress(self.0 & mask)
    }

    /// The 3-bit PAT/PCD/PWT memory-type index of a leaf at `level` (PAT is bit 7 in a PTE,
    /// bit 12 in a huge leaf). The index selects an entry of the guest's IA32_PAT MSR.
    #[inline]
    pub const fn memory_type(self, level: Level) -> MemoryType {
        let pat_bit = match level {
            Level::Pte => EntryFlags::HUGE_OR_PAT.bits(),
            _ => EntryFlags::PAT_HUGE.bits(),
        };
        let pat = (self.0 & pat_bit != 0) as u8;
        let pcd = (self.0 & EntryFlags::PCD.bits() != 0) as u8;
        let pwt = (self.0 & EntryFlags::PWT.bits() != 0) as u8;
        MemoryType((pat << 2) | (pcd << 1) | pwt)
    }

    /// Bits 62:59, the protection key (meaningful for leaves when CR4.PKE/PKS is set).
    pub const fn pkey_bits(self) -> u8 {
        ((self.0 & PKEY_MASK) >> PKEY_SHIFT) as u8
    }
}

/// A leaf's memory-type index: `PAT << 2 | PCD << 1 | PWT`, selecting one of the eight
/// entries of the guest's IA32_PAT MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MemoryType(pub u8);

impl MemoryType {
    /// The PAT bit of the index.
    pub const fn pat(self) -> bool {
        self.0 & 4 != 0
    }
    /// The PCD bit of the index.
    pub const fn pcd(self) -> bool {
        self.0 & 2 != 0
    }
    /// The PWT bit of the index.
    pub const fn pwt(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Access rights, either of one entry or accumulated along a path from the root.
///
/// Along a path, W and U are ANDed (every level must allow the access) and NX is ORed
/// (any level can forbid execution), as the MMU does (SDM Vol. 3A §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    /// Writes allowed at every level.
    pub writable: bool,
    /// User-mode accesses allowed at every level.
    pub user: bool,
    /// Instruction fetches forbidden at some level.
    pub nx: bool,
}

impl Access {
    /// The rights of an empty path: everything allowed, nothing forbidden.
    pub const ROOT: Access = Access {
        writable: true,
        user: true,
        nx: false,
    };

    /// The rights after also passing through `entry`. `nxe` says whether bit 63 means NX.
    #[inline(always)]
    pub const fn through(self, entry: Entry, nxe: bool) -> Access {
        let f = entry.0;
        // `&` and `|` rather than `&&` and `||`: nothing to short-circuit, and no branches.
        Access {
            writable: self.writable & (f & EntryFlags::WRITABLE.bits() != 0),
            user: self.user & (f & EntryFlags::USER.bits() != 0),
            nx: self.nx | (nxe & (f & EntryFlags::NO_EXECUTE.bits() != 0)),
        }
    }
}

/// What kind of entry a present, well-formed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Points to a table of the next level.
    Table,
    /// Maps a page of this size.
    Leaf(PageSize),
}

/// The decoded view of one entry, as a callback sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// P.
    pub present: bool,
    /// R/W of this entry alone.
    pub writable: bool,
    /// U/S of this entry alone.
    pub user: bool,
    /// NX of this entry alone (always false without EFER.NXE).
    pub nx: bool,
    /// A.
    pub accessed: bool,
    /// D (leaves only; false for tables).
    pub dirty: bool,
    /// G (leaves only; false for tables).
    pub global: bool,
    /// PAT/PCD/PWT index (for tables, only PCD/PWT are defined; PAT reads as 0).
    pub memory_type: MemoryType,
    /// Protection key (leaves only, and only with CR4.PKE or CR4.PKS; otherwise 0).
    pub pkey: u8,
    /// Table or leaf.
    pub kind: EntryKind,
    /// The table's or frame's guest-physical address.
    pub frame: GuestAddress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_type_uses_the_right_pat_bit() {
        let pte = Entry(0x1000 | 0x80 | 0x10 | 1);
        assert_eq!(pte.memory_type(Level::Pte), MemoryType(0b110));
        let pmd = Entry(0x20_0000 | 0x1000 | 0x80 | 0x8 | 1);
        assert_eq!(pmd.memory_type(Level::Pmd), MemoryType(0b101));
        // Bit 7 of a PMD is PS, not PAT.
        let pmd_no_pat = Entry(0x20_0000 | 0x80 | 1);
        assert_eq!(pmd_no_pat.memory_type(Level::Pmd), MemoryType(0));
    }

    #[test]
    fn addresses_by_kind() {
        let e = Entry(0x8000_0000_4020_1063 | 0x80);
        assert_eq!(e.address(Level::Pud), GuestAddress(0x4000_0000));
        assert_eq!(e.address(Level::Pmd), GuestAddress(0x4020_0000));
        assert_eq!(e.address(Level::Pte), GuestAddress(0x4020_1000));
        assert_eq!(e.address(Level::Pml4), GuestAddress(0x4020_1000));
    }

    #[test]
    fn access_accumulates() {
        let rw_user = Entry(0b111);
        let ro = Entry(0b101);
        let nx = Entry(0b111 | (1 << 63));
        let a = Access::ROOT.through(rw_user, true).through(ro, true);
        assert!(!a.writable && a.user && !a.nx);
        let b = Access::ROOT.through(nx, true).through(rw_user, true);
        assert!(b.nx && b.writable);
        let c = Access::ROOT.through(nx, false);
        assert!(!c.nx, "bit 63 is not NX without EFER.NXE");
    }

    #[test]
    fn pkey_bits() {
        assert_eq!(Entry(0xb << 59).pkey_bits(), 0xb);
    }
}
