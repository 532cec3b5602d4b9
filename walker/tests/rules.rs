//! One test per rule of the walk: callback results, splitting, descent, holes, faults,
//! effective rights, CR3 masking, and guest memory never written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;

use support::*;
use vm_memory::GuestAddress;
use walker::{
    Action, Callbacks, EntryFn, EntrySource, Fault, FaultKind, Gva, Level, PageSize, Visit,
    Visitor, WalkError, WalkOptions, walk, walk_with,
};

const ALL: std::ops::RangeInclusive<Gva> = Gva(0)..=Gva(u64::MAX);

type Answer = Box<dyn FnMut(&Visit<'_>) -> Result<Action, String>>;

/// Records every callback; answers with a configurable function.
#[derive(Default)]
struct Recorder {
    callbacks: Option<Callbacks>,
    visits: Vec<(Level, u64, u64, u64, bool)>, // level, start, last, raw, shadow
    holes: Vec<(u64, u64, Level)>,
    faults: Vec<(Level, u64, FaultKind)>,
    answer: Option<Answer>,
}

impl Recorder {
    fn with(callbacks: Callbacks) -> Self {
        Recorder {
            callbacks: Some(callbacks),
            ..Default::default()
        }
    }
    fn answering(
        callbacks: Callbacks,
        f: impl FnMut(&Visit<'_>) -> Result<Action, String> + 'static,
    ) -> Self {
        Recorder {
            callbacks: Some(callbacks),
            answer: Some(Box::new(f)),
            ..Default::default()
        }
    }
    fn record(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.visits
            .push((v.level, v.start.0, v.last.0, v.entry.0, v.is_shadow()));
        match &mut self.answer {
            Some(f) => f(v),
            None => Ok(Action::Descend),
        }
    }
    fn at(&self, level: Level) -> Vec<&(Level, u64, u64, u64, bool)> {
        self.visits.iter().filter(|v| v.0 == level).collect()
    }
}

impl Recorder {
    fn pml5_entry(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.record(v)
    }
    fn pml4_entry(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.record(v)
    }
    fn pud_entry(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.record(v)
    }
    fn pmd_entry(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.record(v)
    }
    fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, String> {
        self.record(v)
    }
}

impl Visitor for Recorder {
    type Error = String;
    const PML5_ENTRY: Option<EntryFn<Self>> = Some(Self::pml5_entry);
    const PML4_ENTRY: Option<EntryFn<Self>> = Some(Self::pml4_entry);
    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::pud_entry);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::pmd_entry);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
    fn enabled(&self) -> Callbacks {
        self.callbacks.unwrap_or(Callbacks::all())
    }
    fn hole(&mut self, start: Gva, last: Gva, depth: Level) -> Result<(), String> {
        self.holes.push((start.0, last.0, depth));
        Ok(())
    }
    fn fault(&mut self, f: &Fault<'_>) -> Result<(), String> {
        self.faults.push((f.visit.level, f.visit.start.0, f.kind));
        Ok(())
    }
}

/// One 2 MiB leaf at 1 GiB (PA 0x4060_0000, PAT, PCD, global, NX) and one 4 KiB page
/// at 2 GiB, in a 4-level hierarchy.
fn two_mappings() -> Builder {
    let mut b = Builder::small();
    b.map(
        0x4000_0000,
        0x4060_0000,
        2,
        W | G | PAT_HUGE | PCD | NX | A | D,
    );
    b.map(0x8000_0000, 0x123_4000, 1, W | U);
    b
}

#[test]
fn descend_splits_a_huge_pmd_into_shadow_ptes() {
    let b = two_mappings();
    let before = b.hash();
    let mut r = Recorder::with(Callbacks::PTE);
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!(stats.split_2m, 1);
    let ptes = r.at(Level::Pte);
    assert_eq!(ptes.len(), 513, "512 shadow PTEs + 1 real PTE");
    for (i, v) in ptes[..512].iter().enumerate() {
        assert!(v.4, "split entries are shadow entries");
        assert_eq!(v.1, 0x4000_0000 + i as u64 * 4096);
        assert_eq!(v.3 & 0x000f_ffff_ffff_f000, 0x4060_0000 + i as u64 * 4096);
        assert_eq!(v.3 & 0x80, 0x80, "PAT moved from bit 12 to bit 7");
        assert_eq!(
            v.3 & (NX | G | PCD | W | A | D | P),
            NX | G | PCD | W | A | D | P
        );
    }
    assert!(!ptes[512].4, "a real PTE is not a shadow entry");
    assert_eq!(b.hash(), before, "a walk never writes guest memory");
}

#[test]
fn skip_prevents_the_split() {
    let b = two_mappings();
    let before = b.hash();
    let mut r = Recorder::answering(Callbacks::PMD | Callbacks::PTE, |v| {
        Ok(if v.is_leaf() && v.level == Level::Pmd {
            Action::Skip
        } else {
            Action::Descend
        })
    });
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!(stats.split_2m, 0);
    assert_eq!(r.at(Level::Pte).len(), 1, "only the real PTE");
    assert!(r.visits.iter().all(|v| !v.4));
    assert_eq!(b.hash(), before);
}

#[test]
fn no_descent_without_a_lower_callback() {
    let mut b = two_mappings();
    // A PMD table pointer to a PTE table outside memory: only a descent would notice.
    b.set_raw(0xc000_0000, 2, 0x7_0000_0000 | TABLE_FLAGS);
    let mut r = Recorder::with(Callbacks::PMD);
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!(stats.split_2m, 0, "nothing split for nothing");
    assert!(r.faults.is_empty(), "the PTE table was never looked at");
    assert_eq!(r.at(Level::Pmd).len(), 3);
    // PML4, PUD and 3 PMD tables: no PTE table read.
    assert_eq!(stats.tables_read, 1 + 1 + 3);
    // With a PTE callback the bad pointer is found.
    let mut r = Recorder::with(Callbacks::PTE);
    walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!(
        r.faults,
        vec![(
            Level::Pmd,
            0xc000_0000,
            FaultKind::OutsideMemory(GuestAddress(0x7_0000_0000))
        )]
    );
}

#[test]
fn no_callbacks_reads_only_the_root() {
    let b = two_mappings();
    let mut r = Recorder::with(Callbacks::empty());
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!(stats.tables_read, 1);
    assert_eq!(stats.entries_read, 512);
    assert_eq!(r.holes.len(), 511);
}

#[test]
fn error_aborts_with_location() {
    let b = two_mappings();
    let mut seen = 0;
    let mut r = Recorder::answering(Callbacks::PTE, move |v| {
        seen += 1;
        if seen == 10 {
            Err(format!("stop at {}", v.start))
        } else {
            Ok(Action::Descend)
        }
    });
    match walk(&b.mem, &b.ctx(), ALL, &mut r) {
        Err(WalkError::Callback { error, va, level }) => {
            assert_eq!(va, Gva(0x4000_0000 + 9 * 4096));
            assert_eq!(level, Level::Pte);
            assert!(error.contains("stop at"));
        }
        other => panic!("expected a callback error, got {other:?}"),
    }
    assert_eq!(r.visits.len(), 10, "nothing visited after the error");
}

#[test]
fn gigabyte_leaf_splits_into_pmds_then_ptes() {
    let mut b = Builder::small();
    b.map(0x80_0000_0000, 0x1_4000_0000, 3, W | PAT_HUGE);
    // Only a PMD callback: 512 shadow 2 MiB PMDs, no PTE split.
    let mut r = Recorder::with(Callbacks::PMD);
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!((stats.split_1g, stats.split_2m), (1, 0));
    let pmds = r.at(Level::Pmd);
    assert_eq!(pmds.len(), 512);
    for (i, v) in pmds.iter().enumerate() {
        assert!(v.4 && v.3 & PS != 0 && v.3 & PAT_HUGE != 0);
        assert_eq!(
            v.3 & 0x000f_ffff_ffe0_0000,
            0x1_4000_0000 + ((i as u64) << 21)
        );
    }
    // A PTE callback: every shadow PMD is split again.
    let mut r = Recorder::with(Callbacks::PTE);
    let stats = walk(&b.mem, &b.ctx(), ALL, &mut r).unwrap();
    assert_eq!((stats.split_1g, stats.split_2m), (1, 512));
    let ptes = r.at(Level::Pte);
    assert_eq!(ptes.len(), 512 * 512);
    for (i, v) in ptes.iter().enumerate() {
        assert_eq!(
            v.3 & 0x000f_ffff_ffff_f000,
            0x1_4000_0000 + ((i as u64) << 12)
        );
        assert_eq!(v.3 & PS, PS, "the PUD's PAT (bit 12) is bit 7 of a PTE");
    }
    // Restricting the range restricts the split work too.
    let mut r = Recorder::with(Callbacks::PTE);
    let stats = walk(
        &b.mem,
        &b.ctx(),
        Gva(0x80_0020_0000)..=Gva(0x80_0020_2fff),
        &mut r,
    )
    .unwrap();
    assert_eq!(r.at(Level::Pte).len(), 3);
    assert_eq!((stats.split_1g, stats.split_2m), (1, 1));
}

#[test]
fn holes_have_the_right_depth_and_range() {
    let mut b = Builder::small();
    b.map(0x20_0000, 0x20_0000, 1, W); // PTE table with one entry at index 0
    let mut r = Recorder::with(Callbacks::PTE);
    walk(&b.mem, &b.ctx(), Gva(0)..=Gva(0x7fff_ffff_ffff), &mut r).unwrap();
    let find = |start: u64| r.holes.iter().find(|h| h.0 == start).copied();
    assert_eq!(find(0x20_1000), Some((0x20_1000, 0x20_1fff, Level::Pte)));
    assert_eq!(find(0), Some((0, 0x1f_ffff, Level::Pmd)));
    assert_eq!(
        find(0x4000_0000),
        Some((0x4000_0000, 0x7fff_ffff, Level::Pud))
    );
    assert_eq!(
        find(0x80_0000_0000),
        Some((0x80_0000_0000, 0xff_ffff_ffff, Level::Pml4))
    );
    // Clipped to the walked range.
    let mut r = Recorder::with(Callbacks::PTE);
    walk(&b.mem, &b.ctx(), Gva(0x123)..=Gva(0x456), &mut r).unwrap();
    assert_eq!(r.holes, vec![(0x123, 0x456, Level::Pmd)]);
    // The upper half is sign-extended and the non-canonical hole is skipped.
    let mut r = Recorder::with(Callbacks::PTE);
    walk(
        &b.mem,
        &b.ctx(),
        Gva(0x7f80_0000_0000)..=Gva(u64::MAX),
        &mut r,
    )
    .unwrap();
    let starts: Vec<u64> = r.holes.iter().map(|h| h.0).collect();
    assert_eq!(starts.len(), 257);
    assert_eq!(starts[1], 0xffff_8000_0000_0000);
    assert_eq!(r.holes.last().unwrap().1, u64::MAX);
}

#[test]
fn effective_rights_accumulate_across_levels() {
    let mut b = Builder::small();
    // Parents read-only and supervisor; the leaf says RW and user.
    b.map_with_parents(0x1000_0000, 0x5000, 1, W | U, P);
    // Parents NX; leaf executable.
    b.map_with_parents(0x80_0000_0000, 0x6000, 1, W | U, P | W | U | NX);
    let leaves = walker::mappings(&b.mem, &b.ctx(), ALL, Default::default()).unwrap();
    let eff: Vec<_> = leaves
        .iter()
        .map(|m| match m {
            walker::Mapping::Leaf(l) => (l.effective.writable, l.effective.user, l.effective.nx),
            walker::Mapping::Bad(b) => panic!("unexpected {b:?}"),
        })
        .collect();
    assert_eq!(eff, vec![(false, false, false), (true, true, true)]);
}

#[test]
fn cr3_pcid_and_flag_bits_are_masked() {
    let b = two_mappings();
    let mut regs = b.regs();
    regs.cr3 |= 0x5a5 | (1 << 63);
    regs.cr4 |= walker::context::CR4_PCIDE;
    let ctx = walker::PagingContext::new(regs).unwrap();
    let t = walker::translate(&b.mem, &ctx, Gva(0x8000_0123)).unwrap();
    assert_eq!(t.gpa, GuestAddress(0x123_4123));
}

#[test]
fn reserved_bits_are_faults_and_not_descended() {
    let mut b = Builder::new(64 << 20, 0x1000, 16 << 20, false);
    let ctx = b.ctx().with_phys_addr_bits(40).unwrap();
    // Above MAXPHYADDR in a PTE.
    b.map(0x1000, 0x1000 | (1 << 45), 1, W);
    // PS in a PML4E.
    b.set_raw(0x100_0000_0000, 4, 0x20_0000 | PS | P);
    // Non-zero bits 20:13 in a 2 MiB leaf.
    b.map(0x4000_0000, 0x20_0000 | 0x2000, 2, W);
    // Non-zero bits 29:13 in a 1 GiB leaf.
    b.map(0x80_0000_0000, 0x4000_0000 | 0x20_0000, 3, W);
    // A table pointer above MAXPHYADDR.
    b.set_raw(0xc000_0000, 3, (1 << 41) | TABLE_FLAGS);
    let mut r = Recorder::with(Callbacks::all());
    walk(&b.mem, &ctx, ALL, &mut r).unwrap();
    let mut got: Vec<(Level, u64)> = r.faults.iter().map(|f| (f.0, f.1)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Level::Pte, 0x1000),
            (Level::Pmd, 0x4000_0000),
            (Level::Pud, 0xc000_0000),
            (Level::Pud, 0x80_0000_0000),
            (Level::Pml4, 0x100_0000_0000),
        ]
    );
    assert!(
        r.faults
            .iter()
            .all(|f| matches!(f.2, FaultKind::ReservedBits(bits) if bits != 0))
    );
    // None of the faulty entries reached a callback.
    assert!(
        r.visits
            .iter()
            .all(|v| (v.0, v.1) != (Level::Pte, 0x1000) && (v.0, v.1) != (Level::Pmd, 0x4000_0000))
    );
    // NX without EFER.NXE is reserved.
    let mut b = Builder::small();
    b.map(0x1000, 0x1000, 1, NX);
    let mut regs = b.regs();
    regs.efer &= !walker::context::EFER_NXE;
    let ctx = walker::PagingContext::new(regs).unwrap();
    assert!(matches!(
        walker::translate(&b.mem, &ctx, Gva(0x1000)),
        Err(walker::TranslateError::ReservedBits { level: Level::Pte, bits, .. }) if bits == NX
    ));
}

#[test]
fn tables_outside_memory_are_reported() {
    let mut b = Builder::small();
    b.set_raw(0x4000_0000, 3, 0x10_0000_0000 | TABLE_FLAGS);
    let before = b.hash();
    let err = walker::translate(&b.mem, &b.ctx(), Gva(0x4000_0000)).unwrap_err();
    assert_eq!(
        err,
        walker::TranslateError::OutsideMemory {
            gva: Gva(0x4000_0000),
            level: Level::Pud,
            table: GuestAddress(0x10_0000_0000)
        }
    );
    // The root itself outside memory.
    let mut regs = b.regs();
    regs.cr3 = 0x40_0000_0000;
    let ctx = walker::PagingContext::new(regs).unwrap();
    let mut r = Recorder::with(Callbacks::all());
    walk(&b.mem, &ctx, ALL, &mut r).unwrap();
    assert_eq!(r.faults.len(), 1);
    assert_eq!(r.faults[0].0, Level::Pml4);
    assert_eq!(b.hash(), before);
}

#[test]
fn five_level_paging() {
    let mut b = Builder::new(64 << 20, 0x1000, 16 << 20, true);
    let high = 0x00ff_0000_0000_0000u64; // the last PML5 entry of the lower half
    b.map(0x0001_0000_0000_0000, 0x7000, 1, W);
    b.map(canonical(0x0100_0000_0000_0000 | 0x1000, 57), 0x8000, 1, 0);
    let ctx = b.ctx();
    assert_eq!(ctx.mode(), walker::PagingMode::FiveLevel);
    let t = walker::translate(&b.mem, &ctx, Gva(0x0001_0000_0000_0abc)).unwrap();
    assert_eq!(t.gpa, GuestAddress(0x7abc));
    let t = walker::translate(&b.mem, &ctx, Gva(0xff00_0000_0000_1000)).unwrap();
    assert_eq!(t.gpa, GuestAddress(0x8000));
    assert!(!t.effective.writable);
    assert_eq!(
        walker::translate(&b.mem, &ctx, Gva(0x0100_0000_0000_0000)),
        Err(walker::TranslateError::NonCanonical(Gva(
            0x0100_0000_0000_0000
        )))
    );
    let mut r = Recorder::with(Callbacks::all());
    walk(&b.mem, &ctx, ALL, &mut r).unwrap();
    assert_eq!(r.at(Level::Pml5).len(), 2);
    assert_eq!(r.at(Level::Pte).len(), 2);
    assert!(r.holes.iter().any(|h| h.2 == Level::Pml5 && h.0 == high));
}

#[test]
fn translate_sizes_and_memory_types() {
    let mut b = Builder::small();
    b.map(0x4000_0000, 0x4060_0000, 2, W | PAT_HUGE | PWT);
    b.map(0x80_0000_0000, 0x1_4000_0000, 3, 0);
    b.map(0x8000_0000, 0x123_4000, 1, W | U | 0x80 | PCD);
    let ctx = b.ctx();
    let t = walker::translate(&b.mem, &ctx, Gva(0x4012_3456)).unwrap();
    assert_eq!(
        (t.gpa.0, t.size, t.memory_type.0),
        (0x4072_3456, PageSize::Size2M, 0b101)
    );
    let t = walker::translate(&b.mem, &ctx, Gva(0x80_3fff_ffff)).unwrap();
    assert_eq!((t.gpa.0, t.size), (0x1_7fff_ffff, PageSize::Size1G));
    let t = walker::translate(&b.mem, &ctx, Gva(0x8000_0fff)).unwrap();
    assert_eq!(
        (t.gpa.0, t.size, t.memory_type.0),
        (0x123_4fff, PageSize::Size4K, 0b110)
    );
    assert_eq!(
        walker::translate(&b.mem, &ctx, Gva(0x8000_1000)),
        Err(walker::TranslateError::NotPresent {
            gva: Gva(0x8000_1000),
            level: Level::Pte
        })
    );
}

#[test]
fn mappings_merge_and_split() {
    let mut b = Builder::small();
    for i in 0..4 {
        b.map(0x10_0000 + i * 0x1000, 0x90_0000 + i * 0x1000, 1, W);
    }
    b.map(0x10_4000, 0x1000, 1, 0); // read-only: a new range
    b.map(0x20_0000, 0x40_0000, 2, 0); // contiguous with the previous and equal rights
    let ctx = b.ctx();
    let all = walker::mappings(&b.mem, &ctx, ALL, walker::Granularity::AsMapped).unwrap();
    let leaves: Vec<walker::Leaf> = all
        .iter()
        .filter_map(|m| match m {
            walker::Mapping::Leaf(l) => Some(*l),
            walker::Mapping::Bad(_) => None,
        })
        .collect();
    assert_eq!(leaves.len(), 6);
    let ranges = walker::merge_ranges(&leaves);
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!((ranges[0].start.0, ranges[0].len()), (0x10_0000, 0x4000));
    assert_eq!(
        (ranges[1].start.0, ranges[1].last.0),
        (0x10_4000, 0x10_4fff)
    );
    assert_eq!((ranges[2].start.0, ranges[2].len()), (0x20_0000, 0x20_0000));
    let split = walker::mappings(&b.mem, &ctx, ALL, walker::Granularity::Split4K).unwrap();
    assert_eq!(split.len(), 5 + 512);
    let shadow = split
        .iter()
        .filter(|m| matches!(m, walker::Mapping::Leaf(l) if l.is_shadow()))
        .count();
    assert_eq!(shadow, 512);
    assert_eq!(walker::tlb_flags(&leaves[0]), "--------W");
}

#[test]
fn budget_stops_a_walk_with_a_clear_error() {
    let b = two_mappings();
    let mut r = Recorder::with(Callbacks::PTE);
    let err = walk_with(
        &b.mem,
        &b.ctx(),
        ALL,
        &mut r,
        WalkOptions { entry_budget: 100 },
    )
    .unwrap_err();
    let message = err.to_string();
    match err {
        WalkError::BudgetExhausted { limit, level, .. } => {
            assert_eq!(limit, 100);
            assert_eq!(level, Level::Pte);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        message.contains("100") && message.contains("alias"),
        "{message}"
    );
}

/// The budget runs out at exactly the entry it would run out at if every entry were charged
/// one by one, whatever the level and wherever inside a table (guest or shadow), and every
/// entry read before it was reported.
#[test]
fn budget_runs_out_at_the_exact_entry() {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Seen {
        Upper,
        Pte,
        Hole,
        Fault,
    }
    let mut b = Builder::small();
    let base = 0xffff_8000_4000_0000u64;
    // PMD 0: a PTE table with every other page mapped and one reserved-bit entry.
    for i in (0..512u64).step_by(2) {
        b.map(base + i * 4096, 0x100_0000 + i * 4096, 1, W);
    }
    b.set_raw(base + 9 * 4096, 1, 0x9000 | (1 << 45) | P);
    // PMD 1: a 2 MiB leaf, split into shadow PTEs. PMD 2: a full PTE table.
    b.map(base + (2 << 20), 0x20_0000, 2, W);
    for i in 0..512u64 {
        b.map(base + (4 << 20) + i * 4096, 0x200_0000 + i * 4096, 1, W);
    }
    let ctx = b.ctx().with_phys_addr_bits(40).unwrap();
    let first = base + 5 * 4096 + 0x123;
    let last = base + (4 << 20) + 7 * 4096 + 0x45;

    // Every entry the walk reads, in order: (level, start of its part of the range, what
    // the visitor sees of it).
    let mut reads = vec![
        (Level::Pml4, first, Seen::Upper),
        (Level::Pud, first, Seen::Upper),
        (Level::Pmd, first, Seen::Upper),
    ];
    for i in 5..512u64 {
        let seen = match i {
            9 => Seen::Fault,
            _ if i % 2 == 1 => Seen::Hole,
            _ => Seen::Pte,
        };
        reads.push((Level::Pte, (base + i * 4096).max(first), seen));
    }
    reads.push((Level::Pmd, base + (2 << 20), Seen::Upper));
    for i in 0..512u64 {
        reads.push((Level::Pte, base + (2 << 20) + i * 4096, Seen::Pte));
    }
    reads.push((Level::Pmd, base + (4 << 20), Seen::Upper));
    for i in 0..8u64 {
        reads.push((Level::Pte, base + (4 << 20) + i * 4096, Seen::Pte));
    }
    let total = reads.len() as u64;
    assert_eq!(total, 3 + 507 + 1 + 512 + 1 + 8);

    for budget in 0..=total + 1 {
        let mut r = Recorder::with(Callbacks::PTE);
        let result = walk_with(
            &b.mem,
            &ctx,
            Gva(first)..=Gva(last),
            &mut r,
            WalkOptions {
                entry_budget: budget,
            },
        );
        let done = if budget >= total {
            assert_eq!(result.unwrap().entries_read, total, "budget {budget}");
            &reads[..]
        } else {
            match result {
                Err(WalkError::BudgetExhausted { limit, va, level }) => {
                    let (l, start, _) = reads[budget as usize];
                    assert_eq!((limit, level, va.0), (budget, l, start), "budget {budget}");
                }
                other => panic!("budget {budget}: {other:?}"),
            }
            &reads[..budget as usize]
        };
        let expect = |kind: Seen| -> Vec<u64> {
            done.iter()
                .filter(|&&(_, _, seen)| seen == kind)
                .map(|&(_, start, _)| start)
                .collect()
        };
        let visits: Vec<u64> = r.visits.iter().map(|v| v.1).collect();
        let holes: Vec<u64> = r.holes.iter().map(|h| h.0).collect();
        let faults: Vec<u64> = r.faults.iter().map(|f| f.1).collect();
        assert_eq!(visits, expect(Seen::Pte), "budget {budget}");
        assert_eq!(holes, expect(Seen::Hole), "budget {budget}");
        assert_eq!(faults, expect(Seen::Fault), "budget {budget}");
        assert!(r.visits.iter().all(|v| v.0 == Level::Pte));
        assert!(r.holes.iter().all(|h| h.2 == Level::Pte));
    }
}

#[test]
fn shadow_source_has_no_guest_address() {
    let b = two_mappings();
    struct Sources(Vec<EntrySource>);
    impl Sources {
        fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, Infallible> {
            self.0.push(v.source);
            Ok(Action::Descend)
        }
    }

    impl Visitor for Sources {
        type Error = Infallible;
        const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
        fn enabled(&self) -> Callbacks {
            Callbacks::PTE
        }
    }
    let mut s = Sources(Vec::new());
    walk(&b.mem, &b.ctx(), ALL, &mut s).unwrap();
    assert!(s.0[..512].iter().all(|s| *s == EntrySource::Shadow));
    let EntrySource::Guest(at) = s.0[512] else {
        panic!("the real PTE comes from the guest")
    };
    // The real PTE's slot: PTE table index 0 for VA 0x8000_0000.
    assert_eq!(b.read(at.0) & 0x000f_ffff_ffff_f000, 0x123_4000);
}

#[test]
fn decoded_view_and_protection_keys() {
    let mut b = Builder::small();
    b.map(
        0x1000,
        0x5000,
        1,
        W | U | G | A | D | 0x80 | PWT | (0xd << 59),
    );
    b.map(0x4000_0000, 0x60_0000, 2, PAT_HUGE | PCD | (3 << 59));
    struct Decode(Vec<walker::Decoded>);
    impl Decode {
        fn pmd_entry(&mut self, v: &Visit<'_>) -> Result<Action, Infallible> {
            self.0.push(v.decode());
            Ok(if v.is_leaf() {
                Action::Skip
            } else {
                Action::Descend
            })
        }
        fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, Infallible> {
            self.0.push(v.decode());
            Ok(Action::Skip)
        }
    }

    impl Visitor for Decode {
        type Error = Infallible;
        const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::pmd_entry);
        const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
        fn enabled(&self) -> Callbacks {
            Callbacks::PMD | Callbacks::PTE
        }
    }
    for pke in [false, true] {
        let mut regs = b.regs();
        if pke {
            regs.cr4 |= walker::context::CR4_PKE;
        }
        let ctx = walker::PagingContext::new(regs).unwrap();
        let mut d = Decode(Vec::new());
        walk(&b.mem, &ctx, ALL, &mut d).unwrap();
        // PMD table for [0, 2M), the 4 KiB leaf, the 2 MiB leaf.
        assert_eq!(d.0.len(), 3);
        let (table, pte, pmd) = (d.0[0], d.0[1], d.0[2]);
        assert_eq!(table.kind, walker::EntryKind::Table);
        assert!(!table.dirty && !table.global);
        assert_eq!(pte.kind, walker::EntryKind::Leaf(PageSize::Size4K));
        assert!(pte.writable && pte.user && pte.global && pte.accessed && pte.dirty);
        assert_eq!(pte.memory_type.0, 0b101);
        assert_eq!(pte.frame, GuestAddress(0x5000));
        assert_eq!(pte.pkey, if pke { 0xd } else { 0 });
        assert_eq!(pmd.kind, walker::EntryKind::Leaf(PageSize::Size2M));
        assert_eq!(pmd.memory_type.0, 0b110);
        assert_eq!(pmd.pkey, if pke { 3 } else { 0 });
        assert!(!pmd.writable && !pmd.nx);
    }
}
