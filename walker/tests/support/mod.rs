//! Builds arbitrary x86-64 page-table hierarchies inside a `GuestMemoryMmap`, and an
//! independent reference model of the MMU to check the walker against.
//!
//! Shared by the walker's integration tests and benchmarks (`#[path]`-included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use walker::{ControlRegisters, PagingContext, context};

/// P | RW | US.
pub const TABLE_FLAGS: u64 = 0x7;
/// Bit 7: PS in a PMD/PUD.
pub const PS: u64 = 0x80;
pub const P: u64 = 1;
pub const W: u64 = 2;
pub const U: u64 = 4;
pub const PWT: u64 = 8;
pub const PCD: u64 = 0x10;
pub const A: u64 = 0x20;
pub const D: u64 = 0x40;
pub const G: u64 = 0x100;
pub const PAT_HUGE: u64 = 0x1000;
pub const NX: u64 = 1 << 63;

/// A page-table hierarchy under construction. Tables are allocated bottom-up from
/// `table_base`; everything else in memory is left to the test.
pub struct Builder {
    pub mem: GuestMemoryMmap,
    pub root: u64,
    pub la57: bool,
    next_table: u64,
    table_end: u64,
}

impl Builder {
    /// `mem_size` bytes of RAM at GPA 0; tables are allocated in `[table_base, table_end)`.
    pub fn new(mem_size: usize, table_base: u64, table_end: u64, la57: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap();
        let mut b = Builder {
            mem,
            root: 0,
            la57,
            next_table: table_base,
            table_end,
        };
        b.root = b.alloc_table();
        b
    }

    /// A small default: 64 MiB of RAM, tables in the first 16 MiB, 4-level paging.
    pub fn small() -> Self {
        Builder::new(64 << 20, 0x1000, 16 << 20, false)
    }

    pub fn alloc_table(&mut self) -> u64 {
        let t = self.next_table;
        assert!(t + 0x1000 <= self.table_end, "test ran out of table space");
        self.next_table += 0x1000;
        t
    }

    pub fn tables_used(&self) -> u64 {
        self.next_table
    }

    pub fn read(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    pub fn write(&self, gpa: u64, value: u64) {
        self.mem.write_obj(value, GuestAddress(gpa)).unwrap();
    }

    /// Top level (5 or 4).
    pub fn top(&self) -> u32 {
        if self.la57 { 5 } else { 4 }
    }

    /// The table of `level` (1 = PTE table) on the path to `va`, creating missing tables
    /// with `parent_flags`. Returns the table's GPA.
    pub fn table_for(&mut self, va: u64, level: u32, parent_flags: u64) -> u64 {
        let mut table = self.root;
        let mut l = self.top();
        while l > level {
            let slot = table + index(va, l) * 8;
            let e = self.read(slot);
            if e & P == 0 {
                let t = self.alloc_table();
                self.write(slot, t | parent_flags);
                table = t;
            } else {
                assert!(e & PS == 0 || l > 3, "path to {va:#x} crosses a huge leaf");
                table = e & 0x000f_ffff_ffff_f000;
            }
            l -= 1;
        }
        table
    }

    /// Maps `va` to `pa` with a leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB);
    /// `flags` are the leaf's bits besides the address and PS.
    pub fn map(&mut self, va: u64, pa: u64, level: u32, flags: u64) {
        self.map_with_parents(va, pa, level, flags, TABLE_FLAGS);
    }

    pub fn map_with_parents(&mut self, va: u64, pa: u64, level: u32, flags: u64, parents: u64) {
        let table = self.table_for(va, level, parents);
        let ps = if level > 1 { PS } else { 0 };
        self.write(table + index(va, level) * 8, pa | flags | ps | P);
    }

    /// Writes a raw entry at `level` on the path to `va` (creating the path above).
    pub fn set_raw(&mut self, va: u64, level: u32, raw: u64) {
        let table = self.table_for(va, level, TABLE_FLAGS);
        self.write(table + index(va, level) * 8, raw);
    }

    pub fn regs(&self) -> ControlRegisters {
        let mut r = ControlRegisters::long_mode(self.root);
        if self.la57 {
            r.cr4 |= context::CR4_LA57;
        }
        r
    }

    pub fn ctx(&self) -> PagingContext {
        PagingContext::new(self.regs()).unwrap()
    }

    /// A hash of all guest RAM.
    pub fn hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for region in self.mem.iter() {
            let mut buf = vec![0u8; region.len() as usize];
            self.mem.read_slice(&mut buf, region.start_addr()).unwrap();
            h.write(&buf);
        }
        h.finish()
    }
}

pub fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Sign-extends a folded address of `width` bits.
pub fn canonical(va: u64, width: u32) -> u64 {
    let s = 64 - width;
    (((va << s) as i64) >> s) as u64
}

// ---------------------------------------------------------------------------------------
// The reference model: a plain, independent re-statement of the SDM's rules, one entry at a
// time, sharing no code with the walker.
// ---------------------------------------------------------------------------------------

/// What the reference MMU says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefResult {
    /// (gpa, page size, writable, user, nx)
    Mapped {
        gpa: u64,
        size: u64,
        writable: bool,
        user: bool,
        nx: bool,
    },
    /// Entry at this level (1..=5) not present.
    NotPresent(u32),
    /// Entry at this level has reserved bits.
    Reserved(u32),
    /// Entry at this level points outside memory.
    Outside(u32),
    NonCanonical,
}

/// Paging parameters of the reference model.
#[derive(Debug, Clone, Copy)]
pub struct RefMmu {
    pub cr3: u64,
    pub la57: bool,
    pub nxe: bool,
    pub maxphy: u32,
    pub gbpages: bool,
}

impl RefMmu {
    pub fn new(cr3: u64, la57: bool) -> Self {
        RefMmu {
            cr3,
            la57,
            nxe: true,
            maxphy: 52,
            gbpages: true,
        }
    }

    fn reserved(&self, e: u64, level: u32) -> bool {
        let phys_rsvd = ((1u64 << 52) - 1) & !((1u64 << self.maxphy) - 1);
        if e & phys_rsvd != 0 {
            return true;
        }
        if !self.nxe && e & NX != 0 {
            return true;
        }
        let ps = e & PS != 0;
        match level {
            4 | 5 => ps,
            3 if ps => !self.gbpages || (e >> 13) & ((1 << 17) - 1) != 0,
            2 if ps => (e >> 13) & 0xff != 0,
            _ => false,
        }
    }

    pub fn translate(&self, mem: &GuestMemoryMmap, va: u64) -> RefResult {
        let width = if self.la57 { 57 } else { 48 };
        if canonical(va, width) != va {
            return RefResult::NonCanonical;
        }
        let addr_mask = ((1u64 << self.maxphy) - 1) & !0xfff;
        let mut table = self.cr3 & addr_mask;
        let (mut w, mut u, mut nx) = (true, true, false);
        let top = if self.la57 { 5 } else { 4 };
        let mut level = top;
        loop {
            // The fault belongs to the entry that pointed here (the root: to the top level).
            let pointer_level = if level == top { top } else { level + 1 };
            // A table only partly in memory is outside memory as a whole.
            if mem.get_slice(GuestAddress(table), 4096).is_err() {
                return RefResult::Outside(pointer_level);
            }
            let slot = table + index(va, level) * 8;
            let e: u64 = match mem.read_obj(GuestAddress(slot)) {
                Ok(e) => e,
                Err(_) => return RefResult::Outside(pointer_level),
            };
            if e & P == 0 {
                return RefResult::NotPresent(level);
            }
            if self.reserved(e, level) {
                return RefResult::Reserved(level);
            }
            w &= e & W != 0;
            u &= e & U != 0;
            nx |= self.nxe && e & NX != 0;
            let leaf = level == 1 || ((level == 2 || level == 3) && e & PS != 0);
            if leaf {
                let size = 1u64 << (12 + 9 * (level - 1));
                let frame = e & 0x000f_ffff_ffff_f000 & !(size - 1);
                return RefResult::Mapped {
                    gpa: frame + (va & (size - 1)),
                    size,
                    writable: w,
                    user: u,
                    nx,
                };
            }
            table = e & 0x000f_ffff_ffff_f000;
            level -= 1;
        }
    }

    /// Every leaf reachable from CR3: (va, gpa, size, writable, user, nx), in VA order,
    /// by brute-force recursion over all entries. Only for small hierarchies.
    pub fn leaves(&self, mem: &GuestMemoryMmap) -> Vec<(u64, u64, u64, bool, bool, bool)> {
        let mut out = Vec::new();
        let width = if self.la57 { 57 } else { 48 };
        let top = if self.la57 { 5 } else { 4 };
        let addr_mask = ((1u64 << self.maxphy) - 1) & !0xfff;
        self.rec(
            mem,
            self.cr3 & addr_mask,
            top,
            0,
            (true, true, false),
            width,
            &mut out,
        );
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn rec(
        &self,
        mem: &GuestMemoryMmap,
        table: u64,
        level: u32,
        base: u64,
        acc: (bool, bool, bool),
        width: u32,
        out: &mut Vec<(u64, u64, u64, bool, bool, bool)>,
    ) {
        if mem.get_slice(GuestAddress(table), 4096).is_err() {
            return;
        }
        for i in 0..512u64 {
            let e: u64 = mem.read_obj(GuestAddress(table + i * 8)).unwrap();
            if e & P == 0 || self.reserved(e, level) {
                continue;
            }
            let shift = 12 + 9 * (level - 1);
            let va = base | (i << shift);
            let acc2 = (
                acc.0 && e & W != 0,
                acc.1 && e & U != 0,
                acc.2 || (self.nxe && e & NX != 0),
            );
            let leaf = level == 1 || ((level == 2 || level == 3) && e & PS != 0);
            if leaf {
                let size = 1u64 << shift;
                let frame = e & 0x000f_ffff_ffff_f000 & !(size - 1);
                out.push((canonical(va, width), frame, size, acc2.0, acc2.1, acc2.2));
            } else {
                self.rec(
                    mem,
                    e & 0x000f_ffff_ffff_f000,
                    level - 1,
                    va,
                    acc2,
                    width,
                    out,
                );
            }
        }
    }
}
