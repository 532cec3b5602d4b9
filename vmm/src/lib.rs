//! A small KVM VMM (rust-vmm crates, Firecracker-style) that boots test guests and
//! lets the VMM thread stop them and look at their page tables.
//!
//! - [`builder::build_vm`] boots a [`builder::VmConfig`] and returns a running [`vm::Vm`]:
//!   one recipe for every [`builder::BootSource`], the built-in guest ([`guest`], entered
//!   in 64-bit mode) or a Linux kernel ([`linux`]: bzImage or PVH vmlinux, with the
//!   in-kernel irqchip, ACPI, an RTC and the reset lines), with or without dirty logging.
//! - [`vm::Vm`] pauses and resumes the vCPUs, reads their registers, translates
//!   addresses with `KVM_TRANSLATE`, gives access to guest memory, and reports guest
//!   events ([`events::VmEvent`]) from the debug port ([`devices::debug_port`]).
//! - [`guest::Descriptor`] parses what the guest says it mapped.
//! - [`snapshot`] writes full and diff snapshots of a running guest, and loads, merges
//!   and walks them offline.
//! - [`introspect`] prints a guest's address spaces with the walker (live or from a
//!   memory file, [`memfile`]).
//!
//! Only [`kvm`] contains raw KVM types. `unsafe` is denied at the crate root and allowed
//! only in [`kvm`], [`linux`] (relocating a decompressed kernel through host pointers)
//! and [`sigbus`]; user paths are opened and outputs written only through [`files`].

#![warn(missing_docs)]
// `unsafe` is allowed only in the modules below that say so, each block with its SAFETY
// argument: the KVM boundary, the host-side kernel relocation, the SIGBUS guard.
#![deny(unsafe_code)]

pub mod arch;
pub mod bench;
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
#[allow(unsafe_code)]
pub mod sigbus;
pub mod snapshot;
pub mod test_support;
pub mod vcpu;
pub mod vm;

pub use builder::{BootSource, BuildError, DirtyConfig, VmConfig, build_vm};
pub use devices::{Console, ResetMethod};
pub use dirty::{DirtyLog, DirtyLogBackend, DirtyLogChoice, DirtySet, ScanReport};
pub use events::VmEvent;
pub use guest::{Descriptor, DescriptorError, GuestMode, RoundRecord};
pub use kvm::KvmTranslation;
pub use linux::{Decompress, Decompressed, LinuxBoot};
pub use memory::MemorySize;
pub use snapshot::{SnapshotDir, SnapshotError, SnapshotInfo};
pub use vcpu::VcpuState;
pub use vm::{ExitOutcome, OnReset, Vm, VmError};
