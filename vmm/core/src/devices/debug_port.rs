//! The debug port: a guest's side channel to the VMM (QEMU's "debugcon" plus a signal
//! register, in the spirit of its `isa-debug-exit`).
//!
//! # Transport
//!
//! | port | access | meaning |
//! |---|---|---|
//! | `0xE9` | 8-bit `OUT` | one console byte, copied to the VMM's console |
//! | `0x604` | 32-bit `OUT` | low 32 bits of the 64-bit argument latch |
//! | `0x608` | 32-bit `OUT` | high 32 bits of the argument latch |
//! | `0x600` | 32-bit `OUT` | a signal code, sent with the current argument latch |
//! | `0x600` | 32-bit `IN` | the VMM's command word ([`DebugControl`]) |
//!
//! This module defines the transport and the two signals the VMM itself acts on:
//! [`SIGNAL_DONE`] (the guest's exit status, kept for [`crate::vm::Vm::wait`]'s verdict,
//! then reported as [`DebugSignal::Done`]) and [`SIGNAL_PARK`] (the vCPU that sent it
//! stops at its `OUT` until the VMM resumes it, so the VMM sees the sender's registers,
//! CR3 included, exactly as they were at the signal; KVM completes the `OUT` when the
//! vCPU runs again). Every other code reaches the VMM thread as a
//! [`DebugSignal::Guest`] it does not interpret: what codes and commands mean is the
//! business of the guest's own module ([`crate::guest::protocol`] for the built-in guest,
//! whose READY, HEARTBEAT, MARK and ROUND_DONE are such codes).
//!
//! The command word is what the guest reads: a *sticky* command stays until replaced; a
//! *one-shot* command ([`DebugControl::post_command`]) is consumed by the read that
//! returns it (the word goes back to 0), so one post starts exactly one piece of work
//! however often the guest polls. The latch keeps its value after a signal; each vCPU has
//! its own latch. Accesses of another width to `0x600..=0x60b`, and reads of
//! `0x604`/`0x608`/`0xE9`, are treated like unknown ports (reads return all ones, writes
//! are ignored).
//!
//! The device knows nothing of the VM's event channel: signals go to a [`SignalSink`]
//! the VM builder gives it, which is what keeps this layer below the VM's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::console::Console;

/// The console port.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// Signal port (OUT: signal code; IN: command word).
pub const EVENT_PORT: u16 = 0x600;
/// Low half of the argument latch.
pub const ARG_LO_PORT: u16 = 0x604;
/// High half of the argument latch.
pub const ARG_HI_PORT: u16 = 0x608;

/// Signal DONE: the guest is done; the argument is its status (0 = success). The first
/// one counts.
pub const SIGNAL_DONE: u32 = 2;
/// Signal PARK: stop the sending vCPU at its `OUT` until the VMM resumes it.
pub const SIGNAL_PARK: u32 = 6;

/// Bit 32 of the command cell: the command in the low half is one-shot.
const ONE_SHOT: u64 = 1 << 32;

/// What a guest's signal means to the VMM thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugSignal {
    /// [`SIGNAL_DONE`]: the guest's exit status.
    Done {
        /// The status (0 = success).
        status: u64,
    },
    /// Any other code, for the guest's own module to interpret.
    Guest {
        /// The code.
        code: u32,
        /// The argument latch at the time.
        argument: u64,
    },
}

/// Where a debug port sends its signals (the builder wraps the VM's event channel).
pub type SignalSink = Arc<dyn Fn(DebugSignal) + Send + Sync>;

/// A sink that sends each signal, converted, on `channel` (nobody listening any more is
/// not the guest's problem: the signal is dropped).
pub fn signal_sink<T: From<DebugSignal> + Send + 'static>(channel: Sender<T>) -> SignalSink {
    Arc::new(move |signal| {
        let _ = channel.send(T::from(signal));
    })
}

/// State shared between the VMM thread and every vCPU's debug port.
#[derive(Debug, Default)]
pub struct DebugControl {
    /// The command word in the low 32 bits, [`ONE_SHOT`] above.
    command: AtomicU64,
    done_status: Mutex<Option<u64>>,
}

impl DebugControl {
    /// Sets a sticky command: every read returns it until it is replaced.
    pub fn set_command(&self, command: u32) {
        self.command.store(u64::from(command), Ordering::SeqCst);
    }

    /// Posts a one-shot command: the next read returns it and the word goes back to 0
    /// (unless another command replaced it first).
    pub fn post_command(&self, command: u32) {
        self.command
            .store(u64::from(command) | ONE_SHOT, Ordering::SeqCst);
    }

    /// The current command word.
    pub fn command(&self) -> u32 {
        low_half(self.command.load(Ordering::SeqCst))
    }

    /// The command as the guest reads it: a one-shot command is consumed.
    pub fn take_command(&self) -> u32 {
        let mut current = self.command.load(Ordering::SeqCst);
        while current & ONE_SHOT != 0 {
            match self
                .command
                .compare_exchange(current, 0, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        low_half(current)
    }

    /// The status of the first DONE the guest signalled, if any.
    pub fn done_status(&self) -> Option<u64> {
        self.done_status.lock().ok().and_then(|s| *s)
    }

    fn record_done(&self, status: u64) {
        if let Ok(mut slot) = self.done_status.lock() {
            slot.get_or_insert(status);
        }
    }
}

fn low_half(word: u64) -> u32 {
    (word & 0xffff_ffff) as u32
}

/// What a port access did; `Unclaimed` means the caller should treat the port as
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAccess {
    /// The debug port handled it.
    Handled,
    /// Not a debug-port access (another port, or a wrong width).
    Unclaimed,
}

/// One vCPU's view of the debug port.
pub struct DebugPort {
    argument: u64,
    /// A PARK not yet turned into a stop of the vCPU: its argument.
    park: Option<u64>,
    control: Arc<DebugControl>,
    signals: SignalSink,
    console: Console,
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort")
            .field("argument", &self.argument)
            .field("park", &self.park)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl DebugPort {
    /// A debug port with an empty latch.
    pub fn new(control: Arc<DebugControl>, signals: SignalSink, console: Console) -> Self {
        Self {
            argument: 0,
            park: None,
            control,
            signals,
            console,
        }
    }

    /// The argument latch (a snapshot keeps it: a guest paused between writing its
    /// argument and its signal sends that argument after a restore).
    pub fn argument(&self) -> u64 {
        self.argument
    }

    /// This port with its latch holding `argument` (a restored vCPU's).
    pub fn with_argument(mut self, argument: u64) -> Self {
        self.argument = argument;
        self
    }

    /// Handles an `OUT`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> PortAccess {
        match (port, data) {
            (DEBUGCON_PORT, [byte]) => self.console.write_bytes(&[*byte]),
            (ARG_LO_PORT, &[a, b, c, d]) => {
                let low = u64::from(u32::from_le_bytes([a, b, c, d]));
                self.argument = (self.argument & !0xffff_ffff) | low;
            }
            (ARG_HI_PORT, &[a, b, c, d]) => {
                let high = u64::from(u32::from_le_bytes([a, b, c, d]));
                self.argument = (self.argument & 0xffff_ffff) | (high << 32);
            }
            (EVENT_PORT, &[a, b, c, d]) => self.signal(u32::from_le_bytes([a, b, c, d])),
            _ => return PortAccess::Unclaimed,
        }
        PortAccess::Handled
    }

    /// Handles an `IN`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) -> PortAccess {
        match (port, data.len()) {
            (EVENT_PORT, 4) => {
                data.copy_from_slice(&self.control.take_command().to_le_bytes());
                PortAccess::Handled
            }
            _ => PortAccess::Unclaimed,
        }
    }

    /// Takes a pending PARK: `Some(argument)` once per PARK the guest sent.
    pub fn take_park(&mut self) -> Option<u64> {
        self.park.take()
    }

    fn signal(&mut self, code: u32) {
        let argument = self.argument;
        let signal = match code {
            SIGNAL_PARK => {
                // The vCPU thread reports it (it knows its index) when it parks.
                self.park = Some(argument);
                return;
            }
            SIGNAL_DONE => {
                self.control.record_done(argument);
                DebugSignal::Done { status: argument }
            }
            _ => DebugSignal::Guest { code, argument },
        };
        (self.signals)(signal);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, channel};

    use super::*;

    fn port() -> (DebugPort, Receiver<DebugSignal>, Arc<DebugControl>, Console) {
        let (tx, rx) = channel();
        let sink = signal_sink(tx);
        let control = Arc::new(DebugControl::default());
        let console = Console::capture();
        (
            DebugPort::new(control.clone(), sink, console.clone()),
            rx,
            control,
            console,
        )
    }

    fn out32(port: &mut DebugPort, number: u16, value: u32) -> PortAccess {
        port.write(number, &value.to_le_bytes())
    }

    #[test]
    fn a_restored_latch_is_what_the_next_signal_sends() {
        let (port, rx, _, _) = port();
        let mut port = port.with_argument(0x1234_5678_9abc);
        assert_eq!(port.argument(), 0x1234_5678_9abc);
        out32(&mut port, EVENT_PORT, 7);
        assert_eq!(
            rx.try_recv().unwrap(),
            DebugSignal::Guest {
                code: 7,
                argument: 0x1234_5678_9abc
            }
        );
    }

    #[test]
    fn latch_then_signal() {
        let (mut p, rx, control, _) = port();
        out32(&mut p, ARG_LO_PORT, 0x1234_5678);
        out32(&mut p, ARG_HI_PORT, 0x9);
        assert_eq!(out32(&mut p, EVENT_PORT, 1), PortAccess::Handled);
        assert_eq!(
            rx.try_recv().ok(),
            Some(DebugSignal::Guest {
                code: 1,
                argument: 0x9_1234_5678
            })
        );
        // The latch keeps its value; a new low half replaces only the low half.
        out32(&mut p, ARG_LO_PORT, 7);
        out32(&mut p, EVENT_PORT, SIGNAL_DONE);
        assert_eq!(
            rx.try_recv().ok(),
            Some(DebugSignal::Done {
                status: 0x9_0000_0007
            })
        );
        assert_eq!(control.done_status(), Some(0x9_0000_0007));
        out32(&mut p, ARG_HI_PORT, 0);
        out32(&mut p, ARG_LO_PORT, 3);
        out32(&mut p, EVENT_PORT, 99);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![DebugSignal::Guest {
                code: 99,
                argument: 3
            }]
        );
    }

    #[test]
    fn park_is_taken_once_and_sends_no_signal() {
        let (mut p, rx, _, _) = port();
        assert_eq!(p.take_park(), None);
        out32(&mut p, ARG_LO_PORT, 0x20_0000);
        out32(&mut p, EVENT_PORT, SIGNAL_PARK);
        assert_eq!(p.take_park(), Some(0x20_0000));
        assert_eq!(p.take_park(), None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn first_done_wins() {
        let (mut p, _rx, control, _) = port();
        out32(&mut p, EVENT_PORT, SIGNAL_DONE);
        out32(&mut p, ARG_LO_PORT, 5);
        out32(&mut p, EVENT_PORT, SIGNAL_DONE);
        assert_eq!(control.done_status(), Some(0));
    }

    #[test]
    fn sticky_and_one_shot_commands_and_console_bytes() {
        let (mut p, _rx, control, console) = port();
        let mut data = [0xffu8; 4];
        let mut read = |p: &mut DebugPort| {
            assert_eq!(p.read(EVENT_PORT, &mut data), PortAccess::Handled);
            u32::from_le_bytes(data)
        };
        assert_eq!(read(&mut p), 0);
        control.post_command(2);
        assert_eq!(control.command(), 2);
        assert_eq!(read(&mut p), 2);
        assert_eq!(read(&mut p), 0, "a one-shot command is consumed");
        control.set_command(1);
        assert_eq!(read(&mut p), 1);
        assert_eq!(read(&mut p), 1, "a sticky command stays");
        // A one-shot command replaced before it was read is gone.
        control.post_command(2);
        control.set_command(1);
        assert_eq!(read(&mut p), 1);
        assert_eq!(read(&mut p), 1);
        p.write(DEBUGCON_PORT, b"o");
        p.write(DEBUGCON_PORT, b"k");
        assert_eq!(console.captured(), b"ok");
    }

    #[test]
    fn wrong_widths_are_unclaimed() {
        let (mut p, rx, _, console) = port();
        assert_eq!(p.write(EVENT_PORT, &[1]), PortAccess::Unclaimed);
        assert_eq!(p.write(ARG_LO_PORT, &[1, 2]), PortAccess::Unclaimed);
        assert_eq!(p.write(DEBUGCON_PORT, &[1, 2]), PortAccess::Unclaimed);
        let mut byte = [0u8; 1];
        assert_eq!(p.read(EVENT_PORT, &mut byte), PortAccess::Unclaimed);
        assert_eq!(p.read(DEBUGCON_PORT, &mut byte), PortAccess::Unclaimed);
        assert!(rx.try_recv().is_err());
        assert!(console.captured().is_empty());
    }
}
