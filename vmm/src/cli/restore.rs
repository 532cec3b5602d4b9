//! `vmm restore`: a snapshot generation resumed, then the built-in guest's heartbeats and
//! FINISH (a Linux guest runs on until it ends by itself), optionally with a new chain of
//! snapshots of the restored VM.

use super::*;
use vmm::restore::{RestoreConfig, restore_vm};
use vmm::snapshot::MemoryLoad;

pub(super) fn restore_command(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let mut chain = args
        .snapshot_dir
        .as_deref()
        .map(snapshot::SnapshotDir::create)
        .transpose()?;
    let config = RestoreConfig {
        dir: args.dir.clone(),
        generation: args.generation,
        memory: match (args.memory_restore, args.verify_memory) {
            (MemoryRestore::Copy, _) => MemoryLoad::Copy,
            (MemoryRestore::Lazy, true) => MemoryLoad::LazyVerified,
            (MemoryRestore::Lazy, false) => MemoryLoad::Lazy,
        },
        console: if chain.is_some() || args.dirty_scan_every.is_some() {
            Console::stderr()
        } else {
            Console::Stdout
        },
        dirty: match args.dirty_log {
            Some(choice) => Some(vmm::DirtyConfig::new(choice)),
            None if chain.is_some() || args.dirty_scan_every.is_some() => {
                Some(vmm::DirtyConfig::new(DirtyLogChoice::Auto))
            }
            None => None,
        },
        paused: false,
    };
    let (vm, state) = restore_vm(&config)?;
    eprintln!(
        "vmm: generation {} of {} restored in {:.2?} ({} vCPU(s)); the guest runs on",
        state.generation,
        args.dir.display(),
        started.elapsed(),
        state.vcpus.len()
    );
    let linux = state.vm.as_ref().is_some_and(|v| v.irqchip.is_some());
    if let Some(socket) = &args.api_socket {
        let options = vmm::api::ServeOptions {
            guest_cr3s: state.guest_cr3s.clone(),
        };
        return serve_api(&vm, socket, options, linux, timeout, OnReset::Success);
    }
    if let Some(every) = args.dirty_scan_every {
        let scans = ScanRounds {
            every,
            rounds: args.rounds,
            format: args.scan_format,
        };
        let ended = scans.run(&vm, |next| {
            Ok(wait_or_end(&vm, next).map(|outcome| {
                eprintln!("vmm: the guest ended before the next dirty scan");
                report(&outcome)
            }))
        })?;
        if let Some(code) = ended {
            return Ok(code);
        }
    }
    if let (Some(snaps), Some(every)) = (chain.as_mut(), args.snapshot_every) {
        snaps.set_guest_cr3s(state.guest_cr3s.clone());
        let mut next = Instant::now() + every;
        for _ in 0..args.snapshots {
            if let Some(outcome) = wait_or_end(&vm, next) {
                eprintln!("vmm: the guest ended before the next snapshot");
                return Ok(report(&outcome));
            }
            next += every;
            let info = vm.snapshot(snaps).context("taking a snapshot")?;
            print_generation(&info);
        }
    }
    if linux {
        // A Linux guest runs on until it ends by itself.
        let outcome = vm.wait(timeout).map_err(|e| {
            eprint!("vmm: {e}; every vCPU now:\n{}", vm.vcpu_report(None));
            e
        });
        let outcome = outcome.with_context(|| {
            format!("waiting for the restored Linux guest to end (--timeout {timeout:?})")
        })?;
        return Ok(report(&outcome));
    }
    if let Some(outcome) = wait_heartbeats(&vm, args.heartbeats, timeout)? {
        return Ok(report(&outcome));
    }
    let code = finish(&vm, timeout)?;
    if vm.memory_file_shrank() {
        bail!(
            "the snapshot's memory file shrank while the restored VM ran: what was read past its \
             new end is not the snapshot's"
        );
    }
    Ok(code)
}
