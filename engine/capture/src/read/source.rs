//! The byte source under a capture reader: a file, possibly gzip-compressed (as tshark reads
//! them), with the offset consumed so far for error messages.

use std::io::{self, BufRead, BufReader, Read};

/// How many bytes a read could supply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// All requested bytes.
    Full,
    /// Nothing: the input ended exactly here.
    Eof,
    /// Some, then the input ended (a record cut short).
    Short(usize),
}

/// A buffered input with a byte counter.
pub(crate) struct Source {
    r: BufReader<Box<dyn Read + Send>>,
    /// Bytes consumed so far (of the decompressed stream).
    pub offset: u64,
}

impl Source {
    /// Wraps a reader; gzip input (magic `1f 8b`) is decompressed on the fly.
    pub fn new(inner: Box<dyn Read + Send>) -> io::Result<(Source, bool)> {
        let mut r = BufReader::with_capacity(1 << 16, inner);
        let gz = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let r = if gz {
            // Several gzip members in a row are one stream, as zcat reads them.
            let dec: Box<dyn Read + Send> = Box::new(flate2::read::MultiGzDecoder::new(r));
            BufReader::with_capacity(1 << 16, dec)
        } else {
            r
        };
        Ok((Source { r, offset: 0 }, gz))
    }

    /// The next bytes, without consuming them (fewer at the end of the input).
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let b = self.r.fill_buf()?;
        Ok(&b[..b.len().min(n)])
    }

    /// Fills `buf` as far as the input allows.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<Fill> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.offset += got as u64;
                    return Err(e);
                }
            }
        }
        self.offset += got as u64;
        Ok(if got == buf.len() {
            Fill::Full
        } else if got == 0 {
            Fill::Eof
        } else {
            Fill::Short(got)
        })
    }

    /// Reads `n` bytes into `out` (replacing its contents) without trusting `n` for the
    /// allocation: memory grows only with bytes actually present.
    pub fn fill_vec(&mut self, out: &mut Vec<u8>, n: usize) -> io::Result<Fill> {
        out.clear();
        let got = (&mut self.r).take(n as u64).read_to_end(out)?;
        self.offset += got as u64;
        Ok(if got == n {
            Fill::Full
        } else if got == 0 && n > 0 {
            Fill::Eof
        } else {
            Fill::Short(got)
        })
    }

    /// Bytes left in the input from here (reads them; used only to report what was not read).
    pub fn remaining(&mut self) -> u64 {
        io::copy(&mut self.r, &mut io::sink()).unwrap_or(0)
    }
}
