//! The debug port's PARK on a live vCPU, with the built-in guest's park mode (a PARK
//! with its iteration count after every heartbeat): the vCPU stays where it parked until
//! the VMM lets it go, a pause and resume in between does not confuse it, a stale unpark
//! is answered at once, and the VMM's own waits let parks go. (The Linux guest's THP
//! process uses the same PARK; tests/tests/linux.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use guestwalk_tests::BuiltinProtocol;
use guestwalk_tests::{TIMEOUT, boot, kvm_available, ready};
use vmm::{ExitOutcome, GuestMode, Vm, VmEvent};

/// The next PARK: `(vcpu, argument)`.
fn next_park(vm: &Vm) -> (u8, u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match vm.wait_event_until(deadline, TIMEOUT) {
            Ok(VmEvent::Parked { vcpu, argument }) => return (vcpu, argument),
            Ok(VmEvent::VcpuStopped { vcpu, stop, .. }) => panic!("vCPU {vcpu} stopped: {stop}"),
            Ok(_) => {}
            Err(e) => panic!("no PARK: {e}"),
        }
    }
}

/// The pause completed the PARK's `out %eax, %dx` (0xEF): RIP is past it, at the
/// `ret` (0xC3) of the guest's `debug_event`, not at the OUT, which a resume from saved
/// registers would run a second time.
fn assert_out_completed(vm: &Vm, state: &vmm::VcpuState, round: usize) {
    use vm_memory::{Bytes, GuestAddress};
    assert!(!state.io_pending, "round {round}: the OUT is still pending");
    let at = |gva: u64| {
        let t = vm.translate(0, walker::Gva(gva)).unwrap();
        assert!(t.valid, "round {round}: RIP-1 {gva:#x} is not mapped");
        let byte: u8 = vm.guest_memory().read_obj(GuestAddress(t.gpa.0)).unwrap();
        byte
    };
    assert_eq!(
        (at(state.rip - 1), at(state.rip)),
        (0xef, 0xc3),
        "round {round}: RIP {:#x} is not just past the PARK's OUT",
        state.rip
    );
}

#[test]
fn a_parked_vcpu_stays_at_its_park_until_let_go() {
    if !kvm_available("a_parked_vcpu_stays_at_its_park_until_let_go") {
        return;
    }
    let (vm, console) = boot(GuestMode::Park, 2);
    ready(&vm, &console);
    let mut last = 0;
    for round in 0..8 {
        let (vcpu, iteration) = next_park(&vm);
        assert_eq!(vcpu, 0, "only the boot vCPU runs the loop");
        assert!(
            iteration > last,
            "round {round}: iteration {iteration} after {last}"
        );
        assert_eq!(iteration % 256, 0, "a PARK follows a heartbeat");
        last = iteration;
        // Parked: however long we wait, it does not run on. R12 is its loop counter.
        std::thread::sleep(Duration::from_millis(20));
        let states = vm.pause().unwrap();
        assert_eq!(
            states[0].regs.r12, iteration,
            "round {round}: it ran on while parked"
        );
        assert_out_completed(&vm, &states[0], round);
        if round % 2 == 0 {
            // A full resume ends the park too; the Parked event already read is now
            // stale, and unparking a running vCPU is answered at once (not parked).
            vm.resume().unwrap();
            assert!(
                !vm.resume_vcpu(vcpu).unwrap(),
                "round {round}: still parked"
            );
        } else {
            // Ending the park while the VMM has the vCPU paused: the park ends, the
            // pause does not (the counter still stands still), until resume.
            assert!(vm.resume_vcpu(vcpu).unwrap(), "round {round}: was parked");
            std::thread::sleep(Duration::from_millis(20));
            let again = vm.pause().unwrap();
            assert_eq!(
                again[0].regs.r12, iteration,
                "round {round}: an unpark let a paused vCPU run"
            );
            vm.resume().unwrap();
        }
    }
    // The VMM's own wait lets further parks go: FINISH still ends the guest.
    vm.finish();
    let outcome = vm.wait(TIMEOUT).unwrap();
    assert_eq!(outcome, ExitOutcome::Done { status: 0 }, "{outcome}");
}

#[test]
fn unpark_answers_for_a_vcpu_that_never_parked() {
    if !kvm_available("unpark_answers_for_a_vcpu_that_never_parked") {
        return;
    }
    // vCPU 1 spins in the guest without ever exiting: the unpark must kick it out to
    // answer, and must not disturb it.
    let (vm, console) = boot(GuestMode::Normal, 2);
    ready(&vm, &console);
    let started = Instant::now();
    for _ in 0..20 {
        assert!(!vm.resume_vcpu(1).unwrap());
    }
    assert!(started.elapsed() < TIMEOUT);
    vm.pause().unwrap();
    vm.resume().unwrap();
    vm.finish();
    assert_eq!(vm.wait(TIMEOUT).unwrap(), ExitOutcome::Done { status: 0 });
}
