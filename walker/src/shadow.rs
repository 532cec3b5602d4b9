//! Host-side shadow splits of huge leaves.
//!
//! A 2 MiB PMD has no PTE table; a 1 GiB PUD has no PMD table. When a walk must visit the
//! level below a huge leaf, the leaf is split first, as `split_huge_pmd()` does in Linux,
//! except that the split is made here, in a table the host owns, and guest memory is never
//! written. The shadow entries keep the leaf's flags; a 2 MiB → 4 KiB split also moves PAT
//! from bit 12 to bit 7 and clears PS, because bit 7 of a PTE *is* PAT.
//!
//! The only way to obtain a [`HugeLeaf`] is to classify a present, well-formed huge entry,
//! and the only way to walk a level below one is through the [`ShadowTable`] it splits into:
//! walking the PTEs of an unsplit huge PMD cannot be written.

use crate::entry::{ADDR_MASK_1G, ADDR_MASK_2M, ADDR_MASK_4K, Entry, EntryFlags};
use crate::level::Level;

/// A present, well-formed 2 MiB PMD or 1 GiB PUD leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugeLeaf {
    entry: Entry,
    level: Level,
}

impl HugeLeaf {
    /// Classifies `entry` at `level`: `Some` only for a huge leaf (PS set in a PMD or PUD).
    /// The caller must already have checked that the entry is present and has no reserved
    /// bits, as the walk does.
    pub const fn new(entry: Entry, level: Level) -> Option<HugeLeaf> {
        match level {
            Level::Pmd | Level::Pud if entry.is_present() && entry.is_leaf(level) => {
                Some(HugeLeaf { entry, level })
            }
            _ => None,
        }
    }

    /// The raw leaf.
    pub const fn entry(self) -> Entry {
        self.entry
    }

    /// PMD (2 MiB) or PUD (1 GiB).
    pub const fn level(self) -> Level {
        self.level
    }
}

/// 512 synthesized entries of the level below a split huge leaf, mapping the same frames
/// with the same attributes. They live only in host memory.
#[derive(Clone, PartialEq, Eq)]
pub struct ShadowTable {
    entries: [u64; Level::ENTRIES],
    level: Level,
}

impl std::fmt::Debug for ShadowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowTable")
            .field("level", &self.level)
            .field("first", &Entry(self.entries[0]))
            .field("last", &Entry(self.entries[Level::ENTRIES - 1]))
            .finish()
    }
}

impl ShadowTable {
    /// Splits a huge leaf: a 2 MiB PMD into 512 4 KiB PTEs, a 1 GiB PUD into 512 2 MiB PMDs.
    pub fn split(huge: HugeLeaf) -> ShadowTable {
        let raw = huge.entry.0;
        let mut entries = [0u64; Level::ENTRIES];
        match huge.level {
            Level::Pud => {
                // Children are 2 MiB leaves: PS stays set and PAT stays at bit 12.
                let frame = raw & ADDR_MASK_1G;
                let flags = raw & !ADDR_MASK_1G;
                for (i, e) in entries.iter_mut().enumerate() {
                    *e = flags | (frame + ((i as u64) << 21));
                }
                ShadowTable {
                    entries,
                    level: Level::Pmd,
                }
            }
            _ => {
                // Children are PTEs: bit 7 becomes PAT, so PS is cleared and the huge PAT
                // (bit 12, inside a PTE's frame bits) moves to bit 7.
                let frame = raw & ADDR_MASK_2M;
                let pat = if raw & EntryFlags::PAT_HUGE.bits() != 0 {
                    EntryFlags::HUGE_OR_PAT.bits()
                } else {
                    0
                };
                let flags = (raw & !ADDR_MASK_4K & !EntryFlags::HUGE_OR_PAT.bits()) | pat;
                for (i, e) in entries.iter_mut().enumerate() {
                    *e = flags | (frame + ((i as u64) << 12));
                }
                ShadowTable {
                    entries,
                    level: Level::Pte,
                }
            }
        }
    }

    /// The level of the shadow entries (one below the split leaf).
    pub const fn level(&self) -> Level {
        self.level
    }

    /// Entry `index` (0..512).
    pub fn entry(&self, index: usize) -> Option<Entry> {
        self.entries.get(index).copied().map(Entry)
    }

    /// All 512 entries.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.entries.iter().copied().map(Entry)
    }

    pub(crate) fn raw(&self, index: usize) -> u64 {
        self.entries[index & (Level::ENTRIES - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryFlags as F;

    #[test]
    fn pmd_split_moves_pat_and_clears_ps() {
        let flags = F::PRESENT | F::WRITABLE | F::USER | F::ACCESSED | F::DIRTY | F::GLOBAL;
        let raw = 0x4060_0000
            | flags.bits()
            | F::HUGE_OR_PAT.bits()
            | F::PAT_HUGE.bits()
            | F::PCD.bits()
            | F::NO_EXECUTE.bits()
            | (5 << 59);
        let huge = HugeLeaf::new(Entry(raw), Level::Pmd).unwrap();
        let t = ShadowTable::split(huge);
        assert_eq!(t.level(), Level::Pte);
        for (i, e) in t.entries().enumerate() {
            assert_eq!(e.address(Level::Pte).0, 0x4060_0000 + (i as u64) * 4096);
            let f = e.flags();
            assert!(f.contains(flags | F::PCD | F::NO_EXECUTE));
            assert!(f.contains(F::HUGE_OR_PAT), "PAT moved to bit 7");
            assert_eq!(
                e.memory_type(Level::Pte),
                Entry(raw).memory_type(Level::Pmd)
            );
            assert_eq!(e.pkey_bits(), 5);
        }
        // Without PAT, bit 7 (PS) must be cleared.
        let t = ShadowTable::split(HugeLeaf::new(Entry(0x20_0000 | 0x83), Level::Pmd).unwrap());
        assert!(t.entries().all(|e| e.raw() & 0x80 == 0));
        assert_eq!(t.entry(1), Some(Entry(0x20_1000 | 0x3)));
        assert_eq!(t.entry(512), None);
    }

    #[test]
    fn pud_split_keeps_ps_and_pat() {
        let raw = 0x1_4000_0000 | 0x1000 | 0x80 | 0x7;
        let t = ShadowTable::split(HugeLeaf::new(Entry(raw), Level::Pud).unwrap());
        assert_eq!(t.level(), Level::Pmd);
        for (i, e) in t.entries().enumerate() {
            assert!(e.is_leaf(Level::Pmd));
            assert_eq!(e.address(Level::Pmd).0, 0x1_4000_0000 + ((i as u64) << 21));
            assert_eq!(e.memory_type(Level::Pmd).0, 0b100);
        }
    }

    #[test]
    fn only_huge_leaves_split() {
        assert!(
            HugeLeaf::new(Entry(0x1000 | 0x3), Level::Pmd).is_none(),
            "table"
        );
        assert!(
            HugeLeaf::new(Entry(0x1000 | 0x83), Level::Pte).is_none(),
            "PAT PTE"
        );
        assert!(
            HugeLeaf::new(Entry(0x80), Level::Pmd).is_none(),
            "not present"
        );
        assert!(HugeLeaf::new(Entry(0x83), Level::Pml4).is_none());
    }
}
