//! Capturing every interface of a namespace, and writing one pcapng per run.
//!
//! One `AF_PACKET`/`ETH_P_ALL` socket per namespace, opened on a thread inside it and bound to
//! no interface, sees every interface there — also ones created later, like `tun0` — with
//! kernel timestamps (`SO_TIMESTAMPNS`, wall clock, the same clock as the engines' stage
//! taps). Loopback packets appear twice to such a socket; only the outgoing copy is kept.
//!
//! [`write_run_pcapng`] merges the frames of all namespaces with the engines' stage taps
//! (their own pcapng files) into one file, ordered by time: one Interface Description Block
//! per `<host>/<interface>` and per `<host>/<stage>`, so Wireshark and tshark name every
//! packet's origin.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use serde::Serialize;

use tunscope_capture::file::LinkType;

use crate::netns::{Netns, ifname};

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Interface name as `<host>/<ifname>` (`client/eth0`) or `<host>/<stage>`.
    pub iface: String,
    /// Link layer.
    pub link: LinkType,
    /// Wall-clock timestamp, ns since the epoch.
    pub ts_ns: u64,
    /// Sent by the namespace (`true`) or received; `None` for engine stage taps.
    pub outgoing: Option<bool>,
    /// The bytes (possibly cut at the snap length).
    pub data: Vec<u8>,
    /// Length on the wire.
    pub orig_len: u32,
    /// Comment (engine taps: trace id, stage time …).
    pub comment: Option<String>,
}

/// What one namespace's capture got.
#[derive(Debug, Default)]
pub struct Captured {
    /// Frames in arrival order.
    pub frames: Vec<Frame>,
    /// Packets the kernel dropped because the socket buffer was full.
    pub kernel_drops: u32,
    /// Packets not kept because the memory bound was reached.
    pub over_limit: u64,
}

/// Upper bound of captured bytes kept per namespace (bounded memory on long transfers).
const MAX_BYTES: usize = 256 << 20;
const SNAPLEN: usize = 256 * 1024;

/// A running capture of one namespace.
pub struct NsCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Captured>>>,
}

impl NsCapture {
    /// Starts capturing every interface of `ns`; frames are named `<host>/<ifname>`.
    /// Frames are cut at `snaplen` bytes when given (their wire length kept).
    pub fn start(ns: &Netns, host: &str, snaplen: Option<usize>) -> Result<NsCapture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (st, host) = (Arc::clone(&stop), host.to_owned());
        let thread = ns.spawn(move || {
            let fd = match open_socket() {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(()));
            capture_loop(&fd, &host, &st, snaplen.unwrap_or(SNAPLEN))
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("capture in {}: {e}", ns.name()),
            Err(_) => anyhow::bail!("capture in {} did not start", ns.name()),
        }
        Ok(NsCapture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after draining what the kernel has queued, and returns the frames.
    pub fn finish(mut self) -> Result<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().context("capture already finished")?;
        t.join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
    }
}

impl Drop for NsCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket() -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    let rcvbuf: libc::c_int = 16 << 20;
    // SAFETY: valid fd, an int option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_VNET_HDR");
    }
    // SAFETY: valid fd, option values of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        // Root may exceed rmem_max with the FORCE variant.
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    Ok(fd)
}

fn capture_loop(fd: &OwnedFd, host: &str, stop: &AtomicBool, snaplen: usize) -> Result<Captured> {
    let mut out = Captured::default();
    let mut kept = 0usize;
    let mut names: BTreeMap<i32, String> = BTreeMap::new();
    let mut buf = vec![0u8; SNAPLEN];
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, if stopping { 0 } else { 50 }) };
        if ready <= 0 {
            if stopping {
                break;
            }
            continue;
        }
        let Some(r) = recv_frame(fd, &mut buf) else {
            continue;
        };
        let is_loopback = r.hatype == libc::ARPHRD_LOOPBACK;
        if is_loopback && r.pkttype != libc::PACKET_OUTGOING {
            continue;
        }
        if kept + r.caplen.min(snaplen) > MAX_BYTES {
            out.over_limit += 1;
            continue;
        }
        kept += r.caplen.min(snaplen);
        // Interface indexes are resolved while the interface exists (tun0 goes away at the
        // end); a new device reusing an index keeps the first name, which is rare enough.
        let name = names
            .entry(r.ifindex)
            .or_insert_with(|| ifname(r.ifindex as u32))
            .clone();
        let link_len = if r.hatype == libc::ARPHRD_NONE { 0 } else { 14 };
        let data = &buf[VNET_HDR_LEN..VNET_HDR_LEN + r.caplen];
        // A GSO super-packet (tun offloads, TCP on lo) becomes the packets a NIC would send.
        let segments = match r.gso {
            Some(gso) if r.caplen == r.len => segment(data, link_len, gso),
            _ => None,
        };
        let frames = segments.unwrap_or_else(|| vec![data.to_vec()]);
        let whole = frames.len() == 1;
        for mut d in frames {
            let orig_len = if whole { r.len as u32 } else { d.len() as u32 };
            d.truncate(snaplen);
            out.frames.push(Frame {
                iface: format!("{host}/{name}"),
                link: if r.hatype == libc::ARPHRD_NONE {
                    LinkType::Raw
                } else {
                    LinkType::Ethernet
                },
                ts_ns: r.ts_ns,
                outgoing: Some(r.pkttype == libc::PACKET_OUTGOING),
                orig_len,
                data: d,
                comment: None,
            });
        }
    }
    out.kernel_drops = packet_drops(fd);
    Ok(out)
}

/// `struct virtio_net_hdr` in front of every packet (PACKET_VNET_HDR): carries the GSO
/// type and segment size of super-packets.
const VNET_HDR_LEN: usize = 10;

#[derive(Clone, Copy)]
struct Gso {
    tcp: bool,
    size: usize,
}

struct Received {
    len: usize,
    caplen: usize,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    ts_ns: u64,
    gso: Option<Gso>,
}

fn checksum_v4_header(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Cuts a TCP or UDP GSO super-packet into wire-sized packets: headers copied, lengths,
/// IPv4 ids and checksums, TCP sequence numbers and flags adjusted (transport checksums
/// are left as the sender's offload left them, as in any offloaded capture).
fn segment(data: &[u8], link_len: usize, gso: Gso) -> Option<Vec<Vec<u8>>> {
    let ip = data.get(link_len..)?;
    let v4 = ip.first()? >> 4 == 4;
    let ip_len = if v4 {
        usize::from(ip[0] & 0x0f) * 4
    } else {
        40
    };
    let l4 = ip.get(ip_len..)?;
    let l4_len = if gso.tcp {
        usize::from(l4.get(12)? >> 4) * 4
    } else {
        8
    };
    let hdr = link_len + ip_len + l4_len;
    let payload = data.get(hdr..)?;
    if gso.size == 0 || payload.len() <= gso.size {
        return None;
    }
    let chunks: Vec<&[u8]> = payload.chunks(gso.size).collect();
    let n = chunks.len();
    let id = u16::from_be_bytes([ip[4], ip[5]]);
    let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
    let mut out = Vec::with_capacity(n);
    for (i, c) in chunks.into_iter().enumerate() {
        let mut p = Vec::with_capacity(hdr + c.len());
        p.extend_from_slice(&data[..hdr]);
        p.extend_from_slice(c);
        let total = ip_len + l4_len + c.len();
        let iph = &mut p[link_len..link_len + ip_len];
        if v4 {
            iph[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            iph[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            checksum_v4_header(iph);
        } else {
            iph[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let t = &mut p[link_len + ip_len..hdr];
        if gso.tcp {
            let s = seq.wrapping_add((i * gso.size) as u32);
            t[4..8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < n {
                t[13] &= !0x09; // FIN and PSH only on the last segment
            }
            if i > 0 {
                t[13] &= !0x80; // CWR only on the first
            }
        } else {
            t[4..6].copy_from_slice(&((8 + c.len()) as u16).to_be_bytes());
        }
        out.push(p);
    }
    Some(out)
}

fn recv_frame(fd: &OwnedFd, buf: &mut [u8]) -> Option<Received> {
    // SAFETY: zeroed sockaddr_ll and msghdr are valid initial values.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cmsg);
    // SAFETY: msg points at live buffers of the sizes given. MSG_TRUNC makes the return value
    // the packet's full length.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    let len = n as usize;
    let mut ts_ns = 0u64;
    // SAFETY: walking the control messages the kernel filled in, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if len < VNET_HDR_LEN {
        return None;
    }
    let v = &buf[..VNET_HDR_LEN];
    // gso_type: 1 TCPv4, 4 TCPv6, 3 UDP (UFO), 5 UDP_L4 (USO); 0x80 is the ECN bit.
    let gso = match v[1] & 0x7f {
        1 | 4 => Some(true),
        3 | 5 => Some(false),
        _ => None,
    }
    .map(|tcp| Gso {
        tcp,
        size: usize::from(u16::from_le_bytes([v[4], v[5]])),
    });
    let len = len - VNET_HDR_LEN;
    if ts_ns == 0 {
        ts_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    Some(Received {
        len,
        caplen: len.min(buf.len() - VNET_HDR_LEN),
        ifindex: addr.sll_ifindex,
        hatype: addr.sll_hatype,
        pkttype: addr.sll_pkttype,
        ts_ns,
        gso,
    })
}

/// Frames the kernel dropped on an AF_PACKET socket since the last call (the socket's
/// buffer was full: its reader fell behind).
pub(crate) fn packet_drops(fd: &OwnedFd) -> u32 {
    // SAFETY: tpacket_stats is plain data; the kernel fills it.
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tpacket_stats>() as u32;
    // SAFETY: valid fd and buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if r == 0 { st.tp_drops } else { 0 }
}

/// Reads a pcapng file written by an engine's stage tap (or any capture) into frames.
pub fn read_pcapng_frames(path: &Path) -> Result<Vec<Frame>> {
    let cap = tunscope_capture::file::read(path)?;
    Ok(cap
        .records
        .into_iter()
        .map(|r| {
            let iface = cap.ifaces.get(r.iface);
            Frame {
                iface: iface.map_or_else(|| format!("if{}", r.iface), |i| i.name.clone()),
                link: iface.map_or(LinkType::Raw, |i| i.link),
                ts_ns: r.ts_ns,
                outgoing: r.outgoing,
                data: r.data,
                orig_len: r.orig_len,
                comment: r.comment,
            }
        })
        .collect())
}

/// What went into a run's pcapng.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PcapngSummary {
    /// Interface names in IDB order.
    pub interfaces: Vec<String>,
    /// Packets written.
    pub packets: usize,
}

/// Writes frames (any order) to one pcapng: interfaces in `order` first (those present),
/// then the rest by name; packets by time.
pub fn write_run_pcapng(out: &Path, frames: &mut [Frame], order: &[&str]) -> Result<PcapngSummary> {
    frames.sort_by_key(|f| f.ts_ns);
    let mut names: Vec<(String, LinkType)> = vec![];
    for f in frames.iter() {
        if !names.iter().any(|(n, _)| n == &f.iface) {
            names.push((f.iface.clone(), f.link));
        }
    }
    let host_rank = |n: &str| {
        let host = n.split('/').next().unwrap_or("");
        order.iter().position(|h| *h == host).unwrap_or(order.len())
    };
    names.sort_by(|a, b| (host_rank(&a.0), &a.0).cmp(&(host_rank(&b.0), &b.0)));
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = PcapNgWriter::new(BufWriter::new(file)).context("writing pcapng header")?;
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, (name, link)) in names.iter().enumerate() {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: link.datalink(),
            snaplen: SNAPLEN as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(name.as_str())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        ids.insert(name.as_str(), i as u32);
    }
    for f in frames.iter() {
        let Some(&id) = ids.get(f.iface.as_str()) else {
            continue;
        };
        let mut options = vec![];
        if let Some(c) = &f.comment {
            options.push(EnhancedPacketOption::Comment(Cow::Borrowed(c.as_str())));
        }
        // Direction as the epb_flags inbound (1) / outbound (2) bits.
        if let Some(out) = f.outgoing {
            options.push(EnhancedPacketOption::Flags(if out { 2 } else { 1 }));
        }
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(f.ts_ns),
            original_len: f.orig_len,
            data: Cow::Borrowed(&f.data),
            options,
        })?;
    }
    w.into_inner()
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(PcapngSummary {
        interfaces: names.into_iter().map(|(n, _)| n).collect(),
        packets: frames.len(),
    })
}
