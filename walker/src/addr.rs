//! Guest-virtual addresses.
//!
//! A [`Gva`] is any 64-bit value a guest may use as a virtual address; whether it is
//! canonical depends on the paging mode (48 bits with 4-level paging, 57 with 5-level).
//!
//! Internally the walk works on *folded* addresses: the low `width` bits of a canonical
//! address. Folding maps the lower canonical half to `[0, 2^(width-1))` and the upper half
//! to `[2^(width-1), 2^width)`, so the two halves become one contiguous, overflow-free range
//! and the non-canonical hole simply does not exist in it.

use std::fmt;

/// A guest-virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gva(pub u64);

impl Gva {
    /// Wraps a raw 64-bit virtual address.
    pub const fn new(raw: u64) -> Self {
        Gva(raw)
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the address is canonical for a virtual-address width of `width` bits
    /// (all bits from `width - 1` up are copies of bit `width - 1`).
    #[inline]
    pub const fn is_canonical(self, width: u32) -> bool {
        let shift = 64 - width;
        (((self.0 << shift) as i64) >> shift) as u64 == self.0
    }

    /// Adds `offset`, returning `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<Gva> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Gva(v)),
            None => None,
        }
    }

    /// The address rounded down to a multiple of `align` (a power of two).
    pub const fn align_down(self, align: u64) -> Gva {
        Gva(self.0 & !(align - 1))
    }
}

impl fmt::Display for Gva {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

impl fmt::LowerHex for Gva {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<u64> for Gva {
    fn from(raw: u64) -> Self {
        Gva(raw)
    }
}

/// Folds a canonical address to the low `width` bits.
#[inline]
pub(crate) const fn fold(va: u64, width: u32) -> u64 {
    va & ((1u64 << width) - 1)
}

/// Inverse of [`fold`]: sign-extends bit `width - 1`.
#[inline]
pub(crate) const fn unfold(folded: u64, width: u32) -> Gva {
    let shift = 64 - width;
    Gva((((folded << shift) as i64) >> shift) as u64)
}

/// The folded half-open range `[start, end)` covering the canonical parts of the inclusive
/// range `[first, last]`, or `None` when that range holds no canonical address.
#[inline]
pub(crate) fn fold_range(first: Gva, last: Gva, width: u32) -> Option<(u64, u64)> {
    if first > last {
        return None;
    }
    let half = 1u64 << (width - 1);
    let low_last = half - 1; // last canonical address of the lower half
    let high_first = !(half - 1); // first canonical address of the upper half
    // Clip the start up to the next canonical address and the end down to the previous one.
    let start = if first.0 <= low_last || first.0 >= high_first {
        first.0
    } else {
        high_first
    };
    let last = if last.0 <= low_last || last.0 >= high_first {
        last.0
    } else {
        low_last
    };
    if start > last {
        return None;
    }
    Some((fold(start, width), fold(last, width) + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_48_and_57() {
        assert!(Gva(0x0000_7fff_ffff_ffff).is_canonical(48));
        assert!(!Gva(0x0000_8000_0000_0000).is_canonical(48));
        assert!(Gva(0xffff_8000_0000_0000).is_canonical(48));
        assert!(Gva(0x0000_8000_0000_0000).is_canonical(57));
        assert!(!Gva(0x0100_0000_0000_0000).is_canonical(57));
        assert!(Gva(0xff00_0000_0000_0000).is_canonical(57));
    }

    #[test]
    fn fold_round_trips_both_halves() {
        for va in [
            0,
            0x1234_5000,
            0x7fff_ffff_f000,
            0xffff_8000_0000_0000,
            u64::MAX,
        ] {
            assert_eq!(unfold(fold(va, 48), 48), Gva(va));
        }
    }

    #[test]
    fn fold_range_drops_the_hole() {
        let all = fold_range(Gva(0), Gva(u64::MAX), 48);
        assert_eq!(all, Some((0, 1 << 48)));
        // Entirely inside the hole.
        assert_eq!(
            fold_range(Gva(0x0000_8000_0000_0000), Gva(0xffff_7fff_ffff_ffff), 48),
            None
        );
        // Starting in the hole: clipped up to the upper half.
        assert_eq!(
            fold_range(Gva(0x0001_0000_0000_0000), Gva(u64::MAX), 48),
            Some((1 << 47, 1 << 48))
        );
        // Ending in the hole: clipped down to the lower half.
        assert_eq!(
            fold_range(Gva(0x1000), Gva(0x0001_0000_0000_0000), 48),
            Some((0x1000, 1 << 47))
        );
        assert_eq!(fold_range(Gva(5), Gva(4), 48), None);
    }
}
