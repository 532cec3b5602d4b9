//! Building and starting a VM: one linear sequence of `?` steps.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::AcpiTables;
use crate::arch::x86_64::cpuid::{
    CpuidEntry, PagingFeatures, guest_cpuid, has_nx, linux_cpuid, paging_features,
};
use crate::arch::x86_64::layout;
use crate::arch::x86_64::regs::{self, BOOT_GDT};
use crate::devices::reset::reset_vector_stub;
use crate::devices::serial::COM1_IRQ;
use crate::devices::{
    Console, DebugControl, DebugPort, IoBus, LegacyDevices, SerialDevice, SerialInterrupt,
    UnhandledAccesses, signal_sink,
};
use crate::dirty::{
    BitmapDirtyLog, DEFAULT_DIRTY_RING_BYTES, DirtyError, DirtyLog, DirtyLogBackend,
    DirtyLogChoice, DirtyRings, DirtyTracker, ManualClearDirtyLog, RingDirtyLog,
};
use crate::events::VmEvent;
use crate::guest::{BUILTIN_IMAGE, GuestMode};
use crate::kvm::{self, Hypervisor, KvmError, KvmVcpu, KvmVm, MemorySlot, kick};
use crate::linux::{BootProtocol, LinuxBoot, LinuxError};
use crate::memory::{GuestRam, MemoryError, MemorySize, create_guest_memory};
use crate::vcpu::VcpuThread;
use crate::vm::{VcpuHandle, Vm, VmParts};

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 64;

/// What a VM boots from.
#[derive(Debug, Clone)]
pub enum BootSource {
    /// The built-in test guest, in this mode (entered in 64-bit mode on boot tables).
    Builtin(GuestMode),
    /// A Linux kernel: a bzImage (64-bit boot protocol) or an ELF vmlinux (PVH entry),
    /// with its initrd and command line ([`crate::linux`]).
    Linux(LinuxBoot),
}

/// KVM dirty logging for a VM ([`crate::dirty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyConfig {
    /// Which backend (or `Auto`: chosen by capability).
    pub choice: DirtyLogChoice,
    /// With the ring backend: bytes of each vCPU's ring (a power of two from
    /// [`kvm::dirty_ring::DIRTY_RING_MIN_BYTES`] to the host's maximum); default
    /// [`DEFAULT_DIRTY_RING_BYTES`] or the host's maximum when smaller.
    pub ring_bytes: Option<u32>,
}

impl DirtyConfig {
    /// Dirty logging with backend `choice` and default ring sizes.
    pub const fn new(choice: DirtyLogChoice) -> Self {
        Self {
            choice,
            ring_bytes: None,
        }
    }
}

/// What to boot, and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM.
    pub memory: MemorySize,
    /// Number of vCPUs (1..=[`MAX_VCPUS`]). The built-in guest runs on vCPU 0 (the others
    /// spin); Linux uses them all.
    pub vcpus: u8,
    /// What to boot.
    pub boot: BootSource,
    /// Where guest console output goes.
    pub console: Console,
    /// KVM dirty logging (`None`: off, and normal runs pay nothing for it).
    pub dirty: Option<DirtyConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            memory: MemorySize::default(),
            vcpus: 1,
            boot: BootSource::Builtin(GuestMode::Normal),
            console: Console::Stdout,
            dirty: None,
        }
    }
}

impl VmConfig {
    /// The built-in guest in `mode`, with the other fields' defaults.
    pub fn builtin(mode: GuestMode) -> Self {
        Self {
            boot: BootSource::Builtin(mode),
            ..Self::default()
        }
    }
}

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// vCPU count out of range.
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    /// Not enough RAM for the built-in guest.
    #[error(
        "guest memory of {memory} is too small: the built-in guest needs at least {} MiB",
        layout::BUILTIN_GUEST_MIN_MEMORY >> 20
    )]
    MemoryTooSmall {
        /// What was asked for.
        memory: MemorySize,
    },
    /// The embedded image is larger than its slot.
    #[error("the built-in guest image is {0} bytes, more than the {max} bytes before its page-table pool", max = layout::GUEST_IMAGE_MAX_SIZE)]
    ImageTooLarge(usize),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    WriteMemory {
        /// What was being written.
        what: &'static str,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Dirty logging.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// Signal setup.
    #[error(transparent)]
    Kick(#[from] kick::KickError),
    /// Loading the Linux guest failed.
    #[error(transparent)]
    Linux(#[from] LinuxError),
    /// A stock kernel cannot run on PVM.
    #[error(
        "this host's /dev/kvm is PVM (kvm_pvm is loaded): a stock Linux kernel cannot boot on \
         it (it dies after ~53 s with KVM_EXIT_INTERNAL_ERROR on instructions PVM cannot \
         emulate: lock cmpxchg16b, xrstor64, int3 at CPL0). Boot it inside the emulated \
         hardware-KVM host instead (guest-images/hwkvm/README.md, HWKVM_COMMANDS=linux), \
         or pass --force to try anyway"
    )]
    LinuxOnPvm,
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] crate::arch::x86_64::acpi::AcpiError),
    /// Creating the serial interrupt's eventfd failed.
    #[error("cannot create the serial port's interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Spawning a vCPU thread failed.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Thread {
        /// The vCPU.
        index: u8,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks the configuration before anything is allocated (for a Linux guest, its files
/// and the host too: a stock kernel cannot run on PVM unless `force`).
pub fn validate_config(config: &VmConfig) -> Result<(), BuildError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpus));
    }
    match &config.boot {
        BootSource::Builtin(_) => {
            if config.memory.bytes() < layout::BUILTIN_GUEST_MIN_MEMORY {
                return Err(BuildError::MemoryTooSmall {
                    memory: config.memory,
                });
            }
            if BUILTIN_IMAGE.len() as u64 > layout::GUEST_IMAGE_MAX_SIZE {
                return Err(BuildError::ImageTooLarge(BUILTIN_IMAGE.len()));
            }
        }
        BootSource::Linux(linux) => {
            crate::linux::check_files(linux)?;
            if kvm::host_is_pvm() && !linux.force {
                return Err(BuildError::LinuxOnPvm);
            }
        }
    }
    Ok(())
}

/// Boots `config` and returns the running VM: one linear sequence for every boot source
/// (Firecracker's `build_microvm_for_boot`): check, guest memory, what the boot source
/// puts in it, the KVM VM, dirty logging, memory slots, the in-kernel irqchip (Linux),
/// vCPUs, devices, start.
///
/// A Linux guest gets the kernel, initrd, command line and zero page (or PVH start info)
/// from [`crate::linux::load`]; ACPI tables ([`crate::arch::x86_64::acpi`]: the MADT is how
/// it finds the other vCPUs); identity page tables for the first 4 GiB; the in-kernel
/// irqchip and PIT; COM1 on IRQ 4 through an irqfd; the CMOS RTC, the i8042 and the other
/// reset lines (0xCF9, the ACPI reset register, a stub at the reset vector: each reset
/// ends the VM, [`crate::vm::ExitOutcome::Reset`]), the ACPI sleep registers (power-off,
/// [`crate::vm::ExitOutcome::PowerOff`]) and pvpanic
/// ([`crate::vm::ExitOutcome::Panicked`]). Every vCPU gets the same boot registers, but
/// only vCPU 0 runs from them: with the in-kernel LAPIC, KVM holds the others until the
/// guest wakes them with INIT/SIPI.
///
/// With `config.dirty`, every memory slot is registered with `KVM_MEM_LOG_DIRTY_PAGES`
/// and the VM gets a [`DirtyTracker`] ([`Vm::fetch_dirty`]), for either boot source.
pub fn build_vm(config: &VmConfig) -> Result<Vm, BuildError> {
    validate_config(config)?;
    let pvm = kvm::host_is_pvm();
    let hypervisor = Hypervisor::open()?;
    let memory = create_guest_memory(config.memory)?;
    // What the boot source put in guest memory.
    let prepared = match &config.boot {
        BootSource::Builtin(mode) => Prepared::Builtin(*mode),
        BootSource::Linux(linux) => {
            let rsdp = AcpiTables::build(usize::from(config.vcpus))?.write(&memory)?;
            write(
                &memory,
                layout::RESET_VECTOR,
                &reset_vector_stub(),
                "the reset-vector stub",
            )?;
            let loaded = crate::linux::load(&memory, config.memory, linux, Some(rsdp))?;
            write_identity_tables(&memory, layout::LINUX_BOOT_PD_COUNT)?;
            Prepared::Linux(loaded)
        }
    };
    let linux = matches!(prepared, Prepared::Linux(_));
    let kvm_vm = Arc::new(hypervisor.create_vm()?);
    let (dirty_backend, ring_size) = prepare_dirty_log(&kvm_vm, config.dirty)?;
    // With rings the slots still need KVM_MEM_LOG_DIRTY_PAGES (it turns write tracking on).
    let slots = kvm_vm.register_memory(&memory, dirty_backend.is_some())?;
    kvm_vm.set_tss_address(layout::KVM_TSS_ADDRESS.0)?;
    if linux {
        // Before any vCPU: each vCPU gets its in-kernel LAPIC when created.
        kvm_vm.create_irqchip_and_pit()?;
    }
    let supported_cpuid = hypervisor.supported_cpuid()?;
    let msr_indices: Arc<[u32]> = hypervisor.msr_index_list()?.into();
    let tsc_deadline = hypervisor.has_tsc_deadline_timer();
    let cpuid = |index: u8| {
        if linux {
            linux_cpuid(&supported_cpuid, index, pvm, tsc_deadline)
        } else {
            guest_cpuid(&supported_cpuid, index, pvm)
        }
    };
    let paging = paging_features(&cpuid(0));
    kick::install_handler()?;
    let vcpus = match &prepared {
        Prepared::Linux(loaded) => linux_vcpus(
            &kvm_vm,
            &memory,
            config,
            loaded,
            paging,
            &supported_cpuid,
            &cpuid,
        )?,
        Prepared::Builtin(mode) => {
            // What the vCPUs' CPUID offers decides the paging mode the guest starts in:
            // 5-level whenever LA57 is offered, so the guest (which cannot switch it in
            // long mode) runs its whole test suite on 5-level tables there.
            write_boot_tables(&memory, paging.la57)?;
            write(
                &memory,
                layout::GUEST_IMAGE_START,
                BUILTIN_IMAGE,
                "the built-in guest",
            )?;
            (0..config.vcpus)
                .map(|index| {
                    create_vcpu(
                        &kvm_vm,
                        index,
                        &cpuid(index),
                        &supported_cpuid,
                        paging.la57,
                        *mode,
                        config,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let (dirty, rings) = dirty_tracking(&kvm_vm, &memory, slots, &vcpus, dirty_backend, ring_size)?;
    let (serial, legacy) = if linux {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        kvm_vm.register_irqfd(&irq, COM1_IRQ)?;
        (
            SerialDevice::with_interrupt(config.console.clone(), SerialInterrupt::Irqfd(irq)),
            Some(Arc::new(Mutex::new(LegacyDevices::default()))),
        )
    } else {
        (SerialDevice::new(config.console.clone()), None)
    };
    let linux_guest = linux;
    let linux = match prepared {
        Prepared::Linux(loaded) => Some(loaded),
        _ => None,
    };
    start(
        Machine {
            cpuids: (0..config.vcpus).map(&cpuid).collect(),
            kvm_vm,
            memory,
            vcpus,
            paging,
            dirty,
            dirty_rings: rings,
            serial,
            legacy,
            linux,
            msr_indices,
            irqchip: linux_guest,
            memory_watches: Vec::new(),
            start_paused: false,
            boot: boot_record(config),
            debug_arguments: Vec::new(),
        },
        &config.console,
    )
}

/// What `config` boots, for the record ([`crate::vm::BootRecord`]).
fn boot_record(config: &VmConfig) -> crate::vm::BootRecord {
    let (source, mode, linux) = match &config.boot {
        BootSource::Builtin(mode) => ("builtin", Some(mode.name().to_owned()), None),
        BootSource::Linux(linux) => ("linux", None, Some(linux)),
    };
    crate::vm::BootRecord {
        source: source.to_owned(),
        mode,
        kernel: linux.map(|l| l.kernel.clone()),
        initrd: linux.and_then(|l| l.initrd.clone()),
        cmdline: linux.map(|l| l.cmdline.clone()),
        memory_bytes: config.memory.bytes(),
        vcpus: config.vcpus,
    }
}

/// Turns on what `dirty` asks for before the memory slots and vCPUs exist: manual
/// protect before the slots (their log is manual from the start), rings before any vCPU
/// (KVM allocates each vCPU's ring when creating it). Returns the backend and the ring
/// size, if rings.
pub(crate) fn prepare_dirty_log(
    kvm_vm: &KvmVm,
    dirty: Option<DirtyConfig>,
) -> Result<(Option<DirtyLogBackend>, Option<u32>), BuildError> {
    let caps = kvm_vm.dirty_log_capabilities();
    let dirty_backend = dirty.map(|d| d.choice.resolve(caps)).transpose()?;
    let mut ring_size = None;
    match dirty_backend {
        Some(DirtyLogBackend::ManualClear) => kvm_vm.set_manual_dirty_log_protect(true)?,
        Some(DirtyLogBackend::Ring) => {
            let max = caps.dirty_ring().map_or(0, |(_, max)| max);
            let bytes = dirty
                .and_then(|d| d.ring_bytes)
                .unwrap_or(DEFAULT_DIRTY_RING_BYTES.min(max));
            kvm_vm.enable_dirty_ring(bytes)?;
            ring_size = Some(bytes);
        }
        Some(DirtyLogBackend::Bitmap) | None => {}
    }
    Ok((dirty_backend, ring_size))
}

/// The dirty tracker of `backend` over the registered `slots`, once the vCPUs exist
/// (their rings are mapped here).
pub(crate) fn dirty_tracking(
    kvm_vm: &Arc<KvmVm>,
    memory: &GuestRam,
    slots: Vec<MemorySlot>,
    vcpus: &[KvmVcpu],
    backend: Option<DirtyLogBackend>,
    ring_size: Option<u32>,
) -> Result<(Option<DirtyTracker>, Option<Arc<DirtyRings>>), BuildError> {
    let rings = ring_size
        .map(|bytes| map_dirty_rings(kvm_vm, &slots, vcpus, bytes))
        .transpose()?;
    let dirty = match (backend, &rings) {
        (None, _) => None,
        (Some(backend), rings) => {
            let log: Box<dyn DirtyLog> = match (backend, rings) {
                (DirtyLogBackend::Ring, Some(rings)) => Box::new(RingDirtyLog::new(rings.clone())),
                (DirtyLogBackend::ManualClear, _) => {
                    Box::new(ManualClearDirtyLog::new(kvm_vm.clone(), slots))
                }
                _ => Box::new(BitmapDirtyLog::new(kvm_vm.clone(), slots)),
            };
            Some(DirtyTracker::new(log, memory.clone()))
        }
    };
    Ok((dirty, rings))
}

/// Everything a VM is made of once memory, vCPUs, devices and the boot source are set
/// up: what [`start`] turns into a running [`Vm`] (a boot or a restore).
pub(crate) struct Machine {
    /// Each vCPU's CPUID, as given (a snapshot records it).
    pub(crate) cpuids: Vec<Vec<CpuidEntry>>,
    pub(crate) kvm_vm: Arc<KvmVm>,
    pub(crate) memory: GuestRam,
    pub(crate) vcpus: Vec<KvmVcpu>,
    pub(crate) paging: PagingFeatures,
    pub(crate) dirty: Option<DirtyTracker>,
    pub(crate) dirty_rings: Option<Arc<DirtyRings>>,
    pub(crate) serial: SerialDevice,
    pub(crate) legacy: Option<Arc<Mutex<LegacyDevices>>>,
    pub(crate) linux: Option<crate::linux::LoadedLinux>,
    /// The MSRs a snapshot saves.
    pub(crate) msr_indices: Arc<[u32]>,
    /// Whether the VM has the in-kernel interrupt controllers and PIT.
    pub(crate) irqchip: bool,
    /// Watches of the files `memory` maps (a restored VM's memory file), kept while it is.
    pub(crate) memory_watches: Vec<crate::sigbus::FaultWatch>,
    /// Start with every vCPU paused ([`Vm::resume`] lets them run).
    pub(crate) start_paused: bool,
    /// What it is booted from.
    pub(crate) boot: crate::vm::BootRecord,
    /// Each vCPU's debug-port argument latch at the start (a restored vCPU's; a boot:
    /// none, all 0).
    pub(crate) debug_arguments: Vec<u64>,
}

/// A boot source once its part of guest memory is written.
enum Prepared {
    Builtin(GuestMode),
    Linux(crate::linux::LoadedLinux),
}

/// The vCPUs of a Linux guest: the CPUID, MSRs, FPU and the entry state its boot protocol
/// wants (64-bit, in 5-level paging when the kernel proper is entered on a CPU with
/// LA57; or PVH's 32-bit entry), on the identity tables written before.
fn linux_vcpus(
    kvm_vm: &KvmVm,
    memory: &GuestRam,
    config: &VmConfig,
    loaded: &crate::linux::LoadedLinux,
    paging: PagingFeatures,
    supported_cpuid: &[CpuidEntry],
    cpuid: &dyn Fn(u8) -> Vec<CpuidEntry>,
) -> Result<Vec<KvmVcpu>, BuildError> {
    // A kernel proper entered directly cannot switch to 5-level paging itself (long mode
    // cannot toggle LA57): it gets it at entry, as its decompressor would have set it.
    let five_level = matches!(
        loaded.protocol,
        BootProtocol::Vmlinux64 { five_level: true }
    ) && paging.la57;
    if five_level {
        let pml5e = layout::BOOT_PML4_START.0 | 0x3; // present | writable
        write(
            memory,
            layout::LINUX_BOOT_PML5_START,
            &pml5e.to_le_bytes(),
            "the boot PML5",
        )?;
    }
    let nx = has_nx(supported_cpuid);
    (0..config.vcpus)
        .map(|index| {
            let vcpu = kvm_vm.create_vcpu(index)?;
            vcpu.set_cpuid(&cpuid(index))?;
            vcpu.set_msrs(&regs::boot_msrs())?;
            vcpu.set_default_fpu()?;
            let current = vcpu.special_registers()?;
            let (sregs, regs) = match loaded.protocol {
                BootProtocol::Linux64 | BootProtocol::Vmlinux64 { .. } => {
                    let mut sregs = regs::long_mode_sregs(&current, nx);
                    if five_level {
                        sregs =
                            regs::with_five_level_paging(sregs, layout::LINUX_BOOT_PML5_START.0);
                    }
                    (
                        sregs,
                        regs::linux_entry_registers(loaded.entry.0, loaded.boot_params.0),
                    )
                }
                BootProtocol::Pvh => (
                    regs::pvh_entry_sregs(&current),
                    regs::pvh_entry_registers(loaded.entry.0, loaded.boot_params.0),
                ),
            };
            vcpu.set_special_registers(&sregs)?;
            vcpu.set_registers(&regs)?;
            vcpu.update_lapic_lints(regs::boot_lint_value)?;
            Ok(vcpu)
        })
        .collect()
}

/// Maps every vCPU's dirty ring, shared by the VMM thread and the vCPU threads.
fn map_dirty_rings(
    kvm_vm: &Arc<KvmVm>,
    slots: &[MemorySlot],
    vcpus: &[KvmVcpu],
    bytes: u32,
) -> Result<Arc<DirtyRings>, BuildError> {
    let rings = vcpus
        .iter()
        .map(|vcpu| vcpu.map_dirty_ring(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(DirtyRings::new(
        kvm_vm.clone(),
        slots.to_vec(),
        rings,
        bytes,
    )))
}

/// Writes the boot GDT, the empty IDT and the identity page tables for [0, 1 GiB);
/// with `la57`, also the boot PML5 whose entry 0 points to the boot PML4 (the root
/// of a vCPU entered with [`regs::with_five_level_paging`]).
fn write_boot_tables(memory: &GuestRam, la57: bool) -> Result<(), BuildError> {
    write_identity_tables(memory, 1)?;
    if la57 {
        let pml5e = layout::BOOT_PML4_START.0 | 0x3; // present | writable
        write(
            memory,
            layout::BOOT_PML5_START,
            &pml5e.to_le_bytes(),
            "the boot PML5",
        )?;
    }
    Ok(())
}

/// Writes the boot GDT, the empty IDT and identity page tables for the first
/// `gib` GiB (`gib` PDs of 2 MiB leaves from [`layout::BOOT_PD_START`], at most
/// [`layout::LINUX_BOOT_PD_COUNT`]).
fn write_identity_tables(memory: &GuestRam, gib: u64) -> Result<(), BuildError> {
    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(memory, layout::BOOT_GDT_START, &gdt, "the boot GDT")?;
    write(memory, layout::BOOT_IDT_START, &[0; 8], "the boot IDT")?;
    let table_flags = 0x3; // present | writable
    let pml4e = layout::BOOT_PDPT_START.0 | table_flags;
    write(
        memory,
        layout::BOOT_PML4_START,
        &pml4e.to_le_bytes(),
        "the boot PML4",
    )?;
    let gib = gib.clamp(1, layout::LINUX_BOOT_PD_COUNT);
    let pdpt: Vec<u8> = (0..gib)
        .flat_map(|i| ((layout::BOOT_PD_START.0 + i * 0x1000) | table_flags).to_le_bytes())
        .collect();
    write(memory, layout::BOOT_PDPT_START, &pdpt, "the boot PDPT")?;
    let huge_page = 1u64 << 21;
    let pd: Vec<u8> = (0..gib * layout::BOOT_IDENTITY_MAP_SIZE / huge_page)
        .flat_map(|i| ((i * huge_page) | table_flags | 0x80).to_le_bytes())
        .collect();
    write(memory, layout::BOOT_PD_START, &pd, "the boot PDs")
}

fn write(
    memory: &GuestRam,
    at: GuestAddress,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), BuildError> {
    memory
        .write_slice(bytes, at)
        .map_err(|source| BuildError::WriteMemory { what, source })
}

/// Creates vCPU `index` of the built-in guest in 64-bit mode: CPUID, FPU, special and
/// general registers; with `la57` (the CPUID it gets offers LA57), in 5-level paging on
/// the boot PML5.
fn create_vcpu(
    kvm_vm: &KvmVm,
    index: u8,
    cpuid: &[CpuidEntry],
    supported_cpuid: &[CpuidEntry],
    la57: bool,
    mode: GuestMode,
    config: &VmConfig,
) -> Result<KvmVcpu, BuildError> {
    let vcpu = kvm_vm.create_vcpu(index)?;
    // Before the special registers: KVM accepts CR4.LA57 only when the CPUID has it.
    vcpu.set_cpuid(cpuid)?;
    vcpu.set_default_fpu()?;
    let mut sregs = regs::long_mode_sregs(&vcpu.special_registers()?, has_nx(supported_cpuid));
    if la57 {
        sregs = regs::with_five_level_paging(sregs, layout::BOOT_PML5_START.0);
    }
    vcpu.set_special_registers(&sregs)?;
    let entry = if index == 0 {
        layout::GUEST_IMAGE_START
    } else {
        layout::GUEST_AP_ENTRY
    };
    vcpu.set_registers(&regs::entry_registers(
        entry.0,
        mode.register_value(),
        config.memory.bytes(),
    ))?;
    Ok(vcpu)
}

/// Starts one thread per vCPU and returns the VM handle, the guest's console on
/// `console`. `legacy` (the Linux VM's RTC and i8042) goes on every vCPU's bus when given.
pub(crate) fn start(machine: Machine, console: &Console) -> Result<Vm, BuildError> {
    let Machine {
        cpuids,
        kvm_vm,
        memory,
        vcpus,
        paging,
        dirty,
        dirty_rings,
        serial,
        legacy,
        linux,
        msr_indices,
        irqchip,
        memory_watches,
        start_paused,
        boot,
        debug_arguments,
    } = machine;
    let (events_tx, events) = channel::<VmEvent>();
    let control = Arc::new(DebugControl::default());
    // The debug ports' signals, as events.
    let signals = signal_sink(events_tx.clone());
    let unhandled = Arc::new(UnhandledAccesses::default());
    let serial = Arc::new(Mutex::new(serial));
    let mut vm = Vm::assemble(
        VmParts {
            events,
            waker: crate::events::VmWaker(events_tx.clone()),
            control: control.clone(),
            unhandled: unhandled.clone(),
            kvm_vm,
            memory,
            paging,
            dirty,
            dirty_rings: dirty_rings.clone(),
            linux,
            console: console.clone(),
            msr_indices,
            irqchip,
            memory_watches,
            cpuids,
            paused: start_paused,
            serial: serial.clone(),
            legacy: legacy.clone(),
            boot,
        },
        vcpus.len(),
    );
    for (index, vcpu) in (0u8..).zip(vcpus) {
        let (requests_tx, requests) = channel();
        let (responses_tx, responses) = channel();
        let mut bus = IoBus::new(
            DebugPort::new(control.clone(), signals.clone(), console.clone()).with_argument(
                debug_arguments
                    .get(usize::from(index))
                    .copied()
                    .unwrap_or(0),
            ),
            serial.clone(),
            unhandled.clone(),
        );
        if let Some(legacy) = &legacy {
            bus = bus.with_legacy(legacy.clone());
        }
        let thread = VcpuThread {
            index,
            vcpu,
            bus,
            requests,
            responses: responses_tx,
            events: events_tx.clone(),
            dirty_rings: dirty_rings.clone(),
            start_paused,
        };
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || thread.run())
            .map_err(|source| BuildError::Thread { index, source })?;
        // On an early return, dropping `vm` stops the threads started so far.
        vm.add_vcpu(VcpuHandle {
            index,
            thread: Some(handle),
            requests: requests_tx,
            responses,
        });
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::Decompress;

    #[test]
    fn rejects_zero_vcpus_and_tiny_memory() {
        let config = VmConfig {
            vcpus: 0,
            ..VmConfig::default()
        };
        assert!(matches!(
            validate_config(&config),
            Err(BuildError::VcpuCount(0))
        ));
        let config = VmConfig {
            memory: MemorySize::from_bytes(8 << 20).unwrap_or_default(),
            ..VmConfig::default()
        };
        let err = validate_config(&config).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("guest memory of 8 MiB is too small: the built-in guest needs at least 32 MiB")
        );
        assert!(validate_config(&VmConfig::default()).is_ok());
    }

    #[test]
    fn builtin_image_is_embedded_and_fits() {
        assert!(!BUILTIN_IMAGE.is_empty());
        assert!(BUILTIN_IMAGE.len() as u64 <= layout::GUEST_IMAGE_MAX_SIZE);
        // The AP entry is a `pause` (f3 90) at offset 0x10.
        assert_eq!(&BUILTIN_IMAGE[0x10..0x12], &[0xf3, 0x90]);
    }

    #[test]
    fn boot_tables_identity_map_the_first_gib() {
        let Ok(memory) = create_guest_memory(MemorySize::default()) else {
            panic!("cannot map test memory");
        };
        assert!(write_boot_tables(&memory, false).is_ok());
        // 4-level: no PML5 written.
        let pml5e: u64 = memory.read_obj(layout::BOOT_PML5_START).unwrap_or(1);
        assert_eq!(pml5e, 0);
        let pml4e: u64 = memory.read_obj(layout::BOOT_PML4_START).unwrap_or(0);
        assert_eq!(pml4e, layout::BOOT_PDPT_START.0 | 3);
        let last: u64 = memory
            .read_obj(GuestAddress(layout::BOOT_PD_START.0 + 511 * 8))
            .unwrap_or(0);
        assert_eq!(last, (511 << 21) | 0x83);
        // Only one PDPT entry: nothing above 1 GiB is mapped for the built-in guest.
        let second: u64 = memory
            .read_obj(GuestAddress(layout::BOOT_PDPT_START.0 + 8))
            .unwrap_or(1);
        assert_eq!(second, 0);
    }

    #[test]
    fn la57_boot_tables_add_a_pml5_over_the_same_identity_map() {
        let Ok(memory) = create_guest_memory(MemorySize::default()) else {
            panic!("cannot map test memory");
        };
        assert!(write_boot_tables(&memory, true).is_ok());
        let pml5: Vec<u64> = (0..512u64)
            .map(|i| {
                memory
                    .read_obj(GuestAddress(layout::BOOT_PML5_START.0 + i * 8))
                    .unwrap_or(u64::MAX)
            })
            .collect();
        assert_eq!(pml5[0], layout::BOOT_PML4_START.0 | 3);
        assert!(pml5[1..].iter().all(|e| *e == 0));
        let pml4e: u64 = memory.read_obj(layout::BOOT_PML4_START).unwrap_or(0);
        assert_eq!(pml4e, layout::BOOT_PDPT_START.0 | 3);
        // The PML5 is the root the LA57 vCPU state points at.
        let sregs = regs::with_five_level_paging(
            regs::long_mode_sregs(&regs::SpecialRegisters::default(), true),
            layout::BOOT_PML5_START.0,
        );
        assert_eq!(sregs.cr3, layout::BOOT_PML5_START.0);
        assert_ne!(sregs.cr4 & regs::CR4_LA57, 0);
    }

    #[test]
    fn linux_boot_tables_identity_map_4_gib() {
        let Ok(memory) = create_guest_memory(MemorySize::default()) else {
            panic!("cannot map test memory");
        };
        assert!(write_identity_tables(&memory, layout::LINUX_BOOT_PD_COUNT).is_ok());
        for i in 0..4u64 {
            let pdpte: u64 = memory
                .read_obj(GuestAddress(layout::BOOT_PDPT_START.0 + i * 8))
                .unwrap_or(0);
            assert_eq!(pdpte, (layout::BOOT_PD_START.0 + i * 0x1000) | 3);
        }
        // The last 2 MiB leaf maps [4 GiB - 2 MiB, 4 GiB).
        let last: u64 = memory
            .read_obj(GuestAddress(layout::BOOT_PD_START.0 + 4 * 0x1000 - 8))
            .unwrap_or(0);
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
        const { assert!(layout::BOOT_PD_START.0 + 4 * 0x1000 <= layout::CMDLINE_START.0) };
    }

    #[test]
    fn linux_config_errors_are_clear() {
        let linux = LinuxBoot {
            kernel: "/nonexistent/bzImage".into(),
            initrd: None,
            cmdline: String::new(),
            force: true,
            decompress: Decompress::Vmm,
        };
        for vcpus in [0, MAX_VCPUS + 1] {
            let config = VmConfig {
                vcpus,
                boot: BootSource::Linux(linux.clone()),
                ..VmConfig::default()
            };
            let Err(e) = build_vm(&config) else {
                panic!("{vcpus} vCPUs must be refused");
            };
            assert!(e.to_string().contains("--vcpus"), "{e}");
        }
        // Several vCPUs are fine (the MADT lists them); the missing kernel is the error.
        let config = VmConfig {
            vcpus: 2,
            boot: BootSource::Linux(linux.clone()),
            ..VmConfig::default()
        };
        let Err(e) = build_vm(&config) else {
            panic!("a missing kernel must be refused");
        };
        assert!(e.to_string().contains("/nonexistent/bzImage"), "{e}");
        assert!(
            BuildError::LinuxOnPvm
                .to_string()
                .contains("guest-images/hwkvm")
        );
    }
}
