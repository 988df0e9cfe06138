//! The tun device: creation, addresses and MTU, and batched reads and writes.
//!
//! With offload on (`IFF_VNET_HDR` + TSO), one `read()` returns a TCP super-packet of up to
//! 64 KiB that tun-rs splits into MTU-sized segments, and decrypted segments of one flow are
//! coalesced into one `write()` (GRO). That turns tens of syscalls into one, which is where a
//! userspace tunnel's time goes. Offload falls back to plain tun when the kernel refuses it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Largest packet a tun read can return (a GSO super-packet plus its virtio header).
const SUPER_PACKET: usize = VIRTIO_NET_HDR_LEN + 65535;

/// A tun device.
pub struct Tun {
    dev: SyncDevice,
    offload: bool,
    name: String,
    /// The MTU last applied (readers size their buffers by it).
    mtu: std::sync::atomic::AtomicU16,
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
    /// Creates the device. `name` of `tun` (or `None`) lets the kernel pick `tunN`.
    pub fn create(name: Option<&str>, mtu: u16, offload: bool) -> io::Result<Tun> {
        let build = |offload: bool| {
            let mut b = DeviceBuilder::new().mtu(mtu).offload(offload);
            if let Some(n) = name.filter(|n| *n != "tun") {
                b = b.name(n);
            }
            b.build_sync()
        };
        let (dev, offload) = match build(offload) {
            Ok(d) => (d, offload),
            Err(e) if offload => {
                tracing::warn!("tun offload unavailable ({e}); using plain tun");
                (build(false)?, false)
            }
            Err(e) => return Err(e),
        };
        let name = dev.name()?;
        Ok(Tun {
            dev,
            offload,
            name,
            mtu: std::sync::atomic::AtomicU16::new(mtu),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU last applied.
    pub fn mtu(&self) -> u16 {
        self.mtu.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when TSO/GRO offload is active.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Applies addresses and MTU and brings the link up.
    pub fn configure(&self, addrs: &TunAddresses, mtu: u16) -> io::Result<()> {
        self.dev.set_mtu(mtu)?;
        self.mtu.store(mtu, std::sync::atomic::Ordering::Relaxed);
        if let Some((addr, prefix, peer)) = addrs.ipv4 {
            self.dev.set_network_address(addr, prefix, peer)?;
        }
        if let Some((addr, prefix)) = addrs.ipv6 {
            match self.dev.add_address_v6(addr, prefix) {
                Ok(()) => {}
                // Re-applying the same address after a reconnect is fine.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        self.dev.enabled(true)
    }

    /// Switches the fd to non-blocking mode (reads return `WouldBlock` instead of waiting).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        self.dev.set_nonblocking(true)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Reads batches of packets from the tun device.
pub struct TunReader {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Number of valid packets in `bufs`.
    len: usize,
}

impl TunReader {
    /// A reader for packets of up to `mtu` bytes.
    pub fn new(mtu: u16) -> TunReader {
        TunReader {
            raw: vec![0; SUPER_PACKET],
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| vec![0; usize::from(mtu).max(1500) + 64])
                .collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
            len: 0,
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
                let _ = crate::poll::wait_readable(std::os::fd::AsRawFd::as_raw_fd(tun), idle);
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
        // A super-packet splits into at most 64 KiB / MSS segments; keep room for one more
        // read of that size before stopping.
        while self.len < max {
            let room = &mut self.bufs[self.len..];
            if tun.offload && room.len() < 64 {
                break;
            }
            let sizes = &mut self.sizes[self.len..];
            match tun.dev.recv_multiple(&mut self.raw, room, sizes, 0) {
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
    gro: GROTable,
    bufs: Vec<Vec<u8>>,
    len: usize,
    offset: usize,
}

impl TunWriter {
    /// A writer for `tun`.
    pub fn new(tun: &Tun) -> TunWriter {
        TunWriter {
            gro: GROTable::new(),
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(2048))
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
        tun.dev
            .send_multiple(&mut self.gro, &mut self.bufs[..n], self.offset)
            .map(|_| n)
    }
}
