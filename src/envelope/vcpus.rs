//! The vCPU envelope of a guest, and why a vCPU count is refused.

use crate::domain::DomainSpec;
use serde::Serialize;

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
