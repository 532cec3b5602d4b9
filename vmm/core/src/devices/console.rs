//! Where guest console output goes: the VMM's stdout, or a buffer (tests).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// A console sink, cheap to clone (clones write to the same place).
#[derive(Debug, Clone, Default)]
pub enum Console {
    /// The VMM process's standard output.
    #[default]
    Stdout,
    /// A shared in-memory buffer.
    Captured(Arc<Mutex<Vec<u8>>>),
    /// The VMM's standard error (so that standard output stays for the VMM's own output,
    /// such as a walk), also keeping the last [`TAIL_BYTES`] in a buffer so the VMM can
    /// wait for a marker the guest prints.
    Stderr(Arc<Mutex<Vec<u8>>>),
    /// Written to stdout, its last [`TAIL_BYTES`] kept (a Linux guest's console, whose
    /// last words say whether its kernel panicked before a reset).
    StdoutTail(Arc<Mutex<Vec<u8>>>),
}

/// How much recent output [`Console::Stderr`] keeps for marker searches.
pub const TAIL_BYTES: usize = 64 * 1024;

impl Console {
    /// A console that captures into a new buffer; read it with [`Console::captured`].
    pub fn capture() -> Self {
        Self::Captured(Arc::default())
    }

    /// Writes guest output. Host-side write errors are dropped: the guest cannot do
    /// anything about them and must not be stopped by a closed pipe.
    pub fn write_bytes(&self, bytes: &[u8]) {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            Self::Captured(buffer) => {
                if let Ok(mut buffer) = buffer.lock() {
                    buffer.extend_from_slice(bytes);
                }
            }
            Self::Stderr(tail) => {
                let mut err = io::stderr().lock();
                let _ = err.write_all(bytes);
                let _ = err.flush();
                keep_tail(tail, bytes);
            }
            Self::StdoutTail(tail) => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
                keep_tail(tail, bytes);
            }
        }
    }

    /// A console on standard output that keeps a tail of the output.
    pub fn stdout_tail() -> Self {
        Self::StdoutTail(Arc::default())
    }

    /// A console on standard error that keeps a tail of the output.
    pub fn stderr() -> Self {
        Self::Stderr(Arc::default())
    }

    /// Whether the captured output (or the kept tail) contains `marker`.
    pub fn contains(&self, marker: &[u8]) -> bool {
        let find =
            |buf: &Vec<u8>| marker.is_empty() || buf.windows(marker.len()).any(|w| w == marker);
        match self {
            Self::Stdout => false,
            Self::Captured(buffer) | Self::Stderr(buffer) | Self::StdoutTail(buffer) => {
                buffer.lock().is_ok_and(|b| find(&b))
            }
        }
    }

    /// The captured output so far (the kept tail for [`Console::Stderr`], empty for
    /// [`Console::Stdout`]).
    pub fn captured(&self) -> Vec<u8> {
        match self {
            Self::Stdout => Vec::new(),
            Self::Captured(buffer) | Self::Stderr(buffer) | Self::StdoutTail(buffer) => {
                buffer.lock().map(|b| b.clone()).unwrap_or_default()
            }
        }
    }
}

/// Appends `bytes` to `tail`, keeping its last [`TAIL_BYTES`].
fn keep_tail(tail: &Mutex<Vec<u8>>, bytes: &[u8]) {
    if let Ok(mut tail) = tail.lock() {
        tail.extend_from_slice(bytes);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// `io::Write` adapter for devices that want a writer (the 16550).
#[derive(Debug, Clone)]
pub struct ConsoleWriter(pub Console);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_console_keeps_a_bounded_tail() {
        let c = Console::stderr();
        c.write_bytes(b"booting...\nMARK");
        assert!(c.contains(b"MARK"));
        assert!(!c.contains(b"absent"));
        c.write_bytes(&vec![b'.'; TAIL_BYTES]);
        assert_eq!(c.captured().len(), TAIL_BYTES);
        assert!(!c.contains(b"MARK"), "old output falls out of the tail");
    }
}
