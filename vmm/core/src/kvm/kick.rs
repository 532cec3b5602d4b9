//! Kicking a vCPU thread out of `KVM_RUN`, as Firecracker does: a real-time signal
//! whose handler sets `kvm_run.immediate_exit` of the vCPU that runs on the signalled
//! thread.
//!
//! The race this closes: a request is queued, then the thread is signalled. If the
//! signal lands while the thread is inside `KVM_RUN`, the ioctl returns `EINTR`. If it
//! lands just before the ioctl (after the thread last looked at its queue), the handler
//! has set `immediate_exit`, so the next `KVM_RUN` returns `EINTR` at once. Either way
//! the thread looks at its queue again before the guest runs on.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

thread_local! {
    /// `kvm_run.immediate_exit` of the vCPU that runs on this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Errors from setting up or sending the kick.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// Registering the signal handler failed.
    #[error("cannot register the vCPU kick signal handler: {0}")]
    Register(vmm_sys_util::errno::Error),
    /// `pthread_kill` failed.
    #[error("cannot signal the vCPU thread: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// The signal used for kicks: the first real-time signal.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // Only async-signal-safe work: read a thread-local pointer and store one byte.
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: the pointer was set by `ArmedVcpu::arm` on this very thread from a
        // live vCPU's kvm_run mapping and is cleared (by the guard's drop) before that
        // vCPU goes away; a volatile byte store cannot tear.
        unsafe { target.write_volatile(1) };
    }
}

/// Installs the kick signal handler once per process.
pub fn install_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.errno()))
        .as_ref()
        .map_err(|errno| KickError::Register(vmm_sys_util::errno::Error::new(*errno)))
        .map(|_| ())
}

/// While alive, kicks sent to the current thread set `immediate_exit` of the vCPU it
/// was created for. Create it on the vCPU thread; drop it before the vCPU.
#[derive(Debug)]
pub struct ArmedVcpu {
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl ArmedVcpu {
    /// Arms the kick for `vcpu` on the current thread.
    pub fn arm(vcpu: &mut super::KvmVcpu) -> Self {
        let target = vcpu.immediate_exit_ptr();
        IMMEDIATE_EXIT.with(|cell| cell.set(target));
        Self {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for ArmedVcpu {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// Sends the kick signal to a vCPU thread.
pub fn kick<T>(thread: &JoinHandle<T>) -> Result<(), KickError> {
    thread.kill(kick_signal()).map_err(KickError::Signal)
}
