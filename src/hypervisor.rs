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

/// One vCPU as libvirt's `vcpu.N.*` statistics give it (nanoseconds, cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuStat {
    pub id: u32,
    /// `vcpu.N.time`: run time of the vCPU's thread.
    pub time: u64,
    /// `vcpu.N.delay`: time it waited on the host's run queue.
    pub delay: u64,
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

impl GuestStats {
    /// Build a guest's stats from the fields of one bulk stats record (`virsh domstats`
    /// names, values as libvirt gives them: KiB for sizes). Unknown fields are ignored. The
    /// libvirt backend and the scale benchmark's host model both parse through here.
    pub fn from_fields<'a>(
        name: String,
        uuid: String,
        fields: impl IntoIterator<Item = (&'a [u8], u64)>,
    ) -> GuestStats {
        let mut g = GuestStats {
            name,
            uuid,
            state: RunState::Other,
            current: None,
            maximum: None,
            guest: GuestMem::default(),
            last_update: 0,
            rss: None,
        };
        for (field, v) in fields {
            // Every field of interest is `state.*` or `balloon.*`; the rest (block, net,
            // vcpu counters when asked for) are skipped without a comparison each.
            let Some(rest) = field.strip_prefix(b"balloon.") else {
                if field == b"state.state" {
                    g.state = RunState::from_libvirt(v as i64);
                }
                continue;
            };
            let kib = Some(Bytes::from_kib(v));
            match rest {
                b"current" => g.current = kib,
                b"maximum" => g.maximum = kib,
                b"available" => g.guest.total = kib,
                b"usable" => g.guest.usable = kib,
                b"unused" => g.guest.unused = kib,
                b"disk_caches" => g.guest.disk_caches = kib,
                b"swap_in" => g.guest.swap_in = kib,
                b"swap_out" => g.guest.swap_out = kib,
                b"major_fault" => g.guest.major_fault = Some(v),
                b"minor_fault" => g.guest.minor_fault = Some(v),
                b"last-update" => g.last_update = v,
                b"rss" => g.rss = kib,
                _ => {}
            }
        }
        g
    }
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

/// What a host told memscale between two ticks, without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvEvent {
    /// A guest's lifecycle changed (`defined`, `undefined`, `started`, `suspended`, `resumed`,
    /// `stopped`, `shutdown`, `pmsuspended`, `crashed`): its definitions may have changed.
    Lifecycle { uuid: String, event: &'static str },
    /// The guest refused to release a device it was asked to unplug.
    RemovalFailed { uuid: String, alias: String },
    /// The host closed the connection (libvirtd restarted or died): `reason` as libvirt says.
    Closed { reason: &'static str },
    /// The connection was opened and the handlers above registered on it (again, after a
    /// reconnect).
    Registered,
}

impl HvEvent {
    /// A short name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HvEvent::Lifecycle { event, .. } => event,
            HvEvent::RemovalFailed { .. } => "removal_failed",
            HvEvent::Closed { .. } => "closed",
            HvEvent::Registered => "registered",
        }
    }
}

/// The host machine's own memory, as its kernel counts it (libvirt's node memory statistics,
/// from `/proc/meminfo`): what is really there, whatever the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NodeMemory {
    pub total: Bytes,
    pub free: Bytes,
    pub buffers: Bytes,
    pub cached: Bytes,
}

impl NodeMemory {
    /// What the machine could give without swapping, as MemAvailable roughly counts it:
    /// free, buffers and page cache.
    pub fn available(&self) -> Bytes {
        self.free
            .saturating_add(self.buffers)
            .saturating_add(self.cached)
            .min(self.total)
    }

    /// From libvirt's `virNodeGetMemoryStats` fields (KiB); unknown ones are ignored.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a [u8], u64)>) -> NodeMemory {
        let mut m = NodeMemory::default();
        for (k, v) in fields {
            let b = Bytes::from_kib(v);
            match k {
                b"total" => m.total = b,
                b"free" => m.free = b,
                b"buffers" => m.buffers = b,
                b"cached" => m.cached = b,
                _ => {}
            }
        }
        m
    }
}

fn unsupported(uuid: &str, what: &str) -> HvError {
    HvError::Guest {
        guest: uuid.to_string(),
        message: format!("{what} is not supported by this host"),
    }
}

/// What memscale needs of a host. Calls block; the daemon runs them off its executor.
pub trait Hypervisor: Send + Sync {
    /// Events received since the last call, oldest first; never blocks.
    fn take_events(&self) -> Vec<HvEvent> {
        Vec::new()
    }
    fn uri(&self) -> &str;
    /// Every guest's state and memory statistics, in one call.
    fn stats(&self) -> Result<Vec<GuestStats>, HvError>;
    /// Domain XML, live or persistent (`inactive`).
    fn domain_xml(&self, uuid: &str, inactive: bool) -> Result<String, HvError>;
    /// Set the balloon target (live).
    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), HvError>;
    /// Set one virtio-mem device's requested size (live), by alias.
    fn set_virtio_mem(&self, uuid: &str, alias: &str, requested: Bytes) -> Result<(), HvError>;
    /// Hot-plug a memory device given as its `<memory>` XML (live).
    fn attach_memory(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let _ = xml;
        Err(unsupported(uuid, "DIMM hotplug"))
    }
    /// Ask the guest to release the device of this alias (live). Returns once asked: the
    /// unplug lands when the guest has let go, or a removal-failed event says it will not.
    fn detach_alias(&self, uuid: &str, alias: &str) -> Result<(), HvError> {
        let _ = alias;
        Err(unsupported(uuid, "device unplug"))
    }
    /// Set the number of online vCPUs (live): plug or unplug.
    fn set_vcpus(&self, uuid: &str, count: u32) -> Result<(), HvError> {
        let _ = count;
        Err(unsupported(uuid, "vCPU hotplug"))
    }
    /// Each vCPU's cumulative run and run-queue wait times.
    fn vcpu_stats(&self, uuid: &str) -> Result<Vec<VcpuStat>, HvError> {
        Err(unsupported(uuid, "vCPU statistics"))
    }
    /// Set the guest's statistics period (live).
    fn set_stats_period(&self, uuid: &str, seconds: u32) -> Result<(), HvError>;
    /// The host's physical memory.
    fn host_memory(&self) -> Result<Bytes, HvError>;
    /// The host machine's memory as its kernel counts it now (total, free, buffers, cached).
    fn node_memory(&self) -> Result<NodeMemory, HvError> {
        Err(HvError::Other(
            "node memory statistics are not supported by this host".into(),
        ))
    }
    /// Live-migrate a running guest peer to peer: this host's libvirtd connects to
    /// `dest_uri` and streams memory to `data_uri` (libvirt's choice when none). The guest
    /// is defined on the destination and undefined here once it runs there. With `tls`, over
    /// libvirt's TLS transport (QEMU's own TLS, with the hosts' x509 certificates).
    fn migrate(
        &self,
        uuid: &str,
        dest_uri: &str,
        data_uri: Option<&str>,
        tls: bool,
    ) -> Result<(), HvError>;
    /// Abort the guest's job under way (a live migration past its timeout): libvirt rolls it
    /// back and the guest keeps running here. The migration call itself then returns an error.
    fn abort_job(&self, uuid: &str) -> Result<(), HvError> {
        Err(unsupported(uuid, "aborting a job"))
    }
}
