//! LiME captures (Linux Memory Extractor, `format=lime`): a sequence of ranges, each a
//! 32-byte header then its bytes.
//!
//! ```text
//! offset 0   u32 LE  magic 0x4C694D45 ("EMiL" in the file)
//!        4   u32 LE  version (1)
//!        8   u64 LE  first physical address of the range
//!       16   u64 LE  last physical address of the range (inclusive)
//!       24   8 bytes reserved
//!       32   the range's bytes (last - first + 1)
//! ```
//!
//! No registers: give `--cr3` (and `--cr4` for 5-level paging).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{DumpError, DumpFormat, Parsed, Segment};

/// The magic of a range header.
pub const MAGIC: u32 = 0x4c69_4d45;
/// The version this reads.
pub const VERSION: u32 = 1;
/// Bytes of a range header.
pub const HEADER_LEN: u64 = 32;

/// Parses every range header of a capture of `file_len` bytes.
pub(crate) fn parse(path: &Path, file: &File, file_len: u64) -> Result<Parsed, DumpError> {
    let bad = |reason: String| DumpError::Malformed {
        path: path.to_owned(),
        format: "LiME capture",
        reason,
    };
    let mut parsed = Parsed {
        format: DumpFormat::Lime,
        ..Parsed::default()
    };
    let mut at = 0u64;
    while at < file_len {
        let index = parsed.segments.len();
        if file_len - at < HEADER_LEN {
            return Err(bad(format!(
                "range header {index} at offset {at:#x} is cut off by the end of the file"
            )));
        }
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, at)
            .map_err(|source| DumpError::Read {
                path: path.to_owned(),
                source,
            })?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if magic != MAGIC {
            return Err(bad(format!(
                "range header {index} at offset {at:#x} has magic {magic:#010x}, not {MAGIC:#010x} (EMiL)"
            )));
        }
        if version != VERSION {
            return Err(bad(format!(
                "range header {index} at offset {at:#x} has version {version}, not {VERSION}"
            )));
        }
        let (first, last) = (word(8), word(16));
        let len = last
            .checked_sub(first)
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| {
                bad(format!(
                    "range {index} at offset {at:#x} ends ({last:#x}) before it starts ({first:#x})"
                ))
            })?;
        let data = at + HEADER_LEN;
        let end = data.checked_add(len).filter(|end| *end <= file_len).ok_or_else(|| {
            bad(format!(
                "range {index} ({first:#x}-{last:#x}, {len} bytes at offset {data:#x}) runs past the end of the file ({file_len} bytes)"
            ))
        })?;
        parsed.segments.push(Segment {
            gpa: first,
            len,
            file_offset: data,
        });
        at = end;
    }
    Ok(parsed)
}

/// The header of a range `[first, first + len)`: for tools and tests that write captures.
pub fn header(first: u64, len: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first.to_le_bytes());
    h[16..24].copy_from_slice(&(first + len - 1).to_le_bytes());
    h
}
