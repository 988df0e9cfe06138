//! Tunnel address pools (IPv4 and IPv6) with sticky leases per common name.
//!
//! A client that reconnects gets its previous address back when it is still free (like 2.6
//! with `ifconfig-pool-persist`, kept in memory). Fixed addresses from `ifconfig-push` are
//! reserved for the client that owns them: never leased dynamically while held, nor at all
//! when reserved up front (the server reads every `client-config-dir` file at start), so two
//! clients never share an address. An empty pool is a clear refusal, not a panic.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why no address could be handed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every address is leased.
    #[error("address pool exhausted ({0} addresses in use)")]
    Exhausted(usize),
    /// A fixed address (ifconfig-push) is already used by another client.
    #[error("address {0} is already in use by another client")]
    InUse(String),
    /// A fixed address outside the tunnel network.
    #[error("address {0} is outside the tunnel network")]
    OutOfRange(String),
}

/// A pool over a contiguous range of addresses, as u128 so it serves both families.
#[derive(Clone, Debug)]
struct Range {
    start: u128,
    end: u128,
    /// Addresses never handed out (the server's own).
    excluded: HashSet<u128>,
    /// Addresses handed out only as fixed addresses (`ifconfig-push` in a ccd file).
    reserved: HashSet<u128>,
    /// Fixed addresses held now.
    fixed: HashSet<u128>,
    used: HashSet<u128>,
    last_by_cn: HashMap<String, u128>,
    next: u128,
}

impl Range {
    fn new(start: u128, end: u128, excluded: &[u128]) -> Range {
        Range {
            start,
            end,
            excluded: excluded.iter().copied().collect(),
            reserved: HashSet::new(),
            fixed: HashSet::new(),
            used: HashSet::new(),
            last_by_cn: HashMap::new(),
            next: start,
        }
    }

    fn size(&self) -> u128 {
        self.end - self.start + 1
    }

    fn free(&self, a: u128) -> bool {
        a >= self.start
            && a <= self.end
            && !self.used.contains(&a)
            && !self.excluded.contains(&a)
            && !self.reserved.contains(&a)
            && !self.fixed.contains(&a)
    }

    /// Takes `a` as a fixed address; false when another client holds it (fixed or leased)
    /// or it is the server's.
    fn take_fixed(&mut self, a: u128) -> bool {
        if self.fixed.contains(&a) || self.used.contains(&a) || self.excluded.contains(&a) {
            return false;
        }
        self.fixed.insert(a);
        true
    }

    fn release(&mut self, a: u128) {
        if !self.fixed.remove(&a) {
            self.used.remove(&a);
        }
    }

    fn in_use(&self) -> usize {
        self.used.len() + self.fixed.len()
    }

    fn acquire(&mut self, cn: Option<&str>) -> Option<u128> {
        if let Some(prev) = cn.and_then(|c| self.last_by_cn.get(c)).copied()
            && self.free(prev)
        {
            return self.take(prev, cn);
        }
        // Scan from the rotating cursor so released addresses are not reused at once.
        let size = self.size();
        for i in 0..size.min(1 << 20) {
            let a = self.start + (self.next - self.start + i) % size;
            if self.free(a) {
                self.next = if a == self.end { self.start } else { a + 1 };
                return self.take(a, cn);
            }
        }
        None
    }

    fn take(&mut self, a: u128, cn: Option<&str>) -> Option<u128> {
        self.used.insert(a);
        if let Some(c) = cn {
            self.last_by_cn.insert(c.to_owned(), a);
        }
        Some(a)
    }
}

/// IPv4 pool.
#[derive(Clone, Debug)]
pub struct Pool4 {
    range: Range,
    network: (u32, u8),
    /// False with `nopool` / `server-bridge` without a pool: only fixed addresses.
    dynamic: bool,
}

impl Pool4 {
    /// A pool from `start` to `end` inside `network`, never handing out `server`.
    pub fn new(start: Ipv4Addr, end: Ipv4Addr, network: (Ipv4Addr, u8), server: Ipv4Addr) -> Pool4 {
        Pool4 {
            range: Range::new(
                u128::from(u32::from(start)),
                u128::from(u32::from(end)),
                &[u128::from(u32::from(server))],
            ),
            network: (u32::from(network.0), network.1),
            dynamic: true,
        }
    }

    /// No pool (`nopool`, `server-bridge` in DHCP-proxy mode): clients get a fixed address
    /// from `ifconfig-push` inside `network`, or none.
    pub fn fixed_only(network: (Ipv4Addr, u8), server: Ipv4Addr) -> Pool4 {
        let mut p = Pool4::new(network.0, network.0, network, server);
        p.dynamic = false;
        p
    }

    fn in_network(&self, a: u32) -> bool {
        let (net, prefix) = self.network;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        a & mask == net && a != net && a != net | !mask
    }

    /// Leases an address: `fixed` (ifconfig-push) or one from the pool; none when there
    /// is no pool and no fixed address.
    pub fn lease(
        &mut self,
        cn: Option<&str>,
        fixed: Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>, PoolError> {
        if fixed.is_none() && !self.dynamic {
            return Ok(None);
        }
        self.acquire(cn, fixed).map(Some)
    }

    /// Leases an address: `fixed` (ifconfig-push) or one from the pool.
    pub fn acquire(
        &mut self,
        cn: Option<&str>,
        fixed: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, PoolError> {
        if let Some(f) = fixed {
            let a = u32::from(f);
            if !self.in_network(a) {
                return Err(PoolError::OutOfRange(f.to_string()));
            }
            if !self.range.take_fixed(u128::from(a)) {
                return Err(PoolError::InUse(f.to_string()));
            }
            return Ok(f);
        }
        self.range
            .acquire(cn)
            .map(|a| Ipv4Addr::from(a as u32))
            .ok_or(PoolError::Exhausted(self.range.in_use()))
    }

    /// Keeps `a` for the client whose `ifconfig-push` names it: never leased dynamically.
    pub fn reserve(&mut self, a: Ipv4Addr) {
        self.range.reserved.insert(u128::from(u32::from(a)));
    }

    /// Returns an address.
    pub fn release(&mut self, a: Ipv4Addr) {
        self.range.release(u128::from(u32::from(a)));
    }

    /// Addresses in use.
    pub fn in_use(&self) -> usize {
        self.range.in_use()
    }
}

/// IPv6 pool: base address and the tunnel prefix length.
#[derive(Clone, Debug)]
pub struct Pool6 {
    range: Range,
}

impl Pool6 {
    /// Hands out addresses from `base` to the end of its /`prefix` (at most 65536).
    pub fn new(base: Ipv6Addr, prefix: u8, server: Ipv6Addr) -> Pool6 {
        let b = u128::from(base);
        let host_bits = 128 - u32::from(prefix);
        let last = if host_bits >= 128 {
            u128::MAX
        } else {
            b | ((1u128 << host_bits) - 1)
        };
        let end = last.min(b + 0xffff);
        Pool6 {
            range: Range::new(b, end, &[u128::from(server)]),
        }
    }

    /// Leases an address.
    pub fn acquire(
        &mut self,
        cn: Option<&str>,
        fixed: Option<Ipv6Addr>,
    ) -> Result<Ipv6Addr, PoolError> {
        if let Some(f) = fixed {
            if !self.range.take_fixed(u128::from(f)) {
                return Err(PoolError::InUse(f.to_string()));
            }
            return Ok(f);
        }
        self.range
            .acquire(cn)
            .map(Ipv6Addr::from)
            .ok_or(PoolError::Exhausted(self.range.in_use()))
    }

    /// Keeps `a` for the client whose `ifconfig-ipv6-push` names it.
    pub fn reserve(&mut self, a: Ipv6Addr) {
        self.range.reserved.insert(u128::from(a));
    }

    /// Returns an address.
    pub fn release(&mut self, a: Ipv6Addr) {
        self.range.release(u128::from(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool4 {
        Pool4::new(
            "198.19.0.2".parse().unwrap(),
            "198.19.0.5".parse().unwrap(),
            ("198.19.0.0".parse().unwrap(), 24),
            "198.19.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn hands_out_distinct_addresses_until_exhausted() {
        let mut p = pool();
        let got: Vec<Ipv4Addr> = (0..4)
            .map(|i| p.acquire(Some(&format!("c{i}")), None).unwrap())
            .collect();
        let set: HashSet<_> = got.iter().collect();
        assert_eq!(set.len(), 4);
        assert_eq!(p.acquire(Some("c4"), None), Err(PoolError::Exhausted(4)));
        p.release(got[1]);
        assert_eq!(p.acquire(Some("c5"), None), Ok(got[1]));
    }

    #[test]
    fn sticky_leases_per_common_name() {
        let mut p = pool();
        let a = p.acquire(Some("alice"), None).unwrap();
        let b = p.acquire(Some("bob"), None).unwrap();
        p.release(a);
        p.release(b);
        assert_eq!(p.acquire(Some("bob"), None), Ok(b));
        assert_eq!(p.acquire(Some("alice"), None), Ok(a));
    }

    #[test]
    fn fixed_addresses() {
        let mut p = pool();
        let f: Ipv4Addr = "198.19.0.50".parse().unwrap();
        assert_eq!(p.acquire(Some("x"), Some(f)), Ok(f));
        assert_eq!(
            p.acquire(Some("y"), Some(f)),
            Err(PoolError::InUse(f.to_string()))
        );
        assert!(matches!(
            p.acquire(None, Some("10.0.0.1".parse().unwrap())),
            Err(PoolError::OutOfRange(_))
        ));
        assert!(
            matches!(
                p.acquire(None, Some("198.19.0.1".parse().unwrap())),
                Err(PoolError::InUse(_))
            ),
            "server address"
        );
        p.release(f);
        assert_eq!(p.acquire(Some("y"), Some(f)), Ok(f));
    }

    /// A fixed address inside the pool: while its client holds it, or once it is reserved
    /// from the ccd files, no dynamic lease gets it; a dynamic holder makes the fixed client
    /// a clear refusal, never a shared address.
    #[test]
    fn fixed_addresses_inside_the_pool_are_never_shared() {
        let mut p = pool();
        let f: Ipv4Addr = "198.19.0.3".parse().unwrap();
        assert_eq!(p.acquire(Some("fixed"), Some(f)), Ok(f));
        let dynamic: Vec<Ipv4Addr> = (0..3)
            .map(|i| p.acquire(Some(&format!("d{i}")), None).unwrap())
            .collect();
        assert!(!dynamic.contains(&f), "{dynamic:?}");
        assert_eq!(p.acquire(Some("d3"), None), Err(PoolError::Exhausted(4)));
        // Reserved up front: not leased even while its owner is away.
        let mut p = pool();
        p.reserve(f);
        let dynamic: Vec<Ipv4Addr> = (0..3)
            .map(|i| p.acquire(Some(&format!("d{i}")), None).unwrap())
            .collect();
        assert!(!dynamic.contains(&f));
        assert_eq!(p.acquire(Some("fixed"), Some(f)), Ok(f));
        // Not reserved and taken dynamically first: the fixed client is refused.
        let mut p = pool();
        let first = p.acquire(Some("d"), None).unwrap();
        assert_eq!(
            p.acquire(Some("fixed"), Some(first)),
            Err(PoolError::InUse(first.to_string()))
        );
    }

    #[test]
    fn ipv6_pool() {
        let mut p = Pool6::new(
            "2001:db8::1000".parse().unwrap(),
            64,
            "2001:db8::1".parse().unwrap(),
        );
        let a = p.acquire(Some("a"), None).unwrap();
        let b = p.acquire(Some("b"), None).unwrap();
        assert_eq!(a, "2001:db8::1000".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b, "2001:db8::1001".parse::<Ipv6Addr>().unwrap());
    }
}
