//! The hypervisor seam: the few things memscale asks of a host. Implemented for real by
//! [`crate::libvirt`]; the simulator has its own model and never imports libvirt.

use crate::units::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    Shutoff,
    Crashed,
    Other,
}

impl RunState {
    /// From libvirt's `virDomainState` numbering.
    pub fn from_libvirt(v: i64) -> RunState {
        match v {
            1 => RunState::Running,
            3 | 7 => RunState::Paused,
            4..=5 => RunState::Shutoff,
            6 => RunState::Crashed,
            _ => RunState::Other,
        }
    }
}

/// The guest's own view of its memory (virtio-balloon statistics). Counters are cumulative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GuestMem {
    /// MemTotal.
    pub total: Option<Bytes>,
    /// MemAvailable.
    pub usable: Option<Bytes>,
    /// MemFree.
    pub unused: Option<Bytes>,
    pub disk_caches: Option<Bytes>,
    pub swap_in: Option<Bytes>,
    pub swap_out: Option<Bytes>,
    pub major_fault: Option<u64>,
    pub minor_fault: Option<u64>,
}

/// One guest as one bulk stats call reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    pub name: String,
    pub uuid: String,
    pub state: RunState,
    /// Balloon size plus plugged virtio-mem (`balloon.current`).
    pub current: Option<Bytes>,
    /// `<memory>` (`balloon.maximum`).
    pub maximum: Option<Bytes>,
    pub guest: GuestMem,
    /// Epoch seconds of the guest's last report; 0 when it never reported.
    pub last_update: u64,
    /// Host-side resident memory of the guest's process.
    pub rss: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("connection to {uri} lost: {message}")]
    Lost { uri: String, message: String },
    #[error("guest {guest}: {message}")]
    Guest { guest: String, message: String },
    #[error("guest {0} not found")]
    NoGuest(String),
    #[error("{0}")]
    Other(String),
}

impl HvError {
    /// Whether the host connection itself is gone (reconnect), as opposed to one guest failing.
    pub fn is_connection(&self) -> bool {
        matches!(self, HvError::Connect { .. } | HvError::Lost { .. })
    }
}

/// What memscale needs of a host. Calls block; the daemon runs them off its executor.
pub trait Hypervisor: Send + Sync {
    fn uri(&self) -> &str;
    /// Every guest's state and memory statistics, in one call.
    fn stats(&self) -> Result<Vec<GuestStats>, HvError>;
    /// Domain XML, live or persistent (`inactive`).
    fn domain_xml(&self, uuid: &str, inactive: bool) -> Result<String, HvError>;
    /// Set the balloon target (live).
    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), HvError>;
    /// Set one virtio-mem device's requested size (live), by alias.
    fn set_virtio_mem(&self, uuid: &str, alias: &str, requested: Bytes) -> Result<(), HvError>;
    /// Set the guest's statistics period (live).
    fn set_stats_period(&self, uuid: &str, seconds: u32) -> Result<(), HvError>;
    /// The host's physical memory.
    fn host_memory(&self) -> Result<Bytes, HvError>;
    /// Live-migrate a running guest peer to peer: this host's libvirtd connects to
    /// `dest_uri` and streams memory to `data_uri` (libvirt's choice when none). The guest
    /// is defined on the destination and undefined here once it runs there.
    fn migrate(&self, uuid: &str, dest_uri: &str, data_uri: Option<&str>) -> Result<(), HvError>;
}
