//! Small fixed topologies for engine tests. (Scenario topologies come from scenario files.)

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;

use crate::netns::{self, Netns};

/// The client's underlay address in [`TwoHosts`].
pub const CLIENT_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The server's underlay address in [`TwoHosts`].
pub const SERVER_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// Two namespaces, `client` and `server`, joined by a veth pair (`eth0` on both sides,
/// 198.18.1.2/24 ↔ 198.18.1.1/24), plus a scratch directory for configs and logs.
pub struct TwoHosts {
    /// Run prefix of the namespaces.
    pub prefix: String,
    /// Client namespace.
    pub client: Netns,
    /// Server namespace.
    pub server: Netns,
    /// Scratch directory (kept when the test panics, for its logs).
    pub dir: PathBuf,
}

impl TwoHosts {
    /// Builds the topology.
    pub fn new() -> Result<TwoHosts> {
        netns::require_root()?;
        netns::cleanup_stale();
        let prefix = netns::run_prefix();
        let client = Netns::create(&prefix, "c")?;
        let server = Netns::create(&prefix, "s")?;
        netns::veth(&client, "eth0", &server, "eth0")?;
        client.ip(&["addr", "add", &format!("{CLIENT_WAN}/24"), "dev", "eth0"])?;
        server.ip(&["addr", "add", &format!("{SERVER_WAN}/24"), "dev", "eth0"])?;
        let dir = std::env::temp_dir().join("tunscope-tests").join(&prefix);
        std::fs::create_dir_all(&dir)?;
        Ok(TwoHosts {
            prefix,
            client,
            server,
            dir,
        })
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A server namespace and `n` client namespaces on one L2 segment (a bridge in the server
/// namespace): server 198.18.1.1/24 on `br0`, client `i` 198.18.1.(10+i)/24 on its `eth0`.
pub struct Star {
    /// Run prefix.
    pub prefix: String,
    /// The server namespace.
    pub server: Netns,
    /// Client namespaces.
    pub clients: Vec<Netns>,
    /// Scratch directory.
    pub dir: PathBuf,
}

impl Star {
    /// Builds the topology with `n` clients (at most 240).
    pub fn new(n: usize) -> Result<Star> {
        anyhow::ensure!(n <= 240, "at most 240 clients");
        netns::require_root()?;
        netns::cleanup_stale();
        let prefix = netns::run_prefix();
        let server = Netns::create(&prefix, "s")?;
        server.ip(&["link", "add", "br0", "type", "bridge"])?;
        server.ip(&["addr", "add", &format!("{SERVER_WAN}/24"), "dev", "br0"])?;
        server.ip(&["link", "set", "br0", "up"])?;
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let c = Netns::create(&prefix, &format!("c{i}"))?;
            let port = format!("p{i}");
            netns::veth(&c, "eth0", &server, &port)?;
            server.ip(&["link", "set", &port, "master", "br0"])?;
            c.ip(&[
                "addr",
                "add",
                &format!("198.18.1.{}/24", 10 + i),
                "dev",
                "eth0",
            ])?;
            clients.push(c);
        }
        let dir = std::env::temp_dir().join("tunscope-tests").join(&prefix);
        std::fs::create_dir_all(&dir)?;
        Ok(Star {
            prefix,
            server,
            clients,
            dir,
        })
    }

    /// Underlay address of client `i`.
    pub fn client_wan(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, 10 + i as u8)
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
