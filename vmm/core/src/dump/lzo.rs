//! An LZO1X decoder for kdump pages: bounded by construction (it writes only into the
//! caller's buffer, reads only inside the input, and refuses a match that reaches before
//! the output's start), so a hostile page is an error, never a panic or an allocation.
//!
//! The format is LZO1X as `lzo1x_decompress_safe` (Linux, lib/lzo) reads it, bitstream
//! version 0: literal runs and four kinds of matches (M1..M4), each match followed by 0-3
//! literals, ending with the M4 end-of-stream marker (`0x11 0x00 0x00`). The encoder used
//! by the tests is the MIT-licensed `lzokay-native`'s.

use std::fmt;

/// Why an LZO stream cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzoError {
    /// The input ends inside an instruction.
    InputOverrun,
    /// The output would not fit in the buffer given.
    OutputOverrun,
    /// A match refers to bytes before the start of the output.
    LookBehind,
    /// The stream ended without its end-of-stream marker, or has bytes after it.
    BadEnd,
}

impl fmt::Display for LzoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InputOverrun => "the LZO stream ends inside an instruction",
            Self::OutputOverrun => "the LZO stream decodes to more than its buffer",
            Self::LookBehind => "an LZO match refers to bytes before the start",
            Self::BadEnd => "the LZO stream does not end with its end-of-stream marker",
        })
    }
}

struct Decoder<'a> {
    input: &'a [u8],
    ip: usize,
    out: &'a mut [u8],
    op: usize,
}

impl Decoder<'_> {
    fn byte(&mut self) -> Result<usize, LzoError> {
        let b = *self.input.get(self.ip).ok_or(LzoError::InputOverrun)?;
        self.ip += 1;
        Ok(usize::from(b))
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        Ok(self.byte()? | (self.byte()? << 8))
    }

    /// A length continued by zero bytes (each adding 255) and a final non-zero byte.
    fn extended(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut t = base;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return Ok(t + b);
            }
            t += 255;
            if t > self.out.len() + 255 {
                return Err(LzoError::OutputOverrun);
            }
        }
    }

    fn literals(&mut self, n: usize) -> Result<(), LzoError> {
        let src = self
            .input
            .get(self.ip..self.ip + n)
            .ok_or(LzoError::InputOverrun)?;
        let dst = self
            .out
            .get_mut(self.op..self.op + n)
            .ok_or(LzoError::OutputOverrun)?;
        dst.copy_from_slice(src);
        self.ip += n;
        self.op += n;
        Ok(())
    }

    /// Copies `n` bytes from `distance` bytes back (overlapping copies repeat bytes).
    fn copy_match(&mut self, distance: usize, n: usize) -> Result<(), LzoError> {
        let from = self.op.checked_sub(distance).ok_or(LzoError::LookBehind)?;
        if self.op + n > self.out.len() {
            return Err(LzoError::OutputOverrun);
        }
        for i in 0..n {
            self.out[self.op + i] = self.out[from + i];
        }
        self.op += n;
        Ok(())
    }
}

/// Decodes `input` into `out`; returns how many bytes were written.
pub fn decompress(input: &[u8], out: &mut [u8]) -> Result<usize, LzoError> {
    let mut d = Decoder {
        input,
        ip: 0,
        out,
        op: 0,
    };
    // `state`: literals copied after the last instruction (0..3), or 4 after a literal
    // run of 4 or more; it decides what a small instruction byte means.
    let mut state;
    let first = *d.input.first().ok_or(LzoError::InputOverrun)?;
    if first > 17 {
        d.ip = 1;
        let t = usize::from(first) - 17;
        d.literals(t)?;
        state = if t < 4 { t } else { 4 };
    } else {
        state = 0;
    }
    loop {
        let t = d.byte()?;
        let (distance, len, next);
        if t < 16 {
            if state == 0 {
                // A literal run.
                let n = if t == 0 { d.extended(15)? } else { t } + 3;
                d.literals(n)?;
                state = 4;
                continue;
            }
            let b = d.byte()?;
            next = t & 3;
            if state != 4 {
                // M1: 2 bytes within 1 KiB.
                distance = 1 + (t >> 2) + (b << 2);
                len = 2;
            } else {
                // M1 after a long literal run: 3 bytes, 2 KiB further back.
                distance = 1 + 0x800 + (t >> 2) + (b << 2);
                len = 3;
            }
        } else if t >= 64 {
            // M2: 3-8 bytes within 2 KiB.
            let b = d.byte()?;
            next = t & 3;
            distance = 1 + ((t >> 2) & 7) + (b << 3);
            len = (t >> 5) + 1;
        } else if t >= 32 {
            // M3: within 16 KiB.
            len = if t & 31 == 0 { d.extended(31)? } else { t & 31 } + 2;
            let w = d.le16()?;
            next = w & 3;
            distance = 1 + (w >> 2);
        } else {
            // M4: 16-48 KiB back, or the end-of-stream marker.
            len = if t & 7 == 0 { d.extended(7)? } else { t & 7 } + 2;
            let w = d.le16()?;
            next = w & 3;
            let far = ((t & 8) << 11) + (w >> 2);
            if far == 0 {
                return if len == 3 && d.ip == d.input.len() {
                    Ok(d.op)
                } else {
                    Err(LzoError::BadEnd)
                };
            }
            distance = far + 0x4000;
        }
        d.copy_match(distance, len)?;
        d.literals(next)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: &[u8]) {
        let packed = match lzokay_native::compress(data) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        };
        let mut out = vec![0u8; data.len()];
        assert_eq!(decompress(&packed, &mut out), Ok(data.len()));
        assert_eq!(out, data);
        // One byte less of room is an error, not a panic.
        if !data.is_empty() {
            let mut short = vec![0u8; data.len() - 1];
            assert_eq!(
                decompress(&packed, &mut short),
                Err(LzoError::OutputOverrun)
            );
        }
    }

    #[test]
    fn pages_round_trip() {
        round_trip(&[0u8; 4096]);
        round_trip(
            &(0..4096u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>(),
        );
        let mut table = vec![0u8; 4096];
        for (i, e) in table.chunks_exact_mut(8).enumerate().step_by(3) {
            e.copy_from_slice(&((i as u64) << 12 | 0x63).to_le_bytes());
        }
        round_trip(&table);
        round_trip(b"abcabcabcabcabcabcabcabcabcabcxyz");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Non-empty data: the encoder writes nothing at all for an empty input, which
        /// is not an LZO1X stream (it has no end marker), and a kdump page is never empty.
        #[test]
        fn any_page_round_trips(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..4096),
            repeat in 0usize..8,
        ) {
            // Repetition makes matches of every kind.
            let mut page = data.clone();
            for _ in 0..repeat {
                page.extend_from_slice(&data[..data.len() / 2]);
            }
            page.truncate(4096);
            round_trip(&page);
        }

        #[test]
        fn any_bytes_are_refused_or_fit(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut out = [0u8; 4096];
            if let Ok(n) = decompress(&input, &mut out) {
                proptest::prop_assert!(n <= 4096);
            }
        }
    }
}
