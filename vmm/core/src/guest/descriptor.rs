//! The descriptor the built-in guest writes into its memory: every leaf mapping it
//! made, per address space. A parser that trusts nothing: the guest may be hostile.
//!
//! # Format (little-endian, 8-byte aligned, at the GPA the guest sends with READY)
//!
//! ```text
//! header (40 bytes)
//!   0  magic        u64  b"GWDESC01" read as a little-endian u64
//!   8  version      u32  1
//!  12  run_count    u32
//!  16  space_count  u32  1 or 2
//!  20  features     u32  bit0 1 GiB leaves used, bit1 PCID used, bit2 LA57, bit3 NX used
//!  24  cr3[0]       u64  CR3 of space 0 as loaded (PCID in bits 11:0)
//!  32  cr3[1]       u64  CR3 of space 1, 0 when there is one space
//! runs (run_count x 40 bytes, from offset 40)
//!   0  space  u32  0 or 1
//!   4  level  u32  1 = 4 KiB PTE, 2 = 2 MiB PMD, 3 = 1 GiB PUD
//!   8  va     u64  canonical, aligned to the leaf size
//!  16  pa     u64  aligned to the leaf size
//!  24  count  u64  consecutive leaves, va and pa both increasing
//!  32  flags  u64  the leaf entry's bits as written (P, R/W, U/S, PWT, PCD, PS, G,
//!                  PAT, NX), plus: bit 56 written before READY (expect Dirty),
//!                  bit 57 read before READY (expect Accessed), bit 58 effective W,
//!                  bit 59 effective U, bit 60 effective NX (over all levels)
//! ```
//!
//! Every present leaf reachable from each CR3 is described, the guest's own identity
//! map included; in hostile mode the adversarial structures are not.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use walker::Gva;

/// `b"GWDESC01"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GWDESC01");
/// The version this parser understands.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: u64 = 40;
/// Size of one run.
pub const RUN_SIZE: u64 = 40;
/// The most runs accepted (the built-in guest writes fewer than 64).
pub const MAX_RUNS: u32 = 4096;

/// Flag bit 56: the guest wrote to every leaf of the run before READY.
pub const FLAG_WROTE: u64 = 1 << 56;
/// Flag bit 57: the guest read every leaf of the run before READY.
pub const FLAG_READ: u64 = 1 << 57;
/// Flag bit 58: effective writable.
pub const FLAG_EFFECTIVE_W: u64 = 1 << 58;
/// Flag bit 59: effective user.
pub const FLAG_EFFECTIVE_U: u64 = 1 << 59;
/// Flag bit 60: effective no-execute.
pub const FLAG_EFFECTIVE_NX: u64 = 1 << 60;
/// The descriptor-only bits (56..=60); the rest are the leaf's hardware bits.
pub const DESCRIPTOR_FLAG_MASK: u64 = 0x1f << 56;

/// Errors from reading a descriptor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// The descriptor address is not 8-byte aligned.
    #[error("descriptor at {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
    /// A field lies outside guest memory (or its address overflows).
    #[error("descriptor field at {0:#x} is outside guest memory")]
    OutOfMemory(u64),
    /// Wrong magic.
    #[error("descriptor magic is {0:#018x}, expected b\"GWDESC01\"")]
    BadMagic(u64),
    /// Unknown version.
    #[error("descriptor version {0} is not supported (expected 1)")]
    BadVersion(u32),
    /// Too many runs.
    #[error("descriptor claims {0} runs, more than the limit of {MAX_RUNS}")]
    TooManyRuns(u32),
    /// Space count not 1 or 2.
    #[error("descriptor space count {0} is not 1 or 2")]
    BadSpaceCount(u32),
    /// Unknown feature bits.
    #[error("descriptor features {0:#x} has unknown bits")]
    BadFeatures(u32),
    /// `cr3[1]` set with one space.
    #[error("descriptor has one space but a second CR3 {0:#x}")]
    UnexpectedSecondCr3(u64),
    /// A run names a space that does not exist.
    #[error("run {run}: space {space} does not exist")]
    BadSpace {
        /// Run index.
        run: u32,
        /// The space.
        space: u32,
    },
    /// A run has an unknown level.
    #[error("run {run}: level {level} is not 1, 2 or 3")]
    BadLevel {
        /// Run index.
        run: u32,
        /// The level.
        level: u32,
    },
    /// A run has no leaves.
    #[error("run {run}: count is zero")]
    ZeroCount {
        /// Run index.
        run: u32,
    },
    /// A run's VA or PA is not aligned to its leaf size.
    #[error("run {run}: va {va:#x} or pa {pa:#x} is not aligned to the leaf size")]
    Misaligned {
        /// Run index.
        run: u32,
        /// VA.
        va: u64,
        /// PA.
        pa: u64,
    },
    /// A run's VA range is not canonical (or wraps).
    #[error("run {run}: va range from {va:#x} ({count} leaves) is not canonical")]
    NonCanonical {
        /// Run index.
        run: u32,
        /// First VA.
        va: u64,
        /// Leaves.
        count: u64,
    },
    /// A run's PA range goes beyond 2^52.
    #[error("run {run}: pa range from {pa:#x} ({count} leaves) exceeds 52 bits")]
    PhysicalOverflow {
        /// Run index.
        run: u32,
        /// First PA.
        pa: u64,
        /// Leaves.
        count: u64,
    },
}

/// The descriptor's feature bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(pub u32);

impl Features {
    /// Bit 0: 1 GiB leaves used.
    pub const GIB_LEAVES: u32 = 1 << 0;
    /// Bit 1: PCID used.
    pub const PCID: u32 = 1 << 1;
    /// Bit 2: 5-level paging.
    pub const LA57: u32 = 1 << 2;
    /// Bit 3: NX used.
    pub const NX: u32 = 1 << 3;
    const KNOWN: u32 = Self::GIB_LEAVES | Self::PCID | Self::LA57 | Self::NX;

    /// Whether every bit of `bits` is set.
    pub fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

/// A leaf size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunLevel {
    /// 4 KiB PTE (level 1).
    Pte4K,
    /// 2 MiB PMD leaf (level 2).
    Pmd2M,
    /// 1 GiB PUD leaf (level 3).
    Pud1G,
}

impl RunLevel {
    fn from_raw(level: u32) -> Option<Self> {
        match level {
            1 => Some(Self::Pte4K),
            2 => Some(Self::Pmd2M),
            3 => Some(Self::Pud1G),
            _ => None,
        }
    }

    /// The leaf size in bytes.
    pub fn page_size(self) -> u64 {
        match self {
            Self::Pte4K => 1 << 12,
            Self::Pmd2M => 1 << 21,
            Self::Pud1G => 1 << 30,
        }
    }
}

/// One run of consecutive leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Address space (0 or 1).
    pub space: u8,
    /// Leaf size.
    pub level: RunLevel,
    /// First guest-virtual address (canonical).
    pub va: Gva,
    /// First guest-physical address.
    pub pa: GuestAddress,
    /// Number of leaves.
    pub count: u64,
    /// Leaf bits plus descriptor bits 56..=60.
    pub flags: u64,
}

impl Run {
    /// The leaf entry's hardware bits as the guest wrote them.
    pub fn leaf_bits(&self) -> u64 {
        self.flags & !DESCRIPTOR_FLAG_MASK
    }

    /// Written before READY (expect Dirty).
    pub fn wrote(&self) -> bool {
        self.flags & FLAG_WROTE != 0
    }

    /// Read before READY (expect Accessed).
    pub fn read(&self) -> bool {
        self.flags & FLAG_READ != 0
    }

    /// Effective writable over all levels.
    pub fn effective_writable(&self) -> bool {
        self.flags & FLAG_EFFECTIVE_W != 0
    }

    /// Effective user over all levels.
    pub fn effective_user(&self) -> bool {
        self.flags & FLAG_EFFECTIVE_U != 0
    }

    /// Effective no-execute over all levels.
    pub fn effective_nx(&self) -> bool {
        self.flags & FLAG_EFFECTIVE_NX != 0
    }

    /// Bytes covered (cannot overflow: checked when parsed).
    pub fn len(&self) -> u64 {
        self.count.saturating_mul(self.level.page_size())
    }

    /// Never true for a parsed run (count is at least 1).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A parsed, validated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Number of address spaces (1 or 2).
    pub space_count: u32,
    /// Feature bits.
    pub features: Features,
    /// CR3 of each space as loaded (`cr3[1]` = 0 with one space).
    pub cr3: [u64; 2],
    /// The runs, in the guest's order.
    pub runs: Vec<Run>,
}

struct Reader<'a, M> {
    memory: &'a M,
    base: u64,
}

impl<M: GuestMemoryBackend> Reader<'_, M> {
    fn address(&self, offset: u64) -> Result<GuestAddress, DescriptorError> {
        self.base
            .checked_add(offset)
            .map(GuestAddress)
            .ok_or(DescriptorError::OutOfMemory(self.base))
    }

    fn u64(&self, offset: u64) -> Result<u64, DescriptorError> {
        let address = self.address(offset)?;
        self.memory
            .read_obj::<u64>(address)
            .map(u64::from_le)
            .map_err(|_| DescriptorError::OutOfMemory(address.0))
    }

    fn u32(&self, offset: u64) -> Result<u32, DescriptorError> {
        let address = self.address(offset)?;
        self.memory
            .read_obj::<u32>(address)
            .map(u32::from_le)
            .map_err(|_| DescriptorError::OutOfMemory(address.0))
    }
}

impl Descriptor {
    /// Reads and validates the descriptor at `gpa`.
    pub fn read<M: GuestMemoryBackend>(
        memory: &M,
        gpa: GuestAddress,
    ) -> Result<Self, DescriptorError> {
        if gpa.0 % 8 != 0 {
            return Err(DescriptorError::Unaligned(gpa.0));
        }
        let reader = Reader {
            memory,
            base: gpa.0,
        };
        let magic = reader.u64(0)?;
        if magic != MAGIC {
            return Err(DescriptorError::BadMagic(magic));
        }
        let version = reader.u32(8)?;
        if version != VERSION {
            return Err(DescriptorError::BadVersion(version));
        }
        let run_count = reader.u32(12)?;
        if run_count > MAX_RUNS {
            return Err(DescriptorError::TooManyRuns(run_count));
        }
        let space_count = reader.u32(16)?;
        if !(1..=2).contains(&space_count) {
            return Err(DescriptorError::BadSpaceCount(space_count));
        }
        let features = reader.u32(20)?;
        if features & !Features::KNOWN != 0 {
            return Err(DescriptorError::BadFeatures(features));
        }
        let features = Features(features);
        let cr3 = [reader.u64(24)?, reader.u64(32)?];
        if space_count == 1 && cr3[1] != 0 {
            return Err(DescriptorError::UnexpectedSecondCr3(cr3[1]));
        }
        let va_bits = if features.contains(Features::LA57) {
            57
        } else {
            48
        };

        let mut runs = Vec::with_capacity(run_count as usize);
        for run in 0..run_count {
            // Cannot overflow: run < 4096.
            let offset = HEADER_SIZE + u64::from(run) * RUN_SIZE;
            let space = reader.u32(offset)?;
            if space >= space_count {
                return Err(DescriptorError::BadSpace { run, space });
            }
            let raw_level = reader.u32(offset + 4)?;
            let level = RunLevel::from_raw(raw_level).ok_or(DescriptorError::BadLevel {
                run,
                level: raw_level,
            })?;
            let va = reader.u64(offset + 8)?;
            let pa = reader.u64(offset + 16)?;
            let count = reader.u64(offset + 24)?;
            let flags = reader.u64(offset + 32)?;
            if count == 0 {
                return Err(DescriptorError::ZeroCount { run });
            }
            let size = level.page_size();
            if va % size != 0 || pa % size != 0 {
                return Err(DescriptorError::Misaligned { run, va, pa });
            }
            let last_offset = (count - 1)
                .checked_mul(size)
                .and_then(|bytes| bytes.checked_add(size - 1));
            let va_last = last_offset.and_then(|o| va.checked_add(o));
            let canonical = matches!(va_last, Some(last)
                if Gva(va).is_canonical(va_bits) && Gva(last).is_canonical(va_bits)
                    && (va >> 63) == (last >> 63));
            if !canonical {
                return Err(DescriptorError::NonCanonical { run, va, count });
            }
            let pa_last = last_offset.and_then(|o| pa.checked_add(o));
            if !matches!(pa_last, Some(last) if last < 1 << 52) {
                return Err(DescriptorError::PhysicalOverflow { run, pa, count });
            }
            runs.push(Run {
                space: space as u8,
                level,
                va: Gva(va),
                pa: GuestAddress(pa),
                count,
                flags,
            });
        }
        Ok(Self {
            space_count,
            features,
            cr3,
            runs,
        })
    }

    /// The runs of one address space.
    pub fn runs_of_space(&self, space: u8) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |run| run.space == space)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const AT: GuestAddress = GuestAddress(0x1000);

    fn memory() -> GuestMemoryMmap {
        match GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]) {
            Ok(memory) => memory,
            Err(e) => panic!("cannot map test memory: {e}"),
        }
    }

    struct Raw {
        header: [u64; 5],
        runs: Vec<[u64; 5]>,
    }

    fn run(space: u32, level: u32, va: u64, pa: u64, count: u64, flags: u64) -> [u64; 5] {
        [
            u64::from(space) | (u64::from(level) << 32),
            va,
            pa,
            count,
            flags,
        ]
    }

    fn valid() -> Raw {
        Raw {
            header: [
                MAGIC,
                1 | (2 << 32),   // version 1, run_count 2
                2 | (0xa << 32), // 2 spaces, PCID | NX
                0x20_1001,
                0x20_2002,
            ],
            runs: vec![
                run(
                    0,
                    1,
                    0x10_0000,
                    0x10_0000,
                    6,
                    0x3 | FLAG_READ | FLAG_EFFECTIVE_W,
                ),
                run(
                    1,
                    2,
                    0xffff_8880_0000_0000,
                    0,
                    8,
                    0x83 | (1 << 63) | FLAG_EFFECTIVE_NX,
                ),
            ],
        }
    }

    fn write(memory: &GuestMemoryMmap, at: GuestAddress, raw: &Raw) {
        let mut bytes = Vec::new();
        for word in raw.header.iter().chain(raw.runs.iter().flatten()) {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        if let Err(e) = memory.write_slice(&bytes, at) {
            panic!("test descriptor does not fit: {e}");
        }
    }

    fn parse(raw: &Raw) -> Result<Descriptor, DescriptorError> {
        let memory = memory();
        write(&memory, AT, raw);
        Descriptor::read(&memory, AT)
    }

    #[test]
    fn parses_a_valid_descriptor() {
        let d = parse(&valid());
        let Ok(d) = d else {
            panic!("valid descriptor rejected: {d:?}");
        };
        assert_eq!(d.space_count, 2);
        assert!(d.features.contains(Features::PCID | Features::NX));
        assert_eq!(d.cr3, [0x20_1001, 0x20_2002]);
        assert_eq!(d.runs.len(), 2);
        let first = d.runs[0];
        assert_eq!(first.level, RunLevel::Pte4K);
        assert_eq!(first.len(), 6 * 4096);
        assert!(first.read() && !first.wrote() && first.effective_writable());
        assert_eq!(first.leaf_bits(), 0x3);
        let second = d.runs[1];
        assert_eq!(second.level, RunLevel::Pmd2M);
        assert!(second.effective_nx() && !second.effective_user());
        assert_eq!(second.leaf_bits(), 0x83 | (1 << 63));
        assert_eq!(d.runs_of_space(1).count(), 1);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut raw = valid();
        raw.header[0] = 0;
        assert_eq!(parse(&raw), Err(DescriptorError::BadMagic(0)));
        let mut raw = valid();
        raw.header[1] = 2 | (2 << 32);
        assert_eq!(parse(&raw), Err(DescriptorError::BadVersion(2)));
        let mut raw = valid();
        raw.header[1] = 1 | (u64::from(u32::MAX) << 32);
        assert_eq!(parse(&raw), Err(DescriptorError::TooManyRuns(u32::MAX)));
        let mut raw = valid();
        raw.header[2] = 3;
        assert_eq!(parse(&raw), Err(DescriptorError::BadSpaceCount(3)));
        let mut raw = valid();
        raw.header[2] = 1 | (0x100 << 32);
        assert_eq!(parse(&raw), Err(DescriptorError::BadFeatures(0x100)));
        let mut raw = valid();
        raw.header[2] = 1;
        assert_eq!(
            parse(&raw),
            Err(DescriptorError::UnexpectedSecondCr3(0x20_2002))
        );
    }

    #[test]
    fn rejects_bad_runs() {
        type Case = ([u64; 5], fn(&DescriptorError) -> bool);
        let cases: Vec<Case> = vec![
            (run(2, 1, 0, 0, 1, 0), |e| {
                matches!(e, DescriptorError::BadSpace { space: 2, .. })
            }),
            (run(0, 4, 0, 0, 1, 0), |e| {
                matches!(e, DescriptorError::BadLevel { level: 4, .. })
            }),
            (run(0, 0, 0, 0, 1, 0), |e| {
                matches!(e, DescriptorError::BadLevel { level: 0, .. })
            }),
            (run(0, 1, 0, 0, 0, 0), |e| {
                matches!(e, DescriptorError::ZeroCount { .. })
            }),
            (run(0, 2, 0x1000, 0, 1, 0), |e| {
                matches!(e, DescriptorError::Misaligned { .. })
            }),
            (run(0, 1, 0x0000_8000_0000_0000, 0, 1, 0), |e| {
                matches!(e, DescriptorError::NonCanonical { .. })
            }),
            // Runs off the end of the lower half.
            (run(0, 1, 0x0000_7fff_ffff_f000, 0, 2, 0), |e| {
                matches!(e, DescriptorError::NonCanonical { .. })
            }),
            // Wraps around 2^64.
            (run(0, 3, 0xffff_ffff_c000_0000, 0, u64::MAX, 0), |e| {
                matches!(e, DescriptorError::NonCanonical { .. })
            }),
            (run(0, 1, 0, 0x000f_ffff_ffff_f000, 2, 0), |e| {
                matches!(e, DescriptorError::PhysicalOverflow { .. })
            }),
        ];
        for (bad, expected) in cases {
            let mut raw = valid();
            raw.runs[1] = bad;
            let result = parse(&raw);
            assert!(
                matches!(&result, Err(e) if expected(e)),
                "run {bad:x?} gave {result:?}"
            );
        }
    }

    #[test]
    fn truncated_or_misplaced_descriptors_are_errors() {
        let memory = memory();
        // Header fits, runs run off the end of memory (0x4000).
        let at = GuestAddress(0x4000 - 40);
        let mut raw = valid();
        raw.runs.clear();
        write(&memory, at, &raw);
        assert!(matches!(
            Descriptor::read(&memory, at),
            Err(DescriptorError::OutOfMemory(_))
        ));
        assert!(matches!(
            Descriptor::read(&memory, GuestAddress(0x10_0000)),
            Err(DescriptorError::OutOfMemory(_))
        ));
        assert!(matches!(
            Descriptor::read(&memory, GuestAddress(u64::MAX - 7)),
            Err(DescriptorError::OutOfMemory(_))
        ));
        assert_eq!(
            Descriptor::read(&memory, GuestAddress(0x1004)),
            Err(DescriptorError::Unaligned(0x1004))
        );
    }

    #[test]
    fn garbage_never_panics() {
        let memory = memory();
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut words = [0u64; 20];
            for word in &mut words {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *word = seed;
            }
            words[0] = MAGIC;
            words[1] = 1 | ((seed & 0x7) << 32);
            words[2] = (1 + ((seed >> 60) & 1)) | (((seed >> 8) & 0xf) << 32);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            if memory.write_slice(&bytes, AT).is_ok() {
                let _ = Descriptor::read(&memory, AT);
            }
        }
    }
}
