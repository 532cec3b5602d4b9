//! The walker against an independent reference model (tests/support: `RefMmu`), on
//! randomly generated hierarchies: every leaf, and random translations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use proptest::prelude::*;
use support::*;
use walker::{ControlRegisters, Granularity, Gva, Mapping, PagingContext, TranslateError, context};

const MEM: usize = 8 << 20;
const IDX: [u64; 4] = [0, 1, 2, 511];

/// One step of building a random hierarchy.
#[derive(Debug, Clone)]
enum Op {
    /// Map a leaf at `level` (1..=3) on the path given by indices (top first).
    Map {
        path: [usize; 5],
        level: u32,
        pa: u64,
        flags: u64,
        parents: u64,
    },
    /// Write a raw value (or a pointer to an existing table) at `level` on the path.
    Raw {
        path: [usize; 5],
        level: u32,
        raw: u64,
        alias_table: Option<usize>,
    },
}

fn flags() -> impl Strategy<Value = u64> {
    prop::sample::subsequence(vec![W, U, PWT, PCD, A, D, G, NX, PAT_HUGE], 0..9)
        .prop_map(|v| v.into_iter().fold(0, |a, b| a | b))
}

fn parents() -> impl Strategy<Value = u64> {
    prop::sample::subsequence(vec![W, U, NX, A], 0..4)
        .prop_map(|v| v.into_iter().fold(P, |a, b| a | b))
}

fn op() -> impl Strategy<Value = Op> {
    let path = prop::array::uniform5(0usize..4);
    prop_oneof![
        4 => (path.clone(), 1u32..=3, 0u64..(1 << 40), flags(), parents()).prop_map(
            |(path, level, pa, flags, parents)| {
                let size = 1u64 << (12 + 9 * (level - 1));
                Op::Map { path, level, pa: pa & !(size - 1), flags, parents }
            }
        ),
        1 => (
            path,
            1u32..=5,
            prop_oneof![
                Just(0u64),
                any::<u64>(),
                (0u64..(MEM as u64 / 4096)).prop_map(|f| (f << 12) | 0x7),
                Just(0x7_0000_0000 | 0x7),      // table outside memory
                Just((1 << 51) | 0x1000 | 0x7), // bit 51: above most MAXPHYADDRs
                Just(0x20_0000 | 0x2000 | 0x83), // 2 MiB leaf with bit 13 set
            ],
            prop::option::weighted(0.3, 0usize..64),
        )
            .prop_map(|(path, level, raw, alias_table)| Op::Raw { path, level, raw, alias_table }),
    ]
}

/// Applies `op` if its path can be built without crossing a leaf or a bad entry.
fn apply(b: &mut Builder, tables: &mut Vec<u64>, op: &Op) {
    let (path, level) = match op {
        Op::Map { path, level, .. } | Op::Raw { path, level, .. } => (path, *level),
    };
    let top = b.top();
    if level > top {
        return;
    }
    let mut table = b.root;
    let mut l = top;
    let mut depth = 0;
    while l > level {
        let slot = table + IDX[path[depth]] * 8;
        let e = b.read(slot);
        if e & P == 0 {
            if b.tables_used() + 0x1000 > (4 << 20) {
                return;
            }
            let t = b.alloc_table();
            tables.push(t);
            let pf = match op {
                Op::Map { parents, .. } => *parents,
                Op::Raw { .. } => TABLE_FLAGS,
            };
            b.write(slot, t | pf);
            table = t;
        } else {
            let next = e & 0x000f_ffff_ffff_f000;
            if (l <= 3 && e & PS != 0) || next + 4096 > MEM as u64 {
                return;
            }
            table = next;
        }
        l -= 1;
        depth += 1;
    }
    let slot = table + IDX[path[depth]] * 8;
    let value = match op {
        Op::Map {
            pa, flags, level, ..
        } => {
            let ps = if *level > 1 { PS } else { 0 };
            let pat = if *level == 1 && flags & PAT_HUGE != 0 {
                0x80
            } else {
                0
            };
            let f = if *level == 1 {
                flags & !PAT_HUGE
            } else {
                *flags
            };
            pa | f | ps | pat | P
        }
        Op::Raw {
            raw, alias_table, ..
        } => match alias_table {
            Some(i) if !tables.is_empty() => tables[i % tables.len()] | TABLE_FLAGS,
            _ => *raw,
        },
    };
    b.write(slot, value);
}

/// The address `path` (top first) leads to, canonical.
fn path_va(path: &[usize; 5], top: u32) -> u64 {
    let mut va = 0;
    for (depth, l) in (1..=top).rev().enumerate() {
        va |= IDX[path[depth]] << (12 + 9 * (l - 1));
    }
    canonical(va, if top == 5 { 57 } else { 48 })
}

fn check(
    b: &Builder,
    mmu: RefMmu,
    ctx: &PagingContext,
    probes: &[u64],
) -> Result<(), TestCaseError> {
    let before = b.hash();
    // Every leaf, as mapped.
    let walked: Vec<(u64, u64, u64, bool, bool, bool)> =
        walker::mappings(&b.mem, ctx, Gva(0)..=Gva(u64::MAX), Granularity::AsMapped)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                Mapping::Leaf(l) => Some((
                    l.va.0,
                    l.pa.0,
                    l.size.bytes(),
                    l.effective.writable,
                    l.effective.user,
                    l.effective.nx,
                )),
                Mapping::Bad(_) => None,
            })
            .collect();
    let reference = mmu.leaves(&b.mem);
    prop_assert_eq!(&walked, &reference);

    // Translations: inside every leaf, and at the probes.
    let mut addrs: Vec<u64> = reference.iter().map(|l| l.0 + (l.2 - 1) / 3).collect();
    addrs.extend_from_slice(probes);
    for va in addrs {
        let got = walker::translate(&b.mem, ctx, Gva(va));
        let want = mmu.translate(&b.mem, va);
        let ok = match (got, want) {
            (
                Ok(t),
                RefResult::Mapped {
                    gpa,
                    size,
                    writable,
                    user,
                    nx,
                },
            ) => {
                t.gpa.0 == gpa
                    && t.size.bytes() == size
                    && t.effective.writable == writable
                    && t.effective.user == user
                    && t.effective.nx == nx
            }
            (Err(TranslateError::NotPresent { level, .. }), RefResult::NotPresent(l)) => {
                level as u32 == l
            }
            (Err(TranslateError::ReservedBits { level, .. }), RefResult::Reserved(l)) => {
                level as u32 == l
            }
            (Err(TranslateError::OutsideMemory { level, .. }), RefResult::Outside(l)) => {
                level as u32 == l
            }
            (Err(TranslateError::NonCanonical(_)), RefResult::NonCanonical) => true,
            _ => false,
        };
        prop_assert!(
            ok,
            "translate({:#x}): walker {:?}, reference {:?}",
            va,
            got,
            want
        );
    }
    prop_assert_eq!(b.hash(), before, "a walk wrote guest memory");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn walker_matches_the_reference_model(
        ops in prop::collection::vec(op(), 1..40),
        la57 in any::<bool>(),
        nxe in any::<bool>(),
        gbpages in any::<bool>(),
        maxphy in prop_oneof![Just(52u8), Just(46u8), 36u8..52],
        pcid in 0u64..4096,
        probes in prop::collection::vec(any::<u64>(), 0..8),
        probe_paths in prop::collection::vec(prop::array::uniform5(0usize..4), 0..8),
    ) {
        let mut b = Builder::new(MEM, 0x1000, 4 << 20, la57);
        let mut tables = vec![b.root];
        for op in &ops {
            apply(&mut b, &mut tables, op);
        }
        let mut regs: ControlRegisters = b.regs();
        if !nxe {
            regs.efer &= !context::EFER_NXE;
        }
        regs.cr3 |= pcid;
        regs.cr4 |= context::CR4_PCIDE;
        let ctx = PagingContext::new(regs)
            .unwrap()
            .with_phys_addr_bits(maxphy)
            .unwrap()
            .with_gbpages(gbpages);
        let mmu = RefMmu { cr3: regs.cr3 & !0xfff, la57, nxe, maxphy: maxphy.into(), gbpages };
        let mut all_probes = probes;
        all_probes.extend(probe_paths.iter().map(|p| path_va(p, b.top()) | 0x123));
        check(&b, mmu, &ctx, &all_probes)?;
    }
}

/// Every event of a walk, with the `last` of each clipped range replaced by `last_as`
/// when it equals `last_is` (see `single_address_walks_take_the_range_walks_steps`).
struct Recorder {
    callbacks: walker::Callbacks,
    last_is: u64,
    last_as: u64,
    events: Vec<String>,
}

impl Recorder {
    fn last(&self, last: Gva) -> u64 {
        if last.0 == self.last_is {
            self.last_as
        } else {
            last.0
        }
    }

    fn entry(&mut self, v: &walker::Visit<'_>) -> Result<walker::Action, std::convert::Infallible> {
        let last = self.last(v.last);
        self.events.push(format!(
            "entry {} {:#x}..={last:#x} {:?} {:?} {:?}",
            v.level, v.start.0, v.entry, v.effective, v.source
        ));
        Ok(walker::Action::Descend)
    }
}

impl Recorder {
    fn pml5_entry(
        &mut self,
        v: &walker::Visit<'_>,
    ) -> Result<walker::Action, std::convert::Infallible> {
        self.entry(v)
    }
    fn pml4_entry(
        &mut self,
        v: &walker::Visit<'_>,
    ) -> Result<walker::Action, std::convert::Infallible> {
        self.entry(v)
    }
    fn pud_entry(
        &mut self,
        v: &walker::Visit<'_>,
    ) -> Result<walker::Action, std::convert::Infallible> {
        self.entry(v)
    }
    fn pmd_entry(
        &mut self,
        v: &walker::Visit<'_>,
    ) -> Result<walker::Action, std::convert::Infallible> {
        self.entry(v)
    }
    fn pte_entry(
        &mut self,
        v: &walker::Visit<'_>,
    ) -> Result<walker::Action, std::convert::Infallible> {
        self.entry(v)
    }
}

impl walker::Visitor for Recorder {
    type Error = std::convert::Infallible;
    const PML5_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pml5_entry);
    const PML4_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pml4_entry);
    const PUD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pud_entry);
    const PMD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pmd_entry);
    const PTE_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pte_entry);

    fn enabled(&self) -> walker::Callbacks {
        self.callbacks
    }
    fn hole(&mut self, start: Gva, last: Gva, depth: walker::Level) -> Result<(), Self::Error> {
        let last = self.last(last);
        self.events
            .push(format!("hole {depth} {:#x}..={last:#x}", start.0));
        Ok(())
    }
    fn fault(&mut self, f: &walker::Fault<'_>) -> Result<(), Self::Error> {
        let v = &f.visit;
        let last = self.last(v.last);
        self.events.push(format!(
            "fault {} {:#x}..={last:#x} {:?} {:?} {:?} {:?}",
            v.level, v.start.0, v.entry, v.effective, v.source, f.kind
        ));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A walk of one address (a translation) takes a path of its own through the walker,
    /// without the loops of a range walk. It must take the same steps: the walk of
    /// `[va, va + 1]`, inside one 4 KiB page, reads the same entries and must report the
    /// same events (but for the end of their ranges), the same statistics and the same
    /// errors, for any set of callbacks (huge leaves split when a lower level has one) and
    /// any budget.
    #[test]
    fn single_address_walks_take_the_range_walks_steps(
        ops in prop::collection::vec(op(), 1..40),
        la57 in any::<bool>(),
        nxe in any::<bool>(),
        gbpages in any::<bool>(),
        maxphy in prop_oneof![Just(52u8), Just(46u8), 36u8..52],
        callbacks in 0u8..32,
        budget in prop_oneof![Just(walker::DEFAULT_ENTRY_BUDGET), 0u64..7],
        probes in prop::collection::vec(any::<u64>(), 0..8),
        probe_paths in prop::collection::vec(prop::array::uniform5(0usize..4), 0..8),
    ) {
        let mut b = Builder::new(MEM, 0x1000, 4 << 20, la57);
        let mut tables = vec![b.root];
        for op in &ops {
            apply(&mut b, &mut tables, op);
        }
        let mut regs: ControlRegisters = b.regs();
        if !nxe {
            regs.efer &= !context::EFER_NXE;
        }
        let ctx = PagingContext::new(regs)
            .unwrap()
            .with_phys_addr_bits(maxphy)
            .unwrap()
            .with_gbpages(gbpages);
        let callbacks = walker::Callbacks::from_bits_truncate(callbacks);
        let options = walker::WalkOptions { entry_budget: budget };
        let mut addrs: Vec<u64> = probes.iter().map(|&p| p & !0xfff | 0x7fe).collect();
        addrs.extend(probe_paths.iter().map(|p| path_va(p, b.top()) | 0x123));
        for va in addrs {
            let mut one = Recorder { callbacks, last_is: va, last_as: va, events: vec![] };
            let mut two = Recorder { callbacks, last_is: va + 1, last_as: va, events: vec![] };
            let r1 = walker::walk_with(&b.mem, &ctx, Gva(va)..=Gva(va), &mut one, options);
            let r2 = walker::walk_with(&b.mem, &ctx, Gva(va)..=Gva(va + 1), &mut two, options);
            prop_assert_eq!(format!("{r1:?}"), format!("{r2:?}"), "va {:#x}", va);
            prop_assert_eq!(&one.events, &two.events, "va {:#x}", va);
        }
    }
}

/// The mapping walk as it was before the leaf walk: one callback per entry at the PUD, PMD
/// and PTE levels, splitting huge leaves when 4 KiB granularity is asked for. The leaf
/// APIs must give exactly its leaves, faults, statistics and errors. Its sink fails (with
/// the number of records pushed) when it is about to push record `fail_at`; with
/// `leaves_only`, malformed entries are neither pushed nor counted.
struct PerEntryCollector {
    split: bool,
    leaves_only: bool,
    fail_at: Option<usize>,
    out: Vec<Mapping>,
}

impl PerEntryCollector {
    fn push(&mut self, m: Mapping) -> Result<(), usize> {
        if Some(self.out.len()) == self.fail_at {
            return Err(self.out.len());
        }
        self.out.push(m);
        Ok(())
    }

    fn entry(&mut self, v: &walker::Visit<'_>) -> Result<walker::Action, usize> {
        match v.level.leaf_size() {
            Some(size) if v.is_leaf() => {
                if size != walker::PageSize::Size4K && self.split {
                    return Ok(walker::Action::Descend);
                }
                let d = v.decode();
                self.push(Mapping::Leaf(walker::Leaf {
                    va: v.entry_start(),
                    pa: d.frame,
                    size,
                    effective: v.effective,
                    accessed: d.accessed,
                    dirty: d.dirty,
                    global: d.global,
                    memory_type: d.memory_type,
                    pkey: d.pkey,
                    entry: v.entry,
                    source: v.source,
                }))?;
                Ok(walker::Action::Skip)
            }
            _ => Ok(walker::Action::Descend),
        }
    }
}

impl walker::Visitor for PerEntryCollector {
    type Error = usize;
    const PUD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::entry);
    const PMD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::entry);
    const PTE_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::entry);

    fn fault(&mut self, f: &walker::Fault<'_>) -> Result<(), usize> {
        if self.leaves_only {
            return Ok(());
        }
        self.push(Mapping::Bad(walker::BadEntry {
            va: f.visit.entry_start(),
            level: f.visit.level,
            entry: f.visit.entry,
            kind: f.kind,
        }))
    }
}

/// A set of dirty 4 KiB guest-physical pages.
struct DirtySet(std::collections::BTreeSet<u64>);

impl walker::DirtyPages for DirtySet {
    fn is_dirty(&self, gpa: vm_memory::GuestAddress) -> bool {
        self.0.contains(&(gpa.0 >> 12))
    }
    fn any_dirty(&self, start: vm_memory::GuestAddress, len: u64) -> bool {
        let first = start.0 >> 12;
        let last = (start.0 + len - 1) >> 12;
        self.0.range(first..=last).next().is_some()
    }
}

/// The dirty scan as it was before the leaf walk: its own per-entry visitor.
struct PerEntryScanner<'d> {
    dirty: &'d DirtySet,
    scan: walker::DirtyScan,
}

impl PerEntryScanner<'_> {
    fn upper(&mut self, v: &walker::Visit<'_>) -> Result<walker::Action, std::convert::Infallible> {
        use walker::DirtyPages as _;
        if !v.is_leaf() {
            return Ok(walker::Action::Descend);
        }
        let start = v.entry.address(v.level);
        if self.dirty.any_dirty(start, v.level.entry_span()) {
            self.scan.huge_split += 1;
            Ok(walker::Action::Descend)
        } else {
            self.scan.huge_skipped += 1;
            Ok(walker::Action::Skip)
        }
    }

    fn pte(&mut self, v: &walker::Visit<'_>) -> Result<walker::Action, std::convert::Infallible> {
        use walker::DirtyPages as _;
        let pa = v.entry.address(v.level);
        if self.dirty.is_dirty(pa) {
            self.scan.pages.push(walker::DirtyPage {
                va: v.entry_start(),
                pa,
                shadow: v.is_shadow(),
            });
        }
        Ok(walker::Action::Skip)
    }
}

impl walker::Visitor for PerEntryScanner<'_> {
    type Error = std::convert::Infallible;
    const PUD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PMD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PTE_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::pte);
}

/// [`Recorder`] taking its PTEs a run at a time ([`walker::Visitor::PTE_RUN`]): each leaf
/// of a run is recorded as the per-entry callback records it.
struct RunRecorder(Recorder);

impl RunRecorder {
    fn upper(&mut self, v: &walker::Visit<'_>) -> Result<walker::Action, std::convert::Infallible> {
        self.0.entry(v)
    }
    fn run(&mut self, run: &walker::PteRun<'_>) -> Result<(), (usize, std::convert::Infallible)> {
        for i in 0..run.len() {
            let v = run.visit(i);
            assert_eq!(v.entry.raw(), run.entries()[i]);
            assert_eq!(v.entry_start(), run.page(i));
            self.0.entry(&v).map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

impl walker::Visitor for RunRecorder {
    type Error = std::convert::Infallible;
    const PML5_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PML4_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PUD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PMD_ENTRY: Option<walker::EntryFn<Self>> = Some(Self::upper);
    const PTE_RUN: Option<walker::PteRunFn<Self>> = Some(Self::run);
    fn enabled(&self) -> walker::Callbacks {
        self.0.callbacks
    }
    fn hole(&mut self, start: Gva, last: Gva, depth: walker::Level) -> Result<(), Self::Error> {
        walker::Visitor::hole(&mut self.0, start, last, depth)
    }
    fn fault(&mut self, f: &walker::Fault<'_>) -> Result<(), Self::Error> {
        walker::Visitor::fault(&mut self.0, f)
    }
}

/// Builds a random hierarchy and its paging context (as the tests above do).
fn random_tables(
    ops: &[Op],
    la57: bool,
    nxe: bool,
    gbpages: bool,
    maxphy: u8,
) -> (Builder, PagingContext) {
    let mut b = Builder::new(MEM, 0x1000, 4 << 20, la57);
    let mut tables = vec![b.root];
    for op in ops {
        apply(&mut b, &mut tables, op);
    }
    let mut regs: ControlRegisters = b.regs();
    if !nxe {
        regs.efer &= !context::EFER_NXE;
    }
    let ctx = PagingContext::new(regs)
        .unwrap()
        .with_phys_addr_bits(maxphy)
        .unwrap()
        .with_gbpages(gbpages);
    (b, ctx)
}

/// A random range: the whole space, or between two random or path addresses.
fn random_range(b: &Builder, ends: (u64, u64), paths: &[[usize; 5]], whole: bool) -> (Gva, Gva) {
    if whole {
        return (Gva(0), Gva(u64::MAX));
    }
    let pick = |raw: u64, i: usize| match paths.get(i) {
        Some(p) if raw % 3 != 0 => path_va(p, b.top()) ^ (raw >> 40),
        _ => raw,
    };
    let (a, z) = (pick(ends.0, 0), pick(ends.1, 1));
    (Gva(a.min(z)), Gva(a.max(z)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `for_each_mapping`, `for_each_leaf`, `mappings` and `scan_dirty`, built on the leaf
    /// walk and its PTE runs, give exactly the leaves, faults, statistics and errors of the
    /// per-entry walk they replaced, at both granularities, with random budgets and a sink
    /// that fails at a random record; and a visitor taking PTE runs records the same events
    /// as one taking single PTEs, for any set of callbacks.
    #[test]
    fn leaf_walks_match_the_per_entry_walk(
        ops in prop::collection::vec(op(), 1..40),
        la57 in any::<bool>(),
        nxe in any::<bool>(),
        gbpages in any::<bool>(),
        maxphy in prop_oneof![Just(52u8), Just(46u8), 36u8..52],
        budget in prop_oneof![Just(walker::DEFAULT_ENTRY_BUDGET), 0u64..3000],
        fail_at in prop::option::weighted(0.3, 0usize..600),
        ends in (any::<u64>(), any::<u64>()),
        paths in prop::collection::vec(prop::array::uniform5(0usize..4), 2),
        whole in any::<bool>(),
        callbacks in 0u8..32,
        dirty_seed in any::<u64>(),
    ) {
        let (b, ctx) = random_tables(&ops, la57, nxe, gbpages, maxphy);
        let before = b.hash();
        let (first, last) = random_range(&b, ends, &paths, whole);
        let options = walker::WalkOptions { entry_budget: budget };
        for granularity in [Granularity::AsMapped, Granularity::Split4K] {
            let split = granularity == Granularity::Split4K;
            for leaves_only in [false, true] {
                let mut old = PerEntryCollector { split, leaves_only, fail_at, out: vec![] };
                let want = walker::walk_with(&b.mem, &ctx, first..=last, &mut old, options);
                let mut out = Vec::new();
                let mut push = |m: Mapping| {
                    if Some(out.len()) == fail_at {
                        return Err(out.len());
                    }
                    out.push(m);
                    Ok(())
                };
                let got = if leaves_only {
                    walker::for_each_leaf(&b.mem, &ctx, first..=last, granularity, options, |l| {
                        push(Mapping::Leaf(l))
                    })
                } else {
                    walker::for_each_mapping(&b.mem, &ctx, first..=last, granularity, options, push)
                };
                prop_assert_eq!(format!("{got:?}"), format!("{want:?}"), "{:?} {}", granularity, leaves_only);
                prop_assert_eq!(&out, &old.out, "{:?} {}", granularity, leaves_only);
            }
            if budget == walker::DEFAULT_ENTRY_BUDGET && whole {
                let mut old = PerEntryCollector { split, leaves_only: false, fail_at: None, out: vec![] };
                walker::walk(&b.mem, &ctx, first..=last, &mut old).unwrap();
                prop_assert_eq!(
                    walker::mappings(&b.mem, &ctx, first..=last, granularity).unwrap(),
                    old.out
                );
            }
        }

        // scan_dirty: dirty pages picked among the mapped ones, and a few anywhere.
        let mut rng = dirty_seed | 1;
        let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
        let mut dirty = std::collections::BTreeSet::new();
        let mut all = Vec::new();
        let _ = walker::for_each_leaf(&b.mem, &ctx, Gva(0)..=Gva(u64::MAX), Granularity::AsMapped,
            walker::WalkOptions::default(), |l| { all.push(l); Ok::<(), ()>(()) });
        for l in &all {
            if next() % 3 == 0 {
                dirty.insert((l.pa.0 + next() % l.size.bytes()) >> 12);
            }
        }
        dirty.insert(next() % (1 << 28));
        let dirty = DirtySet(dirty);
        let mut old = PerEntryScanner { dirty: &dirty, scan: walker::DirtyScan::default() };
        let want = walker::walk_with(&b.mem, &ctx, first..=last, &mut old, options).map(|stats| {
            old.scan.stats = stats;
            old.scan
        });
        let got = walker::scan_dirty(&b.mem, &ctx, first..=last, &dirty, options);
        prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));

        // A run visitor records what a per-entry visitor records.
        let callbacks = walker::Callbacks::from_bits_truncate(callbacks);
        let mut one = Recorder { callbacks, last_is: 0, last_as: 0, events: vec![] };
        let mut runs = RunRecorder(Recorder { callbacks, last_is: 0, last_as: 0, events: vec![] });
        let r1 = walker::walk_with(&b.mem, &ctx, first..=last, &mut one, options);
        let r2 = walker::walk_with(&b.mem, &ctx, first..=last, &mut runs, options);
        prop_assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
        prop_assert_eq!(&one.events, &runs.0.events);
        // And for single addresses (the walk's own path for them).
        for p in &paths {
            let va = Gva(path_va(p, b.top()) | 0x123);
            let mut one = Recorder { callbacks, last_is: 0, last_as: 0, events: vec![] };
            let mut runs = RunRecorder(Recorder { callbacks, last_is: 0, last_as: 0, events: vec![] });
            let r1 = walker::walk_with(&b.mem, &ctx, va..=va, &mut one, options);
            let r2 = walker::walk_with(&b.mem, &ctx, va..=va, &mut runs, options);
            prop_assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
            prop_assert_eq!(&one.events, &runs.0.events);
        }
        prop_assert_eq!(b.hash(), before, "a walk wrote guest memory");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `translate_many` (walks sharing the tables of earlier ones, reading ahead) answers
    /// exactly what `translate` answers for every address: inside every leaf (4 KiB, 2 MiB,
    /// 1 GiB), next to them, on random table paths (holes, faults, tables outside memory),
    /// random and non-canonical addresses, repeated and in any order, 4- and 5-level.
    #[test]
    fn translate_many_matches_translate(
        ops in prop::collection::vec(op(), 1..40),
        la57 in any::<bool>(),
        nxe in any::<bool>(),
        gbpages in any::<bool>(),
        maxphy in prop_oneof![Just(52u8), Just(46u8), 36u8..52],
        probes in prop::collection::vec(any::<u64>(), 0..16),
        probe_paths in prop::collection::vec(prop::array::uniform5(0usize..4), 0..16),
        order_seed in any::<u64>(),
        root_outside in prop::bool::weighted(0.05),
    ) {
        let (b, mut ctx) = random_tables(&ops, la57, nxe, gbpages, maxphy);
        if root_outside {
            let mut regs = b.regs();
            regs.cr3 = 0x7_0000_0000;
            ctx = PagingContext::new(regs).unwrap();
        }
        let mut addrs: Vec<u64> = Vec::new();
        let _ = walker::for_each_leaf(&b.mem, &ctx, Gva(0)..=Gva(u64::MAX), Granularity::AsMapped,
            walker::WalkOptions::default(), |l| {
                let (va, size) = (l.va.0, l.size.bytes());
                addrs.extend([va, va + size / 3, va + (size - 1), va.wrapping_sub(1), va.wrapping_add(size)]);
                Ok::<(), ()>(())
            });
        addrs.extend_from_slice(&probes);
        addrs.extend(probes.iter().map(|p| canonical(p & ((1 << 57) - 1), if la57 { 57 } else { 48 })));
        addrs.extend(probe_paths.iter().map(|p| path_va(p, b.top()) | 0x123));
        // Repeats and a shuffled order, so walks start in tables entered by any earlier one.
        let n = addrs.len();
        let mut rng = order_seed | 1;
        for i in 0..n {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            addrs.push(addrs[(rng % n.max(1) as u64) as usize % n.max(1)]);
            let j = (rng >> 32) as usize % (i + 1);
            addrs.swap(i, j);
        }
        let gvas: Vec<Gva> = addrs.iter().map(|&a| Gva(a)).collect();
        let many = walker::translate_many(&b.mem, &ctx, &gvas);
        prop_assert_eq!(many.len(), gvas.len());
        for (gva, got) in gvas.iter().zip(&many) {
            let want = walker::translate(&b.mem, &ctx, *gva);
            prop_assert_eq!(*got, want, "translate_many at {}", gva);
        }
        let mut seen = 0;
        walker::translate_each(&b.mem, &ctx, &gvas, |i, r| {
            assert_eq!(i, seen);
            assert_eq!(r, many[i]);
            seen += 1;
        });
        prop_assert_eq!(seen, gvas.len());
    }
}
