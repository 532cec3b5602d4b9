//! Command-line interface: `vmm run`, `vmm walk`, `vmm translate`, `vmm inspect`,
//! `vmm snapshot` and `vmm bench`. This file holds the arguments, their parsers and what
//! the subcommands share (building the VM the options describe, reporting how it ended);
//! each subcommand is its own file: [`run`], [`walk`] (walk and translate), [`inspect`],
//! [`snapshots`], [`bench`].
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
    Format, PrintError, VaRange, kvm_comparison_text, oracle_verdict, parse_hex, print_walk,
    translation_line,
};
use vmm::pause::{PauseAt, Paused};
use vmm::{
    BootSource, Console, Decompress, Decompressed, Descriptor, DirtyConfig, DirtyLogChoice,
    ExitOutcome, GuestMode, LinuxBoot, MemorySize, OnReset, RoundRecord, Vm, VmConfig, VmError,
    VmEvent, build_vm, memfile, snapshot,
};
use walker::{ControlRegisters, Granularity, Gva, PagingContext, WalkOptions};

mod bench;
mod bench_api;
mod ctl;
mod inspect;
mod restore;
mod run;
mod snapshots;
mod walk;

use bench::*;
use bench_api::*;
use ctl::*;
use inspect::*;
use restore::*;
use run::*;
use snapshots::*;
use walk::*;

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
    /// Restore a generation of a snapshot directory and run the guest on from where it
    /// was paused: the built-in guest's next heartbeats, then FINISH; a Linux guest until
    /// it ends by itself (or --timeout). Exits with the guest's status. The snapshot's
    /// files are never written.
    Restore(RestoreArgs),
    /// Measure boot, pause, walks and translations on the built-in guest, each against
    /// a baseline measured in the same run.
    Bench(BenchArgs),
    /// Talk to a running VMM's control API (`vmm run --api-socket`): pause, resume, read
    /// registers and memory, translate, walk, dirty-scan, snapshot, shut down. Output as
    /// the offline commands print it.
    Ctl(CtlArgs),
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
    /// Measure the control API instead (built-in guest): a batched translation of 1 Mi
    /// addresses over the socket against the same translations in process; pause +
    /// registers + walk + resume as four requests against the walk alone; the guest's
    /// loop rate while a client polls GET /vm at 100 Hz against its rate unpolled.
    #[arg(long, conflicts_with = "kernel")]
    pub api: bool,
    /// With --api: addresses in each batched translation.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(4 << 20)), requires = "api")]
    pub api_addresses: u64,
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
    /// Which KVM dirty log to use, with --dirty-scan-every (default auto) or
    /// --api-socket (dirty logging is on only when this is given).
    #[arg(long, value_parser = choice::<DirtyLogChoice>())]
    pub dirty_log: Option<DirtyLogChoice>,
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
    /// Serve the control API on this Unix socket (mode 0600; see the README, "Control
    /// API") and run the guest until it ends or a client asks for shutdown (the built-in
    /// guest then gets FINISH and its DONE status is the exit status; a Linux guest is
    /// stopped, status 0). Dirty scans over the API need --dirty-log.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["dirty_scan_every", "snapshot_dir"]
    )]
    pub api_socket: Option<PathBuf>,
}

/// Arguments of `vmm restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot directory (written by `vmm run --snapshot-dir`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The generation to restore (default: the latest).
    #[arg(long)]
    pub generation: Option<u64>,
    /// Heartbeats of the built-in guest to wait for after the restore, before FINISH.
    #[arg(long, default_value_t = 3)]
    pub heartbeats: u32,
    /// Seconds to wait for each phase (heartbeats, DONE; a Linux guest's end).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// How the memory file becomes guest RAM: `lazy` maps it copy-on-write (a page is
    /// read when first touched), `copy` reads it all into the VM's own memory first
    /// (its CRC32 checked on the way).
    #[arg(long, value_enum, default_value_t = MemoryRestore::Lazy)]
    pub memory_restore: MemoryRestore,
    /// With `--memory-restore lazy`: check the memory file's CRC32 before the guest
    /// runs (reads all of it). Without it, only its length is checked.
    #[arg(long)]
    pub verify_memory: bool,
    /// Take a new chain of snapshots of the restored VM into this directory (as `vmm
    /// run --snapshot-dir`); the guest console then goes to stderr.
    #[arg(long, value_name = "DIR", requires = "snapshot_every")]
    pub snapshot_dir: Option<PathBuf>,
    /// Time between the new snapshots (e.g. 200ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "snapshot_dir")]
    pub snapshot_every: Option<Duration>,
    /// How many new snapshots before FINISH.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..), requires = "snapshot_dir")]
    pub snapshots: u64,
    /// Serve the control API on this Unix socket once the VM is restored, and run it
    /// until it ends or a client asks for shutdown (as `vmm run --api-socket`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["snapshot_dir", "dirty_scan_every"])]
    pub api_socket: Option<PathBuf>,
    /// Restore with dirty logging (the default with --dirty-scan-every and
    /// --snapshot-dir: auto), for dirty scans and diff snapshots.
    #[arg(long, value_parser = choice::<DirtyLogChoice>())]
    pub dirty_log: Option<DirtyLogChoice>,
    /// As `vmm run --dirty-scan-every`, from the restored moment: a first fetch drops
    /// what the restore dirtied, then a scan every DURATION on stdout (the guest console
    /// then goes to stderr).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "snapshot_dir")]
    pub dirty_scan_every: Option<Duration>,
    /// How many dirty scans.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..), requires = "dirty_scan_every")]
    pub rounds: u32,
    /// Output format of the dirty scans.
    #[arg(long, value_enum, default_value_t = ScanFormat::Text, requires = "dirty_scan_every")]
    pub scan_format: ScanFormat,
}

/// `vmm restore --memory-restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryRestore {
    /// Map the memory file copy-on-write.
    Lazy,
    /// Read the memory file into the VM's own memory.
    Copy,
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
    /// A new snapshot directory (OUT new or empty) holding the generation as one full
    /// generation with all its state: `vmm restore OUT` resumes it as it resumes the chain.
    Snapshot,
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
        Command::Restore(args) => restore_command(&args),
        Command::Bench(args) => bench(&args),
        Command::Ctl(args) => ctl_command(&args),
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
        assert_eq!(run.dirty_log, Some(DirtyLogChoice::ManualClear));
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
