//! The API socket's path: created with mode 0600 without a window where another user
//! could connect, never replacing anything but a stale socket of this user, and removed
//! on exit only if it is still ours.
//!
//! The socket is bound inside a fresh private directory (mode 0700) next to the path,
//! made 0600 there, then hard-linked to the path, which fails if anything exists there:
//! no umask change (process-wide), no check-then-create race. What exists is examined: a
//! socket of this user that nobody listens on (a VMM that died) is replaced; anything
//! else (a file, a directory, a FIFO, a symlink, a live socket, another user's socket) is
//! refused by name.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something that is not a socket is there.
    #[error(
        "{path}: exists and is not a socket ({what}); it was left alone: choose another path or remove it"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// A live socket: a process listens on it.
    #[error("{path}: a process is listening on this socket (another VMM?); it was left alone")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Another user's socket.
    #[error("{path}: a socket of another user (uid {owner}); it was left alone")]
    OtherUser {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// The path has no usable parent directory, or is too long for a socket address.
    #[error("{path}: {why}")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A system call failed.
    #[error("{path}: cannot {doing}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        doing: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A bound, listening socket at a path; dropping it removes the path if it is still this
/// socket.
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket: what the path must still name to be removed.
    identity: (u64, u64),
}

impl ApiSocket {
    /// Creates the socket at `path` (see the module docs).
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let io_error = |doing: &'static str| {
            move |source| SocketError::Io {
                path: path.to_path_buf(),
                doing,
                source,
            }
        };
        let parent = match path.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => {
                return Err(SocketError::BadPath {
                    path: path.to_path_buf(),
                    why: "has no parent directory".into(),
                });
            }
        };
        if path.file_name().is_none() {
            return Err(SocketError::BadPath {
                path: path.to_path_buf(),
                why: "does not name a file".into(),
            });
        }
        // sun_path holds 108 bytes with its NUL; the private directory's name is what
        // binds, so it must fit too (it is at most as long as the path plus 20).
        let private = tempfile::Builder::new()
            .prefix(".vmm-api-")
            .tempdir_in(parent)
            .map_err(io_error("create a private directory next to it"))?;
        let ours = private.path().join("s");
        let listener = UnixListener::bind(&ours).map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidInput {
                SocketError::BadPath {
                    path: path.to_path_buf(),
                    why: format!("too long for a Unix socket address ({source})"),
                }
            } else {
                SocketError::Io {
                    path: path.to_path_buf(),
                    doing: "bind a socket",
                    source,
                }
            }
        })?;
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("make the socket 0600"))?;
        let meta = std::fs::metadata(&ours).map_err(io_error("read the new socket"))?;
        let uid = meta.uid();
        let identity = (meta.dev(), meta.ino());
        for attempt in 0..2 {
            match std::fs::hard_link(&ours, path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt == 0 => {
                    remove_if_stale(path, uid)?;
                }
                Err(source) => {
                    return Err(match source.kind() {
                        io::ErrorKind::AlreadyExists => SocketError::InUse {
                            path: path.to_path_buf(),
                        },
                        _ => SocketError::Io {
                            path: path.to_path_buf(),
                            doing: "create the socket",
                            source,
                        },
                    });
                }
            }
        }
        // The private directory (and its name for the socket) goes; the path keeps it.
        drop(private);
        // A VMM killed by a signal removes it too.
        crate::files::register_temporary(path);
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            identity,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A non-blocking handle of the listening socket.
    pub fn listener(&self) -> io::Result<UnixListener> {
        let listener = self.listener.try_clone()?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        crate::files::unregister_temporary(&self.path);
        // Only our socket: someone may have replaced the path meanwhile.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes `path` if it is a socket of `uid` that nobody listens on; otherwise says what
/// is there.
fn remove_if_stale(path: &Path, uid: u32) -> Result<(), SocketError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| SocketError::Io {
        path: path.to_path_buf(),
        doing: "examine what is there",
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "a regular file"
        };
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
            what,
        });
    }
    if meta.uid() != uid {
        return Err(SocketError::OtherUser {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| SocketError::Io {
                path: path.to_path_buf(),
                doing: "remove the stale socket",
                source,
            }),
        Err(source) => Err(SocketError::Io {
            path: path.to_path_buf(),
            doing: "probe the existing socket",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_private_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let socket = ApiSocket::bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Connectable through the path, and nothing else is left next to it.
        UnixStream::connect(&path).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A second one on the same path: refused, the first still works.
        let e = ApiSocket::bind(&path).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        UnixStream::connect(&path).unwrap();
        drop(socket);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn what_is_not_a_stale_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"precious").unwrap();
        let e = ApiSocket::bind(&file).unwrap_err();
        assert!(e.to_string().contains("a regular file"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = ApiSocket::bind(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = ApiSocket::bind(&sub).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        // No private directory is left behind by the refusals.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_stale_socket_of_ours_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A socket nobody listens on: what a VMM that was killed leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = ApiSocket::bind(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_replaced_path_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let socket = ApiSocket::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(socket);
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    }
}
