//! A small KVM VMM (rust-vmm crates, Firecracker-style) that boots guests and lets the
//! VMM thread stop them and look at their page tables.
//!
//! - [`builder::build_vm`] boots a [`builder::VmConfig`] and returns a running [`vm::Vm`]:
//!   one recipe for every [`builder::BootSource`], the built-in guest ([`guest`], entered
//!   in 64-bit mode) or a Linux kernel ([`linux`]: bzImage or PVH vmlinux, with the
//!   in-kernel irqchip, ACPI, an RTC and the reset lines), with or without dirty logging.
//! - [`vm::Vm`] pauses and resumes the vCPUs, reads their registers, translates
//!   addresses with `KVM_TRANSLATE`, gives access to guest memory and the dirty log, and
//!   reports what happens ([`events::VmEvent`]). It knows no guest's protocol: a guest's
//!   signals on the debug port ([`devices::debug_port`]) reach it as codes and arguments,
//!   and the built-in guest's module ([`guest::protocol`]) says what they mean.
//! - [`guest::Descriptor`] parses what the built-in guest says it mapped.
//! - [`snapshot`] writes full and diff snapshots of a running guest, and loads, merges
//!   and walks them offline; [`dump`] reads other tools' memory dumps.
//! - [`introspect`] prints a guest's address spaces with the walker (live or from a
//!   memory file, [`memfile`]).
//!
//! # Layers
//!
//! Lowest first; a module uses only modules before it (`vmm/core/tests/layering.rs` checks it
//! on the source, so no import circle can form between them):
//!
//! 1. host utilities: [`sigbus`] (guarded access to mapped files), [`files`] (every user
//!    path opened and every output written);
//! 2. [`arch`]: x86-64 definitions (layout, registers, CPUID, ACPI tables, port I/O);
//! 3. [`memory`]: guest RAM and its host mapping;
//! 4. [`kvm`]: the KVM boundary, the only raw KVM types;
//! 5. [`devices`] (the debug port's transport among them), then [`exit`] (what a vCPU
//!    exit does), [`events`], [`dirty`] (dirty logging and scans), [`vcpu`] (the threads);
//! 6. boot sources and files: [`linux`], [`memfile`];
//! 7. [`vm`]: a running VM and its lifecycle;
//! 8. the built-in guest ([`guest`]: image, descriptor, protocol), then [`builder`] and
//!    [`pause`] (boot and pause at a chosen moment);
//! 9. users of a VM or its memory: [`introspect`], [`dump`], [`snapshot`], [`restore`];
//! 10. [`api`]: the control API, served while a VM runs, and its client.
//!
//! This crate (package `vmm-core`, imported as `vmm`) has no command-line types; the `vmm`
//! binary (package `vmm`, `vmm/core/src/`: the command line and `vmm bench`) uses it through
//! its public API only, so nothing here can reach up into it.
//!
//! `unsafe` is denied at the crate root and allowed only in [`kvm`], [`linux`] (relocating
//! a decompressed kernel through host pointers), [`sigbus`] and [`memory::host`] (steering
//! the RAM mapping), each block with its SAFETY argument; the layering test also fails if
//! `unsafe` appears anywhere else.

#![warn(missing_docs)]
// `unsafe` is allowed only in the modules below that say so, each block with its SAFETY
// argument: the KVM boundary, the host-side kernel relocation, the SIGBUS guard.
#![deny(unsafe_code)]

/// Names for a field-less enum that users choose on a command line or in a request:
/// `ALL`, `name()`, `about()` (one line of help), `Display` as the name and `FromStr`
/// from it ([`UnknownChoice`] names the choices). The library stays free of any
/// command-line crate; the `vmm` binary builds its parsers from these.
macro_rules! named_choices {
    ($ty:ident { $($variant:ident => $name:literal, $about:literal;)+ }) => {
        impl $ty {
            /// Every choice, in the order the help lists them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name users type.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// One line of help.
            pub fn about(self) -> &'static str {
                match self {
                    $($ty::$variant => $about,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::UnknownChoice;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|choice| choice.name() == text)
                    .ok_or_else(|| $crate::UnknownChoice {
                        given: text.to_string(),
                        choices: Self::ALL.iter().map(|c| c.name()).collect(),
                    })
            }
        }
    };
}

/// A name that is none of an enum's choices ([`std::str::FromStr`] of the enums users
/// choose from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not one of: {}", choices.join(", "))]
pub struct UnknownChoice {
    /// What was given.
    pub given: String,
    /// The names it could have been.
    pub choices: Vec<&'static str>,
}

pub mod api;
pub mod arch;
pub mod builder;
pub mod devices;
pub mod dirty;
pub mod dump;
pub mod events;
pub mod exit;
pub mod files;
pub mod guest;
pub mod introspect;
#[allow(unsafe_code)]
pub mod kvm;
#[allow(unsafe_code)]
pub mod linux;
pub mod memfile;
pub mod memory;
pub mod pause;
pub mod restore;
#[allow(unsafe_code)]
pub mod sigbus;
pub mod snapshot;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod vcpu;
pub mod vm;

pub use builder::{BootSource, BuildError, DirtyConfig, VmConfig, build_vm};
pub use devices::{Console, ResetMethod};
pub use dirty::{DirtyLog, DirtyLogBackend, DirtyLogChoice, DirtySet, ScanReport};
pub use events::VmEvent;
pub use guest::{
    BuiltinProtocol, Descriptor, DescriptorError, GuestMode, GuestSignal, RoundRecord,
};
pub use kvm::KvmTranslation;
pub use linux::{Decompress, Decompressed, LinuxBoot};
pub use memory::MemorySize;
pub use snapshot::{SnapshotDir, SnapshotError, SnapshotInfo};
pub use vcpu::VcpuState;
pub use vm::{ExitOutcome, OnReset, Vm, VmError};
