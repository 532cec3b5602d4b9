//! Assembles the built-in test guest (`guest-images/builtin/*.S`) with GNU `as` and links
//! it with `ld` into a flat binary in `OUT_DIR`, which `vmm::guest::image` embeds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(message) = build_guest() {
        // A failing assembler or linker must fail the build with its own message.
        eprintln!("error: building the built-in guest failed:\n{message}");
        std::process::exit(1);
    }
}

fn build_guest() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let source_dir = manifest_dir.join("../../guest-images/builtin");
    println!("cargo:rerun-if-changed={}", source_dir.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&source_dir)
        .map_err(|e| format!("cannot read {}: {e}", source_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "S" || ext == "ld")
        })
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }

    let linker_script = source_dir.join("guest.ld");
    let mut objects = Vec::new();
    for source in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "S"))
    {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("guest");
        let object = out_dir.join(format!("{stem}.o"));
        run(Command::new("as")
            .arg("--64")
            .arg("-I")
            .arg(&source_dir)
            .arg("-o")
            .arg(&object)
            .arg(source))?;
        objects.push(object);
    }
    let image = out_dir.join("builtin-guest.bin");
    run(Command::new("ld")
        .arg("-nostdlib")
        .arg("--no-dynamic-linker")
        .arg("-z")
        .arg("noexecstack")
        .arg("-T")
        .arg(&linker_script)
        .arg("--oformat")
        .arg("binary")
        .arg("-o")
        .arg(&image)
        .args(&objects))?;
    check_non_empty(&image)
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn check_non_empty(image: &Path) -> Result<(), String> {
    let len = std::fs::metadata(image)
        .map_err(|e| format!("cannot stat {}: {e}", image.display()))?
        .len();
    if len == 0 {
        return Err(format!("{} is empty", image.display()));
    }
    Ok(())
}
