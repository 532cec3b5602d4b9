//! A running VM: its vCPU threads, guest memory and event channel.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walker::{ContextError, ControlRegisters, Gva, PagingContext};

use crate::arch::x86_64::cpuid::PagingFeatures;
use crate::arch::x86_64::regs::RegisterDump;
use crate::devices::{DebugControl, ResetMethod, UnhandledAccesses, UnhandledCounts};
use crate::dirty::{
    DirtyError, DirtyLogBackend, DirtyRings, DirtySet, DirtyTracker, RingStats, ScanReport,
    scan_space,
};
use crate::events::VmEvent;
use crate::exit::VcpuStop;
use crate::kvm::state::{VcpuKvmState, VmKvmState};
use crate::kvm::{KvmError, KvmTranslation, KvmVm, kick};
use crate::memory::GuestRam;
use crate::vcpu::{VcpuRequest, VcpuResponse, VcpuState};

/// How long a vCPU thread may take to answer a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the VM handle.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A vCPU thread is gone (it panicked or the VM was torn down).
    #[error("vCPU {0} is no longer running its thread")]
    VcpuGone(u8),
    /// A vCPU thread did not answer in time.
    #[error("vCPU {vcpu} did not answer a {request} request within {timeout:?}")]
    NoAnswer {
        /// The vCPU.
        vcpu: u8,
        /// What was asked.
        request: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// A vCPU thread answered something else than what was asked.
    #[error("vCPU {0} answered out of turn")]
    OutOfTurn(u8),
    /// Signalling a vCPU thread failed.
    #[error(transparent)]
    Kick(#[from] kick::KickError),
    /// A KVM call on a vCPU failed.
    #[error("vCPU {vcpu}: {source}")]
    Kvm {
        /// The vCPU.
        vcpu: u8,
        /// The KVM error.
        #[source]
        source: KvmError,
    },
    /// Reading or setting the VM's own KVM state (clock, irqchip, PIT) failed.
    #[error("the VM's KVM state: {0}")]
    VmState(#[source] KvmError),
    /// There is no such vCPU.
    #[error("there is no vCPU {vcpu} (the VM has {count})")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: usize,
        /// How many there are.
        count: usize,
    },
    /// Translation needs the vCPUs paused.
    #[error("translate needs the VM paused (call pause first)")]
    NotPaused,
    /// Nothing happened in time.
    #[error("timed out after {0:?} waiting for the guest")]
    Timeout(Duration),
    /// The guest stopped while [`Vm::wait_for`] waited for something else.
    #[error("the guest stopped {waiting}: {outcome}")]
    Stopped {
        /// What the wait was for, as the message says it ("before reporting READY").
        waiting: &'static str,
        /// How the VM ended.
        outcome: Box<ExitOutcome>,
    },
    /// All vCPU threads are gone and no event will come.
    #[error("the VM's event channel closed")]
    EventsClosed,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// The guest reported DONE and halted; `status` 0 means success.
    Done {
        /// The guest's status.
        status: u64,
    },
    /// The guest asked for a machine reset (a Linux guest's `reboot -f`, `poweroff -f`
    /// without ACPI, or `panic=-1` without pvpanic): a clean end, status 0 unless the
    /// caller counts resets as failures ([`OnReset`]). Whether the guest got where it
    /// should have is for its console output to say.
    Reset {
        /// The vCPU that asked.
        vcpu: u8,
        /// How it asked.
        method: ResetMethod,
    },
    /// The guest reported a kernel panic through pvpanic: a crash.
    Panicked {
        /// The vCPU that reported it.
        vcpu: u8,
    },
    /// The guest's kernel panicked (its console printed [`KERNEL_PANIC`]) and then asked
    /// for a reset, as `panic=N` makes it do: a crash, though the reset line is the same
    /// as a clean reboot's (a panic before a pvpanic driver is loaded looks like this).
    PanicReset {
        /// The vCPU that asked for the reset.
        vcpu: u8,
        /// How it asked.
        method: ResetMethod,
    },
    /// The guest powered off through ACPI (a Linux guest's `poweroff`): a clean end with
    /// status 0, judged like [`ExitOutcome::Reset`].
    PowerOff {
        /// The vCPU that asked.
        vcpu: u8,
    },
    /// A vCPU stopped without a DONE from the guest, or in a failure state.
    Failed {
        /// Which vCPU.
        vcpu: u8,
        /// Why it stopped.
        stop: VcpuStop,
        /// Its registers at the time.
        dump: Option<Box<RegisterDump>>,
    },
}

/// What Linux prints when it panics (`panic()`'s first words): a console that says it
/// before a reset is a crash's.
pub const KERNEL_PANIC: &[u8] = b"Kernel panic - not syncing";

/// Exit status of `vmm` when the VM dies: the guest crashed (a triple fault with no reset
/// request before it, a pvpanic report) or KVM stopped it (internal error, halt without
/// DONE, ...).
pub const EXIT_VM_FAILURE: u8 = 100;
/// Exit status of `vmm` when the guest reset and [`OnReset::Fail`] was asked for (its
/// help text says 102).
pub const EXIT_GUEST_RESET: u8 = 102;

/// What a guest reset means for `vmm`'s exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnReset {
    /// A reset is a clean end: status 0 (as QEMU's `-no-reboot`).
    #[default]
    Success,
    /// A reset is a failure: status 102 (for runs that expect the guest to power off,
    /// where a reset means `panic=-1` or a reboot nobody asked for).
    Fail,
}

named_choices!(OnReset {
    Success => "success", "a guest reset is a clean end: status 0";
    Fail => "fail", "a guest reset is a failure: status 102";
});

impl ExitOutcome {
    /// Whether the guest reported success.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Self::Done { status: 0 } | Self::Reset { .. } | Self::PowerOff { .. }
        )
    }

    /// Whether the guest crashed: a triple fault with no reset request before it, a
    /// panic it reported through pvpanic, or a reset its console says followed a panic.
    pub fn is_guest_crash(&self) -> bool {
        matches!(
            self,
            Self::Panicked { .. }
                | Self::PanicReset { .. }
                | Self::Failed {
                    stop: VcpuStop::Shutdown,
                    ..
                }
        )
    }

    /// `vmm`'s exit status for this end: 0 when the guest powered off, reset (unless
    /// `on_reset` says otherwise) or reported DONE 0; its DONE status (1..=99) when it
    /// reported a failure; [`EXIT_VM_FAILURE`] when it crashed or the VM died.
    pub fn exit_status(&self, on_reset: OnReset) -> u8 {
        match self {
            Self::Done { status: 0 } | Self::PowerOff { .. } => 0,
            Self::Reset { .. } => match on_reset {
                OnReset::Success => 0,
                OnReset::Fail => EXIT_GUEST_RESET,
            },
            Self::Done { status } => u8::try_from((*status).clamp(1, 99)).unwrap_or(99),
            Self::Panicked { .. } | Self::PanicReset { .. } | Self::Failed { .. } => {
                EXIT_VM_FAILURE
            }
        }
    }

    /// A one-line verdict for `vmm`'s messages: what kind of end this was.
    pub fn verdict(&self) -> &'static str {
        match self {
            _ if self.is_guest_crash() => "the guest crashed",
            Self::Failed { .. } => "the VM failed",
            Self::Reset { .. } => "the guest reset",
            Self::PowerOff { .. } => "the guest powered off",
            Self::Done { .. } | Self::Panicked { .. } | Self::PanicReset { .. } => {
                "the guest finished"
            }
        }
    }
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done { status: 0 } => {
                write!(f, "the guest reported DONE with status 0 (success)")
            }
            Self::Done { status } => write!(f, "the guest reported failure status {status:#x}"),
            Self::Reset { vcpu, method } => write!(
                f,
                "vCPU {vcpu}: the guest asked for a reset ({method}): the VM ended cleanly"
            ),
            Self::Panicked { vcpu } => write!(
                f,
                "vCPU {vcpu}: the guest reported a kernel panic (pvpanic, port {:#x})",
                crate::devices::pvpanic::PVPANIC_PORT
            ),
            Self::PanicReset { vcpu, method } => write!(
                f,
                "vCPU {vcpu}: the guest's kernel panicked (its console says \"Kernel panic - not syncing\") and then asked for a reset ({method})"
            ),
            Self::PowerOff { vcpu } => write!(
                f,
                "vCPU {vcpu}: the guest powered off (ACPI soft-off): the VM ended cleanly"
            ),
            Self::Failed { vcpu, stop, dump } => {
                if *stop == VcpuStop::Halted {
                    write!(f, "vCPU {vcpu} halted without the guest reporting DONE")?;
                } else {
                    write!(f, "vCPU {vcpu} stopped: {stop}")?;
                }
                if let Some(dump) = dump {
                    write!(f, "\nregisters of vCPU {vcpu}:\n{dump}")?;
                }
                Ok(())
            }
        }
    }
}

/// What a VM was booted from and with, for the record: a snapshot keeps it (and a
/// restored VM passes it on); nothing boots from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootRecord {
    /// `builtin` or `linux`.
    pub source: String,
    /// The built-in guest's mode (`normal`, `dirty`, ...).
    pub mode: Option<String>,
    /// The Linux kernel as given.
    pub kernel: Option<std::path::PathBuf>,
    /// The initrd as given.
    pub initrd: Option<std::path::PathBuf>,
    /// The kernel command line.
    pub cmdline: Option<String>,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u8,
}

/// The VMM's side of one vCPU thread.
#[derive(Debug)]
pub(crate) struct VcpuHandle {
    pub index: u8,
    pub thread: Option<JoinHandle<()>>,
    pub requests: Sender<VcpuRequest>,
    pub responses: Receiver<VcpuResponse>,
}

impl VcpuHandle {
    fn send(&self, request: VcpuRequest) -> Result<(), VmError> {
        self.requests
            .send(request)
            .map_err(|_| VmError::VcpuGone(self.index))
    }

    fn kick(&self) -> Result<(), VmError> {
        match &self.thread {
            Some(thread) if !thread.is_finished() => Ok(kick::kick(thread)?),
            _ => Err(VmError::VcpuGone(self.index)),
        }
    }

    fn answer(&self, request: &'static str) -> Result<VcpuResponse, VmError> {
        self.responses
            .recv_timeout(REQUEST_TIMEOUT)
            .map_err(|e| match e {
                RecvTimeoutError::Timeout => VmError::NoAnswer {
                    vcpu: self.index,
                    request,
                    timeout: REQUEST_TIMEOUT,
                },
                RecvTimeoutError::Disconnected => VmError::VcpuGone(self.index),
            })
    }
}

/// A running VM.
///
/// Dropping it stops and joins every vCPU thread. Its fields are private: other modules
/// use its lifecycle API (pause, registers, resume, memory, translate, dirty log, events,
/// guest commands, stop); only the builder assembles one.
#[derive(Debug)]
pub struct Vm {
    // Field order: the vCPU threads end (in `Drop`) before the VM fd and memory go.
    vcpus: Vec<VcpuHandle>,
    events: Receiver<VmEvent>,
    waker: crate::events::VmWaker,
    control: Arc<DebugControl>,
    unhandled: Arc<UnhandledAccesses>,
    paused: AtomicBool,
    outcome: std::sync::Mutex<Option<ExitOutcome>>,
    /// Watches of the file a restored VM's memory maps: they end before the mapping does.
    memory_watches: Vec<crate::sigbus::FaultWatch>,
    kvm_vm: Arc<KvmVm>,
    memory: GuestRam,
    paging: PagingFeatures,
    dirty: Option<std::sync::Mutex<DirtyTracker>>,
    dirty_rings: Option<Arc<DirtyRings>>,
    linux: Option<crate::linux::LoadedLinux>,
    /// The guest's console (its tail, where the console keeps one).
    console: crate::devices::Console,
    /// The MSRs a snapshot saves ([`crate::kvm::Hypervisor::msr_index_list`]).
    msr_indices: Arc<[u32]>,
    /// Whether the VM has the in-kernel interrupt controllers and PIT.
    irqchip: bool,
    /// Each vCPU's CPUID, as given.
    cpuids: Vec<Vec<crate::arch::x86_64::cpuid::CpuidEntry>>,
    /// COM1 (also on every vCPU's bus).
    serial: Arc<std::sync::Mutex<crate::devices::SerialDevice>>,
    /// The Linux VM's legacy devices (also on every vCPU's bus).
    legacy: Option<Arc<std::sync::Mutex<crate::devices::LegacyDevices>>>,
    /// What it was booted from.
    boot: BootRecord,
}

/// What the builder hands over to make a [`Vm`] (its vCPU threads are added after).
pub(crate) struct VmParts {
    pub(crate) events: Receiver<VmEvent>,
    /// A sender of the same channel, for [`Vm::waker`].
    pub(crate) waker: crate::events::VmWaker,
    pub(crate) control: Arc<DebugControl>,
    pub(crate) unhandled: Arc<UnhandledAccesses>,
    pub(crate) kvm_vm: Arc<KvmVm>,
    pub(crate) memory: GuestRam,
    pub(crate) paging: PagingFeatures,
    pub(crate) dirty: Option<DirtyTracker>,
    pub(crate) dirty_rings: Option<Arc<DirtyRings>>,
    pub(crate) linux: Option<crate::linux::LoadedLinux>,
    pub(crate) console: crate::devices::Console,
    pub(crate) msr_indices: Arc<[u32]>,
    pub(crate) irqchip: bool,
    pub(crate) memory_watches: Vec<crate::sigbus::FaultWatch>,
    pub(crate) cpuids: Vec<Vec<crate::arch::x86_64::cpuid::CpuidEntry>>,
    /// The vCPU threads start paused.
    pub(crate) paused: bool,
    pub(crate) serial: Arc<std::sync::Mutex<crate::devices::SerialDevice>>,
    pub(crate) legacy: Option<Arc<std::sync::Mutex<crate::devices::LegacyDevices>>>,
    pub(crate) boot: BootRecord,
}

impl Vm {
    /// A VM of `parts` with no vCPU thread yet.
    pub(crate) fn assemble(parts: VmParts, vcpus: usize) -> Self {
        Self {
            vcpus: Vec::with_capacity(vcpus),
            events: parts.events,
            waker: parts.waker,
            control: parts.control,
            unhandled: parts.unhandled,
            paused: AtomicBool::new(parts.paused),
            outcome: Default::default(),
            memory_watches: parts.memory_watches,
            kvm_vm: parts.kvm_vm,
            memory: parts.memory,
            paging: parts.paging,
            dirty: parts.dirty.map(std::sync::Mutex::new),
            dirty_rings: parts.dirty_rings,
            linux: parts.linux,
            console: parts.console,
            msr_indices: parts.msr_indices,
            irqchip: parts.irqchip,
            cpuids: parts.cpuids,
            serial: parts.serial,
            legacy: parts.legacy,
            boot: parts.boot,
        }
    }

    /// Adds the next vCPU's thread (the builder, in index order).
    pub(crate) fn add_vcpu(&mut self, vcpu: VcpuHandle) {
        self.vcpus.push(vcpu);
    }

    /// Whether the file a restored VM's memory maps shrank under it (what the VMM read
    /// past its new end were zeros, not the snapshot's bytes).
    pub fn memory_file_shrank(&self) -> bool {
        self.memory_watches
            .iter()
            .any(crate::sigbus::FaultWatch::faulted)
    }

    /// A handle another thread uses to interrupt [`Vm::wait_event`] with a
    /// [`VmEvent::Woken`] (the control API's requests).
    pub fn waker(&self) -> crate::events::VmWaker {
        self.waker.clone()
    }

    /// Whether the vCPUs are paused ([`Vm::pause`]).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

impl Vm {
    /// What was loaded where, for a Linux guest.
    pub fn linux(&self) -> Option<&crate::linux::LoadedLinux> {
        self.linux.as_ref()
    }

    /// Guest RAM (shared with the running guest: reads may race its writes; use
    /// single `load`s of naturally aligned values to avoid torn reads).
    ///
    /// Writes through it (vm-memory's `Bytes` API) are recorded for dirty scans
    /// ([`crate::dirty`]).
    pub fn guest_memory(&self) -> &GuestRam {
        &self.memory
    }

    /// What the VM was booted from and with (a restored VM: what the snapshot's was).
    pub fn boot_record(&self) -> &BootRecord {
        &self.boot
    }

    /// What the guest's CPUID says about paging.
    pub fn paging_features(&self) -> PagingFeatures {
        self.paging
    }

    /// How the walker must read the tables of a vCPU in `state`, with its own CR3 or
    /// another root `cr3` (another address space of the same guest).
    pub fn paging_context(
        &self,
        state: &VcpuState,
        cr3: Option<u64>,
    ) -> Result<PagingContext, ContextError> {
        let mut regs = ControlRegisters::from(state);
        if let Some(cr3) = cr3 {
            regs.cr3 = cr3;
        }
        Ok(PagingContext::new(regs)?
            .with_phys_addr_bits(self.paging.phys_addr_bits)?
            .with_gbpages(self.paging.gbpages))
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// Accesses no device claimed so far.
    pub fn unhandled_accesses(&self) -> UnhandledCounts {
        self.unhandled.counts()
    }

    /// The KVM VM (for later features such as dirty logging).
    pub fn kvm_vm(&self) -> &KvmVm {
        &self.kvm_vm
    }

    /// Stops every vCPU and returns their states, read while all of them are stopped.
    /// Works whether the guest exits often or never; vCPUs that already stopped for
    /// good answer too (with `finished` set). Idempotent.
    pub fn pause(&self) -> Result<Vec<VcpuState>, VmError> {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Pause)?;
            // A thread that already ended its run loop is blocked on its queue and
            // needs no kick; a dead thread shows up as a missing answer below.
            let _ = vcpu.kick();
        }
        self.paused.store(true, Ordering::SeqCst);
        let mut states = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            match vcpu.answer("pause")? {
                VcpuResponse::Paused(state) => {
                    states.push(*state.map_err(|source| VmError::Kvm {
                        vcpu: vcpu.index,
                        source,
                    })?)
                }
                _ => return Err(VmError::OutOfTurn(vcpu.index)),
            }
        }
        Ok(states)
    }

    /// What KVM holds of every vCPU beyond its registers, and of the VM (its clock and,
    /// for a Linux guest, its interrupt controllers and PIT): the state a snapshot needs
    /// to be resumed ([`crate::kvm::state`]). Only while paused.
    pub fn save_kvm_state(&self) -> Result<(Vec<VcpuKvmState>, VmKvmState), VmError> {
        if !self.paused.load(Ordering::SeqCst) {
            return Err(VmError::NotPaused);
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for handle in &self.vcpus {
            handle.send(VcpuRequest::SaveKvmState {
                msrs: self.msr_indices.clone(),
                irqchip: self.irqchip,
            })?;
            match handle.answer("save state")? {
                VcpuResponse::KvmState(state) => {
                    let mut state = *state.map_err(|source| VmError::Kvm {
                        vcpu: handle.index,
                        source,
                    })?;
                    state.cpuid = self
                        .cpuids
                        .get(usize::from(handle.index))
                        .cloned()
                        .unwrap_or_default();
                    vcpus.push(state);
                }
                _ => return Err(VmError::OutOfTurn(handle.index)),
            }
        }
        let vm = self
            .kvm_vm
            .save_state(self.irqchip)
            .map_err(VmError::VmState)?;
        Ok((vcpus, vm))
    }

    /// The devices' state ([`crate::devices::DeviceRecord`]). Only while paused (a
    /// vCPU's access would change it meanwhile).
    pub fn device_record(&self) -> Result<crate::devices::DeviceRecord, VmError> {
        if !self.paused.load(Ordering::SeqCst) {
            return Err(VmError::NotPaused);
        }
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record();
        let legacy = self.legacy.as_ref().map(|legacy| {
            legacy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record()
        });
        Ok(crate::devices::DeviceRecord { serial, legacy })
    }

    /// Translates `gva` with vCPU `vcpu`'s current paging state (`KVM_TRANSLATE`).
    /// Only while paused.
    pub fn translate(&self, vcpu: usize, gva: Gva) -> Result<KvmTranslation, VmError> {
        if !self.paused.load(Ordering::SeqCst) {
            return Err(VmError::NotPaused);
        }
        let handle = self.vcpus.get(vcpu).ok_or(VmError::NoSuchVcpu {
            vcpu,
            count: self.vcpus.len(),
        })?;
        handle.send(VcpuRequest::Translate(gva))?;
        match handle.answer("translate")? {
            VcpuResponse::Translated(result) => result.map_err(|source| VmError::Kvm {
                vcpu: handle.index,
                source,
            }),
            _ => Err(VmError::OutOfTurn(handle.index)),
        }
    }

    /// Lets every vCPU run again (vCPUs that stopped for good stay stopped). On a VM
    /// that runs it only ends parks; it answers at once either way (a running vCPU is
    /// kicked out of `KVM_RUN` to answer: an idle Linux vCPU may sit in HLT for seconds).
    pub fn resume(&self) -> Result<(), VmError> {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Resume)?;
            if !self.paused.load(Ordering::SeqCst) {
                let _ = vcpu.kick();
            }
        }
        for vcpu in &self.vcpus {
            match vcpu.answer("resume")? {
                VcpuResponse::Resumed => {}
                _ => return Err(VmError::OutOfTurn(vcpu.index)),
            }
        }
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Ends the park of a vCPU that parked itself (debug-port PARK) while the others kept
    /// running; returns whether it was still parked (a [`Vm::resume`] also ends parks, so
    /// a [`VmEvent::Parked`] read later may be stale). A vCPU the VMM paused stays paused.
    pub fn resume_vcpu(&self, vcpu: u8) -> Result<bool, VmError> {
        let handle = self
            .vcpus
            .get(usize::from(vcpu))
            .ok_or(VmError::NoSuchVcpu {
                vcpu: usize::from(vcpu),
                count: self.vcpus.len(),
            })?;
        handle.send(VcpuRequest::Unpark)?;
        // A vCPU that is running (its park already ended) only reads requests between
        // exits: kick it out of KVM_RUN so that it answers now.
        let _ = handle.kick();
        match handle.answer("unpark")? {
            VcpuResponse::Unparked(was_parked) => Ok(was_parked),
            _ => Err(VmError::OutOfTurn(handle.index)),
        }
    }

    /// The dirty-log backend, when the VM was built with dirty logging.
    pub fn dirty_log_backend(&self) -> Option<DirtyLogBackend> {
        let tracker = self.dirty.as_ref()?.lock().ok()?;
        Some(tracker.backend())
    }

    /// What the dirty rings did so far (ring-full exits, entries harvested), when the VM
    /// uses the ring backend.
    pub fn dirty_ring_stats(&self) -> Option<RingStats> {
        self.dirty_rings.as_ref().map(|r| r.stats())
    }

    /// Fetches and resets the dirty set: pages the guest or the VMM wrote since the
    /// previous fetch. Pause first for a set that the scan will not race.
    pub fn fetch_dirty(&self) -> Result<DirtySet, DirtyError> {
        let tracker = self.dirty.as_ref().ok_or(DirtyError::NotEnabled)?;
        tracker.lock().map_err(|_| DirtyError::Poisoned)?.fetch()
    }

    /// Fetches the dirty set and scans it: the GPA scan, and a GVA scan of each distinct
    /// CR3 of `states` (the vCPUs' current address spaces; for a Linux vCPU in a process
    /// under PTI also the kernel half, [`crate::linux::pti_kernel_cr3`]) and of each of
    /// `extra_cr3s` (read with the paging mode of `states[0]`). Pause first.
    pub fn dirty_scan(
        &self,
        states: &[VcpuState],
        extra_cr3s: &[u64],
    ) -> Result<(DirtySet, ScanReport), DirtyError> {
        let set = self.fetch_dirty()?;
        let report = self.scan_set(&set, states, extra_cr3s)?;
        Ok((set, report))
    }

    /// Scans an already fetched set (see [`Vm::dirty_scan`]).
    pub fn scan_set(
        &self,
        set: &DirtySet,
        states: &[VcpuState],
        extra_cr3s: &[u64],
    ) -> Result<ScanReport, DirtyError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut spaces = Vec::new();
        let first = states.first();
        // A Linux vCPU in a process under PTI has the user PGD loaded: its kernel half
        // (the kernel PGD, the page before) is scanned too. A restored Linux VM knows it
        // is one from its boot record (where its kernel was loaded is not needed here).
        let pti_kernel: Vec<(&VcpuState, u64)> = if self.boot.source == "linux" {
            states
                .iter()
                .filter_map(|s| crate::linux::pti_kernel_cr3(&self.memory, s.cr3).map(|k| (s, k)))
                .collect()
        } else {
            Vec::new()
        };
        let wanted = states.iter().map(|s| (s, s.cr3)).chain(pti_kernel).chain(
            first
                .into_iter()
                .flat_map(|s| extra_cr3s.iter().map(move |c| (s, *c))),
        );
        for (state, cr3) in wanted {
            if !seen.insert(cr3 & !0xfff) {
                continue;
            }
            let ctx = match self.paging_context(state, Some(cr3)) {
                Ok(ctx) => ctx,
                // A vCPU with paging off (an AP a Linux guest has not started yet) has no
                // address space to scan.
                Err(ContextError::PagingDisabled { .. }) if cr3 == state.cr3 => continue,
                Err(e) => {
                    return Err(DirtyError::Context {
                        cr3,
                        reason: e.to_string(),
                    });
                }
            };
            spaces.push(scan_space(&self.memory, &ctx, set)?);
        }
        Ok(ScanReport {
            seq: set.seq,
            gpa: set.gpa_scan(),
            vmm_pages: set.vmm_pages,
            spaces,
        })
    }

    /// Sets the command word the guest reads from its debug port: it stays until replaced
    /// ([`crate::devices::DebugControl::set_command`]). What it means is the guest's
    /// protocol ([`crate::guest::protocol`] for the built-in guest).
    pub fn set_guest_command(&self, command: u32) {
        self.control.set_command(command);
    }

    /// Posts a one-shot command word: the guest's next read takes it
    /// ([`crate::devices::DebugControl::post_command`]).
    pub fn post_guest_command(&self, command: u32) {
        self.control.post_command(command);
    }

    /// The next event, waiting at most `timeout`.
    pub fn wait_event(&self, timeout: Duration) -> Result<VmEvent, VmError> {
        let event = self.events.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => VmError::Timeout(timeout),
            RecvTimeoutError::Disconnected => VmError::EventsClosed,
        })?;
        if let VmEvent::VcpuStopped { vcpu, stop, dump } = &event {
            self.record_stop(*vcpu, stop, dump.clone());
        }
        Ok(event)
    }

    /// The next event before `deadline` (then [`VmError::Timeout`], even when events keep
    /// coming: a guest flooding events cannot stretch a wait). `timeout` is only what the
    /// error reports.
    pub fn wait_event_until(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<VmEvent, VmError> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or(VmError::Timeout(timeout))?;
        self.wait_event(left)
    }

    /// [`Vm::wait_event_until`] for a caller that did not ask for PARK: a vCPU that parks
    /// meanwhile is let go at once, and the next other event is returned.
    pub fn wait_event_unparking(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<VmEvent, VmError> {
        loop {
            match self.wait_event_until(deadline, timeout)? {
                VmEvent::Parked { vcpu, .. } => {
                    self.resume_vcpu(vcpu)?;
                }
                event => return Ok(event),
            }
        }
    }

    /// Waits for the first event `wanted` picks (a hard deadline of `timeout`: a guest
    /// flooding events must not keep this waiting; parked vCPUs are let go) and returns
    /// what it picked; other events are dropped. If the guest stops first, the error is
    /// [`VmError::Stopped`] with how it ended, its message saying it stopped `waiting`
    /// ("before reporting READY").
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        waiting: &'static str,
        wanted: impl Fn(&VmEvent) -> Option<T>,
    ) -> Result<T, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let event = self.wait_event_unparking(deadline, timeout)?;
            if let Some(found) = wanted(&event) {
                return Ok(found);
            }
            if let VmEvent::VcpuStopped { .. } = event {
                let outcome = self.outcome().ok_or(VmError::EventsClosed)?;
                return Err(VmError::Stopped {
                    waiting,
                    outcome: Box::new(outcome),
                });
            }
        }
    }

    /// Waits until the VM ends (a vCPU stops for good: after DONE the guest halts)
    /// and returns how. Then pauses the other vCPUs, so their state can still be read
    /// with [`Vm::pause`]. Events before the end are dropped.
    pub fn wait(&self, timeout: Duration) -> Result<ExitOutcome, VmError> {
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            if let Some(outcome) = self.outcome() {
                break outcome;
            }
            self.wait_event_unparking(deadline, timeout)?;
        };
        self.pause()?;
        Ok(outcome)
    }

    /// Pauses every vCPU and describes each one's registers and last port access (see
    /// [`crate::vcpu::describe_states`]), all but vCPU `except` if given, or says why
    /// they could not be read: for the message of a guest that hung (a wait timed out)
    /// or died (the vCPU that died has its own dump in the [`ExitOutcome`]).
    pub fn vcpu_report(&self, except: Option<u8>) -> String {
        match self.pause() {
            Ok(mut states) => {
                states.retain(|state| Some(state.index) != except);
                crate::vcpu::describe_states(&states)
            }
            Err(e) => format!("the vCPUs' registers could not be read: {e}\n"),
        }
    }

    /// How the VM ended, if it did, after taking in every event already sent without
    /// waiting (other events are dropped): for a caller that just paused the vCPUs and
    /// must know whether one stopped for good before the pause (a guest that reset
    /// while a walk waited for its moment).
    pub fn ended(&self) -> Option<ExitOutcome> {
        while let Ok(event) = self.events.try_recv() {
            if let VmEvent::VcpuStopped { vcpu, stop, dump } = &event {
                self.record_stop(*vcpu, stop, dump.clone());
            }
        }
        self.outcome()
    }

    /// How the VM ended, if it did.
    pub fn outcome(&self) -> Option<ExitOutcome> {
        self.outcome.lock().ok().and_then(|o| o.clone())
    }

    fn record_stop(&self, vcpu: u8, stop: &VcpuStop, dump: Option<Box<RegisterDump>>) {
        let outcome = match (stop, self.control.done_status()) {
            (VcpuStop::Halted, Some(status)) => ExitOutcome::Done { status },
            (VcpuStop::ResetRequested(method), _) if self.console.contains(KERNEL_PANIC) => {
                ExitOutcome::PanicReset {
                    vcpu,
                    method: *method,
                }
            }
            (VcpuStop::ResetRequested(method), _) => ExitOutcome::Reset {
                vcpu,
                method: *method,
            },
            (VcpuStop::Panicked, _) => ExitOutcome::Panicked { vcpu },
            (VcpuStop::PowerOff, _) => ExitOutcome::PowerOff { vcpu },
            _ => ExitOutcome::Failed {
                vcpu,
                stop: stop.clone(),
                dump,
            },
        };
        if let Ok(mut slot) = self.outcome.lock() {
            slot.get_or_insert(outcome);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for vcpu in &self.vcpus {
            let _ = vcpu.send(VcpuRequest::Exit);
            let _ = vcpu.kick();
        }
        for vcpu in &mut self.vcpus {
            if let Some(thread) = vcpu.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_tell_each_end_apart() {
        let reset = ExitOutcome::Reset {
            vcpu: 0,
            method: ResetMethod::ResetVector,
        };
        let triple = ExitOutcome::Failed {
            vcpu: 1,
            stop: VcpuStop::Shutdown,
            dump: None,
        };
        let internal = ExitOutcome::Failed {
            vcpu: 0,
            stop: VcpuStop::InternalError { suberror: 1 },
            dump: None,
        };
        let panicked = ExitOutcome::Panicked { vcpu: 0 };
        let panic_reset = ExitOutcome::PanicReset {
            vcpu: 0,
            method: ResetMethod::ResetVector,
        };
        assert_eq!(panic_reset.exit_status(OnReset::Success), EXIT_VM_FAILURE);
        assert_eq!(panic_reset.verdict(), "the guest crashed");
        assert!(
            panic_reset
                .to_string()
                .contains("Kernel panic - not syncing")
        );
        let off = ExitOutcome::PowerOff { vcpu: 0 };
        let cases = [
            (&off, 0, 0, "the guest powered off"),
            (&reset, 0, EXIT_GUEST_RESET, "the guest reset"),
            (
                &triple,
                EXIT_VM_FAILURE,
                EXIT_VM_FAILURE,
                "the guest crashed",
            ),
            (
                &panicked,
                EXIT_VM_FAILURE,
                EXIT_VM_FAILURE,
                "the guest crashed",
            ),
            (&internal, EXIT_VM_FAILURE, EXIT_VM_FAILURE, "the VM failed"),
            (
                &ExitOutcome::Done { status: 0x1234 },
                99,
                99,
                "the guest finished",
            ),
            (&ExitOutcome::Done { status: 7 }, 7, 7, "the guest finished"),
        ];
        for (outcome, success, fail, verdict) in cases {
            assert_eq!(outcome.exit_status(OnReset::Success), success, "{outcome}");
            assert_eq!(outcome.exit_status(OnReset::Fail), fail, "{outcome}");
            assert_eq!(outcome.verdict(), verdict, "{outcome}");
        }
        assert!(reset.is_success() && !panicked.is_success() && !triple.is_success());
        assert!(reset.to_string().contains("F000:FFF0"), "{reset}");
        assert!(panicked.to_string().contains("pvpanic"), "{panicked}");
        assert!(triple.to_string().contains("no reset request"), "{triple}");
    }
}
