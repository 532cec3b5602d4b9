//! `vmm run`: the built-in guest or a Linux kernel, plain, with dirty scans, or with
//! snapshots.

use super::*;

pub(super) fn run_guest(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(socket) = &args.api_socket {
        return run_api(args, socket);
    }
    if args.dirty_log.is_some() && args.dirty_scan_every.is_none() {
        bail!("--dirty-log goes with --dirty-scan-every or --api-socket");
    }
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
pub(super) fn run_dirty_scans(args: &RunArgs, every: Duration) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let linux = args.boot.kernel.is_some();
    let started = Instant::now();
    let vm = boot_dirty(
        &args.boot,
        args.boot.mode,
        Console::stderr(),
        args.dirty_log.unwrap_or(DirtyLogChoice::Auto),
        args.dirty_ring_size,
    )?;
    if !linux && let Err(code) = ready_or_end(&vm, timeout)? {
        return Ok(code);
    }
    eprintln!(
        "vmm: guest {}; dirty log: {}",
        if linux { "started" } else { "READY" },
        vm.dirty_log_backend()
            .map(|b| b.to_string())
            .unwrap_or_default()
    );
    let scans = ScanRounds {
        every,
        rounds: args.rounds,
        format: args.scan_format,
    };
    if let Some(code) = scans.run(&vm, |next| {
        before_step(&vm, args, next, timeout, "dirty scan")
    })? {
        return Ok(code);
    }
    end_of_run(&vm, args, started)
}

/// The dirty scans of `vmm run` and `vmm restore --dirty-scan-every`.
pub(super) struct ScanRounds {
    /// Time between scans.
    pub every: Duration,
    /// How many.
    pub rounds: u32,
    /// How each is printed on stdout.
    pub format: ScanFormat,
}

impl ScanRounds {
    /// A first fetch that drops what was dirtied so far, then the rounds: `before(next)`
    /// (which returns the exit status instead when the guest ended), pause, fetch, scan
    /// every vCPU's CR3, print, resume.
    pub(super) fn run(
        &self,
        vm: &Vm,
        mut before: impl FnMut(Instant) -> anyhow::Result<Option<ExitCode>>,
    ) -> anyhow::Result<Option<ExitCode>> {
        vm.pause().context("pausing the vCPUs")?;
        vm.fetch_dirty().context("fetching the dirty log")?;
        vm.resume().context("resuming the vCPUs")?;
        let mut next = Instant::now() + self.every;
        for _ in 0..self.rounds {
            if let Some(code) = before(next)? {
                return Ok(Some(code));
            }
            next += self.every;
            let states = vm.pause().context("pausing the vCPUs")?;
            let started = Instant::now();
            let (_, scan) = vm.dirty_scan(&states, &[]).context("dirty scan")?;
            let took = started.elapsed();
            let mut out = io::stdout().lock();
            match self.format {
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
        Ok(None)
    }
}

/// What comes before each periodic step (`what`: a dirty scan, a snapshot) of a `vmm run`:
/// one guest round with the built-in dirty-writer guests (`--mode dirty`, `dirty-bulk`),
/// then the wait until `next`. The exit status instead when the guest ended first.
fn before_step(
    vm: &Vm,
    args: &RunArgs,
    next: Instant,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Option<ExitCode>> {
    let dirty_mode = args.boot.kernel.is_none()
        && matches!(args.boot.mode, GuestMode::Dirty | GuestMode::DirtyBulk);
    if dirty_mode && let Some(code) = guest_round(vm, timeout)? {
        return Ok(Some(code));
    }
    if let Some(outcome) = wait_or_end(vm, next) {
        eprintln!("vmm: the guest ended before the next {what}");
        return Ok(Some(report_with(&outcome, args.boot.on_reset)));
    }
    Ok(None)
}

/// Waits until `until`, or returns how the VM ended if it ends first. Events meanwhile
/// are dropped (the built-in guest's heartbeats), and a vCPU that parks is let go (a
/// Linux process signalling a VMM that is not waiting for it).
pub(super) fn wait_or_end(vm: &Vm, until: Instant) -> Option<ExitOutcome> {
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
pub(super) fn end_of_run(vm: &Vm, args: &RunArgs, started: Instant) -> anyhow::Result<ExitCode> {
    if args.boot.kernel.is_none() {
        return finish(vm, Duration::from_secs(args.boot.timeout));
    }
    wait_linux_end(vm, &args.boot, started, started)
}

/// One round of the dirty-writer guest: NEXT_ROUND, then its ROUND_DONE. Returns the exit
/// status instead if the guest stops.
pub(super) fn guest_round(vm: &Vm, timeout: Duration) -> anyhow::Result<Option<ExitCode>> {
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
pub(super) fn run_snapshots(
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
    let mut next = Instant::now() + every;
    for _ in 0..args.snapshots {
        if let Some(code) = before_step(&vm, args, next, timeout, "snapshot")? {
            return Ok(code);
        }
        next += every;
        let info = vm.snapshot(&mut snaps).context("taking a snapshot")?;
        print_generation(&info);
    }
    end_of_run(&vm, args, started)
}

/// The stdout line of one snapshot generation written by `run` or `restore`.
pub(super) fn print_generation(info: &snapshot::SnapshotInfo) {
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

/// Waits for `count` heartbeats; returns the outcome if the VM ends first.
pub(super) fn wait_heartbeats(
    vm: &Vm,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<Option<ExitOutcome>> {
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
pub(super) fn run_linux(args: &BootArgs) -> anyhow::Result<ExitCode> {
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
pub(super) fn wait_linux_end(
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

/// `vmm run --api-socket`: boots, serves the control API until the guest ends or a client
/// asks for shutdown (the built-in guest: from READY on, then FINISH and its DONE status;
/// Linux: from the start, then the VM is stopped).
fn run_api(args: &RunArgs, socket: &std::path::Path) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    let linux = args.boot.kernel.is_some();
    let console = if linux {
        Console::stdout_tail()
    } else {
        Console::Stdout
    };
    let vm = boot_with(&args.boot, console, args.dirty_log)?;
    let mut options = vmm::api::ServeOptions::default();
    if !linux {
        let descriptor = match ready_or_end(&vm, timeout)? {
            Ok(d) => d,
            Err(code) => return Ok(code),
        };
        if let Ok(d) = Descriptor::read(vm.guest_memory(), descriptor) {
            options.guest_cr3s = d.cr3.iter().take(d.space_count as usize).copied().collect();
        }
    }
    serve_api(&vm, socket, options, linux, timeout, args.boot.on_reset)
}

/// Serves the API for `vm` (run or restored) until it ends or a client asks for
/// shutdown, and reports how it ended.
pub(super) fn serve_api(
    vm: &Vm,
    socket: &std::path::Path,
    options: vmm::api::ServeOptions,
    linux: bool,
    timeout: Duration,
    on_reset: OnReset,
) -> anyhow::Result<ExitCode> {
    let server = vmm::api::ApiServer::start(socket, vm.waker(), vmm::api::Limits::default())
        .context("cannot serve the control API")?;
    eprintln!(
        "vmm: control API on {}; the guest runs until it ends or a client asks for shutdown",
        server.path().display()
    );
    let end = vmm::api::serve(vm, &server, options).context("serving the control API")?;
    // The socket goes first: no client may reach a VM that is shutting down.
    drop(server);
    match end {
        vmm::api::ServeEnd::Ended(outcome) => Ok(report_with(&outcome, on_reset)),
        vmm::api::ServeEnd::Shutdown if linux => {
            eprintln!("vmm: shut down by an API client: the Linux guest was stopped");
            Ok(ExitCode::SUCCESS)
        }
        vmm::api::ServeEnd::Shutdown => {
            eprintln!("vmm: shut down by an API client: FINISH sent to the guest");
            if vm.is_paused() {
                vm.resume().context("resuming the vCPUs")?;
            }
            finish(vm, timeout)
        }
    }
}
