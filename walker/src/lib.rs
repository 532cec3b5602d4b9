//! # walker: a callback walker for x86-64 guest page tables
//!
//! Walks the page tables a guest's vCPU uses (from its CR3) over any
//! [`vm-memory`](vm_memory) guest memory, live or a memory file, and calls back per entry,
//! in the manner of Linux `mm/pagewalk.c` (`walk_page_range()` and `struct mm_walk_ops`):
//!
//! - a [`Visitor`] has optional callbacks per level (constants holding an optional function,
//!   like the members of `mm_walk_ops`: [`Callbacks`] is read from them), a
//!   [`hole`](Visitor::hole) callback for non-present entries with their depth, and a
//!   [`fault`](Visitor::fault) callback for entries the MMU would refuse;
//! - a callback answers [`Action::Descend`] (the default: go into the next level) or
//!   [`Action::Skip`] ("I handled it": next entry, no split, no descent), or an error,
//!   which aborts the walk and is returned with where it happened;
//! - a level is only descended into when some lower level has a callback;
//! - a huge leaf that must be descended is split first, into a host-side [`ShadowTable`]:
//!   guest memory is never written, and shadow entries are marked as such
//!   ([`EntrySource::Shadow`]). You may only walk PTEs that exist.
//!
//! Everything the guest wrote is hostile input: malformed entries become faults, tables
//! outside memory are reported, never followed, and a budget bounds the work of every walk
//! (see [`walk`](mod@walk) for the reasoning). This crate has no `unsafe` code.
//!
//! Built on the same walk:
//! - the leaf walk: [`for_each_leaf`] (a [`Leaf`] record per leaf, as mapped or split to
//!   4 KiB), [`for_each_mapping`] and [`mappings()`] (the same with malformed entries),
//!   [`mapped_ranges`] (QEMU's `info mem`) and [`scan_dirty`]. It is the fast path: it
//!   takes PTEs a run at a time ([`Visitor::PTE_RUN`]) and runs at the speed of a
//!   hand-written visitor, including with a closure that captures its state by reference
//!   (one reference: a closure that captures several variables by `&mut` gives the compiler
//!   pointers it cannot tell apart, and their updates go through memory on every leaf);
//! - [`translate()`] for one address, [`translate_each`] and [`translate_many`] for many
//!   (sharing the tables the walks enter, and reading ahead).
//!
//! ## Example
//! ```
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! use walker::{
//!     Action, ControlRegisters, EntryFn, Granularity, Gva, PagingContext, Visit, Visitor,
//!     WalkOptions, for_each_leaf, translate, walk,
//! };
//!
//! // A guest with one 2 MiB page at VA 0x4000_0000 -> PA 0x20_0000.
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
//! let (pml4, pud, pmd) = (0x1000u64, 0x2000u64, 0x3000u64);
//! mem.write_obj(pud | 0x3, GuestAddress(pml4)).unwrap(); // PML4[0] -> PUD table
//! mem.write_obj(pmd | 0x3, GuestAddress(pud + 8)).unwrap(); // PUD[1] -> PMD table
//! mem.write_obj(0x20_0000u64 | 0x83, GuestAddress(pmd)).unwrap(); // PMD[0]: 2 MiB, RW
//!
//! let ctx = PagingContext::new(ControlRegisters::long_mode(pml4)).unwrap();
//! let t = translate(&mem, &ctx, Gva(0x4000_1234)).unwrap();
//! assert_eq!(t.gpa, GuestAddress(0x20_1234));
//!
//! // Every leaf, the fast way: as mapped, then split to 4 KiB in shadow tables.
//! let mut leaves = Vec::new();
//! for_each_leaf(&mem, &ctx, Gva(0)..=Gva(u64::MAX), Granularity::AsMapped,
//!     WalkOptions::default(), |leaf| {
//!         leaves.push((leaf.va, leaf.pa, leaf.size.bytes(), leaf.effective.writable));
//!         Ok::<(), std::convert::Infallible>(())
//!     })
//! .unwrap();
//! assert_eq!(leaves, [(Gva(0x4000_0000), GuestAddress(0x20_0000), 2 << 20, true)]);
//! let mut shadow_pages = 0u64;
//! let stats = for_each_leaf(&mem, &ctx, Gva(0)..=Gva(u64::MAX), Granularity::Split4K,
//!     WalkOptions::default(), |leaf| {
//!         shadow_pages += u64::from(leaf.is_shadow());
//!         Ok::<(), std::convert::Infallible>(())
//!     })
//! .unwrap();
//! assert_eq!((shadow_pages, stats.split_2m), (512, 1));
//!
//! // The same count with a visitor, `mm_walk_ops` style: a PTE callback, and so the walk
//! // splits the 2 MiB leaf, which has no PTEs, in a shadow table.
//! struct CountPtes(u64);
//! impl CountPtes {
//!     fn pte(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
//!         assert!(v.is_shadow());
//!         self.0 += 1;
//!         Ok(Action::Descend)
//!     }
//! }
//! impl Visitor for CountPtes {
//!     type Error = std::convert::Infallible;
//!     const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte); // like mm_walk_ops
//! }
//! let mut count = CountPtes(0);
//! let stats = walk(&mem, &ctx, Gva(0)..=Gva(u64::MAX), &mut count).unwrap();
//! assert_eq!((count.0, stats.split_2m), (512, 1));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod context;
pub mod dirty;
pub mod entry;
pub mod level;
pub mod mappings;
pub mod ops;
pub mod shadow;
pub mod translate;
pub mod walk;

pub use addr::Gva;
pub use context::{ContextError, ControlRegisters, PagingContext, PagingMode};
pub use dirty::{DirtyBitmap, DirtyPage, DirtyPages, DirtyScan, scan_dirty};
pub use entry::{Access, Decoded, Entry, EntryFlags, EntryKind, MemoryType};
pub use level::{Level, PageSize};
pub use mappings::{
    BadEntry, Granularity, Leaf, MappedRange, Mapping, RangeMerger, for_each_leaf,
    for_each_mapping, mapped_ranges, mappings, merge_ranges, tlb_flags,
};
pub use ops::{
    Action, Callbacks, EntryFn, EntrySource, Fault, FaultKind, PteRun, PteRunFn, Visit, Visitor,
    WalkError,
};
pub use shadow::{HugeLeaf, ShadowTable};
pub use translate::{TranslateError, Translation, translate, translate_each, translate_many};
pub use walk::{
    DEFAULT_ENTRY_BUDGET, MAX_SCALED_ENTRY_BUDGET, MIN_ENTRY_BUDGET, WalkOptions, WalkStats,
    scaled_entry_budget, walk, walk_with,
};
