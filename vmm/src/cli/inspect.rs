//! `vmm inspect`: walks of a memory file, a snapshot generation or another tool's dump.

use super::*;

pub(super) fn inspect_file(args: &InspectArgs) -> anyhow::Result<ExitCode> {
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
pub(super) fn given_registers(args: &InspectArgs, saved: ControlRegisters) -> ControlRegisters {
    ControlRegisters {
        cr0: args.cr0.unwrap_or(saved.cr0),
        cr3: args.cr3.unwrap_or(saved.cr3),
        cr4: args.cr4.unwrap_or(saved.cr4),
        efer: args.efer.unwrap_or(saved.efer),
    }
}

/// How an inspection reads `regs`' tables: `--maxphyaddr` (default 52) and
/// `--no-gbpages`.
pub(super) fn inspect_context(
    args: &InspectArgs,
    regs: ControlRegisters,
) -> Result<PagingContext, walker::ContextError> {
    Ok(PagingContext::new(regs)?
        .with_phys_addr_bits(args.maxphyaddr.unwrap_or(52))?
        .with_gbpages(!args.no_gbpages))
}

/// An inspection's status: 0, or [`EXIT_WALK_INCOMPLETE`] when the budget stopped it.
pub(super) fn walk_status(complete: bool) -> ExitCode {
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WALK_INCOMPLETE)
    }
}

/// `vmm inspect --dump FILE`: opens the dump, prints what it holds or walks with the
/// registers of `--cpu` (each flag given overrides the dump's value).
pub(super) fn inspect_dump(args: &InspectArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
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
pub(super) fn inspect_snapshot(
    args: &InspectArgs,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
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
