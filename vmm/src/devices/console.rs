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
}

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
        }
    }

    /// The captured output so far (empty for [`Console::Stdout`]).
    pub fn captured(&self) -> Vec<u8> {
        match self {
            Self::Stdout => Vec::new(),
            Self::Captured(buffer) => buffer.lock().map(|b| b.clone()).unwrap_or_default(),
        }
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
