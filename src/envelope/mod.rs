//! The envelope of a guest: the floor and ceiling it may be sized between, the methods that can
//! move it (balloon, virtio-mem, DIMM) and their granularity, and the NUMA split.
//!
//! Computed once per guest from what the hypervisor and OpenStack say
//! ([`DomainSpec`](crate::domain::DomainSpec)) and a flavor catalog, then tightened (never
//! widened) by the policy. Nothing may resize a guest to a size this module does not call
//! realizable.
//!
//! The types live here; `build` computes an envelope from a domain spec, `limits` narrows it by
//! a policy, `realize` does the step arithmetic (realizable sizes and the split across methods),
//! `flavor` reads Nova's flavors and `vcpus` holds the vCPU envelope.

mod build;
mod flavor;
mod limits;
mod realize;
mod vcpus;

pub use flavor::{Flavor, FlavorCatalog};
pub use limits::Limits;
pub use realize::Parts;
pub use vcpus::{VcpuError, Vcpus};

use crate::units::{Bytes, MIB};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Balloon targets are set with MiB precision: finer adds nothing and invites churn.
pub const BALLOON_STEP: Bytes = Bytes(MIB);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Balloon,
    VirtioMem,
    Dimm,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Balloon => "balloon",
            Method::VirtioMem => "virtio-mem",
            Method::Dimm => "dimm",
        })
    }
}

/// Where the floor and ceiling came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Plain libvirt: floor `<currentMemory>` of the persistent definition, ceiling `<memory>`.
    Libvirt,
    /// Nova metadata with the flavor's memory and extra specs.
    Nova,
    /// Nova metadata naming only the flavor, completed from the configured catalog.
    NovaCatalog,
}

/// Facts about the envelope an operator should see in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "note", rename_all = "kebab-case")]
pub enum Note {
    /// Floor equals ceiling: nothing to scale (a Nova guest without `hw:mem_max_mb` and no
    /// hot-add device).
    NoEnvelope,
    /// The guest cannot grow beyond its current definition, but can still shrink.
    NoGrowthRoom,
    /// `hw:mem_max_mb` asks for more than the domain's devices can give.
    CeilingClamped { asked_mib: u64, got_mib: u64 },
    /// Huge-page backing and a virtio-mem block that cannot be made to fit the page size.
    HugepagesNoVirtioMem { page_kib: u64 },
    /// Huge-page backed memory is not returned to the host by the balloon: it is not used to shrink.
    HugepagesNoBalloon,
    /// virtio-mem devices of different sizes or blocks across NUMA nodes.
    UnevenNuma,
    /// Older Nova wrote only the flavor name and the catalog does not know it.
    UnknownFlavor { flavor: String },
    /// The policy set a floor below the flavor's base RAM (the Xen kind).
    FloorBelowBase { floor_mib: u64 },
    /// The policy tightened the envelope.
    Tightened,
    /// No balloon device and no virtio-mem: the guest cannot be resized at all.
    NoMethod,
    /// `<maxMemory slots=…>` but no `<features><acpi/>`: QEMU cannot hot-plug DIMMs.
    DimmNoAcpi,
    /// DIMM slots, but huge pages that a 256 MiB DIMM cannot be made of.
    HugepagesNoDimm { page_kib: u64 },
}

/// DIMM hotplug as the envelope sees it: memscale's own DIMMs, `size` each, spread evenly
/// over `nodes` NUMA nodes, at most `max` of them (a multiple of `nodes`: the free slots and
/// `<maxMemory>` bound it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DimmRoom {
    pub size: Bytes,
    pub nodes: u32,
    pub max: u32,
    /// The guest has NUMA cells: each DIMM names its node.
    pub numa: bool,
}

impl DimmRoom {
    /// The granularity of the total: one DIMM on every node.
    pub fn step(&self) -> Bytes {
        Bytes(self.size.0 * self.nodes as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("floor {floor} is above ceiling {ceiling}")]
    FloorAboveCeiling { floor: Bytes, ceiling: Bytes },
    #[error("extra spec {key} has a bad value {value:?}")]
    BadExtraSpec { key: String, value: String },
}

/// One virtio-mem device the envelope may drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmemSlot {
    pub alias: Option<String>,
    pub node: Option<u32>,
    pub size: Bytes,
    pub block: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    pub floor: Bytes,
    pub ceiling: Bytes,
    /// Boot RAM: the most the balloon alone can give the guest.
    pub base: Bytes,
    /// The balloon may be used to resize between the floor and `base`.
    pub balloon: bool,
    pub vmem: Vec<VmemSlot>,
    /// Granularity of the total virtio-mem size (block × devices, aligned to huge pages).
    pub vmem_step: Bytes,
    /// DIMM hotplug, for a guest with memory slots and no virtio-mem.
    pub dimm: Option<DimmRoom>,
    pub numa_nodes: u32,
    pub source: Source,
    pub notes: Vec<Note>,
}

/// Where a Nova guest's envelope came from, and since when (epoch seconds), for status: the
/// flavor as nova-api has it now, or the copy in the domain metadata (live flavors, issue 19).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    /// [`NOVA_API`] or [`DOMAIN_METADATA`].
    pub source: &'static str,
    pub since: f64,
    /// The flavor as the metadata names it (`id:…` or `name:…`).
    pub flavor: String,
    /// Why not nova-api: the named error and its message.
    pub error: Option<String>,
    pub error_name: Option<&'static str>,
    /// The flavor cache's generation this came from: the definition is read again when it moves.
    #[serde(skip)]
    pub generation: u64,
    /// nova-api has not answered for this flavor yet (and was first asked less than
    /// [`FLAVOR_WAIT`] seconds ago): the guest waits for it rather than being sized by the
    /// metadata's copy for a tick and by the live flavor the next.
    #[serde(skip)]
    pub pending: bool,
}

/// How long a guest waits for nova-api's first answer about its flavor before its envelope
/// comes from the domain metadata.
pub const FLAVOR_WAIT: f64 = 30.0;

pub const NOVA_API: &str = "nova-api";
pub const DOMAIN_METADATA: &str = "domain-metadata";

#[cfg(test)]
mod tests;
