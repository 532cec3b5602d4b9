//! The walk: one loop shape for every level, as in `mm/pagewalk.c`.
//!
//! Each level runs the same loop over the entries covering `[addr, end)`:
//! `next = entry_end(addr, end)`, read the entry, hole / fault / callback, maybe descend,
//! `addr = next` until `end`. A level below is entered only when the entry is a table
//! pointer or a huge leaf, the callback (if any) said [`Action::Descend`], and some lower
//! level has a callback.
//!
//! # Reading entries
//! For each table the walk asks guest memory once for a 4 KiB [`VolatileSlice`] (one region
//! lookup and bounds check per table, not per entry), then reads only the entries inside the
//! range, each with one aligned 8-byte atomic load. A guest rewriting its tables while the
//! walk runs can change what the walk sees, but can never make it see a torn entry made of
//! two halves; a bulk copy (`memcpy`) of the page would give no such guarantee.
//!
//! Page tables (the PTE level, where a walk spends nearly all its time) are read a batch of
//! up to 64 entries at a time: the batch's entries are loaded, each with its own atomic
//! load, into a buffer on the host's stack, and then visited. The compiler must assume an
//! atomic load can change any memory, so loading each entry in the same loop as its callback
//! would force the visitor's state through memory for every leaf (that alone made a walk
//! several times slower). Whether all entries of a batch are well-formed present leaves,
//! the usual case, is found out while loading them (from the OR of all of them with P
//! flipped); such a batch is visited by a loop that only calls the callback. The only visible
//! difference: a PTE may have been read up to 63 entries before its callback
//! runs, so a visitor that itself writes guest page tables during the walk may not see its
//! write to a later PTE of the same batch. Only entries the walk would read anyway are
//! read, and the walk itself still writes nothing.
//!
//! # Single addresses
//! A walk of a range holding one address (a translation) takes the same steps as any
//! other: one entry per level, read, checked and visited by the same code as the body of
//! every level's loop. It only skips what costs a translation more than its reads: the
//! loops, the PTE batch and the out-of-line call per level, so that the whole descent is
//! one function.
//!
//! A visitor that takes PTEs a run at a time ([`Visitor::PTE_RUN`]) is called once per
//! stretch of well-formed present leaves of a batch instead of once per leaf: nothing lies
//! below a PTE, so it is the same walk, and the visitor's own loop over the run is free of
//! the walk around it (the leaf walk of [`for_each_leaf`](crate::for_each_leaf) relies on
//! this to keep a closure's state in registers).
//!
//! # Many single addresses
//! [`translate_each`](crate::translate_each) walks a batch of single addresses through the
//! same single-address path, each starting in the deepest guest table an earlier walk of the
//! batch entered that covers it, and loads the PTE of an address some places ahead first, so
//! that cache misses overlap (`walk_points`).
//!
//! # Bounded work
//! Page tables have a fixed depth, so every walk ends; the danger is fan-out. A guest can
//! point all 512 entries of every level at the same table and make a full walk read 512^4
//! entries. Legitimate guests alias tables too (KASAN maps its whole shadow with one shared
//! page table), so aliasing cannot simply be refused. Instead every walk has a budget of
//! entries it may read, and stops with [`WalkError::BudgetExhausted`] when it is spent.
//!
//! By default ([`DEFAULT_ENTRY_BUDGET`]) the budget scales with the guest memory the walk
//! reads from ([`scaled_entry_budget`]): one entry per KiB of guest memory, that is four
//! entries for every 4 KiB page the guest has, never fewer than [`MIN_ENTRY_BUDGET`] (2^25)
//! and never more than [`MAX_SCALED_ENTRY_BUDGET`] (2^30). The arithmetic:
//!
//! - Mapping `G` bytes with 4 KiB pages takes `G / 4096` PTEs plus `G / 2^21` PMDs and
//!   fewer above, about `1.002 * G / 4096` entries. A budget of `G / 1024` is four times that:
//!   a guest can map all its memory with 4 KiB pages in four address spaces' worth of
//!   entries (or alias its tables up to four-fold, as KASAN-style shadows do) and a full
//!   walk still finishes. A 1 TiB guest gets 2^30 entries for its 2^28 PTEs.
//! - The floor keeps small guests at the fixed budget of earlier versions: 2^25 entries,
//!   128 GiB of 4 KiB mappings, some tens of milliseconds of work.
//! - The ceiling bounds the worst case for any size of guest: a 512^4 aliasing attack reads
//!   entries at the speed of a 4 KiB walk, about half a nanosecond each, so 2^30 entries
//!   stop it in about half a second (the bench's `hostile` group measured 0.55 s for 2^30
//!   and 2.1 s for 2^31 on a shared 2-core Xeon). Guests of up to 1 TiB keep the four-fold
//!   margin; one of 4 TiB or more, whose full 4 KiB walk needs more than 2^30 entries, needs
//!   an explicit budget for it.
//!
//! The guest memory's size is the sum of its regions' lengths, computed once per range walk.
//! A walk of a single address reads at most one entry per level, so it is given the floor
//! without counting.
//!
//! Upper levels charge the budget one entry at a time, as they read. A page table is
//! charged once for all the entries the range covers in it, or for what is left of the
//! budget if that is less; it then reads and visits that many and stops at the first entry
//! it could not afford. Either way the same entries are read, and the walk stops at the same
//! entry, as if every entry were charged on its own.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::MS;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    VolatileMemory, VolatileSlice,
};

use crate::addr::{Gva, fold, fold_range, unfold};
use crate::context::{PagingContext, PagingMode};
use crate::entry::{Access, Entry, EntryFlags};
use crate::level::Level;
use crate::ops::{
    Action, Callbacks, EntrySource, Fault, FaultKind, PteRun, Visit, Visitor, WalkError,
};
use crate::shadow::{HugeLeaf, ShadowTable};

/// The default entry budget. Not a number of entries: a walk given this budget (the
/// largest `u64`, so "as much as you like" means the same) gets [`scaled_entry_budget`] of
/// the guest memory it reads from (see the [module docs](self)).
pub const DEFAULT_ENTRY_BUDGET: u64 = u64::MAX;

/// The least budget [`scaled_entry_budget`] gives (2^25 entries: 128 GiB mapped with 4 KiB
/// pages).
pub const MIN_ENTRY_BUDGET: u64 = 1 << 25;

/// The most budget [`scaled_entry_budget`] gives (2^30 entries: the worst case of an
/// aliasing attack in about half a second, whatever the size of the guest).
pub const MAX_SCALED_ENTRY_BUDGET: u64 = 1 << 30;

/// The default budget of a walk over `memory_bytes` of guest memory: one entry per KiB
/// (four per 4 KiB page), between [`MIN_ENTRY_BUDGET`] and [`MAX_SCALED_ENTRY_BUDGET`]
/// (see the [module docs](self) for the arithmetic).
pub const fn scaled_entry_budget(memory_bytes: u64) -> u64 {
    let scaled = memory_bytes / 1024;
    if scaled < MIN_ENTRY_BUDGET {
        MIN_ENTRY_BUDGET
    } else if scaled > MAX_SCALED_ENTRY_BUDGET {
        MAX_SCALED_ENTRY_BUDGET
    } else {
        scaled
    }
}

/// The budget a walk over `mem` starts with (`single`: a walk of one address).
fn resolve_budget<M: GuestMemoryBackend>(mem: &M, options: WalkOptions, single: bool) -> u64 {
    match options.entry_budget {
        // One entry per level at most: any budget of 5 or more walks the same.
        DEFAULT_ENTRY_BUDGET if single => MIN_ENTRY_BUDGET,
        DEFAULT_ENTRY_BUDGET => {
            let bytes = mem.iter().fold(0u64, |sum, r| sum.saturating_add(r.len()));
            scaled_entry_budget(bytes)
        }
        explicit => explicit,
    }
}

const TABLE_BYTES: usize = 4096;

/// Settings of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOptions {
    /// How many entries (guest or shadow) the walk may read before it gives up;
    /// [`DEFAULT_ENTRY_BUDGET`] scales it with the guest memory ([`scaled_entry_budget`]).
    pub entry_budget: u64,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            entry_budget: DEFAULT_ENTRY_BUDGET,
        }
    }
}

/// What a finished walk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalkStats {
    /// Entries read, from guest tables and shadow tables.
    pub entries_read: u64,
    /// Guest tables entered (each costs one region lookup).
    pub tables_read: u64,
    /// 2 MiB leaves split into shadow PTEs.
    pub split_2m: u64,
    /// 1 GiB leaves split into shadow PMDs.
    pub split_1g: u64,
    /// Present entries reported as faults.
    pub faults: u64,
}

/// A table the walk can read: a guest table reached through a table pointer, or the shadow
/// table of a split huge leaf. There is no third way in.
enum Table<'a, S> {
    Guest {
        base: GuestAddress,
        slice: VolatileSlice<'a, S>,
    },
    Shadow(&'a ShadowTable),
}

/// Bytes of virtual address space a PTE maps.
const PAGE: u64 = Level::Pte.entry_span();

/// Bit 0 of an entry, P.
const PRESENT: u64 = EntryFlags::PRESENT.bits();

/// The summary of one entry: its bits with P flipped. It has no bit of `reserved | P` set
/// exactly when the entry is present and has no bit of `reserved` set, that is, when it is a
/// well-formed present leaf. The OR of the summaries of a batch says the same of all its
/// entries at once.
#[inline(always)]
fn flip_present(raw: u64) -> u64 {
    raw ^ PRESENT
}

/// The OR of the summaries of all entries of `batch` (see [`flip_present`]).
#[inline(always)]
fn summary(batch: &[u64]) -> u64 {
    batch.iter().fold(0, |acc, &raw| acc | flip_present(raw))
}

/// Whether entries the OR of whose summaries is `summary` are all well-formed present
/// entries: P set in all of them, and no bit of `reserved` in any.
#[inline(always)]
fn all_leaves(summary: u64, reserved: u64) -> bool {
    summary & (reserved | PRESENT) == 0
}

/// PTEs read ahead of their callbacks (see the module docs).
///
/// Measured, not derived (the bench's 4 KiB walk, fastest of 200 runs, on an AMD EPYC host):
/// 64 entries read 8 at a time (the compiler then unrolls the whole batch) walked about 8%
/// faster than the 128 read 4 at a time this replaced; 32, 128 or 256 entries, or 4, 16 or
/// 32 per pass, were as slow or slower. The walk seems bound by its stores (one per entry,
/// into the buffer; the baseline has none): with 16 or 32 per pass the compiler also spills
/// loaded entries to the stack, and the walk takes half as long again. Perhaps the 64
/// stores of a batch fit the store queue. A power of two, so the 512 entries of a table
/// make whole batches.
const PTE_BATCH: usize = 64;

/// Entries loaded per pass of the loop that reads a batch (see [`PTE_BATCH`]).
const READ_UNROLL: usize = 8;

/// The batch size for a table of which only a few entries are read.
const SMALL_BATCH: usize = 8;

/// The entries of one table as the PTE loop reads them, the table kind decided once per
/// table rather than per entry.
trait Entries {
    /// Reads the entries from `index` on into `batch` (which ends at or before entry 512),
    /// in order, and returns the OR of their summaries (see [`all_leaves`]). Fails
    /// with `(k, at)` when entry `index + k`, at guest address `at`, could not be read
    /// (after reading the `k` before it).
    fn read(&self, index: usize, batch: &mut [u64]) -> Result<u64, (usize, GuestAddress)>;
    /// Where entry `index` comes from.
    fn source(&self, index: usize) -> EntrySource;
}

/// A guest table: each entry is read with one aligned 8-byte atomic load.
struct GuestEntries<'s, 'a, S> {
    base: GuestAddress,
    slice: &'s VolatileSlice<'a, S>,
}

impl<S: vm_memory::bitmap::BitmapSlice> Entries for GuestEntries<'_, '_, S> {
    #[inline(always)]
    fn read(&self, index: usize, batch: &mut [u64]) -> Result<u64, (usize, GuestAddress)> {
        // A whole batch (the common case) gets a copy of the loop of its own, where the
        // length is a constant.
        match <&mut [u64; PTE_BATCH]>::try_from(&mut *batch) {
            Ok(full) => self.read_batch(index, full),
            Err(_) => self.read_batch(index, batch),
        }
    }

    #[inline(always)]
    fn source(&self, index: usize) -> EntrySource {
        EntrySource::Guest(self.at(index))
    }
}

impl<S: vm_memory::bitmap::BitmapSlice> GuestEntries<'_, '_, S> {
    /// [`Entries::read`].
    #[inline(always)]
    fn read_batch(&self, index: usize, batch: &mut [u64]) -> Result<u64, (usize, GuestAddress)> {
        // The entries of the batch as a slice of their own, held by value: its bounds are
        // then known to the compiler, which can drop the per-entry checks.
        let entries = match self.slice.subslice(index * 8, batch.len() * 8) {
            Ok(entries) if entries.ptr_guard().as_ptr() as usize % 8 == 0 => entries,
            _ => return self.read_checked(index, batch),
        };
        // One XOR and one OR per entry. An AND and an OR of the entries themselves would
        // check them as well, but then each entry feeds three instructions (the store
        // and both), and the compiler pays for that in register copies.
        let mut flipped = 0;
        let whole = batch.len() & !(READ_UNROLL - 1);
        let read = 'read: {
            // `READ_UNROLL` entries per pass: the compiler unrolls a loop of atomic loads
            // only twice by itself.
            let mut chunks = batch.chunks_exact_mut(READ_UNROLL);
            for (c, chunk) in (&mut chunks).enumerate() {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    match entries.get_atomic_ref::<AtomicU64>((c * READ_UNROLL + j) * 8) {
                        Ok(atomic) => *slot = atomic.load(Ordering::Relaxed),
                        Err(_) => break 'read false,
                    }
                    flipped |= flip_present(*slot);
                }
            }
            for (j, slot) in chunks.into_remainder().iter_mut().enumerate() {
                match entries.get_atomic_ref::<AtomicU64>((whole + j) * 8) {
                    Ok(atomic) => *slot = atomic.load(Ordering::Relaxed),
                    Err(_) => break 'read false,
                }
                flipped |= flip_present(*slot);
            }
            true
        };
        if !read {
            return self.read_checked(index, batch);
        }
        Ok(flipped)
    }

    /// [`Entries::read`] one entry at a time, for the case that cannot happen: the slice is
    /// 4096 bytes and 8-byte aligned (checked when the table was entered). Should an entry
    /// be unreadable all the same, it is reported as a fault rather than invented.
    #[cold]
    #[inline(never)]
    fn read_checked(&self, index: usize, batch: &mut [u64]) -> Result<u64, (usize, GuestAddress)> {
        for (k, slot) in batch.iter_mut().enumerate() {
            match self.slice.get_atomic_ref::<AtomicU64>((index + k) * 8) {
                Ok(atomic) => *slot = atomic.load(Ordering::Relaxed),
                Err(_) => return Err((k, self.at(index + k))),
            }
        }
        Ok(summary(batch))
    }

    /// The guest-physical address of entry `index`.
    #[inline(always)]
    fn at(&self, index: usize) -> GuestAddress {
        GuestAddress(self.base.0 + (index as u64) * 8)
    }
}

/// The shadow table of a split huge leaf.
struct ShadowEntries<'a>(&'a ShadowTable);

impl Entries for ShadowEntries<'_> {
    #[inline(always)]
    fn read(&self, index: usize, batch: &mut [u64]) -> Result<u64, (usize, GuestAddress)> {
        for (k, slot) in batch.iter_mut().enumerate() {
            *slot = self.0.raw(index + k);
        }
        Ok(summary(batch))
    }

    #[inline(always)]
    fn source(&self, _index: usize) -> EntrySource {
        EntrySource::Shadow
    }
}

/// Where the PTEs of one table are, in unfolded addresses.
struct PteSpan {
    /// The first address the table maps.
    table_va: u64,
    /// The first and last addresses of the walked range inside the table.
    first_va: u64,
    last_va: u64,
}

impl PteSpan {
    /// The part of the walked range PTE `index` covers: only the first and last entries
    /// can be clipped.
    #[inline(always)]
    fn range(&self, index: usize) -> (Gva, Gva) {
        let page = self.table_va | ((index as u64) * PAGE);
        (
            Gva(page.max(self.first_va)),
            Gva((page | (PAGE - 1)).min(self.last_va)),
        )
    }

    #[inline(always)]
    fn visit<'c>(
        &self,
        index: usize,
        entry: Entry,
        effective: Access,
        source: EntrySource,
        ctx: &'c PagingContext,
    ) -> Visit<'c> {
        let (start, last) = self.range(index);
        Visit {
            level: Level::Pte,
            start,
            last,
            entry,
            effective,
            source,
            ctx,
        }
    }
}

/// A table pointer: the address in a present, well-formed, non-leaf entry.
#[derive(Clone, Copy)]
struct TablePointer(GuestAddress);

/// What lies below a present, well-formed entry.
enum Below {
    Table(TablePointer),
    Huge(HugeLeaf),
    Page,
}

#[inline]
fn classify(entry: Entry, level: Level) -> Below {
    if !entry.is_leaf(level) {
        Below::Table(TablePointer(entry.address(level)))
    } else {
        match HugeLeaf::new(entry, level) {
            Some(huge) => Below::Huge(huge),
            None => Below::Page,
        }
    }
}

/// A paging level known at compile time. The walk is generic over it, so every level gets
/// its own copy of the loop, with constant shifts and a direct call to its callback, as
/// every level has its own function in `mm/pagewalk.c`.
trait StaticLevel {
    const LEVEL: Level;
    /// The level an entry points to (the PTE level points nowhere; never used there).
    type Below: StaticLevel;
}

struct Pml5Level;
struct Pml4Level;
struct PudLevel;
struct PmdLevel;
struct PteLevel;

impl StaticLevel for Pml5Level {
    const LEVEL: Level = Level::Pml5;
    type Below = Pml4Level;
}
impl StaticLevel for Pml4Level {
    const LEVEL: Level = Level::Pml4;
    type Below = PudLevel;
}
impl StaticLevel for PudLevel {
    const LEVEL: Level = Level::Pud;
    type Below = PmdLevel;
}
impl StaticLevel for PmdLevel {
    const LEVEL: Level = Level::Pmd;
    type Below = PteLevel;
}
impl StaticLevel for PteLevel {
    const LEVEL: Level = Level::Pte;
    type Below = PteLevel;
}

struct Walk<'m, 'c, 'v, M: GuestMemoryBackend, V: Visitor> {
    mem: &'m M,
    ctx: &'c PagingContext,
    visitor: &'v mut V,
    callbacks: Callbacks,
    width: u32,
    /// Entries left to read.
    budget: u64,
    /// The budget the walk started with.
    limit: u64,
    stats: WalkStats,
    /// The region the last table was found in: tables are usually close together, and
    /// this saves a region lookup per table.
    region: Option<&'m M::R>,
    /// For walks of many single addresses ([`walk_points`]): the guest tables entered so
    /// far, to start the next address's walk below the levels it shares with them.
    paths: Option<&'v mut PathCache<'m, MS<'m, M>>>,
}

/// Slots per level of a [`PathCache`]: direct-mapped by the table's span. Enough for the
/// page directories of 16 GiB and the PDPTs of 8 TiB; a page table (2 MiB) seldom repeats
/// in a random batch, and a hit there saves one more level.
const PATH_WAYS: usize = 16;

/// A guest table entered by an earlier walk of [`walk_points`].
struct CachedTable<'m, S> {
    /// The folded addresses the table covers, shifted right by its span.
    prefix: u64,
    base: GuestAddress,
    slice: VolatileSlice<'m, S>,
    /// Rights accumulated above the table.
    parent: Access,
}

/// The guest tables below the root that the walks of [`walk_points`] entered, per level
/// (PML4 tables under a PML5 down to page tables).
pub(crate) struct PathCache<'m, S> {
    slots: [[Option<CachedTable<'m, S>>; PATH_WAYS]; 4],
}

impl<'m, S: Clone> PathCache<'m, S> {
    fn new() -> Self {
        PathCache {
            slots: std::array::from_fn(|_| std::array::from_fn(|_| None)),
        }
    }

    /// The prefix of folded `addr` in a table of `level`, and its slot.
    #[inline(always)]
    fn key(level: Level, addr: u64) -> (u64, usize, usize) {
        let shift = level.entry_span().trailing_zeros() + 9;
        let prefix = addr >> shift;
        (prefix, level as usize - 1, (prefix as usize) % PATH_WAYS)
    }

    #[inline(always)]
    fn get(&self, level: Level, addr: u64) -> Option<(Table<'m, S>, Access)> {
        let (prefix, l, slot) = Self::key(level, addr);
        match &self.slots[l][slot] {
            Some(c) if c.prefix == prefix => Some((
                Table::Guest {
                    base: c.base,
                    slice: c.slice.clone(),
                },
                c.parent,
            )),
            _ => None,
        }
    }

    #[inline(always)]
    fn put(&mut self, level: Level, addr: u64, table: &Table<'m, S>, parent: Access) {
        if let Table::Guest { base, slice } = table {
            let (prefix, l, slot) = Self::key(level, addr);
            self.slots[l][slot] = Some(CachedTable {
                prefix,
                base: *base,
                slice: slice.clone(),
                parent,
            });
        }
    }
}

/// What happened to one address of [`walk_points`].
pub(crate) enum PointWalked<E> {
    /// The address is not canonical: not walked.
    NonCanonical,
    /// The walk's result.
    Walked(Result<(), WalkError<E>>),
}

/// How many addresses ahead [`walk_points`] touches the page-table entry of.
const TOUCH_AHEAD: usize = 12;

/// Walks the single addresses `gvas` one after another: each as [`walk`] walks it alone
/// (same entries, checks, callbacks, holes and faults), except that the guest tables an
/// earlier address's walk entered are not read again: a walk starts in the deepest one that
/// covers its address, with the rights accumulated above it (so the entries above are as
/// they were when first read). Ahead of each walk, the PTE of the address
/// [`TOUCH_AHEAD`] places later is loaded and dropped, so its cache line is on its way when
/// its turn comes. `before` runs before each canonical address's walk, `after` after each
/// address. Entry budgets and statistics are per address and not reported.
pub(crate) fn walk_points<M, V>(
    mem: &M,
    ctx: &PagingContext,
    gvas: &[Gva],
    visitor: &mut V,
    mut before: impl FnMut(&mut V, Gva),
    mut after: impl FnMut(&mut V, usize, PointWalked<V::Error>),
) where
    M: GuestMemoryBackend,
    V: Visitor,
{
    let width = ctx.mode().va_bits();
    let callbacks = Callbacks::of_visitor(visitor);
    let mut paths = PathCache::new();
    let mut w = Walk {
        mem,
        ctx,
        visitor,
        callbacks,
        width,
        budget: MIN_ENTRY_BUDGET,
        limit: MIN_ENTRY_BUDGET,
        stats: WalkStats::default(),
        region: None,
        paths: None,
    };
    let root = w.guest_table(TablePointer(ctx.root()));
    w.paths = Some(&mut paths);
    for (i, &gva) in gvas.iter().enumerate() {
        if let Some(&ahead) = gvas.get(i + TOUCH_AHEAD)
            && ahead.is_canonical(width)
        {
            w.touch(fold(ahead.0, width));
        }
        if !gva.is_canonical(width) {
            after(w.visitor, i, PointWalked::NonCanonical);
            continue;
        }
        before(w.visitor, gva);
        let addr = fold(gva.0, width);
        w.budget = w.limit;
        let result = match &root {
            Some(root) => w.walk_shared_point(root, addr),
            None => {
                let visit = Visit {
                    level: ctx.mode().root_level(),
                    start: gva,
                    last: gva,
                    entry: Entry(ctx.registers().cr3),
                    effective: Access::ROOT,
                    source: EntrySource::Cr3,
                    ctx,
                };
                w.report_fault(&visit, FaultKind::OutsideMemory(ctx.root()))
            }
        };
        after(w.visitor, i, PointWalked::Walked(result));
    }
}

/// Walks the page tables of `ctx` over the canonical addresses in `range`, calling
/// `visitor` back, with the default [`WalkOptions`].
///
/// Guest memory is only read. Returns what the walk did, or the error that stopped it.
pub fn walk<M, V>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    visitor: &mut V,
) -> Result<WalkStats, WalkError<V::Error>>
where
    M: GuestMemoryBackend,
    V: Visitor,
{
    walk_with(mem, ctx, range, visitor, WalkOptions::default())
}

/// [`walk`] with explicit options.
pub fn walk_with<M, V>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    visitor: &mut V,
    options: WalkOptions,
) -> Result<WalkStats, WalkError<V::Error>>
where
    M: GuestMemoryBackend,
    V: Visitor,
{
    let width = ctx.mode().va_bits();
    let callbacks = Callbacks::of_visitor(visitor);
    let Some((start, end)) = fold_range(*range.start(), *range.end(), width) else {
        return Ok(WalkStats::default());
    };
    let limit = resolve_budget(mem, options, end - start == 1);
    let mut w = Walk {
        mem,
        ctx,
        visitor,
        callbacks,
        width,
        budget: limit,
        limit,
        stats: WalkStats::default(),
        region: None,
        paths: None,
    };
    let root = ctx.root();
    let result = match w.guest_table(TablePointer(root)) {
        // A single address (a translation) takes the same steps without the loops.
        Some(table) if end - start == 1 => match ctx.mode() {
            PagingMode::FiveLevel => w.walk_point::<Pml5Level>(&table, start, Access::ROOT),
            PagingMode::FourLevel => w.walk_point::<Pml4Level>(&table, start, Access::ROOT),
        },
        Some(table) => match ctx.mode() {
            PagingMode::FiveLevel => w.walk_table::<Pml5Level>(&table, start, end, Access::ROOT),
            PagingMode::FourLevel => w.walk_table::<Pml4Level>(&table, start, end, Access::ROOT),
        },
        None => {
            // The root itself is outside memory: report it as a fault of the root level
            // covering the whole range.
            let visit = Visit {
                level: ctx.mode().root_level(),
                start: unfold(start, width),
                last: unfold(end - 1, width),
                entry: Entry(ctx.registers().cr3),
                effective: Access::ROOT,
                source: EntrySource::Cr3,
                ctx,
            };
            w.report_fault(&visit, FaultKind::OutsideMemory(root))
        }
    };
    result?;
    w.stats.entries_read = w.limit - w.budget;
    Ok(w.stats)
}

impl<'m, 'c, M: GuestMemoryBackend, V: Visitor> Walk<'m, 'c, '_, M, V> {
    #[inline]
    fn guest_table(&mut self, ptr: TablePointer) -> Option<Table<'m, MS<'m, M>>> {
        self.guest_table_inlined(ptr)
    }

    /// [`guest_table`](Self::guest_table), always inlined: for single-address walks, which
    /// are a few loads and checks, and where the call itself showed.
    #[inline(always)]
    fn guest_table_inlined(&mut self, ptr: TablePointer) -> Option<Table<'m, MS<'m, M>>> {
        let region = match self.region {
            Some(r) if r.start_addr() <= ptr.0 && ptr.0 <= r.last_addr() => r,
            _ => {
                let r = self.mem.find_region(ptr.0)?;
                self.region = Some(r);
                r
            }
        };
        let offset = MemoryRegionAddress(ptr.0.unchecked_offset_from(region.start_addr()));
        let slice = region.get_slice(offset, TABLE_BYTES).ok()?;
        // Entries are read with aligned atomic loads: refuse a slice that could not serve
        // them (cannot happen for page-aligned mappings, but costs nothing to check once).
        if slice.len() != TABLE_BYTES || slice.ptr_guard().as_ptr() as usize % 8 != 0 {
            return None;
        }
        self.stats.tables_read += 1;
        Some(Table::Guest { base: ptr.0, slice })
    }

    #[cold]
    #[inline(never)]
    fn report_fault(
        &mut self,
        visit: &Visit<'_>,
        kind: FaultKind,
    ) -> Result<(), WalkError<V::Error>> {
        self.stats.faults += 1;
        let fault = Fault {
            visit: *visit,
            kind,
        };
        self.visitor
            .fault(&fault)
            .map_err(|error| WalkError::Callback {
                error,
                va: visit.start,
                level: visit.level,
            })
    }

    /// Calls the callback of level `L` (a constant: the match folds away).
    #[inline(always)]
    fn call<L: StaticLevel>(&mut self, visit: &Visit<'_>) -> Result<Action, WalkError<V::Error>> {
        let v = &mut *self.visitor;
        let callback = match L::LEVEL {
            Level::Pte => V::PTE_ENTRY,
            Level::Pmd => V::PMD_ENTRY,
            Level::Pud => V::PUD_ENTRY,
            Level::Pml4 => V::PML4_ENTRY,
            Level::Pml5 => V::PML5_ENTRY,
        };
        let result = match callback {
            Some(callback) => callback(v, visit),
            None => Ok(Action::Descend),
        };
        result.map_err(|error| WalkError::Callback {
            error,
            va: visit.start,
            level: L::LEVEL,
        })
    }

    /// Visits the entries of `table` (of level `L`) covering folded `[start, end)`.
    fn walk_table<L: StaticLevel>(
        &mut self,
        table: &Table<'_, MS<'m, M>>,
        start: u64,
        end: u64,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        if L::LEVEL == Level::Pte {
            // Leaves: their own loop, with the table kind decided once per table.
            return match table {
                Table::Guest { base, slice } => {
                    self.walk_ptes(GuestEntries { base: *base, slice }, start, end, parent)
                }
                Table::Shadow(shadow) => self.walk_ptes(ShadowEntries(shadow), start, end, parent),
            };
        }
        let span_mask = L::LEVEL.entry_span() - 1;
        let mut addr = start;
        loop {
            // Folded addresses are below 2^57, so this cannot overflow.
            let next = ((addr | span_mask) + 1).min(end);
            self.visit_entry::<L, false>(table, addr, next, parent)?;
            if next == end {
                return Ok(());
            }
            addr = next;
        }
    }

    /// Walks the single folded address `addr` from `table` (of level `L`) down: what
    /// [`walk_table`](Self::walk_table) does for the range `[addr, addr + 1)`, one entry per
    /// level, through the same [`visit_entry`](Self::visit_entry), without the loop, and at
    /// the PTE level without the batch machinery that only pays off for many entries.
    #[inline(always)]
    fn walk_point<L: StaticLevel>(
        &mut self,
        table: &Table<'_, MS<'m, M>>,
        addr: u64,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        self.visit_entry::<L, true>(table, addr, addr + 1, parent)
    }

    /// Reads, checks and visits the entry of `table` (of level `L`) for folded
    /// `[addr, next)`, and descends below it if wanted: the body of every level's loop, and
    /// all of a single-address walk (`POINT`, which then also descends as one).
    ///
    /// For the PTE level it is only used by single-address walks; it does for that one
    /// entry what [`walk_ptes`](Self::walk_ptes) does, in the same order.
    #[inline(always)]
    fn visit_entry<L: StaticLevel, const POINT: bool>(
        &mut self,
        table: &Table<'_, MS<'m, M>>,
        addr: u64,
        next: u64,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        let has_callback = self.callbacks.contains(Callbacks::of(L::LEVEL));
        let descend_wanted = L::LEVEL != Level::Pte && self.callbacks.any_below(L::LEVEL);
        if self.budget == 0 {
            return Err(WalkError::BudgetExhausted {
                limit: self.limit,
                va: unfold(addr, self.width),
                level: L::LEVEL,
            });
        }
        self.budget -= 1;

        let index = L::LEVEL.index(addr);
        let (raw, source) = match table {
            Table::Guest { base, slice } => {
                let at = GuestAddress(base.0 + (index as u64) * 8);
                // Cannot fail: the slice is 4096 bytes and 8-byte aligned (checked when
                // the table was entered). Should it ever, the entry is reported as a
                // fault rather than invented.
                match slice.get_atomic_ref::<AtomicU64>(index * 8) {
                    Ok(atomic) => (atomic.load(Ordering::Relaxed), EntrySource::Guest(at)),
                    Err(_) => {
                        let source = EntrySource::Guest(at);
                        let visit = self.visit::<L>(addr, next, Entry(0), parent, source);
                        return self.report_fault(&visit, FaultKind::OutsideMemory(at));
                    }
                }
            }
            Table::Shadow(shadow) => (shadow.raw(index), EntrySource::Shadow),
        };
        let entry = Entry(raw);

        if !entry.is_present() {
            let (first, last) = (unfold(addr, self.width), unfold(next - 1, self.width));
            return self
                .visitor
                .hole(first, last, L::LEVEL)
                .map_err(|error| WalkError::Callback {
                    error,
                    va: first,
                    level: L::LEVEL,
                });
        }
        let effective = parent.through(entry, self.ctx.nxe());
        let reserved = self.ctx.reserved_bits(entry, L::LEVEL);
        if reserved != 0 {
            let visit = self.visit::<L>(addr, next, entry, effective, source);
            return self.report_fault(&visit, FaultKind::ReservedBits(reserved));
        }
        let action = if has_callback && L::LEVEL == Level::Pte && V::PTE_RUN.is_some() {
            let raw = [raw];
            let run = PteRun {
                entries: &raw,
                first_page: unfold(addr & !(PAGE - 1), self.width).0,
                first_va: unfold(addr, self.width).0,
                last_va: unfold(next - 1, self.width).0,
                parent,
                source,
                ctx: self.ctx,
            };
            self.call_run(&run)?;
            Action::Skip
        } else if has_callback {
            let visit = self.visit::<L>(addr, next, entry, effective, source);
            self.call::<L>(&visit)?
        } else {
            Action::Descend
        };
        if descend_wanted && action == Action::Descend {
            if POINT {
                self.descend_in::<L, true>(entry, addr, next, effective, source)?;
            } else {
                self.descend::<L>(entry, addr, next, effective, source)?;
            }
        }
        Ok(())
    }

    /// Visits the PTEs of one table (guest or shadow) covering folded `[start, end)`: the
    /// loop every 4 KiB leaf goes through, so it is kept lean. It does what the loop of
    /// [`walk_table`](Self::walk_table) does for a level that never descends, except that
    /// the budget is charged once for the whole table (up to what is left), entries are read
    /// a batch at a time (see the module docs), and the addresses of the entries are
    /// computed from the table's address.
    #[inline(always)]
    fn walk_ptes<T: Entries>(
        &mut self,
        table: T,
        start: u64,
        end: u64,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        // A few entries get a small buffer: zeroing the full-size one cost a walk of one
        // entry about a tenth of its time (single addresses no longer come here at all:
        // see `walk_point`).
        let wanted = Level::Pte.index(end - 1) - Level::Pte.index(start) + 1;
        if wanted <= SMALL_BATCH {
            self.walk_ptes_in::<T, SMALL_BATCH>(table, start, end, parent)
        } else {
            self.walk_ptes_in::<T, PTE_BATCH>(table, start, end, parent)
        }
    }

    /// [`walk_ptes`](Self::walk_ptes) with batches of up to `N` entries.
    #[inline(always)]
    fn walk_ptes_in<T: Entries, const N: usize>(
        &mut self,
        table: T,
        start: u64,
        end: u64,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        const TABLE_SPAN: u64 = PAGE * Level::ENTRIES as u64;
        let first = Level::Pte.index(start);
        let last = Level::Pte.index(end - 1);
        // Entries the range covers, and how many of them the budget still allows; the walk
        // stops before entry `stop` if that is fewer.
        let wanted = (last - first + 1) as u64;
        let allowed = wanted.min(self.budget);
        self.budget -= allowed;
        let stop = first + allowed as usize;

        // A table's span never crosses the canonical sign bit, so its entries' unfolded
        // addresses are the unfolded table address plus their offsets.
        let span = PteSpan {
            table_va: unfold(start & !(TABLE_SPAN - 1), self.width).0,
            first_va: unfold(start, self.width).0,
            last_va: unfold(end - 1, self.width).0,
        };

        let has_callback = self.callbacks.contains(Callbacks::PTE);
        let reserved = self.ctx.reserved_mask(Level::Pte, false);
        let mut batch = [0u64; N];
        let mut index = first;
        while index < stop {
            let count = (stop - index).min(N);
            let (read, summary, unreadable) = match table.read(index, &mut batch[..count]) {
                Ok(summary) => (count, Some(summary), None),
                Err((read, at)) => (read, None, Some(at)),
            };
            let mut k = 0;
            if has_callback && summary.is_some_and(|summary| all_leaves(summary, reserved)) {
                // The common case, checked for the whole batch at once: every entry is a
                // well-formed present leaf, and the loop is nothing but callbacks.
                if V::PTE_RUN.is_some() {
                    self.visit_run(&table, &span, index, &batch[..read], parent)?;
                } else {
                    for (k, &raw) in batch[..read].iter().enumerate() {
                        self.visit_pte(&table, &span, index + k, Entry(raw), parent)?;
                    }
                }
                k = read;
            }
            while k < read {
                k = self.visit_ptes(&table, &span, &batch[..read], index, k, parent)?;
                if k < read {
                    // Stopped at an entry with reserved bits.
                    let entry = Entry(batch[k]);
                    let visit = span.visit(
                        index + k,
                        entry,
                        parent.through(entry, self.ctx.nxe()),
                        table.source(index + k),
                        self.ctx,
                    );
                    let reserved = self.ctx.reserved_bits(entry, Level::Pte);
                    self.report_fault(&visit, FaultKind::ReservedBits(reserved))?;
                    k += 1;
                }
            }
            if let Some(at) = unreadable {
                // Entry `index + read` could not be read: reported as a fault, not invented.
                let source = EntrySource::Guest(at);
                let visit = span.visit(index + read, Entry(0), parent, source, self.ctx);
                self.report_fault(&visit, FaultKind::OutsideMemory(at))?;
                index += read + 1;
            } else {
                index += count;
            }
        }

        if allowed < wanted {
            let va = if stop == first {
                span.first_va
            } else {
                span.table_va | ((stop as u64) * PAGE)
            };
            return Err(WalkError::BudgetExhausted {
                limit: self.limit,
                va: Gva(va),
                level: Level::Pte,
            });
        }
        Ok(())
    }

    /// Visits `batch[k..]`, the PTEs from index `index + k` on, until the end of the batch or
    /// an entry with reserved bits, and returns where it stopped.
    ///
    /// The innermost loop runs over well-formed present leaves only and does nothing but
    /// call the PTE callback: with no other call and no atomic load in it, a visitor's state
    /// can stay in registers across it instead of going through memory for every leaf.
    #[inline(always)]
    fn visit_ptes<T: Entries>(
        &mut self,
        table: &T,
        span: &PteSpan,
        batch: &[u64],
        index: usize,
        mut k: usize,
        parent: Access,
    ) -> Result<usize, WalkError<V::Error>> {
        let has_callback = self.callbacks.contains(Callbacks::PTE);
        let check = self.ctx.reserved_mask(Level::Pte, false) | PRESENT;
        loop {
            if has_callback && V::PTE_RUN.is_some() {
                let run = batch[k..]
                    .iter()
                    .take_while(|&&raw| raw & check == PRESENT)
                    .count();
                if run > 0 {
                    self.visit_run(table, span, index + k, &batch[k..k + run], parent)?;
                    k += run;
                }
            } else if has_callback {
                // Written so that the callback runs on every pass through the loop, exits
                // included: only then may the compiler keep the visitor's state in registers.
                if let Some(&first) = batch.get(k).filter(|&&raw| raw & check == PRESENT) {
                    let mut raw = first;
                    loop {
                        self.visit_pte(table, span, index + k, Entry(raw), parent)?;
                        k += 1;
                        match batch.get(k) {
                            Some(&next) if next & check == PRESENT => raw = next,
                            _ => break,
                        }
                    }
                }
            } else {
                while batch.get(k).is_some_and(|&raw| raw & check == PRESENT) {
                    k += 1;
                }
            }
            match batch.get(k) {
                Some(&raw) if raw & PRESENT == 0 => {
                    let (first, last) = span.range(index + k);
                    self.visitor
                        .hole(first, last, Level::Pte)
                        .map_err(|error| WalkError::Callback {
                            error,
                            va: first,
                            level: Level::Pte,
                        })?;
                    k += 1;
                }
                // The end of the batch, or an entry with reserved bits.
                _ => return Ok(k),
            }
        }
    }

    /// Calls the run callback ([`Visitor::PTE_RUN`]) for the well-formed present leaves
    /// `entries`, PTEs `index..` of `table`.
    #[inline(always)]
    fn visit_run<T: Entries>(
        &mut self,
        table: &T,
        span: &PteSpan,
        index: usize,
        entries: &[u64],
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        let run = PteRun {
            entries,
            first_page: span.table_va | ((index as u64) * PAGE),
            first_va: span.first_va,
            last_va: span.last_va,
            parent,
            source: table.source(index),
            ctx: self.ctx,
        };
        self.call_run(&run)
    }

    /// Calls [`Visitor::PTE_RUN`] with `run`.
    #[inline(always)]
    fn call_run(&mut self, run: &PteRun<'_>) -> Result<(), WalkError<V::Error>> {
        match V::PTE_RUN {
            Some(callback) => callback(self.visitor, run).map_err(|(i, error)| {
                let i = i.min(run.len().saturating_sub(1));
                WalkError::Callback {
                    error,
                    va: Gva(run.page(i).0.max(run.first_va)),
                    level: Level::Pte,
                }
            }),
            None => Ok(()),
        }
    }

    /// Calls the PTE callback for PTE `index`, a well-formed present leaf.
    #[inline(always)]
    fn visit_pte<T: Entries>(
        &mut self,
        table: &T,
        span: &PteSpan,
        index: usize,
        entry: Entry,
        parent: Access,
    ) -> Result<(), WalkError<V::Error>> {
        let effective = parent.through(entry, self.ctx.nxe());
        let visit = span.visit(index, entry, effective, table.source(index), self.ctx);
        // The answer does not matter: there is nothing below a PTE.
        self.call::<PteLevel>(&visit).map(drop)
    }

    /// Enters the level below a present, well-formed entry of level `L`: its table, or the
    /// shadow table of its split.
    fn descend<L: StaticLevel>(
        &mut self,
        entry: Entry,
        addr: u64,
        next: u64,
        effective: Access,
        source: EntrySource,
    ) -> Result<(), WalkError<V::Error>> {
        self.descend_in::<L, false>(entry, addr, next, effective, source)
    }

    /// [`descend`](Self::descend), and for a single-address walk (`POINT`, with
    /// `next = addr + 1`) the same steps continued with [`walk_point`](Self::walk_point),
    /// inlined so that a whole translation is one function.
    #[inline(always)]
    fn descend_in<L: StaticLevel, const POINT: bool>(
        &mut self,
        entry: Entry,
        addr: u64,
        next: u64,
        effective: Access,
        source: EntrySource,
    ) -> Result<(), WalkError<V::Error>> {
        match classify(entry, L::LEVEL) {
            Below::Page => Ok(()),
            Below::Huge(huge) => {
                self.count_split(huge);
                self.walk_split::<L::Below, POINT>(huge, addr, next, effective)
            }
            Below::Table(ptr) => {
                let table = if POINT {
                    self.guest_table_inlined(ptr)
                } else {
                    self.guest_table(ptr)
                };
                match table {
                    Some(table) if POINT => {
                        if let Some(paths) = self.paths.as_deref_mut() {
                            paths.put(<L::Below as StaticLevel>::LEVEL, addr, &table, effective);
                        }
                        self.walk_point::<L::Below>(&table, addr, effective)
                    }
                    Some(table) => self.walk_table::<L::Below>(&table, addr, next, effective),
                    None => {
                        let visit = self.visit::<L>(addr, next, entry, effective, source);
                        self.report_fault(&visit, FaultKind::OutsideMemory(ptr.0))
                    }
                }
            }
        }
    }

    /// The walk of folded `addr` for [`walk_points`]: from the deepest cached table that
    /// covers it, or from `root`.
    #[inline(always)]
    fn walk_shared_point(
        &mut self,
        root: &Table<'m, MS<'m, M>>,
        addr: u64,
    ) -> Result<(), WalkError<V::Error>> {
        let five = self.ctx.mode() == PagingMode::FiveLevel;
        if let Some(paths) = self.paths.as_deref() {
            if let Some((table, parent)) = paths.get(Level::Pte, addr) {
                return self.walk_point::<PteLevel>(&table, addr, parent);
            }
            if let Some((table, parent)) = paths.get(Level::Pmd, addr) {
                return self.walk_point::<PmdLevel>(&table, addr, parent);
            }
            if let Some((table, parent)) = paths.get(Level::Pud, addr) {
                return self.walk_point::<PudLevel>(&table, addr, parent);
            }
            if five && let Some((table, parent)) = paths.get(Level::Pml4, addr) {
                return self.walk_point::<Pml4Level>(&table, addr, parent);
            }
        }
        if five {
            self.walk_point::<Pml5Level>(root, addr, Access::ROOT)
        } else {
            self.walk_point::<Pml4Level>(root, addr, Access::ROOT)
        }
    }

    /// Loads (and drops) the PTE of folded `addr` if the page directory above it is cached
    /// and points to a page table: the prefetch of [`walk_points`]. Reads, with one atomic
    /// load each, only entries that the walk of `addr` will read; charges nothing, reports
    /// nothing, and gives up at anything unusual.
    #[inline(always)]
    fn touch(&mut self, addr: u64) {
        let Some(paths) = self.paths.as_deref() else {
            return;
        };
        let Some((Table::Guest { slice, .. }, _)) = paths.get(Level::Pmd, addr) else {
            return;
        };
        let Ok(pmd) = slice.get_atomic_ref::<AtomicU64>(Level::Pmd.index(addr) * 8) else {
            return;
        };
        let pmd = Entry(pmd.load(Ordering::Relaxed));
        if !pmd.is_present() || pmd.is_leaf(Level::Pmd) {
            return;
        }
        let table = pmd.address(Level::Pmd);
        let region = match self.region {
            Some(r) if r.start_addr() <= table && table <= r.last_addr() => r,
            _ => return,
        };
        let at = table.0 + (Level::Pte.index(addr) as u64) * 8;
        let Some(offset) = at.checked_sub(region.start_addr().0) else {
            return;
        };
        if let Ok(pte) = region.get_slice(MemoryRegionAddress(offset), 8)
            && let Ok(pte) = pte.get_atomic_ref::<AtomicU64>(0)
        {
            std::hint::black_box(pte.load(Ordering::Relaxed));
        }
    }

    /// Counts a split of `huge` in the statistics.
    #[inline(always)]
    fn count_split(&mut self, huge: HugeLeaf) {
        match huge.level() {
            Level::Pud => self.stats.split_1g += 1,
            _ => self.stats.split_2m += 1,
        }
    }

    /// Kept out of line so the 4 KiB shadow table is not in the frame of every level.
    #[inline(never)]
    fn walk_split<B: StaticLevel, const POINT: bool>(
        &mut self,
        huge: HugeLeaf,
        addr: u64,
        next: u64,
        effective: Access,
    ) -> Result<(), WalkError<V::Error>> {
        let shadow = ShadowTable::split(huge);
        let table = Table::Shadow(&shadow);
        if POINT {
            self.walk_point::<B>(&table, addr, effective)
        } else {
            self.walk_table::<B>(&table, addr, next, effective)
        }
    }

    #[inline]
    fn visit<L: StaticLevel>(
        &self,
        addr: u64,
        next: u64,
        entry: Entry,
        effective: Access,
        source: EntrySource,
    ) -> Visit<'c> {
        Visit {
            level: L::LEVEL,
            start: unfold(addr, self.width),
            last: unfold(next - 1, self.width),
            entry,
            effective,
            source,
            ctx: self.ctx,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch check agrees with checking each entry on its own: present, and no reserved
    /// bit. Entries are built from the bits that matter (P, a reserved bit, an ordinary bit).
    #[test]
    fn batch_summary_checks_every_entry() {
        let reserved = (1u64 << 63) | (1 << 51);
        let bits = [0, PRESENT, 1 << 1, 1 << 63, 1 << 51, 1 << 12];
        let values: Vec<u64> = (0..1u32 << bits.len())
            .map(|mask| {
                (0..bits.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .fold(0, |v, i| v | bits[i])
            })
            .collect();
        for &a in &values {
            for &b in &values {
                for batch in [&[a][..], &[a, b], &[b, a, PRESENT]] {
                    let each = batch
                        .iter()
                        .all(|&raw| raw & (reserved | PRESENT) == PRESENT);
                    assert_eq!(all_leaves(summary(batch), reserved), each, "{batch:x?}");
                }
            }
        }
        assert!(all_leaves(summary(&[]), reserved));
    }
}
