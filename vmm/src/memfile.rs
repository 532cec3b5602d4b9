//! Raw guest-physical memory files: byte N of the file is GPA N.
//!
//! A file is mapped private and read-only, so an offline walk cannot change it, and it is
//! seen through the same `GuestMemoryMmap` type as a live guest's RAM: the walker cannot
//! tell the difference.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Why a memory file cannot be opened or written.
#[derive(Debug, Error)]
pub enum MemFileError {
    /// The file cannot be opened or its size read.
    #[error("cannot open memory file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is empty.
    #[error("memory file {0} is empty")]
    Empty(PathBuf),
    /// The file is larger than this host can map.
    #[error("memory file {path} is too large to map ({len} bytes)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// mmap failed.
    #[error("cannot map memory file {path}: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// The mmap error.
        source: MmapRegionError,
    },
    /// Writing a dump failed.
    #[error("cannot write memory dump {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
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

/// Maps a raw memory file read-only and private as guest memory starting at GPA 0.
pub fn open(path: &Path) -> Result<GuestMemoryMmap, MemFileError> {
    let file = File::open(path).map_err(|source| MemFileError::Open {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| MemFileError::Open {
            path: path.to_owned(),
            source,
        })?
        .len();
    if len == 0 {
        return Err(MemFileError::Empty(path.to_owned()));
    }
    let size = usize::try_from(len).map_err(|_| MemFileError::TooLarge {
        path: path.to_owned(),
        len,
    })?;
    let region = MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|source| MemFileError::Map {
            path: path.to_owned(),
            source,
        })?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemFileError::TooLarge {
        path: path.to_owned(),
        len,
    })?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemFileError::TooLarge {
        path: path.to_owned(),
        len,
    })
}

/// Writes guest RAM as a raw file (byte N = GPA N; gaps between regions are holes of
/// zeros), to a temporary name first, then renamed, so no half-written dump is ever left
/// under `path`.
pub fn dump<M: GuestMemoryBackend>(mem: &M, path: &Path) -> Result<(), MemFileError> {
    let wrap = |source| MemFileError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("partial");
    let result = (|| {
        let mut file = File::create(&tmp).map_err(wrap)?;
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
                std::os::unix::fs::FileExt::write_all_at(&file, &buf[..n], addr).map_err(wrap)?;
                off += n as u64;
            }
            end = end.max(start + len);
        }
        file.set_len(end).map_err(wrap)?;
        file.flush().map_err(wrap)?;
        file.sync_all().map_err(wrap)?;
        std::fs::rename(&tmp, path).map_err(wrap)?;
        // The rename is durable only once the directory is synced.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(wrap)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
        dump(&mem, &path).unwrap();
        assert!(!path.with_extension("partial").exists());
        let back = open(&path).unwrap();
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
        assert!(matches!(open(&empty), Err(MemFileError::Empty(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
