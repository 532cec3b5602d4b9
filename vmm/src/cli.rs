//! Command-line interface: `vmm run`, `vmm walk`, `vmm translate` and `vmm inspect`.
//!
//! Exit status: 0 when everything worked and the guest reported success; the guest's DONE
//! status (clamped to 1..=99) when it reports a failure; [`EXIT_WALK_INCOMPLETE`] when a
//! walk stopped early (its entry budget ran out) or never started (the guest ended
//! first); [`vmm::vm::EXIT_VM_FAILURE`] when the guest crashed (triple fault with no reset request,
//! pvpanic) or the VM died (KVM internal error, halt without DONE); [`EXIT_VMM_ERROR`]
//! when the VMM itself fails; 2 for bad command-line syntax; a guest reset is 0, or
//! [`vmm::vm::EXIT_GUEST_RESET`] with `--on-reset fail`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use vm_memory::GuestMemoryBackend;
use vmm::files::Replace;
use vmm::guest::{BuiltinProtocol, GuestSignal};
use vmm::introspect::{
    Format, OracleVerdict, PrintError, VaRange, oracle_verdict, parse_hex, print_walk,
    translation_line,
};
use vmm::pause::{PauseAt, Paused};
use vmm::{
    BootSource, Console, Decompress, Decompressed, Descriptor, DirtyConfig, DirtyLogChoice,
    ExitOutcome, GuestMode, LinuxBoot, MemorySize, OnReset, RoundRecord, Vm, VmConfig, VmError,
    VmEvent, build_vm, memfile, snapshot,
};
use walker::{ControlRegisters, Granularity, Gva, PagingContext, WalkOptions};

/// Exit status when a walk stopped before the end of its range.
pub const EXIT_WALK_INCOMPLETE: u8 = 3;
/// Exit status when the VMM itself fails.
pub const EXIT_VMM_ERROR: u8 = 101;

/// The library's named choices (`GuestMode`, ...: `ALL`, `name`, `about`, `FromStr`), as
/// clap value parsers: the library has no command-line types of its own.
trait Choice: Copy + Send + Sync + 'static + std::str::FromStr<Err = vmm::UnknownChoice> {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
    fn about(self) -> &'static str;
}

macro_rules! choices {
    ($($ty:ty),+) => {
        $(impl Choice for $ty {
            fn all() -> &'static [Self] {
                <$ty>::ALL
            }
            fn name(self) -> &'static str {
                <$ty>::name(self)
            }
            fn about(self) -> &'static str {
                <$ty>::about(self)
            }
        })+
    };
}

choices!(GuestMode, OnReset, DirtyLogChoice, Format);

/// A parser that accepts the names of `T`'s choices (listed with their help).
fn choice<T: Choice>() -> impl clap::builder::TypedValueParser<Value = T> {
    clap::builder::PossibleValuesParser::new(
        T::all()
            .iter()
            .map(|c| clap::builder::PossibleValue::new(c.name()).help(c.about())),
    )
    .try_map(|name: String| name.parse::<T>())
}

/// A small KVM VMM that boots test guests and walks their page tables.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest, print its console on stdout, wait for READY, let it run, send
    /// FINISH and exit with its status.
    Run(RunArgs),
    /// Boot a guest, wait until it is ready, pause it, walk the page tables of a vCPU's
    /// CR3 (or of every address space), print them, then let the guest finish.
    Walk(WalkArgs),
    /// Boot a guest, pause it when ready, and translate virtual addresses through its
    /// page tables (checked against KVM_TRANSLATE).
    Translate(TranslateArgs),
    /// Walk page tables offline: in a raw guest-physical memory file (byte N = GPA N), in
    /// a generation of a snapshot directory (registers from the snapshot), or in another
    /// tool's dump (ELF core, LiME, Firecracker / Cloud Hypervisor memory file).
    Inspect(InspectArgs),
    /// Work with snapshot directories (`vmm run --snapshot-dir`): merge, list.
    Snapshot(SnapshotArgs),
    /// Measure boot, pause, walks and translations on the built-in guest, each against
    /// a baseline measured in the same run.
    Bench(BenchArgs),
}

/// Arguments of `vmm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// How to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub runs: u64,
    /// Dirty-log and diff-snapshot measurements: the percentage of the bulk guest's RAM
    /// (from 16 MiB up) it writes per round (`--mode dirty-bulk`).
    #[arg(long, default_value_t = 1.0, value_parser = parse_percent)]
    pub dirty_percent: f64,
    /// ... in runs of this many consecutive 4 KiB pages.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub dirty_cluster: u64,
    /// Bytes of each vCPU's dirty ring for the ring measurement (a power of two, e.g.
    /// 64K; default: 1M or the host's maximum).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub dirty_ring_size: Option<u32>,
    /// Where to measure snapshot writes (repeatable; default: the temporary directory,
    /// and /dev/shm when it exists; with --kernel only the first is used).
    #[arg(long, value_name = "DIR")]
    pub snapshot_scratch: Vec<PathBuf>,
    /// With --kernel: measure from when the console shows MARKER, instead of from a
    /// vCPU's debug-port PARK.
    #[arg(long, value_name = "MARKER", requires = "kernel")]
    pub at_serial: Option<String>,
}

/// The default Linux command line: console on COM1, no boot chatter (each serial byte
/// is an exit), reboot at once on panic (a reset, which ends the VM; with pvpanic loaded
/// the panic ends it first, as a crash).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// How to boot the guest (shared by `run`, `walk` and `translate`).
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Guest RAM, e.g. 512M, 2G (K/M/G/T are powers of 1024).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    pub memory: MemorySize,
    /// Number of vCPUs (the built-in guest runs on vCPU 0, the others spin; Linux uses
    /// them all).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(vmm::builder::MAX_VCPUS)))]
    pub vcpus: u8,
    /// What the built-in guest does.
    #[arg(long, value_parser = choice::<GuestMode>(), default_value = "normal")]
    pub mode: GuestMode,
    /// Boot this Linux kernel instead of the built-in guest: a bzImage (64-bit boot
    /// protocol) or an ELF vmlinux with a PVH entry note (32-bit PVH entry), ACPI tables
    /// for --vcpus; `run` waits until the guest resets or powers off, or --timeout
    /// passes; `walk`/`translate` need --at-signal, --at-serial or --after). Refused on a
    /// PVM host unless --force.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// With --kernel: the initrd (initramfs) to load.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// With --kernel: the kernel command line. Keep panic=-1 (or panic=N): a panicking
    /// kernel then resets, which ends the VM. With panic=0 it halts forever and the VM
    /// keeps running until --timeout, as a real machine would (unless the guest has the
    /// pvpanic driver: its report ends the VM as a crash).
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE, requires = "kernel")]
    pub cmdline: String,
    /// With --kernel, for `vmm run`: what a guest reset (reboot, panic=-1) means for the
    /// exit status: success (0) or fail (102). The message names how the guest reset.
    #[arg(long, value_parser = choice::<OnReset>(), default_value = "success", requires = "kernel")]
    pub on_reset: OnReset,
    /// With --kernel: boot even on a PVM host, where a stock kernel cannot run.
    #[arg(long, requires = "kernel")]
    pub force: bool,
    /// With a bzImage: let its own decompressor run in the guest (as QEMU does), instead
    /// of vmm decompressing it (gzip, lz4, zstd) and entering the kernel proper, with
    /// the same KASLR choices (none with `nokaslr` on the command line).
    #[arg(long, requires = "kernel")]
    pub guest_decompressor: bool,
    /// Seconds to wait for each phase (READY, heartbeats, DONE).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Arguments of `vmm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// Heartbeats to wait for after READY before sending FINISH.
    #[arg(long, default_value_t = 3)]
    pub heartbeats: u32,
    /// Boot with dirty logging and, every DURATION (e.g. 200ms), pause, fetch the dirty
    /// set, print a dirty scan on stdout (GPA + GVA of each vCPU's CR3), resume. The
    /// guest console then goes to stderr. With `--mode dirty`, each scan is preceded by
    /// one guest round (NEXT_ROUND, then ROUND_DONE).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dirty_scan_every: Option<Duration>,
    /// How many dirty scans (rounds) before FINISH.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..), requires = "dirty_scan_every")]
    pub rounds: u32,
    /// Output format of the dirty scans.
    #[arg(long, value_enum, default_value_t = ScanFormat::Text, requires = "dirty_scan_every")]
    pub scan_format: ScanFormat,
    /// Which KVM dirty log to use.
    #[arg(long, value_parser = choice::<DirtyLogChoice>(), default_value = "auto", requires = "dirty_scan_every")]
    pub dirty_log: DirtyLogChoice,
    /// With `--dirty-log ring`: bytes of each vCPU's dirty ring (a power of two, at least
    /// 4K, or more where KVM reserves more (16K with Intel PML: asked of KVM), at most
    /// KVM_CAP_DIRTY_LOG_RING's maximum; e.g. 65536 or 64K). Default: 1M or the host's
    /// maximum.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size, requires = "dirty_scan_every")]
    pub dirty_ring_size: Option<u32>,
    /// Boot with dirty logging and write snapshots into DIR (new or empty): a full one,
    /// then diffs (see the README, "Snapshots"). The guest console then goes to stderr;
    /// one line per snapshot is printed on stdout.
    #[arg(
        long,
        value_name = "DIR",
        requires = "snapshot_every",
        conflicts_with = "dirty_scan_every"
    )]
    pub snapshot_dir: Option<PathBuf>,
    /// Time between snapshots (e.g. 200ms). With `--mode dirty`, each snapshot is
    /// preceded by one guest round (NEXT_ROUND, then ROUND_DONE).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "snapshot_dir")]
    pub snapshot_every: Option<Duration>,
    /// How many snapshots (generation 0 full, then diffs) before FINISH.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..), requires = "snapshot_dir")]
    pub snapshots: u64,
}

/// Arguments of `vmm snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// What to do with a snapshot directory.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// Subcommands of `vmm snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Rebuild guest RAM of one generation (the full snapshot plus every diff up to it)
    /// as a raw memory file (byte N = GPA N), after verifying every file of the chain.
    Merge(MergeArgs),
    /// List the generations of a snapshot directory (each one verified and loaded).
    List(ListArgs),
}

/// Arguments of `vmm snapshot merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The snapshot directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The generation to rebuild (default: the latest).
    #[arg(long, value_name = "G")]
    pub generation: Option<u64>,
    /// The raw memory file to write: a new file (written under a temporary name, then
    /// renamed), never a file of the snapshot or anything inside its directory.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Replace OUT if it is an existing regular file.
    #[arg(long)]
    pub overwrite: bool,
    /// What to write.
    #[arg(long, value_enum, default_value_t = MergeFormat::Raw)]
    pub format: MergeFormat,
}

/// Arguments of `vmm snapshot list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The snapshot directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// A headerless memory file's layout (`vmm inspect --dump --layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpLayout {
    /// Firecracker: RAM below 3.25 GiB, then from 4 GiB.
    Firecracker,
    /// Cloud Hypervisor (and this VMM): RAM below 3 GiB, then from 4 GiB.
    CloudHypervisor,
}

/// What `vmm snapshot merge` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeFormat {
    /// A raw memory file: byte N is GPA N.
    Raw,
    /// A QEMU-style ELF core: one PT_LOAD per RAM region, NT_PRSTATUS and QEMU notes per
    /// vCPU (for gdb, crash, drgn, volatility3 and `vmm inspect --dump`).
    Elf,
}

/// Output format of `vmm run --dirty-scan-every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScanFormat {
    /// Headers and `VA -> PA N pages` runs.
    Text,
    /// One JSON object per scan (see the README).
    Json,
}

/// When to pause a booted guest.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// Pause when the guest's console output contains MARKER (instead of the built-in
    /// guest's READY event).
    #[arg(long, value_name = "MARKER", conflicts_with = "after")]
    pub at_serial: Option<String>,
    /// Pause DURATION after boot (e.g. 500ms, 2s), instead of at READY.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub after: Option<Duration>,
    /// Pause when a vCPU parks itself through the debug port (event 6, PARK), as the
    /// Linux test guest's THP process does: that vCPU stopped at its signal, so
    /// its CR3 is the signalling process's. It becomes the walked vCPU (not --vcpu).
    #[arg(long, conflicts_with_all = ["at_serial", "after", "vcpu"])]
    pub at_signal: bool,
    /// The vCPU whose CR3 is walked.
    #[arg(long, default_value_t = 0)]
    pub vcpu: usize,
}

/// What to walk and how to print it (shared by `walk` and `inspect`).
#[derive(Debug, clap::Args)]
pub struct WalkOutputArgs {
    /// Virtual range START-END (hex, END exclusive; an empty END means the top).
    #[arg(long, value_name = "START-END", default_value = "0-")]
    pub range: VaRange,
    /// Split 2 MiB and 1 GiB leaves into 4 KiB shadow leaves.
    #[arg(long)]
    pub pte_level: bool,
    /// Output format.
    #[arg(long, value_parser = choice::<Format>(), default_value = "text")]
    pub format: Format,
    /// The most page-table entries one walk may read before it stops. Default: scaled
    /// with the guest memory the walk reads (its size / 1024 entries, at least 2^25 and
    /// at most 2^30: a full walk of a 1 TiB guest's 4 KiB mappings fits four times, a
    /// 512-way aliasing attack stops in about a second).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub budget: Option<u64>,
}

/// Arguments of `vmm walk`.
#[derive(Debug, clap::Args)]
pub struct WalkArgs {
    /// How to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// When to pause.
    #[command(flatten)]
    pub pause: PauseArgs,
    /// Walk every address space: each vCPU's CR3 and every CR3 the built-in guest lists.
    #[arg(long)]
    pub all_address_spaces: bool,
    /// What to print.
    #[command(flatten)]
    pub output: WalkOutputArgs,
    /// Also write guest RAM, while paused, to this raw memory file (for `vmm inspect`): a
    /// new file, written under a temporary name and renamed.
    #[arg(long, value_name = "PATH")]
    pub dump_memory: Option<PathBuf>,
    /// With --dump-memory: replace PATH if it is an existing regular file.
    #[arg(long, requires = "dump_memory")]
    pub overwrite: bool,
}

/// Arguments of `vmm translate`.
#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    /// How to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// When to pause.
    #[command(flatten)]
    pub pause: PauseArgs,
    /// Output format (text or json).
    #[arg(long, value_parser = choice::<Format>(), default_value = "text")]
    pub format: Format,
    /// Virtual addresses (hex).
    #[arg(required = true, value_name = "GVA", value_parser = parse_gva)]
    pub addresses: Vec<Gva>,
}

/// Arguments of `vmm inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Raw guest-physical memory file (byte N is GPA N).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["snapshot", "dump"],
        conflicts_with_all = ["snapshot", "dump"]
    )]
    pub memory: Option<PathBuf>,
    /// A memory dump made by another tool, its format detected from its contents: an ELF
    /// core (QEMU `dump-guest-memory`, `virsh dump --memory-only`, `ch-remote coredump`,
    /// `vmm snapshot merge --format elf`) with the registers of --cpu taken from it, a
    /// LiME capture, or with --layout/--regions a headerless memory file (Firecracker,
    /// Cloud Hypervisor).
    #[arg(long, value_name = "FILE", conflicts_with = "snapshot")]
    pub dump: Option<PathBuf>,
    /// With --dump: print what the dump holds (format, segments, CPUs with CR0/CR3/CR4
    /// and paging mode, VMCOREINFO) instead of walking.
    #[arg(long, requires = "dump")]
    pub info: bool,
    /// With --dump: the CPU whose saved registers are used (default 0).
    #[arg(long, default_value_t = 0, requires = "dump")]
    pub cpu: usize,
    /// With --dump: a headerless memory file of this VMM's layout: `firecracker` (RAM
    /// below 3.25 GiB, then from 4 GiB) or `cloud-hypervisor` (below 3 GiB, then from 4
    /// GiB; also this VMM's `gen-000000.mem`).
    #[arg(long, value_enum, requires = "dump", conflicts_with = "regions")]
    pub layout: Option<DumpLayout>,
    /// With --dump: a headerless memory file of these regions, concatenated in this order:
    /// `GPA:LEN,...` (hex; LEN may end in K, M or G).
    #[arg(long, value_name = "GPA:LEN,...", requires = "dump", value_parser = vmm::dump::Layout::parse_regions)]
    pub regions: Option<vmm::dump::Layout>,
    /// A snapshot directory: walk the CR3 saved in it, with the saved CR0, CR4, EFER,
    /// MAXPHYADDR and 1 GiB-page support (the register flags are not needed).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cr4", "efer", "cr0", "maxphyaddr", "no_gbpages"])]
    pub snapshot: Option<PathBuf>,
    /// With --snapshot: the generation (default: the latest).
    #[arg(
        long,
        value_name = "G",
        requires = "snapshot",
        conflicts_with = "memory"
    )]
    pub generation: Option<u64>,
    /// With --snapshot: the vCPU whose saved registers are used.
    #[arg(
        long,
        default_value_t = 0,
        requires = "snapshot",
        conflicts_with = "memory"
    )]
    pub vcpu: usize,
    /// CR3 of the address space (hex); with --snapshot or --dump, default: the saved CR3.
    #[arg(long, value_parser = parse_hex_arg, required_unless_present_any = ["snapshot", "dump"])]
    pub cr3: Option<u64>,
    /// CR4 (hex); default: PAE and PGE (4-level paging). Set bit 12 for 5-level paging.
    #[arg(long, value_parser = parse_hex_arg)]
    pub cr4: Option<u64>,
    /// EFER (hex); default: LME, LMA and NXE.
    #[arg(long, value_parser = parse_hex_arg)]
    pub efer: Option<u64>,
    /// CR0 (hex); default: PE, WP and PG.
    #[arg(long, value_parser = parse_hex_arg)]
    pub cr0: Option<u64>,
    /// MAXPHYADDR of the guest's CPU (default 52).
    #[arg(long, value_parser = clap::value_parser!(u8).range(36..=52))]
    pub maxphyaddr: Option<u8>,
    /// The guest's CPU has no 1 GiB pages (PS in a PUD is then a reserved bit).
    #[arg(long)]
    pub no_gbpages: bool,
    /// What to print.
    #[command(flatten)]
    pub output: WalkOutputArgs,
}

fn parse_memory(text: &str) -> Result<MemorySize, String> {
    text.parse::<MemorySize>().map_err(|e| e.to_string())
}

/// A dirty-ring size in bytes: decimal, optionally with K or M (powers of 1024); a
/// power of two of at least [`vmm::kvm::dirty_ring::DIRTY_RING_MIN_BYTES`]. The host's
/// maximum is checked when the VM is built ([`check_ring_size`]).
fn parse_ring_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1u64 << 20),
        _ => (t, 1),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size in bytes (e.g. 65536, 64K, 1M)"))?;
    let min = vmm::kvm::dirty_ring::DIRTY_RING_MIN_BYTES;
    if !bytes.is_power_of_two() {
        return Err(format!("{bytes} bytes is not a power of two"));
    }
    if bytes < u64::from(min) {
        return Err(format!(
            "{bytes} bytes is below the smallest ring KVM can take ({min} bytes: one page)"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("{bytes} bytes is larger than any KVM dirty ring"))
}

/// Checks a `--dirty-ring-size` with this host's KVM, on a scratch VM: its
/// `KVM_CAP_DIRTY_LOG_RING` maximum, and whether it takes a ring that small (KVM
/// reserves entries for the hardware dirty log, so its floor depends on the host). A
/// refused size is reported with the range this KVM takes.
fn check_ring_size(bytes: u32) -> anyhow::Result<()> {
    let scratch_vm = || {
        vmm::kvm::Hypervisor::open()
            .and_then(|h| h.create_vm())
            .context("--dirty-ring-size: cannot ask KVM about its dirty rings")
    };
    let vm = scratch_vm()?;
    let Some((_, max)) = vm.dirty_log_capabilities().dirty_ring() else {
        bail!("--dirty-ring-size: this host's KVM has no dirty rings (KVM_CAP_DIRTY_LOG_RING)");
    };
    let range = |smallest: u32| {
        format!(
            "this host's KVM_CAP_DIRTY_LOG_RING takes rings of {smallest} to {max} bytes (powers of two)"
        )
    };
    if !vmm::kvm::dirty_ring::valid_ring_bytes(bytes, max) {
        bail!(
            "--dirty-ring-size {bytes}: {}",
            range(vmm::kvm::dirty_ring::DIRTY_RING_MIN_BYTES)
        );
    }
    if vm.enable_dirty_ring(bytes).is_ok() {
        return Ok(());
    }
    let mut smallest = bytes;
    while smallest < max {
        smallest *= 2;
        if scratch_vm()?.enable_dirty_ring(smallest).is_ok() {
            break;
        }
    }
    bail!(
        "--dirty-ring-size {bytes}: too small for this host's KVM, which reserves entries for its hardware dirty log: {}",
        range(smallest)
    )
}

/// Boots the guest of `args` (the built-in guest in `mode`, or `--kernel`) with dirty
/// logging `choice`; with `ring_bytes` (checked against the host) the ring backend with
/// rings of that size.
fn boot_dirty(
    args: &BootArgs,
    mode: GuestMode,
    console: Console,
    choice: DirtyLogChoice,
    ring_bytes: Option<u32>,
) -> anyhow::Result<Vm> {
    if let Some(bytes) = ring_bytes {
        if choice != DirtyLogChoice::Ring {
            bail!(
                "--dirty-ring-size needs --dirty-log ring (the dirty log asked for is {choice:?})"
            );
        }
        check_ring_size(bytes)?;
    }
    let dirty = DirtyConfig { choice, ring_bytes };
    start_vm(&vm_config(args, mode, console, Some(dirty)))
}

/// The VM the boot options describe: `--kernel`'s Linux guest, or the built-in guest in
/// `mode`.
fn vm_config(
    args: &BootArgs,
    mode: GuestMode,
    console: Console,
    dirty: Option<DirtyConfig>,
) -> VmConfig {
    let boot = match &args.kernel {
        Some(kernel) => BootSource::Linux(LinuxBoot {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            force: args.force,
            decompress: if args.guest_decompressor {
                Decompress::Guest
            } else {
                Decompress::Vmm
            },
        }),
        None => BootSource::Builtin(mode),
    };
    VmConfig {
        memory: args.memory,
        vcpus: args.vcpus,
        boot,
        console,
        dirty,
    }
}

fn start_vm(config: &VmConfig) -> anyhow::Result<Vm> {
    let what = match config.boot {
        BootSource::Linux(_) => "cannot start the Linux VM",
        BootSource::Builtin(_) => "cannot start the VM",
    };
    build_vm(config).context(what)
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{text:?} is not a percentage in (0, 100]")),
    }
}

fn parse_hex_arg(text: &str) -> Result<u64, String> {
    parse_hex(text).ok_or_else(|| {
        format!(
            "{text:?} is not a hexadecimal number of at most 16 digits (an optional 0x; `_` only between groups of four digits, e.g. ffff_8880_0000_0000)"
        )
    })
}

fn parse_gva(text: &str) -> Result<Gva, String> {
    parse_hex_arg(text).map(Gva)
}

/// Parses `500ms`, `2s`, `1.5s` or `1m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 24 hours)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Whether an output may replace an existing regular file (`--overwrite`).
fn replace(overwrite: bool) -> Replace {
    if overwrite { Replace::Yes } else { Replace::No }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_guest(&args),
        Command::Walk(args) => walk_guest(&args),
        Command::Translate(args) => translate_guest(&args),
        Command::Inspect(args) => inspect_file(&args),
        Command::Snapshot(args) => snapshot_command(&args),
        Command::Bench(args) => bench(&args),
    }
}

fn boot(args: &BootArgs, console: Console) -> anyhow::Result<Vm> {
    boot_with(args, console, None)
}

fn boot_with(
    args: &BootArgs,
    console: Console,
    dirty_log: Option<DirtyLogChoice>,
) -> anyhow::Result<Vm> {
    start_vm(&vm_config(
        args,
        args.mode,
        console,
        dirty_log.map(DirtyConfig::new),
    ))
}

fn run_guest(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(every) = args.dirty_scan_every {
        return run_dirty_scans(args, every);
    }
    if let (Some(dir), Some(every)) = (&args.snapshot_dir, args.snapshot_every) {
        return run_snapshots(args, dir, every);
    }
    if args.boot.kernel.is_some() {
        return run_linux(&args.boot);
    }
    let timeout = Duration::from_secs(args.boot.timeout);
    let started = Instant::now();
    let vm = boot(&args.boot, Console::Stdout)?;
    let descriptor = match ready_or_end(&vm, timeout)? {
        Ok(descriptor) => descriptor,
        Err(code) => return Ok(code),
    };
    eprintln!(
        "vmm: guest READY after {:.1?}, descriptor at GPA {:#x}",
        started.elapsed(),
        descriptor.0
    );
    match Descriptor::read(vm.guest_memory(), descriptor) {
        Ok(d) => eprintln!(
            "vmm: descriptor: {} runs, {} address spaces, features {:#x}, CR3 {:#x} / {:#x}",
            d.runs.len(),
            d.space_count,
            d.features.0,
            d.cr3[0],
            d.cr3[1]
        ),
        Err(e) => eprintln!("vmm: warning: the guest's descriptor is invalid: {e}"),
    }
    if let Some(outcome) = wait_heartbeats(&vm, args.heartbeats, timeout)? {
        return Ok(report(&outcome));
    }
    finish(&vm, timeout)
}

/// `vmm run --dirty-scan-every`: READY (the built-in guest; a Linux guest is scanned from
/// its start), a first fetch that drops what boot dirtied, then `--rounds` scans, each
/// DURATION after the previous one (after one guest round in `--mode dirty`), then FINISH
/// (the built-in guest) or the guest's own end (Linux: it runs on until it powers off,
/// resets or `--timeout`).
fn run_dirty_scans(args: &RunArgs, every: Duration) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let linux = args.boot.kernel.is_some();
    let started = Instant::now();
    let vm = boot_dirty(
        &args.boot,
        args.boot.mode,
        Console::stderr(),
        args.dirty_log,
        args.dirty_ring_size,
    )?;
    if !linux && let Err(code) = ready_or_end(&vm, timeout)? {
        return Ok(code);
    }
    let backend = vm.dirty_log_backend();
    eprintln!(
        "vmm: guest {}; dirty log: {}",
        if linux { "started" } else { "READY" },
        backend.map(|b| b.to_string()).unwrap_or_default()
    );
    vm.pause().context("pausing the vCPUs")?;
    vm.fetch_dirty().context("fetching the dirty log")?;
    vm.resume().context("resuming the vCPUs")?;
    let dirty_mode = !linux && matches!(args.boot.mode, GuestMode::Dirty | GuestMode::DirtyBulk);
    let mut next = Instant::now() + every;
    for _ in 0..args.rounds {
        if dirty_mode && let Some(code) = guest_round(&vm, timeout)? {
            return Ok(code);
        }
        if let Some(outcome) = wait_or_end(&vm, next) {
            eprintln!("vmm: the guest ended before the next dirty scan");
            return Ok(report_with(&outcome, args.boot.on_reset));
        }
        next += every;
        let states = vm.pause().context("pausing the vCPUs")?;
        let started = Instant::now();
        let (_, scan) = vm.dirty_scan(&states, &[]).context("dirty scan")?;
        let took = started.elapsed();
        let mut out = io::stdout().lock();
        match args.scan_format {
            ScanFormat::Json => writeln!(out, "{}", scan.to_json())?,
            ScanFormat::Text => write!(out, "{}", scan.to_text())?,
        }
        out.flush()?;
        drop(out);
        eprintln!(
            "vmm: dirty scan {} took {took:.2?} (fetch + scans)",
            scan.seq
        );
        vm.resume().context("resuming the vCPUs")?;
    }
    end_of_run(&vm, args, started)
}

/// Waits until `until`, or returns how the VM ended if it ends first. Events meanwhile
/// are dropped (the built-in guest's heartbeats), and a vCPU that parks is let go (a
/// Linux process signalling a VMM that is not waiting for it).
fn wait_or_end(vm: &Vm, until: Instant) -> Option<ExitOutcome> {
    loop {
        if let Some(outcome) = vm.outcome() {
            return Some(outcome);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match vm.wait_event_unparking(until, left) {
            Ok(_) | Err(VmError::Timeout(_)) => {}
            Err(_) => return vm.outcome(),
        }
    }
}

/// The end of a `vmm run` with scans or snapshots: FINISH for the built-in guest; a Linux
/// guest runs on until it ends by itself (or `--timeout` passes, counted from `started`).
fn end_of_run(vm: &Vm, args: &RunArgs, started: Instant) -> anyhow::Result<ExitCode> {
    if args.boot.kernel.is_none() {
        return finish(vm, Duration::from_secs(args.boot.timeout));
    }
    wait_linux_end(vm, &args.boot, started, started)
}

/// One round of the dirty-writer guest: NEXT_ROUND, then its ROUND_DONE. Returns the exit
/// status instead if the guest stops.
fn guest_round(vm: &Vm, timeout: Duration) -> anyhow::Result<Option<ExitCode>> {
    let record = match vm.run_round(timeout) {
        Ok(record) => record,
        Err(VmError::Stopped { outcome, .. }) => return Ok(Some(report(&outcome))),
        Err(e) => return Err(e).context("waiting for ROUND_DONE"),
    };
    match RoundRecord::read_any(vm.guest_memory(), record) {
        Ok(r) => eprintln!("vmm: guest round {} wrote {} pages", r.round, r.pages.len()),
        Err(e) => eprintln!("vmm: warning: {e}"),
    }
    Ok(None)
}

/// `vmm run --snapshot-dir DIR --snapshot-every DURATION`: READY (the built-in guest; a
/// Linux guest from its start), then `--snapshots` generations (full, then diffs), each
/// DURATION after the previous one (after one guest round in `--mode dirty`), each with
/// every vCPU paused, the dirty log fetched and cleared, memory and state written, then
/// resumed; then FINISH (built-in) or the guest's own end (Linux).
fn run_snapshots(
    args: &RunArgs,
    dir: &std::path::Path,
    every: Duration,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let linux = args.boot.kernel.is_some();
    let started = Instant::now();
    let mut snaps = snapshot::SnapshotDir::create(dir)?;
    let vm = boot_with(&args.boot, Console::stderr(), Some(DirtyLogChoice::Auto))?;
    if !linux {
        let descriptor = match ready_or_end(&vm, timeout)? {
            Ok(d) => d,
            Err(code) => return Ok(code),
        };
        if let Ok(d) = Descriptor::read(vm.guest_memory(), descriptor) {
            snaps.set_guest_cr3s(d.cr3.iter().take(d.space_count as usize).copied().collect());
        }
    }
    eprintln!(
        "vmm: guest {}; snapshots into {} every {every:.2?}",
        if linux { "started" } else { "READY" },
        dir.display()
    );
    let dirty_mode = !linux && matches!(args.boot.mode, GuestMode::Dirty | GuestMode::DirtyBulk);
    let mut next = Instant::now() + every;
    for _ in 0..args.snapshots {
        if dirty_mode && let Some(code) = guest_round(&vm, timeout)? {
            return Ok(code);
        }
        if let Some(outcome) = wait_or_end(&vm, next) {
            eprintln!("vmm: the guest ended before the next snapshot");
            return Ok(report_with(&outcome, args.boot.on_reset));
        }
        next += every;
        let info = vm.snapshot(&mut snaps).context("taking a snapshot")?;
        println!(
            "generation {} {:?}: {} pages, {} bytes in {}, written in {:.2?}",
            info.generation,
            info.kind,
            info.pages,
            info.data_bytes,
            info.data_path.display(),
            info.elapsed
        );
    }
    end_of_run(&vm, args, started)
}

/// Waits for the built-in guest's READY: its descriptor's GPA, or the exit status to
/// end with when the guest stopped first.
fn ready_or_end(
    vm: &Vm,
    timeout: Duration,
) -> anyhow::Result<Result<vm_memory::GuestAddress, ExitCode>> {
    match vm.wait_ready(timeout) {
        Ok(descriptor) => Ok(Ok(descriptor)),
        Err(VmError::Stopped { outcome, .. }) => Ok(Err(report(&outcome))),
        Err(e) => Err(e).context("waiting for the guest to report READY"),
    }
}

/// Sends FINISH and reports how the guest ended.
fn finish(vm: &Vm, timeout: Duration) -> anyhow::Result<ExitCode> {
    vm.finish();
    let outcome = vm
        .wait(timeout)
        .context("waiting for the guest to finish")?;
    Ok(report(&outcome))
}

/// Waits for `count` heartbeats; returns the outcome if the VM ends first.
fn wait_heartbeats(vm: &Vm, count: u32, timeout: Duration) -> anyhow::Result<Option<ExitOutcome>> {
    let mut seen = 0;
    let deadline = Instant::now() + timeout;
    while seen < count {
        match vm
            .wait_event_unparking(deadline, timeout)
            .context("waiting for a heartbeat")?
        {
            VmEvent::VcpuStopped { .. } => return Ok(vm.outcome()),
            event => {
                if let Some(GuestSignal::Heartbeat { iteration }) = GuestSignal::of(&event) {
                    seen += 1;
                    eprintln!("vmm: heartbeat: iteration {iteration}");
                }
            }
        }
    }
    Ok(None)
}

/// `vmm run --kernel`: boots Linux, console on stdout, and waits (at most --timeout)
/// until the VM ends; a guest reset is a clean end (status 0).
fn run_linux(args: &BootArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // The console's tail says whether a reset followed a kernel panic.
    let vm = boot(args, Console::stdout_tail())?;
    // How long the VMM's own part of a boot took: loading, tables, KVM set-up, up to
    // the vCPUs running. The rest of a boot's time is the guest's.
    eprintln!(
        "vmm: vCPUs started {:.2?} after set-up began",
        started.elapsed()
    );
    match vm.linux().map(|loaded| loaded.decompressed.clone()) {
        Some(Decompressed::ByVmm {
            format,
            compressed,
            decompressed,
            physical,
            virtual_offset,
        }) => eprintln!(
            "vmm: decompressed the kernel ({format}, {compressed} -> {decompressed} bytes); \
             its image is at GPA {:#x}, {}",
            physical.0,
            virtual_offset.map_or("KASLR off".to_string(), |offset| format!(
                "virtual KASLR offset {offset:#x}"
            ))
        ),
        Some(Decompressed::LeftToGuest { reason }) => {
            eprintln!("vmm: the kernel's own decompressor runs in the guest: {reason}")
        }
        _ => {}
    }
    // --timeout counts from here: the set-up above is the VMM's, not the guest's.
    wait_linux_end(&vm, args, started, Instant::now())
}

/// Waits until a Linux guest ends by itself, `--timeout` after `timeout_from` at the
/// latest, and reports how it ended (and how long it ran since `started`): every vCPU's
/// registers when it hung, the other vCPUs' too when one of several died.
fn wait_linux_end(
    vm: &Vm,
    args: &BootArgs,
    started: Instant,
    timeout_from: Instant,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let left = timeout
        .saturating_sub(timeout_from.elapsed())
        .max(Duration::from_secs(1));
    let outcome = vm.wait(left).map_err(|e| {
        // A hung guest: where every vCPU is, before the error ends the VMM.
        eprint!("vmm: {e}; every vCPU now:\n{}", vm.vcpu_report(None));
        e
    });
    let outcome = outcome
        .with_context(|| format!("waiting for the Linux guest to end (--timeout {timeout:?})"))?;
    eprintln!("vmm: the VM ran for {:.2?}", started.elapsed());
    let code = report_with(&outcome, args.on_reset);
    if let ExitOutcome::Failed { vcpu, .. } = &outcome
        && vm.vcpu_count() > 1
    {
        eprint!("vmm: the other vCPUs now:\n{}", vm.vcpu_report(Some(*vcpu)));
    }
    Ok(code)
}

fn report(outcome: &ExitOutcome) -> ExitCode {
    report_with(outcome, OnReset::Success)
}

/// Prints how the VM ended (what kind of end, then the details) and returns its status.
fn report_with(outcome: &ExitOutcome, on_reset: OnReset) -> ExitCode {
    match outcome {
        ExitOutcome::Done { .. } => eprintln!("vmm: {outcome}"),
        _ => eprintln!("vmm: {}: {outcome}", outcome.verdict()),
    }
    ExitCode::from(outcome.exit_status(on_reset))
}

/// `walk`/`translate` whose guest ended before it could be paused: nothing was walked.
/// The guest's crash keeps its status; a clean end is a walk that never happened.
fn report_unwalked(outcome: &ExitOutcome, what: &str) -> ExitCode {
    eprintln!("vmm: the guest ended before it could be paused: no {what} was done");
    let code = report(outcome);
    if outcome.is_success() {
        ExitCode::from(EXIT_WALK_INCOMPLETE)
    } else {
        code
    }
}

/// Boots and pauses every vCPU at the moment the options ask for (READY by default;
/// [`vmm::pause`]). Returns the outcome instead if the guest ends first.
fn boot_and_pause(
    boot_args: &BootArgs,
    pause: &PauseArgs,
) -> anyhow::Result<Result<Paused, ExitOutcome>> {
    let timeout = Duration::from_secs(boot_args.timeout);
    if pause.at_signal && boot_args.kernel.is_none() && boot_args.mode != GuestMode::Park {
        bail!(
            "--at-signal waits for a vCPU to park (debug-port PARK): the built-in guest parks only in --mode park; a Linux guest (--kernel) parks from a process"
        );
    }
    let at = if pause.at_signal {
        PauseAt::Park
    } else if let Some(marker) = &pause.at_serial {
        PauseAt::Serial(marker.clone())
    } else if let Some(delay) = pause.after {
        PauseAt::After(delay)
    } else if boot_args.kernel.is_some() {
        bail!(
            "with --kernel, say when to pause: --at-signal, --at-serial MARKER or --after DURATION"
        );
    } else {
        PauseAt::Ready
    };
    let console = Console::stderr();
    let started = Instant::now();
    let vm = boot(boot_args, console.clone())?;
    let paused = match vmm::pause::pause_at(vm, &console, &at, pause.vcpu, timeout, started)? {
        Ok(paused) => paused,
        Err(outcome) => return Ok(Err(outcome)),
    };
    if let Some(argument) = paused.park_argument {
        eprintln!(
            "vmm: vCPU {} parked with argument {argument:#x}{}",
            paused.vcpu,
            paused
                .last_mark
                .map(|m| format!(" (last MARK {m:#x})"))
                .unwrap_or_default()
        );
    }
    if let Some(Err(e)) = &paused.descriptor {
        eprintln!("vmm: warning: the guest's descriptor is invalid: {e}");
    }
    eprintln!(
        "vmm: paused {} vCPU(s) {:.1?} after start",
        paused.states.len(),
        paused.elapsed
    );
    Ok(Ok(paused))
}

fn walk_guest(args: &WalkArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let p = match boot_and_pause(&args.boot, &args.pause)? {
        Ok(p) => p,
        Err(outcome) => return Ok(report_unwalked(&outcome, "walk")),
    };
    let state = &p.states[p.vcpu];
    // The address spaces: (label, CR3).
    let mut spaces: Vec<(String, u64)> = vec![(format!("vcpu {}", p.vcpu), state.cr3)];
    if args.all_address_spaces {
        let mut seen: BTreeSet<u64> = BTreeSet::from([state.cr3 & !0xfff]);
        for s in &p.states {
            if seen.insert(s.cr3 & !0xfff) {
                spaces.push((format!("vcpu {}", s.index), s.cr3));
            }
        }
        if let Some(d) = p.valid_descriptor() {
            for (i, cr3) in d.cr3.iter().take(d.space_count as usize).enumerate() {
                if seen.insert(cr3 & !0xfff) {
                    spaces.push((format!("guest address space {i}"), *cr3));
                }
            }
        }
    }
    if let Some(path) = &args.dump_memory {
        memfile::dump(p.vm.guest_memory(), path, replace(args.overwrite))?;
        eprintln!("vmm: guest RAM written to {}", path.display());
    }
    let mut incomplete = false;
    for (label, cr3) in &spaces {
        let ctx =
            p.vm.paging_context(state, Some(*cr3))
                .with_context(|| format!("cannot walk {label}"))?;
        if !walk_one(p.vm.guest_memory(), &ctx, label, &args.output)? {
            incomplete = true;
        }
    }
    p.vm.resume().context("resuming the vCPUs")?;
    let code = finish(&p.vm, timeout)?;
    Ok(if incomplete && code == ExitCode::SUCCESS {
        ExitCode::from(EXIT_WALK_INCOMPLETE)
    } else {
        code
    })
}

/// Prints one address space. Returns whether the walk covered the whole range.
fn walk_one<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    label: &str,
    output: &WalkOutputArgs,
) -> anyhow::Result<bool> {
    let granularity = if output.pte_level {
        Granularity::Split4K
    } else {
        Granularity::AsMapped
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // The text format starts each address space with a `#` line; `tlb` is QEMU's `info
    // tlb` line for line, so its header goes to stderr, as json's does.
    let header = format!(
        "# address space of {label}: CR3 {:#x}, {:?} paging",
        ctx.registers().cr3,
        ctx.mode()
    );
    if output.format == Format::Text {
        writeln!(out, "{header}")?;
    } else {
        eprintln!("vmm: {}", &header[2..]);
    }
    let started = Instant::now();
    let result = print_walk(
        mem,
        ctx,
        &output.range,
        granularity,
        output.format,
        WalkOptions {
            entry_budget: output.budget.unwrap_or(walker::DEFAULT_ENTRY_BUDGET),
        },
        &mut out,
    );
    out.flush()?;
    match result {
        Ok(s) => {
            eprintln!(
                "vmm: {label}: {} leaves, {} bad entries; read {} entries in {} tables, split {} 2M and {} 1G leaves, in {:.2?}",
                s.leaves,
                s.bad,
                s.stats.entries_read,
                s.stats.tables_read,
                s.stats.split_2m,
                s.stats.split_1g,
                started.elapsed()
            );
            Ok(true)
        }
        Err(PrintError::Budget(msg)) => {
            eprintln!("vmm: {label}: walk incomplete: {msg}");
            Ok(false)
        }
        Err(PrintError::Io(e)) => Err(e).context("writing the walk"),
    }
}

fn translate_guest(args: &TranslateArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let p = match boot_and_pause(&args.boot, &args.pause)? {
        Ok(p) => p,
        Err(outcome) => return Ok(report_unwalked(&outcome, "translation")),
    };
    let state = &p.states[p.vcpu];
    let ctx =
        p.vm.paging_context(state, None)
            .context("cannot translate")?;
    let mut out = io::stdout().lock();
    for gva in &args.addresses {
        let ours = walker::translate(p.vm.guest_memory(), &ctx, *gva);
        let line = translation_line(*gva, &ours, args.format);
        let kvm = p.vm.translate(p.vcpu, *gva).context("KVM_TRANSLATE")?;
        let verdict = oracle_verdict(
            &ours,
            kvm.valid,
            kvm.gpa.0,
            state.sregs.cr4,
            state.regs.rflags,
        );
        let kvm_text = if kvm.valid {
            format!("{:#x}", kvm.gpa.0)
        } else {
            "invalid".to_owned()
        };
        if args.format == Format::Json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{line} (KVM_TRANSLATE: {kvm_text}, {})",
                match verdict {
                    OracleVerdict::Agrees => "agrees",
                    OracleVerdict::SmapHidesUserPage =>
                        "agrees: a user page, which CR4.SMAP hides from its supervisor read",
                    OracleVerdict::Disagrees => "DISAGREES",
                }
            )?;
        }
    }
    drop(out);
    p.vm.resume().context("resuming the vCPUs")?;
    finish(&p.vm, timeout)
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    if args.boot.kernel.is_some() {
        return bench_linux(args, timeout);
    }
    let runs = args.runs as usize;
    // Boot to READY, several times; the last VM stays for the rest.
    let mut boots = Vec::new();
    let mut vm = None;
    for _ in 0..runs {
        if let Some((old, _)) = vm.take() {
            drop::<Vm>(old);
        }
        let started = Instant::now();
        let booted = boot(&args.boot, Console::capture())?;
        let descriptor = booted
            .wait_ready(timeout)
            .context("waiting for the guest to report READY")?;
        boots.push(started.elapsed());
        vm = Some((booted, descriptor));
    }
    let Some((vm, descriptor)) = vm else {
        bail!("no VM was booted");
    };
    boots.sort();
    println!(
        "boot to READY: median {:.2?} over {runs} boots (min {:.2?}, max {:.2?})",
        boots[boots.len() / 2],
        boots[0],
        boots[boots.len() - 1]
    );
    let mut pauses = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        vm.pause().context("pausing")?;
        pauses.push(t.elapsed());
        vm.resume().context("resuming")?;
    }
    pauses.sort();
    println!(
        "pause {} vCPU(s) and read their state: median {:.2?}",
        vm.vcpu_count(),
        pauses[pauses.len() / 2]
    );
    let states = vm.pause().context("pausing")?;
    let mut cr3s = vec![states[0].cr3];
    if let Ok(d) = Descriptor::read(vm.guest_memory(), descriptor) {
        cr3s.extend(
            d.cr3
                .iter()
                .take(d.space_count as usize)
                .filter(|c| **c != states[0].cr3),
        );
    }
    print!(
        "{}",
        crate::bench::measure_paused(&vm, &states[0], &cr3s, runs)?
    );
    vm.resume().context("resuming")?;
    let code = finish(&vm, timeout)?;
    drop(vm);
    bench_dirty(args, runs, timeout)?;
    bench_snapshots(args, runs, timeout)?;
    Ok(code)
}

/// `vmm bench --kernel`: a dirty scan (pause, dirty fetch, GVA scan of the current CR3,
/// resume) and a diff snapshot generation of the running Linux guest, each against the
/// same operation on the built-in guest with the same memory and vCPUs in the same run.
/// The Linux guest is measured from the moment a vCPU parks (the Linux test guest's THP
/// process; give it `guestwalk.linger=N` so it keeps running) or shows `--at-serial`.
fn bench_linux(args: &BenchArgs, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runs = args.runs as usize;
    let settle = Duration::from_millis(20);
    let scratch = args
        .snapshot_scratch
        .first()
        .cloned()
        .unwrap_or_else(std::env::temp_dir);
    let dirty = Some(DirtyConfig::new(DirtyLogChoice::Auto));

    let builtin = VmConfig {
        memory: args.boot.memory,
        vcpus: args.boot.vcpus,
        console: Console::capture(),
        dirty,
        ..VmConfig::builtin(GuestMode::Normal)
    };
    let vm = start_vm(&builtin)?;
    if let Err(code) = ready_or_end(&vm, timeout)? {
        return Ok(code);
    }
    let b =
        crate::bench::measure_live(&vm, 0, runs, settle, &scratch).context("the built-in guest")?;
    let code = finish(&vm, timeout)?;
    drop(vm);

    let console = Console::capture();
    let started = Instant::now();
    let vm = start_vm(&vm_config(
        &args.boot,
        GuestMode::Normal,
        console.clone(),
        dirty,
    ))?;
    let at = match &args.at_serial {
        Some(marker) => PauseAt::Serial(marker.clone()),
        None => PauseAt::Park,
    };
    let paused = match vmm::pause::pause_at(vm, &console, &at, 0, timeout, started)? {
        Ok(paused) => paused,
        Err(outcome) => {
            eprintln!("vmm: the Linux guest ended before it could be measured");
            return Ok(report(&outcome));
        }
    };
    println!(
        "Linux guest at its {} after {:.2?}",
        if args.at_serial.is_some() {
            "console marker"
        } else {
            "park"
        },
        paused.elapsed
    );
    paused.vm.resume().context("resuming")?;
    let l = crate::bench::measure_live(&paused.vm, paused.vcpu, runs, settle, &scratch)
        .context("the Linux guest")?;
    if let Some(outcome) = paused.vm.ended() {
        bail!(
            "the Linux guest ended during the measurement ({outcome}): give it more time (guestwalk.linger=N)"
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    for (name, c) in [("built-in guest", &b), ("Linux guest", &l)] {
        println!(
            "{name}, {} of RAM, {} vCPU(s), median of {runs}, {settle:?} apart: pause + dirty fetch + scan of the CR3 + resume {:.2?} ({} dirty pages; huge leaves skipped {}, split {}); diff snapshot {:.2?} ({} pages)",
            args.boot.memory,
            args.boot.vcpus,
            c.scan,
            c.scan_pages,
            c.huge_skipped,
            c.huge_split,
            c.diff,
            c.diff_pages
        );
    }
    println!(
        "Linux / built-in: dirty scan {:.2}, diff snapshot {:.2}",
        ratio(l.scan, b.scan),
        ratio(l.diff, b.diff)
    );
    paused.vm.resume().ok();
    Ok(code)
}

/// Boots the bulk dirty-writer guest for a measurement, writes the request and drops
/// the boot-time dirty set.
fn boot_bulk(
    args: &BenchArgs,
    choice: DirtyLogChoice,
    ring_bytes: Option<u32>,
    request: vmm::guest::BulkRequest,
    timeout: Duration,
) -> anyhow::Result<Vm> {
    let vm = boot_dirty(
        &args.boot,
        GuestMode::DirtyBulk,
        Console::capture(),
        choice,
        ring_bytes,
    )?;
    vm.wait_ready(timeout).context("waiting for READY")?;
    request
        .write(vm.guest_memory())
        .context("writing the bulk request")?;
    vm.pause().context("pausing")?;
    vm.fetch_dirty()
        .context("dropping the boot-time dirty set")?;
    vm.resume().context("resuming")?;
    Ok(vm)
}

/// The bulk request of `vmm bench`: `--dirty-percent` of the bulk area in runs of
/// `--dirty-cluster` pages, checked against the guest.
fn bench_request(args: &BenchArgs) -> anyhow::Result<vmm::guest::BulkRequest> {
    let ram = args.boot.memory.bytes();
    let request = vmm::guest::BulkRequest::percent_of(ram, args.dirty_percent, args.dirty_cluster);
    request.check(ram).with_context(|| {
        format!(
            "--dirty-percent {} --dirty-cluster {} on --memory {}",
            args.dirty_percent, args.dirty_cluster, args.boot.memory
        )
    })?;
    Ok(request)
}

/// Snapshot writes of the bulk guest into each scratch directory: a full snapshot, then
/// per round a diff of exactly the guest's pages (verified), each against a plain
/// sequential write + fsync of the same bytes to the same directory in the same run.
fn bench_snapshots(args: &BenchArgs, runs: usize, timeout: Duration) -> anyhow::Result<()> {
    let request = bench_request(args)?;
    let mut scratches = args.snapshot_scratch.clone();
    if scratches.is_empty() {
        scratches.push(std::env::temp_dir());
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            scratches.push(shm);
        }
    }
    let gbps = |bytes: u64, t: Duration| bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9;
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    for scratch in &scratches {
        let vm = boot_bulk(args, DirtyLogChoice::Auto, None, request, timeout)?;
        let c = crate::bench::measure_bulk_snapshots(&vm, scratch, runs, timeout)
            .with_context(|| format!("snapshots into {}", scratch.display()))?;
        println!(
            "snapshot full of {} MiB into {}: {:.2?} ({:.2} GB/s); plain sequential write + fsync of the same bytes {:.2?}: full / plain = {:.2}",
            c.full_bytes >> 20,
            scratch.display(),
            c.full,
            gbps(c.full_bytes, c.full),
            c.full_plain,
            ratio(c.full, c.full_plain)
        );
        let dirty = c.diff_pages * 4096;
        println!(
            "snapshot diff into {} of {} dirty pages ({} written by the guest per round + extras, verified), median of {runs}: {:.2?} ({:.2} GB/s of dirty data); plain write + fsync of the same bytes {:.2?} ({:.2} GB/s): diff / plain = {:.2}",
            scratch.display(),
            c.diff_pages,
            request.pages,
            c.diff,
            gbps(dirty, c.diff),
            c.diff_plain,
            gbps(dirty, c.diff_plain),
            ratio(c.diff, c.diff_plain)
        );
        finish(&vm, timeout)?;
    }
    Ok(())
}

/// Dirty-log measurements on the bulk guest, per backend: per round, the fetch, the GPA
/// scan and the GVA scan skipping clean huge leaves against one splitting every huge
/// leaf; every round verified against the guest's record.
fn bench_dirty(args: &BenchArgs, runs: usize, timeout: Duration) -> anyhow::Result<()> {
    let request = bench_request(args)?;
    println!(
        "dirty log on --mode dirty-bulk, {} of RAM: the guest writes {} pages per round ({}% of its {} bulk pages, runs of {})",
        args.boot.memory,
        request.pages,
        args.dirty_percent,
        vmm::guest::bulk_area_pages(args.boot.memory.bytes()),
        request.cluster
    );
    let mut fetch_times = Vec::new();
    for choice in [
        DirtyLogChoice::Bitmap,
        DirtyLogChoice::ManualClear,
        DirtyLogChoice::Ring,
    ] {
        let ring = args
            .dirty_ring_size
            .filter(|_| choice == DirtyLogChoice::Ring);
        let vm = match boot_bulk(args, choice, ring, request, timeout) {
            Ok(vm) => vm,
            Err(e) if args.dirty_ring_size.is_some() && choice == DirtyLogChoice::Ring => {
                return Err(e);
            }
            Err(e) => {
                println!("dirty log {choice:?}: not measured: {e:#}");
                continue;
            }
        };
        let c = crate::bench::measure_bulk_dirty(&vm, request, runs, timeout)
            .with_context(|| format!("dirty log {choice:?}"))?;
        let rings = vm
            .dirty_ring_stats()
            .map(|s| {
                format!(
                    " ({} rings of {} KiB, {} entries harvested, {} ring-full exits)",
                    s.rings,
                    s.ring_bytes >> 10,
                    s.harvested,
                    s.full_exits
                )
            })
            .unwrap_or_default();
        println!(
            "dirty log {choice:?}, median of {} rounds of {} dirty pages ({} written by the guest, verified): fetch {:.2?}{rings}; GPA scan {:.2?}; GVA scan {:.2?} (huge leaves skipped {}, split {}); GPA + GVA scan {:.2?}; GVA scan splitting every huge leaf {:.2?}: skip / split = {:.3}",
            c.rounds,
            c.dirty,
            c.written,
            c.fetch,
            c.gpa_scan,
            c.gva_scan,
            c.huge_skipped,
            c.huge_split,
            c.gpa_scan + c.gva_scan,
            c.gva_split,
            c.gva_scan.as_secs_f64() / c.gva_split.as_secs_f64().max(1e-9)
        );
        fetch_times.push((choice, c.fetch));
        finish(&vm, timeout)?;
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    if let Some((_, bitmap)) = fetch_times
        .iter()
        .find(|(c, _)| *c == DirtyLogChoice::Bitmap)
    {
        for (choice, time) in &fetch_times {
            if *choice != DirtyLogChoice::Bitmap {
                println!(
                    "dirty fetch ({} of RAM, {} guest-dirtied pages per round): {choice:?} / bitmap = {:.3}",
                    args.boot.memory,
                    request.pages,
                    ratio(*time, *bitmap)
                );
            }
        }
    }
    Ok(())
}

fn inspect_file(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.snapshot {
        return inspect_snapshot(args, dir);
    }
    if let Some(path) = &args.dump {
        return inspect_dump(args, path);
    }
    let (Some(path), Some(cr3)) = (&args.memory, args.cr3) else {
        bail!("vmm inspect needs --memory FILE --cr3 HEX, or --snapshot DIR");
    };
    let file = memfile::open(path)?;
    let regs = given_registers(args, ControlRegisters::long_mode(cr3));
    let ctx = inspect_context(args, regs)
        .context("the registers given do not describe 4- or 5-level paging")?;
    // A root table outside the file is a mistake in --cr3 (or the wrong file), not a
    // guest's bad entry: say so instead of walking nothing.
    let root = ctx.root().0;
    if root.checked_add(0x1000).is_none_or(|end| end > file.len()) {
        bail!(
            "--cr3 {cr3:#x}: its top-level table at GPA {root:#x} is outside the memory file {} ({} bytes, GPAs 0x0-{:#x})",
            path.display(),
            file.len(),
            file.len() - 1
        );
    }
    let label = path.display().to_string();
    let complete = walk_one(file.memory(), &ctx, &label, &args.output)?;
    file.check_intact()?;
    Ok(walk_status(complete))
}

/// The registers an inspection walks with: `saved` (a dump's, or long mode with NX) with
/// each register flag given in place of its value.
fn given_registers(args: &InspectArgs, saved: ControlRegisters) -> ControlRegisters {
    ControlRegisters {
        cr0: args.cr0.unwrap_or(saved.cr0),
        cr3: args.cr3.unwrap_or(saved.cr3),
        cr4: args.cr4.unwrap_or(saved.cr4),
        efer: args.efer.unwrap_or(saved.efer),
    }
}

/// How an inspection reads `regs`' tables: `--maxphyaddr` (default 52) and
/// `--no-gbpages`.
fn inspect_context(
    args: &InspectArgs,
    regs: ControlRegisters,
) -> Result<PagingContext, walker::ContextError> {
    Ok(PagingContext::new(regs)?
        .with_phys_addr_bits(args.maxphyaddr.unwrap_or(52))?
        .with_gbpages(!args.no_gbpages))
}

/// An inspection's status: 0, or [`EXIT_WALK_INCOMPLETE`] when the budget stopped it.
fn walk_status(complete: bool) -> ExitCode {
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WALK_INCOMPLETE)
    }
}

/// `vmm inspect --dump FILE`: opens the dump, prints what it holds or walks with the
/// registers of `--cpu` (each flag given overrides the dump's value).
fn inspect_dump(args: &InspectArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let layout = match (args.layout, &args.regions) {
        (Some(DumpLayout::Firecracker), _) => Some(vmm::dump::Layout::Firecracker),
        (Some(DumpLayout::CloudHypervisor), _) => Some(vmm::dump::Layout::CloudHypervisor),
        (None, regions) => regions.clone(),
    };
    let dump = vmm::dump::Dump::open(path, layout)?;
    eprintln!(
        "vmm: {} is a {} ({} segments, {} CPUs with registers)",
        path.display(),
        dump.format,
        dump.segments.len(),
        dump.cpus.iter().filter(|c| c.cr.is_some()).count()
    );
    if args.info {
        print!("{}", dump.info());
        return Ok(ExitCode::SUCCESS);
    }
    let saved = match args.cr3 {
        // Registers typed by hand need nothing from the dump.
        Some(cr3) => dump
            .control_registers(args.cpu)
            .unwrap_or(ControlRegisters::long_mode(cr3)),
        None => dump.control_registers(args.cpu)?,
    };
    let ctx = inspect_context(args, given_registers(args, saved)).with_context(|| {
        format!(
            "the registers of CPU {} do not describe 4- or 5-level paging",
            args.cpu
        )
    })?;
    let started = Instant::now();
    if let Some(loaded) = dump.prepare_walk(&ctx)? {
        eprintln!(
            "vmm: decompressed {} table pages ({} not in the dump: zeros) in {:.2?}",
            loaded.pages,
            loaded.missing,
            started.elapsed()
        );
    }
    let label = format!("cpu {} of {}", args.cpu, path.display());
    let complete = walk_one(dump.memory(), &ctx, &label, &args.output)?;
    dump.check_intact()?;
    Ok(walk_status(complete))
}

/// `vmm inspect --snapshot DIR`: loads the generation and walks with its saved registers.
fn inspect_snapshot(args: &InspectArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let snap = snapshot::load(dir, args.generation)?;
    let ctx = snap.paging_context(args.vcpu, args.cr3)?;
    let label = format!(
        "vcpu {} in generation {} of {}",
        args.vcpu,
        snap.state.generation,
        dir.display()
    );
    let complete = walk_one(snap.memory(), &ctx, &label, &args.output)?;
    snap.check_intact()?;
    Ok(walk_status(complete))
}

fn snapshot_command(args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        SnapshotCommand::Merge(m) => {
            let started = Instant::now();
            let state = match m.format {
                MergeFormat::Raw => {
                    snapshot::merge(&m.dir, m.generation, &m.output, replace(m.overwrite))?
                }
                MergeFormat::Elf => {
                    snapshot::merge_elf(&m.dir, m.generation, &m.output, replace(m.overwrite))?
                }
            };
            eprintln!(
                "vmm: generation {} of {} (base + {} diffs) written to {} in {:.2?}",
                state.generation,
                m.dir.display(),
                state.generation,
                m.output.display(),
                started.elapsed()
            );
        }
        SnapshotCommand::List(l) => {
            let mut out = io::stdout().lock();
            for generation in snapshot::generations(&l.dir)? {
                let s = snapshot::read_state(&l.dir, generation)?;
                let cr3s: Vec<String> = s
                    .vcpus
                    .iter()
                    .map(|v| format!("{:#x}", v.sregs.cr3))
                    .collect();
                writeln!(
                    out,
                    "generation {} {:?}: {} pages, {} bytes in {}, vCPU CR3 {}",
                    s.generation,
                    s.kind,
                    s.pages,
                    s.data.len,
                    s.data.name,
                    cr3s.join(" ")
                )?;
            }
            drop(out);
            // Loading the latest verifies every file of its chain.
            let latest = snapshot::load(&l.dir, None)?;
            eprintln!(
                "vmm: generation {} loads (chain {:?})",
                latest.state.generation, latest.chain
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_defaults() {
        let cli = Cli::try_parse_from(["vmm", "run"]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("`vmm run` did not parse: {cli:?}");
        };
        assert_eq!(args.boot.memory, MemorySize::default());
        assert_eq!(args.boot.vcpus, 1);
        assert_eq!(args.boot.mode, GuestMode::Normal);
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let err = |args: &[&str]| {
            Cli::try_parse_from(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(&["vmm", "run", "--memory", "12Q"]);
        assert!(e.contains("12Q") && e.contains("--memory"), "{e}");
        assert!(err(&["vmm", "run", "--vcpus", "0"]).contains("--vcpus"));
        let e = err(&["vmm", "walk", "--range", "0x2000-0x1000"]);
        assert!(
            e.contains("--range") && e.contains("END must be above START"),
            "{e}"
        );
        let e = err(&["vmm", "walk", "--after", "5 parsecs"]);
        assert!(e.contains("--after"), "{e}");
        let e = err(&["vmm", "inspect", "--memory", "m.raw", "--cr3", "xyz"]);
        assert!(e.contains("--cr3") && e.contains("xyz"), "{e}");
        let e = err(&[
            "vmm",
            "inspect",
            "--memory",
            "m.raw",
            "--cr3",
            "0x1000",
            "--maxphyaddr",
            "60",
        ]);
        assert!(e.contains("--maxphyaddr"), "{e}");
        assert!(err(&["vmm", "translate"]).contains("GVA"));
        let e = err(&["vmm", "walk", "--after", "1s", "--at-serial", "x"]);
        assert!(e.contains("cannot be used with"), "{e}");
        assert!(Cli::try_parse_from(["vmm", "run", "--mode", "triple-fault"]).is_ok());
        let e = err(&["vmm", "run", "--rounds", "3"]);
        assert!(e.contains("--dirty-scan-every"), "{e}");
        let cli = Cli::try_parse_from([
            "vmm",
            "run",
            "--mode",
            "dirty",
            "--dirty-scan-every",
            "100ms",
            "--scan-format",
            "json",
            "--dirty-log",
            "manual-clear",
        ]);
        let Ok(Cli {
            command: Command::Run(run),
        }) = cli
        else {
            panic!("dirty run did not parse: {cli:?}");
        };
        assert_eq!(run.dirty_scan_every, Some(Duration::from_millis(100)));
        assert_eq!((run.rounds, run.scan_format), (5, ScanFormat::Json));
        assert_eq!(run.dirty_log, DirtyLogChoice::ManualClear);
    }

    #[test]
    fn parses_walk_and_inspect() {
        let cli = Cli::try_parse_from([
            "vmm",
            "walk",
            "--range",
            "0x1000-",
            "--pte-level",
            "--format",
            "json",
            "--after",
            "250ms",
        ])
        .unwrap();
        let Command::Walk(w) = cli.command else {
            panic!("not a walk")
        };
        assert_eq!(w.output.range, VaRange(Gva(0x1000)..=Gva(u64::MAX)));
        assert!(w.output.pte_level);
        assert_eq!(w.output.format, Format::Json);
        assert_eq!(w.pause.after, Some(Duration::from_millis(250)));
        let cli =
            Cli::try_parse_from(["vmm", "translate", "0x4000_0000", "ffff888000000000"]).unwrap();
        let Command::Translate(t) = cli.command else {
            panic!("not a translate")
        };
        assert_eq!(
            t.addresses,
            vec![Gva(0x4000_0000), Gva(0xffff_8880_0000_0000)]
        );
    }

    #[test]
    fn parses_kernel_options() {
        let cli = Cli::try_parse_from([
            "vmm",
            "run",
            "--kernel",
            "bzImage",
            "--initrd",
            "initrd.gz",
            "--cmdline",
            "console=ttyS0",
            "--force",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("kernel run did not parse: {cli:?}");
        };
        assert_eq!(args.boot.kernel, Some(PathBuf::from("bzImage")));
        assert_eq!(args.boot.initrd, Some(PathBuf::from("initrd.gz")));
        assert_eq!(args.boot.cmdline, "console=ttyS0");
        assert!(args.boot.force);
        let Ok(Cli {
            command: Command::Run(args),
        }) = Cli::try_parse_from(["vmm", "run", "--kernel", "k"])
        else {
            panic!("kernel run did not parse");
        };
        assert_eq!(args.boot.cmdline, DEFAULT_CMDLINE);
        // The Linux-only options need --kernel.
        for extra in [["--initrd", "i"], ["--cmdline", "x"]] {
            let e = Cli::try_parse_from(["vmm", "run", extra[0], extra[1]]);
            assert!(e.is_err_and(|e| e.to_string().contains("--kernel")));
        }
    }

    #[test]
    fn dirty_ring_sizes() {
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert_eq!(parse_ring_size("64K"), Ok(65536));
        assert_eq!(parse_ring_size("1M"), Ok(1 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        let e = parse_ring_size("1K").unwrap_err();
        assert!(e.contains("below the smallest ring"), "{e}");
        let e = parse_ring_size("3000").unwrap_err();
        assert!(e.contains("not a power of two"), "{e}");
        let e = parse_ring_size("512").unwrap_err();
        assert!(e.contains("below the smallest ring"), "{e}");
        let e = parse_ring_size("8192M").unwrap_err();
        assert!(e.contains("larger than any"), "{e}");
        assert!(parse_ring_size("lots").is_err());
        assert!(parse_ring_size("99999999999999999999K").is_err());
        let err = |argv: &[&str]| Cli::try_parse_from(argv).unwrap_err().to_string();
        let e = err(&[
            "vmm",
            "run",
            "--dirty-scan-every",
            "10ms",
            "--dirty-log",
            "ring",
            "--dirty-ring-size",
            "3000",
        ]);
        assert!(
            e.contains("--dirty-ring-size") && e.contains("power of two"),
            "{e}"
        );
        let e = err(&["vmm", "run", "--dirty-ring-size", "64K"]);
        assert!(e.contains("--dirty-scan-every"), "{e}");
        let e = err(&["vmm", "bench", "--dirty-ring-size", "1000"]);
        assert!(e.contains("--dirty-ring-size"), "{e}");
        let e = err(&["vmm", "bench", "--dirty-percent", "0"]);
        assert!(e.contains("--dirty-percent"), "{e}");
        let Ok(Cli {
            command: Command::Bench(b),
        }) = Cli::try_parse_from(["vmm", "bench", "--dirty-ring-size", "64K"])
        else {
            panic!("bench did not parse");
        };
        assert_eq!(b.dirty_ring_size, Some(65536));
        assert_eq!((b.dirty_percent, b.dirty_cluster), (1.0, 64));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("9999999m").is_err());
    }
}
