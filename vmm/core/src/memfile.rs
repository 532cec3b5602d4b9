//! Raw guest-physical memory files: byte N of the file is GPA N.
//!
//! A file is mapped private and read-only, so an offline walk cannot change it, and it is
//! seen through the same `GuestMemoryMmap` type as a live guest's RAM: the walker cannot
//! tell the difference.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::files::{FileError, Output, Replace, open_input};
use crate::sigbus::{self, FaultWatch};
use thiserror::Error;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Why a memory file cannot be opened or written.
#[derive(Debug, Error)]
pub enum MemFileError {
    /// The path is not a readable regular file, or an output cannot be written there.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file's size is not a whole number of pages.
    #[error(
        "the memory file {path} is {len} bytes, not a multiple of 4096: a raw memory file holds whole pages (is it truncated, or not a memory file?)"
    )]
    NotPages {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is larger than this host can map.
    #[error("the memory file {path} is too large to map ({len} bytes)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// mmap failed.
    #[error("cannot map the memory file {path}: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// The mmap error.
        source: MmapRegionError,
    },
    /// The file was truncated by someone else while it was mapped.
    #[error(
        "the memory file {path} shrank while it was read (from {was} to {now} bytes): what was read past its new end is not the file's"
    )]
    Shrank {
        /// The file.
        path: PathBuf,
        /// Its size when mapped.
        was: u64,
        /// Its size now (0 when it cannot be read).
        now: u64,
    },
    /// Reading guest memory for a dump failed.
    #[error("cannot read guest memory at {addr:#x} for a dump: {source}")]
    Read {
        /// The guest-physical address.
        addr: u64,
        /// The vm-memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// A raw memory file mapped as guest memory at GPA 0 (read-only, private), watched for
/// shrinking ([`crate::sigbus`]).
#[derive(Debug)]
pub struct MemoryFile {
    // Dropped before the memory: the watch ends before the mapping goes.
    watch: FaultWatch,
    memory: GuestMemoryMmap,
    path: PathBuf,
    len: u64,
    file: File,
}

impl MemoryFile {
    /// The file's contents as guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Its size when mapped.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: empty files are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fails, naming the file, if it shrank while mapped so that something read past its
    /// new end (and got zeros instead of its bytes). Call it after using the memory.
    pub fn check_intact(&self) -> Result<(), MemFileError> {
        if self.watch.faulted() {
            return Err(MemFileError::Shrank {
                path: self.path.clone(),
                was: self.len,
                now: self.file.metadata().map(|m| m.len()).unwrap_or(0),
            });
        }
        Ok(())
    }
}

/// Maps a raw memory file read-only and private as guest memory starting at GPA 0. The
/// path must be a regular file of whole pages ([`crate::files::open_input`]).
pub fn open(path: &Path) -> Result<MemoryFile, MemFileError> {
    let input = open_input(path, "memory file")?;
    let len = input.len();
    if len % 4096 != 0 {
        return Err(MemFileError::NotPages {
            path: path.to_owned(),
            len,
        });
    }
    let too_large = || MemFileError::TooLarge {
        path: path.to_owned(),
        len,
    };
    let size = usize::try_from(len).map_err(|_| too_large())?;
    let file = input.into_file();
    let fd = file.try_clone().map_err(|source| {
        MemFileError::File(FileError::Open {
            what: "memory file",
            path: path.to_owned(),
            source,
        })
    })?;
    let region = MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(fd, 0))
        .with_mmap_prot(libc::PROT_READ)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|source| MemFileError::Map {
            path: path.to_owned(),
            source,
        })?;
    let watch = sigbus::watch(region.as_ptr(), size, libc::PROT_READ).map_err(|source| {
        MemFileError::File(FileError::Open {
            what: "memory file",
            path: path.to_owned(),
            source,
        })
    })?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(too_large)?;
    let memory = GuestMemoryMmap::from_regions(vec![region]).map_err(|_| too_large())?;
    Ok(MemoryFile {
        watch,
        memory,
        path: path.to_owned(),
        len,
        file,
    })
}

/// Writes guest RAM as a raw file (byte N = GPA N; gaps between regions are holes of
/// zeros) to `out`, and commits it (see [`crate::files::Output`]): no half-written dump is
/// ever left under its name.
pub fn dump_to<M: GuestMemoryBackend>(mem: &M, mut out: Output) -> Result<(), MemFileError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut end = 0u64;
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            let addr = start + off;
            mem.read_slice(&mut buf[..n], GuestAddress(addr))
                .map_err(|source| MemFileError::Read { addr, source })?;
            let written = std::os::unix::fs::FileExt::write_all_at(out.file()?, &buf[..n], addr);
            written.map_err(|e| out.error(e))?;
            off += n as u64;
        }
        end = end.max(start + len);
    }
    let sized = out.file()?.set_len(end);
    sized.map_err(|e| out.error(e))?;
    out.commit()?;
    Ok(())
}

/// Writes guest RAM as a raw file at `path`, a new file unless `replace` (see
/// [`dump_to`] and [`crate::files::Output::create`]).
pub fn dump<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    replace: Replace,
) -> Result<(), MemFileError> {
    dump_to(mem, Output::create(path, "memory file", replace, &[])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_and_open_round_trip() {
        let dir = std::env::temp_dir().join(format!("gw-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem.raw");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10000), 0x2000),
        ])
        .unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x1ff8))
            .unwrap();
        mem.write_obj(0xaau8, GuestAddress(0x11fff)).unwrap();
        dump(&mem, &path, Replace::No).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        let back = open(&path).unwrap();
        back.check_intact().unwrap();
        let back = back.memory();
        assert_eq!(back.last_addr(), GuestAddress(0x11fff));
        assert_eq!(
            back.read_obj::<u64>(GuestAddress(0x1ff8)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(back.read_obj::<u8>(GuestAddress(0x11fff)).unwrap(), 0xaa);
        assert_eq!(
            back.read_obj::<u8>(GuestAddress(0x8000)).unwrap(),
            0,
            "hole"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        let missing = Path::new("/nonexistent/guestwalk.raw");
        let e = open(missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/guestwalk.raw"), "{e}");
        let dir = std::env::temp_dir().join(format!("gw-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        let e = open(&empty).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let odd = dir.join("odd.raw");
        std::fs::write(&odd, [0u8; 5000]).unwrap();
        assert!(matches!(
            open(&odd),
            Err(MemFileError::NotPages { len: 5000, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_truncated_while_mapped_is_an_error_not_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.raw");
        std::fs::write(&path, vec![0x5au8; 0x4000]).unwrap();
        let file = open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0x1000)
            .unwrap();
        let mut buf = vec![0u8; 0x4000];
        file.memory().read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert!(buf[..0x1000].iter().all(|b| *b == 0x5a));
        assert!(
            buf[0x1000..].iter().all(|b| *b == 0),
            "zeros past the new end"
        );
        let e = file.check_intact().unwrap_err().to_string();
        assert!(
            e.contains("mem.raw") && e.contains("shrank") && e.contains("16384 to 4096"),
            "{e}"
        );
    }
}
