//! Every mapping of an address space, built on the walk: per-leaf records (what QEMU's
//! `info tlb` shows) and merged ranges (what `info mem` shows).

use std::ops::RangeInclusive;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::addr::Gva;
use crate::context::PagingContext;
use crate::entry::{Access, Entry, EntryFlags, MemoryType};
use crate::level::{Level, PageSize};
use crate::ops::{
    Action, EntryFn, EntrySource, Fault, FaultKind, PteRun, PteRunFn, Visit, Visitor, WalkError,
};
use crate::walk::{WalkOptions, WalkStats, walk_with};

/// One leaf: a mapped page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// First virtual address of the page (a leaf partly inside the walked range is reported
    /// whole).
    pub va: Gva,
    /// First guest-physical address of the page.
    pub pa: GuestAddress,
    /// Page size.
    pub size: PageSize,
    /// Rights accumulated over every level.
    pub effective: Access,
    /// A.
    pub accessed: bool,
    /// D.
    pub dirty: bool,
    /// G.
    pub global: bool,
    /// PAT/PCD/PWT index.
    pub memory_type: MemoryType,
    /// Protection key (0 without CR4.PKE/PKS).
    pub pkey: u8,
    /// The raw leaf entry.
    pub entry: Entry,
    /// Where the entry came from: a shadow entry is part of a split huge leaf.
    pub source: EntrySource,
}

impl Leaf {
    /// Level of the leaf.
    pub const fn level(&self) -> Level {
        self.size.level()
    }

    /// Whether the leaf was synthesized by a shadow split.
    pub const fn is_shadow(&self) -> bool {
        matches!(self.source, EntrySource::Shadow)
    }

    /// Last virtual address of the page.
    pub const fn last(&self) -> Gva {
        Gva(self.va.0.wrapping_add(self.size.bytes() - 1))
    }

    /// A 4 KiB leaf from its PTE, computed the way [`Visit::decode`] does it.
    #[inline(always)]
    fn from_pte(
        entry: Entry,
        va: Gva,
        parent: Access,
        source: EntrySource,
        nxe: bool,
        pke: bool,
    ) -> Leaf {
        let f = entry.0;
        Leaf {
            va,
            pa: entry.address(Level::Pte),
            size: PageSize::Size4K,
            effective: parent.through(entry, nxe),
            accessed: f & EntryFlags::ACCESSED.bits() != 0,
            dirty: f & EntryFlags::DIRTY.bits() != 0,
            global: f & EntryFlags::GLOBAL.bits() != 0,
            memory_type: entry.memory_type(Level::Pte),
            pkey: if pke { entry.pkey_bits() } else { 0 },
            entry,
            source,
        }
    }

    fn from_visit(visit: &Visit<'_>, size: PageSize) -> Leaf {
        let d = visit.decode();
        let va = visit.entry_start();
        Leaf {
            va,
            pa: d.frame,
            size,
            effective: visit.effective,
            accessed: d.accessed,
            dirty: d.dirty,
            global: d.global,
            memory_type: d.memory_type,
            pkey: d.pkey,
            entry: visit.entry,
            source: visit.source,
        }
    }
}

/// A present entry the walk could not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEntry {
    /// Start of the range the entry covers.
    pub va: Gva,
    /// Level of the entry.
    pub level: Level,
    /// The raw entry.
    pub entry: Entry,
    /// What is wrong with it.
    pub kind: FaultKind,
}

/// What a mapping walk reports, in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// A mapped page.
    Leaf(Leaf),
    /// A malformed entry.
    Bad(BadEntry),
}

/// Whether huge leaves are reported as they are or split into shadow 4 KiB leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// Report each leaf at its own size.
    #[default]
    AsMapped,
    /// Split 2 MiB and 1 GiB leaves into 4 KiB shadow leaves (the walk's shadow split).
    Split4K,
}

/// Where the leaves of a leaf walk go, and which huge leaves it splits.
pub(crate) trait LeafSink {
    /// The error that aborts the walk.
    type Error;
    /// Whether the huge leaf `visit` (a 2 MiB or 1 GiB leaf, or a shadow 2 MiB leaf of a
    /// split 1 GiB one) is split into smaller shadow leaves rather than reported whole.
    fn split(&mut self, visit: &Visit<'_>) -> bool;
    /// A leaf, in address order.
    fn leaf(&mut self, leaf: Leaf) -> Result<(), Self::Error>;
    /// A malformed entry, in address order.
    fn bad(&mut self, bad: BadEntry) -> Result<(), Self::Error>;
}

/// The visitor of every leaf walk: leaves come out as [`Leaf`] records, huge leaves are
/// split only when the sink asks, and PTEs are taken a run at a time
/// ([`Visitor::PTE_RUN`]) so that the sink's loop over them runs without the walk around it.
pub(crate) struct LeafWalker<S>(pub(crate) S);

impl<S: LeafSink> LeafWalker<S> {
    #[inline(always)]
    fn upper(&mut self, visit: &Visit<'_>) -> Result<Action, S::Error> {
        match visit.level.leaf_size() {
            Some(size) if visit.is_leaf() => {
                if self.0.split(visit) {
                    return Ok(Action::Descend);
                }
                self.0.leaf(Leaf::from_visit(visit, size))?;
                Ok(Action::Skip)
            }
            _ => Ok(Action::Descend),
        }
    }

    #[inline(always)]
    fn run(&mut self, run: &PteRun<'_>) -> Result<(), (usize, S::Error)> {
        let nxe = run.ctx.nxe();
        let pke = run.ctx.pke();
        sink_run(
            &mut self.0,
            run.entries,
            run.first_page,
            run.parent,
            run.source,
            nxe,
            pke,
        )
    }
}

/// Hands the leaves of one PTE run to `sink`. Kept out of line, with the entries and the
/// sink as arguments of their own: the compiler then knows that the sink's stores cannot
/// change the entries (nor the sink's own fields), and keeps a sink's state in registers
/// across the loop even when it is reached through references (a closure that captures its
/// totals by `&mut`). The call costs one per run of up to 64 leaves.
#[inline(never)]
fn sink_run<S: LeafSink>(
    sink: &mut S,
    entries: &[u64],
    first_page: u64,
    parent: Access,
    source: EntrySource,
    nxe: bool,
    pke: bool,
) -> Result<(), (usize, S::Error)> {
    for (i, &raw) in entries.iter().enumerate() {
        let va = Gva(first_page.wrapping_add((i as u64) * PageSize::Size4K.bytes()));
        let source = match source {
            EntrySource::Guest(at) => EntrySource::Guest(GuestAddress(at.0 + (i as u64) * 8)),
            other => other,
        };
        sink.leaf(Leaf::from_pte(Entry(raw), va, parent, source, nxe, pke))
            .map_err(|error| (i, error))?;
    }
    Ok(())
}

impl<S: LeafSink> Visitor for LeafWalker<S> {
    type Error = S::Error;

    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::upper);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::upper);
    const PTE_RUN: Option<PteRunFn<Self>> = Some(Self::run);

    fn fault(&mut self, fault: &Fault<'_>) -> Result<(), S::Error> {
        self.0.bad(BadEntry {
            va: fault.visit.entry_start(),
            level: fault.visit.level,
            entry: fault.visit.entry,
            kind: fault.kind,
        })
    }
}

/// A leaf walk's sink made of a closure: every leaf and bad entry as a [`Mapping`].
struct MappingSink<F> {
    granularity: Granularity,
    f: F,
}

impl<F, E> LeafSink for MappingSink<F>
where
    F: FnMut(Mapping) -> Result<(), E>,
{
    type Error = E;

    #[inline(always)]
    fn split(&mut self, _visit: &Visit<'_>) -> bool {
        self.granularity == Granularity::Split4K
    }

    #[inline(always)]
    fn leaf(&mut self, leaf: Leaf) -> Result<(), E> {
        (self.f)(Mapping::Leaf(leaf))
    }

    #[inline(always)]
    fn bad(&mut self, bad: BadEntry) -> Result<(), E> {
        (self.f)(Mapping::Bad(bad))
    }
}

/// A leaf walk's sink made of a closure that takes leaves only.
struct LeafOnlySink<F> {
    granularity: Granularity,
    f: F,
}

impl<F, E> LeafSink for LeafOnlySink<F>
where
    F: FnMut(Leaf) -> Result<(), E>,
{
    type Error = E;

    #[inline(always)]
    fn split(&mut self, _visit: &Visit<'_>) -> bool {
        self.granularity == Granularity::Split4K
    }

    #[inline(always)]
    fn leaf(&mut self, leaf: Leaf) -> Result<(), E> {
        (self.f)(leaf)
    }

    #[inline(always)]
    fn bad(&mut self, _bad: BadEntry) -> Result<(), E> {
        Ok(())
    }
}

/// Calls `f` for every leaf in `range`, in address order: the leaf API, and the fast path
/// for anything that wants the mappings of an address space.
///
/// Each leaf comes as a [`Leaf`] record (VA, PA, size, effective rights, memory type, A/D/G,
/// protection key, raw entry, shadow or not), reported whole even where the range clips
/// it. With [`Granularity::AsMapped`] huge leaves come as they are; with
/// [`Granularity::Split4K`] they are split, in host-side shadow tables, into 4 KiB leaves.
/// Malformed entries are skipped and counted in [`WalkStats::faults`]
/// ([`for_each_mapping`] reports them too). An error from `f` stops the walk and comes back
/// with the address and level of the leaf.
///
/// It runs at the speed of a hand-written [`Visitor`] that owns its state, including when
/// `f` captures its state by reference: 4 KiB leaves are handed over a run at a time (see
/// [`Visitor::PTE_RUN`]), and whatever fields of the record `f` does not read are never
/// computed.
///
/// ```
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
/// use walker::{ControlRegisters, Granularity, Gva, PagingContext, WalkOptions, for_each_leaf};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
/// mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap(); // PML4[0] -> PUD
/// mem.write_obj(0x3003u64, GuestAddress(0x2008)).unwrap(); // PUD[1] -> PMD
/// mem.write_obj(0x20_0083u64, GuestAddress(0x3000)).unwrap(); // PMD[0]: 2 MiB at 2 MiB
/// let ctx = PagingContext::new(ControlRegisters::long_mode(0x1000)).unwrap();
///
/// let (mut pages, mut bytes) = (0u64, 0u64);
/// for_each_leaf(&mem, &ctx, Gva(0)..=Gva(u64::MAX), Granularity::Split4K,
///     WalkOptions::default(), |leaf| {
///         pages += 1;
///         bytes += leaf.size.bytes();
///         Ok::<(), std::convert::Infallible>(())
///     })
/// .unwrap();
/// assert_eq!((pages, bytes), (512, 2 << 20));
/// ```
pub fn for_each_leaf<M, F, E>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    granularity: Granularity,
    options: WalkOptions,
    f: F,
) -> Result<WalkStats, WalkError<E>>
where
    M: GuestMemoryBackend,
    F: FnMut(Leaf) -> Result<(), E>,
{
    let mut w = LeafWalker(LeafOnlySink { granularity, f });
    walk_with(mem, ctx, range, &mut w, options)
}

/// Calls `sink` for every leaf (and every malformed entry) in `range`, in address order:
/// [`for_each_leaf`], with the malformed entries too, as fast.
pub fn for_each_mapping<M, F, E>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    granularity: Granularity,
    options: WalkOptions,
    sink: F,
) -> Result<WalkStats, WalkError<E>>
where
    M: GuestMemoryBackend,
    F: FnMut(Mapping) -> Result<(), E>,
{
    let mut w = LeafWalker(MappingSink {
        granularity,
        f: sink,
    });
    walk_with(mem, ctx, range, &mut w, options)
}

/// All leaves and malformed entries in `range`, collected.
pub fn mappings<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    granularity: Granularity,
) -> Result<Vec<Mapping>, WalkError<std::convert::Infallible>> {
    let mut out = Vec::new();
    for_each_mapping(mem, ctx, range, granularity, WalkOptions::default(), |m| {
        out.push(m);
        Ok(())
    })?;
    Ok(out)
}

/// The leaves of `range` merged into runs ([`merge_ranges`], QEMU's `info mem`) in one
/// pass of [`for_each_leaf`], without collecting the leaves.
pub fn mapped_ranges<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    options: WalkOptions,
) -> Result<Vec<MappedRange>, WalkError<std::convert::Infallible>> {
    let mut merger = RangeMerger::new();
    let mut out = Vec::new();
    for_each_leaf(mem, ctx, range, Granularity::AsMapped, options, |leaf| {
        out.extend(merger.push(&leaf));
        Ok(())
    })?;
    out.extend(merger.finish());
    Ok(out)
}

/// A run of virtually contiguous leaves with equal effective rights (`info mem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRange {
    /// First address.
    pub start: Gva,
    /// Last address (inclusive).
    pub last: Gva,
    /// Effective rights of every leaf in the run.
    pub effective: Access,
}

impl MappedRange {
    /// Size in bytes.
    pub const fn len(&self) -> u64 {
        self.last.0.wrapping_sub(self.start.0).wrapping_add(1)
    }

    /// Always false: a range holds at least one page.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Merges leaves, given in address order, into [`MappedRange`]s, one run at a time.
#[derive(Debug, Default)]
pub struct RangeMerger {
    current: Option<MappedRange>,
}

impl RangeMerger {
    /// A merger with no open run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a leaf; returns the run it closed, if it could not extend it.
    pub fn push(&mut self, leaf: &Leaf) -> Option<MappedRange> {
        if let Some(cur) = &mut self.current
            && cur.effective == leaf.effective
            && cur.last.0.wrapping_add(1) == leaf.va.0
        {
            cur.last = leaf.last();
            return None;
        }
        self.current.replace(MappedRange {
            start: leaf.va,
            last: leaf.last(),
            effective: leaf.effective,
        })
    }

    /// Closes the open run.
    pub fn finish(self) -> Option<MappedRange> {
        self.current
    }
}

/// Merges an address-ordered sequence of leaves into runs.
pub fn merge_ranges<'a>(leaves: impl IntoIterator<Item = &'a Leaf>) -> Vec<MappedRange> {
    let mut merger = RangeMerger::new();
    let mut out: Vec<MappedRange> = leaves.into_iter().filter_map(|l| merger.push(l)).collect();
    out.extend(merger.finish());
    out
}

/// The nine flag letters of QEMU's `info tlb` for a leaf (`XGPDACTUW`), exactly as QEMU
/// prints them (target/i386/monitor.c): each is the leaf entry's own bit, not the
/// effective right across levels. X is the entry's NX bit, G global, P its bit 7 (PS: set
/// on every 2 MiB and 1 GiB leaf; QEMU clears it for a 4 KiB PTE, where bit 7 is PAT), D
/// dirty, A accessed, C PCD, T PWT, U user, W writable; each letter or `-`.
pub fn tlb_flags(leaf: &Leaf) -> String {
    let f = leaf.entry.flags();
    let huge = leaf.level() != Level::Pte;
    let bit = |on: bool, c: char| if on { c } else { '-' };
    [
        bit(f.contains(EntryFlags::NO_EXECUTE), 'X'),
        bit(f.contains(EntryFlags::GLOBAL), 'G'),
        bit(huge && f.contains(EntryFlags::HUGE_OR_PAT), 'P'),
        bit(f.contains(EntryFlags::DIRTY), 'D'),
        bit(f.contains(EntryFlags::ACCESSED), 'A'),
        bit(f.contains(EntryFlags::PCD), 'C'),
        bit(f.contains(EntryFlags::PWT), 'T'),
        bit(f.contains(EntryFlags::USER), 'U'),
        bit(f.contains(EntryFlags::WRITABLE), 'W'),
    ]
    .iter()
    .collect()
}
