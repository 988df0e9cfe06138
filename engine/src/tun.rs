//! The tun device: creation, addresses and MTU, and batched reads and writes.
//!
//! With offload on (`IFF_VNET_HDR` + TSO), one `read()` returns a TCP super-packet of up to
//! 64 KiB that tun-rs splits into MTU-sized segments, and decrypted segments of one flow are
//! coalesced into one `write()` (GRO). That turns tens of syscalls into one, which is where a
//! userspace tunnel's time goes. Offload falls back to plain tun when the kernel refuses it.
//!
//! [`Tun::memory`] gives a device without the kernel (wireguard-go's `tun/tuntest`): the
//! test holds the other end ([`MemTunHandle`]), writes packets the engine reads and reads
//! what the engine writes. The in-process tier runs the data path on it without root.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use tun_rs::{DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Largest packet a tun read can return (a GSO super-packet plus its virtio header).
const SUPER_PACKET: usize = VIRTIO_NET_HDR_LEN + 65535;

/// A tun device.
pub struct Tun {
    dev: Device,
    /// Further queues of a multi-queue device (queue 1, 2, …), each read by a send thread
    /// of its own; the kernel picks a packet's queue by its flow.
    queues: Vec<SyncDevice>,
    offload: bool,
    name: String,
    /// The MTU last applied (readers size their buffers by it).
    mtu: std::sync::atomic::AtomicU16,
}

enum Device {
    Kernel(SyncDevice),
    Memory(MemTun),
}

/// How many packets an in-memory device holds in each direction.
const MEM_QUEUE: usize = 4096;

/// The engine's end of an in-memory device.
struct MemTun {
    /// Packets "the kernel" sends into the tunnel.
    inbound: Mutex<Receiver<Vec<u8>>>,
    /// Packets the engine delivers.
    outbound: SyncSender<Vec<u8>>,
}

/// The test's end of an in-memory device: what the kernel's side of a tun would do.
pub struct MemTunHandle {
    /// Packets to send into the tunnel (the engine reads them at read_tun).
    pub to_engine: SyncSender<Vec<u8>>,
    /// Packets the engine wrote (write_tun).
    pub from_engine: Receiver<Vec<u8>>,
}

/// Addresses for the tun device, from the pushed `ifconfig` / `ifconfig-ipv6`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunAddresses {
    /// IPv4 address, prefix length, and point-to-point peer (net30/p2p topologies).
    pub ipv4: Option<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
    /// IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
}

impl Tun {
    /// Creates the device. `name` of `tun`/`tap` (or `None`) lets the kernel pick `tunN` /
    /// `tapN`; a name that exists already as a persistent device (`ip tuntap add`, e.g. a
    /// port of a bridge) is opened. `tap` makes a layer-2 device (Ethernet frames), without
    /// offload: the segmentation offload splits IP packets only.
    pub fn create(name: Option<&str>, mtu: u16, offload: bool, tap: bool) -> io::Result<Tun> {
        Tun::create_queues(name, mtu, offload, tap, 1)
    }

    /// Like [`Tun::create`], with `queues` queues (`IFF_MULTI_QUEUE`) when more than one is
    /// asked for and the device allows it (a persistent device made without multi-queue
    /// does not: one queue then).
    pub fn create_queues(
        name: Option<&str>,
        mtu: u16,
        offload: bool,
        tap: bool,
        queues: usize,
    ) -> io::Result<Tun> {
        let offload = offload && !tap;
        let multi = queues > 1;
        let build = |offload: bool, multi: bool| {
            let mut b = DeviceBuilder::new()
                .mtu(mtu)
                .offload(offload)
                .multi_queue(multi);
            if tap {
                b = b.layer(tun_rs::Layer::L2);
            }
            if let Some(n) = name.filter(|n| *n != "tun" && *n != "tap") {
                b = b.name(n);
            }
            b.build_sync()
        };
        let (dev, multi) = match build(offload, multi) {
            Ok(d) => (Ok(d), multi),
            Err(e) if multi => {
                tracing::warn!("multi-queue tun unavailable ({e}); one queue");
                (build(offload, false), false)
            }
            Err(e) => (Err(e), multi),
        };
        let (dev, offload) = match dev {
            Ok(d) => (d, offload),
            Err(e) if offload => {
                tracing::warn!("tun offload unavailable ({e}); using plain tun");
                (build(false, multi)?, false)
            }
            Err(e) => return Err(e),
        };
        let mut more = vec![];
        for _ in 1..queues.max(1) {
            if !multi {
                break;
            }
            match dev.try_clone() {
                Ok(q) => more.push(q),
                Err(e) => {
                    tracing::warn!("tun queue {} not opened ({e})", more.len() + 1);
                    break;
                }
            }
        }
        let name = dev.name()?;
        Ok(Tun {
            dev: Device::Kernel(dev),
            queues: more,
            offload,
            name,
            mtu: std::sync::atomic::AtomicU16::new(mtu),
        })
    }

    /// An in-memory device named `name` (no kernel, no root) and the test's end of it.
    pub fn memory(name: &str, mtu: u16) -> (Tun, MemTunHandle) {
        let (to_engine, inbound) = std::sync::mpsc::sync_channel(MEM_QUEUE);
        let (outbound, from_engine) = std::sync::mpsc::sync_channel(MEM_QUEUE);
        let tun = Tun {
            dev: Device::Memory(MemTun {
                inbound: Mutex::new(inbound),
                outbound,
            }),
            queues: vec![],
            offload: false,
            name: name.to_owned(),
            mtu: std::sync::atomic::AtomicU16::new(mtu),
        };
        (
            tun,
            MemTunHandle {
                to_engine,
                from_engine,
            },
        )
    }

    /// True for an in-memory device (nothing to configure in the kernel).
    pub fn is_memory(&self) -> bool {
        matches!(self.dev, Device::Memory(_))
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU last applied.
    pub fn mtu(&self) -> u16 {
        self.mtu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many queues the device was opened with (one send thread each).
    pub fn queues(&self) -> usize {
        1 + self.queues.len()
    }

    /// The kernel device of queue `q` (queue 0 is the one everything else uses).
    fn queue(&self, q: usize) -> io::Result<&SyncDevice> {
        match (&self.dev, q) {
            (Device::Kernel(dev), 0) => Some(dev),
            (Device::Kernel(_), q) => self.queues.get(q - 1),
            (Device::Memory(_), _) => None,
        }
        .ok_or_else(|| io::Error::other(format!("no tun queue {q}")))
    }

    /// True when TSO/GRO offload is active.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Applies addresses and MTU and brings the link up.
    pub fn configure(&self, addrs: &TunAddresses, mtu: u16) -> io::Result<()> {
        self.mtu.store(mtu, std::sync::atomic::Ordering::Relaxed);
        let Device::Kernel(dev) = &self.dev else {
            return Ok(());
        };
        dev.set_mtu(mtu)?;
        if let Some((addr, prefix, peer)) = addrs.ipv4 {
            dev.set_network_address(addr, prefix, peer)?;
        }
        if let Some((addr, prefix)) = addrs.ipv6 {
            match dev.add_address_v6(addr, prefix) {
                Ok(()) => {}
                // Re-applying the same address after a reconnect is fine.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        dev.enabled(true)
    }

    /// Switches the fd to non-blocking mode (reads return `WouldBlock` instead of waiting).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        for q in &self.queues {
            q.set_nonblocking(true)?;
        }
        match &self.dev {
            Device::Kernel(dev) => dev.set_nonblocking(true),
            Device::Memory(_) => Ok(()),
        }
    }

    /// Waits up to `idle` until the device has a packet to read; an in-memory device hands
    /// over the packet it waited for (kept for the next read).
    fn wait_readable(&self, queue: usize, idle: Duration) -> Option<Vec<u8>> {
        match &self.dev {
            Device::Kernel(_) => {
                if let Ok(dev) = self.queue(queue) {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(dev);
                    let _ = crate::poll::wait_readable(fd, idle);
                }
                None
            }
            Device::Memory(m) => {
                let rx = m.inbound.lock().unwrap_or_else(|e| e.into_inner());
                rx.recv_timeout(idle).ok()
            }
        }
    }
}

/// Reads batches of packets from the tun device.
pub struct TunReader {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Number of valid packets in `bufs`.
    len: usize,
    /// A packet an in-memory device handed over while we waited for it.
    pending: Option<Vec<u8>>,
    /// The device queue it reads.
    queue: usize,
}

impl TunReader {
    /// A reader for packets of up to `mtu` bytes.
    pub fn new(mtu: u16) -> TunReader {
        TunReader::on_queue(mtu, 0)
    }

    /// A reader of queue `queue` of a multi-queue device.
    pub fn on_queue(mtu: u16, queue: usize) -> TunReader {
        TunReader {
            raw: vec![0; SUPER_PACKET],
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| vec![0; usize::from(mtu).max(1500) + 64])
                .collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
            len: 0,
            pending: None,
            queue,
        }
    }

    /// The data threads' read: a batch, or `None` after waiting up to `idle` for the device
    /// to become readable (so the caller can check for shutdown) or after a read error
    /// (logged, then a short pause so a broken device does not spin).
    pub fn next_batch(
        &mut self,
        tun: &Tun,
        max: usize,
        idle: std::time::Duration,
    ) -> Option<usize> {
        match self.read_batch(tun, max) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending = tun.wait_readable(self.queue, idle);
                None
            }
            Err(e) => {
                tracing::warn!("tun read: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            }
        }
    }

    /// Reads until the batch is full or the device has nothing more right now (non-blocking fd).
    /// Returns the number of packets; `WouldBlock` only when not even one packet was read.
    pub fn read_batch(&mut self, tun: &Tun, max: usize) -> io::Result<usize> {
        self.len = 0;
        let max = max.min(IDEAL_BATCH_SIZE);
        let dev = match &tun.dev {
            Device::Kernel(_) => tun.queue(self.queue)?,
            Device::Memory(m) => return self.read_memory(m, max),
        };
        // A super-packet splits into at most 64 KiB / MSS segments; keep room for one more
        // read of that size before stopping.
        while self.len < max {
            let room = &mut self.bufs[self.len..];
            if tun.offload && room.len() < 64 {
                break;
            }
            let sizes = &mut self.sizes[self.len..];
            match dev.recv_multiple(&mut self.raw, room, sizes, 0) {
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.len > 0 => break,
                Err(e) => return Err(e),
            }
            if !tun.offload && self.len >= max {
                break;
            }
        }
        Ok(self.len)
    }

    fn read_memory(&mut self, m: &MemTun, max: usize) -> io::Result<usize> {
        let rx = m.inbound.lock().unwrap_or_else(|e| e.into_inner());
        let mut take = |p: Vec<u8>, len: &mut usize| {
            let b = &mut self.bufs[*len];
            let n = p.len().min(b.len());
            b[..n].copy_from_slice(&p[..n]);
            self.sizes[*len] = n;
            *len += 1;
        };
        let mut len = 0;
        if let Some(p) = self.pending.take() {
            take(p, &mut len);
        }
        while len < max {
            match rx.try_recv() {
                Ok(p) => take(p, &mut len),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.len = len;
        if len == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(len)
    }

    /// Packet `i` of the last batch.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.sizes[i]]
    }

    /// Packet `i` of the last batch, mutable (for MSS clamping).
    pub fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i][..self.sizes[i]]
    }
}

/// Collects packets and writes them to the tun device in one go, coalescing TCP segments.
pub struct TunWriter {
    /// The device queue it writes to.
    queue: usize,
    gro: GROTable,
    bufs: Vec<Vec<u8>>,
    len: usize,
    offset: usize,
}

impl TunWriter {
    /// A writer for `tun`.
    pub fn new(tun: &Tun) -> TunWriter {
        TunWriter::on_queue(tun, 0)
    }

    /// A writer to queue `queue` of a multi-queue device.
    pub fn on_queue(tun: &Tun, queue: usize) -> TunWriter {
        TunWriter {
            queue,
            gro: GROTable::new(),
            // Room for a whole coalesced super-packet in every buffer: GRO refuses to merge
            // into a buffer that would have to grow, so small buffers meant one write per
            // packet. (Untouched capacity costs address space, not memory.)
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(SUPER_PACKET + VIRTIO_NET_HDR_LEN))
                .collect(),
            len: 0,
            offset: if tun.offload { VIRTIO_NET_HDR_LEN } else { 0 },
        }
    }

    /// True when the batch is full and must be flushed before the next push.
    pub fn is_full(&self) -> bool {
        self.len >= self.bufs.len()
    }

    /// Packets waiting.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Queues a copy of `packet`.
    pub fn push(&mut self, packet: &[u8]) {
        let b = &mut self.bufs[self.len];
        b.clear();
        b.resize(self.offset, 0);
        b.extend_from_slice(packet);
        self.len += 1;
    }

    /// Writes the queued packets. Returns how many were queued.
    pub fn flush(&mut self, tun: &Tun) -> io::Result<usize> {
        let n = self.len;
        self.len = 0;
        if n == 0 {
            return Ok(0);
        }
        match &tun.dev {
            Device::Kernel(_) => tun
                .queue(self.queue)?
                .send_multiple(&mut self.gro, &mut self.bufs[..n], self.offset)
                .map(|_| n),
            Device::Memory(m) => {
                let mut full = false;
                for b in &self.bufs[..n] {
                    match m.outbound.try_send(b[self.offset..].to_vec()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => full = true,
                    }
                }
                if full {
                    Err(io::Error::other("in-memory tun: reader gone or queue full"))
                } else {
                    Ok(n)
                }
            }
        }
    }
}
