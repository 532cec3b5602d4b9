//! The paging context: everything about a vCPU that decides how its page tables are read.

use thiserror::Error;
use vm_memory::GuestAddress;

use crate::entry::{Entry, EntryFlags};
use crate::level::Level;

/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR0.WP: supervisor writes honour R/W.
pub const CR0_WP: u64 = 1 << 16;
/// CR4.PAE: physical-address extension (required for 4- and 5-level paging).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.PCIDE: CR3 bits 11:0 are a PCID.
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.PKE: protection keys for user pages.
pub const CR4_PKE: u64 = 1 << 22;
/// CR4.PKS: protection keys for supervisor pages.
pub const CR4_PKS: u64 = 1 << 24;
/// EFER.LME: long mode enabled.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: bit 63 of entries is NX rather than reserved.
pub const EFER_NXE: u64 = 1 << 11;

/// The widest physical address x86-64 defines.
pub const MAX_PHYS_ADDR_BITS: u8 = 52;
/// The narrowest MAXPHYADDR a 64-bit CPU reports.
pub const MIN_PHYS_ADDR_BITS: u8 = 36;

/// The vCPU registers a walk depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlRegisters {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

impl ControlRegisters {
    /// Registers of a vCPU in long mode with 4-level paging and NX enabled, with root table
    /// `cr3`: what an offline inspection of a memory file assumes when told nothing else.
    pub const fn long_mode(cr3: u64) -> Self {
        ControlRegisters {
            cr0: CR0_PG | CR0_WP | CR0_PE,
            cr3,
            cr4: CR4_PAE | CR4_PGE,
            efer: EFER_LME | EFER_LMA | EFER_NXE,
        }
    }
}

/// 4-level or 5-level paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// 4-level paging: 48-bit virtual addresses, root table is a PML4.
    FourLevel,
    /// 5-level paging (CR4.LA57): 57-bit virtual addresses, root table is a PML5.
    FiveLevel,
}

impl PagingMode {
    /// The level of the root table.
    #[inline]
    pub const fn root_level(self) -> Level {
        match self {
            PagingMode::FourLevel => Level::Pml4,
            PagingMode::FiveLevel => Level::Pml5,
        }
    }

    /// Width of a canonical virtual address in bits.
    #[inline]
    pub const fn va_bits(self) -> u32 {
        match self {
            PagingMode::FourLevel => 48,
            PagingMode::FiveLevel => 57,
        }
    }
}

/// Why registers do not describe a paging mode the walker reads.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContextError {
    /// CR0.PG is clear: virtual addresses are physical, there is nothing to walk.
    #[error("paging is disabled (CR0.PG is clear, CR0={cr0:#x})")]
    PagingDisabled {
        /// The CR0 value given.
        cr0: u64,
    },
    /// Paging is on but not 4- or 5-level paging (32-bit or PAE paging).
    #[error(
        "the vCPU is not in long mode (CR4.PAE={pae}, EFER.LMA={lma}); only 4- and 5-level paging can be walked"
    )]
    NotLongMode {
        /// CR4.PAE.
        pae: bool,
        /// EFER.LMA.
        lma: bool,
    },
    /// Register values no x86-64 CPU can hold: CR0.PG without CR0.PE (setting it faults),
    /// or EFER.LMA without EFER.LME (LMA is set by the CPU only when LME and PG are).
    #[error("the registers are inconsistent: {0}")]
    Inconsistent(&'static str),
    /// MAXPHYADDR outside what x86-64 CPUs report.
    #[error(
        "MAXPHYADDR {0} is out of range (expected {MIN_PHYS_ADDR_BITS}..={MAX_PHYS_ADDR_BITS})"
    )]
    PhysAddrBits(u8),
}

/// How to read one vCPU's page tables: root table, mode and the bits that change the
/// meaning of entries. Built from [`ControlRegisters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingContext {
    regs: ControlRegisters,
    root: GuestAddress,
    mode: PagingMode,
    nxe: bool,
    pke: bool,
    phys_bits: u8,
    gbpages: bool,
    /// Reserved-bit masks for present entries, indexed by `[level - 1][is_leaf]`.
    reserved: [[u64; 2]; 5],
}

impl PagingContext {
    /// Builds the context for a vCPU with these registers, assuming MAXPHYADDR = 52 and
    /// 1 GiB pages supported (see [`with_phys_addr_bits`](Self::with_phys_addr_bits) and
    /// [`with_gbpages`](Self::with_gbpages)).
    pub fn new(regs: ControlRegisters) -> Result<Self, ContextError> {
        if regs.cr0 & CR0_PG == 0 {
            return Err(ContextError::PagingDisabled { cr0: regs.cr0 });
        }
        if regs.cr0 & CR0_PE == 0 {
            return Err(ContextError::Inconsistent(
                "CR0.PG is set without CR0.PE (protection), which no CPU allows",
            ));
        }
        if regs.efer & EFER_LMA != 0 && regs.efer & EFER_LME == 0 {
            return Err(ContextError::Inconsistent(
                "EFER.LMA is set without EFER.LME, which no CPU allows",
            ));
        }
        let pae = regs.cr4 & CR4_PAE != 0;
        let lma = regs.efer & EFER_LMA != 0;
        if !pae || !lma {
            return Err(ContextError::NotLongMode { pae, lma });
        }
        let mode = if regs.cr4 & CR4_LA57 != 0 {
            PagingMode::FiveLevel
        } else {
            PagingMode::FourLevel
        };
        let mut ctx = PagingContext {
            regs,
            root: GuestAddress(0),
            mode,
            nxe: regs.efer & EFER_NXE != 0,
            pke: regs.cr4 & (CR4_PKE | CR4_PKS) != 0,
            phys_bits: MAX_PHYS_ADDR_BITS,
            gbpages: true,
            reserved: [[0; 2]; 5],
        };
        ctx.recompute();
        Ok(ctx)
    }

    /// Sets MAXPHYADDR (CPUID 0x80000008 EAX\[7:0\]): entry bits from it up to bit 51 are
    /// reserved, and CR3 bits from it up are ignored.
    pub fn with_phys_addr_bits(mut self, bits: u8) -> Result<Self, ContextError> {
        if !(MIN_PHYS_ADDR_BITS..=MAX_PHYS_ADDR_BITS).contains(&bits) {
            return Err(ContextError::PhysAddrBits(bits));
        }
        self.phys_bits = bits;
        self.recompute();
        Ok(self)
    }

    /// Says whether the CPU supports 1 GiB pages (CPUID 0x80000001 EDX.Page1GB). Without
    /// them, PS in a PUD is a reserved bit.
    pub fn with_gbpages(mut self, supported: bool) -> Self {
        self.gbpages = supported;
        self.recompute();
        self
    }

    fn recompute(&mut self) {
        let phys_mask = (1u64 << self.phys_bits) - 1;
        // CR3 bits 11:0 are PCID or PWT/PCD flags; bits at and above MAXPHYADDR are
        // ignored (or carry LAM/no-flush controls).
        self.root = GuestAddress(self.regs.cr3 & phys_mask & !0xfff);
        let above_phys = ((1u64 << MAX_PHYS_ADDR_BITS) - 1) & !phys_mask;
        let nx = if self.nxe {
            0
        } else {
            EntryFlags::NO_EXECUTE.bits()
        };
        let common = above_phys | nx;
        let ps = EntryFlags::HUGE_OR_PAT.bits();
        // Index 0: table pointer (or PTE); index 1: huge leaf.
        let mut r = [[common; 2]; 5];
        r[Level::Pmd as usize - 1][1] = common | 0x1f_e000; // bits 20:13 of a 2 MiB leaf
        r[Level::Pud as usize - 1][1] = if self.gbpages {
            common | 0x3fff_e000 // bits 29:13 of a 1 GiB leaf
        } else {
            common | ps
        };
        // PS is reserved in PML4 and PML5 entries.
        r[Level::Pml4 as usize - 1] = [common | ps; 2];
        r[Level::Pml5 as usize - 1] = [common | ps; 2];
        self.reserved = r;
    }

    /// The registers this context was built from.
    pub const fn registers(&self) -> ControlRegisters {
        self.regs
    }

    /// Guest-physical address of the root table (CR3 with PCID/flags and high bits masked).
    #[inline]
    pub const fn root(&self) -> GuestAddress {
        self.root
    }

    /// 4- or 5-level paging.
    #[inline]
    pub const fn mode(&self) -> PagingMode {
        self.mode
    }

    /// Whether bit 63 of entries is NX (EFER.NXE).
    #[inline]
    pub const fn nxe(&self) -> bool {
        self.nxe
    }

    /// Whether leaves carry protection keys (CR4.PKE or CR4.PKS).
    pub const fn pke(&self) -> bool {
        self.pke
    }

    /// MAXPHYADDR in bits.
    pub const fn phys_addr_bits(&self) -> u8 {
        self.phys_bits
    }

    /// Whether PS in a PUD maps a 1 GiB page.
    pub const fn gbpages(&self) -> bool {
        self.gbpages
    }

    /// The reserved bits set in a present `entry` at `level`, or 0 when it is well formed.
    #[inline]
    pub const fn reserved_bits(&self, entry: Entry, level: Level) -> u64 {
        let leaf = matches!(level, Level::Pmd | Level::Pud) && entry.is_leaf(level);
        entry.0 & self.reserved_mask(level, leaf)
    }

    /// The precomputed mask of bits reserved in a present entry at `level` that is a huge
    /// leaf (`leaf`, meaningful for PMDs and PUDs only) or not: `reserved_bits` is one AND
    /// with it. A PTE always uses `leaf == false` (its bit 7 is PAT, not PS).
    #[inline]
    pub(crate) const fn reserved_mask(&self, level: Level, leaf: bool) -> u64 {
        self.reserved[level as usize - 1][leaf as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(cr3: u64) -> PagingContext {
        PagingContext::new(ControlRegisters::long_mode(cr3)).unwrap()
    }

    #[test]
    fn cr3_masking() {
        // PCID in bits 11:0, a no-flush bit 63 and LAM bits 61/62 are not address bits.
        let c = ctx(0xc000_0000_1234_5fff | (1 << 63));
        assert_eq!(c.root(), GuestAddress(0x1234_5000));
        let c = c.with_phys_addr_bits(40).unwrap();
        let c2 = PagingContext::new(ControlRegisters::long_mode(0x0f00_1234_5000))
            .unwrap()
            .with_phys_addr_bits(40)
            .unwrap();
        assert_eq!(c.root(), GuestAddress(0x1234_5000));
        assert_eq!(c2.root(), GuestAddress(0x1234_5000));
    }

    #[test]
    fn modes_and_errors() {
        let mut r = ControlRegisters::long_mode(0x1000);
        assert_eq!(PagingContext::new(r).unwrap().mode(), PagingMode::FourLevel);
        r.cr4 |= CR4_LA57;
        assert_eq!(PagingContext::new(r).unwrap().mode(), PagingMode::FiveLevel);
        r.cr0 &= !CR0_PG;
        assert!(matches!(
            PagingContext::new(r),
            Err(ContextError::PagingDisabled { .. })
        ));
        let mut r = ControlRegisters::long_mode(0x1000);
        r.efer &= !EFER_LMA;
        assert!(matches!(
            PagingContext::new(r),
            Err(ContextError::NotLongMode { lma: false, .. })
        ));
        let mut r = ControlRegisters::long_mode(0x1000);
        r.cr0 &= !CR0_PE;
        assert!(matches!(
            PagingContext::new(r),
            Err(ContextError::Inconsistent(_))
        ));
        let mut r = ControlRegisters::long_mode(0x1000);
        r.efer &= !EFER_LME;
        let e = PagingContext::new(r).unwrap_err().to_string();
        assert!(e.contains("EFER.LMA is set without EFER.LME"), "{e}");
        assert!(ctx(0).with_phys_addr_bits(53).is_err());
        assert!(ctx(0).with_phys_addr_bits(20).is_err());
    }

    #[test]
    fn reserved_bits_by_level() {
        let c = ctx(0).with_phys_addr_bits(46).unwrap();
        let p = 1u64;
        assert_eq!(c.reserved_bits(Entry(p | (1 << 46)), Level::Pte), 1 << 46);
        assert_eq!(c.reserved_bits(Entry(p | (1 << 51)), Level::Pml4), 1 << 51);
        assert_eq!(c.reserved_bits(Entry(p | 0x80), Level::Pml4), 0x80);
        assert_eq!(c.reserved_bits(Entry(p | 0x80), Level::Pml5), 0x80);
        assert_eq!(c.reserved_bits(Entry(p | 0x80), Level::Pte), 0, "PAT");
        assert_eq!(
            c.reserved_bits(Entry(p | 0x80 | 0x2000), Level::Pmd),
            0x2000
        );
        assert_eq!(c.reserved_bits(Entry(p | 0x2000), Level::Pmd), 0, "table");
        assert_eq!(
            c.reserved_bits(Entry(p | 0x80 | 0x1000), Level::Pmd),
            0,
            "PAT"
        );
        assert_eq!(
            c.reserved_bits(Entry(p | 0x80 | 0x20_0000), Level::Pud),
            0x20_0000
        );
        assert_eq!(c.reserved_bits(Entry(p | (1 << 63)), Level::Pte), 0);
        let no_nx = PagingContext::new(ControlRegisters {
            efer: EFER_LME | EFER_LMA,
            ..ControlRegisters::long_mode(0)
        })
        .unwrap();
        assert_eq!(
            no_nx.reserved_bits(Entry(p | (1 << 63)), Level::Pte),
            1 << 63
        );
        let no_gb = ctx(0).with_gbpages(false);
        assert_eq!(no_gb.reserved_bits(Entry(p | 0x80), Level::Pud), 0x80);
        // Software-available bits 62:52 and 11:9 are never reserved.
        assert_eq!(
            c.reserved_bits(Entry(p | 0x7ff0_0000_0000_0e00), Level::Pte),
            0
        );
    }
}
