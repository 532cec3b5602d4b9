//! `vmm snapshot merge` and `vmm snapshot list`.

use super::*;

pub(super) fn snapshot_command(args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
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
                MergeFormat::Snapshot => {
                    if m.overwrite {
                        bail!(
                            "--overwrite with --format snapshot: a snapshot directory is never \
                             overwritten (give a new or empty directory)"
                        );
                    }
                    snapshot::merge_snapshot(&m.dir, m.generation, &m.output)?
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
