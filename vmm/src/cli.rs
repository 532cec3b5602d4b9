//! Command-line interface: `vmm run` (more subcommands, such as `walk`, `translate`
//! and `inspect`, fit in as further [`Command`] variants).
//!
//! Exit status of `vmm run`: 0 when the guest reports success; the guest's DONE
//! status (clamped to 1..=99) when it reports a failure; [`EXIT_VM_FAILURE`] when
//! the VM dies (triple fault, KVM internal error, halt without DONE);
//! [`EXIT_VMM_ERROR`] when the VMM itself fails; 2 for bad command-line syntax.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use vmm::{
    Console, Descriptor, ExitOutcome, GuestMode, MemorySize, Vm, VmConfig, VmError, VmEvent,
    build_vm,
};

/// Exit status when the VM dies without the guest reporting DONE.
pub const EXIT_VM_FAILURE: u8 = 100;
/// Exit status when the VMM itself fails.
pub const EXIT_VMM_ERROR: u8 = 101;

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
}

/// Arguments of `vmm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Guest RAM, e.g. 512M, 2G (K/M/G/T are powers of 1024).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    pub memory: MemorySize,
    /// Number of vCPUs; vCPU 0 runs the guest, the others spin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(vmm::builder::MAX_VCPUS)))]
    pub vcpus: u8,
    /// What the built-in guest does.
    #[arg(long, value_enum, default_value_t = GuestMode::Normal)]
    pub mode: GuestMode,
    /// Boot this kernel instead of the built-in guest (not yet supported).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Heartbeats to wait for after READY before sending FINISH.
    #[arg(long, default_value_t = 3)]
    pub heartbeats: u32,
    /// Seconds to wait for each phase (READY, heartbeats, DONE).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

fn parse_memory(text: &str) -> Result<MemorySize, String> {
    text.parse::<MemorySize>().map_err(|e| e.to_string())
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_guest(&args),
    }
}

fn run_guest(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(kernel) = &args.kernel {
        bail!(
            "--kernel {} is not yet supported: `vmm run` can only boot the built-in guest for now",
            kernel.display()
        );
    }
    let config = VmConfig {
        memory: args.memory,
        vcpus: args.vcpus,
        mode: args.mode,
        console: Console::Stdout,
    };
    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let vm = build_vm(&config).context("cannot start the VM")?;
    let descriptor = match vm.wait_ready(timeout) {
        Ok(descriptor) => descriptor,
        Err(VmError::StoppedBeforeReady(outcome)) => return Ok(report(&outcome)),
        Err(e) => return Err(e).context("waiting for the guest to report READY"),
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
    vm.finish();
    let outcome = vm
        .wait(timeout)
        .context("waiting for the guest to finish")?;
    Ok(report(&outcome))
}

/// Waits for `count` heartbeats; returns the outcome if the VM ends first.
fn wait_heartbeats(vm: &Vm, count: u32, timeout: Duration) -> anyhow::Result<Option<ExitOutcome>> {
    let mut seen = 0;
    while seen < count {
        match vm.wait_event(timeout).context("waiting for a heartbeat")? {
            VmEvent::Heartbeat { iteration } => {
                seen += 1;
                eprintln!("vmm: heartbeat: iteration {iteration}");
            }
            VmEvent::VcpuStopped { .. } => return Ok(vm.outcome()),
            _ => {}
        }
    }
    Ok(None)
}

fn report(outcome: &ExitOutcome) -> ExitCode {
    match outcome {
        ExitOutcome::Done { status: 0 } => {
            eprintln!("vmm: {outcome}");
            ExitCode::SUCCESS
        }
        ExitOutcome::Done { status } => {
            eprintln!("vmm: {outcome}");
            ExitCode::from((*status).clamp(1, 99) as u8)
        }
        ExitOutcome::Failed { .. } => {
            eprintln!("vmm: the VM failed: {outcome}");
            ExitCode::from(EXIT_VM_FAILURE)
        }
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
        assert_eq!(args.memory, MemorySize::default());
        assert_eq!(args.vcpus, 1);
        assert_eq!(args.mode, GuestMode::Normal);
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let err = Cli::try_parse_from(["vmm", "run", "--memory", "12Q"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("12Q") && err.contains("--memory"), "{err}");
        let err = Cli::try_parse_from(["vmm", "run", "--vcpus", "0"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--vcpus"), "{err}");
        let parsed = Cli::try_parse_from(["vmm", "run", "--mode", "triple-fault"]);
        assert!(parsed.is_ok());
    }
}
