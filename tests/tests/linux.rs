//! Stock Linux under `vmm` (issue 4): Debian's cloud kernel boots, its test process maps
//! 64 MiB with transparent huge pages and parks its vCPU through the debug port, and the
//! walker walks *that process's* page tables, as Linux built them, from the parked vCPU's
//! CR3.
//!
//! Checked against the hardware and the guest itself:
//! - every leaf of the address space (first, last and a pseudo-random page of each)
//!   translates as `KVM_TRANSLATE` says;
//! - the THP buffer is 2 MiB leaves, user, writable, NX; split in the shadow copy it is
//!   512 consecutive 4 KiB shadow entries per leaf; and every one of its 16384 pages holds
//!   the value the process wrote there (its own address XOR a pattern), read through
//!   the walker's translation;
//! - the direct map (data: NX, writable, supervisor) and the kernel text (read-only,
//!   executable) where a `nokaslr` kernel puts them;
//! - guest RAM is unchanged by the walks.
//!
//! Variants: 1 vCPU in the guest's default paging mode (5-level when the host offers
//! LA57), 2 vCPUs (the ACPI MADT), the same kernel as an ELF vmlinux through its PVH
//! entry (2 vCPUs; 4-level, as Linux enables LA57 only in the decompressor the PVH entry
//! skips), `pti=on` (the user and the kernel CR3), `no5lvl`. vmm decompresses the
//! bzImage in all of them but one, which lets the guest's decompressor run; one more
//! keeps KASLR on, so the kernel runs where vmm relocated it.
//!
//! Snapshots and restore (issue 14): a chain of three generations from the THP process's
//! park, each equal to the RAM and the live walk of its pause; the first and the last
//! then restored, each running on to power-off with the process's buffer intact.
//!
//! Reboots and panics (issue 13): `reboot -f` with every reboot method of Linux on 1 and 2
//! vCPUs, a panic before `/init` and a sysrq crash with pvpanic each end the VM with the
//! documented outcome and status, promptly; each case prints the time from the guest's
//! request to the VM's end.
//!
//! Where they run: a stock kernel cannot boot on a PVM `/dev/kvm` (this project's
//! machines), so these tests need a hardware-style KVM host and the images of
//! `guest-images/linux/build.sh`, named by `GUESTWALK_LINUX_DIR`. CI runs them inside the
//! emulated KVM host of `guest-images/hwkvm/` with `GUESTWALK_REQUIRE_LINUX=1`, which
//! makes any missing piece a failure. Elsewhere they skip with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::Bytes;
use vmm::{
    Console, Decompress, Decompressed, LinuxBoot, MemorySize, VcpuState, Vm, VmConfig, VmEvent,
};
use walker::{
    Granularity, Gva, Leaf, Mapping, PageSize, PagingContext, PagingMode, TranslateError, mappings,
    translate,
};

use guestwalk_tests::{hash_ram, kvm_available};
use vmm::guest::protocol::SIGNAL_MARK;
use vmm::pause::PauseAt;

/// The THP process's buffer (guest-images/linux/thp.c).
const BUFFER_SIZE: u64 = 64 << 20;
/// What the process wrote at the start of each 4 KiB page: its address XOR this.
const PATTERN: u64 = 0x6775_6573_7477_6c6b;
/// Boot to the park and the end after it (the emulated host runs nested under TCG).
const LINUX_TIMEOUT: Duration = Duration::from_secs(180);
/// Where a `nokaslr` kernel puts its text, and its direct map in each paging mode.
const KERNEL_TEXT: u64 = 0xffff_ffff_8100_0000;
const DIRECT_MAP_4LEVEL: u64 = 0xffff_8880_0000_0000;
const DIRECT_MAP_5LEVEL: u64 = 0xff11_0000_0000_0000;
/// CR4.SMAP.
const CR4_SMAP: u64 = 1 << 21;
/// PTI: the user copy of the PGD is the page after the kernel's (CR3 bit 12).
const PTI_USER_PGD_BIT: u64 = 1 << 12;

fn require_linux() -> bool {
    std::env::var("GUESTWALK_REQUIRE_LINUX").is_ok_and(|v| v == "1")
}

/// The kernel (`bzImage`, or `vmlinux` for the PVH entry) and initramfs, or why this
/// test cannot run here.
fn images(test: &str, kernel: &str) -> Option<(PathBuf, PathBuf)> {
    let skip = |why: String| {
        assert!(
            !require_linux(),
            "{test}: GUESTWALK_REQUIRE_LINUX=1 but {why}"
        );
        eprintln!("{test}: skipped: {why}");
        None
    };
    if !kvm_available(test) {
        return None;
    }
    if vmm::kvm::host_is_pvm() {
        return skip(
            "/dev/kvm is PVM, where a stock kernel cannot boot; these tests run in the \
             emulated KVM host (guest-images/hwkvm)"
                .into(),
        );
    }
    let Some(dir) = std::env::var_os("GUESTWALK_LINUX_DIR").map(PathBuf::from) else {
        return skip("GUESTWALK_LINUX_DIR is not set (guest-images/linux/build.sh)".into());
    };
    let (kernel, initrd) = (dir.join(kernel), dir.join("initramfs.cpio.gz"));
    for file in [&kernel, &initrd] {
        if !file.is_file() {
            return skip(format!("{} does not exist", file.display()));
        }
    }
    Some((kernel, initrd))
}

/// A Linux guest whose THP process parked its vCPU.
struct Parked {
    vm: Vm,
    console: Console,
    /// The vCPU the process parked.
    vcpu: usize,
    states: Vec<VcpuState>,
    buffer: u64,
}

impl Parked {
    fn state(&self) -> &VcpuState {
        &self.states[self.vcpu]
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.captured()).into_owned()
    }

    fn context(&self, cr3: Option<u64>) -> PagingContext {
        self.vm.paging_context(self.state(), cr3).unwrap()
    }
}

/// How a test boots its kernel: who decompresses a bzImage, whether KASLR stays on, and
/// whether the VM has dirty logging.
#[derive(Clone, Copy)]
struct Boot {
    decompress: Decompress,
    kaslr: bool,
    dirty: bool,
}

/// The usual boot: vmm decompresses, `nokaslr` puts the kernel where the checks look.
const USUAL: Boot = Boot {
    decompress: Decompress::Vmm,
    kaslr: false,
    dirty: false,
};

/// The paused VM of a wait for a park, or a panic that says how the wait failed, with the
/// guest's console.
fn parked(
    test: &str,
    moment: &str,
    result: Result<Result<vmm::pause::Paused, vmm::ExitOutcome>, vmm::pause::PauseError>,
    console: &Console,
) -> vmm::pause::Paused {
    let console = || String::from_utf8_lossy(&console.captured()).into_owned();
    match result {
        Ok(Ok(paused)) => paused,
        Ok(Err(outcome)) => panic!(
            "{test}: the guest ended before {moment}: {outcome}\nconsole:\n{}",
            console()
        ),
        Err(e) => panic!("{test}: {e}\nconsole:\n{}", console()),
    }
}

fn boot_to_park(test: &str, kernel: &str, vcpus: u8, cmdline: &str) -> Option<Parked> {
    boot_to_park_with(test, kernel, vcpus, cmdline, USUAL)
}

fn boot_to_park_with(
    test: &str,
    kernel: &str,
    vcpus: u8,
    cmdline: &str,
    how: Boot,
) -> Option<Parked> {
    let (kernel, initrd) = images(test, kernel)?;
    let console = Console::capture();
    let boot = LinuxBoot {
        kernel,
        initrd: Some(initrd),
        // nokaslr: the kernel text and direct map where the checks look for them.
        // nosmap/clearcpuid=smap: KVM_TRANSLATE translates as an implicit supervisor
        // access, which SMAP forbids on user pages; without SMAP, KVM can vouch for the
        // user half too.
        cmdline: format!(
            "console=ttyS0 quiet panic=-1 {}nosmap clearcpuid=smap {cmdline}",
            if how.kaslr { "" } else { "nokaslr " }
        ),
        force: false,
        decompress: how.decompress,
    };
    let config = VmConfig {
        vcpus,
        console: console.clone(),
        memory: MemorySize::from_bytes(256 << 20).unwrap(),
        boot: vmm::BootSource::Linux(boot),
        dirty: how
            .dirty
            .then_some(vmm::DirtyConfig::new(vmm::DirtyLogChoice::Auto)),
    };
    let paused = parked(
        test,
        "the THP process parked",
        vmm::pause::boot_and_pause(&config, &PauseAt::Park, 0, LINUX_TIMEOUT),
        &console,
    );
    assert_eq!(
        paused.last_mark,
        Some(BUFFER_SIZE),
        "the process announces its buffer size"
    );
    assert_eq!(
        paused.state().cr4 & CR4_SMAP,
        0,
        "{test}: SMAP is on, so KVM_TRANSLATE cannot translate user pages"
    );
    let buffer = paused.park_argument.unwrap_or_default();
    Some(Parked {
        vm: paused.vm,
        console,
        vcpu: paused.vcpu,
        states: paused.states,
        buffer,
    })
}

/// Resumes the guest and checks that it ended by powering off, after the process
/// reported success and the console showed every one of `expected`. (The console is
/// only checked at the end: the guest's UART driver sends it asynchronously, so at the
/// park it may still be in the guest's buffers.)
fn finish(p: Parked, test: &str, expected: &[&str]) {
    p.vm.resume().unwrap();
    let outcome = p.vm.wait(LINUX_TIMEOUT).unwrap();
    let console = p.console();
    assert!(
        matches!(outcome, vmm::ExitOutcome::PowerOff { .. }),
        "{test}: the guest should power off through ACPI, got {outcome}\n{console}"
    );
    for line in ["AnonHugePages=65536 kB ok", "GUESTWALK-THP-EXIT rc=0"]
        .iter()
        .chain(expected)
    {
        assert!(
            console.contains(line),
            "{test}: no {line:?} on the console:\n{console}"
        );
    }
}

fn leaves(
    p: &Parked,
    ctx: &PagingContext,
    range: std::ops::RangeInclusive<Gva>,
    g: Granularity,
) -> Vec<Leaf> {
    mappings(p.vm.guest_memory(), ctx, range, g)
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Mapping::Leaf(leaf) => leaf,
            Mapping::Bad(bad) => panic!("Linux built a malformed entry: {bad:?}"),
        })
        .collect()
}

/// The THP buffer: 2 MiB leaves as mapped; split, 512 consecutive shadow PTEs each;
/// every page holds what the process wrote there.
fn check_thp_buffer(p: &Parked, ctx: &PagingContext) {
    let range = Gva(p.buffer)..=Gva(p.buffer + BUFFER_SIZE - 1);
    let huge = leaves(p, ctx, range.clone(), Granularity::AsMapped);
    assert_eq!(huge.len() as u64, BUFFER_SIZE >> 21, "{huge:#?}");
    for (i, leaf) in huge.iter().enumerate() {
        assert_eq!(leaf.va.0, p.buffer + ((i as u64) << 21));
        assert_eq!(leaf.size, PageSize::Size2M, "THP leaf {i}");
        assert!(!leaf.is_shadow());
        assert!(leaf.effective.user && leaf.effective.writable && leaf.effective.nx);
        assert!(leaf.dirty, "the process wrote every page");
    }
    let small = leaves(p, ctx, range, Granularity::Split4K);
    assert_eq!(small.len() as u64, BUFFER_SIZE >> 12);
    for (i, leaf) in small.iter().enumerate() {
        let parent = &huge[i / 512];
        let offset = ((i % 512) as u64) << 12;
        assert_eq!(leaf.size, PageSize::Size4K);
        assert!(
            leaf.is_shadow(),
            "split entries exist only in the shadow copy"
        );
        assert_eq!(leaf.va.0, parent.va.0 + offset);
        assert_eq!(leaf.pa.0, parent.pa.0 + offset, "consecutive frames");
        assert_eq!(leaf.effective, parent.effective);
        assert_eq!(leaf.memory_type, parent.memory_type, "PAT moved, not lost");
        let stored: u64 = p.vm.guest_memory().read_obj(leaf.pa).unwrap();
        assert_eq!(
            stored,
            leaf.va.0 ^ PATTERN,
            "page {:#x} at {:?}",
            leaf.va.0,
            leaf.pa
        );
    }
}

/// Every leaf in `range`: its first, last and a pseudo-random page translate as
/// `KVM_TRANSLATE` says (the vCPU's own CR3 only: KVM translates with the live one).
fn check_against_kvm(
    p: &Parked,
    ctx: &PagingContext,
    range: std::ops::RangeInclusive<Gva>,
) -> usize {
    let mut checked = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for leaf in leaves(p, ctx, range, Granularity::AsMapped) {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pages = leaf.size.bytes() >> 12;
        for page in [0, pages - 1, (seed >> 33) % pages] {
            let gva = Gva(leaf.va.0 + (page << 12) + 0x123);
            let kvm = p.vm.translate(p.vcpu, gva).unwrap();
            assert!(
                kvm.valid,
                "KVM cannot translate {gva}, the walker's leaf {leaf:?}"
            );
            assert_eq!(
                kvm.gpa.0,
                leaf.pa.0 + (page << 12) + 0x123,
                "{gva}: {leaf:?}"
            );
            checked += 1;
        }
    }
    checked
}

/// Kernel text read-only and executable, the direct map writable and NX; both
/// supervisor-only. The direct map address of the THP buffer's first frame maps it.
fn check_kernel_half(p: &Parked, ctx: &PagingContext) {
    let mem = p.vm.guest_memory();
    let text = translate(mem, ctx, Gva(KERNEL_TEXT)).unwrap();
    assert!(
        !text.effective.writable && !text.effective.nx && !text.effective.user,
        "{text:?}"
    );
    let frame = translate(mem, ctx, Gva(p.buffer)).unwrap().gpa;
    let base = match ctx.mode() {
        PagingMode::FiveLevel => DIRECT_MAP_5LEVEL,
        PagingMode::FourLevel => DIRECT_MAP_4LEVEL,
    };
    let direct = translate(mem, ctx, Gva(base + frame.0)).unwrap();
    assert_eq!(direct.gpa, frame);
    assert!(
        direct.effective.writable && direct.effective.nx && !direct.effective.user,
        "{direct:?}"
    );
}

fn expected_mode(p: &Parked, four_level: bool) -> PagingMode {
    if p.vm.paging_features().la57 && !four_level {
        PagingMode::FiveLevel
    } else {
        PagingMode::FourLevel
    }
}

fn walk_and_check(test: &str, kernel: &str, vcpus: u8, cmdline: &str) {
    walk_and_check_with(test, kernel, vcpus, cmdline, USUAL);
}

fn walk_and_check_with(test: &str, kernel: &str, vcpus: u8, cmdline: &str, how: Boot) {
    let Some(p) = boot_to_park_with(test, kernel, vcpus, cmdline, how) else {
        return;
    };
    let decompressed = p.vm.linux().map(|l| l.decompressed.clone());
    let by_vmm = matches!(decompressed, Some(Decompressed::ByVmm { .. }));
    assert_eq!(
        by_vmm,
        kernel == "bzImage" && how.decompress == Decompress::Vmm,
        "{test}: {decompressed:?}"
    );
    let before = hash_ram(&p.vm);
    let ctx = p.context(None);
    // Linux switches to 5-level paging in its decompressor, which the PVH entry skips:
    // a vmlinux entered there stays 4-level.
    let four_level = cmdline.contains("no5lvl") || kernel == "vmlinux";
    assert_eq!(ctx.mode(), expected_mode(&p, four_level));
    check_thp_buffer(&p, &ctx);
    check_kernel_half(&p, &ctx);
    let all = Gva(0)..=Gva(u64::MAX);
    let checked = check_against_kvm(&p, &ctx, all);
    assert!(checked > 100, "only {checked} translations checked");
    assert_eq!(hash_ram(&p.vm), before, "a walk changed guest RAM");
    eprintln!("{test}: {checked} translations agree with KVM_TRANSLATE");
    // The kernel brought up every vCPU (the MADT lists them).
    finish(p, test, &[&format!("cpus={vcpus}")]);
}

#[test]
fn linux_thp_process_one_vcpu_default_paging() {
    walk_and_check(
        "linux_thp_process_one_vcpu_default_paging",
        "bzImage",
        1,
        "",
    );
}

/// The bzImage's own decompressor in the guest (as QEMU boots it): it switches to
/// 5-level paging itself.
#[test]
fn linux_thp_process_guest_decompressor() {
    walk_and_check_with(
        "linux_thp_process_guest_decompressor",
        "bzImage",
        1,
        "",
        Boot {
            decompress: Decompress::Guest,
            ..USUAL
        },
    );
}

/// KASLR on, with vmm decompressing: the kernel runs at the physical place and virtual
/// offset vmm chose and relocated it to. Its text is where vmm says (read-only,
/// executable, at the physical base), not at the link address.
#[test]
fn linux_thp_process_kaslr() {
    let test = "linux_thp_process_kaslr";
    let how = Boot {
        kaslr: true,
        ..USUAL
    };
    let Some(p) = boot_to_park_with(test, "bzImage", 1, "", how) else {
        return;
    };
    let Some(Decompressed::ByVmm {
        physical,
        virtual_offset: Some(offset),
        ..
    }) = p.vm.linux().map(|l| l.decompressed.clone())
    else {
        panic!(
            "{test}: vmm did not randomize the kernel: {:?}",
            p.vm.linux()
        );
    };
    eprintln!(
        "{test}: kernel at GPA {:#x}, virtual offset {offset:#x}",
        physical.0
    );
    let before = hash_ram(&p.vm);
    let ctx = p.context(None);
    check_thp_buffer(&p, &ctx);
    let mem = p.vm.guest_memory();
    let text = translate(mem, &ctx, Gva(KERNEL_TEXT + offset)).unwrap();
    assert_eq!(
        text.gpa.0, physical.0,
        "{test}: _text maps the kernel's first frame"
    );
    assert!(
        !text.effective.writable && !text.effective.nx && !text.effective.user,
        "{text:?}"
    );
    if offset != 0 {
        let link = translate(mem, &ctx, Gva(KERNEL_TEXT));
        assert!(
            link.as_ref().map_or(true, |t| t.gpa != physical),
            "{test}: the link address still maps _text: {link:?}"
        );
    }
    let checked = check_against_kvm(&p, &ctx, Gva(0)..=Gva(u64::MAX));
    assert!(checked > 100, "only {checked} translations checked");
    assert_eq!(hash_ram(&p.vm), before, "a walk changed guest RAM");
    finish(p, test, &[]);
}

#[test]
fn linux_thp_process_two_vcpus() {
    walk_and_check("linux_thp_process_two_vcpus", "bzImage", 2, "");
}

/// The same kernel as an ELF vmlinux, entered through its PVH entry (32-bit protected
/// mode, `hvm_start_info`): no decompressor; ACPI comes through the start info's RSDP.
#[test]
fn linux_thp_process_pvh_entry() {
    walk_and_check("linux_thp_process_pvh_entry", "vmlinux", 2, "");
}

#[test]
fn linux_thp_process_four_level() {
    walk_and_check("linux_thp_process_four_level", "bzImage", 1, "no5lvl");
}

/// With PTI the process runs on the user copy of its PGD, which maps the buffer but
/// not the kernel's direct map or text; the kernel copy (CR3 bit 12 clear) maps both.
#[test]
fn linux_thp_process_pti() {
    let test = "linux_thp_process_pti";
    let Some(p) = boot_to_park(test, "bzImage", 1, "pti=on") else {
        return;
    };
    let before = hash_ram(&p.vm);
    let user_cr3 = p.state().cr3;
    assert_ne!(
        user_cr3 & PTI_USER_PGD_BIT,
        0,
        "parked in user mode: the user PGD"
    );
    let user = p.context(None);
    check_thp_buffer(&p, &user);
    let checked = check_against_kvm(&p, &user, Gva(0)..=Gva(u64::MAX));
    let mem = p.vm.guest_memory();
    let text = translate(mem, &user, Gva(KERNEL_TEXT));
    assert!(
        matches!(text, Err(TranslateError::NotPresent { .. })),
        "PTI: kernel text must not be mapped for user mode: {text:?}"
    );
    let kernel = p.context(Some(user_cr3 & !PTI_USER_PGD_BIT));
    check_thp_buffer(&p, &kernel);
    check_kernel_half(&p, &kernel);
    assert_eq!(hash_ram(&p.vm), before, "a walk changed guest RAM");
    eprintln!("{test}: {checked} translations agree with KVM_TRANSLATE");
    finish(p, test, &[]);
}

/// The MARK /init sends right before it reboots or crashes the guest (`guestwalk.do=`).
const REQUEST_MARK: u64 = 0x7265_626f_6f74;
/// How long a VM may take from the guest's request to its end before the case fails.
/// Generous (the emulated host is slow and shared); the measured times are printed.
const PROMPT: Duration = Duration::from_secs(30);
/// What the kernel prints first when it panics (for a panic with no MARK before it).
const PANIC_LINE: &str = "Kernel panic - not syncing";

/// How one guest ended: its outcome, and the time from its request to the VM's end.
struct Ended {
    outcome: vmm::ExitOutcome,
    /// From the MARK (or the console's panic line) to the vCPU's stop.
    after_request: Option<Duration>,
    /// From the vCPUs' start to the stop.
    after_boot: Duration,
    console: String,
}

/// Boots the Linux test guest (128 MiB) with `cmdline` after vmm's default one and
/// waits until the VM ends, timing it from the guest's request: /init's MARK, or the
/// kernel's panic line on the console when no MARK came.
fn boot_until_end(test: &str, vcpus: u8, cmdline: &str) -> Option<Ended> {
    let (kernel, initrd) = images(test, "bzImage")?;
    let console = Console::capture();
    let boot = LinuxBoot {
        kernel,
        initrd: Some(initrd),
        cmdline: format!("console=ttyS0 quiet panic=-1 {cmdline}"),
        force: false,
        decompress: Decompress::Vmm,
    };
    let config = VmConfig {
        vcpus,
        console: console.clone(),
        memory: MemorySize::from_bytes(128 << 20).unwrap(),
        boot: vmm::BootSource::Linux(boot),
        dirty: None,
    };
    let vm = vmm::build_vm(&config).unwrap_or_else(|e| panic!("{test}: {e}"));
    let started = Instant::now();
    let deadline = started + LINUX_TIMEOUT;
    let mut requested = None;
    let poll = Duration::from_millis(10);
    loop {
        let until = deadline.min(Instant::now() + poll);
        match vm.wait_event_until(until, poll) {
            Ok(VmEvent::Signal {
                code: SIGNAL_MARK,
                argument: REQUEST_MARK,
            }) => requested = Some(Instant::now()),
            Ok(VmEvent::Parked { vcpu, .. }) => {
                vm.resume_vcpu(vcpu).unwrap();
            }
            Ok(VmEvent::VcpuStopped { .. }) => break,
            Ok(_) => {}
            Err(vmm::VmError::Timeout(_)) if Instant::now() < deadline => {
                if requested.is_none() && console.contains(PANIC_LINE.as_bytes()) {
                    requested = Some(Instant::now());
                }
            }
            Err(e) => panic!(
                "{test}: {cmdline:?} with {vcpus} vCPU(s): the VM did not end: {e}\n{}\nconsole:\n{}",
                vm.vcpu_report(None),
                String::from_utf8_lossy(&console.captured())
            ),
        }
    }
    let stopped = Instant::now();
    Some(Ended {
        outcome: vm.outcome().unwrap(),
        after_request: requested.map(|at| stopped - at),
        after_boot: stopped - started,
        console: String::from_utf8_lossy(&console.captured()).into_owned(),
    })
}

/// What a case must end with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Reset(vmm::ResetMethod),
    /// A triple fault with no reset request before it.
    TripleFault,
    /// A pvpanic report.
    Panic,
    /// A reset whose console says a kernel panic came first.
    PanicReset(vmm::ResetMethod),
}

impl Expect {
    fn matches(self, outcome: &vmm::ExitOutcome) -> bool {
        match (self, outcome) {
            (Self::Reset(want), vmm::ExitOutcome::Reset { method, .. }) => *method == want,
            (Self::Panic, vmm::ExitOutcome::Panicked { .. }) => true,
            (Self::PanicReset(want), vmm::ExitOutcome::PanicReset { method, .. }) => {
                *method == want
            }
            (
                Self::TripleFault,
                vmm::ExitOutcome::Failed {
                    stop: vmm::exit::VcpuStop::Shutdown,
                    ..
                },
            ) => true,
            _ => false,
        }
    }

    /// The status `vmm run --kernel` exits with, and the start of its message.
    fn status_and_verdict(self) -> (u8, &'static str) {
        match self {
            Self::Reset(_) => (0, "the guest reset"),
            Self::TripleFault | Self::Panic | Self::PanicReset(_) => (100, "the guest crashed"),
        }
    }
}

/// Boots each case in turn, prints one line per case (outcome, time from the guest's
/// request to the VM's end), then asserts them all: the documented status and message,
/// the console marker that the guest got there, and a prompt end.
fn check_cases(test: &str, vcpus: u8, cases: &[(&str, Expect, Option<&str>)]) {
    let mut failures = Vec::new();
    for &(cmdline, expect, marker) in cases {
        let Some(ended) = boot_until_end(test, vcpus, cmdline) else {
            return;
        };
        let outcome = &ended.outcome;
        let (status, verdict) = expect.status_and_verdict();
        eprintln!(
            "{test}: {cmdline:?}, {vcpus} vCPU(s): {} ({} s after boot), request to end {}; status {}: {}: {outcome}",
            outcome.verdict(),
            ended.after_boot.as_secs_f64(),
            ended.after_request.map_or("not seen".into(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1e3
            )),
            outcome.exit_status(vmm::OnReset::Success),
            outcome.verdict(),
        );
        let mut wrong = Vec::new();
        if !expect.matches(outcome) {
            wrong.push(format!("expected {expect:?}"));
        }
        if outcome.exit_status(vmm::OnReset::Success) != status || outcome.verdict() != verdict {
            wrong.push(format!("expected status {status}, {verdict:?}"));
        }
        if let Some(marker) = marker
            && !ended.console.contains(marker)
        {
            wrong.push(format!("no {marker:?} on the console"));
        }
        match ended.after_request {
            Some(d) if d <= PROMPT => {}
            other => wrong.push(format!("not within {PROMPT:?} of the request: {other:?}")),
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{cmdline:?}: {}; got {outcome}\nconsole:\n{}",
                wrong.join(", "),
                ended.console
            ));
        }
    }
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n\n"));
}

/// `reboot -f` with each of Linux's reboot methods. Without `reboot=`, Linux picks the
/// EFI method on a hardware-reduced ACPI platform (`reboot_init`), whatever the FADT's
/// reset register says; with no EFI that falls back to the BIOS method, a jump to the
/// reset vector in real mode, where vmm's stub asks for the reset: this proves it.
/// `reboot=t` triple-faults with no request before it, which nothing tells apart from a
/// crash.
fn reboot_cases() -> Vec<(&'static str, Expect, Option<&'static str>)> {
    use vmm::ResetMethod::*;
    let reboot = Some("GUESTWALK-REBOOT");
    vec![
        ("guestwalk.do=reboot", Expect::Reset(ResetVector), reboot),
        (
            "reboot=k guestwalk.do=reboot",
            Expect::Reset(Keyboard),
            reboot,
        ),
        ("reboot=t guestwalk.do=reboot", Expect::TripleFault, reboot),
        (
            "reboot=a guestwalk.do=reboot",
            Expect::Reset(AcpiResetRegister),
            reboot,
        ),
        (
            "reboot=pci guestwalk.do=reboot",
            Expect::Reset(PciResetControl),
            reboot,
        ),
        (
            "reboot=b guestwalk.do=reboot",
            Expect::Reset(ResetVector),
            reboot,
        ),
        (
            "reboot=e guestwalk.do=reboot",
            Expect::Reset(ResetVector),
            reboot,
        ),
    ]
}

#[test]
fn linux_reboot_methods_one_vcpu() {
    check_cases("linux_reboot_methods_one_vcpu", 1, &reboot_cases());
}

#[test]
fn linux_reboot_methods_two_vcpus() {
    check_cases("linux_reboot_methods_two_vcpus", 2, &reboot_cases());
}

/// Panics with `panic=-1`: one before user space (no init: before /init can load the
/// pvpanic driver, which Debian builds as a module, so the kernel resets; its console's
/// "Kernel panic - not syncing" makes that reset a crash) and one from user space
/// (`echo c > /proc/sysrq-trigger`, pvpanic loaded: a crash it reports).
#[test]
fn linux_panics_end_the_vm() {
    use vmm::ResetMethod::ResetVector;
    check_cases(
        "linux_panics_end_the_vm",
        1,
        &[
            (
                "rdinit=/nonexistent",
                Expect::PanicReset(ResetVector),
                Some(PANIC_LINE),
            ),
            (
                "guestwalk.do=crash",
                Expect::Panic,
                Some("sysrq triggered crash"),
            ),
        ],
    );
}

/// Each address space as `vmm inspect --format tlb` prints it.
fn tlb_of<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    contexts: &[PagingContext],
) -> Vec<Vec<String>> {
    contexts
        .iter()
        .map(|ctx| guestwalk_tests::tlb_lines(mem, ctx))
        .collect()
}

/// The second MARK of `thp ... rewrite` ("rewrite!"), before its second PARK.
const REWRITE_MARK: u64 = 0x7265_7772_6974_6521;

/// A dirty scan of a running Linux guest (issue 12): the THP process parks, the VMM
/// fetches the dirty log (dropping everything before), the process writes its whole
/// buffer again and parks again, and the scan of its CR3 then
/// - reports every 4 KiB page of the buffer dirty, each from a split 2 MiB leaf, at the
///   frame the walker's own translation gives;
/// - splits exactly the huge leaves that map some dirty memory and skips exactly the
///   clean ones, as counted by an independent leaf walk of the same tables checked
///   against the same dirty set; the clean ones include the kernel text's huge leaves
///   (a `nokaslr` kernel maps its text with 2 MiB pages, and nobody writes it);
/// - and writes no guest memory.
///
/// With `pti=on` the parked vCPU runs on the process's user PGD, and the scan covers the
/// kernel PGD too (the kernel text's huge leaves are there).
fn linux_dirty_scan(test: &str, vcpus: u8, pti: bool) {
    let how = Boot {
        dirty: true,
        ..USUAL
    };
    let cmdline = if pti {
        "pti=on guestwalk.rewrite"
    } else {
        "guestwalk.rewrite"
    };
    let Some(first) = boot_to_park_with(test, "bzImage", vcpus, cmdline, how) else {
        return;
    };
    let Parked {
        vm,
        console,
        buffer,
        ..
    } = first;
    // Everything dirtied up to the first park: dropped.
    vm.fetch_dirty().unwrap();
    vm.resume().unwrap();
    let second = parked(
        test,
        "its second park",
        vmm::pause::pause_at(
            vm,
            &console,
            &PauseAt::Park,
            0,
            LINUX_TIMEOUT,
            Instant::now(),
        ),
        &console,
    );
    assert_eq!(
        second.last_mark,
        Some(REWRITE_MARK),
        "{test}: the rewrite's MARK"
    );
    assert_eq!(
        second.park_argument,
        Some(buffer),
        "{test}: the same buffer"
    );
    let vm = &second.vm;
    let state = *second.state();
    let before = hash_ram(vm);
    let (set, report) = vm.dirty_scan(std::slice::from_ref(&state), &[]).unwrap();
    let space = report
        .spaces
        .iter()
        .find(|s| s.cr3 == state.cr3)
        .unwrap_or_else(|| panic!("{test}: no scan of the parked vCPU's CR3"));
    let scan = &space.scan;

    // Every page of the buffer, from split 2 MiB leaves, at the walker's frames.
    let in_buffer: Vec<_> = scan
        .pages
        .iter()
        .filter(|p| (buffer..buffer + BUFFER_SIZE).contains(&p.va.0))
        .collect();
    assert_eq!(
        in_buffer.len() as u64,
        BUFFER_SIZE >> 12,
        "{test}: dirty pages of the rewritten buffer"
    );
    let ctx = vm.paging_context(&state, None).unwrap();
    for page in &in_buffer {
        assert!(
            page.shadow,
            "{test}: {:#x} comes from a split huge leaf",
            page.va.0
        );
        let t = translate(vm.guest_memory(), &ctx, page.va).unwrap();
        assert_eq!(t.gpa, page.pa, "{test}: {:#x}", page.va.0);
    }

    // Under PTI the parked vCPU has the user PGD loaded: the kernel PGD, the page
    // before, is scanned too (vmm::linux::pti_kernel_cr3).
    if pti {
        let kernel = (state.cr3 & 0x000f_ffff_ffff_f000) - vmm::linux::PTI_USER_PGD_BIT;
        assert!(
            report.spaces.iter().any(|s| s.cr3 == kernel),
            "{test}: the kernel half {kernel:#x} of the user CR3 {:#x} was not scanned",
            state.cr3
        );
    }
    assert_eq!(report.spaces.len(), if pti { 2 } else { 1 }, "{test}");

    // In every space scanned: split exactly the dirty huge leaves, skip exactly the clean
    // ones, as an independent leaf walk of the same tables against the same set counts.
    let mut clean_text = 0u64;
    for space in &report.spaces {
        let ctx = vm.paging_context(&state, Some(space.cr3)).unwrap();
        let (mut dirty_huge, mut clean_huge) = (0u64, 0u64);
        walker::for_each_leaf(
            vm.guest_memory(),
            &ctx,
            Gva(0)..=Gva(u64::MAX),
            Granularity::AsMapped,
            walker::WalkOptions::default(),
            |leaf: Leaf| -> Result<(), std::convert::Infallible> {
                if leaf.size != PageSize::Size4K {
                    let len = leaf.size.bytes();
                    if walker::DirtyPages::any_dirty(set.bitmaps.as_slice(), leaf.pa, len) {
                        dirty_huge += 1;
                    } else {
                        clean_huge += 1;
                        if (KERNEL_TEXT..KERNEL_TEXT + (16 << 20)).contains(&leaf.va.0) {
                            clean_text += 1;
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap();
        let scan = &space.scan;
        eprintln!(
            "{test}: CR3 {:#x}: {} dirty pages; huge leaves split {} (dirty by the leaf walk: \
             {dirty_huge}), skipped {} (clean: {clean_huge})",
            space.cr3,
            scan.pages.len(),
            scan.huge_split,
            scan.huge_skipped,
        );
        if space.cr3 == state.cr3 {
            assert!(
                dirty_huge >= BUFFER_SIZE >> 21,
                "{test}: the buffer's 32 leaves are dirty"
            );
        }
        assert_eq!(
            scan.huge_split, dirty_huge,
            "{test}: CR3 {:#x}: split only dirty huge leaves",
            space.cr3
        );
        assert_eq!(
            scan.huge_skipped, clean_huge,
            "{test}: CR3 {:#x}: skip every clean huge leaf",
            space.cr3
        );
    }
    eprintln!(
        "{test}: {} dirty pages in the set, {} in the buffer, {clean_text} clean kernel-text huge leaves skipped",
        set.pages(),
        in_buffer.len()
    );
    assert!(
        clean_text > 0,
        "{test}: the kernel text's clean huge leaves are skipped"
    );
    assert_eq!(hash_ram(vm), before, "{test}: the scan wrote guest memory");

    second.vm.resume().unwrap();
    let outcome = second.vm.wait(LINUX_TIMEOUT).unwrap();
    let console = String::from_utf8_lossy(&console.captured()).into_owned();
    assert!(
        matches!(outcome, vmm::ExitOutcome::PowerOff { .. }),
        "{test}: the guest should power off, got {outcome}\n{console}"
    );
    assert!(
        console.contains("GUESTWALK-THP rewrote") && console.contains("GUESTWALK-THP-EXIT rc=0"),
        "{test}: {console}"
    );
}

#[test]
fn linux_dirty_scan_one_vcpu() {
    linux_dirty_scan("linux_dirty_scan_one_vcpu", 1, false);
}

#[test]
fn linux_dirty_scan_two_vcpus() {
    linux_dirty_scan("linux_dirty_scan_two_vcpus", 2, false);
}

#[test]
fn linux_dirty_scan_pti() {
    linux_dirty_scan("linux_dirty_scan_pti", 1, true);
}

/// A snapshot chain of a running Linux guest: generation 0 (full) at the THP process's
/// park, two diffs while the guest runs on, each with every vCPU paused. Each
/// generation loaded offline has exactly the RAM of its pause (hash) and the same
/// address spaces as the live walk then, for every vCPU; the guest then finishes and
/// powers off.
fn linux_snapshot_chain(test: &str, vcpus: u8) {
    let how = Boot {
        dirty: true,
        ..USUAL
    };
    let cmdline = "guestwalk.linger=3 guestwalk.tick";
    let Some(mut p) = boot_to_park_with(test, "bzImage", vcpus, cmdline, how) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("guestwalk-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut snaps = vmm::snapshot::SnapshotDir::create(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut at_pause = Vec::new();
    for g in 0..3u64 {
        if g > 0 {
            p.vm.resume().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            p.states = p.vm.pause().unwrap();
        }
        let info =
            p.vm.snapshot_paused(&mut snaps, &p.states)
                .unwrap_or_else(|e| panic!("{test}: generation {g}: {e}"));
        assert_eq!(info.generation, g);
        let contexts: Vec<(usize, PagingContext)> = p
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| p.vm.paging_context(s, None).ok().map(|c| (i, c)))
            .collect();
        assert!(!contexts.is_empty(), "{test}: no vCPU in long mode");
        let ctxs: Vec<PagingContext> = contexts.iter().map(|(_, c)| *c).collect();
        at_pause.push((
            hash_ram(&p.vm),
            contexts.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            tlb_of(p.vm.guest_memory(), &ctxs),
        ));
        eprintln!(
            "{test}: generation {g}: {:?}, {} pages, {:.1?}",
            info.kind, info.pages, info.elapsed
        );
    }
    for (g, (hash, vcpus, live)) in at_pause.iter().enumerate() {
        let snap = vmm::snapshot::load(&dir, Some(g as u64)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            guestwalk_tests::hash_memory(snap.memory()),
            *hash,
            "{test}: generation {g}'s memory is not the RAM of its pause"
        );
        let ctxs: Vec<PagingContext> = vcpus
            .iter()
            .map(|v| {
                snap.paging_context(*v, None)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let offline = tlb_of(snap.memory(), &ctxs);
        assert_eq!(
            &offline, live,
            "{test}: generation {g}: offline walk vs live walk"
        );
        assert!(
            live.iter().all(|l| l.len() > 100),
            "{test}: real address spaces"
        );
    }
    // Restored, a generation runs on: the process finds its buffer as it wrote it, its
    // linger ends by the restored clock, the serial console keeps working through its
    // interrupt, and the guest powers off. Generation 0 is the park itself (the process
    // resumes); generation 2 a diff taken while it lingered.
    for g in [0u64, 2] {
        let console = Console::capture();
        let config = vmm::restore::RestoreConfig {
            dir: dir.clone(),
            generation: Some(g),
            memory: vmm::snapshot::MemoryLoad::Lazy,
            console: console.clone(),
            dirty: None,
            paused: false,
        };
        let started = std::time::Instant::now();
        let (vm, state) = vmm::restore::restore_vm(&config)
            .unwrap_or_else(|e| panic!("{test}: restoring generation {g}: {e}"));
        let boot = state.boot.as_ref().unwrap();
        assert_eq!((boot.source.as_str(), boot.vcpus), ("linux", vcpus));
        assert!(
            boot.cmdline
                .as_deref()
                .is_some_and(|c| c.contains("guestwalk.linger=3")),
            "{test}: {boot:?}"
        );
        let outcome = vm.wait(LINUX_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{test}: restored generation {g}: {e}\n{}\n{}",
                vm.vcpu_report(None),
                String::from_utf8_lossy(&console.captured())
            )
        });
        let text = String::from_utf8_lossy(&console.captured()).into_owned();
        eprintln!(
            "{test}: restored generation {g} ran {:.1?} to {outcome}",
            started.elapsed()
        );
        assert!(
            matches!(outcome, vmm::ExitOutcome::PowerOff { .. }),
            "{test}: restored generation {g} should power off, got {outcome}\n{text}"
        );
        if g == 0 {
            // Everything after the park happens in the restored VM: the process resumes,
            // finds its buffer, its tick counter advances with the restored clock
            // (written to memory and read back; how many ticks a 3 s linger shows depends
            // on how the emulated host schedules it) and it exits.
            for line in [
                "GUESTWALK-THP resumed",
                "GUESTWALK-THP verified",
                "GUESTWALK-THP tick 1",
                "GUESTWALK-THP ticks verified",
                "GUESTWALK-THP-EXIT rc=0",
            ] {
                assert!(
                    text.contains(line),
                    "{test}: restored generation {g}: no {line:?} on its console:\n{text}"
                );
            }
        } else {
            // The process may have ended before this generation's pause (the guest's
            // clock runs on while the VMM checks, so its linger can be over). The
            // original VM is still paused there: its console is what the guest sent
            // before the pause, the restored VM's what it sent after, and the two
            // together hold the process's exit line exactly once (a byte lost or sent
            // twice by the restore would show).
            let whole = format!("{}{text}", p.console());
            for line in ["GUESTWALK-THP ticks verified", "GUESTWALK-THP-EXIT rc=0"] {
                assert_eq!(
                    whole.matches(line).count(),
                    1,
                    "{test}: restored generation {g}: {line:?} in the console before the \
                     pause and after the restore:\n{whole}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    finish(p, test, &["GUESTWALK-THP verified"]);
}

#[test]
fn linux_snapshot_chain_one_vcpu() {
    linux_snapshot_chain("linux_snapshot_chain_one_vcpu", 1);
}

#[test]
fn linux_snapshot_chain_two_vcpus() {
    linux_snapshot_chain("linux_snapshot_chain_two_vcpus", 2);
}

/// The control API attached to a running Linux guest (issue 15): while the THP process
/// runs (it lingers after its park), a client pauses the VM, reads the vCPU's registers,
/// walks the process's address space over the socket and finds its 32 THP leaves,
/// translates every page of the buffer in one batch, takes a dirty scan and a full
/// snapshot, resumes and asks for shutdown; the guest then runs on to its power-off,
/// the process's checks passing.
fn linux_api_attach(test: &str, vcpus: u8) {
    let how = Boot {
        dirty: true,
        ..USUAL
    };
    let Some(p) = boot_to_park_with(
        test,
        "bzImage",
        vcpus,
        "guestwalk.linger=10 guestwalk.tick",
        how,
    ) else {
        return;
    };
    let cr3 = p.state().cr3;
    let vcpu = p.vcpu;
    let buffer = p.buffer;
    let dir = std::env::temp_dir().join(format!("guestwalk-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    // The process runs on from its park while the API attaches.
    p.vm.resume().unwrap();
    let server =
        vmm::api::ApiServer::start(&socket, p.vm.waker(), vmm::api::Limits::default()).unwrap();
    let snaps = dir.join("snaps");
    let client_socket = socket.clone();
    let client = std::thread::spawn(move || {
        let client = vmm::api::Client::new(&client_socket, LINUX_TIMEOUT);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            api_session(&client, vcpu, cr3, buffer, &snaps)
        }));
        // However the session went, the VMM is told to stop serving.
        let _ = client.request_bytes("PATCH", "/vm", Some(br#"{"state":"Resumed"}"#));
        let _ = client.request_bytes("PUT", "/actions", Some(br#"{"action":"shutdown"}"#));
        result
    });
    let end = vmm::api::serve(&p.vm, &server, vmm::api::ServeOptions::default()).unwrap();
    drop(server);
    if let Err(panic) = client.join().unwrap() {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(end, vmm::api::ServeEnd::Shutdown, "{test}: {}", p.console());
    assert!(!socket.exists());
    let snapshot = vmm::snapshot::load(&dir.join("snaps"), None).unwrap();
    let stored: u64 = snapshot
        .memory()
        .read_obj(
            translate(
                p.vm.guest_memory(),
                &p.vm.paging_context(p.state(), Some(cr3)).unwrap(),
                Gva(buffer),
            )
            .unwrap()
            .gpa,
        )
        .unwrap();
    assert_eq!(
        stored,
        buffer ^ PATTERN,
        "{test}: the snapshot holds the buffer"
    );
    drop(snapshot);
    let _ = std::fs::remove_dir_all(&dir);
    finish(p, test, &["GUESTWALK-THP verified", "ticks verified"]);
}

/// What the client of [`linux_api_attach`] asks, and checks.
fn api_session(
    client: &vmm::api::Client,
    vcpu: usize,
    cr3: u64,
    buffer: u64,
    snaps: &std::path::Path,
) {
    let json = |method: &str, uri: &str, body: Option<&str>| -> serde_json::Value {
        let (answer, bytes) = client
            .request_bytes(method, uri, body.map(str::as_bytes))
            .unwrap();
        assert_eq!(
            answer.status,
            200,
            "{method} {uri}: {:?}",
            String::from_utf8_lossy(&answer.error_body)
        );
        serde_json::from_slice(&bytes).unwrap()
    };
    let vm = json("GET", "/vm", None);
    assert_eq!(vm["state"], "Running");
    assert_eq!(vm["boot"]["source"], "linux");
    let mode = vm["paging"][vcpu]["mode"].as_str().unwrap().to_owned();
    assert!(mode == "FiveLevel" || mode == "FourLevel", "{vm}");
    assert_eq!(
        json("PATCH", "/vm", Some(r#"{"state":"Paused"}"#))["state"],
        "Paused"
    );
    let regs = json("GET", &format!("/vcpus/{vcpu}/registers"), None);
    assert!(
        regs["sregs"]["cr3"].is_string() && regs["regs"]["rip"].is_string(),
        "{regs}"
    );

    // The process's address space (the CR3 of its park), its buffer: 32 THP leaves.
    let end = buffer + BUFFER_SIZE;
    let uri = format!("/mappings?vcpu={vcpu}&cr3={cr3:#x}&range={buffer:x}-{end:x}&format=json");
    let (answer, body) = client.request_bytes("GET", &uri, None).unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .trailer(vmm::api::WALK_TRAILER)
            .is_some_and(|t| t.starts_with("complete")),
        "{:?}",
        answer.trailers
    );
    let leaves: Vec<serde_json::Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(leaves.len() as u64, BUFFER_SIZE >> 21, "{leaves:#?}");
    assert!(
        leaves
            .iter()
            .all(|l| l["size"] == 2 << 20 && l["user"] == true),
        "{leaves:#?}"
    );

    // Every page of the buffer in one batch: the frame of its leaf plus its offset.
    let gvas: Vec<String> = (0..BUFFER_SIZE >> 12)
        .map(|i| format!("{:#x}", buffer + (i << 12)))
        .collect();
    let body =
        serde_json::json!({ "vcpu": vcpu, "cr3": format!("{cr3:#x}"), "gvas": gvas }).to_string();
    let (answer, lines) = client
        .request_bytes("POST", "/translate", Some(body.as_bytes()))
        .unwrap();
    assert_eq!(answer.status, 200);
    let lines = String::from_utf8(lines).unwrap();
    let mut count = 0u64;
    for (i, line) in lines.lines().enumerate() {
        let t: serde_json::Value = serde_json::from_str(line).unwrap();
        let leaf = &leaves[i / 512];
        let leaf_pa =
            u64::from_str_radix(leaf["pa"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(t["kind"], "translation", "{line}");
        assert_eq!(t["size"], 2 << 20);
        assert_eq!(
            t["pa"],
            format!("{:#x}", leaf_pa + ((i as u64 % 512) << 12)),
            "{line}"
        );
        count += 1;
    }
    assert_eq!(count, BUFFER_SIZE >> 12);

    // A dirty scan and a snapshot at this pause.
    let scan = json("POST", "/dirty/scan", None);
    assert_eq!(scan["seq"], 1, "{scan}");
    let body = format!(r#"{{"dir":{:?},"kind":"full"}}"#, snaps.to_str().unwrap());
    let info = json("PUT", "/snapshot/create", Some(&body));
    assert_eq!(info["generation"], 0, "{info}");
    assert_eq!(
        json("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))["state"],
        "Running"
    );
}

#[test]
fn linux_api_attach_one_vcpu() {
    linux_api_attach("linux_api_attach_one_vcpu", 1);
}

#[test]
fn linux_api_attach_two_vcpus() {
    linux_api_attach("linux_api_attach_two_vcpus", 2);
}
