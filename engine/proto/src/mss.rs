//! TCP MSS clamping of tunnel packets (`mssfix`).
//!
//! TCP SYN and SYN-ACK packets crossing the tunnel get their MSS option lowered so that full
//! segments plus the tunnel overhead fit the link without IP fragmentation. The checksum is
//! updated incrementally (RFC 1624). Packets that are not plain TCP SYNs pass untouched.

/// Lowers the MSS option of a TCP SYN in an IPv4 or IPv6 packet to at most `mss_v4` (IPv4)
/// or `mss_v4 - 20` (IPv6). Returns true when the packet was changed.
pub fn clamp(packet: &mut [u8], mss_v4: u16) -> bool {
    let Some(&v) = packet.first() else {
        return false;
    };
    let (tcp_off, mss) = match v >> 4 {
        4 => {
            let ihl = usize::from(v & 0x0f) * 4;
            // Protocol TCP, not a fragment.
            if packet.len() < ihl + 20
                || ihl < 20
                || packet[9] != 6
                || packet[6] & 0x1f != 0
                || packet[7] != 0
            {
                return false;
            }
            (ihl, mss_v4)
        }
        6 => {
            if packet.len() < 60 || packet[6] != 6 {
                return false;
            }
            (40, mss_v4.saturating_sub(20))
        }
        _ => return false,
    };
    let tcp = &mut packet[tcp_off..];
    if tcp[13] & 0x02 == 0 {
        return false;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < 20 || tcp.len() < data_off {
        return false;
    }
    let mut i = 20;
    while i < data_off {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > data_off {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                    let sum = u16::from_be_bytes([tcp[16], tcp[17]]);
                    let new_sum = checksum_adjust(sum, old, mss);
                    tcp[16..18].copy_from_slice(&new_sum.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// RFC 1624 incremental update: HC' = ~(~HC + ~m + m').
fn checksum_adjust(sum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full ones-complement checksum over the TCP segment with the IPv4 pseudo-header.
    fn tcp_checksum_v4(p: &[u8]) -> u16 {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let tcp = &p[ihl..];
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from(c[0]) << 8
                };
                sum += u32::from(w);
            }
        };
        add(&p[12..20]);
        add(&[0, 6]);
        add(&(tcp.len() as u16).to_be_bytes());
        add(tcp);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn syn(mss: u16) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 19, 0, 2, 198, 19, 0, 1, // IPv4
            0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0,
            0, // TCP, doff 6
            2, 4, 0, 0, // MSS option
        ];
        p[42..44].copy_from_slice(&mss.to_be_bytes());
        let c = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn clamps_syn_and_keeps_checksum_valid() {
        let mut p = syn(1460);
        assert!(clamp(&mut p, 1400));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1400);
        assert_eq!(tcp_checksum_v4(&p), 0, "checksum verifies to zero");
        // Already small enough: untouched.
        let mut q = syn(1200);
        assert!(!clamp(&mut q, 1400));
        assert_eq!(q, syn(1200));
    }

    #[test]
    fn ignores_non_syn_and_garbage() {
        let mut p = syn(1460);
        p[33] = 0x10; // ACK only
        assert!(!clamp(&mut p, 1400));
        for n in 0..44 {
            let mut t = syn(1460)[..n].to_vec();
            clamp(&mut t, 1400);
        }
        assert!(!clamp(&mut [], 1400));
        assert!(!clamp(&mut [0x60; 10], 1400));
    }
}
