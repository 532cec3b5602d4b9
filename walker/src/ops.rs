//! What a walk calls back, and what the callbacks answer: the `mm_walk_ops` of this crate.

use bitflags::bitflags;
use thiserror::Error;
use vm_memory::GuestAddress;

use crate::addr::Gva;
use crate::context::PagingContext;
use crate::entry::{Access, Decoded, Entry, EntryKind};
use crate::level::Level;

/// A callback's answer for a well-formed present entry.
///
/// Errors are the third answer: a callback returning `Err` aborts the walk, and the error is
/// returned with the address and level where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Action {
    /// Continue into the next level (the `0` of `mm/pagewalk.c`): a table is read, a huge
    /// leaf is split into a host-side shadow table. Has no effect on a 4 KiB leaf, and none
    /// when no lower level has a callback.
    #[default]
    Descend,
    /// "I handled it" (the positive return of `mm/pagewalk.c`): go on with the next entry
    /// of this level without splitting or descending.
    Skip,
}

bitflags! {
    /// A set of per-level callbacks: which ones a [`Visitor`] provides, like the non-NULL
    /// members of `struct mm_walk_ops`. A walk descends below a level only when some lower
    /// level is in this set, so nothing is read, and nothing is split, for nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Callbacks: u8 {
        /// [`Visitor::PTE_ENTRY`] or [`Visitor::PTE_RUN`].
        const PTE = 1 << 0;
        /// [`Visitor::PMD_ENTRY`].
        const PMD = 1 << 1;
        /// [`Visitor::PUD_ENTRY`].
        const PUD = 1 << 2;
        /// [`Visitor::PML4_ENTRY`].
        const PML4 = 1 << 3;
        /// [`Visitor::PML5_ENTRY`].
        const PML5 = 1 << 4;
    }
}

impl Callbacks {
    /// The flag for one level.
    #[inline]
    pub const fn of(level: Level) -> Callbacks {
        Callbacks::from_bits_truncate(1 << (level as u8 - 1))
    }

    /// Whether a level strictly below `level` has a callback.
    #[inline]
    pub const fn any_below(self, level: Level) -> bool {
        let below = (1u8 << (level as u8 - 1)) - 1;
        self.bits() & below != 0
    }
}

/// Where an entry a callback sees came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    /// Read from the guest's table at this guest-physical address.
    Guest(GuestAddress),
    /// Synthesized by splitting a huge leaf into a host-side shadow table; it exists nowhere
    /// in guest memory.
    Shadow,
    /// Not an entry but CR3 itself: only in the fault reported when the root table is
    /// outside guest memory (the fault then covers the whole walked range).
    Cr3,
}

/// One entry as a callback sees it.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'c> {
    /// Level of the entry.
    pub level: Level,
    /// First address of the part of the entry's span inside the walked range.
    pub start: Gva,
    /// Last address (inclusive) of that part.
    pub last: Gva,
    /// The raw entry.
    pub entry: Entry,
    /// Access rights accumulated from the root down to and including this entry.
    pub effective: Access,
    /// Where the entry was read from.
    pub source: EntrySource,
    pub(crate) ctx: &'c PagingContext,
}

impl Visit<'_> {
    /// Whether the entry is a synthesized shadow entry from a huge-leaf split.
    pub const fn is_shadow(&self) -> bool {
        matches!(self.source, EntrySource::Shadow)
    }

    /// Whether the entry maps a page (a 4 KiB PTE, or a PMD/PUD with PS set).
    #[inline(always)]
    pub const fn is_leaf(&self) -> bool {
        self.entry.is_leaf(self.level)
    }

    /// First virtual address the whole entry covers (its span, before clipping to the range).
    #[inline(always)]
    pub const fn entry_start(&self) -> Gva {
        self.start.align_down(self.level.entry_span())
    }

    /// Number of bytes of the walked range inside this entry's span.
    pub const fn len(&self) -> u64 {
        self.last.0 - self.start.0 + 1
    }

    /// Always false: a visited entry covers at least one byte. Present for API symmetry.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// For a leaf, the guest-physical address `va` (inside the entry's span) maps to.
    #[inline(always)]
    pub const fn physical(&self, va: Gva) -> Option<GuestAddress> {
        if !self.is_leaf() {
            return None;
        }
        let offset = va.0.wrapping_sub(self.entry_start().0) & (self.level.entry_span() - 1);
        Some(GuestAddress(self.entry.address(self.level).0 + offset))
    }

    /// The decoded view of the entry, in this walk's paging context.
    pub fn decode(&self) -> Decoded {
        let e = self.entry;
        let leaf = self.is_leaf();
        let f = e.flags();
        use crate::entry::EntryFlags as F;
        Decoded {
            present: e.is_present(),
            writable: f.contains(F::WRITABLE),
            user: f.contains(F::USER),
            nx: self.ctx.nxe() && f.contains(F::NO_EXECUTE),
            accessed: f.contains(F::ACCESSED),
            dirty: leaf && f.contains(F::DIRTY),
            global: leaf && f.contains(F::GLOBAL),
            memory_type: if leaf {
                e.memory_type(self.level)
            } else {
                crate::entry::MemoryType(e.memory_type(Level::Pmd).0 & 0b011)
            },
            pkey: if leaf && self.ctx.pke() {
                e.pkey_bits()
            } else {
                0
            },
            kind: match self.level.leaf_size() {
                Some(size) if leaf => EntryKind::Leaf(size),
                _ => EntryKind::Table,
            },
            frame: e.address(self.level),
        }
    }
}

/// Consecutive well-formed present PTEs of one table (guest or shadow), in address order,
/// as the walk read them: what [`Visitor::PTE_RUN`] is called with. Nothing is decoded until
/// asked for, so a visitor pays only for what it uses.
#[derive(Debug, Clone, Copy)]
pub struct PteRun<'a> {
    /// The raw entries.
    pub(crate) entries: &'a [u64],
    /// First address of the page of `entries[0]`.
    pub(crate) first_page: u64,
    /// The walked range's first and last addresses (only the first and last pages of a run
    /// can be clipped).
    pub(crate) first_va: u64,
    pub(crate) last_va: u64,
    /// Rights accumulated above the PTEs.
    pub(crate) parent: Access,
    /// Where `entries[0]` was read from.
    pub(crate) source: EntrySource,
    pub(crate) ctx: &'a PagingContext,
}

impl<'a> PteRun<'a> {
    /// Number of leaves.
    #[inline(always)]
    pub const fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a run holds at least one leaf. Present for API symmetry.
    pub const fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The raw entries.
    #[inline(always)]
    pub const fn entries(&self) -> &'a [u64] {
        self.entries
    }

    /// First address of the page of leaf `i` (whole, not clipped to the walked range).
    #[inline(always)]
    pub const fn page(&self, i: usize) -> Gva {
        Gva(self
            .first_page
            .wrapping_add((i as u64) * Level::Pte.entry_span()))
    }

    /// Rights accumulated above the PTEs (leaf `i`'s own are `parent().through(...)`).
    #[inline(always)]
    pub const fn parent(&self) -> Access {
        self.parent
    }

    /// The paging context of the walk.
    pub const fn context(&self) -> &'a PagingContext {
        self.ctx
    }

    /// Where leaf `i` was read from.
    #[inline(always)]
    pub const fn source(&self, i: usize) -> EntrySource {
        match self.source {
            EntrySource::Guest(at) => EntrySource::Guest(GuestAddress(at.0 + (i as u64) * 8)),
            other => other,
        }
    }

    /// Leaf `i` as a per-entry callback would have seen it.
    ///
    /// # Panics
    /// If `i` is not below [`len`](Self::len).
    #[inline(always)]
    pub fn visit(&self, i: usize) -> Visit<'a> {
        let entry = Entry(self.entries[i]);
        let page = self.page(i).0;
        Visit {
            level: Level::Pte,
            start: Gva(page.max(self.first_va)),
            last: Gva((page | (Level::Pte.entry_span() - 1)).min(self.last_va)),
            entry,
            effective: self.parent.through(entry, self.ctx.nxe()),
            source: self.source(i),
            ctx: self.ctx,
        }
    }
}

/// Why a present entry cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FaultKind {
    /// Reserved bits are set (above MAXPHYADDR, NX without EFER.NXE, PS where no leaf may
    /// be, low bits of a huge frame): the MMU would raise #PF with RSVD set.
    #[error("reserved bits {0:#x} are set")]
    ReservedBits(u64),
    /// The entry points to a table that is not inside guest memory.
    #[error("the table at {:#x} is outside guest memory", .0.0)]
    OutsideMemory(GuestAddress),
}

/// A present entry the walk could not use: reported, not descended, and the walk goes on.
#[derive(Debug, Clone, Copy)]
pub struct Fault<'c> {
    /// The entry, where it was found and the range it covers.
    pub visit: Visit<'c>,
    /// What is wrong with it.
    pub kind: FaultKind,
}

/// A per-level callback: a plain function of the visitor and the entry, like a member of
/// `struct mm_walk_ops`.
pub type EntryFn<V> = fn(&mut V, &Visit<'_>) -> Result<Action, <V as Visitor>::Error>;

/// A PTE callback that takes a whole run of leaves at once (see [`Visitor::PTE_RUN`]). An
/// error comes back with the index in the run of the leaf it is about.
pub type PteRunFn<V> = fn(&mut V, &PteRun<'_>) -> Result<(), (usize, <V as Visitor>::Error)>;

/// The callbacks of a walk, the `struct mm_walk_ops` of this crate.
///
/// A per-level callback is an associated constant holding an optional function, like the
/// function pointers of `mm_walk_ops` that are `NULL` when a level has none. Providing a
/// function is the only way to give a level a callback, and "this level has a callback"
/// ([`Callbacks::provided`]) is read from these constants, so the set of callbacks the
/// walk uses cannot disagree with the functions the visitor provides. Each provided one is
/// called for every present, well-formed entry of its level inside the walked range; its
/// answer decides what happens next (see [`Action`]). The constants are known when the walk
/// is compiled, so the call is direct and can be inlined.
///
/// ```
/// use walker::{Action, EntryFn, Visit, Visitor};
///
/// struct CountPtes(u64);
/// impl CountPtes {
///     fn pte(&mut self, _visit: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
///         self.0 += 1;
///         Ok(Action::Descend)
///     }
/// }
/// impl Visitor for CountPtes {
///     type Error = std::convert::Infallible;
///     const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte);
/// }
/// assert_eq!(walker::Callbacks::provided::<CountPtes>(), walker::Callbacks::PTE);
/// ```
///
/// The trap of earlier versions, a `pte_entry` method that silently never ran because
/// `callbacks()` did not list it, cannot be written any more: there is no such method to
/// override.
///
/// ```compile_fail
/// use walker::{Action, Visit, Visitor};
///
/// struct CountPtes(u64);
/// impl Visitor for CountPtes {
///     type Error = std::convert::Infallible;
///     fn pte_entry(&mut self, _visit: &Visit<'_>) -> Result<Action, Self::Error> {
///         self.0 += 1;
///         Ok(Action::Descend)
///     }
/// }
/// ```
///
/// Migrating from the `callbacks()` + `pte_entry()` methods of earlier versions: move each
/// per-level method into an inherent method (or keep its body in a closure) and name it in
/// the matching constant; drop `callbacks()`. A visitor that must choose its levels at run
/// time (tests do) provides every function it may need and narrows them with
/// [`enabled`](Visitor::enabled).
pub trait Visitor {
    /// The error a callback may abort the walk with.
    type Error;

    /// The PML5 entry callback (5-level paging only).
    const PML5_ENTRY: Option<EntryFn<Self>> = None;
    /// The PML4 entry callback.
    const PML4_ENTRY: Option<EntryFn<Self>> = None;
    /// The PUD callback: a table pointer or a 1 GiB leaf.
    const PUD_ENTRY: Option<EntryFn<Self>> = None;
    /// The PMD callback: a table pointer or a 2 MiB leaf (possibly a shadow entry from a
    /// 1 GiB split).
    const PMD_ENTRY: Option<EntryFn<Self>> = None;
    /// The PTE callback: a 4 KiB leaf (possibly a shadow entry from a 2 MiB split).
    const PTE_ENTRY: Option<EntryFn<Self>> = None;
    /// The PTE callback for runs of leaves: called with consecutive well-formed present
    /// PTEs of one table (up to 64, as the walk reads them), in address order, where
    /// [`PTE_ENTRY`](Visitor::PTE_ENTRY) would be called once per leaf. Since nothing lies
    /// below a PTE, the two are the same walk; a run lets the visitor's loop over its leaves
    /// keep its state in registers, whatever that state is. A visitor provides at most one
    /// of the two: providing both does not compile (the walk's constant check fails).
    ///
    /// ```compile_fail
    /// use walker::{Action, EntryFn, Gva, PteRun, PteRunFn, Visit, Visitor, walk};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// struct Both;
    /// impl Both {
    ///     fn one(&mut self, _: &Visit<'_>) -> Result<Action, ()> { Ok(Action::Descend) }
    ///     fn run(&mut self, _: &PteRun<'_>) -> Result<(), (usize, ())> { Ok(()) }
    /// }
    /// impl Visitor for Both {
    ///     type Error = ();
    ///     const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::one);
    ///     const PTE_RUN: Option<PteRunFn<Self>> = Some(Self::run);
    /// }
    /// # let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    /// # let ctx = walker::PagingContext::new(walker::ControlRegisters::long_mode(0x1000)).unwrap();
    /// let _ = walk(&mem, &ctx, Gva(0)..=Gva(u64::MAX), &mut Both);
    /// ```
    const PTE_RUN: Option<PteRunFn<Self>> = None;

    /// Which of the provided callbacks this walk uses: all of them unless narrowed here.
    /// A level outside this set is treated as having no callback. It can only take
    /// callbacks away, never add one the visitor does not provide.
    fn enabled(&self) -> Callbacks {
        Callbacks::all()
    }

    /// A non-present entry at `depth` covering `[start, last]` of the walked range
    /// (`pte_hole` of `mm/pagewalk.c`). Always called.
    fn hole(&mut self, _start: Gva, _last: Gva, _depth: Level) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A present entry the walk cannot use. It is not descended; the walk continues
    /// unless this returns an error.
    fn fault(&mut self, _fault: &Fault<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl Callbacks {
    /// The per-level callbacks visitor type `V` provides (its non-`None` constants).
    pub const fn provided<V: Visitor + ?Sized>() -> Callbacks {
        let mut bits = 0;
        assert!(
            V::PTE_ENTRY.is_none() || V::PTE_RUN.is_none(),
            "a visitor provides PTE_ENTRY or PTE_RUN, not both"
        );
        if V::PTE_ENTRY.is_some() || V::PTE_RUN.is_some() {
            bits |= Callbacks::PTE.bits();
        }
        if V::PMD_ENTRY.is_some() {
            bits |= Callbacks::PMD.bits();
        }
        if V::PUD_ENTRY.is_some() {
            bits |= Callbacks::PUD.bits();
        }
        if V::PML4_ENTRY.is_some() {
            bits |= Callbacks::PML4.bits();
        }
        if V::PML5_ENTRY.is_some() {
            bits |= Callbacks::PML5.bits();
        }
        Callbacks::from_bits_truncate(bits)
    }

    /// The callbacks a walk with `visitor` uses: those it provides and enables. Checks
    /// when the walk is compiled that the visitor's constants make sense.
    #[inline(always)]
    pub fn of_visitor<V: Visitor + ?Sized>(visitor: &V) -> Callbacks {
        const { Callbacks::provided::<V>() }.intersection(visitor.enabled())
    }
}

/// Why a walk stopped early.
#[derive(Debug, Error)]
pub enum WalkError<E> {
    /// A callback returned an error.
    #[error("the {level} callback at {va} aborted the walk")]
    Callback {
        /// The callback's error.
        #[source]
        error: E,
        /// Start of the visited range.
        va: Gva,
        /// Level of the callback.
        level: Level,
    },
    /// The walk read more entries than its budget allows: a guest can alias tables so
    /// that a naive walk visits 512^4 entries.
    #[error(
        "the walk read {limit} page-table entries without finishing (stopped at {va}, level {level}); the tables may alias each other, or the budget is too small"
    )]
    BudgetExhausted {
        /// The budget in entries.
        limit: u64,
        /// Where the walk was.
        va: Gva,
        /// The level being read.
        level: Level,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_below() {
        let pte = Callbacks::PTE;
        assert!(pte.any_below(Level::Pmd));
        assert!(pte.any_below(Level::Pml4));
        assert!(!pte.any_below(Level::Pte));
        let pmd = Callbacks::PMD;
        assert!(!pmd.any_below(Level::Pmd));
        assert!(pmd.any_below(Level::Pud));
        assert_eq!(Callbacks::of(Level::Pml5), Callbacks::PML5);
        assert_eq!(Callbacks::of(Level::Pte), Callbacks::PTE);
    }
}
