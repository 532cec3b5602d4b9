//! The built-in test guest: its image and how it reports what it mapped.
//!
//! Source: `guest-images/builtin/guest.S`. Entry (set by [`crate::builder`]): 64-bit
//! mode on the VMM's boot tables, RIP = [`layout::GUEST_IMAGE_START`], RDI = mode
//! ([`GuestMode::register_value`]), RSI = RAM size in bytes; other vCPUs start at
//! [`layout::GUEST_AP_ENTRY`] and spin there (`pause; jmp`) without ever exiting.
//! Console output goes to the debug port's `0xE9` ([`crate::devices::debug_port`]).
//!
//! # What the guest maps (both address spaces unless said otherwise)
//!
//! Tables come from the pool at [`layout::GUEST_TABLE_POOL`]; test frames from
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
//!
//! Space 1's PML4 is a copy of space 0's (sharing every lower table) except for slot 4
//! (VA 0x200_0000_0000). With PCID, CR3 is PML4 | 1 for space 0 and PML4 | 2 for space 1.
//!
//! Hostile mode adds, in both spaces, structures the guest never touches and the
//! descriptor does not list: PML4 slots 16..=47 all point to one PDPT whose 512
//! entries point to one PD whose 512 entries point to one PT whose 512 entries map F14
//! (32 × 512³ leaves); slot 100 points to the PML4 itself; slot 101 to a PDPT at GPA
//! 0xf_0000_0000 (outside RAM below 60 GiB, and below 2^36 so never a reserved bit); slot 102 to a PDPT whose entry 0 points to a PD
//! outside RAM, entry 1 has bit 51 set, entry 2 points to a PD whose entry 0 is a
//! 2 MiB leaf with bit 13 set (reserved) and whose entry 1 points to a PT outside RAM;
//! slot 103 is slot 102 with PS set (reserved in a PML4E).
//!
//! After READY the guest loops: write the iteration through F0..F3 and check it
//! through the alias, write through the 6 MiB leaf and check it through the direct
//! map, switch CR3 to the other space and check the value at 0x200_0000_0000, spin
//! briefly without exits, HEARTBEAT every 256 iterations, poll for FINISH. Self-check
//! failures end in DONE(code): 1 bad mode, 2 alias mismatch, 3 direct-map mismatch,
//! 4 wrong space value, 5 RAM below 16 MiB, 6 table pool exhausted, 7 mapping
//! conflict, 8 too many descriptor runs, 9 round record full.
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

pub mod descriptor;

pub use descriptor::{Descriptor, DescriptorError, Features, Run, RunLevel};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use walker::Gva;

/// The most pages the dirty-writer guest lists in one round record.
pub const ROUND_RECORD_MAX_PAGES: u64 = 32;

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
    #[error("the round record at {at:#x} claims {count} pages, more than {ROUND_RECORD_MAX_PAGES}")]
    TooLong {
        /// Where.
        at: u64,
        /// The count.
        count: u64,
    },
}

impl RoundRecord {
    /// Size in bytes of a record of `pages` pages.
    pub fn size(pages: usize) -> u64 {
        16 + 16 * pages as u64
    }

    /// Parses the record at `gpa`.
    pub fn read<M: GuestMemoryBackend>(
        memory: &M,
        gpa: GuestAddress,
    ) -> Result<Self, RoundRecordError> {
        let word = |offset: u64| -> Result<u64, RoundRecordError> {
            let at = gpa.0.wrapping_add(offset);
            memory
                .read_obj::<u64>(GuestAddress(at))
                .map_err(|e| RoundRecordError::Memory(at, e))
        };
        let round = word(0)?;
        let count = word(8)?;
        if count > ROUND_RECORD_MAX_PAGES {
            return Err(RoundRecordError::TooLong { at: gpa.0, count });
        }
        let pages = (0..count)
            .map(|i| Ok((Gva(word(16 + 16 * i)?), GuestAddress(word(24 + 16 * i)?))))
            .collect::<Result<_, RoundRecordError>>()?;
        Ok(Self { round, pages })
    }
}

#[cfg(doc)]
use crate::arch::x86_64::layout;

/// The built-in guest, assembled from `guest-images/builtin/*.S` by `build.rs`. A
/// flat binary loaded at [`crate::arch::x86_64::layout::GUEST_IMAGE_START`].
pub const BUILTIN_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin-guest.bin"));

/// What the built-in guest does (passed in RDI at entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
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
}

impl GuestMode {
    /// The value the guest reads from RDI.
    pub fn register_value(self) -> u64 {
        match self {
            Self::Normal => 0,
            Self::Hostile => 1,
            Self::TripleFault => 2,
            Self::Dirty => 3,
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
    }
}
