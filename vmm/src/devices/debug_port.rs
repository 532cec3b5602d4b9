//! The debug port: how test guests talk to the VMM.
//!
//! # Protocol
//!
//! | port | access | meaning |
//! |---|---|---|
//! | `0xE9` | 8-bit `OUT` | one console byte (QEMU "debugcon" style), copied to the VMM's console |
//! | `0x604` | 32-bit `OUT` | low 32 bits of the 64-bit argument latch |
//! | `0x608` | 32-bit `OUT` | high 32 bits of the argument latch |
//! | `0x600` | 32-bit `OUT` | event code, sent with the current argument latch (below) |
//! | `0x600` | 32-bit `IN` | the VMM's command: 0 = keep going, 1 = FINISH, 2 = NEXT_ROUND |
//!
//! Event codes: 1 READY (argument = GPA of the guest's descriptor, see
//! [`crate::guest::descriptor`]), 2 DONE (argument = status, 0 = success),
//! 3 HEARTBEAT (argument = iteration count), 4 MARK (argument = any value, for tests),
//! 5 ROUND_DONE (argument = GPA of the round record of the dirty-writer guest, see
//! [`crate::guest::RoundRecord`]), 6 PARK (argument = any value: the Linux test guest's
//! THP process sends its buffer's address).
//!
//! PARK stops the vCPU that sent it at the `OUT` (KVM completes the instruction when the
//! vCPU runs again), until the VMM resumes it ([`crate::vm::Vm::resume_vcpu`]): the VMM sees
//! the sender's registers, CR3 included, exactly as they were at the signal, however
//! long it takes to pause the other vCPUs. It arrives as [`VmEvent::Parked`]; a VMM that
//! does not want it ([`crate::vm::Vm::wait`], [`crate::vm::Vm::wait_ready`]) resumes the
//! vCPU at once.
//!
//! Commands: FINISH is sticky (every later read returns it). NEXT_ROUND (sent by
//! [`crate::vm::Vm::next_round`], for the dirty-writer guest `--mode dirty`) is consumed
//! by the read that returns it: the command goes back to 0, so one NEXT_ROUND starts
//! exactly one round however often the guest polls.
//! Other codes are reported as [`VmEvent::UnknownEvent`]. The latch keeps its value
//! after an event; each vCPU has its own latch. Accesses of another width to
//! `0x600..=0x60b`, and reads of `0x604`/`0x608`/`0xE9`, are treated like unknown
//! ports (reads return all ones, writes are ignored). The built-in guest writes its
//! console output to `0xE9`; the 16550 on `0x3f8` is there for other guests.
//!
//! Events go to the VMM thread over the VM's event channel; DONE's status is also
//! kept in [`DebugControl`] so that [`crate::vm::Vm::wait`] knows the guest's verdict
//! even when a caller consumed the event itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::console::Console;
use crate::events::VmEvent;

/// The console port.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// Event port (OUT: event code; IN: command).
pub const EVENT_PORT: u16 = 0x600;
/// Low half of the argument latch.
pub const ARG_LO_PORT: u16 = 0x604;
/// High half of the argument latch.
pub const ARG_HI_PORT: u16 = 0x608;

/// Event code READY.
pub const EVENT_READY: u32 = 1;
/// Event code DONE.
pub const EVENT_DONE: u32 = 2;
/// Event code HEARTBEAT.
pub const EVENT_HEARTBEAT: u32 = 3;
/// Event code MARK.
pub const EVENT_MARK: u32 = 4;
/// Event code ROUND_DONE.
pub const EVENT_ROUND_DONE: u32 = 5;
/// Event code PARK.
pub const EVENT_PARK: u32 = 6;

/// Command: keep going.
pub const COMMAND_CONTINUE: u32 = 0;
/// Command: finish, report DONE and stop.
pub const COMMAND_FINISH: u32 = 1;
/// Command: do one more round (dirty-writer guest); consumed when read.
pub const COMMAND_NEXT_ROUND: u32 = 2;

/// State shared between the VMM thread and every vCPU's debug port.
#[derive(Debug, Default)]
pub struct DebugControl {
    command: AtomicU32,
    done_status: Mutex<Option<u64>>,
}

impl DebugControl {
    /// Sets the command the guest reads from `0x600`.
    pub fn set_command(&self, command: u32) {
        self.command.store(command, Ordering::SeqCst);
    }

    /// The current command.
    pub fn command(&self) -> u32 {
        self.command.load(Ordering::SeqCst)
    }

    /// The command as the guest reads it: a NEXT_ROUND is consumed (the command goes
    /// back to CONTINUE), unless FINISH replaced it first.
    pub fn take_command(&self) -> u32 {
        match self.command.compare_exchange(
            COMMAND_NEXT_ROUND,
            COMMAND_CONTINUE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(next) => next,
            Err(current) => current,
        }
    }

    /// The status of the first DONE the guest reported, if any.
    pub fn done_status(&self) -> Option<u64> {
        self.done_status.lock().ok().and_then(|s| *s)
    }

    fn record_done(&self, status: u64) {
        if let Ok(mut slot) = self.done_status.lock() {
            slot.get_or_insert(status);
        }
    }
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
#[derive(Debug)]
pub struct DebugPort {
    argument: u64,
    /// A PARK not yet turned into a stop of the vCPU: its argument.
    park: Option<u64>,
    control: Arc<DebugControl>,
    events: Sender<VmEvent>,
    console: Console,
}

impl DebugPort {
    /// A debug port with an empty latch.
    pub fn new(control: Arc<DebugControl>, events: Sender<VmEvent>, console: Console) -> Self {
        Self {
            argument: 0,
            park: None,
            control,
            events,
            console,
        }
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
            (EVENT_PORT, &[a, b, c, d]) => self.event(u32::from_le_bytes([a, b, c, d])),
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

    fn event(&mut self, code: u32) {
        let argument = self.argument;
        if code == EVENT_PARK {
            // The vCPU thread reports it (it knows its index) when it parks.
            self.park = Some(argument);
            return;
        }
        let event = match code {
            EVENT_READY => VmEvent::Ready {
                descriptor: GuestAddress(argument),
            },
            EVENT_DONE => {
                self.control.record_done(argument);
                VmEvent::Done { status: argument }
            }
            EVENT_HEARTBEAT => VmEvent::Heartbeat {
                iteration: argument,
            },
            EVENT_MARK => VmEvent::Mark { value: argument },
            EVENT_ROUND_DONE => VmEvent::RoundDone {
                record: GuestAddress(argument),
            },
            _ => VmEvent::UnknownEvent { code, argument },
        };
        // Nobody listening (the VM handle is gone) is not the guest's problem.
        let _ = self.events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, channel};

    use super::*;

    fn port() -> (DebugPort, Receiver<VmEvent>, Arc<DebugControl>, Console) {
        let (tx, rx) = channel();
        let control = Arc::new(DebugControl::default());
        let console = Console::capture();
        (
            DebugPort::new(control.clone(), tx, console.clone()),
            rx,
            control,
            console,
        )
    }

    fn out32(port: &mut DebugPort, number: u16, value: u32) -> PortAccess {
        port.write(number, &value.to_le_bytes())
    }

    #[test]
    fn latch_then_event() {
        let (mut p, rx, control, _) = port();
        out32(&mut p, ARG_LO_PORT, 0x1234_5678);
        out32(&mut p, ARG_HI_PORT, 0x9);
        assert_eq!(out32(&mut p, EVENT_PORT, EVENT_READY), PortAccess::Handled);
        assert_eq!(
            rx.try_recv().ok(),
            Some(VmEvent::Ready {
                descriptor: GuestAddress(0x9_1234_5678)
            })
        );
        // The latch keeps its value; a new low half replaces only the low half.
        out32(&mut p, ARG_LO_PORT, 7);
        out32(&mut p, EVENT_PORT, EVENT_DONE);
        assert_eq!(
            rx.try_recv().ok(),
            Some(VmEvent::Done {
                status: 0x9_0000_0007
            })
        );
        assert_eq!(control.done_status(), Some(0x9_0000_0007));
        out32(&mut p, ARG_HI_PORT, 0);
        out32(&mut p, ARG_LO_PORT, 3);
        out32(&mut p, EVENT_PORT, EVENT_HEARTBEAT);
        out32(&mut p, EVENT_PORT, EVENT_MARK);
        out32(&mut p, EVENT_PORT, 99);
        let rest: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            rest,
            vec![
                VmEvent::Heartbeat { iteration: 3 },
                VmEvent::Mark { value: 3 },
                VmEvent::UnknownEvent {
                    code: 99,
                    argument: 3
                }
            ]
        );
    }

    #[test]
    fn park_is_taken_once_and_sends_no_event() {
        let (mut p, rx, _, _) = port();
        assert_eq!(p.take_park(), None);
        out32(&mut p, ARG_LO_PORT, 0x20_0000);
        out32(&mut p, EVENT_PORT, EVENT_PARK);
        assert_eq!(p.take_park(), Some(0x20_0000));
        assert_eq!(p.take_park(), None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn first_done_wins() {
        let (mut p, _rx, control, _) = port();
        out32(&mut p, EVENT_PORT, EVENT_DONE);
        out32(&mut p, ARG_LO_PORT, 5);
        out32(&mut p, EVENT_PORT, EVENT_DONE);
        assert_eq!(control.done_status(), Some(0));
    }

    #[test]
    fn command_reads_and_console_bytes() {
        let (mut p, _rx, control, console) = port();
        let mut data = [0xffu8; 4];
        assert_eq!(p.read(EVENT_PORT, &mut data), PortAccess::Handled);
        assert_eq!(u32::from_le_bytes(data), COMMAND_CONTINUE);
        control.set_command(COMMAND_FINISH);
        p.read(EVENT_PORT, &mut data);
        assert_eq!(u32::from_le_bytes(data), COMMAND_FINISH);
        p.write(DEBUGCON_PORT, b"o");
        p.write(DEBUGCON_PORT, b"k");
        assert_eq!(console.captured(), b"ok");
    }

    #[test]
    fn next_round_is_consumed_and_round_done_reported() {
        let (mut p, rx, control, _) = port();
        let mut data = [0u8; 4];
        control.set_command(COMMAND_NEXT_ROUND);
        p.read(EVENT_PORT, &mut data);
        assert_eq!(u32::from_le_bytes(data), COMMAND_NEXT_ROUND);
        p.read(EVENT_PORT, &mut data);
        assert_eq!(u32::from_le_bytes(data), COMMAND_CONTINUE, "consumed");
        control.set_command(COMMAND_FINISH);
        p.read(EVENT_PORT, &mut data);
        p.read(EVENT_PORT, &mut data);
        assert_eq!(u32::from_le_bytes(data), COMMAND_FINISH, "sticky");
        out32(&mut p, ARG_LO_PORT, 0x10_2000);
        out32(&mut p, ARG_HI_PORT, 0);
        out32(&mut p, EVENT_PORT, EVENT_ROUND_DONE);
        assert_eq!(
            rx.try_recv().ok(),
            Some(VmEvent::RoundDone {
                record: GuestAddress(0x10_2000)
            })
        );
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
