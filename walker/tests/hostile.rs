//! The hostile corpus: page tables a malicious guest can build. Every walk must end, without
//! panicking, with a result or a clear error, and without writing guest memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;

use support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use walker::{
    Action, Callbacks, ControlRegisters, EntryFn, Granularity, Gva, Level, PagingContext, Visit,
    Visitor, WalkError, walk,
};

const ALL: std::ops::RangeInclusive<Gva> = Gva(0)..=Gva(u64::MAX);

struct Count(Callbacks, u64, u64);
impl Count {
    fn pud_entry(&mut self, _: &Visit<'_>) -> Result<Action, Infallible> {
        self.1 += 1;
        Ok(Action::Descend)
    }
    fn pmd_entry(&mut self, _: &Visit<'_>) -> Result<Action, Infallible> {
        self.1 += 1;
        Ok(Action::Descend)
    }
    fn pte_entry(&mut self, _: &Visit<'_>) -> Result<Action, Infallible> {
        self.1 += 1;
        Ok(Action::Descend)
    }
}

impl Visitor for Count {
    type Error = Infallible;
    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::pud_entry);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::pmd_entry);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
    fn enabled(&self) -> Callbacks {
        self.0
    }
    fn fault(&mut self, _: &walker::Fault<'_>) -> Result<(), Infallible> {
        self.2 += 1;
        Ok(())
    }
}

/// PML4 → 512 × one PUD table → 512 × one PMD table → 512 × one PT → 512 leaves.
fn fully_aliased(leaf_level: u32) -> Builder {
    let mut b = Builder::small();
    let (pud, pmd, pt) = (b.alloc_table(), b.alloc_table(), b.alloc_table());
    for i in 0..512u64 {
        b.write(b.root + i * 8, pud | TABLE_FLAGS);
        b.write(pud + i * 8, pmd | TABLE_FLAGS);
        if leaf_level == 2 {
            b.write(pmd + i * 8, (i << 21) | PS | P | W);
        } else {
            b.write(pmd + i * 8, pt | TABLE_FLAGS);
        }
        b.write(pt + i * 8, (i << 12) | P | W);
    }
    b
}

#[test]
fn full_aliasing_is_bounded_by_the_budget() {
    for leaf_level in [1, 2] {
        let b = fully_aliased(leaf_level);
        let before = b.hash();
        let mut c = Count(Callbacks::PTE, 0, 0);
        let err = walk(&b.mem, &b.ctx(), ALL, &mut c).unwrap_err();
        assert!(
            matches!(err, WalkError::BudgetExhausted { limit, .. } if limit == walker::MIN_ENTRY_BUDGET)
        );
        assert!(c.1 < walker::MIN_ENTRY_BUDGET);
        // Levels with no callback below them are not entered: a PUD-only walk of the same
        // tables reads 512 + 512 × 512 entries and finishes.
        let mut c = Count(Callbacks::PUD, 0, 0);
        let stats = walk(&b.mem, &b.ctx(), ALL, &mut c).unwrap();
        assert_eq!(c.1, 512 * 512);
        assert_eq!(stats.entries_read, 512 + 512 * 512);
        assert_eq!(b.hash(), before);
    }
    // Translation is unaffected by aliasing.
    let b = fully_aliased(1);
    let t = walker::translate(&b.mem, &b.ctx(), Gva(0x7f12_3456_7abc)).unwrap();
    assert_eq!(
        t.gpa,
        GuestAddress(((0x7f12_3456_7abc >> 12) & 0x1ff) << 12 | 0xabc)
    );
}

#[test]
fn self_referencing_pml4_ends() {
    let mut b = Builder::small();
    b.map(0x1000, 0x1000, 1, W);
    // PML4[1] and PML4[511] point at the PML4 itself: it is read as a PUD, PMD and PT.
    b.write(b.root + 8, b.root | TABLE_FLAGS);
    b.write(b.root + 511 * 8, b.root | TABLE_FLAGS);
    let before = b.hash();
    for g in [Granularity::AsMapped, Granularity::Split4K] {
        let m = walker::mappings(&b.mem, &b.ctx(), ALL, g).unwrap();
        assert!(!m.is_empty());
    }
    // The recursive slot maps the tables themselves, as the MMU would: PML4[1][0][0][0]
    // resolves through PML4 → PML4 → PUD → PMD → the PT page.
    let t = walker::translate(&b.mem, &b.ctx(), Gva(0x80_0000_0000)).unwrap();
    let pt = b.read(b.read(b.read(b.root) & !0xfff) & !0xfff) & !0xfff;
    assert_eq!(t.gpa.0, pt);
    assert_eq!(b.hash(), before);
}

#[test]
fn tables_outside_memory_at_every_level() {
    let mut b = Builder::small();
    for (i, level) in [(0u64, 4u32), (1, 3), (2, 2)] {
        b.set_raw(
            0x100_0000_0000 * (i + 1),
            level,
            0xf_0000_0000 | TABLE_FLAGS,
        );
    }
    let mut c = Count(Callbacks::all(), 0, 0);
    walk(&b.mem, &b.ctx(), ALL, &mut c).unwrap();
    assert_eq!(c.2, 3, "one fault per bad pointer");
    // A table that straddles the end of memory is outside memory too.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1800)]).unwrap();
    mem.write_obj(0x1000u64 | 0x7, GuestAddress(0)).unwrap();
    let ctx = PagingContext::new(ControlRegisters::long_mode(0)).unwrap();
    assert!(matches!(
        walker::translate(&mem, &ctx, Gva(0)),
        Err(walker::TranslateError::OutsideMemory {
            level: Level::Pml4,
            ..
        })
    ));
}

/// xorshift64*: deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out
}

#[test]
fn random_memory_never_panics_or_changes() {
    for seed in 1..=24u64 {
        let bytes = garbage(seed, 1 << 20);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Make most entries point back into this 1 MiB so walks go deep.
        let mut fixed = bytes.clone();
        for chunk in fixed.chunks_mut(8) {
            let v = u64::from_le_bytes(chunk.try_into().unwrap());
            let v = if v % 4 != 0 {
                v & 0x8000_0000_000f_f1ff | 1
            } else {
                v
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        mem.write_slice(&fixed, GuestAddress(0)).unwrap();
        let mut regs = ControlRegisters::long_mode(seed << 12);
        if seed % 2 == 0 {
            regs.cr4 |= walker::context::CR4_LA57;
        }
        if seed % 3 == 0 {
            regs.efer &= !walker::context::EFER_NXE;
        }
        let ctx = PagingContext::new(regs)
            .unwrap()
            .with_phys_addr_bits(40)
            .unwrap();
        for cb in [
            Callbacks::all(),
            Callbacks::PMD,
            Callbacks::PTE,
            Callbacks::PUD,
        ] {
            let mut c = Count(cb, 0, 0);
            let r = walker::walk_with(
                &mem,
                &ctx,
                ALL,
                &mut c,
                walker::WalkOptions {
                    entry_budget: 1 << 20,
                },
            );
            assert!(matches!(r, Ok(_) | Err(WalkError::BudgetExhausted { .. })));
        }
        for va in garbage(seed + 100, 64).chunks(8) {
            let va = u64::from_le_bytes(va.try_into().unwrap());
            let _ = walker::translate(&mem, &ctx, Gva(va));
        }
        let mut after = vec![0u8; 1 << 20];
        mem.read_slice(&mut after, GuestAddress(0)).unwrap();
        assert!(after == fixed, "seed {seed}: guest memory changed");
    }
}

/// A 1 TiB guest (its memory reserved, not touched) whose tables map all of it with 4 KiB
/// pages through shared tables: `pml4_entries` PML4 entries → one PUD table → one PMD table
/// → one page table of 512 leaves. Returns the memory and the paging context.
fn terabyte_guest(pml4_entries: u64) -> (GuestMemoryMmap, PagingContext) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 40)]).unwrap();
    let (pml4, pud, pmd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
    for i in 0..512u64 {
        if i < pml4_entries {
            mem.write_obj(pud | TABLE_FLAGS, GuestAddress(pml4 + i * 8))
                .unwrap();
        }
        mem.write_obj(pmd | TABLE_FLAGS, GuestAddress(pud + i * 8))
            .unwrap();
        mem.write_obj(pt | TABLE_FLAGS, GuestAddress(pmd + i * 8))
            .unwrap();
        mem.write_obj((i << 12) | P | W, GuestAddress(pt + i * 8))
            .unwrap();
    }
    let ctx = PagingContext::new(ControlRegisters::long_mode(pml4)).unwrap();
    (mem, ctx)
}

/// The default budget scales with guest memory: a 1 TiB guest's full 4 KiB walk (2^28
/// leaves, far above the fixed 2^25 of old) finishes, and a 512^4 aliasing attack on the
/// same guest still stops, at the scaled budget.
#[test]
fn the_default_budget_scales_with_guest_memory() {
    assert_eq!(walker::scaled_entry_budget(0), walker::MIN_ENTRY_BUDGET);
    assert_eq!(
        walker::scaled_entry_budget(32 << 30),
        walker::MIN_ENTRY_BUDGET
    );
    assert_eq!(walker::scaled_entry_budget(1 << 40), 1 << 30);
    assert_eq!(
        walker::scaled_entry_budget(u64::MAX),
        walker::MAX_SCALED_ENTRY_BUDGET
    );

    let (mem, ctx) = terabyte_guest(2);
    let mut c = Count(Callbacks::PTE, 0, 0);
    let stats = walk(&mem, &ctx, ALL, &mut c).unwrap();
    assert_eq!(c.1, 1 << 28, "every 4 KiB page of 1 TiB");
    assert_eq!(
        stats.entries_read,
        512 + 2 * 512 + 2 * 512 * 512 + (1 << 28)
    );

    // The same walk with the old fixed budget stops.
    let fixed = walker::WalkOptions {
        entry_budget: walker::MIN_ENTRY_BUDGET,
    };
    let err = walker::walk_with(&mem, &ctx, ALL, &mut Count(Callbacks::PTE, 0, 0), fixed);
    assert!(matches!(err, Err(WalkError::BudgetExhausted { .. })));

    let (mem, ctx) = terabyte_guest(512);
    let err = walk(&mem, &ctx, ALL, &mut Count(Callbacks::PTE, 0, 0)).unwrap_err();
    assert!(
        matches!(err, WalkError::BudgetExhausted { limit, .. } if limit == 1 << 30),
        "{err}"
    );
}
