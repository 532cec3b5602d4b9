//! The vCPU thread: the run loop, and the requests the VMM thread sends it (pause,
//! state, translate, resume, stop).
//!
//! Each vCPU runs on its own thread, which owns the KVM vCPU. The VMM thread queues
//! a request and kicks the thread ([`crate::kvm::kick`]); the thread looks at its
//! queue before every `KVM_RUN`, so a kick always leads to the request being seen,
//! whether the guest was exiting often or not at all. While paused, the thread blocks
//! on its queue and the vCPU's registers do not change.
//!
//! A pause completes the instruction of a pending exit first. KVM finishes an `IN`,
//! `OUT` or MMIO instruction (the value into RAX, RIP past it) only on the next
//! `KVM_RUN` after the exit (Documentation/virt/kvm/api.rst, "the corresponding
//! operations are complete only after userspace has re-entered the kernel"); a pause that
//! read the registers in between would save RIP *at* the instruction, and a restore
//! would run it twice. So a pause that finds the last `KVM_RUN` ended in an exit runs
//! once more with `immediate_exit` set: KVM completes the instruction and returns
//! `EINTR` without running another. A string instruction (`rep outsb`) may exit again
//! for its next chunk; those exits are served as usual, at most
//! [`PENDING_IO_EXIT_LIMIT`] of them, after which the vCPU pauses with the instruction
//! still pending ([`VcpuState::io_pending`]) rather than letting a hostile `RCX` hold
//! the pause forever.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use walker::{ControlRegisters, Gva};

use crate::arch::x86_64::regs::{RegisterDump, Registers, SpecialRegisters};
use crate::devices::{IoBus, PortIo};
use crate::dirty::DirtyRings;
use crate::events::VmEvent;
use crate::exit::{ExitAction, VcpuStop, handle_exit};
use crate::kvm::kick::ArmedVcpu;
use crate::kvm::state::VcpuKvmState;
use crate::kvm::{KvmError, KvmTranslation, KvmVcpu};

/// The state of one stopped vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuState {
    /// vCPU index.
    pub index: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3 (with PCID bits).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// Whether the vCPU had already stopped for good (HLT, triple fault, ...).
    pub finished: bool,
    /// All general-purpose registers.
    pub regs: Registers,
    /// All special registers.
    pub sregs: SpecialRegisters,
    /// The vCPU's last port access (`IN`/`OUT` exit), if it made one.
    pub last_io: Option<PortIo>,
    /// Whether KVM still holds an unfinished instruction of this vCPU (a string I/O
    /// instruction that did not complete within [`PENDING_IO_EXIT_LIMIT`] exits): its
    /// registers are not a state that can be saved and resumed.
    pub io_pending: bool,
    /// Its debug-port argument latch ([`crate::devices::debug_port`]).
    pub debug_argument: u64,
}

impl VcpuState {
    fn new(
        index: u8,
        regs: Registers,
        sregs: SpecialRegisters,
        finished: bool,
        last_io: Option<PortIo>,
        io_pending: bool,
        debug_argument: u64,
    ) -> Self {
        Self {
            index,
            rip: regs.rip,
            rsp: regs.rsp,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            finished,
            regs,
            sregs,
            last_io,
            io_pending,
            debug_argument,
        }
    }

    /// The registers as a dump, for messages.
    pub fn dump(&self) -> RegisterDump {
        RegisterDump {
            regs: self.regs,
            sregs: self.sregs,
            last_io: self.last_io,
        }
    }
}

/// Every vCPU's registers and last port access, one block per vCPU, for the message of a
/// guest that hung or died.
pub fn describe_states(states: &[VcpuState]) -> String {
    states
        .iter()
        .map(|state| {
            format!(
                "registers of vCPU {}{}:\n{}",
                state.index,
                if state.finished {
                    " (stopped for good)"
                } else {
                    ""
                },
                state.dump()
            )
        })
        .collect()
}

impl From<&VcpuState> for ControlRegisters {
    /// The registers the walker needs to know the vCPU's paging mode.
    fn from(state: &VcpuState) -> Self {
        Self {
            cr0: state.cr0,
            cr3: state.cr3,
            cr4: state.cr4,
            efer: state.efer,
        }
    }
}

/// A request to a vCPU thread.
#[derive(Debug, Clone)]
pub(crate) enum VcpuRequest {
    /// Stop running the guest (if it runs) and answer with the state.
    Pause,
    /// Read what KVM holds of the paused vCPU beyond its registers (for a snapshot).
    SaveKvmState {
        /// The MSRs to try ([`crate::kvm::Hypervisor::msr_index_list`]).
        msrs: Arc<[u32]>,
        /// Whether the VM has the in-kernel LAPIC.
        irqchip: bool,
    },
    /// Translate a GVA with the current paging state.
    Translate(Gva),
    /// Run the guest again (no effect on a vCPU that stopped for good); also ends a park.
    Resume,
    /// End a park (debug-port PARK), if the vCPU is parked; a pause stays a pause.
    Unpark,
    /// End the thread.
    Exit,
}

/// A vCPU thread's answer, one per request except [`VcpuRequest::Exit`].
#[derive(Debug)]
pub(crate) enum VcpuResponse {
    Paused(Result<Box<VcpuState>, KvmError>),
    KvmState(Result<Box<VcpuKvmState>, KvmError>),
    Translated(Result<KvmTranslation, KvmError>),
    Resumed,
    /// Whether the vCPU was parked.
    Unparked(bool),
}

/// Everything a vCPU thread owns.
#[derive(Debug)]
pub(crate) struct VcpuThread {
    pub index: u8,
    pub vcpu: KvmVcpu,
    pub bus: IoBus,
    pub requests: Receiver<VcpuRequest>,
    pub responses: Sender<VcpuResponse>,
    pub events: Sender<VmEvent>,
    /// The VM's dirty rings, when it uses them (harvested on ring-full exits).
    pub dirty_rings: Option<Arc<DirtyRings>>,
    /// Start paused (a restored VM the caller inspects before it runs): the guest runs
    /// no instruction before the first resume.
    pub start_paused: bool,
}

/// Ring-full exits in a row that harvest nothing before the vCPU is stopped: a ring
/// that stays full would otherwise make the vCPU exit forever without running.
const EMPTY_RING_FULL_LIMIT: u32 = 1000;

/// Exits a pause serves while it completes a pending instruction (see the module docs)
/// before it gives up and pauses with the instruction pending.
pub const PENDING_IO_EXIT_LIMIT: u32 = 256;

/// Where the run loop is, apart from running.
#[derive(Debug, Default)]
struct RunFlags {
    /// Paused by the VMM.
    paused: bool,
    /// Parked by the guest (debug-port PARK), apart from paused by the VMM: a stale
    /// Unpark must never let a paused vCPU run.
    parked: bool,
    /// Stopped for good.
    finished: bool,
    /// A pause is completing a pending instruction: exits served so far.
    pausing: Option<u32>,
    /// The last `KVM_RUN` ended in an exit whose instruction KVM completes on the next.
    io_pending: bool,
}

impl RunFlags {
    /// Whether the thread waits for a request instead of running the guest.
    fn holds(&self) -> bool {
        self.pausing.is_none() && (self.paused || self.parked || self.finished)
    }
}

impl VcpuThread {
    /// The thread body: run until told to exit.
    pub fn run(mut self) {
        let _armed = ArmedVcpu::arm(&mut self.vcpu);
        let mut flags = RunFlags {
            paused: self.start_paused,
            ..RunFlags::default()
        };
        let mut empty_ring_full = 0u32;
        loop {
            // Serve requests: all pending ones, and block while held.
            loop {
                let request = if flags.holds() {
                    match self.requests.recv() {
                        Ok(request) => request,
                        Err(_) => return,
                    }
                } else {
                    match self.requests.try_recv() {
                        Ok(request) => request,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                let response = match request {
                    VcpuRequest::Pause if flags.io_pending && !flags.finished && !flags.paused => {
                        // Answered once KVM has completed the instruction.
                        flags.pausing = Some(0);
                        self.vcpu.set_immediate_exit(true);
                        None
                    }
                    VcpuRequest::Pause => Some(self.enter_pause(&mut flags)),
                    VcpuRequest::SaveKvmState { msrs, irqchip } => Some(VcpuResponse::KvmState(
                        self.vcpu.save_state(&msrs, irqchip).map(Box::new),
                    )),
                    VcpuRequest::Translate(gva) => {
                        Some(VcpuResponse::Translated(self.vcpu.translate(gva.0)))
                    }
                    VcpuRequest::Resume => {
                        flags.paused = false;
                        flags.parked = false;
                        Some(VcpuResponse::Resumed)
                    }
                    VcpuRequest::Unpark => {
                        Some(VcpuResponse::Unparked(std::mem::take(&mut flags.parked)))
                    }
                    VcpuRequest::Exit => return,
                };
                if let Some(response) = response
                    && self.responses.send(response).is_err()
                {
                    return;
                }
                if !flags.holds() {
                    break;
                }
            }

            let action = match self.vcpu.run() {
                Ok(exit) => handle_exit(exit, &mut self.bus),
                Err(e) => ExitAction::Stop(VcpuStop::RunFailed(e.to_string())),
            };
            let action = match action {
                ExitAction::HarvestDirtyRing => self.harvest_dirty_rings(&mut empty_ring_full),
                other => other,
            };
            flags.io_pending = !matches!(action, ExitAction::Interrupted | ExitAction::Stop(_));
            match action {
                ExitAction::Continue | ExitAction::HarvestDirtyRing => {}
                ExitAction::Interrupted => self.vcpu.set_immediate_exit(false),
                ExitAction::Park(argument) => {
                    // Blocks on the request queue before the next KVM_RUN.
                    flags.parked = true;
                    let _ = self.events.send(VmEvent::Parked {
                        vcpu: self.index,
                        argument,
                    });
                }
                ExitAction::Stop(stop) => {
                    flags.finished = true;
                    let dump = self
                        .state(true, false)
                        .ok()
                        .map(|state| Box::new(state.dump()));
                    let _ = self.events.send(VmEvent::VcpuStopped {
                        vcpu: self.index,
                        stop,
                        dump,
                    });
                }
            }
            if let Some(exits) = flags.pausing {
                let done = !flags.io_pending || flags.finished || exits >= PENDING_IO_EXIT_LIMIT;
                if done {
                    flags.pausing = None;
                    self.vcpu.set_immediate_exit(false);
                    let response = self.enter_pause(&mut flags);
                    if self.responses.send(response).is_err() {
                        return;
                    }
                } else {
                    flags.pausing = Some(exits + 1);
                    // Serving the exit may have cleared it (a kick's EINTR does).
                    self.vcpu.set_immediate_exit(true);
                }
            }
        }
    }

    /// Pauses (idempotent) and answers with the state.
    fn enter_pause(&self, flags: &mut RunFlags) -> VcpuResponse {
        flags.paused = true;
        VcpuResponse::Paused(
            self.state(flags.finished, flags.io_pending && !flags.finished)
                .map(Box::new),
        )
    }

    /// A ring-full exit: harvest and reset the rings (into the accumulator that the next
    /// fetch takes), then run again.
    fn harvest_dirty_rings(&self, empty_in_a_row: &mut u32) -> ExitAction {
        let Some(rings) = &self.dirty_rings else {
            return ExitAction::Stop(VcpuStop::DirtyRing(
                "the VM was built without dirty rings".into(),
            ));
        };
        match rings.harvest_full() {
            Ok(0) => {
                // Another thread may have harvested this ring meanwhile (a fetch while
                // the guest runs); a ring that stays full is a bug, not a reason to spin.
                *empty_in_a_row += 1;
                if *empty_in_a_row >= EMPTY_RING_FULL_LIMIT {
                    return ExitAction::Stop(VcpuStop::DirtyRing(format!(
                        "{empty_in_a_row} ring-full exits in a row found no entry to harvest"
                    )));
                }
                ExitAction::Continue
            }
            Ok(_) => {
                *empty_in_a_row = 0;
                ExitAction::Continue
            }
            Err(e) => ExitAction::Stop(VcpuStop::DirtyRing(e.to_string())),
        }
    }

    fn state(&self, finished: bool, io_pending: bool) -> Result<VcpuState, KvmError> {
        let regs = self.vcpu.registers()?;
        let sregs = self.vcpu.special_registers()?;
        Ok(VcpuState::new(
            self.index,
            regs,
            sregs,
            finished,
            self.bus.last_port_io(),
            io_pending,
            self.bus.debug_argument(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vcpu_is_described_with_its_last_port_access() {
        let io = PortIo {
            port: 0x3f8,
            write: true,
            size: 1,
            value: 0x5b,
            count: 3,
        };
        let running = VcpuState::new(
            0,
            Registers {
                rip: 0xffff_ffff_8100_1234,
                ..Registers::default()
            },
            SpecialRegisters::default(),
            false,
            Some(io),
            false,
            0,
        );
        let stopped = VcpuState::new(
            1,
            Registers::default(),
            SpecialRegisters::default(),
            true,
            None,
            false,
            0,
        );
        assert_eq!(running.dump().last_io, Some(io));
        let text = describe_states(&[running, stopped]);
        let Some((first, second)) = text.split_once("registers of vCPU 1") else {
            panic!("vCPU 1 is missing: {text}");
        };
        assert!(first.starts_with("registers of vCPU 0:\n"), "{text}");
        assert!(first.contains("RIP=0xffffffff81001234"), "{text}");
        assert!(
            first.contains("last port I/O: OUT 0x03f8 <- 0x5b"),
            "{text}"
        );
        assert!(second.starts_with(" (stopped for good):\n"), "{text}");
        assert!(second.contains("last port I/O: none"), "{text}");
        assert_eq!(describe_states(&[]), "");
    }
}
