//! Just enough D-Bus to tell systemd-resolved about the tunnel: method calls on the system
//! bus and their replies, nothing else (no signals, no object server, no fd passing).
//!
//! The wire format (D-Bus specification, "Message Protocol"): a 16-byte fixed header
//! (endianness, type, flags, version, body length, serial), an array of `(code, variant)`
//! header fields, padding to 8, the body; every value aligned to its size relative to the
//! message start. [`MessageWriter`] and [`Incoming::parse`] are pure; [`SystemBus`] does the
//! blocking socket I/O around them.
//!
//! Everything read from the bus is bounded (message size, fields, strings) and parsed
//! without trusting lengths: a hostile or broken bus gets an error, never a panic or a hang
//! (reads time out).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The largest message we accept from the bus (replies here are tiny).
const MAX_MESSAGE: usize = 1 << 20;
/// Messages read while waiting for one reply (signals such as `NameAcquired` come first).
const MAX_SKIPPED: usize = 256;
/// How long a reply may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the bus.
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    /// Socket trouble (no bus, timeout, closed).
    #[error("D-Bus I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bus refused our authentication.
    #[error("D-Bus authentication refused: {0}")]
    Auth(String),
    /// A message that does not parse.
    #[error("malformed D-Bus message: {0}")]
    Malformed(&'static str),
    /// The callee answered with an error.
    #[error("{name}: {text}")]
    Remote {
        /// Error name (`org.freedesktop.resolve1.NoSuchLink`, …).
        name: String,
        /// Its message.
        text: String,
    },
    /// A string we were asked to send holds a NUL byte.
    #[error("a D-Bus string cannot hold a NUL byte: {0:?}")]
    Nul(String),
}

/// Builds a message body or header, aligning each value relative to the message start (a
/// body starts 8-aligned, so aligning relative to the body is the same).
#[derive(Default)]
pub struct MessageWriter {
    buf: Vec<u8>,
}

impl MessageWriter {
    /// The bytes so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    /// `y`.
    pub fn byte(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// `u`.
    pub fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend(v.to_le_bytes());
    }

    /// `i`.
    pub fn i32(&mut self, v: i32) {
        self.pad(4);
        self.buf.extend(v.to_le_bytes());
    }

    /// `b` (a 32-bit 0 or 1).
    pub fn bool(&mut self, v: bool) {
        self.u32(u32::from(v));
    }

    /// `s` or `o`.
    pub fn string(&mut self, s: &str) -> Result<(), DbusError> {
        if s.contains('\0') {
            return Err(DbusError::Nul(s.to_owned()));
        }
        self.u32(s.len() as u32);
        self.buf.extend(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    /// `g` (at most 255 bytes, as the format allows).
    pub fn signature(&mut self, s: &str) {
        let s = &s.as_bytes()[..s.len().min(255)];
        self.buf.push(s.len() as u8);
        self.buf.extend(s);
        self.buf.push(0);
    }

    /// `a…`: the length, padding to the elements' alignment, then what `f` writes.
    pub fn array(
        &mut self,
        elem_align: usize,
        f: impl FnOnce(&mut MessageWriter) -> Result<(), DbusError>,
    ) -> Result<(), DbusError> {
        self.pad(4);
        let at = self.buf.len();
        self.buf.extend([0; 4]);
        self.pad(elem_align);
        let start = self.buf.len();
        f(self)?;
        let len = (self.buf.len() - start) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// `(…)`: aligned to 8, then what `f` writes.
    pub fn structure(
        &mut self,
        f: impl FnOnce(&mut MessageWriter) -> Result<(), DbusError>,
    ) -> Result<(), DbusError> {
        self.pad(8);
        f(self)
    }

    /// `ay`.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), DbusError> {
        self.array(1, |w| {
            w.buf.extend(b);
            Ok(())
        })
    }
}

/// A method call: `serial`, destination, object path, interface, member, the body's
/// signature and the body (as a [`MessageWriter`] wrote it).
pub fn method_call(
    serial: u32,
    destination: &str,
    path: &str,
    interface: &str,
    member: &str,
    signature: &str,
    body: &[u8],
) -> Result<Vec<u8>, DbusError> {
    let mut w = MessageWriter::default();
    // Little-endian, METHOD_CALL, no flags, protocol version 1.
    for b in [b'l', 1, 0, 1] {
        w.byte(b);
    }
    w.u32(body.len() as u32);
    w.u32(serial);
    w.array(8, |w| {
        let field = |w: &mut MessageWriter, code: u8, sig: &str, value: &str| {
            w.structure(|w| {
                w.byte(code);
                w.signature(sig);
                if sig == "g" {
                    w.signature(value);
                    Ok(())
                } else {
                    w.string(value)
                }
            })
        };
        field(w, 1, "o", path)?;
        field(w, 6, "s", destination)?;
        field(w, 2, "s", interface)?;
        field(w, 3, "s", member)?;
        if !signature.is_empty() {
            field(w, 8, "g", signature)?;
        }
        Ok(())
    })?;
    w.pad(8);
    w.buf.extend(body);
    Ok(w.buf)
}

/// A message read from the bus, as far as a caller waiting for a reply cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// 1 call, 2 return, 3 error, 4 signal.
    pub kind: u8,
    /// The serial of the call this answers.
    pub reply_serial: Option<u32>,
    /// An error's name.
    pub error_name: Option<String>,
    /// An error's message (its body's first string).
    pub error_text: Option<String>,
}

/// Reads values out of a message, every length checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    big_endian: bool,
}

impl Reader<'_> {
    fn align(&mut self, a: usize) -> Result<(), DbusError> {
        let to = self.at.div_ceil(a) * a;
        if to > self.buf.len() {
            return Err(DbusError::Malformed("padding past the end"));
        }
        self.at = to;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DbusError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DbusError::Malformed("value past the end"))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DbusError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DbusError> {
        self.align(4)?;
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| DbusError::Malformed("u32"))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn string(&mut self) -> Result<String, DbusError> {
        let n = self.u32()? as usize;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }

    fn signature(&mut self) -> Result<String, DbusError> {
        let n = self.u8()? as usize;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }
}

impl Incoming {
    /// The length of the whole message whose first 16 bytes are `head`.
    pub fn total_len(head: &[u8; 16]) -> Result<usize, DbusError> {
        let big = match head[0] {
            b'l' => false,
            b'B' => true,
            _ => return Err(DbusError::Malformed("unknown endianness")),
        };
        let word = |i: usize| {
            let b = [head[i], head[i + 1], head[i + 2], head[i + 3]];
            (if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }) as usize
        };
        let (body, fields) = (word(4), word(12));
        let total = (16 + fields).div_ceil(8) * 8 + body;
        if fields > MAX_MESSAGE || body > MAX_MESSAGE || total > MAX_MESSAGE {
            return Err(DbusError::Malformed("message too large"));
        }
        Ok(total)
    }

    /// Parses a whole message.
    pub fn parse(msg: &[u8]) -> Result<Incoming, DbusError> {
        let head: &[u8; 16] = msg
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .ok_or(DbusError::Malformed("short header"))?;
        if Incoming::total_len(head)? != msg.len() {
            return Err(DbusError::Malformed("length does not match the header"));
        }
        let mut r = Reader {
            buf: msg,
            at: 12,
            big_endian: msg[0] == b'B',
        };
        let kind = msg[1];
        let fields_len = r.u32()? as usize;
        let fields_end = 16 + fields_len;
        let mut m = Incoming {
            kind,
            reply_serial: None,
            error_name: None,
            error_text: None,
        };
        let mut body_sig = String::new();
        while r.at < fields_end {
            r.align(8)?;
            if r.at >= fields_end {
                break;
            }
            let code = r.u8()?;
            let sig = r.signature()?;
            match sig.as_str() {
                "u" => {
                    let v = r.u32()?;
                    if code == 5 {
                        m.reply_serial = Some(v);
                    }
                }
                "s" | "o" => {
                    let v = r.string()?;
                    if code == 4 {
                        m.error_name = Some(v);
                    }
                }
                "g" => {
                    let v = r.signature()?;
                    if code == 8 {
                        body_sig = v;
                    }
                }
                _ => return Err(DbusError::Malformed("unexpected header field type")),
            }
        }
        if r.at != fields_end {
            return Err(DbusError::Malformed("header fields overrun"));
        }
        r.at = fields_end;
        r.align(8)?;
        if kind == 3 && body_sig.starts_with('s') {
            m.error_text = Some(r.string()?);
        }
        Ok(m)
    }
}

/// A connection to the system bus, authenticated, with a unique name.
pub struct SystemBus {
    stream: BufReader<UnixStream>,
    serial: u32,
}

impl SystemBus {
    /// The system bus's socket: `DBUS_SYSTEM_BUS_ADDRESS` (`unix:path=…`) or the standard one.
    fn socket_path() -> String {
        std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .ok()
            .and_then(|a| {
                a.split(';')
                    .find_map(|one| one.strip_prefix("unix:path=").map(str::to_owned))
            })
            .map(|p| p.split(',').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "/run/dbus/system_bus_socket".to_owned())
    }

    /// Connects and authenticates (EXTERNAL: the kernel vouches for our uid) and says Hello.
    pub fn connect() -> Result<SystemBus, DbusError> {
        let stream = UnixStream::connect(Self::socket_path())?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut bus = SystemBus {
            stream: BufReader::new(stream),
            serial: 0,
        };
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        let s = bus.stream.get_mut();
        s.write_all(b"\0")?;
        s.write_all(format!("AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = String::new();
        (&mut bus.stream).take(512).read_line(&mut line)?;
        if !line.starts_with("OK ") {
            return Err(DbusError::Auth(line.trim().to_owned()));
        }
        bus.stream.get_mut().write_all(b"BEGIN\r\n")?;
        bus.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "Hello",
            "",
            &[],
        )?;
        Ok(bus)
    }

    /// Calls a method and waits for its reply (a D-Bus error becomes [`DbusError::Remote`]).
    pub fn call(
        &mut self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), DbusError> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        let msg = method_call(
            serial,
            destination,
            path,
            interface,
            member,
            signature,
            body,
        )?;
        self.stream.get_mut().write_all(&msg)?;
        for _ in 0..MAX_SKIPPED {
            let mut head = [0u8; 16];
            self.stream.read_exact(&mut head)?;
            let total = Incoming::total_len(&head)?;
            let mut msg = head.to_vec();
            msg.resize(total, 0);
            self.stream.read_exact(&mut msg[16..])?;
            let m = Incoming::parse(&msg)?;
            if m.reply_serial != Some(serial) {
                continue;
            }
            return match m.kind {
                2 => Ok(()),
                3 => Err(DbusError::Remote {
                    name: m.error_name.unwrap_or_default(),
                    text: m.error_text.unwrap_or_default(),
                }),
                _ => Err(DbusError::Malformed(
                    "a reply that is neither return nor error",
                )),
            };
        }
        Err(DbusError::Malformed("no reply among the messages read"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_laid_out_as_the_specification_says() {
        let mut body = MessageWriter::default();
        body.i32(7);
        body.array(8, |w| {
            w.structure(|w| {
                w.i32(2);
                w.bytes(&[198, 19, 10, 53])
            })
        })
        .expect("body");
        let body = body.into_bytes();
        // i32 7 | array length 12 | pad to 8 | struct: i32 2, ay (len 4, 4 bytes).
        assert_eq!(
            body,
            [
                7, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 198, 19, 10, 53
            ]
        );
        let msg = method_call(
            3,
            "org.freedesktop.resolve1",
            "/org/freedesktop/resolve1",
            "org.freedesktop.resolve1.Manager",
            "SetLinkDNS",
            "ia(iay)",
            &body,
        )
        .expect("message");
        assert_eq!(&msg[..4], b"l\x01\x00\x01");
        assert_eq!(u32::from_le_bytes(msg[4..8].try_into().expect("4")), 20);
        assert_eq!(u32::from_le_bytes(msg[8..12].try_into().expect("4")), 3);
        // The body starts 8-aligned right after the header fields and ends the message.
        let head: [u8; 16] = msg[..16].try_into().expect("16");
        assert_eq!(Incoming::total_len(&head).expect("len"), msg.len());
        assert!(msg.ends_with(&body));
        assert_eq!((msg.len() - body.len()) % 8, 0);
        // The header as the bus reads it: a call, no reply serial.
        let m = Incoming::parse(&msg).expect("parses");
        assert_eq!(m.kind, 1);
        assert_eq!(m.reply_serial, None);
    }

    /// An error reply as a bus sends it (built here with the writer) parses into its name,
    /// text and the serial it answers.
    #[test]
    fn errors_parse_and_garbage_is_refused() {
        let mut body = MessageWriter::default();
        body.string("Link 9 not known").expect("s");
        let body = body.into_bytes();
        let mut w = MessageWriter::default();
        for b in [b'l', 3, 1, 1] {
            w.byte(b);
        }
        w.u32(body.len() as u32);
        w.u32(40);
        w.array(8, |w| {
            w.structure(|w| {
                w.byte(4);
                w.signature("s");
                w.string("org.freedesktop.resolve1.NoSuchLink")
            })?;
            w.structure(|w| {
                w.byte(5);
                w.signature("u");
                w.u32(3);
                Ok(())
            })?;
            w.structure(|w| {
                w.byte(8);
                w.signature("g");
                w.signature("s");
                Ok(())
            })
        })
        .expect("fields");
        w.pad(8);
        let mut msg = w.into_bytes();
        msg.extend(&body);
        let m = Incoming::parse(&msg).expect("parses");
        assert_eq!(m.kind, 3);
        assert_eq!(m.reply_serial, Some(3));
        assert_eq!(
            m.error_name.as_deref(),
            Some("org.freedesktop.resolve1.NoSuchLink")
        );
        assert_eq!(m.error_text.as_deref(), Some("Link 9 not known"));

        // Every truncation and a few corruptions: errors, never a panic.
        for n in 0..msg.len() {
            assert!(Incoming::parse(&msg[..n]).is_err(), "truncated at {n}");
        }
        let mut huge = msg.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Incoming::parse(&huge).is_err());
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let mut m = msg.clone();
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let i = seed as usize % m.len();
            m[i] = (seed >> 8) as u8;
            let _ = Incoming::parse(&m);
        }
        let mut w = MessageWriter::default();
        assert!(matches!(w.string("a\0b"), Err(DbusError::Nul(_))));
    }
}
