//! Resuming a VM from a snapshot generation: one more boot source, whose memory, vCPUs
//! and VM state come from the snapshot instead of a boot recipe.
//!
//! [`restore_vm`] runs these steps, every check before a VM exists:
//!
//! 1. load the generation ([`crate::snapshot::load_for_restore`]): every state file and
//!    diff verified, the memory file's length checked and mapped private (copy-on-write:
//!    nothing is read until the guest or the VMM touches it, and nothing is ever written
//!    to the snapshot's files), the diffs applied into that private mapping; or, with
//!    [`MemoryLoad::Copy`], the memory file read into anonymous RAM, its CRC32 checked;
//! 2. refuse what cannot be resumed: a format-1 state (registers only), a snapshot
//!    written from memory rather than from a VM, a Linux guest's on PVM (which cannot
//!    run Linux);
//! 3. compatibility: the CPUID features the snapshot's vCPUs were given must be ones
//!    this host's KVM gives ([`missing_features`]: every feature bit, MAXPHYADDR), else
//!    the restore is refused naming what is missing; a TSC frequency more than
//!    [`TSC_TOLERANCE_PPM`] from this host's is set with `KVM_SET_TSC_KHZ`, or refused;
//! 4. the KVM VM and its memory slots (with dirty logging when asked, for a new chain of
//!    snapshots), then each vCPU: CPUID, then [`crate::kvm::KvmVcpu::restore_state`]
//!    (MP state, registers, XSAVE, XCRs, debug registers, LAPIC, MSRs, events), then the
//!    VM's clock (and irqchip, PIT) after every vCPU ([`crate::kvm::state`] says why);
//! 5. the devices from their records (COM1 with its pending interrupt raised again, for
//!    a Linux guest on IRQ 4 through an irqfd; the CMOS RAM and reset control register),
//!    and the vCPU threads, as for a boot ([`crate::builder::build_vm`]): the guest runs
//!    on from the instruction after the one it was paused at.
//!
//! A restored Linux VM does not know where its kernel was loaded ([`Vm::linux`] is
//! `None`): dirty scans of it do not add the kernel half of a PTI process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::cpuid::{CpuidEntry, guest_cpuid, linux_cpuid, paging_features};
use crate::builder::{BuildError, DirtyConfig, Machine, dirty_tracking, prepare_dirty_log, start};
use crate::devices::serial::COM1_IRQ;
use crate::devices::{Console, LegacyDevices, SerialDevice, SerialInterrupt};
use crate::kvm::{self, Hypervisor, KvmError, kick};
use crate::snapshot::{MemoryLoad, SnapshotError, SnapshotState, load_for_restore};
use crate::vm::Vm;

/// How far (in parts per million) the snapshot's TSC frequency may be from this host's
/// before the restore sets it with `KVM_SET_TSC_KHZ` (Cloud Hypervisor's and QEMU's
/// tolerance: NTP absorbs less).
pub const TSC_TOLERANCE_PPM: u64 = 250;

/// What to restore, and how the restored VM runs.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The generation (default: the latest).
    pub generation: Option<u64>,
    /// How the memory file becomes guest RAM (lazy by default).
    pub memory: MemoryLoad,
    /// Where the guest's console goes.
    pub console: Console,
    /// Dirty logging for the restored VM (to take a new chain of snapshots from it).
    pub dirty: Option<DirtyConfig>,
    /// Start with every vCPU paused, exactly at the snapshot's instant ([`Vm::pause`]
    /// then reads the saved registers; [`Vm::resume`] lets the guest run on).
    pub paused: bool,
}

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot's files are missing, damaged or inconsistent.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The generation does not hold what a restore needs.
    #[error("generation {generation} of {dir} cannot be resumed: {reason}")]
    NotResumable {
        /// The snapshot directory.
        dir: PathBuf,
        /// The generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// This host's KVM does not give what the snapshot's vCPUs had.
    #[error(
        "generation {generation} of {dir} needs CPU features this host's KVM does not offer: {}",
        missing.join(", ")
    )]
    Incompatible {
        /// The snapshot directory.
        dir: PathBuf,
        /// The generation.
        generation: u64,
        /// What is missing, named.
        missing: Vec<String>,
    },
    /// The snapshot's TSC frequency cannot be given on this host.
    #[error(
        "the snapshot's TSC runs at {saved_khz} kHz, this host's vCPUs at {host_khz} kHz, and \
         KVM cannot set it ({source}): the guest's clocks would be wrong"
    )]
    TscFrequency {
        /// The snapshot's.
        saved_khz: u32,
        /// This host's.
        host_khz: u32,
        /// KVM's refusal.
        #[source]
        source: KvmError,
    },
    /// Setting a vCPU's saved state failed.
    #[error("restoring vCPU {vcpu}: {source}")]
    Vcpu {
        /// The vCPU.
        vcpu: u8,
        /// KVM's error.
        #[source]
        source: KvmError,
    },
    /// Building the VM around the state failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl From<KvmError> for RestoreError {
    fn from(e: KvmError) -> Self {
        Self::Build(BuildError::Kvm(e))
    }
}

/// Feature leaves compared by [`missing_features`]: `(function, index, register)`.
const FEATURE_LEAVES: &[(u32, u32, Register)] = &[
    (0x1, 0, Register::Ecx),
    (0x1, 0, Register::Edx),
    (0x7, 0, Register::Ebx),
    (0x7, 0, Register::Ecx),
    (0x7, 0, Register::Edx),
    (0x7, 1, Register::Eax),
    (0xd, 1, Register::Eax),
    (0x8000_0001, 0, Register::Ecx),
    (0x8000_0001, 0, Register::Edx),
];

/// Feature bits with names, for messages: `(function, register, bit, name)`.
const NAMED_BITS: &[(u32, Register, u32, &str)] = &[
    (0x1, Register::Ecx, 24, "TSC-deadline timer"),
    (0x1, Register::Ecx, 26, "XSAVE"),
    (0x1, Register::Ecx, 28, "AVX"),
    (0x7, Register::Ebx, 5, "AVX2"),
    (0x7, Register::Ebx, 16, "AVX-512F"),
    (0x7, Register::Ecx, 16, "LA57 (5-level paging)"),
    (0x8000_0001, Register::Edx, 20, "NX"),
    (0x8000_0001, Register::Edx, 26, "1 GiB pages (PDPE1GB)"),
];

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Register {
    fn of(self, entry: &CpuidEntry) -> u32 {
        match self {
            Self::Eax => entry.eax,
            Self::Ebx => entry.ebx,
            Self::Ecx => entry.ecx,
            Self::Edx => entry.edx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Eax => "EAX",
            Self::Ebx => "EBX",
            Self::Ecx => "ECX",
            Self::Edx => "EDX",
        }
    }
}

/// What the snapshot's vCPU CPUID `saved` has that `host` (the CPUID this host's VMM
/// gives the same guest) lacks: every feature bit of the feature leaves, and a larger
/// MAXPHYADDR. Empty when the snapshot can run here.
pub fn missing_features(saved: &[CpuidEntry], host: &[CpuidEntry]) -> Vec<String> {
    let find = |entries: &[CpuidEntry], function: u32, index: u32| {
        entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
            .unwrap_or_default()
    };
    let mut missing = Vec::new();
    for &(function, index, register) in FEATURE_LEAVES {
        let lacking =
            register.of(&find(saved, function, index)) & !register.of(&find(host, function, index));
        for bit in (0..32).filter(|bit| lacking & (1 << bit) != 0) {
            let named = NAMED_BITS
                .iter()
                .find(|&&(f, r, b, _)| f == function && r == register && b == bit);
            missing.push(match named {
                Some((.., name)) => format!(
                    "{name} (CPUID {function:#x}.{index} {} bit {bit})",
                    register.name()
                ),
                None => format!("CPUID {function:#x}.{index} {} bit {bit}", register.name()),
            });
        }
    }
    let (saved_bits, host_bits) = (
        paging_features(saved).phys_addr_bits,
        paging_features(host).phys_addr_bits,
    );
    if saved_bits > host_bits {
        missing.push(format!(
            "{saved_bits} physical address bits (this host gives {host_bits})"
        ));
    }
    missing
}

/// Whether two TSC frequencies differ by more than [`TSC_TOLERANCE_PPM`].
pub fn tsc_differs(saved_khz: u32, host_khz: u32) -> bool {
    let diff = u64::from(saved_khz.abs_diff(host_khz));
    diff * 1_000_000 > TSC_TOLERANCE_PPM * u64::from(saved_khz.max(1))
}

/// Restores `config.generation` of `config.dir` and starts it (see the module docs).
/// Returns the running VM and the state it was restored from.
pub fn restore_vm(config: &RestoreConfig) -> Result<(Vm, SnapshotState), RestoreError> {
    let snapshot = load_for_restore(&config.dir, config.generation, config.memory)?;
    let generation = snapshot.state.generation;
    let refuse = |reason: &str| RestoreError::NotResumable {
        dir: config.dir.clone(),
        generation,
        reason: reason.to_owned(),
    };
    let state = &snapshot.state;
    if state.version < 2 {
        return Err(refuse(&format!(
            "it is snapshot format {}, which saved only the registers (format 2 saves \
             everything KVM holds); it can still be inspected and merged",
            state.version
        )));
    }
    let Some(vm_state) = state.vm.clone() else {
        return Err(refuse(
            "it was written from memory, not from a running VM: it holds no KVM state",
        ));
    };
    let Some(devices) = state.devices.clone() else {
        return Err(refuse("it holds no device state (taken by an earlier vmm)"));
    };
    // The in-kernel interrupt controllers are what a Linux VM has and the built-in
    // guest's does not (crate::builder).
    let linux = vm_state.irqchip.is_some();
    if linux != devices.legacy.is_some() {
        return Err(refuse(
            "its interrupt controllers and legacy devices disagree on whether it is a Linux guest",
        ));
    }

    if state.vcpus.iter().any(|record| record.kvm.is_none()) {
        return Err(refuse("a vCPU has no KVM state"));
    }
    // KVM's structures carried as bytes, checked before any VM exists.
    for (index, record) in state.vcpus.iter().enumerate() {
        if let Some(kvm) = &record.kvm {
            kvm.check()
                .map_err(|e| refuse(&format!("vCPU {index}: {e}")))?;
        }
    }
    vm_state.check().map_err(|e| refuse(&e.to_string()))?;
    let pvm = kvm::host_is_pvm();
    if linux && pvm {
        return Err(refuse(
            "it is a Linux guest's, and this host's /dev/kvm is PVM, where a stock Linux \
             kernel cannot run (restore it on a hardware KVM host)",
        ));
    }
    if state.vcpus.len() > usize::from(crate::builder::MAX_VCPUS) {
        return Err(refuse(&format!("it has {} vCPUs", state.vcpus.len())));
    }

    let hypervisor = Hypervisor::open()?;
    let supported = hypervisor.supported_cpuid()?;
    let mut missing = Vec::new();
    for (index, record) in (0u8..).zip(&state.vcpus) {
        let saved = record.kvm.as_ref().map_or(&[][..], |k| &k.cpuid[..]);
        let host = if linux {
            linux_cpuid(&supported, index, pvm, hypervisor.has_tsc_deadline_timer())
        } else {
            guest_cpuid(&supported, index, pvm)
        };
        for item in missing_features(saved, &host) {
            if !missing.contains(&item) {
                missing.push(item);
            }
        }
    }
    if !missing.is_empty() {
        return Err(RestoreError::Incompatible {
            dir: config.dir.clone(),
            generation,
            missing,
        });
    }
    let msr_indices: Arc<[u32]> = hypervisor.msr_index_list()?.into();

    let (state, memory, memory_watches) = snapshot.into_parts();
    let kvm_vm = Arc::new(hypervisor.create_vm()?);
    let (dirty_backend, ring_size) = prepare_dirty_log(&kvm_vm, config.dirty)?;
    let slots = kvm_vm.register_memory(&memory, dirty_backend.is_some())?;
    kvm_vm.set_tss_address(crate::arch::x86_64::layout::KVM_TSS_ADDRESS.0)?;
    if linux {
        // Before any vCPU: each vCPU gets its in-kernel LAPIC when created.
        kvm_vm.create_irqchip_and_pit()?;
    }
    kick::install_handler().map_err(BuildError::from)?;
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (index, record) in (0u8..).zip(&state.vcpus) {
        let Some(kvm_state) = &record.kvm else {
            return Err(refuse("a vCPU has no KVM state"));
        };
        let vcpu = kvm_vm.create_vcpu(index)?;
        if let Some(saved_khz) = kvm_state.tsc_khz {
            let host_khz = vcpu.tsc_khz()?;
            if tsc_differs(saved_khz, host_khz) {
                vcpu.set_tsc_khz(saved_khz)
                    .map_err(|source| RestoreError::TscFrequency {
                        saved_khz,
                        host_khz,
                        source,
                    })?;
            }
        }
        vcpu.set_cpuid(&kvm_state.cpuid)?;
        vcpu.restore_state(&record.regs, &record.sregs, kvm_state)
            .map_err(|source| RestoreError::Vcpu {
                vcpu: index,
                source,
            })?;
        vcpus.push(vcpu);
    }
    kvm_vm
        .restore_state(&vm_state)
        .map_err(RestoreError::from)?;
    let (dirty, dirty_rings) =
        dirty_tracking(&kvm_vm, &memory, slots, &vcpus, dirty_backend, ring_size)?;
    let paging = state.paging;
    let interrupt = if linux {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        kvm_vm.register_irqfd(&irq, COM1_IRQ)?;
        SerialInterrupt::Irqfd(irq)
    } else {
        SerialInterrupt::None
    };
    let serial = SerialDevice::from_record(config.console.clone(), interrupt, &devices.serial)
        .ok_or_else(|| refuse("its UART's receive FIFO holds more than a UART's 64 bytes"))?;
    let legacy = match &devices.legacy {
        Some(record) => Some(Arc::new(Mutex::new(
            LegacyDevices::from_record(record)
                .ok_or_else(|| refuse("its CMOS RAM is not 128 bytes"))?,
        ))),
        None => None,
    };
    let cpuids = state
        .vcpus
        .iter()
        .map(|r| r.kvm.as_ref().map(|k| k.cpuid.clone()).unwrap_or_default())
        .collect();
    let vm = start(
        Machine {
            cpuids,
            kvm_vm,
            memory,
            vcpus,
            paging,
            dirty,
            dirty_rings,
            serial,
            legacy,
            linux: None,
            msr_indices,
            irqchip: linux,
            memory_watches,
            start_paused: config.paused,
            debug_arguments: state
                .vcpus
                .iter()
                .map(|v| v.debug_argument.unwrap_or(0))
                .collect(),
            boot: state.boot.clone().unwrap_or_else(|| crate::vm::BootRecord {
                source: if linux { "linux" } else { "builtin" }.to_owned(),
                mode: None,
                kernel: None,
                initrd: None,
                cmdline: None,
                memory_bytes: state.regions.iter().map(|r| r.len).sum(),
                vcpus: u8::try_from(state.vcpus.len()).unwrap_or(u8::MAX),
            }),
        },
        &config.console,
    )?;
    Ok((vm, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            flags: 0,
            eax,
            ebx,
            ecx,
            edx,
        }
    }

    #[test]
    fn missing_features_are_named() {
        let host = vec![
            entry(0x1, 0, 0, 0, 1 << 26, 0xffff),
            entry(0x7, 0, 0, 1 << 5, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0, 1 << 20),
            entry(0x8000_0008, 0, 39, 0, 0, 0),
        ];
        assert!(missing_features(&host, &host).is_empty());
        // A subset of the host's runs.
        let fewer = vec![
            entry(0x1, 0, 0, 0, 0, 0xff),
            entry(0x8000_0008, 0, 36, 0, 0, 0),
        ];
        assert!(missing_features(&fewer, &host).is_empty());
        let more = vec![
            entry(0x1, 0, 0, 0, 1 << 26, 0x1_ffff),
            entry(0x7, 0, 0, 1 << 5, 1 << 16, 0),
            entry(0x8000_0001, 0, 0, 0, 0, (1 << 20) | (1 << 26)),
            entry(0x8000_0008, 0, 46, 0, 0, 0),
        ];
        assert_eq!(
            missing_features(&more, &host),
            vec![
                "CPUID 0x1.0 EDX bit 16".to_owned(),
                "LA57 (5-level paging) (CPUID 0x7.0 ECX bit 16)".to_owned(),
                "1 GiB pages (PDPE1GB) (CPUID 0x80000001.0 EDX bit 26)".to_owned(),
                "46 physical address bits (this host gives 39)".to_owned(),
            ]
        );
    }

    #[test]
    fn tsc_frequencies_within_250_ppm_are_the_same() {
        assert!(!tsc_differs(2_000_000, 2_000_000));
        assert!(!tsc_differs(2_000_000, 2_000_500));
        assert!(tsc_differs(2_000_000, 2_000_501));
        assert!(tsc_differs(2_000_000, 1_999_000));
        assert!(tsc_differs(0, 1));
    }
}
