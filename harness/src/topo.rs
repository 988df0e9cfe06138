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
