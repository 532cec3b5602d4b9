//! Helpers shared by the integration tests that boot guests on KVM.

use std::time::Duration;

pub use vmm::guest::{BuiltinProtocol, GuestSignal};
use vmm::{Console, Descriptor, ExitOutcome, GuestMode, Vm, VmConfig, VmEvent, build_vm};

pub use vmm::test_support::{kvm_available, kvm_required};

/// How long a test waits for each guest event.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Guest RAM of the test VMs: 64 MiB (the built-in guest needs 32), so that hashing all
/// of RAM around every walk stays cheap.
pub fn test_memory() -> vmm::MemorySize {
    vmm::MemorySize::from_bytes(64 << 20).unwrap_or_default()
}

/// A hash of all guest RAM, to prove a walk wrote nothing (FNV-style over 64-bit words).
pub fn hash_ram(vm: &Vm) -> u64 {
    hash_memory(vm.guest_memory())
}

/// [`hash_ram`] of any guest memory (a live VM's, a snapshot's, a dump's).
pub fn hash_memory<M: vm_memory::GuestMemoryBackend>(mem: &M) -> u64 {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion};
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    for region in mem.iter() {
        let mut off = 0;
        while off < region.len() {
            let n = (region.len() - off).min(buf.len() as u64) as usize;
            let addr = GuestAddress(region.start_addr().0 + off);
            if let Err(e) = mem.read_slice(&mut buf[..n], addr) {
                panic!("cannot read guest RAM at {addr:?}: {e}");
            }
            for word in buf[..n].chunks_exact(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            off += n as u64;
        }
    }
    h
}

/// Boots the built-in guest with a captured console.
pub fn boot(mode: GuestMode, vcpus: u8) -> (Vm, Console) {
    let console = Console::capture();
    let config = VmConfig {
        vcpus,
        console: console.clone(),
        memory: test_memory(),
        ..VmConfig::builtin(mode)
    };
    match build_vm(&config) {
        Ok(vm) => (vm, console),
        Err(e) => panic!("cannot boot the built-in guest ({mode:?}): {e}"),
    }
}

/// Waits for READY and parses the descriptor.
pub fn ready(vm: &Vm, console: &Console) -> Descriptor {
    let gpa = match vm.wait_ready(TIMEOUT) {
        Ok(gpa) => gpa,
        Err(e) => panic!(
            "no READY: {e}\nconsole:\n{}",
            String::from_utf8_lossy(&console.captured())
        ),
    };
    match Descriptor::read(vm.guest_memory(), gpa) {
        Ok(descriptor) => descriptor,
        Err(e) => panic!("invalid descriptor at {gpa:?}: {e}"),
    }
}

/// Waits for the next heartbeat; panics if the guest stops.
pub fn next_heartbeat(vm: &Vm) -> u64 {
    loop {
        match vm.wait_event(TIMEOUT) {
            Ok(VmEvent::VcpuStopped { vcpu, stop, dump }) => panic!(
                "guest stopped while running: vCPU {vcpu}: {stop}\n{}",
                dump.map(|d| d.to_string())
                    .unwrap_or_else(|| "(no register dump)".into())
            ),
            Ok(event) => {
                if let Some(GuestSignal::Heartbeat { iteration }) = GuestSignal::of(&event) {
                    return iteration;
                }
            }
            Err(e) => panic!("no heartbeat: {e}"),
        }
    }
}

/// The address space (0 or 1) whose CR3 the vCPU has loaded.
pub fn space_of(descriptor: &Descriptor, cr3: u64) -> u8 {
    match descriptor.cr3.iter().position(|c| *c == cr3) {
        Some(space) => space as u8,
        None => panic!("vCPU CR3 {cr3:#x} is neither of {:#x?}", descriptor.cr3),
    }
}

/// Sends FINISH and asserts the guest reports success.
pub fn finish(vm: &Vm, console: &Console) {
    vm.finish();
    match vm.wait(TIMEOUT) {
        Ok(ExitOutcome::Done { status: 0 }) => {}
        other => panic!(
            "guest did not finish cleanly: {other:?}\nconsole:\n{}",
            String::from_utf8_lossy(&console.captured())
        ),
    }
    let output = String::from_utf8_lossy(&console.captured()).into_owned();
    assert!(
        output.contains("READY") && output.contains("DONE"),
        "{output}"
    );
}

/// CR4.LA57: the vCPU runs with 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;

/// Whether `va` needs 5-level paging: not canonical with 48 bits (beyond 2^48 in the
/// lower half, or a kernel-half address only canonical with 57 bits).
pub fn beyond_48_bits(va: u64) -> bool {
    !walker::Gva(va).is_canonical(48)
}

/// Checks that the guest runs in the paging mode its CPUID decides, and says which:
/// 5-level (`true`) exactly when the vCPU's CPUID offers LA57. Then the vCPU has CR4.LA57,
/// the descriptor reports LA57 and lists, in every address space, mappings beyond 48
/// bits in both halves; otherwise none of that.
pub fn check_paging_mode(vm: &Vm, descriptor: &Descriptor, state: &vmm::VcpuState) -> bool {
    let la57 = vm.paging_features().la57;
    assert_eq!(
        state.cr4 & CR4_LA57 != 0,
        la57,
        "CPUID offers LA57: {la57}, but CR4 is {:#x}",
        state.cr4
    );
    assert_eq!(
        descriptor.features.contains(vmm::guest::Features::LA57),
        la57,
        "descriptor features {:#x} vs CPUID LA57 {la57}",
        descriptor.features.0
    );
    for space in 0..descriptor.space_count as u8 {
        let high: Vec<u64> = descriptor
            .runs_of_space(space)
            .map(|r| r.va.0)
            .filter(|va| beyond_48_bits(*va))
            .collect();
        let lower = high.iter().filter(|va| **va >> 63 == 0).count();
        let upper = high.len() - lower;
        assert_eq!(
            (lower > 0, upper > 0),
            (la57, la57),
            "space {space}: runs beyond 48 bits {high:#x?} with LA57 {la57}"
        );
    }
    la57
}

/// An address space as `vmm inspect --format tlb` prints it (QEMU's `info tlb` lines).
pub fn tlb_lines<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    ctx: &walker::PagingContext,
) -> Vec<String> {
    let mut out = Vec::new();
    vmm::introspect::print_walk(
        mem,
        ctx,
        &vmm::introspect::VaRange::default(),
        walker::Granularity::AsMapped,
        vmm::introspect::Format::Tlb,
        walker::WalkOptions::default(),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect()
}
