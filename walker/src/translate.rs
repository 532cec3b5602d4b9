//! Translating one guest-virtual address, built on the walk.
//!
//! A translation is a walk of the one-byte range `[gva, gva]` with callbacks on the levels
//! that can hold a leaf: a huge leaf answers [`Action::Skip`] (found it, do not split), a
//! table answers [`Action::Descend`]. Holes and faults end it with the level they were
//! found at. There is no second code path that could disagree with the walk: a one-address
//! range takes the walk's single-address path, which runs each level's entry through the
//! same code as the loops of a range walk, only without the loops (see
//! [`walk`](mod@crate::walk)), and the whole translation, callbacks included, inlines
//! into one function.

use std::convert::Infallible;

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::addr::Gva;
use crate::context::PagingContext;
use crate::entry::{Access, Entry, MemoryType};
use crate::level::{Level, PageSize};
use crate::ops::{Action, EntryFn, Fault, FaultKind, Visit, Visitor, WalkError};
use crate::walk::{PointWalked, walk, walk_points};

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The translated address.
    pub gva: Gva,
    /// The guest-physical address it maps to.
    pub gpa: GuestAddress,
    /// Size of the page containing it.
    pub size: PageSize,
    /// Rights accumulated over every level.
    pub effective: Access,
    /// PAT/PCD/PWT index of the leaf.
    pub memory_type: MemoryType,
    /// The leaf entry.
    pub entry: Entry,
}

/// Why an address does not translate, as the MMU would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TranslateError {
    /// The address is not canonical in this paging mode (#GP, not #PF).
    #[error("{0} is not canonical")]
    NonCanonical(Gva),
    /// The entry at `level` is not present.
    #[error("{gva} is not mapped: the {level} entry is not present")]
    NotPresent {
        /// The address.
        gva: Gva,
        /// The level of the non-present entry.
        level: Level,
    },
    /// The entry at `level` has reserved bits set.
    #[error("{gva}: the {level} entry has reserved bits {bits:#x} set")]
    ReservedBits {
        /// The address.
        gva: Gva,
        /// The level of the bad entry.
        level: Level,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// The entry at `level` points to a table outside guest memory.
    #[error("{gva}: the {level} entry points to {:#x}, outside guest memory", .table.0)]
    OutsideMemory {
        /// The address.
        gva: Gva,
        /// The level of the bad entry.
        level: Level,
        /// Where it points.
        table: GuestAddress,
    },
}

impl TranslateError {
    /// The level of the entry that stopped the translation (none for a non-canonical
    /// address: no entry was read).
    pub const fn level(&self) -> Option<Level> {
        match self {
            TranslateError::NonCanonical(_) => None,
            TranslateError::NotPresent { level, .. }
            | TranslateError::ReservedBits { level, .. }
            | TranslateError::OutsideMemory { level, .. } => Some(*level),
        }
    }

    /// Whether the MMU would raise a page fault (#PF) for it (a non-canonical address
    /// is a #GP instead).
    pub const fn is_page_fault(&self) -> bool {
        !matches!(self, TranslateError::NonCanonical(_))
    }
}

#[derive(Default)]
struct Translator {
    result: Option<Result<Translation, TranslateError>>,
    gva: Gva,
}

impl Translator {
    #[inline(always)]
    fn leaf(&mut self, visit: &Visit<'_>) -> Action {
        if let (Some(size), Some(gpa)) = (visit.level.leaf_size(), visit.physical(self.gva)) {
            self.result = Some(Ok(Translation {
                gva: self.gva,
                gpa,
                size,
                effective: visit.effective,
                memory_type: visit.entry.memory_type(visit.level),
                entry: visit.entry,
            }));
        }
        Action::Skip
    }

    #[inline(always)]
    fn entry(&mut self, visit: &Visit<'_>) -> Action {
        if visit.is_leaf() {
            self.leaf(visit)
        } else {
            Action::Descend
        }
    }
}

impl Translator {
    #[inline(always)]
    fn upper(&mut self, visit: &Visit<'_>) -> Result<Action, Infallible> {
        Ok(self.entry(visit))
    }

    #[inline(always)]
    fn pte(&mut self, visit: &Visit<'_>) -> Result<Action, Infallible> {
        Ok(self.leaf(visit))
    }
}

impl Visitor for Translator {
    type Error = Infallible;

    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::upper);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::upper);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte);

    #[inline(always)]
    fn hole(&mut self, _start: Gva, _last: Gva, depth: Level) -> Result<(), Infallible> {
        self.result = Some(Err(TranslateError::NotPresent {
            gva: self.gva,
            level: depth,
        }));
        Ok(())
    }

    #[inline(always)]
    fn fault(&mut self, fault: &Fault<'_>) -> Result<(), Infallible> {
        let level = fault.visit.level;
        self.result = Some(Err(match fault.kind {
            FaultKind::ReservedBits(bits) => TranslateError::ReservedBits {
                gva: self.gva,
                level,
                bits,
            },
            FaultKind::OutsideMemory(table) => TranslateError::OutsideMemory {
                gva: self.gva,
                level,
                table,
            },
        }));
        Ok(())
    }
}

/// Translates `gva` through the page tables of `ctx`, as the guest's MMU would.
pub fn translate<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    gva: Gva,
) -> Result<Translation, TranslateError> {
    if !gva.is_canonical(ctx.mode().va_bits()) {
        return Err(TranslateError::NonCanonical(gva));
    }
    let mut t = Translator { result: None, gva };
    let walked = walk(mem, ctx, gva..=gva, &mut t).map(drop);
    t.take(ctx, walked)
}

impl Translator {
    /// The translation the walk of `self.gva` found, given how the walk ended.
    #[inline(always)]
    fn take(
        &mut self,
        ctx: &PagingContext,
        walked: Result<(), WalkError<Infallible>>,
    ) -> Result<Translation, TranslateError> {
        let gva = self.gva;
        match walked {
            Ok(()) => {}
            Err(WalkError::Callback { error, .. }) => match error {},
            Err(WalkError::BudgetExhausted { level, .. }) => {
                // A one-address walk reads one entry per level: the budget cannot run out.
                // Should it, answer conservatively.
                return Err(TranslateError::NotPresent { gva, level });
            }
        }
        // Every path through a one-entry-per-level walk ends in a leaf, a hole or a fault;
        // the root itself outside memory is reported as a fault of the root level.
        self.result
            .take()
            .unwrap_or(Err(TranslateError::NotPresent {
                gva,
                level: ctx.mode().root_level(),
            }))
    }
}

/// Translates every address of `gvas`, in order, and calls `f` with each one's index and
/// result, which is exactly what [`translate`] returns for it.
///
/// Faster than calling [`translate`] in a loop, by two means. The walks share what they
/// read: each address's walk starts in the deepest guest table that an earlier walk of the
/// batch entered and that covers it (a few per level are kept), with the rights accumulated
/// above it, instead of from CR3. And while one address is walked, the page-table entry of
/// an address a dozen places later is loaded ahead, so that its cache miss overlaps the
/// work in between. Both only read entries the walks read anyway, each with one atomic load.
///
/// The one difference from separate calls: an entry above a shared table is read once per
/// batch, so a guest that rewrites its upper levels while the batch runs may see addresses
/// after the change translated through the tables before it, as a TLB would.
pub fn translate_each<M, F>(mem: &M, ctx: &PagingContext, gvas: &[Gva], mut f: F)
where
    M: GuestMemoryBackend,
    F: FnMut(usize, Result<Translation, TranslateError>),
{
    let mut t = Translator::default();
    walk_points(
        mem,
        ctx,
        gvas,
        &mut t,
        |t, gva| {
            t.gva = gva;
            t.result = None;
        },
        |t, i, walked| {
            let result = match walked {
                PointWalked::NonCanonical => match gvas.get(i) {
                    Some(&gva) => Err(TranslateError::NonCanonical(gva)),
                    None => return,
                },
                PointWalked::Walked(walked) => t.take(ctx, walked),
            };
            f(i, result);
        },
    );
}

/// [`translate_each`], collected: one result per address of `gvas`, in order.
///
/// Writing the results costs more than finding them when the batch is large (a million
/// results are tens of MiB of fresh memory): to stream them, use [`translate_each`].
///
/// ```
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
/// use walker::{ControlRegisters, Gva, PagingContext, translate, translate_many};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
/// mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap(); // PML4[0] -> PUD
/// mem.write_obj(0x3003u64, GuestAddress(0x2008)).unwrap(); // PUD[1] -> PMD
/// mem.write_obj(0x20_0083u64, GuestAddress(0x3000)).unwrap(); // PMD[0]: 2 MiB at 2 MiB
/// let ctx = PagingContext::new(ControlRegisters::long_mode(0x1000)).unwrap();
///
/// let gvas = [Gva(0x4000_1234), Gva(0), Gva(0x8000_0000_0000)];
/// let all = translate_many(&mem, &ctx, &gvas);
/// assert_eq!(all[0].unwrap().gpa, GuestAddress(0x20_1234));
/// for (gva, result) in gvas.iter().zip(&all) {
///     assert_eq!(*result, translate(&mem, &ctx, *gva));
/// }
/// ```
pub fn translate_many<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    gvas: &[Gva],
) -> Vec<Result<Translation, TranslateError>> {
    let mut out = Vec::with_capacity(gvas.len());
    translate_each(mem, ctx, gvas, |_, result| out.push(result));
    out
}
