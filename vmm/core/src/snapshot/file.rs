//! Crash-safe file writing (temporary name, fsync, rename, directory fsync), CRC32 while
//! writing, an optional simulated disk-full limit, and progress on a terminal.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Result, SnapshotError};
use crate::files::Output;

/// Progress is shown for files at least this large.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;
/// How often progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Fsyncs a directory, so the renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::Io {
            op: "fsync the directory",
            path: dir.to_owned(),
            source,
        })
}

/// Progress of one long write on stderr, shown only when stderr is a terminal.
#[derive(Debug)]
struct Progress {
    label: String,
    total: u64,
    last: Instant,
    shown: bool,
}

impl Progress {
    fn new(label: String, total: u64) -> Option<Self> {
        (total >= PROGRESS_MIN_BYTES && io::stderr().is_terminal()).then(|| Self {
            label,
            total,
            last: Instant::now(),
            shown: false,
        })
    }

    fn update(&mut self, done: u64) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.shown = true;
            eprint!(
                "\rvmm: {}: {} / {} MiB",
                self.label,
                done >> 20,
                self.total >> 20
            );
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!(
                "\rvmm: {}: {} / {} MiB",
                self.label,
                self.total >> 20,
                self.total >> 20
            );
        }
    }
}

/// A file of the snapshot directory being written under a temporary name
/// ([`crate::files::Output`]); it appears under its name only on [`AtomicFile::commit`],
/// and the temporary is removed if it is dropped before.
#[derive(Debug)]
pub(crate) struct AtomicFile {
    out: Output,
    hasher: crc32fast::Hasher,
    written: u64,
    limit: Option<u64>,
    progress: Option<Progress>,
}

impl AtomicFile {
    /// Starts `dir/name` under a temporary name. `expected` (bytes) is for progress;
    /// `limit` simulates a disk that is full after that many bytes (for tests).
    pub fn create(dir: &Path, name: &str, expected: u64, limit: Option<u64>) -> Result<Self> {
        let out = Output::create_in_snapshot_dir(dir, name, "snapshot file")?;
        Ok(Self {
            progress: Progress::new(format!("writing {}", out.path().display()), expected),
            out,
            hasher: crc32fast::Hasher::new(),
            written: 0,
            limit,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        self.out.path()
    }

    fn io_error(&self, source: io::Error) -> SnapshotError {
        SnapshotError::Io {
            op: "write",
            path: self.out.temp_path().to_owned(),
            source,
        }
    }

    /// Appends `buf`.
    pub fn write(&mut self, buf: &[u8]) -> Result<()> {
        let room = self
            .limit
            .map_or(buf.len() as u64, |l| l.saturating_sub(self.written));
        let take = (buf.len() as u64).min(room) as usize;
        if let Err(e) = self.out.write_all(&buf[..take]) {
            return Err(self.io_error(e));
        }
        self.hasher.update(&buf[..take]);
        self.written += take as u64;
        if take < buf.len() {
            return Err(self.io_error(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            )));
        }
        if let Some(p) = self.progress.as_mut() {
            p.update(self.written);
        }
        Ok(())
    }

    /// Fsyncs, renames to the final name and fsyncs the directory. Returns the length and
    /// the CRC32 of what was written.
    pub fn commit(self) -> Result<(u64, u32)> {
        let (written, crc) = (self.written, self.hasher.clone().finalize());
        self.out.commit()?;
        if let Some(p) = &self.progress {
            p.finish();
        }
        Ok((written, crc))
    }
}

/// A reader that computes the CRC32 of what it reads.
#[derive(Debug)]
pub(crate) struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
}

impl<R: io::Read> CrcReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            read: 0,
        }
    }

    /// CRC32 and length of everything read so far.
    pub fn finish(&self) -> (u64, u32) {
        (self.read, self.hasher.clone().finalize())
    }
}

impl<R: io::Read> io::Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_removes_the_temporary() {
        let dir = std::env::temp_dir().join(format!("gw-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = AtomicFile::create(&dir, "a", 0, None).unwrap();
        f.write(b"hello").unwrap();
        let temp = f.out.temp_path().to_owned();
        assert!(temp.exists() && !dir.join("a").exists());
        let name = temp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".a.") && name.ends_with(".tmp"), "{name}");
        let (len, crc) = f.commit().unwrap();
        assert_eq!((len, crc), (5, crc32fast::hash(b"hello")));
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"hello");
        let mut f = AtomicFile::create(&dir, "b", 0, Some(3)).unwrap();
        let e = f.write(b"hello").unwrap_err().to_string();
        assert!(e.contains("/.b.") && e.contains("no space"), "{e}");
        drop(f);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "only a is left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
