//! Every mapping of an address space, built on the walk: per-leaf records (what QEMU's
//! `info tlb` shows) and merged ranges (what `info mem` shows).

use std::ops::RangeInclusive;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::addr::Gva;
use crate::context::PagingContext;
use crate::entry::{Access, Entry, EntryFlags, MemoryType};
use crate::level::{Level, PageSize};
use crate::ops::{Action, EntryFn, EntrySource, Fault, FaultKind, Visit, Visitor, WalkError};
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

struct Collector<F> {
    granularity: Granularity,
    sink: F,
}

impl<F, E> Collector<F>
where
    F: FnMut(Mapping) -> Result<(), E>,
{
    fn entry(&mut self, visit: &Visit<'_>) -> Result<Action, E> {
        match visit.level.leaf_size() {
            Some(size) if visit.is_leaf() => {
                if size != PageSize::Size4K && self.granularity == Granularity::Split4K {
                    return Ok(Action::Descend);
                }
                (self.sink)(Mapping::Leaf(Leaf::from_visit(visit, size)))?;
                Ok(Action::Skip)
            }
            _ => Ok(Action::Descend),
        }
    }
}

impl<F, E> Visitor for Collector<F>
where
    F: FnMut(Mapping) -> Result<(), E>,
{
    type Error = E;

    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::entry);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::entry);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::entry);

    fn fault(&mut self, fault: &Fault<'_>) -> Result<(), E> {
        (self.sink)(Mapping::Bad(BadEntry {
            va: fault.visit.entry_start(),
            level: fault.visit.level,
            entry: fault.visit.entry,
            kind: fault.kind,
        }))
    }
}

/// Calls `sink` for every leaf (and every malformed entry) in `range`, in address order.
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
    let mut c = Collector { granularity, sink };
    walk_with(mem, ctx, range, &mut c, options)
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

/// The `info tlb` flag string of a leaf: `X G P D A C T U W`, each letter or `-`
/// (X = NX, G = global, P = PAT, D = dirty, A = accessed, C = PCD, T = PWT, U = user,
/// W = writable; U and W are the leaf's own bits, as QEMU prints them).
pub fn tlb_flags(leaf: &Leaf) -> String {
    let f = leaf.entry.flags();
    let bit = |on: bool, c: char| if on { c } else { '-' };
    [
        bit(leaf.effective.nx, 'X'),
        bit(leaf.global, 'G'),
        bit(leaf.memory_type.pat(), 'P'),
        bit(leaf.dirty, 'D'),
        bit(leaf.accessed, 'A'),
        bit(f.contains(EntryFlags::PCD), 'C'),
        bit(f.contains(EntryFlags::PWT), 'T'),
        bit(f.contains(EntryFlags::USER), 'U'),
        bit(f.contains(EntryFlags::WRITABLE), 'W'),
    ]
    .iter()
    .collect()
}
