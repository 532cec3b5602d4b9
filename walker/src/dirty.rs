//! Dirty scans by guest-virtual address, built on the walk.
//!
//! KVM reports dirtied pages by guest-physical address. To say which *virtual* pages of an
//! address space changed, run the leaf walk of [`for_each_leaf`](crate::for_each_leaf)
//! asking, at each huge leaf, whether the physical range it maps holds any dirty page: if
//! not, the leaf answers [`Action::Skip`](crate::Action::Skip) and is never split; if so, it
//! answers [`Action::Descend`](crate::Action::Descend), the walk splits it in a shadow table
//! and the 4 KiB leaves that come out are checked one by one. This is the walker's rule
//! paying for itself: a clean 1 GiB mapping costs one entry read, not 262,144.

use std::convert::Infallible;
use std::ops::RangeInclusive;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::addr::Gva;
use crate::context::PagingContext;
use crate::level::PageSize;
use crate::mappings::{BadEntry, Leaf, LeafSink, LeafWalker};
use crate::ops::{Visit, WalkError};
use crate::walk::{WalkOptions, WalkStats, walk_with};

const PAGE: u64 = 4096;

/// A set of dirty guest-physical 4 KiB pages.
pub trait DirtyPages {
    /// Whether the page containing `gpa` is dirty.
    fn is_dirty(&self, gpa: GuestAddress) -> bool;

    /// Whether any page of `[start, start + len)` is dirty. The default asks page by page;
    /// bitmaps answer a word at a time.
    fn any_dirty(&self, start: GuestAddress, len: u64) -> bool {
        (0..len.div_ceil(PAGE)).any(|i| self.is_dirty(GuestAddress(start.0 + i * PAGE)))
    }
}

/// A dirty bitmap over one contiguous guest-physical range, one bit per 4 KiB page, in
/// the layout of `KVM_GET_DIRTY_LOG` (bit `i` of word `i / 64` is page `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    base: GuestAddress,
    pages: u64,
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// A clean bitmap for `len` bytes of memory at `base`.
    pub fn new(base: GuestAddress, len: u64) -> Self {
        let pages = len.div_ceil(PAGE);
        DirtyBitmap {
            base,
            pages,
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// A bitmap from KVM's words; extra words are ignored, missing ones are clean.
    pub fn from_words(base: GuestAddress, len: u64, words: &[u64]) -> Self {
        let mut b = DirtyBitmap::new(base, len);
        for (dst, src) in b.words.iter_mut().zip(words) {
            *dst = *src;
        }
        b.clear_tail();
        b
    }

    fn clear_tail(&mut self) {
        let used = self.pages % 64;
        if used != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << used) - 1;
        }
    }

    /// First guest-physical address covered.
    pub const fn base(&self) -> GuestAddress {
        self.base
    }

    /// Pages covered.
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// The raw words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Marks the page containing `gpa` dirty; addresses outside the bitmap are ignored.
    pub fn set(&mut self, gpa: GuestAddress) {
        if let Some(i) = self.page_index(gpa) {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// ORs another bitmap of the same range into this one (e.g. the VMM's own writes).
    pub fn merge(&mut self, other: &DirtyBitmap) {
        if other.base == self.base && other.pages == self.pages {
            for (a, b) in self.words.iter_mut().zip(&other.words) {
                *a |= *b;
            }
        } else {
            for gpa in other.iter() {
                self.set(gpa);
            }
        }
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Dirty pages in address order.
    pub fn iter(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.words.iter().enumerate().flat_map(move |(wi, &w)| {
            let mut bits = w;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                Some(GuestAddress(self.base.0 + (wi as u64 * 64 + b) * PAGE))
            })
        })
    }

    fn page_index(&self, gpa: GuestAddress) -> Option<u64> {
        let off = gpa.0.checked_sub(self.base.0)?;
        let i = off / PAGE;
        (i < self.pages).then_some(i)
    }
}

impl DirtyPages for DirtyBitmap {
    fn is_dirty(&self, gpa: GuestAddress) -> bool {
        self.page_index(gpa)
            .is_some_and(|i| self.words[(i / 64) as usize] & (1 << (i % 64)) != 0)
    }

    fn any_dirty(&self, start: GuestAddress, len: u64) -> bool {
        // Clip to the bitmap, then test whole words in the middle.
        let lo = start.0.max(self.base.0);
        let hi = start
            .0
            .saturating_add(len)
            .min(self.base.0 + self.pages * PAGE);
        if lo >= hi {
            return false;
        }
        let (first, last) = ((lo - self.base.0) / PAGE, (hi - 1 - self.base.0) / PAGE);
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        let lo_mask = !0u64 << (first % 64);
        let hi_mask = !0u64 >> (63 - last % 64);
        if fw == lw {
            return self.words[fw] & lo_mask & hi_mask != 0;
        }
        self.words[fw] & lo_mask != 0
            || self.words[fw + 1..lw].iter().any(|w| *w != 0)
            || self.words[lw] & hi_mask != 0
    }
}

/// Dirty bitmaps of several memory slots.
impl<T: DirtyPages> DirtyPages for [T] {
    fn is_dirty(&self, gpa: GuestAddress) -> bool {
        self.iter().any(|b| b.is_dirty(gpa))
    }

    fn any_dirty(&self, start: GuestAddress, len: u64) -> bool {
        self.iter().any(|b| b.any_dirty(start, len))
    }
}

/// One dirty virtual page and the physical page behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyPage {
    /// Virtual address of the 4 KiB page.
    pub va: Gva,
    /// Guest-physical address of the page.
    pub pa: GuestAddress,
    /// Whether it was found inside a split huge leaf (a shadow PTE).
    pub shadow: bool,
}

/// What a GVA dirty scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyScan {
    /// Dirty 4 KiB virtual pages in address order.
    pub pages: Vec<DirtyPage>,
    /// Huge leaves mapping only clean memory: skipped unsplit.
    pub huge_skipped: u64,
    /// Huge leaves mapping some dirty memory: split and scanned per 4 KiB.
    pub huge_split: u64,
    /// The walk's counters.
    pub stats: WalkStats,
}

impl DirtyScan {
    /// The dirty pages merged into runs contiguous in both VA and PA:
    /// `(first va, first pa, pages)`.
    pub fn runs(&self) -> Vec<(Gva, GuestAddress, u64)> {
        let mut out: Vec<(Gva, GuestAddress, u64)> = Vec::new();
        for p in &self.pages {
            if let Some(last) = out.last_mut()
                && last.0.0 + last.2 * PAGE == p.va.0
                && last.1.0 + last.2 * PAGE == p.pa.0
            {
                last.2 += 1;
                continue;
            }
            out.push((p.va, p.pa, 1));
        }
        out
    }
}

/// The leaf sink of a dirty scan: splits a huge leaf only when the memory it maps holds a
/// dirty page, and keeps the dirty 4 KiB leaves.
struct Scanner<'d, D: ?Sized> {
    dirty: &'d D,
    scan: DirtyScan,
}

impl<D: DirtyPages + ?Sized> LeafSink for Scanner<'_, D> {
    type Error = Infallible;

    fn split(&mut self, visit: &Visit<'_>) -> bool {
        // A shadow 2 MiB leaf (from a split 1 GiB leaf) is judged again on its own range.
        let start = visit.entry.address(visit.level);
        if self.dirty.any_dirty(start, visit.level.entry_span()) {
            self.scan.huge_split += 1;
            true
        } else {
            self.scan.huge_skipped += 1;
            false
        }
    }

    #[inline(always)]
    fn leaf(&mut self, leaf: Leaf) -> Result<(), Infallible> {
        // Huge leaves reported whole map only clean memory.
        if leaf.size == PageSize::Size4K && self.dirty.is_dirty(leaf.pa) {
            self.scan.pages.push(DirtyPage {
                va: leaf.va,
                pa: leaf.pa,
                shadow: leaf.is_shadow(),
            });
        }
        Ok(())
    }

    fn bad(&mut self, _bad: BadEntry) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Scans the address space of `ctx` over `range` for virtual pages whose physical page is
/// in `dirty`, splitting only the huge leaves that map dirty memory. Built on the leaf walk
/// of [`for_each_leaf`](crate::for_each_leaf), with this one difference in what is split.
pub fn scan_dirty<M, D>(
    mem: &M,
    ctx: &PagingContext,
    range: RangeInclusive<Gva>,
    dirty: &D,
    options: WalkOptions,
) -> Result<DirtyScan, WalkError<Infallible>>
where
    M: GuestMemoryBackend,
    D: DirtyPages + ?Sized,
{
    let mut s = LeafWalker(Scanner {
        dirty,
        scan: DirtyScan::default(),
    });
    let stats = walk_with(mem, ctx, range, &mut s, options)?;
    s.0.scan.stats = stats;
    Ok(s.0.scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_words_and_ranges() {
        let mut b = DirtyBitmap::new(GuestAddress(0x10_0000), 200 * PAGE);
        assert_eq!(b.words().len(), 4);
        b.set(GuestAddress(0x10_0000 + 70 * PAGE + 5));
        b.set(GuestAddress(0x10_0000 + 199 * PAGE));
        b.set(GuestAddress(0x10_0000 + 200 * PAGE)); // outside: ignored
        b.set(GuestAddress(0)); // outside: ignored
        assert_eq!(b.count(), 2);
        assert!(b.is_dirty(GuestAddress(0x10_0000 + 70 * PAGE)));
        assert!(!b.is_dirty(GuestAddress(0x10_0000 + 71 * PAGE)));
        let base = 0x10_0000;
        assert!(b.any_dirty(GuestAddress(base), 71 * PAGE));
        assert!(!b.any_dirty(GuestAddress(base), 70 * PAGE));
        assert!(!b.any_dirty(GuestAddress(base + 71 * PAGE), 128 * PAGE));
        assert!(b.any_dirty(GuestAddress(base + 71 * PAGE), 129 * PAGE));
        assert!(b.any_dirty(GuestAddress(0), 1 << 40));
        assert!(!b.any_dirty(GuestAddress(0), base));
        let pages: Vec<u64> = b.iter().map(|g| g.0).collect();
        assert_eq!(pages, vec![base + 70 * PAGE, base + 199 * PAGE]);
        let mut c = DirtyBitmap::new(GuestAddress(base), 200 * PAGE);
        c.set(GuestAddress(base));
        c.merge(&b);
        assert_eq!(c.count(), 3);
        let d = DirtyBitmap::from_words(GuestAddress(0), 3 * PAGE, &[!0, !0]);
        assert_eq!(d.count(), 3, "bits past the end are dropped");
    }
}
