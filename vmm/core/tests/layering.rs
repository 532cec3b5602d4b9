//! The layering of `vmm`'s library, checked on its source: each top-level module may use
//! (`crate::...`) only modules below it in [`LAYERS`], so no import circle can form between
//! them; and `unsafe` appears only in the modules allowed to hold it, each block with its
//! `// SAFETY:` argument. The compiler enforces `#![deny(unsafe_code)]` at the crate root;
//! this test keeps the list of exceptions from growing unnoticed.
//!
//! The binary (package `vmm`, `vmm/src/`) is another crate: it uses this library through
//! `vmm::` like any other user, and the compiler keeps the library from reaching up into
//! it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The library's modules, lowest first: a module may use only modules before it.
const LAYERS: &[(&str, &str)] = &[
    ("sigbus", "guarded access to mapped files (SIGBUS)"),
    ("files", "every user path opened, every output written"),
    (
        "arch",
        "x86-64 definitions: layout, registers, CPUID, ACPI, port I/O",
    ),
    ("memory", "guest RAM and its host mapping"),
    ("kvm", "the KVM boundary: the only raw KVM types"),
    (
        "devices",
        "port and MMIO devices, the debug port's transport",
    ),
    ("exit", "what a vCPU exit does"),
    ("events", "what the VMM thread hears from vCPUs and devices"),
    ("dirty", "dirty logging and dirty scans"),
    ("vcpu", "the vCPU threads"),
    ("linux", "Linux boot sources: bzImage, PVH vmlinux"),
    ("memfile", "memory files read from disk"),
    ("vm", "a running VM and its lifecycle API"),
    ("guest", "the built-in guest: image, descriptor, protocol"),
    ("builder", "one recipe from a VmConfig to a running Vm"),
    ("pause", "boot and pause at a chosen moment"),
    ("introspect", "printing walks"),
    ("dump", "memory dumps in other tools' formats"),
    ("snapshot", "snapshots of a running VM, read back offline"),
    ("restore", "a VM resumed from a snapshot generation"),
    (
        "api",
        "the control API: socket, HTTP server, VMM-thread side, client",
    ),
    ("test_support", "what the tests share"),
];

/// Files (relative to `vmm/src`) that may contain `unsafe`, and why.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    (
        "kvm/",
        "the KVM ioctls and the memory regions registered with KVM",
    ),
    (
        "linux/",
        "relocating a decompressed kernel through host pointers",
    ),
    ("sigbus.rs", "the SIGBUS handler and its zero-page mapping"),
    (
        "memory/host.rs",
        "mmap/madvise steering of the guest RAM mapping",
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files as (path relative to src, top-level module, source).
fn library_files() -> Vec<(String, String, String)> {
    let src = src_dir();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths
        .into_iter()
        .filter_map(|path| {
            let rel = path
                .strip_prefix(&src)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "lib.rs" {
                return None;
            }
            let top = rel
                .split('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string();
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
            Some((rel, top, text))
        })
        .collect()
}

/// The code of a Rust file with comments, string and char literals blanked out (their
/// bytes become spaces; line numbers are kept).
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = bytes.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < bytes.len() {
                if bytes[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if bytes[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") {
            // A raw string: r"..." or r#"..."# (any number of #).
            let hashes = rest[1..].iter().take_while(|&&b| b == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = i + 2 + hashes;
            let end = bytes[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(bytes.len(), |n| body + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(bytes.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a): only the former closes
            // within a few bytes.
            let len = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&b| b == b'\'').map(|n| n + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(n) if n <= 12 => {
                    blank(&mut out, i, i + n);
                    i += n;
                }
                _ => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The code without items marked `#[cfg(test)]` (unit tests may reach anywhere).
fn without_test_items(code: &str) -> String {
    let mut code = code.to_string();
    while let Some(at) = code.find("#[cfg(test)]") {
        let after = at + "#[cfg(test)]".len();
        let brace = code[after..].find('{').map(|n| after + n);
        let semi = code[after..].find(';').map(|n| after + n);
        let end = match (brace, semi) {
            (_, Some(s)) if brace.is_none_or(|b| s < b) => s + 1,
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut end = code.len();
                for (n, c) in code[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + n + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => code.len(),
        };
        let lines = code[at..end].matches('\n').count();
        code.replace_range(at..end, &"\n".repeat(lines));
    }
    code
}

/// Every top-level module named after `crate::` in `code`, with its line: plain paths and
/// each top-level name of a `crate::{a::..., b}` group.
fn crate_references(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `crate::` must start a path, not end an identifier such as `my_crate::`.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let mut name = String::new();
            let mut at_name = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if !name.is_empty() {
                            found.push((line, std::mem::take(&mut name)));
                        }
                        at_name = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && at_name {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if !name.is_empty() {
                        found.push((line, std::mem::take(&mut name)));
                        at_name = false;
                    }
                }
            }
            if !name.is_empty() {
                found.push((line, name));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((line, name));
            }
        }
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(name, _)| *name == module)
}

#[test]
fn every_module_is_in_the_layer_list() {
    let listed: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let mut found = BTreeSet::new();
    for (_, top, _) in library_files() {
        found.insert(top);
    }
    let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(
        found, listed,
        "vmm/src's top-level modules and tests/layering.rs's LAYERS differ: place a new \
         module in the order (what it may use sits above it)"
    );
}

#[test]
fn modules_use_only_lower_layers() {
    let mut wrong = Vec::new();
    let mut edges = 0;
    for (rel, top, text) in library_files() {
        let Some(own) = layer_of(&top) else {
            continue; // every_module_is_in_the_layer_list names it
        };
        let code = without_test_items(&code_only(&text));
        for (line, name) in crate_references(&code) {
            if name == top {
                continue;
            }
            edges += 1;
            match layer_of(&name) {
                Some(other) if other < own => {}
                Some(_) => wrong.push(format!(
                    "vmm/core/src/{rel}:{line}: `{top}` uses `crate::{name}`, which is not below \
                     it in LAYERS"
                )),
                // A crate-root item (a re-export in lib.rs): name its module instead.
                None => wrong.push(format!(
                    "vmm/core/src/{rel}:{line}: `crate::{name}` is not a module: use the path of \
                     the module that defines it"
                )),
            }
        }
    }
    assert!(
        edges > 50,
        "only {edges} crate:: references found: the scan is broken"
    );
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn unsafe_only_where_allowed_and_argued() {
    let mut wrong = Vec::new();
    let mut blocks = 0;
    for (rel, _, text) in library_files() {
        let code = code_only(&text);
        let allowed = UNSAFE_ALLOWED.iter().any(|(prefix, _)| {
            rel == *prefix || (prefix.ends_with('/') && rel.starts_with(prefix))
        });
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in code.lines().enumerate() {
            let Some(col) = find_word(line, "unsafe") else {
                continue;
            };
            if !allowed {
                wrong.push(format!(
                    "vmm/core/src/{rel}:{}: `unsafe` outside the modules allowed to hold it",
                    n + 1
                ));
                continue;
            }
            let after = line[col + "unsafe".len()..].trim_start();
            // `unsafe fn`/`unsafe impl` state a contract (a `# Safety` section); blocks
            // need their argument in the comment lines just above (or on the line).
            if after.starts_with("fn") || after.starts_with("impl") || after.starts_with("extern") {
                continue;
            }
            blocks += 1;
            let argued = (n.saturating_sub(12)..=n)
                .filter_map(|i| lines.get(i))
                .any(|l| l.contains("SAFETY:"));
            if !argued {
                wrong.push(format!(
                    "vmm/core/src/{rel}:{}: an `unsafe` block without a `// SAFETY:` comment above it",
                    n + 1
                ));
            }
        }
    }
    assert!(
        blocks > 10,
        "only {blocks} unsafe blocks found: the scan is broken"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The column of `word` in `line` as a whole word.
fn find_word(line: &str, word: &str) -> Option<usize> {
    line.match_indices(word).map(|(at, _)| at).find(|&at| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn the_scanner_sees_through_comments_strings_and_groups() {
    let source = "use crate::{a::X, b, c::{d, e}};\n// crate::f\nlet s = \"crate::g\";\n\
                  let r = r#\"crate::h\"#;\nlet c = '\"'; crate::i::j();\n#[cfg(test)]\nmod t { \
                  use crate::k; }\nmy_crate::l();\n";
    let code = without_test_items(&code_only(source));
    let names: Vec<String> = crate_references(&code)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["a", "b", "c", "i"]);
    assert_eq!(find_word("let x = unsafe { 1 };", "unsafe"), Some(8));
    assert_eq!(find_word("unsafe_code", "unsafe"), None);
}
