//! Guest RAM: size parsing (`--memory 512M`) and the `GuestMemoryMmap` layout.
//!
//! RAM starts at GPA 0. When it is larger than 3 GiB, the part beyond 3 GiB is placed
//! at 4 GiB, so [3 GiB, 4 GiB) stays a hole for 32-bit MMIO (as on PCs).

use std::fmt;
use std::str::FromStr;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
use vm_memory::{GuestAddress, GuestMemoryMmap};

// mmap/madvise of the host mapping: `unsafe` is allowed there and nowhere else in here.
#[allow(unsafe_code)]
pub mod host;

use host::{AlignedGap, advise_huge_pages};

/// Guest RAM of a live VM. Each region carries vm-memory's [`AtomicBitmap`]: every write
/// the VMM makes through vm-memory's `Bytes` API marks its 4 KiB page, which is how dirty
/// scans see the VMM's own writes, that KVM's dirty log never reports (it only tracks
/// writes by the guest); see [`crate::dirty`]. Reads (the walker's loads) mark nothing.
pub type GuestRam = GuestMemoryMmap<AtomicBitmap>;

use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Errors from parsing a memory size or creating guest memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The size string is not a number with an optional K/M/G/T suffix.
    #[error(
        "invalid memory size {0:?}: expected a number with an optional K, M, G or T suffix (e.g. 512M)"
    )]
    Syntax(String),
    /// The size is zero.
    #[error("memory size must not be zero")]
    Zero,
    /// The size overflows 64 bits.
    #[error("memory size {0:?} is too large")]
    TooLarge(String),
    /// The size is not a multiple of 4 KiB.
    #[error("memory size {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// Mapping the guest RAM failed.
    #[error("cannot allocate {size} of guest memory: {reason}")]
    Allocate {
        /// The requested size.
        size: MemorySize,
        /// The reason from vm-memory.
        reason: String,
    },
}

/// A guest RAM size in bytes: non-zero and a multiple of 4 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemorySize(u64);

impl MemorySize {
    /// A size in bytes, checked.
    pub fn from_bytes(bytes: u64) -> Result<Self, MemoryError> {
        if bytes == 0 {
            return Err(MemoryError::Zero);
        }
        if bytes % 4096 != 0 {
            return Err(MemoryError::Unaligned(bytes));
        }
        Ok(Self(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Default for MemorySize {
    /// 512 MiB.
    fn default() -> Self {
        Self(512 << 20)
    }
}

impl FromStr for MemorySize {
    type Err = MemoryError;

    /// Parses `1024`, `64K`, `512M`, `2G`, `1T` (binary units; `KiB`/`MB` style
    /// suffixes and lower case are accepted too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(digits_end);
        if number.is_empty() {
            return Err(MemoryError::Syntax(s.to_owned()));
        }
        let shift = match suffix.to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(MemoryError::Syntax(s.to_owned())),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| MemoryError::TooLarge(s.to_owned()))?;
        let bytes = value
            .checked_mul(1u64 << shift)
            .ok_or_else(|| MemoryError::TooLarge(s.to_owned()))?;
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b % (1 << 30) == 0 {
            write!(f, "{} GiB", b >> 30)
        } else if b % (1 << 20) == 0 {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{} KiB", b >> 10)
        }
    }
}

/// The guest-physical ranges that hold `size` bytes of RAM, split around the MMIO
/// hole.
pub fn ram_ranges(size: MemorySize) -> Vec<(GuestAddress, u64)> {
    let below_hole = MMIO_HOLE_START.0;
    if size.0 <= below_hole {
        vec![(GuestAddress(0), size.0)]
    } else {
        vec![
            (GuestAddress(0), below_hole),
            (MMIO_HOLE_END, size.0 - below_hole),
        ]
    }
}

/// Maps `size` bytes of anonymous guest RAM, each region at a 2 MiB-aligned host address
/// when the kernel lets us (so KVM can back guest 2 MiB frames with host huge pages) and
/// with transparent huge pages asked for ([`host`]).
pub fn create_guest_memory(size: MemorySize) -> Result<GuestRam, MemoryError> {
    let allocate = |reason: String| MemoryError::Allocate { size, reason };
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let len = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size.to_string()))?;
        // The dirty bitmap first: its own allocation (malloc's mmap for big regions) must
        // not take the prepared gap.
        let builder = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE);
        let gap = AlignedGap::prepare(len);
        let mapping = builder.build().map_err(|e| allocate(e.to_string()))?;
        drop(gap);
        // Advisory: without THP the guest simply runs on 4 KiB host pages.
        let _ = advise_huge_pages(mapping.as_ptr(), len);
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| allocate(format!("the region at {start:?} wraps around")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| allocate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(
            "512M".parse::<MemorySize>().map(MemorySize::bytes),
            Ok(512 << 20)
        );
        assert_eq!(
            "2g".parse::<MemorySize>().map(MemorySize::bytes),
            Ok(2 << 30)
        );
        assert_eq!(
            "64KiB".parse::<MemorySize>().map(MemorySize::bytes),
            Ok(64 << 10)
        );
        assert_eq!(
            "8192".parse::<MemorySize>().map(MemorySize::bytes),
            Ok(8192)
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            "12Q".parse::<MemorySize>(),
            Err(MemoryError::Syntax(_))
        ));
        assert!(matches!(
            "M".parse::<MemorySize>(),
            Err(MemoryError::Syntax(_))
        ));
        assert!(matches!(
            "".parse::<MemorySize>(),
            Err(MemoryError::Syntax(_))
        ));
        assert!(matches!(
            "-1M".parse::<MemorySize>(),
            Err(MemoryError::Syntax(_))
        ));
        assert_eq!("0".parse::<MemorySize>(), Err(MemoryError::Zero));
        assert_eq!(
            "100".parse::<MemorySize>(),
            Err(MemoryError::Unaligned(100))
        );
        assert!(matches!(
            "99999999999999999999T".parse::<MemorySize>(),
            Err(MemoryError::TooLarge(_))
        ));
        assert!(matches!(
            "17000000T".parse::<MemorySize>(),
            Err(MemoryError::TooLarge(_))
        ));
    }

    #[test]
    fn splits_around_the_mmio_hole() {
        let small = MemorySize::from_bytes(1 << 30).unwrap_or_default();
        assert_eq!(ram_ranges(small), vec![(GuestAddress(0), 1 << 30)]);
        let exact = MemorySize::from_bytes(3 << 30).unwrap_or_default();
        assert_eq!(ram_ranges(exact), vec![(GuestAddress(0), 3 << 30)]);
        let big = MemorySize::from_bytes(5 << 30).unwrap_or_default();
        assert_eq!(
            ram_ranges(big),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(MemorySize::default().to_string(), "512 MiB");
        assert_eq!(MemorySize(2 << 30).to_string(), "2 GiB");
    }
}
