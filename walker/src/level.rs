//! Paging levels and page sizes.
//!
//! Both are plain enums decided at run time: a walk learns the level of each entry as it
//! descends and the size of a leaf when it finds one.

use std::fmt;

/// A level of the x86-64 paging hierarchy, named as Linux names them.
///
/// The discriminant is the level's depth counted from the leaves (PTE = 1), which is also the
/// `depth` convention of the hole callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Page table: entries map 4 KiB pages.
    Pte = 1,
    /// Page directory: entries map 2 MiB pages or point to a page table.
    Pmd = 2,
    /// Page-directory-pointer table: entries map 1 GiB pages or point to a page directory.
    Pud = 3,
    /// PML4: entries point to a page-directory-pointer table.
    Pml4 = 4,
    /// PML5 (5-level paging only): entries point to a PML4.
    Pml5 = 5,
}

/// All levels, leaf first.
pub const LEVELS: [Level; 5] = [Level::Pte, Level::Pmd, Level::Pud, Level::Pml4, Level::Pml5];

impl Level {
    /// Number of entries in one table of any level.
    pub const ENTRIES: usize = 512;

    /// Bit position of the lowest virtual-address bit that indexes this level.
    #[inline]
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// Bytes of virtual address space one entry of this level covers.
    #[inline]
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }

    /// The level an entry of this level points to, if any.
    pub const fn below(self) -> Option<Level> {
        match self {
            Level::Pte => None,
            Level::Pmd => Some(Level::Pte),
            Level::Pud => Some(Level::Pmd),
            Level::Pml4 => Some(Level::Pud),
            Level::Pml5 => Some(Level::Pml4),
        }
    }

    /// The size of a leaf at this level, or `None` where the architecture allows no leaf.
    #[inline]
    pub const fn leaf_size(self) -> Option<PageSize> {
        match self {
            Level::Pte => Some(PageSize::Size4K),
            Level::Pmd => Some(PageSize::Size2M),
            Level::Pud => Some(PageSize::Size1G),
            Level::Pml4 | Level::Pml5 => None,
        }
    }

    /// Index into a table of this level for a virtual address.
    #[inline]
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & 0x1ff) as usize
    }

    /// Lower-case Linux name (`pte`, `pmd`, `pud`, `pml4`, `pml5`).
    pub const fn name(self) -> &'static str {
        match self {
            Level::Pte => "pte",
            Level::Pmd => "pmd",
            Level::Pud => "pud",
            Level::Pml4 => "pml4",
            Level::Pml5 => "pml5",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Size of a page mapped by a leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PMD with PS set.
    Size2M,
    /// 1 GiB, mapped by a PUD with PS set.
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// The level whose leaves have this size.
    pub const fn level(self) -> Level {
        match self {
            PageSize::Size4K => Level::Pte,
            PageSize::Size2M => Level::Pmd,
            PageSize::Size1G => Level::Pud,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_indices() {
        assert_eq!(Level::Pte.entry_span(), 4096);
        assert_eq!(Level::Pmd.entry_span(), 2 << 20);
        assert_eq!(Level::Pud.entry_span(), 1 << 30);
        assert_eq!(Level::Pml4.entry_span(), 1 << 39);
        assert_eq!(Level::Pml5.entry_span(), 1 << 48);
        let va = (3u64 << 48) | (5 << 39) | (7 << 30) | (11 << 21) | (13 << 12) | 0xabc;
        assert_eq!(Level::Pml5.index(va), 3);
        assert_eq!(Level::Pml4.index(va), 5);
        assert_eq!(Level::Pud.index(va), 7);
        assert_eq!(Level::Pmd.index(va), 11);
        assert_eq!(Level::Pte.index(va), 13);
    }

    #[test]
    fn leaf_sizes_match_levels() {
        for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            assert_eq!(size.level().leaf_size(), Some(size));
            assert_eq!(size.level().entry_span(), size.bytes());
        }
        assert_eq!(Level::Pml4.leaf_size(), None);
        assert_eq!(Level::Pte.below(), None);
        assert_eq!(Level::Pml5.below(), Some(Level::Pml4));
    }
}
