//! Booting a VM and pausing it at a chosen moment, for a walk, a translation or a check:
//! one recipe for `vmm walk`/`translate`, the benchmarks and the tests.
//!
//! The moment is READY (the built-in guest), a vCPU's PARK (any guest: the Linux test
//! guest's THP process parks the vCPU it runs on), a console marker, or a delay. A VM
//! that ends first is not an error: the caller gets its [`ExitOutcome`] instead, and so
//! does one that ended between the wait and the pause (its vCPU state would be a reset
//! state, not the moment asked for).

use std::time::{Duration, Instant};

use crate::builder::{BuildError, VmConfig, build_vm};
use crate::devices::Console;
use crate::events::VmEvent;
use crate::guest::protocol::{BuiltinProtocol, GuestSignal};
use crate::guest::{Descriptor, DescriptorError};
use crate::vcpu::VcpuState;
use crate::vm::{ExitOutcome, Vm, VmError};

/// When to pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseAt {
    /// At the built-in guest's READY; its descriptor is read.
    Ready,
    /// When a vCPU parks itself (debug-port PARK); that vCPU becomes the one to use.
    Park,
    /// When the guest's console output contains this marker.
    Serial(String),
    /// This long after the start.
    After(Duration),
}

/// Why a VM could not be paused at the moment asked for.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The VM could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The vCPU asked for does not exist.
    #[error("vCPU {vcpu} does not exist: the VM has {count} vCPU(s)")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: usize,
        /// How many there are.
        count: usize,
    },
    /// The moment did not come in time.
    #[error("{what} within {timeout:?}")]
    NotInTime {
        /// What did not happen ("no vCPU parked").
        what: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The VM handle failed.
    #[error("{doing}: {source}")]
    Vm {
        /// What was being done.
        doing: &'static str,
        /// The error.
        #[source]
        source: VmError,
    },
}

/// A VM paused at the moment asked for (every vCPU paused).
#[derive(Debug)]
pub struct Paused {
    /// The VM.
    pub vm: Vm,
    /// The vCPU to use: the one asked for, or the one that parked.
    pub vcpu: usize,
    /// Every vCPU's state at the pause.
    pub states: Vec<VcpuState>,
    /// The built-in guest's descriptor ([`PauseAt::Ready`]), or why it could not be read.
    pub descriptor: Option<Result<Descriptor, DescriptorError>>,
    /// The PARK's argument ([`PauseAt::Park`]).
    pub park_argument: Option<u64>,
    /// The last MARK the guest sent before the moment, if any (the Linux test guest's
    /// THP process announces its buffer's size so).
    pub last_mark: Option<u64>,
    /// From the start to the pause.
    pub elapsed: Duration,
}

impl Paused {
    /// The state of the vCPU to use.
    pub fn state(&self) -> &VcpuState {
        &self.states[self.vcpu]
    }

    /// The descriptor, when it was read and is valid.
    pub fn valid_descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref().and_then(|d| d.as_ref().ok())
    }
}

/// Builds `config` and pauses it [`at`](PauseAt), using vCPU `vcpu` (unless a vCPU
/// parks: then that one); `timeout` bounds the wait. The guest's console is
/// `config.console` (what [`PauseAt::Serial`] watches).
pub fn boot_and_pause(
    config: &VmConfig,
    at: &PauseAt,
    vcpu: usize,
    timeout: Duration,
) -> Result<Result<Paused, ExitOutcome>, PauseError> {
    let started = Instant::now();
    let vm = build_vm(config)?;
    pause_at(vm, &config.console, at, vcpu, timeout, started)
}

/// [`boot_and_pause`] for a VM already built (at `started`), whose console is `console`.
pub fn pause_at(
    vm: Vm,
    console: &Console,
    at: &PauseAt,
    vcpu: usize,
    timeout: Duration,
    started: Instant,
) -> Result<Result<Paused, ExitOutcome>, PauseError> {
    if vcpu >= vm.vcpu_count() {
        return Err(PauseError::NoSuchVcpu {
            vcpu,
            count: vm.vcpu_count(),
        });
    }
    let vm_error = |doing| move |source| PauseError::Vm { doing, source };
    let not_in_time = |what: &str| PauseError::NotInTime {
        what: what.to_string(),
        timeout,
    };
    let deadline = started + timeout;
    let mut vcpu = vcpu;
    let mut descriptor = None;
    let mut park_argument = None;
    let mut last_mark = None;
    let mut mark = |event: &VmEvent| {
        if let Some(GuestSignal::Mark { value }) = GuestSignal::of(event) {
            last_mark = Some(value);
        }
    };
    match at {
        PauseAt::Ready => {
            let gpa = match vm.wait_ready(deadline.saturating_duration_since(Instant::now())) {
                Ok(gpa) => gpa,
                Err(VmError::Stopped { outcome, .. }) => return Ok(Err(*outcome)),
                Err(VmError::Timeout(_)) => {
                    return Err(not_in_time("the guest did not report READY"));
                }
                Err(e) => return Err(vm_error("waiting for READY")(e)),
            };
            descriptor = Some(Descriptor::read(vm.guest_memory(), gpa));
        }
        PauseAt::Park => loop {
            match vm.wait_event_until(deadline, timeout) {
                Ok(VmEvent::Parked {
                    vcpu: parked,
                    argument,
                }) => {
                    vcpu = usize::from(parked);
                    park_argument = Some(argument);
                    break;
                }
                Ok(VmEvent::VcpuStopped { .. }) => {
                    if let Some(outcome) = vm.outcome() {
                        return Ok(Err(outcome));
                    }
                }
                Ok(event) => mark(&event),
                Err(VmError::Timeout(_)) => {
                    return Err(not_in_time("no vCPU parked (debug-port PARK)"));
                }
                Err(e) => return Err(vm_error("waiting for a vCPU to park")(e)),
            }
        },
        PauseAt::Serial(marker) => {
            while !console.contains(marker.as_bytes()) {
                if let Some(outcome) = vm.outcome() {
                    return Ok(Err(outcome));
                }
                if Instant::now() >= deadline {
                    return Err(not_in_time(&format!("the guest did not print {marker:?}")));
                }
                // Polls the console every 5 ms; meanwhile a vCPU that parks itself is let
                // go (nobody here asked for it), and a stop is recorded.
                let poll = Duration::from_millis(5);
                match vm.wait_event_unparking(Instant::now() + poll, poll) {
                    Ok(event) => mark(&event),
                    Err(VmError::Timeout(_)) => {}
                    Err(e) => return Err(vm_error("waiting for the console marker")(e)),
                }
            }
        }
        PauseAt::After(delay) => {
            // Events until the delay passes: a guest that ends meanwhile ends the wait.
            let until = started + *delay;
            loop {
                match vm.wait_event_unparking(until, *delay) {
                    Ok(VmEvent::VcpuStopped { .. }) => {
                        if let Some(outcome) = vm.outcome() {
                            return Ok(Err(outcome));
                        }
                    }
                    Ok(event) => mark(&event),
                    Err(VmError::Timeout(_)) => break,
                    Err(e) => return Err(vm_error("waiting for the delay to pass")(e)),
                }
            }
        }
    }
    let states = vm.pause().map_err(vm_error("pausing the vCPUs"))?;
    // A guest that reset or crashed between the wait and the pause: its vCPU state is a
    // reset state, not the moment asked for.
    if let Some(outcome) = vm.ended() {
        return Ok(Err(outcome));
    }
    Ok(Ok(Paused {
        vm,
        vcpu,
        states,
        descriptor,
        park_argument,
        last_mark,
        elapsed: started.elapsed(),
    }))
}
