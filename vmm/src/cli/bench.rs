//! `vmm bench`: the measurements of the README's "Benchmarks" (the measuring code is
//! in `crate::bench`).

use super::*;

pub(super) fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.boot.timeout);
    if args.boot.kernel.is_some() {
        return bench_linux(args, timeout);
    }
    if args.api {
        return bench_api(args, timeout);
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
    bench_restore(args, runs, timeout, boots[boots.len() / 2])?;
    bench_dirty(args, runs, timeout)?;
    bench_snapshots(args, runs, timeout)?;
    Ok(code)
}

/// `vmm bench --kernel`: a dirty scan (pause, dirty fetch, GVA scan of the current CR3,
/// resume) and a diff snapshot generation of the running Linux guest, each against the
/// same operation on the built-in guest with the same memory and vCPUs in the same run.
/// The Linux guest is measured from the moment a vCPU parks (the Linux test guest's THP
/// process; give it `guestwalk.linger=N` so it keeps running) or shows `--at-serial`.
pub(super) fn bench_linux(args: &BenchArgs, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runs = args.runs as usize;
    let settle = Duration::from_millis(20);
    let scratch = first_scratch(args);
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
    // The moment of the park, for the restore measurement below (the process prints
    // on its console as soon as it runs on).
    let restore_dir = scratch.join(format!("vmm-bench-linux-restore-{}", std::process::id()));
    let mut restore_snaps = snapshot::SnapshotDir::create(&restore_dir)?;
    paused
        .vm
        .snapshot(&mut restore_snaps)
        .context("a snapshot at the park")?;
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
    drop(paused);
    let restored = bench_linux_restore(args, runs, timeout, &restore_dir);
    let _ = std::fs::remove_dir_all(&restore_dir);
    restored?;
    Ok(code)
}

/// A Linux guest restored from the generation taken at its park (lazy memory), to its
/// first console output (the process prints as soon as it runs on), against cold boots
/// of the same guest to its `/init` marker in the same run; medians of `runs`.
fn bench_linux_restore(
    args: &BenchArgs,
    runs: usize,
    timeout: Duration,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use vmm::restore::{RestoreConfig, restore_vm};
    const INIT_MARKER: &str = "GUESTWALK-LINUX-INIT";
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let mut restores = Vec::new();
    for _ in 0..runs {
        let console = Console::capture();
        let started = Instant::now();
        let (vm, _) = restore_vm(&RestoreConfig {
            dir: dir.to_owned(),
            generation: None,
            memory: vmm::snapshot::MemoryLoad::Lazy,
            console: console.clone(),
            dirty: None,
            paused: false,
        })?;
        while console.captured().is_empty() {
            if started.elapsed() > timeout {
                bail!("the restored Linux guest printed nothing within {timeout:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        restores.push(started.elapsed());
        drop(vm);
    }
    let mut boots = Vec::new();
    for _ in 0..runs {
        let console = Console::capture();
        let started = Instant::now();
        let vm = start_vm(&vm_config(
            &args.boot,
            GuestMode::Normal,
            console.clone(),
            None,
        ))?;
        let at = PauseAt::Serial(INIT_MARKER.into());
        match vmm::pause::pause_at(vm, &console, &at, 0, timeout, started)? {
            Ok(paused) => boots.push(paused.elapsed),
            Err(outcome) => bail!("the Linux guest ended before {INIT_MARKER}: {outcome}"),
        }
    }
    let (restore, boot) = (median(restores.clone()), median(boots.clone()));
    println!(
        "Linux restore (the park's generation, lazy), median of {runs}: to the first console output {restore:.2?} (all: {restores:.2?}); cold boot to {INIT_MARKER} median {boot:.2?} (all: {boots:.2?}): restore / boot = {:.3}",
        restore.as_secs_f64() / boot.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Boots the bulk dirty-writer guest for a measurement, writes the request and drops
/// the boot-time dirty set.
pub(super) fn boot_bulk(
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
pub(super) fn bench_request(args: &BenchArgs) -> anyhow::Result<vmm::guest::BulkRequest> {
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
pub(super) fn bench_snapshots(
    args: &BenchArgs,
    runs: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
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
pub(super) fn bench_dirty(args: &BenchArgs, runs: usize, timeout: Duration) -> anyhow::Result<()> {
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

/// Restores of the built-in guest (`--memory`, `--vcpus`) against its cold boot to READY
/// measured in the same run (`boot`): a chain (full + one diff) taken after READY, then
/// `5 x --runs` restores (50 by default, at least 10) of its latest generation with the
/// lazy default (the memory file mapped copy-on-write, only its length checked) and as
/// many with `--memory-restore copy` (every byte read into the VM's memory, its CRC32
/// checked: its GB/s), each from the call to running vCPU threads; `--runs` lazy ones
/// also to the guest's next heartbeat. p50 and p90.
pub(super) fn bench_restore(
    args: &BenchArgs,
    runs: usize,
    timeout: Duration,
    boot: Duration,
) -> anyhow::Result<()> {
    use vmm::restore::{RestoreConfig, restore_vm};
    use vmm::snapshot::MemoryLoad;
    let scratch = first_scratch(args).join(format!("vmm-bench-restore-{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let vm = boot_with(&args.boot, Console::capture(), Some(DirtyLogChoice::Auto))?;
        vm.wait_ready(timeout)
            .context("waiting for the guest to report READY")?;
        let mut snaps = snapshot::SnapshotDir::create(&scratch)?;
        for _ in 0..2 {
            vm.snapshot(&mut snaps).context("taking a snapshot")?;
        }
        finish(&vm, timeout)?;
        drop(vm);
        let restores = (runs * 5).max(10);
        let config = |memory| RestoreConfig {
            dir: scratch.clone(),
            generation: None,
            memory,
            console: Console::capture(),
            dirty: None,
            paused: false,
        };
        let percentiles = |mut times: Vec<Duration>| {
            times.sort();
            (times[times.len() / 2], times[times.len() * 9 / 10])
        };
        let (mut lazy, mut heartbeat, mut verified) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..restores {
            let t = Instant::now();
            let (vm, _) = restore_vm(&config(MemoryLoad::Lazy))?;
            lazy.push(t.elapsed());
            // The heartbeat comes when the guest's loop gets there (a quarter second
            // here): `--runs` of them.
            if i < runs {
                if wait_heartbeats(&vm, 1, timeout)?.is_some() {
                    bail!("the restored guest ended before its next heartbeat");
                }
                heartbeat.push(t.elapsed());
            }
            drop(vm);
            let t = Instant::now();
            let (vm, _) = restore_vm(&config(MemoryLoad::Copy))?;
            verified.push(t.elapsed());
            drop(vm);
        }
        let ((lazy50, lazy90), (beat50, beat90), (ver50, ver90)) = (
            percentiles(lazy),
            percentiles(heartbeat),
            percentiles(verified),
        );
        let ratio = |a: Duration| a.as_secs_f64() / boot.as_secs_f64().max(1e-9);
        let bytes = args.boot.memory.bytes() as f64;
        println!(
            "restore of {} ({} vCPU(s)), {restores} restores each: lazy p50 {lazy50:.2?} p90 {lazy90:.2?} (restore / boot to READY {:.3}); to the next heartbeat ({runs} of them) p50 {beat50:.2?} p90 {beat90:.2?}; copy p50 {ver50:.2?} p90 {ver90:.2?} ({:.2} GB/s read); boot to READY median {boot:.2?}",
            args.boot.memory,
            args.boot.vcpus,
            ratio(lazy50),
            bytes / ver50.as_secs_f64().max(1e-9) / 1e9
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The first `--snapshot-scratch`, or the temporary directory.
fn first_scratch(args: &BenchArgs) -> PathBuf {
    args.snapshot_scratch
        .first()
        .cloned()
        .unwrap_or_else(std::env::temp_dir)
}
