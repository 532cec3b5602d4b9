//! Port I/O as the architecture defines it: the record of one `IN` or `OUT`.
//!
//! It lives here, below the devices, because a vCPU's register dump
//! ([`super::regs::RegisterDump`]) carries the last one.

/// One port access of a vCPU (an `IN` or `OUT` exit), as a device saw it: kept so that
/// a stopped or hung guest's register dump can say what it last did with a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortIo {
    /// The port.
    pub port: u16,
    /// `OUT` (set) or `IN`.
    pub write: bool,
    /// Access width in bytes (1, 2 or 4).
    pub size: u8,
    /// The value written, or the value the device answered (little-endian bytes).
    pub value: u32,
    /// How many port accesses this vCPU made in all, this one included.
    pub count: u64,
}

impl PortIo {
    /// The record of an access of `data.len()` bytes (at most 4 kept).
    pub fn new(port: u16, write: bool, data: &[u8], count: u64) -> Self {
        let mut bytes = [0u8; 4];
        let n = data.len().min(bytes.len());
        bytes[..n].copy_from_slice(&data[..n]);
        Self {
            port,
            write,
            size: u8::try_from(data.len()).unwrap_or(u8::MAX),
            value: u32::from_le_bytes(bytes),
            count,
        }
    }
}

impl std::fmt::Display for PortIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = usize::from(self.size.min(4)) * 2;
        if self.write {
            write!(f, "OUT {:#06x} <- ", self.port)?;
        } else {
            write!(f, "IN {:#06x} -> ", self.port)?;
        }
        write!(
            f,
            "{:#0w$x} ({} byte{}; port access {} of this vCPU)",
            self.value,
            self.size,
            if self.size == 1 { "" } else { "s" },
            self.count,
            w = width + 2
        )
    }
}
