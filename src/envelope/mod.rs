//! The envelope of a guest: the floor and ceiling it may be sized between, the methods that can
//! move it (balloon, virtio-mem, DIMM) and their granularity, and the NUMA split.
//!
//! Computed once per guest from what the hypervisor and OpenStack say ([`DomainSpec`]) and a
//! flavor catalog, then tightened (never widened) by the policy. Nothing may resize a guest to a
//! size this module does not call realizable.

use crate::domain::{DIMM_SIZE, DomainSpec};
use crate::units::{Bytes, MIB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// One flavor in the configured catalog, for Nova releases that write only the flavor name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    pub memory: Bytes,
    #[serde(default)]
    pub mem_max: Option<Bytes>,
    #[serde(default)]
    pub numa_nodes: Option<u32>,
    #[serde(default)]
    pub vcpus: Option<u32>,
}

pub type FlavorCatalog = BTreeMap<String, Flavor>;

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

/// How a size is split across the methods: the balloon target, each virtio-mem device's
/// requested size, in the envelope's device order, and memscale's DIMMs on each NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Parts {
    pub balloon: Bytes,
    pub vmem: Vec<Bytes>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dimm: Vec<Bytes>,
}

impl Parts {
    pub fn total(&self) -> Bytes {
        self.balloon + self.vmem.iter().copied().sum() + self.dimm_total()
    }
    pub fn dimm_total(&self) -> Bytes {
        self.dimm.iter().copied().sum()
    }
}

/// The policy's limits on an envelope: tighten only, except an explicit Xen-style floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub min: Option<Bytes>,
    pub max: Option<Bytes>,
    pub floor_below_base: Option<Bytes>,
    pub allow_balloon: bool,
    pub allow_vmem: bool,
    pub allow_dimm: bool,
}

impl Limits {
    pub fn all() -> Limits {
        Limits {
            allow_balloon: true,
            allow_vmem: true,
            allow_dimm: true,
            ..Default::default()
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        a.max(b)
    } else {
        (a / gcd(a, b)).saturating_mul(b)
    }
}

fn spec_mib(extra: &BTreeMap<String, String>, key: &str) -> Result<Option<Bytes>, EnvelopeError> {
    match extra.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|m| Some(Bytes::from_mib(m)))
            .map_err(|_| EnvelopeError::BadExtraSpec {
                key: key.to_string(),
                value: v.clone(),
            }),
    }
}

/// `hw:mem_page_size`: `small`, `large`, `any`, or a size such as `2MB`, `1GB`, `2048` (KiB).
fn nova_page_size(v: &str) -> Option<Bytes> {
    let v = v.trim();
    match v {
        "small" | "any" | "" => None,
        "large" => Some(Bytes::from_mib(2)),
        _ => {
            let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let n: u64 = num.parse().ok()?;
            let mult = match unit.trim().to_ascii_uppercase().as_str() {
                "" | "KB" | "K" | "KIB" => 1 << 10,
                "MB" | "M" | "MIB" => 1 << 20,
                "GB" | "G" | "GIB" => 1 << 30,
                _ => return None,
            };
            let b = n.checked_mul(mult)?;
            (b > 4096).then_some(Bytes(b))
        }
    }
}

impl Envelope {
    /// The envelope of a guest from its persistent definition (`<currentMemory>` there is what
    /// the operator gave it, not what memscale last set) and the flavor catalog.
    pub fn from_spec(
        spec: &DomainSpec,
        catalog: &FlavorCatalog,
    ) -> Result<Envelope, EnvelopeError> {
        let mut notes = Vec::new();
        let base = spec.base_memory();
        let mut numa_nodes = spec.numa.len().max(1) as u32;

        // Huge pages: virtio-mem must plug whole pages; the balloon gives nothing back.
        let mut page = spec.hugepage_size;
        if let Some(nova) = &spec.nova
            && let Some(p) = nova.extra_specs.get("hw:mem_page_size")
        {
            page = nova_page_size(p).or(page);
        }
        let balloon = spec.balloon_device && page.is_none();
        if spec.balloon_device && page.is_some() {
            notes.push(Note::HugepagesNoBalloon);
        }

        let mut vmem: Vec<VmemSlot> = spec
            .virtio_mem
            .iter()
            .map(|d| VmemSlot {
                alias: d.alias.clone(),
                node: d.node,
                size: d.size,
                block: d.block,
            })
            .collect();
        let mut step = Bytes(0);
        if !vmem.is_empty() {
            let block = vmem.iter().fold(0, |a, d| lcm(a, d.block.0));
            let per_dev = lcm(block, page.map(|p| p.0).unwrap_or(0));
            let min_size = vmem.iter().map(|d| d.size.0).min().unwrap_or(0);
            if vmem
                .iter()
                .any(|d| d.size != vmem[0].size || d.block != vmem[0].block)
            {
                notes.push(Note::UnevenNuma);
            }
            if per_dev == 0 || per_dev > min_size {
                notes.push(Note::HugepagesNoVirtioMem {
                    page_kib: page.map(|p| p.kib()).unwrap_or(0),
                });
                vmem.clear();
            } else {
                step = Bytes(per_dev.saturating_mul(vmem.len() as u64));
            }
        }
        // Usable virtio-mem: every device moves by the same amount, so the smallest bounds all.
        let vmem_max = if vmem.is_empty() {
            Bytes(0)
        } else {
            let per_dev = Bytes(step.0 / vmem.len() as u64);
            let min_size = vmem.iter().map(|d| d.size).min().unwrap_or(Bytes(0));
            Bytes(min_size.align_down(per_dev).0 * vmem.len() as u64)
        };
        // DIMMs: only where no virtio-mem is defined (virtio-mem does the same job finer).
        let mut dimm = None;
        if vmem.is_empty()
            && spec.max_memory_slots > 0
            && let Some(max_memory) = spec.max_memory
        {
            let nodes = spec.numa.len().max(1) as u32;
            let page_fits = page.is_none_or(|p| p.0 != 0 && DIMM_SIZE.0.is_multiple_of(p.0));
            if !spec.acpi {
                notes.push(Note::DimmNoAcpi);
            } else if !page_fits {
                notes.push(Note::HugepagesNoDimm {
                    page_kib: page.map(|p| p.kib()).unwrap_or(0),
                });
            } else {
                let others =
                    spec.dimms.iter().filter(|d| !d.managed).count() + spec.virtio_mem.len();
                let slots = (spec.max_memory_slots as usize).saturating_sub(others) as u64;
                let by_size = max_memory.saturating_sub(base).0 / DIMM_SIZE.0;
                let n = slots.min(by_size);
                let n = (n - n % nodes as u64) as u32;
                if n > 0 {
                    dimm = Some(DimmRoom {
                        size: DIMM_SIZE,
                        nodes,
                        max: n,
                        numa: !spec.numa.is_empty(),
                    });
                }
            }
        }
        let dimm_max = dimm
            .map(|d| Bytes(d.size.0 * d.max as u64))
            .unwrap_or(Bytes(0));
        let hw_max = base + vmem_max + dimm_max;

        let (mut floor, mut ceiling, source) = match &spec.nova {
            Some(nova) => {
                let (flavor_mem, mem_max, source) = match nova.memory {
                    Some(m) => (
                        m,
                        spec_mib(&nova.extra_specs, "hw:mem_max_mb")?,
                        Source::Nova,
                    ),
                    None => match nova.flavor_name.as_ref().and_then(|f| catalog.get(f)) {
                        Some(f) => (f.memory, f.mem_max, Source::NovaCatalog),
                        None => {
                            notes.push(Note::UnknownFlavor {
                                flavor: nova.flavor_name.clone().unwrap_or_default(),
                            });
                            (spec.current_memory.min(base), None, Source::Libvirt)
                        }
                    },
                };
                if let Some(n) = nova
                    .extra_specs
                    .get("hw:numa_nodes")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                {
                    numa_nodes = n.max(1);
                }
                let ceiling = match mem_max {
                    // No hot-add spec: the flavor's RAM is all the guest may have.
                    None if source != Source::Libvirt => flavor_mem,
                    None => hw_max,
                    Some(m) if m > hw_max => {
                        notes.push(Note::CeilingClamped {
                            asked_mib: m.mib(),
                            got_mib: hw_max.mib(),
                        });
                        hw_max
                    }
                    Some(m) => m,
                };
                (flavor_mem, ceiling, source)
            }
            None => (spec.current_memory.min(base), hw_max, Source::Libvirt),
        };
        if !balloon {
            // Without a usable balloon, nothing can take the guest below its boot RAM.
            floor = floor.max(base);
            ceiling = ceiling.max(floor.min(hw_max));
        }
        if floor > ceiling {
            return Err(EnvelopeError::FloorAboveCeiling { floor, ceiling });
        }
        if !balloon && vmem.is_empty() && dimm.is_none() {
            notes.push(Note::NoMethod);
        }
        let mut env = Envelope {
            floor,
            ceiling,
            base,
            balloon,
            vmem,
            vmem_step: step,
            dimm,
            numa_nodes,
            source,
            notes,
        };
        env.snap_ceiling();
        env.add_room_notes();
        Ok(env)
    }

    fn snap_ceiling(&mut self) {
        // The ceiling itself must be realizable: round it down to a size the methods can reach.
        let c = self.realize_down(self.ceiling);
        if c >= self.floor {
            self.ceiling = c;
        }
    }

    fn add_room_notes(&mut self) {
        self.notes
            .retain(|n| !matches!(n, Note::NoEnvelope | Note::NoGrowthRoom));
        if self.floor == self.ceiling {
            self.notes.push(Note::NoEnvelope);
        }
    }

    /// Whether the guest can grow from `current`; status shows "no growth room" otherwise.
    pub fn can_grow(&self, current: Bytes) -> bool {
        current < self.ceiling
    }

    /// The envelope as a policy narrows it. Never widens, except the explicit below-base floor.
    pub fn limited(&self, l: &Limits) -> Envelope {
        let mut e = self.clone();
        if !l.allow_vmem && !e.vmem.is_empty() {
            e.vmem.clear();
            e.vmem_step = Bytes(0);
            e.ceiling = e.ceiling.min(e.base);
        }
        if !l.allow_dimm && e.dimm.is_some() {
            e.dimm = None;
            e.ceiling = e.ceiling.min(e.base);
        }
        if !l.allow_balloon && e.balloon {
            e.balloon = false;
            e.floor = e.floor.max(e.base.min(e.ceiling));
        }
        if let Some(f) = l.floor_below_base
            && e.balloon
            && f < e.floor
        {
            e.floor = f;
            e.notes.push(Note::FloorBelowBase { floor_mib: f.mib() });
        }
        let mut tightened = false;
        if let Some(min) = l.min
            && min > e.floor
        {
            e.floor = e.realize_up(min.min(e.ceiling));
            tightened = true;
        }
        if let Some(max) = l.max
            && max < e.ceiling
        {
            e.ceiling = e.realize_down(max.max(e.floor));
            tightened = true;
        }
        if e.ceiling < e.floor {
            e.ceiling = e.floor;
        }
        if tightened {
            e.notes.push(Note::Tightened);
        }
        e.add_room_notes();
        e
    }

    /// The step of the method that grows the guest beyond its boot RAM (virtio-mem or DIMMs),
    /// zero when there is none.
    pub fn hot_step(&self) -> Bytes {
        if !self.vmem.is_empty() && self.vmem_step.0 != 0 {
            self.vmem_step
        } else if let Some(d) = &self.dimm {
            d.step()
        } else {
            Bytes(0)
        }
    }

    /// The most that method may add above the boot RAM, within the ceiling.
    pub fn vmem_max(&self) -> Bytes {
        let step = self.hot_step();
        if step.0 == 0 {
            return Bytes(0);
        }
        let top = self.ceiling.saturating_sub(self.base);
        top.align_down(step)
    }

    /// Whether `size` is a size the methods can give (and inside the envelope).
    pub fn is_realizable(&self, size: Bytes) -> bool {
        if size < self.floor || size > self.ceiling {
            return false;
        }
        if size <= self.base {
            return self.balloon && size.align_down(BALLOON_STEP) == size || size == self.base;
        }
        let v = size.saturating_sub(self.base);
        let step = self.hot_step();
        step.0 != 0 && v.0.is_multiple_of(step.0) && v <= self.vmem_max()
    }

    /// The smallest realizable size at or above `t`, clamped into the envelope.
    pub fn realize_up(&self, t: Bytes) -> Bytes {
        let t = t.max(self.floor);
        if t <= self.base {
            let r = if self.balloon {
                t.align_up(BALLOON_STEP).min(self.base)
            } else {
                self.base
            };
            return r.min(self.ceiling.max(self.floor));
        }
        let step = self.hot_step();
        if step.0 == 0 {
            return self.base.min(self.ceiling).max(self.floor);
        }
        let v = t.saturating_sub(self.base).align_up(step);
        (self.base + v.min(self.vmem_max())).min(self.ceiling)
    }

    /// The largest realizable size at or below `t`, never below the floor.
    pub fn realize_down(&self, t: Bytes) -> Bytes {
        let t = t.min(self.ceiling);
        let step = self.hot_step();
        let r = if t >= self.base && step.0 != 0 {
            self.base
                + t.saturating_sub(self.base)
                    .align_down(step)
                    .min(self.vmem_max())
        } else if t >= self.base {
            self.base
        } else if self.balloon {
            t.align_down(BALLOON_STEP)
        } else {
            self.base
        };
        if r < self.floor {
            self.realize_up(self.floor)
        } else {
            r
        }
    }

    /// Balloon and virtio-mem parts of a realizable size: the balloon fills up to boot RAM
    /// first, then every virtio-mem device takes an equal share (NUMA balance).
    pub fn split(&self, size: Bytes) -> Parts {
        let nodes = self.dimm.map(|d| d.nodes as usize).unwrap_or(0);
        let n = self.vmem.len() as u64;
        let above = size.saturating_sub(self.base);
        let mut p = Parts {
            balloon: size.min(self.base),
            vmem: vec![Bytes(0); self.vmem.len()],
            dimm: vec![Bytes(0); nodes],
        };
        if above.0 == 0 {
            return p;
        }
        if let Some(each) = above.0.checked_div(n) {
            p.vmem = vec![Bytes(each); self.vmem.len()];
        } else if nodes > 0 {
            p.dimm = vec![Bytes(above.0 / nodes as u64); nodes];
        }
        p
    }

    /// The methods this envelope can use, in the order growth uses them.
    pub fn methods(&self) -> Vec<Method> {
        let mut m = Vec::new();
        if self.balloon {
            m.push(Method::Balloon);
        }
        if !self.vmem.is_empty() {
            m.push(Method::VirtioMem);
        }
        if self.dimm.is_some() {
            m.push(Method::Dimm);
        }
        m
    }
}

/// The vCPU envelope: how many vCPUs a guest may run, in which steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vcpus {
    pub current: u32,
    /// Nova's flavor vCPUs, or the persistent `<vcpu current=…>`.
    pub floor: u32,
    /// `hw:cpu_max_sockets × hw:cpu_max_cores × hw:cpu_max_threads`, within `<vcpu>`.
    pub ceiling: u32,
    /// Whole cores on every NUMA node: threads per core × nodes.
    pub step: u32,
    pub threads: u32,
    pub numa_nodes: u32,
    /// `hw:cpu_policy=dedicated` or `<vcpupin>`: not scaled.
    pub pinned: bool,
    /// `<features><acpi/>`: without it QEMU cannot hot-plug vCPUs.
    pub acpi: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuError {
    #[error(
        "the guest is CPU-pinned (hw:cpu_policy=dedicated or <vcpupin>): memscale does not scale the vCPUs of a pinned guest"
    )]
    Pinned,
    #[error("the guest has no ACPI (<features><acpi/>): QEMU cannot hot-plug its vCPUs")]
    NoAcpi,
    #[error("{asked} vCPUs is beyond the guest's ceiling of {ceiling} vCPUs")]
    BeyondCeiling { asked: u32, ceiling: u32 },
    #[error("{asked} vCPUs is below the guest's floor of {floor} vCPUs")]
    BelowFloor { asked: u32, floor: u32 },
    #[error(
        "{asked} vCPUs cannot be split evenly across the guest's {nodes} NUMA node(s) in whole cores of {threads} thread(s): nearest valid counts are {lower} and {upper}"
    )]
    Uneven {
        asked: u32,
        nodes: u32,
        threads: u32,
        lower: u32,
        upper: u32,
    },
}

impl Vcpus {
    /// From the live definition and, for the plain-libvirt floor, the persistent one.
    pub fn from_spec(live: &DomainSpec, inactive: Option<&DomainSpec>) -> Vcpus {
        let max = live.vcpus_max.max(1);
        let mut nodes = live.numa.len().max(1) as u32;
        let mut ceiling = max;
        let mut floor = inactive
            .map(|i| i.vcpus_current)
            .unwrap_or(live.vcpus_current);
        if let Some(nova) = &live.nova {
            let spec = |k: &str| {
                nova.extra_specs
                    .get(k)
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            let limits = [
                spec("hw:cpu_max_sockets"),
                spec("hw:cpu_max_cores"),
                spec("hw:cpu_max_threads"),
            ];
            if limits.iter().any(Option::is_some) {
                let product = limits
                    .iter()
                    .fold(1u32, |a, l| a.saturating_mul(l.unwrap_or(u32::MAX)));
                ceiling = ceiling.min(product.max(1));
            }
            if let Some(n) = spec("hw:numa_nodes") {
                nodes = n.max(1);
            }
            if let Some(v) = nova.vcpus {
                floor = v;
            }
        }
        let step = live.cpu_threads.max(1) * nodes;
        let floor = floor.clamp(1, ceiling);
        Vcpus {
            current: live.vcpus_current,
            floor,
            ceiling,
            step,
            threads: live.cpu_threads.max(1),
            numa_nodes: nodes,
            pinned: live.cpu_pinned,
            acpi: live.acpi,
        }
    }

    /// Whether `asked` is a count this guest may be set to, and if not, why.
    pub fn check(&self, asked: u32) -> Result<(), VcpuError> {
        if self.pinned {
            return Err(VcpuError::Pinned);
        }
        if !self.acpi {
            return Err(VcpuError::NoAcpi);
        }
        if asked > self.ceiling {
            return Err(VcpuError::BeyondCeiling {
                asked,
                ceiling: self.ceiling,
            });
        }
        if asked < self.floor {
            return Err(VcpuError::BelowFloor {
                asked,
                floor: self.floor,
            });
        }
        if !asked.is_multiple_of(self.step) {
            let lower = asked - asked % self.step;
            let upper = lower + self.step;
            return Err(VcpuError::Uneven {
                asked,
                nodes: self.numa_nodes,
                threads: self.threads,
                lower: if lower >= self.floor.max(1) {
                    lower
                } else {
                    upper
                },
                upper: if upper <= self.ceiling { upper } else { lower },
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::NOVA_XML;

    fn plain(mem: u64, cur: u64, vmem: &[(u64, u64)]) -> DomainSpec {
        DomainSpec {
            name: "g".into(),
            memory: Bytes::from_mib(mem + vmem.iter().map(|v| v.0).sum::<u64>()),
            current_memory: Bytes::from_mib(cur),
            balloon_device: true,
            virtio_mem: vmem
                .iter()
                .enumerate()
                .map(|(i, (s, b))| crate::domain::VirtioMem {
                    alias: Some(format!("virtiomem{i}")),
                    node: Some(i as u32),
                    size: Bytes::from_mib(*s),
                    block: Bytes::from_mib(*b),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_libvirt_envelope() {
        let e = Envelope::from_spec(&plain(512, 512, &[(1024, 2)]), &FlavorCatalog::new()).unwrap();
        assert_eq!(e.floor, Bytes::from_mib(512));
        assert_eq!(e.ceiling, Bytes::from_mib(1536));
        assert_eq!(e.base, Bytes::from_mib(512));
        assert_eq!(e.vmem_step, Bytes::from_mib(2));
        assert_eq!(e.source, Source::Libvirt);
        assert_eq!(e.methods(), vec![Method::Balloon, Method::VirtioMem]);
        // balloon-only range below boot size when the definition boots smaller
        let e = Envelope::from_spec(&plain(1024, 512, &[]), &FlavorCatalog::new()).unwrap();
        assert_eq!(
            (e.floor, e.ceiling),
            (Bytes::from_mib(512), Bytes::from_mib(1024))
        );
    }

    #[test]
    fn nova_envelope_and_numa_step() {
        let d = DomainSpec::parse(NOVA_XML).unwrap();
        let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
        assert_eq!(e.source, Source::Nova);
        assert_eq!(e.floor, Bytes::from_mib(1024));
        assert_eq!(e.ceiling, Bytes::from_mib(3072));
        assert_eq!(e.numa_nodes, 2);
        assert_eq!(e.vmem_step, Bytes::from_mib(4));
        let p = e.split(Bytes::from_mib(2048));
        assert_eq!(p.balloon, Bytes::from_mib(1024));
        assert_eq!(p.vmem, vec![Bytes::from_mib(512), Bytes::from_mib(512)]);
        assert_eq!(e.realize_up(Bytes::from_mib(1025)), Bytes::from_mib(1028));
        assert_eq!(e.realize_down(Bytes::from_mib(1027)), Bytes::from_mib(1024));
    }

    #[test]
    fn nova_without_mem_max_has_no_envelope() {
        let xml = NOVA_XML.replace(
            r#"<nova:extraSpec name="hw:mem_max_mb">3072</nova:extraSpec>"#,
            "",
        );
        let e =
            Envelope::from_spec(&DomainSpec::parse(&xml).unwrap(), &FlavorCatalog::new()).unwrap();
        assert_eq!(e.floor, e.ceiling);
        assert!(e.notes.contains(&Note::NoEnvelope));
    }

    #[test]
    fn ceiling_clamped_and_catalog() {
        let xml = NOVA_XML.replace(">3072<", ">9999<");
        let e =
            Envelope::from_spec(&DomainSpec::parse(&xml).unwrap(), &FlavorCatalog::new()).unwrap();
        assert_eq!(e.ceiling, Bytes::from_mib(4096));
        assert!(matches!(
            e.notes[0],
            Note::CeilingClamped {
                asked_mib: 9999,
                ..
            }
        ));

        let mut d = DomainSpec::parse(NOVA_XML).unwrap();
        let nova = d.nova.as_mut().unwrap();
        nova.memory = None;
        nova.extra_specs.clear();
        let mut cat = FlavorCatalog::new();
        cat.insert(
            "m1.flex".into(),
            Flavor {
                memory: Bytes::from_mib(1024),
                mem_max: Some(Bytes::from_mib(2048)),
                ..Default::default()
            },
        );
        let e = Envelope::from_spec(&d, &cat).unwrap();
        assert_eq!(e.source, Source::NovaCatalog);
        assert_eq!(e.ceiling, Bytes::from_mib(2048));
        let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
        assert!(matches!(e.notes[0], Note::UnknownFlavor { .. }));
    }

    #[test]
    fn hugepages_fit_or_drop_virtio_mem() {
        let mut d = plain(512, 512, &[(1024, 2)]);
        d.hugepage_size = Some(Bytes::from_gib(1));
        let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
        assert!(!e.balloon);
        assert_eq!(e.vmem_step, Bytes::from_gib(1));
        assert!(e.notes.contains(&Note::HugepagesNoBalloon));
        let mut d = plain(512, 512, &[(512, 2)]);
        d.hugepage_size = Some(Bytes::from_gib(1));
        let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
        assert!(e.vmem.is_empty());
        assert!(
            e.notes
                .iter()
                .any(|n| matches!(n, Note::HugepagesNoVirtioMem { .. }))
        );
        assert!(e.notes.contains(&Note::NoMethod));
    }

    #[test]
    fn limits_tighten_but_never_widen() {
        let e = Envelope::from_spec(&plain(512, 512, &[(1024, 2)]), &FlavorCatalog::new()).unwrap();
        let l = Limits {
            min: Some(Bytes::from_mib(100)),
            max: Some(Bytes::from_gib(8)),
            ..Limits::all()
        };
        let t = e.limited(&l);
        assert_eq!((t.floor, t.ceiling), (e.floor, e.ceiling));
        let l = Limits {
            max: Some(Bytes::from_mib(1001)),
            floor_below_base: Some(Bytes::from_mib(256)),
            ..Limits::all()
        };
        let t = e.limited(&l);
        assert_eq!(t.ceiling, Bytes::from_mib(1000));
        assert_eq!(t.floor, Bytes::from_mib(256));
        let no_vmem = e.limited(&Limits {
            allow_vmem: false,
            ..Limits::all()
        });
        assert_eq!(no_vmem.ceiling, Bytes::from_mib(512));
        assert!(no_vmem.notes.contains(&Note::NoEnvelope));
    }

    fn dimm_guest(nodes: u32, slots: u32) -> DomainSpec {
        DomainSpec {
            name: "d".into(),
            memory: Bytes::from_mib(512),
            current_memory: Bytes::from_mib(512),
            max_memory: Some(Bytes::from_mib(512 + 4096)),
            max_memory_slots: slots,
            balloon_device: true,
            acpi: true,
            cpu_threads: 1,
            numa: (0..nodes)
                .map(|i| crate::domain::NumaCell {
                    id: i,
                    memory: Bytes::from_mib(512 / nodes as u64),
                    cpus: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn dimm_envelope_steps_by_a_dimm_per_node() {
        let e = Envelope::from_spec(&dimm_guest(1, 8), &FlavorCatalog::new()).unwrap();
        assert_eq!(e.methods(), vec![Method::Balloon, Method::Dimm]);
        assert_eq!(e.hot_step(), Bytes::from_mib(256));
        assert_eq!(e.ceiling, Bytes::from_mib(512 + 8 * 256));
        assert!(e.is_realizable(Bytes::from_mib(768)));
        assert!(!e.is_realizable(Bytes::from_mib(700)));
        assert_eq!(e.realize_up(Bytes::from_mib(513)), Bytes::from_mib(768));
        // Two nodes: one DIMM on each, so 512 MiB steps; 7 slots give 6 DIMMs.
        let e = Envelope::from_spec(&dimm_guest(2, 7), &FlavorCatalog::new()).unwrap();
        assert_eq!(e.hot_step(), Bytes::from_mib(512));
        assert_eq!(e.ceiling, Bytes::from_mib(512 + 6 * 256));
        assert!(
            !e.is_realizable(Bytes::from_mib(768)),
            "uneven split refused"
        );
        let p = e.split(Bytes::from_mib(1536));
        assert_eq!(p.dimm, vec![Bytes::from_mib(512), Bytes::from_mib(512)]);
        assert_eq!(p.total(), Bytes::from_mib(1536));
        // Without ACPI QEMU cannot plug: no DIMM method, and a note says why.
        let mut d = dimm_guest(1, 8);
        d.acpi = false;
        let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
        assert!(e.dimm.is_none());
        assert!(e.notes.contains(&Note::DimmNoAcpi));
        // A policy without "dimm" keeps the guest at its boot RAM.
        let e = Envelope::from_spec(&dimm_guest(1, 8), &FlavorCatalog::new()).unwrap();
        let l = e.limited(&Limits {
            allow_dimm: false,
            ..Limits::all()
        });
        assert_eq!(l.ceiling, Bytes::from_mib(512));
    }

    #[test]
    fn vcpu_envelope_refusals_name_the_problem() {
        let mut d = dimm_guest(2, 0);
        d.vcpus_max = 8;
        d.vcpus_current = 2;
        let v = Vcpus::from_spec(&d, None);
        assert_eq!((v.floor, v.ceiling, v.step), (2, 8, 2));
        assert!(v.check(4).is_ok());
        let e = v.check(3).unwrap_err();
        assert!(
            matches!(
                e,
                VcpuError::Uneven {
                    lower: 2,
                    upper: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("nearest valid counts are 2 and 4"));
        assert!(matches!(
            v.check(10),
            Err(VcpuError::BeyondCeiling { ceiling: 8, .. })
        ));
        assert!(matches!(
            v.check(0),
            Err(VcpuError::BelowFloor { floor: 2, .. })
        ));
        // Nova: the flavor's vCPUs are the floor, the max topology the ceiling; SMT steps.
        d.cpu_threads = 2;
        d.nova = Some(crate::domain::NovaMeta {
            vcpus: Some(4),
            extra_specs: [
                ("hw:cpu_max_sockets".to_string(), "1".to_string()),
                ("hw:cpu_max_cores".to_string(), "3".to_string()),
                ("hw:cpu_max_threads".to_string(), "2".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        });
        let v = Vcpus::from_spec(&d, None);
        assert_eq!((v.floor, v.ceiling, v.step), (4, 6, 4));
        assert!(v.check(4).is_ok());
        assert!(matches!(v.check(6), Err(VcpuError::Uneven { .. })));
        d.cpu_pinned = true;
        let e = Vcpus::from_spec(&d, None).check(4).unwrap_err();
        assert_eq!(e, VcpuError::Pinned);
        assert!(e.to_string().contains("CPU-pinned"));
    }
}
