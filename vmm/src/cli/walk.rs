//! `vmm walk` and `vmm translate`: boot, pause at the moment asked for, walk or translate.

use super::*;

/// Boots and pauses every vCPU at the moment the options ask for (READY by default;
/// [`vmm::pause`]). Returns the outcome instead if the guest ends first.
pub(super) fn boot_and_pause(
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

pub(super) fn walk_guest(args: &WalkArgs) -> anyhow::Result<ExitCode> {
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
pub(super) fn walk_one<M: GuestMemoryBackend>(
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
    let header = vmm::introspect::address_space_header(label, ctx);
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

pub(super) fn translate_guest(args: &TranslateArgs) -> anyhow::Result<ExitCode> {
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
        if args.format == Format::Json {
            writeln!(out, "{line}")?;
        } else {
            let kvm = kvm_comparison_text(verdict, kvm.valid, kvm.gpa.0);
            writeln!(out, "{line}{kvm}")?;
        }
    }
    drop(out);
    p.vm.resume().context("resuming the vCPUs")?;
    finish(&p.vm, timeout)
}
