//! ICMPv6 errors the engine answers with itself: "destination unreachable — no route" for
//! IPv6 packets a client must not send anywhere (`block-ipv6` without IPv6 in the tunnel),
//! so applications fail at once instead of waiting for their timeouts (as OpenVPN does).

/// Most bytes of an ICMPv6 error: the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
const MIN_MTU: usize = 1280;

/// The ICMPv6 "no route to destination" answer to `original` (an IPv6 packet read from the
/// tun device), from its destination to its source. `None` for what must not be answered:
/// not IPv6, too short, an unspecified or multicast source, or an ICMPv6 error itself.
pub fn unreachable_no_route(original: &[u8]) -> Option<Vec<u8>> {
    if original.len() < 40 || original[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = original[8..24].try_into().ok()?;
    let dst: [u8; 16] = original[24..40].try_into().ok()?;
    if src == [0; 16] || src[0] == 0xff {
        return None;
    }
    // Never answer an ICMPv6 error (types below 128) with another.
    if original[6] == 58 && original.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quoted = &original[..original.len().min(MIN_MTU - 40 - 8)];
    let icmp_len = 8 + quoted.len();
    let mut p = vec![0u8; 40 + icmp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    p[6] = 58; // ICMPv6
    p[7] = 255;
    p[8..24].copy_from_slice(&dst);
    p[24..40].copy_from_slice(&src);
    p[40] = 1; // destination unreachable
    p[41] = 0; // no route to destination
    p[48..].copy_from_slice(quoted);
    let sum = checksum(&dst, &src, &p[40..]);
    p[42..44].copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// The ICMPv6 checksum over the pseudo-header and `msg` (its checksum field zero).
fn checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum = sum.wrapping_add(u32::from(w));
        }
    };
    add(src);
    add(dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp6(src: [u8; 16], next: u8, first: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 12];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&12u16.to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
        ]);
        p[40] = first;
        p
    }

    const SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn answers_with_a_valid_no_route() {
        let orig = udp6(SRC, 17, 0);
        let r = unreachable_no_route(&orig).expect("answer");
        assert_eq!(r[6], 58);
        assert_eq!(&r[24..40], &SRC, "back to the sender");
        assert_eq!(&r[8..24], &orig[24..40], "from the unreachable destination");
        assert_eq!((r[40], r[41]), (1, 0));
        assert_eq!(&r[48..], &orig[..]);
        // The checksum verifies: summing with it included gives 0xffff (complement 0).
        let src: [u8; 16] = r[8..24].try_into().unwrap_or_default();
        let dst: [u8; 16] = r[24..40].try_into().unwrap_or_default();
        assert_eq!(checksum(&src, &dst, &r[40..]), 0);
    }

    #[test]
    fn some_packets_are_never_answered() {
        assert!(
            unreachable_no_route(&udp6([0; 16], 17, 0)).is_none(),
            "unspecified source"
        );
        let mut mc = SRC;
        mc[0] = 0xff;
        assert!(
            unreachable_no_route(&udp6(mc, 17, 0)).is_none(),
            "multicast source"
        );
        assert!(
            unreachable_no_route(&udp6(SRC, 58, 1)).is_none(),
            "an ICMPv6 error"
        );
        assert!(
            unreachable_no_route(&udp6(SRC, 58, 128)).is_some(),
            "an echo request"
        );
        assert!(unreachable_no_route(&[0x45; 60]).is_none(), "IPv4");
        let big = {
            let mut p = udp6(SRC, 17, 0);
            p.resize(9000, 7);
            p
        };
        assert_eq!(unreachable_no_route(&big).map(|r| r.len()), Some(MIN_MTU));
    }
}
