//! The built-in test guest: its image and how it reports what it mapped.
//!
//! Source: `guest-images/builtin/guest.S`. Entry (set by [`crate::builder`]): 64-bit
//! mode on the VMM's boot tables, in **5-level paging** (CR4.LA57, CR3 =
//! [`layout::BOOT_PML5_START`]) whenever the vCPU's CPUID offers LA57 and 4-level paging
//! otherwise (long mode cannot switch LA57, so the VMM decides), RIP =
//! [`layout::GUEST_IMAGE_START`], RDI = mode
//! ([`GuestMode::register_value`]), RSI = RAM size in bytes; other vCPUs start at
//! [`layout::GUEST_AP_ENTRY`] and spin there (`pause; jmp`) without ever exiting.
//! Console output goes to the debug port's `0xE9` ([`crate::devices::debug_port`]).
//!
//! # What the guest maps (both address spaces unless said otherwise)
//!
//! The guest reads CR4.LA57 and builds every address space with the same depth: with
//! LA57 each root is a PML5 (whose slot 0 holds the PML4 of the lower 256 TiB), the
//! descriptor reports feature bit 2 (LA57), and the two rows marked "5-level only"
//! exist. Tables come from the pool at [`layout::GUEST_TABLE_POOL`]; test frames from
//! [`layout::GUEST_TEST_FRAMES`] (4 KiB frame `Fn` = 0x40_0000 + n * 4 KiB; 2 MiB
//! frames at 6, 8 and 10 MiB).
//!
//! | VA | leaves | to | bits (besides P) | touched before READY |
//! |---|---|---|---|---|
//! | 0x10_0000 | 4 KiB × image pages | identity (the guest itself) | RW | read |
//! | 0x20_0000 | 2 MiB × 1 | identity (the table pool) | RW | no |
//! | 0x4000_0000 | 4 KiB × 4 | F0..F3 | RW | written |
//! | 0x4000_4000 | — | hole: non-present PTE | | |
//! | 0x4000_5000 | 4 KiB × 2 | F5, F6 | read-only | read |
//! | 0x4000_7000 | 4 KiB | F7 | RW, NX (if the CPU has NX) | no |
//! | 0x4000_8000 | 4 KiB | F8 | RW, G | read |
//! | 0x4000_9000..b000 | 4 KiB × 3 | F9, F10, F11 | RW + PWT / PCD / PAT (bit 7) | no |
//! | 0x4000_c000 | 4 KiB × 4 | F0..F3 again (alias) | RW | read |
//! | 0x4020_0000 | — | hole: non-present PDE | | |
//! | 0x4040_0000 | 2 MiB | 6 MiB | RW | written |
//! | 0x4060_0000 | 2 MiB | 8 MiB | read-only, NX, PAT (bit 12) | read |
//! | 0x4080_0000 | 2 MiB | 10 MiB | RW, PCD, PWT | no |
//! | 0x8000_0000 | — | hole: non-present PDPTE | | |
//! | 0xc000_0000 | 1 GiB (only with pdpe1gb) | 0 | read-only | read |
//! | 0x80_0000_0000 | — | hole: non-present PML4E | | |
//! | 0x100_0000_0000 | 4 KiB × 2 | F12, F13 | RW, U/S on every level | written |
//! | 0x200_0000_0000 | 4 KiB | space 0: F16, space 1: F17 | RW | read (in each space) |
//! | 0xffff_8880_0000_0000 | 2 MiB × 8 | 0..16 MiB (direct map) | RW, G, NX | read |
//! | 0x1_0000_0000_0000 | — | 5-level only: hole, non-present PML5E (slots 1..=170 but the hostile 100..=103) | | |
//! | 0xab_cdef_1234_5000 | 4 KiB × 2 (5-level only: PML5 slot 171) | F18, F19 | RW | written |
//! | 0xff00_0000_0000_0000 | — | 5-level only: hole, non-present PML5E (slot 256) | | |
//! | 0xff11_0000_0000_0000 | 2 MiB (5-level only: PML5 slot 273, canonical only with 57 bits) | 0 | read-only, G, NX | read |
//!
//! Space 1's root is a copy of space 0's (sharing every lower table) except for PML4
//! slot 4 (VA 0x200_0000_0000); with 5-level paging its PML5 slot 0 points to its own
//! copy of space 0's PML4 for that. With PCID, CR3 is root | 1 for space 0 and root | 2
//! for space 1.
//!
//! Hostile mode adds, in both spaces, structures the guest never touches and the
//! descriptor does not list, all in the PML4 of the lower 256 TiB: PML4 slots 16..=47 all point to one PDPT whose 512
//! entries point to one PD whose 512 entries point to one PT whose 512 entries map F14
//! (32 × 512³ leaves); slot 100 points to the PML4 itself; slot 101 to a PDPT at GPA
//! 0xf_0000_0000 (outside RAM below 60 GiB, and below 2^36 so never a reserved bit); slot 102 to a PDPT whose entry 0 points to a PD
//! outside RAM, entry 1 has bit 51 set, entry 2 points to a PD whose entry 0 is a
//! 2 MiB leaf with bit 13 set (reserved) and whose entry 1 points to a PT outside RAM;
//! slot 103 is slot 102 with PS set (reserved in a PML4E). With 5-level paging the
//! PML5 gets its own: slot 100 points to the PML5 itself (VA 0x64_0000_0000_0000 then
//! maps the page table of VA 0..2 MiB, in the pool), slot 101 to a PML4 at GPA 0xf_0000_3000 (outside RAM), slot
//! 103 to the lower PML4 with PS set (reserved in a PML5E).
//!
//! After READY the guest loops: write the iteration through F0..F3 and check it
//! through the alias, write through the 6 MiB leaf and check it through the direct
//! map, with 5-level paging write through 0xab_cdef_1234_5000 and check it through the
//! direct map, switch CR3 to the other space and check the value at 0x200_0000_0000, spin
//! briefly without exits, HEARTBEAT every 256 iterations, poll for FINISH. Self-check
//! failures end in DONE(code): 1 bad mode, 2 alias mismatch, 3 direct-map mismatch,
//! 4 wrong space value, 5 RAM below 16 MiB, 6 table pool exhausted, 7 mapping
//! conflict, 8 too many descriptor runs, 9 round record full, 10 bulk request that
//! does not fit, 11 mismatch through the 5-level-only mapping.
//!
//! # Dirty-writer mode (`--mode dirty`, RDI = 3)
//!
//! Same tables and READY as normal mode, no CR3 switching. Then, in rounds: wait for
//! the command NEXT_ROUND (polling `IN 0x600`; FINISH ends with DONE), increment the
//! round `r` (1, 2, ...) and write the value `r` at offset 0 of these pages, all in
//! address space 0:
//!
//! | pages | written when |
//! |---|---|
//! | 0x4000_0000 + k × 4 KiB, k ∈ {0, 1, 2, 3, 7, 8, 9, 10, 11} (4 KiB leaves, F_k) | (k + r) mod 3 = 0 |
//! | 0x100_0000_0000 (F12, user) | r odd |
//! | 0x100_0000_1000 (F13, user) | r mod 4 = 2 |
//! | 0x4040_0000 + ((37 r) mod 512) × 4 KiB (inside the 2 MiB leaf at 6 MiB) | r odd |
//! | 0x4080_0000 + ((53 r) mod 512) × 4 KiB and + ((53 r + 200) mod 512) × 4 KiB (the 2 MiB leaf at 10 MiB) | r mod 3 = 0 |
//!
//! So a 2 MiB leaf is entirely clean in some rounds, has one dirty page in others. Then
//! the guest writes the round record ([`RoundRecord`]) and reports ROUND_DONE with its
//! GPA. Besides those pages the guest writes, during a round, only its stack (a few
//! bytes below its initial RSP), the round record, and whatever page-table pages the
//! CPU updates accessed/dirty bits in (the table pool).
//!
//! # Bulk dirty-writer mode (`--mode dirty-bulk`, RDI = 4)
//!
//! For dirty-log benchmarks at scale. Before the second address space is made, the guest
//! also maps **all of its RAM from 16 MiB up** (the *bulk area*, [`BULK_START`] to the
//! top of RAM below the MMIO hole, then the RAM above 4 GiB, each part rounded down to
//! 2 MiB) at VA [`BULK_VA`] + GPA, in both spaces: the first min(64 MiB, half of the
//! part below the hole) with 4 KiB leaves, the rest with 2 MiB leaves, and with 1 GiB
//! leaves for every whole aligned GiB when CPUID has pdpe1gb. Each piece is one
//! descriptor run. Then, as in dirty-writer mode, rounds on NEXT_ROUND; each round reads
//! the VMM's request ([`BulkRequest`], at GPA [`BULK_REQUEST_GPA`]: `pages` pages in runs
//! of `cluster` consecutive pages; without it, 1% of the area in runs of 64) and writes
//! one word at offset 0 of each page: run `c` starts at bulk page `c × stride + phase`,
//! `stride = bulk_pages / runs`, `phase = (977 × round) mod (stride − cluster + 1)`, so
//! the runs are spread over the whole area (every kind of leaf) and move every round.
//! Every page written is listed in the round record (same format as [`RoundRecord`], up
//! to [`BULK_RECORD_MAX_PAGES`] pages) at GPA [`BULK_RECORD_GPA`] (12 MiB), whose GPA
//! ROUND_DONE reports. Besides those pages a round writes only the record, its stack
//! and the page-table pool (accessed/dirty bits). The guest never writes the request
//! page, but round 1 is its first access to it: KVM with nested paging may then map it
//! writable and log it dirty (see [`crate::dirty`], "KVM's log is a superset"), so
//! round 1 can report [`BULK_REQUEST_GPA`] besides. A request that does not fit (zero
//! pages or cluster, cluster > pages, more pages than the area or the record holds, runs
//! that do not fit their stride) ends the guest with DONE(10): check it first with
//! [`BulkRequest::check`].

pub mod descriptor;
pub mod protocol;

pub use descriptor::{Descriptor, DescriptorError, Features, Run, RunLevel};
pub use protocol::{BuiltinProtocol, GuestSignal};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use walker::Gva;

/// The most pages the dirty-writer guest lists in one round record.
pub const ROUND_RECORD_MAX_PAGES: u64 = 32;

/// First GPA of the bulk dirty-writer guest's bulk area (see the module docs).
pub const BULK_START: u64 = 16 << 20;
/// Where the bulk dirty-writer guest maps GPA `g` of its bulk area: `BULK_VA + g`.
pub const BULK_VA: u64 = 0x400_0000_0000;
/// GPA of the bulk request (frame F30), read by the guest at each round.
pub const BULK_REQUEST_GPA: u64 = 0x41_e000;
/// GPA of the bulk guest's round record: 4 MiB from 12 MiB.
pub const BULK_RECORD_GPA: u64 = 12 << 20;
/// Bytes reserved for the bulk round record.
pub const BULK_RECORD_BYTES: u64 = 4 << 20;
/// The most pages one bulk round record lists.
pub const BULK_RECORD_MAX_PAGES: u64 = (BULK_RECORD_BYTES - 16) / 16;
const BULK_MAGIC: &[u8; 8] = b"GWBULK01";

/// Pages of the bulk area of a guest with `ram_bytes` of RAM (what the guest computes).
pub fn bulk_area_pages(ram_bytes: u64) -> u64 {
    let hole = crate::arch::x86_64::layout::MMIO_HOLE_START.0;
    let huge = 2 << 20;
    let low_top = ram_bytes.min(hole) & !(huge - 1);
    let high = ram_bytes.saturating_sub(ram_bytes.min(hole)) & !(huge - 1);
    (low_top.saturating_sub(BULK_START) + high) / 4096
}

/// What the bulk dirty-writer guest writes per round: `pages` pages in runs of `cluster`
/// consecutive pages (the last run may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRequest {
    /// Pages per round.
    pub pages: u64,
    /// Consecutive pages per run.
    pub cluster: u64,
}

/// A bulk request the guest would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkRequestError {
    /// Zero pages or a zero cluster.
    #[error("a bulk round must write at least one page, in runs of at least one page")]
    Empty,
    /// More than the area or the record holds.
    #[error(
        "{pages} pages per round do not fit: the bulk area has {area} pages and the round record holds {BULK_RECORD_MAX_PAGES}"
    )]
    TooMany {
        /// Asked for.
        pages: u64,
        /// Pages of the bulk area.
        area: u64,
    },
    /// Runs longer than the spacing between them.
    #[error(
        "runs of {cluster} pages do not fit: {runs} runs over {area} pages leave {stride} pages per run"
    )]
    ClusterTooLong {
        /// Asked for.
        cluster: u64,
        /// Runs per round.
        runs: u64,
        /// Pages of the bulk area.
        area: u64,
        /// Pages between run starts.
        stride: u64,
    },
}

impl BulkRequest {
    /// `percent` % of the bulk area of a guest with `ram_bytes` (at least one page), in
    /// runs of `cluster` pages (at most the page count).
    pub fn percent_of(ram_bytes: u64, percent: f64, cluster: u64) -> Self {
        let area = bulk_area_pages(ram_bytes);
        let pages = ((area as f64 * percent / 100.0).round() as u64).max(1);
        Self {
            pages,
            cluster: cluster.min(pages),
        }
    }

    /// Whether the guest of `ram_bytes` accepts it (it ends with DONE(10) otherwise).
    pub fn check(&self, ram_bytes: u64) -> Result<(), BulkRequestError> {
        let area = bulk_area_pages(ram_bytes);
        if self.pages == 0 || self.cluster == 0 || self.cluster > self.pages {
            return Err(BulkRequestError::Empty);
        }
        if self.pages > area || self.pages > BULK_RECORD_MAX_PAGES {
            return Err(BulkRequestError::TooMany {
                pages: self.pages,
                area,
            });
        }
        let runs = self.pages.div_ceil(self.cluster);
        let stride = area / runs;
        if stride < self.cluster {
            return Err(BulkRequestError::ClusterTooLong {
                cluster: self.cluster,
                runs,
                area,
                stride,
            });
        }
        Ok(())
    }

    /// Writes the request where the guest reads it (a VMM write: it shows in the next
    /// dirty set as one VMM page, so write it before the fetch that starts a series).
    pub fn write<M: GuestMemoryBackend>(
        &self,
        memory: &M,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(BULK_MAGIC);
        bytes[8..16].copy_from_slice(&self.pages.to_le_bytes());
        bytes[16..].copy_from_slice(&self.cluster.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(BULK_REQUEST_GPA))
    }
}

/// What the dirty-writer guest wrote in one round: `{round: u64, count: u64, then count
/// × (va: u64, pa: u64)}` at the GPA of ROUND_DONE (little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRecord {
    /// Round number (1, 2, ...).
    pub round: u64,
    /// Each page written: (virtual address in address space 0, guest-physical address).
    pub pages: Vec<(Gva, GuestAddress)>,
}

/// Why a round record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RoundRecordError {
    /// Reading guest memory failed.
    #[error("cannot read the round record at {0:#x}: {1}")]
    Memory(u64, #[source] vm_memory::GuestMemoryError),
    /// The count is larger than the guest can write.
    #[error("the round record at {at:#x} claims {count} pages, more than {max}")]
    TooLong {
        /// Where.
        at: u64,
        /// The count.
        count: u64,
        /// The most a record of this guest mode holds.
        max: u64,
    },
}

impl RoundRecord {
    /// Size in bytes of a record of `pages` pages.
    pub fn size(pages: usize) -> u64 {
        16 + 16 * pages as u64
    }

    /// Parses the record at `gpa` of the dirty-writer guest (at most
    /// [`ROUND_RECORD_MAX_PAGES`] pages).
    pub fn read<M: GuestMemoryBackend>(
        memory: &M,
        gpa: GuestAddress,
    ) -> Result<Self, RoundRecordError> {
        Self::read_at_most(memory, gpa, ROUND_RECORD_MAX_PAGES)
    }

    /// Parses a record of the dirty-writer guest in either mode: up to
    /// [`BULK_RECORD_MAX_PAGES`] pages when it is at [`BULK_RECORD_GPA`], else up to
    /// [`ROUND_RECORD_MAX_PAGES`].
    pub fn read_any<M: GuestMemoryBackend>(
        memory: &M,
        gpa: GuestAddress,
    ) -> Result<Self, RoundRecordError> {
        let max = if gpa.0 == BULK_RECORD_GPA {
            BULK_RECORD_MAX_PAGES
        } else {
            ROUND_RECORD_MAX_PAGES
        };
        Self::read_at_most(memory, gpa, max)
    }

    /// Parses the record at `gpa`, refusing one that claims more than `max` pages.
    pub fn read_at_most<M: GuestMemoryBackend>(
        memory: &M,
        gpa: GuestAddress,
        max: u64,
    ) -> Result<Self, RoundRecordError> {
        let word = |offset: u64| -> Result<u64, RoundRecordError> {
            let at = gpa.0.wrapping_add(offset);
            memory
                .read_obj::<u64>(GuestAddress(at))
                .map_err(|e| RoundRecordError::Memory(at, e))
        };
        let round = word(0)?;
        let count = word(8)?;
        if count > max {
            return Err(RoundRecordError::TooLong {
                at: gpa.0,
                count,
                max,
            });
        }
        // One copy of the whole list (bulk records hold thousands of pages).
        let at = gpa.0.wrapping_add(16);
        let mut bytes = vec![0u8; (count * 16) as usize];
        memory
            .read_slice(&mut bytes, GuestAddress(at))
            .map_err(|e| RoundRecordError::Memory(at, e))?;
        let pages = bytes
            .chunks_exact(16)
            .map(|e| {
                let mut va = [0u8; 8];
                let mut pa = [0u8; 8];
                va.copy_from_slice(&e[..8]);
                pa.copy_from_slice(&e[8..]);
                (
                    Gva(u64::from_le_bytes(va)),
                    GuestAddress(u64::from_le_bytes(pa)),
                )
            })
            .collect();
        Ok(Self { round, pages })
    }
}

#[cfg(doc)]
use crate::arch::x86_64::layout;

/// The built-in guest, assembled from `guest-images/builtin/*.S` by `build.rs`. A
/// flat binary loaded at [`crate::arch::x86_64::layout::GUEST_IMAGE_START`].
pub const BUILTIN_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin-guest.bin"));

/// What the built-in guest does (passed in RDI at entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestMode {
    /// Build page tables, READY, loop until FINISH, DONE.
    #[default]
    Normal,
    /// As normal, plus adversarial page-table structures reachable from its CR3.
    Hostile,
    /// Print a line, then triple-fault on purpose.
    TripleFault,
    /// As normal up to READY, then write a known set of pages per round on the VMM's
    /// NEXT_ROUND command, reporting each round's record (dirty-scan tests).
    Dirty,
    /// As dirty, but also maps all RAM from 16 MiB up (4 KiB, 2 MiB and, where the CPU
    /// has them, 1 GiB leaves) and writes per round the page count the VMM asks for
    /// ([`BulkRequest`]), listing every page in the round record (benchmarks).
    DirtyBulk,
    /// As normal, plus a debug-port PARK (argument: the iteration count, also in R12)
    /// after every heartbeat: exercises [`crate::vm::Vm::resume_vcpu`] and the waits
    /// that must let parked vCPUs go.
    Park,
}

named_choices!(GuestMode {
    Normal => "normal", "build page tables, READY, loop until FINISH, DONE";
    Hostile => "hostile", "as normal, plus adversarial page-table structures";
    TripleFault => "triple-fault", "print a line, then triple-fault on purpose";
    Dirty => "dirty", "as normal, then write a known set of pages per NEXT_ROUND";
    DirtyBulk => "dirty-bulk", "as dirty over all RAM from 16 MiB, as many pages as asked (benchmarks)";
    Park => "park", "as normal, plus a debug-port PARK after every heartbeat";
});

impl GuestMode {
    /// The value the guest reads from RDI.
    pub fn register_value(self) -> u64 {
        match self {
            Self::Normal => 0,
            Self::Hostile => 1,
            Self::TripleFault => 2,
            Self::Dirty => 3,
            Self::DirtyBulk => 4,
            Self::Park => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_records_parse() {
        let Ok(mem) = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)])
        else {
            panic!("cannot map test memory");
        };
        let words: [u64; 6] = [3, 2, 0x4000_0000, 0x40_0000, 0x4040_5000, 0x60_5000];
        for (i, w) in words.iter().enumerate() {
            assert!(
                mem.write_obj(*w, GuestAddress(0x100 + 8 * i as u64))
                    .is_ok()
            );
        }
        let r = RoundRecord::read(&mem, GuestAddress(0x100)).ok();
        assert_eq!(
            r,
            Some(RoundRecord {
                round: 3,
                pages: vec![
                    (Gva(0x4000_0000), GuestAddress(0x40_0000)),
                    (Gva(0x4040_5000), GuestAddress(0x60_5000))
                ]
            })
        );
        assert!(mem.write_obj(33u64, GuestAddress(0x108)).is_ok());
        assert!(matches!(
            RoundRecord::read(&mem, GuestAddress(0x100)),
            Err(RoundRecordError::TooLong { count: 33, .. })
        ));
        assert!(RoundRecord::read(&mem, GuestAddress(0x1ff8)).is_err());
        // A claimed count past the end of memory is an error, not a huge allocation
        // beyond the limit.
        assert!(mem.write_obj(600u64, GuestAddress(0x108)).is_ok());
        assert!(matches!(
            RoundRecord::read_at_most(&mem, GuestAddress(0x100), 600),
            Err(RoundRecordError::Memory(..))
        ));
    }

    #[test]
    fn bulk_requests_are_checked_like_the_guest_does() {
        // 64 MiB: 48 MiB from 16 MiB = 12288 pages.
        assert_eq!(bulk_area_pages(64 << 20), 12288);
        // 4 GiB: 3 GiB - 16 MiB below the hole, 1 GiB above.
        assert_eq!(
            bulk_area_pages(4 << 30),
            ((3 << 30) - (16 << 20) + (1 << 30)) / 4096
        );
        assert_eq!(bulk_area_pages(16 << 20), 0);
        let r = BulkRequest::percent_of(4 << 30, 1.0, 64);
        assert_eq!(r.pages, 10445);
        assert_eq!(r.check(4 << 30), Ok(()));
        let ok = BulkRequest {
            pages: 100,
            cluster: 10,
        };
        assert_eq!(ok.check(64 << 20), Ok(()));
        for (pages, cluster) in [(0, 1), (10, 0), (10, 11)] {
            assert_eq!(
                BulkRequest { pages, cluster }.check(64 << 20),
                Err(BulkRequestError::Empty)
            );
        }
        assert!(matches!(
            BulkRequest {
                pages: 12289,
                cluster: 1
            }
            .check(64 << 20),
            Err(BulkRequestError::TooMany { area: 12288, .. })
        ));
        // 3 runs of 5000 over 12288 pages: 4096 between starts.
        assert!(matches!(
            BulkRequest {
                pages: 12000,
                cluster: 5000
            }
            .check(64 << 20),
            Err(BulkRequestError::ClusterTooLong { stride: 4096, .. })
        ));
        let Ok(mem) = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)])
        else {
            panic!("cannot map test memory");
        };
        assert!(ok.write(&mem).is_ok());
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BULK_REQUEST_GPA)).ok(),
            Some(0x3130_4b4c_5542_5747)
        );
    }
}
