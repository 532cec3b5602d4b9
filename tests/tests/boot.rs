//! Boots the built-in guest on KVM: READY, descriptor, pause/translate/resume,
//! FINISH, DONE; hostile and triple-fault modes; several vCPUs.

use std::sync::atomic::Ordering;

use guestwalk_tests::BuiltinProtocol;
use guestwalk_tests::{
    TIMEOUT, beyond_48_bits, boot, check_paging_mode, finish, kvm_available, next_heartbeat, ready,
    space_of,
};
use vm_memory::{Bytes, GuestAddress};
use vmm::arch::x86_64::layout;
use vmm::exit::VcpuStop;
use vmm::guest::{Run, RunLevel};
use vmm::{Descriptor, ExitOutcome, GuestMode, Vm, VmError};
use walker::Gva;

/// Non-present entries the built-in guest leaves on purpose (guest.S): a PTE, a PDE,
/// a PDPTE and a PML4E.
const HOLES: [u64; 4] = [0x4000_4000, 0x4020_0000, 0x8000_0000, 0x80_0000_0000];
/// With 5-level paging, also non-present PML5Es: slot 1 of the lower half and slot 256,
/// the first of the kernel half (addresses that are not canonical with 4-level paging).
const HOLES_5LEVEL: [u64; 2] = [1 << 48, 0xff00_0000_0000_0000];

/// Checks the first and last leaf of every run of `space` against KVM_TRANSLATE, and
/// that the guest's holes are holes. (KVM_TRANSLATE on x86 always reports
/// writeable = 1 and usermode = 0, so only `valid` and the GPA are compared.)
/// Returns how many of the translated addresses lie beyond 48 bits.
fn check_against_kvm(vm: &Vm, descriptor: &Descriptor, space: u8, la57: bool) -> usize {
    let holes_5level: &[u64] = if la57 { &HOLES_5LEVEL } else { &[] };
    let mut beyond_48 = 0;
    for &hole in HOLES.iter().chain(holes_5level) {
        assert!(
            !descriptor
                .runs_of_space(space)
                .any(|r| (r.va.0..r.va.0 + r.len()).contains(&hole)),
            "hole {hole:#x} is described as mapped"
        );
        match vm.translate(0, Gva(hole)) {
            Ok(t) => assert!(!t.valid, "hole {hole:#x} translates to {:?}", t.gpa),
            Err(e) => panic!("translate {hole:#x}: {e}"),
        }
    }
    let runs: Vec<&Run> = descriptor.runs_of_space(space).collect();
    assert!(!runs.is_empty(), "space {space} has no runs");
    for run in runs {
        let size = run.level.page_size();
        for leaf in [0, run.count - 1] {
            let va = run.va.0 + leaf * size + 0x10;
            let t = match vm.translate(0, Gva(va)) {
                Ok(t) => t,
                Err(e) => panic!("translate {va:#x}: {e}"),
            };
            assert!(t.valid, "{va:#x} of {run:x?} is not mapped per KVM");
            assert_eq!(
                t.gpa.0,
                run.pa.0 + leaf * size + 0x10,
                "{va:#x} of {run:x?}"
            );
            if beyond_48_bits(va) {
                beyond_48 += 1;
            }
        }
    }
    beyond_48
}

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1 << 0;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const PAGE_SIZE_BIT: u64 = 1 << 7;

/// One leaf: (va, pa, level, the whole entry).
type Leaf = (u64, u64, u32, u64);

fn entry(vm: &Vm, table: u64, index: u64) -> u64 {
    let at = GuestAddress((table & ADDR_MASK) + index * 8);
    match vm.guest_memory().load::<u64>(at, Ordering::Relaxed) {
        Ok(value) => value,
        Err(e) => panic!("page-table entry at {at:?} is not in RAM: {e}"),
    }
}

/// PML4 slots the hostile guest fills with adversarial structures (guest.S), in the
/// PML4 of the lower 256 TiB (the root, or what PML5[0] points to).
const HOSTILE_PML4_SLOTS: [std::ops::RangeInclusive<u64>; 2] = [16..=47, 100..=103];
/// PML5 slots the hostile guest fills with 5-level paging (guest.S, build_hostile_pml5).
const HOSTILE_PML5_SLOTS: [std::ops::RangeInclusive<u64>; 1] = [100..=103];

/// The PML4 of the lower 256 TiB of the space with root `cr3`.
fn lower_pml4(vm: &Vm, cr3: u64, la57: bool) -> u64 {
    if la57 {
        let e5 = entry(vm, cr3, 0);
        assert_ne!(e5 & PRESENT, 0, "PML5[0] of {cr3:#x} is not present");
        e5 & ADDR_MASK
    } else {
        cr3 & ADDR_MASK
    }
}

/// Every present leaf reachable from `cr3` (5-level paging with `la57`, else 4-level),
/// skipping the slots `skip` of the lower PML4 and `skip_pml5` of the PML5 (this simple
/// walk has no budget, so hostile structures must be skipped).
fn walk_all_leaves(
    vm: &Vm,
    cr3: u64,
    la57: bool,
    skip: &[std::ops::RangeInclusive<u64>],
    skip_pml5: &[std::ops::RangeInclusive<u64>],
) -> Vec<Leaf> {
    if !la57 {
        return walk_pml4(vm, cr3, None, skip);
    }
    let mut leaves = Vec::new();
    for i5 in 0..512u64 {
        let e5 = entry(vm, cr3, i5);
        if e5 & PRESENT == 0 || skip_pml5.iter().any(|slots| slots.contains(&i5)) {
            continue;
        }
        assert_eq!(e5 & PAGE_SIZE_BIT, 0, "PS in PML5[{i5}]");
        // Sign-extend bit 56 for the upper half.
        let va5 = (((i5 << 48) << 7) as i64 >> 7) as u64;
        let skip: &[_] = if i5 == 0 { skip } else { &[] };
        leaves.extend(walk_pml4(vm, e5, Some(va5), skip));
    }
    leaves
}

/// The leaves under one PML4: the root in 4-level paging (`base` None: VAs sign-extended
/// from bit 47), or under the PML5 slot whose first VA is `base` (already sign-extended).
fn walk_pml4(
    vm: &Vm,
    pml4: u64,
    base: Option<u64>,
    skip: &[std::ops::RangeInclusive<u64>],
) -> Vec<Leaf> {
    let mut leaves = Vec::new();
    for i4 in 0..512u64 {
        let e4 = entry(vm, pml4, i4);
        if e4 & PRESENT == 0 || skip.iter().any(|slots| slots.contains(&i4)) {
            continue;
        }
        let va4 = match base {
            // 4-level: sign-extend bit 47 for the upper half.
            None => (((i4 << 39) << 16) as i64 >> 16) as u64,
            Some(base) => base | (i4 << 39),
        };
        for i3 in 0..512u64 {
            let e3 = entry(vm, e4, i3);
            let va3 = va4 | (i3 << 30);
            if e3 & PRESENT == 0 {
                continue;
            }
            if e3 & PAGE_SIZE_BIT != 0 {
                leaves.push((va3, e3 & ADDR_MASK & !((1 << 30) - 1), 3, e3));
                continue;
            }
            for i2 in 0..512u64 {
                let e2 = entry(vm, e3, i2);
                let va2 = va3 | (i2 << 21);
                if e2 & PRESENT == 0 {
                    continue;
                }
                if e2 & PAGE_SIZE_BIT != 0 {
                    leaves.push((va2, e2 & ADDR_MASK & !((1 << 21) - 1), 2, e2));
                    continue;
                }
                for i1 in 0..512u64 {
                    let e1 = entry(vm, e2, i1);
                    if e1 & PRESENT != 0 {
                        leaves.push((va2 | (i1 << 12), e1 & ADDR_MASK, 1, e1));
                    }
                }
            }
        }
    }
    leaves
}

/// Checks that the descriptor lists exactly the leaves reachable from each CR3, with
/// the bits the guest wrote, and that the CPU set Accessed/Dirty where the guest
/// touched the pages before READY.
fn check_descriptor_is_exact(
    vm: &Vm,
    descriptor: &Descriptor,
    la57: bool,
    skip: &[std::ops::RangeInclusive<u64>],
    skip_pml5: &[std::ops::RangeInclusive<u64>],
) {
    for space in 0..descriptor.space_count as u8 {
        let actual = walk_all_leaves(vm, descriptor.cr3[space as usize], la57, skip, skip_pml5);
        let mut expected: Vec<(Leaf, &Run)> = Vec::new();
        for run in descriptor.runs_of_space(space) {
            let size = run.level.page_size();
            let level = match run.level {
                RunLevel::Pte4K => 1,
                RunLevel::Pmd2M => 2,
                RunLevel::Pud1G => 3,
            };
            for k in 0..run.count {
                expected.push((
                    (
                        run.va.0 + k * size,
                        run.pa.0 + k * size,
                        level,
                        run.leaf_bits(),
                    ),
                    run,
                ));
            }
        }
        expected.sort_by_key(|((va, ..), _)| *va);
        assert_eq!(
            actual.len(),
            expected.len(),
            "space {space}: walked {} leaves, the descriptor lists {}",
            actual.len(),
            expected.len()
        );
        for (got, ((va, pa, level, bits), run)) in actual.iter().zip(&expected) {
            assert_eq!(
                (got.0, got.1, got.2, (got.3 ^ got.1) & !(ACCESSED | DIRTY)),
                (*va, *pa, *level, *bits),
                "space {space}: walked leaf vs descriptor run {run:x?}"
            );
            if run.wrote() {
                assert_ne!(
                    got.3 & DIRTY,
                    0,
                    "space {space}: {va:#x} written but not dirty"
                );
            }
            if run.read() || run.wrote() {
                assert_ne!(
                    got.3 & ACCESSED,
                    0,
                    "space {space}: {va:#x} touched but not accessed"
                );
            }
        }
    }
}

#[test]
fn builtin_guest_boots_pauses_and_finishes() {
    if !kvm_available("builtin_guest_boots_pauses_and_finishes") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 1);
    let descriptor = ready(&vm, &console);
    assert_eq!(descriptor.space_count, 2);
    assert!(descriptor.runs_of_space(0).count() > 0);
    assert_eq!(
        descriptor.runs_of_space(0).count(),
        descriptor.runs_of_space(1).count()
    );
    assert_ne!(descriptor.cr3[0], descriptor.cr3[1]);
    // The guest's own code is identity-mapped and described.
    assert!(
        descriptor
            .runs
            .iter()
            .any(|r| r.va.0 == layout::GUEST_IMAGE_START.0 && r.pa == layout::GUEST_IMAGE_START)
    );

    let mut last_heartbeat = next_heartbeat(&vm);
    let mut spaces_seen = [false; 2];
    let mut la57 = None;
    for round in 0..6 {
        let states = match vm.pause() {
            Ok(states) => states,
            Err(e) => panic!("pause {round}: {e}"),
        };
        assert_eq!(states.len(), 1);
        let bsp = states[0];
        assert!(!bsp.finished);
        // The guest has talked to the debug port (READY, heartbeats) by now.
        assert!(
            bsp.last_io
                .is_some_and(|io| io.count > 0 && io.port >= 0xe9),
            "{:?}",
            bsp.last_io
        );
        // Long mode with paging, on the guest's own tables.
        assert_ne!(bsp.cr0 & (1 << 31), 0);
        assert_ne!(bsp.efer & (1 << 10), 0);
        let space = space_of(&descriptor, bsp.cr3);
        spaces_seen[space as usize] = true;
        // 5-level paging exactly when the CPUID offers LA57.
        let five = *la57.get_or_insert_with(|| check_paging_mode(&vm, &descriptor, &bsp));
        // A second read while paused gives the same state.
        match vm.pause() {
            Ok(again) => assert_eq!(again[0], bsp, "state changed while paused"),
            Err(e) => panic!("second pause {round}: {e}"),
        }
        let beyond_48 = check_against_kvm(&vm, &descriptor, space, five);
        assert_eq!(beyond_48 > 0, five, "KVM translated {beyond_48} such VAs");
        if round == 0 {
            check_descriptor_is_exact(&vm, &descriptor, five, &[], &[]);
        }
        if let Err(e) = vm.resume() {
            panic!("resume {round}: {e}");
        }
        let heartbeat = next_heartbeat(&vm);
        assert!(
            heartbeat > last_heartbeat,
            "guest did not progress after resume"
        );
        last_heartbeat = heartbeat;
    }
    eprintln!("address spaces seen while paused: {spaces_seen:?}");
    assert!(matches!(
        vm.translate(0, Gva(0x10_0000)),
        Err(VmError::NotPaused)
    ));
    finish(&vm, &console);
    // After the end, the vCPU still answers (stopped for good).
    match vm.pause() {
        Ok(states) => assert!(states[0].finished),
        Err(e) => panic!("pause after the end: {e}"),
    }
}

#[test]
fn hostile_guest_boots_and_finishes() {
    if !kvm_available("hostile_guest_boots_and_finishes") {
        return;
    }
    let (vm, console) = boot(GuestMode::Hostile, 1);
    let descriptor = ready(&vm, &console);
    assert_eq!(descriptor.space_count, 2);
    next_heartbeat(&vm);
    let states = match vm.pause() {
        Ok(states) => states,
        Err(e) => panic!("pause: {e}"),
    };
    let space = space_of(&descriptor, states[0].cr3);
    let la57 = check_paging_mode(&vm, &descriptor, &states[0]);
    check_against_kvm(&vm, &descriptor, space, la57);
    check_descriptor_is_exact(
        &vm,
        &descriptor,
        la57,
        &HOSTILE_PML4_SLOTS,
        &HOSTILE_PML5_SLOTS,
    );
    // The hostile slots are really there, and self-referencing.
    let root = descriptor.cr3[space as usize] & ADDR_MASK;
    let pml4 = lower_pml4(&vm, descriptor.cr3[space as usize], la57);
    assert_eq!(entry(&vm, pml4, 100) & ADDR_MASK, pml4);
    assert_ne!(entry(&vm, pml4, 103) & PAGE_SIZE_BIT, 0);
    // The fan-out region (PML4 slot 16) is reachable and maps the same frame everywhere.
    let translate = |va: u64| match vm.translate(0, Gva(va)) {
        Ok(t) => t,
        Err(e) => panic!("translate {va:#x}: {e}"),
    };
    let first = translate(16 << 39);
    let far = translate((16 << 39) | (300 << 30) | (7 << 21) | (9 << 12));
    assert!(first.valid && far.valid && first.gpa == far.gpa);
    // 5-level: the PML5's own hostile slots. Through the self-reference (slot 100) the
    // CPU takes the PML5, PML4, PDPT and PD as the levels below, so VA 100 << 48 ends on
    // the page table of VA 0..2 MiB, a page of the table pool; slots 101 (outside RAM)
    // and 103 (PS, reserved in a PML5E) translate to nothing.
    let pml5_slots = [100, 101, 103].map(|i| entry(&vm, root, i));
    if la57 {
        assert_eq!(pml5_slots[0] & ADDR_MASK, root);
        assert_eq!(pml5_slots[1] & ADDR_MASK, 0xf_0000_3000);
        // Slot 103 holds a PML4's address with PS: the guest writes it in space A's PML5
        // and space B's is a copy, so it names space A's lower PML4 in both spaces (the
        // vCPU may be paused in either).
        let space_a_pml4 = lower_pml4(&vm, descriptor.cr3[0], la57);
        assert_eq!(
            pml5_slots[2] & (ADDR_MASK | PAGE_SIZE_BIT),
            space_a_pml4 | PAGE_SIZE_BIT
        );
        let self_ref = translate(100 << 48);
        let pd = entry(&vm, entry(&vm, pml4, 0), 0);
        assert!(self_ref.valid, "{self_ref:?}");
        assert_eq!(self_ref.gpa.0, entry(&vm, pd, 0) & ADDR_MASK);
        assert!(layout::GUEST_TABLE_POOL.0 <= self_ref.gpa.0 && self_ref.gpa.0 < 0x40_0000);
        for va in [101u64 << 48, 103 << 48] {
            assert!(!translate(va).valid, "{va:#x}");
        }
    }
    if let Err(e) = vm.resume() {
        panic!("resume: {e}");
    }
    finish(&vm, &console);
}

#[test]
fn triple_fault_mode_reports_the_shutdown() {
    if !kvm_available("triple_fault_mode_reports_the_shutdown") {
        return;
    }
    let (vm, console) = boot(GuestMode::TripleFault, 1);
    let outcome = match vm.wait_ready(TIMEOUT) {
        Err(VmError::Stopped { outcome, .. }) => *outcome,
        other => panic!("expected the guest to die before READY, got {other:?}"),
    };
    assert!(!outcome.is_success());
    let ExitOutcome::Failed { vcpu, stop, dump } = &outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!((*vcpu, stop), (0, &VcpuStop::Shutdown));
    assert!(dump.is_some());
    let message = outcome.to_string();
    assert!(
        message.contains("triple fault")
            && message.contains("RIP=")
            && message.contains("last port I/O: "),
        "{message}"
    );
    let output = String::from_utf8_lossy(&console.captured()).into_owned();
    assert!(output.contains("triple-fault mode"), "{output}");
}

#[test]
fn two_vcpus_boot_pause_and_finish() {
    if !kvm_available("two_vcpus_boot_pause_and_finish") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 2);
    ready(&vm, &console);
    for round in 0..3 {
        let started = std::time::Instant::now();
        let states = match vm.pause() {
            Ok(states) => states,
            Err(e) => panic!("pause {round}: {e}"),
        };
        eprintln!("pause of 2 vCPUs took {:?}", started.elapsed());
        assert_eq!(states.len(), 2);
        // The AP spins in its `pause; jmp` loop at the AP entry, never exiting.
        let ap = states[1];
        assert!(
            (layout::GUEST_AP_ENTRY.0..layout::GUEST_AP_ENTRY.0 + 4).contains(&ap.rip),
            "AP at {:#x}",
            ap.rip
        );
        if let Err(e) = vm.resume() {
            panic!("resume {round}: {e}");
        }
    }
    next_heartbeat(&vm);
    finish(&vm, &console);
}
