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
//! 0x700_0000_0000 (outside RAM); slot 102 to a PDPT whose entry 0 points to a PD
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
//! conflict, 8 too many descriptor runs.

pub mod descriptor;

pub use descriptor::{Descriptor, DescriptorError, Features, Run, RunLevel};

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
}

impl GuestMode {
    /// The value the guest reads from RDI.
    pub fn register_value(self) -> u64 {
        match self {
            Self::Normal => 0,
            Self::Hostile => 1,
            Self::TripleFault => 2,
        }
    }
}
