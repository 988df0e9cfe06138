//! Decompression of data-channel payloads a peer compressed (LZO1X and LZ4 block format),
//! and LZ4 compression for `allow-compression yes`.
//!
//! Everything here takes bytes from the network after authentication, so every read and
//! write is bounds-checked and the output is capped: a malformed or oversized packet is an
//! error (a counted drop), never a panic. LZ4 comes from `lz4_flex` (safe Rust, maintained);
//! no maintained permissively licensed pure-Rust LZO decoder exists, so LZO1X decompression
//! is written here, following the format of `lzo1x_decompress_safe` (the longest match is
//! bounded by the output cap, so no input makes it loop for long).

/// Largest decompressed packet accepted (OpenVPN caps at its frame's buffer size; a tunnel
/// packet never exceeds 64 KiB).
pub const MAX_INFLATED: usize = 65_535;

/// Why a compressed payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The input ended in the middle of an instruction.
    #[error("compressed data is truncated")]
    Truncated,
    /// A match points before the start of the output.
    #[error("compressed data refers before its start")]
    BadDistance,
    /// The output would exceed the cap.
    #[error("decompressed packet exceeds the size limit")]
    TooLarge,
    /// Bytes after the end marker, or an LZ4 format error.
    #[error("compressed data is malformed")]
    Malformed,
}

/// Decompresses an LZ4 block (no frame header) into `out`; returns the length.
pub fn lz4_decompress(input: &[u8], out: &mut [u8]) -> Result<usize, DecompressError> {
    lz4_flex::block::decompress_into(input, out).map_err(|e| match e {
        lz4_flex::block::DecompressError::OutputTooSmall { .. } => DecompressError::TooLarge,
        lz4_flex::block::DecompressError::ExpectedAnotherByte => DecompressError::Truncated,
        lz4_flex::block::DecompressError::OffsetOutOfBounds => DecompressError::BadDistance,
        _ => DecompressError::Malformed,
    })
}

/// Compresses `input` as an LZ4 block into `out`; `None` when it does not fit or would not
/// shrink (the caller then sends the packet uncompressed, as OpenVPN does).
pub fn lz4_compress(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = lz4_flex::block::compress_into(input, out).ok()?;
    (n < input.len()).then_some(n)
}

/// Input cursor with bounds checks.
struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<usize, DecompressError> {
        let b = *self.buf.get(self.pos).ok_or(DecompressError::Truncated)?;
        self.pos += 1;
        Ok(usize::from(b))
    }

    fn le16(&mut self) -> Result<usize, DecompressError> {
        Ok(self.byte()? | (self.byte()? << 8))
    }

    /// A length extension: zero bytes add 255 each, then a non-zero byte ends it.
    fn extension(&mut self, base: usize) -> Result<usize, DecompressError> {
        let mut n = base;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return Ok(n + b);
            }
            n += 255;
            if n > MAX_INFLATED {
                return Err(DecompressError::TooLarge);
            }
        }
    }
}

/// Output cursor with bounds checks.
struct Output<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Output<'_> {
    fn literals(&mut self, input: &mut Input<'_>, n: usize) -> Result<(), DecompressError> {
        let src = input
            .buf
            .get(input.pos..input.pos + n)
            .ok_or(DecompressError::Truncated)?;
        self.buf
            .get_mut(self.pos..self.pos + n)
            .ok_or(DecompressError::TooLarge)?
            .copy_from_slice(src);
        input.pos += n;
        self.pos += n;
        Ok(())
    }

    /// Copies `len` bytes from `dist` bytes back (byte by byte: overlapping runs repeat).
    fn back_ref(&mut self, dist: usize, len: usize) -> Result<(), DecompressError> {
        let start = self
            .pos
            .checked_sub(dist)
            .filter(|_| dist > 0)
            .ok_or(DecompressError::BadDistance)?;
        if self.pos + len > self.buf.len() {
            return Err(DecompressError::TooLarge);
        }
        for i in 0..len {
            self.buf[self.pos + i] = self.buf[start + i];
        }
        self.pos += len;
        Ok(())
    }
}

/// Decompresses LZO1X data (any LZO1X compression level writes this format) into `out`;
/// returns the length. The stream must end with LZO's end marker.
pub fn lzo1x_decompress(input: &[u8], out: &mut [u8]) -> Result<usize, DecompressError> {
    let mut ip = Input { buf: input, pos: 0 };
    let mut op = Output { buf: out, pos: 0 };
    // `state`: literals copied after the previous instruction (0..=3, or 4 after a run of 4+).
    let mut state;
    let first = *input.first().ok_or(DecompressError::Truncated)?;
    if first > 17 {
        ip.pos = 1;
        let t = usize::from(first) - 17;
        op.literals(&mut ip, t)?;
        state = if t < 4 { t } else { 4 };
    } else {
        state = 0;
    }
    loop {
        let t = ip.byte()?;
        let (dist, len, next);
        if t < 16 {
            match state {
                0 => {
                    // A literal run: 3.. bytes.
                    let n = if t == 0 { ip.extension(15)? } else { t } + 3;
                    op.literals(&mut ip, n)?;
                    state = 4;
                    continue;
                }
                4 => {
                    // After a literal run: a 3-byte match 2 KiB + … back.
                    dist = 1 + 0x0800 + (t >> 2) + (ip.byte()? << 2);
                    len = 3;
                }
                _ => {
                    // After a match with 1..3 trailing literals: a 2-byte match nearby.
                    dist = 1 + (t >> 2) + (ip.byte()? << 2);
                    len = 2;
                }
            }
            next = t & 3;
        } else if t >= 64 {
            // M2: 3..8 bytes, up to 2 KiB back.
            dist = 1 + ((t >> 2) & 7) + (ip.byte()? << 3);
            len = (t >> 5) + 1;
            next = t & 3;
        } else if t >= 32 {
            // M3: up to 16 KiB back.
            len = if t & 31 == 0 {
                ip.extension(31)?
            } else {
                t & 31
            } + 2;
            let v = ip.le16()?;
            dist = 1 + (v >> 2);
            next = v & 3;
        } else {
            // M4: 16..48 KiB back, or the end marker.
            len = if t & 7 == 0 { ip.extension(7)? } else { t & 7 } + 2;
            let v = ip.le16()?;
            let d = ((t & 8) << 11) + (v >> 2);
            if d == 0 {
                // End of stream: the marker is exactly 0x11 0x00 0x00 and ends the input.
                return if len == 3 && ip.pos == input.len() {
                    Ok(op.pos)
                } else {
                    Err(DecompressError::Malformed)
                };
            }
            dist = d + 0x4000;
            next = v & 3;
        }
        op.back_ref(dist, len)?;
        op.literals(&mut ip, next)?;
        state = next;
    }
}

/// Test vectors shared with the data-channel tests.
#[cfg(test)]
pub(crate) mod tests_support {
    /// LZO1X-1 data made by lzop 1.04 (`lzop -1`) from an IPv4-looking header, six copies of
    /// "hello hello hello hello tunscope compress test " and the bytes 0..40.
    pub fn lzo_vector() -> Vec<u8> {
        let s = super::tests::LZO_VECTOR;
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by lzop 1.04 (`lzop -1`, LZO1X-1) from `vector_plain()`.
    pub(super) const LZO_VECTOR: &str = "084500008068656c6c6f20682f1400000474756e73636f706520636f6d7072657373207465737431a000a80720b2b8000016000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627110000";

    fn vector_plain() -> Vec<u8> {
        let mut v = vec![0x45, 0, 0, 0x80];
        for _ in 0..6 {
            v.extend_from_slice(b"hello hello hello hello tunscope compress test ");
        }
        v.extend(0u8..40);
        v
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn lzo_vector_from_lzop() {
        let input = unhex(LZO_VECTOR);
        let mut out = vec![0u8; MAX_INFLATED];
        let n = lzo1x_decompress(&input, &mut out).expect("decompresses");
        assert_eq!(&out[..n], &vector_plain()[..]);
        // A smaller output buffer is an error, not a panic.
        assert_eq!(
            lzo1x_decompress(&input, &mut out[..100]),
            Err(DecompressError::TooLarge)
        );
        // Every truncation is refused.
        for cut in 0..input.len() {
            assert!(
                lzo1x_decompress(&input[..cut], &mut out).is_err(),
                "cut {cut}"
            );
        }
        // Trailing garbage after the end marker is refused.
        let mut longer = input.clone();
        longer.push(0);
        assert_eq!(
            lzo1x_decompress(&longer, &mut out),
            Err(DecompressError::Malformed)
        );
    }

    #[test]
    fn lzo_hostile_inputs() {
        let mut out = vec![0u8; 2048];
        // A match before the start of the output.
        assert_eq!(
            lzo1x_decompress(&[0x12, b'a', 0x40, 0xff], &mut out),
            Err(DecompressError::BadDistance)
        );
        // An endless run of zero length-extension bytes stops at the cap.
        let mut zeros = vec![0x00u8; 400];
        zeros[0] = 0x00;
        assert!(lzo1x_decompress(&zeros, &mut out).is_err());
        assert_eq!(
            lzo1x_decompress(&[], &mut out),
            Err(DecompressError::Truncated)
        );
    }

    #[test]
    fn lz4_round_trip_and_hostile() {
        let plain = vector_plain();
        let mut c = vec![0u8; 1024];
        let n = lz4_compress(&plain, &mut c).expect("compressible");
        let mut out = vec![0u8; MAX_INFLATED];
        let m = lz4_decompress(&c[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &plain[..]);
        assert!(lz4_decompress(&c[..n], &mut out[..10]).is_err());
        assert!(lz4_decompress(&[0xff, 0xff, 0xff], &mut out).is_err());
        // Incompressible data is sent as is.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(lz4_compress(&noise, &mut c), None);
    }
}
