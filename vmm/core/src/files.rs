//! The one place where `vmm` opens a path that a user (or a guest, or a client) handed it,
//! for reading or for writing, so the rules cannot drift between commands.
//!
//! # Reading ([`open_input`], [`read_bounded`])
//!
//! - The path is looked at (`stat`, following symlinks) **before** it is opened: a FIFO, a
//!   socket, a directory, a character or block device is refused with a message naming
//!   what it is. Opening such a thing can block forever (a FIFO without a writer) or have
//!   side effects (a tape, a watchdog), so it is never opened.
//! - A regular file is then opened with `O_NONBLOCK | O_NOCTTY` (a FIFO swapped in
//!   between the look and the open cannot block us either), and its identity (device and
//!   inode) is checked against the look: a path swapped under us is refused.
//! - A regular file that reports 0 bytes is named as such, with the likely reason when it
//!   is in `/proc` or `/sys` (those files report no size).
//! - [`read_bounded`] reads at most a stated number of bytes: a file over the bound is
//!   refused by its size, and one that grows while read is refused too, so an endless or
//!   huge file is never read into memory.
//!
//! Mapped files (memory files, snapshot memory files) are protected against shrinking
//! under us by [`crate::sigbus`].
//!
//! # Writing ([`Output`])
//!
//! Every output (`snapshot merge -o`, `walk --dump-memory`, snapshot generations) is
//! written to a temporary in the destination's directory, created with `O_CREAT|O_EXCL`
//! and an unpredictable name by the `tempfile` crate (an existing file or a symlink
//! planted under a guessable name cannot be followed or clobbered), fsynced, renamed
//! over the destination and the directory fsynced. Before anything is written:
//!
//! - a destination that exists is replaced only when it is a regular file and the caller
//!   was told to replace it ([`Replace::Yes`], the CLI's `--force`); otherwise the write
//!   is refused, and the rename itself is a no-clobber link, so a file created meanwhile
//!   is not destroyed either;
//! - a symlink, directory, FIFO, socket or device at the destination is refused, naming
//!   what it is (never written through, never replaced);
//! - a destination that is one of the command's own inputs is refused by name, compared
//!   by device and inode, not by path string (a hard link or another spelling of the
//!   same file is caught);
//! - nothing is created inside a snapshot directory (a directory with a
//!   `gen-NNNNNN.state` file) except by the snapshot writer itself.
//!
//! A write that fails leaves the destination as it was and removes its temporary; so does
//! SIGINT, SIGTERM or SIGHUP ([`install_signal_cleanup`]: the temporaries are removed,
//! then the process dies of the signal as it would have). Only SIGKILL or a crash of the
//! machine can leave a temporary behind (`.NAME.XXXXXXXX.tmp`, never under the
//! destination's name).

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;

/// What a path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (only seen when links are not followed).
    Symlink,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The kind of the file `meta` describes.
    pub fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        if t.is_dir() {
            Self::Directory
        } else if t.is_symlink() {
            Self::Symlink
        } else if t.is_fifo() {
            Self::Fifo
        } else if t.is_socket() {
            Self::Socket
        } else if t.is_char_device() {
            Self::CharDevice
        } else if t.is_block_device() {
            Self::BlockDevice
        } else {
            Self::Regular
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Regular => "a regular file",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Fifo => "a FIFO (named pipe)",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
        })
    }
}

/// Why a path cannot be read or written. Every message names the path and what it was
/// for (`what`: "memory file", "kernel", ...).
#[derive(Debug, Error)]
pub enum FileError {
    /// The path cannot be looked at or opened.
    #[error("cannot open the {what} {path}: {source}")]
    Open {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The path is not a regular file.
    #[error("the {what} {path} is {kind}, not a regular file")]
    NotRegular {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// The file was replaced between the look and the open.
    #[error("the {what} {path} changed while it was being opened (another file took its place)")]
    Swapped {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The file is empty.
    #[error("the {what} {path} is empty (0 bytes){hint}")]
    Empty {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it may be, for /proc and /sys files.
        hint: &'static str,
    },
    /// The file is larger than what it may be.
    #[error("the {what} {path} is {len} bytes, more than the {max} bytes a {what} may have")]
    TooLarge {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The file changed size while it was read.
    #[error(
        "the {what} {path} changed while it was read (it was {expected} bytes, {found} were read)"
    )]
    Changed {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
        /// What was read.
        found: u64,
    },
    /// Reading failed.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An output path that is not a file name.
    #[error("the {what} {path} does not name a file")]
    NoFileName {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The output exists and may not be replaced.
    #[error(
        "the {what} {path} already exists: vmm does not replace it unless told to (--overwrite)"
    )]
    Exists {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The output exists and is not a regular file.
    #[error("the {what} {path} is {kind}: vmm writes only to a new or a regular file")]
    CannotReplace {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// The output is one of the command's inputs.
    #[error(
        "the {what} {path} is the {input_what} {input} this command reads: refusing to overwrite it"
    )]
    IsInput {
        /// What the output is for.
        what: &'static str,
        /// The output path.
        path: PathBuf,
        /// What the input is.
        input_what: &'static str,
        /// The input path.
        input: PathBuf,
    },
    /// The output would be inside a snapshot directory.
    #[error(
        "the {what} {path} is inside the snapshot directory {dir}: only vmm's snapshot writer creates files there"
    )]
    InSnapshotDir {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Writing failed; the destination is as it was.
    #[error("cannot write the {what} {path}: {source}")]
    Write {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Device and inode: what a file *is*, whatever path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of the file at `path` (links followed), if it exists.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// A regular file opened for reading by [`open_input`].
#[derive(Debug)]
pub struct Input {
    file: File,
    path: PathBuf,
    what: &'static str,
    len: u64,
    id: FileId,
}

impl Input {
    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file, consumed.
    pub fn into_file(self) -> File {
        self.file
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it was empty when opened (never, for an [`Input`]: empty files are
    /// refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its identity.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Reads the whole file, refusing it when it is over `max` bytes or changes size
    /// while it is read.
    pub fn read_all(mut self, max: u64) -> Result<Vec<u8>, FileError> {
        if self.len > max {
            return Err(FileError::TooLarge {
                what: self.what,
                path: self.path,
                len: self.len,
                max,
            });
        }
        // One byte more than the size, to see a file that grew.
        let mut bytes = Vec::with_capacity(self.len as usize);
        let read = (&mut self.file)
            .take(self.len + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| FileError::Read {
                what: self.what,
                path: self.path.clone(),
                source,
            })?;
        if read as u64 != self.len {
            return Err(FileError::Changed {
                what: self.what,
                path: self.path,
                expected: self.len,
                found: read as u64,
            });
        }
        Ok(bytes)
    }
}

/// Why an empty regular file may be empty.
fn empty_hint(path: &Path) -> &'static str {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if absolute.starts_with("/proc") || absolute.starts_with("/sys") {
        ": files in /proc and /sys report no size and cannot be used as one"
    } else {
        ""
    }
}

/// Opens `path` for reading as a `what`, refusing anything that is not a non-empty
/// regular file without ever opening it (see the module docs).
pub fn open_input(path: &Path, what: &'static str) -> Result<Input, FileError> {
    let open_error = |source| FileError::Open {
        what,
        path: path.to_owned(),
        source,
    };
    let before = std::fs::metadata(path).map_err(open_error)?;
    let kind = FileKind::of(&before);
    if kind != FileKind::Regular {
        return Err(FileError::NotRegular {
            what,
            path: path.to_owned(),
            kind,
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if FileId::of(&meta) != FileId::of(&before) || FileKind::of(&meta) != FileKind::Regular {
        return Err(FileError::Swapped {
            what,
            path: path.to_owned(),
        });
    }
    if meta.len() == 0 {
        return Err(FileError::Empty {
            what,
            path: path.to_owned(),
            hint: empty_hint(path),
        });
    }
    Ok(Input {
        file,
        path: path.to_owned(),
        what,
        len: meta.len(),
        id: FileId::of(&meta),
    })
}

/// Reads a whole `what` of at most `max` bytes (see [`open_input`] and
/// [`Input::read_all`]).
pub fn read_bounded(path: &Path, what: &'static str, max: u64) -> Result<Vec<u8>, FileError> {
    open_input(path, what)?.read_all(max)
}

/// At most `max` characters of `bytes`, escaped (non-printable bytes as `\xNN`), with the
/// total length when cut: for quoting bad file contents in an error message.
pub fn excerpt(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut text: String = shown.escape_ascii().to_string();
    if bytes.len() > max {
        text.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    format!("\"{text}\"")
}

/// Whether an existing output may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Never: an existing destination is refused (the default of every command).
    No,
    /// A regular file at the destination is replaced (the CLI's `--force`).
    Yes,
}

/// Whether `name` is a snapshot state file's name (`gen-NNNNNN.state`): a directory
/// holding one is a snapshot directory, where only the snapshot writer creates files.
pub fn is_snapshot_state_name(name: &str) -> bool {
    name.strip_prefix("gen-")
        .and_then(|rest| rest.strip_suffix(".state"))
        .is_some_and(|digits| digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `dir` holds a snapshot state file.
fn is_snapshot_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| is_snapshot_state_name(&e.file_name().to_string_lossy()))
    })
}

/// Temporaries being written (and the control API's socket), removed on
/// SIGINT/SIGTERM/SIGHUP.
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Has `path` removed if the process is killed by SIGINT, SIGTERM or SIGHUP (until
/// [`unregister_temporary`]).
pub(crate) fn register_temporary(path: &Path) {
    if let Ok(mut list) = TEMPORARIES.lock() {
        list.push(path.to_owned());
    }
}

/// Undoes [`register_temporary`].
pub(crate) fn unregister_temporary(path: &Path) {
    if let Ok(mut list) = TEMPORARIES.lock() {
        list.retain(|p| p != path);
    }
}

/// Removes every temporary being written, then lets `signal` kill the process as it
/// would have without us: installed once by the binary, for SIGINT, SIGTERM and SIGHUP.
pub fn install_signal_cleanup() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("vmm-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if let Ok(list) = TEMPORARIES.lock() {
                    for path in list.iter() {
                        let _ = std::fs::remove_file(path);
                    }
                }
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                // Not reached for these signals (their default is to terminate).
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// An output being written under a temporary name; it appears under its name only on
/// [`Output::commit`], and the temporary is removed if it is dropped before.
#[derive(Debug)]
pub struct Output {
    temp: Option<tempfile::NamedTempFile>,
    temp_path: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    what: &'static str,
    replace: Replace,
}

impl Output {
    /// Starts writing the `what` at `path`, after checking the destination (see the
    /// module docs). `inputs` are the files the command reads, `(what, path)`: the output
    /// may not be one of them.
    pub fn create(
        path: &Path,
        what: &'static str,
        replace: Replace,
        inputs: &[(&'static str, &Path)],
    ) -> Result<Self, FileError> {
        let dir = parent_dir(path, what)?;
        if is_snapshot_dir(&dir) {
            return Err(FileError::InSnapshotDir {
                what,
                path: path.to_owned(),
                dir,
            });
        }
        check_destination(path, what, replace, inputs)?;
        Self::start(path, dir, what, replace)
    }

    /// Starts writing a file of the snapshot directory `dir` (its writer's own files:
    /// replacing a leftover of ours, such as a data file whose state was never written,
    /// is allowed; anything but a regular file is still refused).
    pub(crate) fn create_in_snapshot_dir(
        dir: &Path,
        name: &str,
        what: &'static str,
    ) -> Result<Self, FileError> {
        let path = dir.join(name);
        check_destination(&path, what, Replace::Yes, &[])?;
        Self::start(&path, dir.to_owned(), what, Replace::Yes)
    }

    fn start(
        path: &Path,
        dir: PathBuf,
        what: &'static str,
        replace: Replace,
    ) -> Result<Self, FileError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .rand_bytes(8)
            .tempfile_in(&dir)
            .map_err(|source| FileError::Write {
                what,
                path: path.to_owned(),
                source,
            })?;
        let temp_path = temp.path().to_owned();
        register_temporary(&temp_path);
        Ok(Self {
            temp: Some(temp),
            temp_path,
            path: path.to_owned(),
            dir,
            what,
            replace,
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// The file being written (the temporary).
    pub fn file(&mut self) -> Result<&mut File, FileError> {
        match self.temp.as_mut() {
            Some(t) => Ok(t.as_file_mut()),
            None => Err(FileError::Write {
                what: self.what,
                path: self.path.clone(),
                source: io::Error::other("the output is already committed"),
            }),
        }
    }

    fn temp_file(&mut self) -> io::Result<&mut File> {
        self.temp
            .as_mut()
            .map(|t| t.as_file_mut())
            .ok_or_else(|| io::Error::other("the output is already committed"))
    }

    /// A write error naming the destination.
    pub fn error(&self, source: io::Error) -> FileError {
        FileError::Write {
            what: self.what,
            path: self.path.clone(),
            source,
        }
    }

    /// Fsyncs the temporary, renames it to the destination (replacing a regular file
    /// only with [`Replace::Yes`]) and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), FileError> {
        let Some(mut temp) = self.temp.take() else {
            return Err(self.error(io::Error::other("the output is already committed")));
        };
        let synced = temp
            .as_file_mut()
            .flush()
            .and_then(|_| temp.as_file().sync_all());
        if let Err(e) = synced {
            unregister_temporary(&self.temp_path);
            return Err(self.error(e));
        }
        let persisted = match self.replace {
            Replace::Yes => temp.persist(&self.path).map(drop),
            Replace::No => temp.persist_noclobber(&self.path).map(drop),
        };
        unregister_temporary(&self.temp_path);
        if let Err(e) = persisted {
            // `e.file` is dropped here, which removes the temporary.
            return Err(if e.error.kind() == io::ErrorKind::AlreadyExists {
                FileError::Exists {
                    what: self.what,
                    path: self.path.clone(),
                }
            } else {
                self.error(e.error)
            });
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.error(e))
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp_file()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp_file()?.flush()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.temp.take().is_some() {
            // Not committed: dropping the NamedTempFile removed the temporary.
            unregister_temporary(&self.temp_path);
        }
    }
}

/// The directory an output goes into ("." for a bare name).
fn parent_dir(path: &Path, what: &'static str) -> Result<PathBuf, FileError> {
    if path.file_name().is_none() {
        return Err(FileError::NoFileName {
            what,
            path: path.to_owned(),
        });
    }
    Ok(match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    })
}

/// Checks what is at an output's destination now (links not followed).
fn check_destination(
    path: &Path,
    what: &'static str,
    replace: Replace,
    inputs: &[(&'static str, &Path)],
) -> Result<(), FileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FileError::Open {
                what,
                path: path.to_owned(),
                source,
            });
        }
    };
    let id = FileId::of(&meta);
    for (input_what, input) in inputs {
        if FileId::of_path(input) == Some(id) {
            return Err(FileError::IsInput {
                what,
                path: path.to_owned(),
                input_what,
                input: input.to_path_buf(),
            });
        }
    }
    match FileKind::of(&meta) {
        FileKind::Regular if replace == Replace::Yes => Ok(()),
        FileKind::Regular => Err(FileError::Exists {
            what,
            path: path.to_owned(),
        }),
        kind => Err(FileError::CannotReplace {
            what,
            path: path.to_owned(),
            kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn inputs_that_are_not_regular_files_are_named_without_being_opened() {
        let dir = temp_dir();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = open_input(&fifo, "memory file").unwrap_err().to_string();
        assert!(
            e.contains("is a FIFO (named pipe)") && e.contains("memory file"),
            "{e}"
        );
        let sock = dir.path().join("sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let e = open_input(&sock, "kernel").unwrap_err().to_string();
        assert!(e.contains("is a socket"), "{e}");
        let e = open_input(dir.path(), "initrd").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = open_input(Path::new("/dev/null"), "kernel")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a character device"), "{e}");
        let e = open_input(Path::new("/proc/self/status"), "state file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty") && e.contains("/proc"), "{e}");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        let e = open_input(&dangling, "kernel").unwrap_err().to_string();
        assert!(e.contains("dangling") && e.contains("No such file"), "{e}");
        let looping = dir.path().join("loop");
        std::os::unix::fs::symlink(&looping, &looping).unwrap();
        let e = open_input(&looping, "kernel").unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }

    #[test]
    fn bounded_reads_refuse_large_files_by_size() {
        let dir = temp_dir();
        let f = dir.path().join("f");
        std::fs::write(&f, vec![7u8; 100]).unwrap();
        assert_eq!(read_bounded(&f, "state file", 100).unwrap().len(), 100);
        let e = read_bounded(&f, "state file", 99).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::TooLarge {
                    len: 100,
                    max: 99,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt(b"ab\x00\n", 10), "\"ab\\x00\\n\"");
        let long = vec![b'x'; 100_000];
        let e = excerpt(&long, 8);
        assert_eq!(e, "\"xxxxxxxx... (100000 bytes)\"");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn outputs_replace_only_what_they_may() {
        let dir = temp_dir();
        let out = dir.path().join("out.raw");
        // New: written, no temporary left.
        let mut o = Output::create(&out, "memory file", Replace::No, &[]).unwrap();
        o.write_all(b"one").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        assert_eq!(names(dir.path()), ["out.raw"]);
        // Existing: refused without Replace::Yes, replaced with it.
        let e = Output::create(&out, "memory file", Replace::No, &[]).unwrap_err();
        assert!(matches!(e, FileError::Exists { .. }), "{e}");
        let mut o = Output::create(&out, "memory file", Replace::Yes, &[]).unwrap();
        o.write_all(b"two").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        // A file created while the output was written is not clobbered.
        let race = dir.path().join("race");
        let mut o = Output::create(&race, "memory file", Replace::No, &[]).unwrap();
        o.write_all(b"mine").unwrap();
        std::fs::write(&race, b"theirs").unwrap();
        assert!(matches!(o.commit(), Err(FileError::Exists { .. })));
        assert_eq!(std::fs::read(&race).unwrap(), b"theirs");
        // Dropped before commit: nothing left.
        let gone = dir.path().join("gone");
        let mut o = Output::create(&gone, "memory file", Replace::No, &[]).unwrap();
        o.write_all(b"x").unwrap();
        drop(o);
        assert_eq!(names(dir.path()), ["out.raw", "race"]);
    }

    #[test]
    fn outputs_never_write_through_links_devices_inputs_or_snapshot_dirs() {
        let dir = temp_dir();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = Output::create(&link, "memory file", Replace::Yes, &[]).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = Output::create(dir.path(), "memory file", Replace::Yes, &[]).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e =
            Output::create(Path::new("/dev/null"), "memory file", Replace::Yes, &[]).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        // The same file under another name (a hard link) is still the input.
        let hard = dir.path().join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = Output::create(
            &hard,
            "memory file",
            Replace::Yes,
            &[("memory file", &victim)],
        )
        .unwrap_err();
        assert!(matches!(e, FileError::IsInput { .. }), "{e}");
        // Inside a snapshot directory, even a new name.
        let snap = dir.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("gen-000000.state"), b"x").unwrap();
        let e =
            Output::create(&snap.join("new.raw"), "memory file", Replace::Yes, &[]).unwrap_err();
        assert!(matches!(e, FileError::InSnapshotDir { .. }), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(names(dir.path()), ["hard", "link", "snap", "victim"]);
    }

    #[test]
    fn snapshot_state_names() {
        assert!(is_snapshot_state_name("gen-000012.state"));
        for bad in [
            "gen-12.state",
            "gen-00001x.state",
            "gen-000001.diff",
            ".gen-000001.state.tmp",
        ] {
            assert!(!is_snapshot_state_name(bad), "{bad}");
        }
    }
}
