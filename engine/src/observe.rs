//! The observatory of an engine run (client or server): stage counters and histograms, the
//! stage-tap capture, and the control socket / Prometheus endpoints. It spans the whole run,
//! across reconnects, and both roles start it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::capture::{Capture, CaptureConfig};
use crate::report::Observer;
use crate::stats::EngineStats;

/// Options shared by `tunscope client` and `tunscope server`: the observatory.
#[derive(Clone, Debug, Default)]
pub struct ObserveOptions {
    /// Write stage taps to this pcapng file.
    pub capture: Option<PathBuf>,
    /// Keep 1 packet in N in the capture.
    pub capture_sample: u32,
    /// Stop capturing after this many MiB.
    pub capture_max_mb: u64,
    /// Host name used in the capture's interface names.
    pub capture_name: Option<String>,
    /// Unix control socket for `tunscope stats`.
    pub control: Option<PathBuf>,
    /// Address for the Prometheus endpoint.
    pub prometheus: Option<SocketAddr>,
    /// The engine runs a tap device (set from its config, not a flag): captures carry
    /// Ethernet frames.
    pub ethernet: bool,
}

impl ObserveOptions {
    /// The capture configuration, if a capture was asked for.
    pub fn capture_config(&self, default_host: &str) -> Option<CaptureConfig> {
        self.capture.as_ref().map(|p| CaptureConfig {
            path: p.clone(),
            sample: self.capture_sample.max(1),
            max_bytes: if self.capture_max_mb == 0 {
                u64::MAX
            } else {
                self.capture_max_mb << 20
            },
            host: self
                .capture_name
                .clone()
                .unwrap_or_else(|| default_host.to_owned()),
            ethernet: self.ethernet,
        })
    }

    /// Starts what is asked for: counters and the observer always, the stage-tap capture
    /// and the control socket / Prometheus endpoints when configured.
    pub fn start(&self, host: &'static str) -> Result<Observatory> {
        let stats = Arc::new(EngineStats::default());
        let observer = Arc::new(Observer::new(host, Arc::clone(&stats)));
        let capture = match self.capture_config(host) {
            Some(c) => {
                let cap = Capture::start(&c)?;
                observer.set_capture(c.path.display().to_string(), &cap.tap);
                Some(cap)
            }
            None => None,
        };
        let endpoints = crate::control_socket::Endpoints::start(
            Arc::clone(&observer),
            self.control.as_deref(),
            self.prometheus,
        )?;
        Ok(Observatory {
            stats,
            observer,
            capture,
            endpoints,
        })
    }
}

/// The observatory of one engine run (client or server); endpoints stop when dropped.
pub struct Observatory {
    /// Stage counters and histograms.
    pub stats: Arc<EngineStats>,
    /// What reports and the control socket read.
    pub observer: Arc<Observer>,
    /// The stage-tap capture, if asked for.
    pub capture: Option<Capture>,
    /// Control socket and Prometheus endpoints.
    pub endpoints: crate::control_socket::Endpoints,
}
