//! What a scenario guest is defined with, and the definitions libvirt would refuse.

use crate::units::Bytes;

/// A guest to define and start on a [`ScenarioHost`](super::ScenarioHost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    pub name: String,
    /// Boot RAM: what the balloon governs (`<memory>` minus the memory devices).
    pub boot: Bytes,
    /// Persistent `<currentMemory>`: where the balloon starts, and plain libvirt's floor.
    /// `None`: the boot RAM.
    pub current: Option<Bytes>,
    /// virtio-mem size over all nodes; zero = no device.
    pub vmem_size: Bytes,
    pub vmem_block: Bytes,
    /// `<maxMemory slots=…>`; zero = no `<maxMemory>` (then no memory device can be plugged).
    pub dimm_slots: u32,
    /// `<maxMemory>`.
    pub max_memory: Bytes,
    pub numa_nodes: u32,
    /// `<features><acpi/>`: QEMU's hotplug controller for DIMMs.
    pub acpi: bool,
    /// Seconds; zero = the guest never reports.
    pub stats_period: u32,
    /// What the guest uses of its MemTotal.
    pub demand: Bytes,
}

impl GuestSpec {
    fn plain(name: &str, boot: Bytes) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            boot,
            current: None,
            vmem_size: Bytes(0),
            vmem_block: Bytes::from_mib(2),
            dimm_slots: 0,
            max_memory: Bytes(0),
            numa_nodes: 1,
            acpi: false,
            stats_period: 2,
            // An idle test-bed guest (busybox) uses about this much.
            demand: Bytes::from_mib(28),
        }
    }

    /// Boot RAM plus a virtio-mem device, with `<maxMemory>` as libvirt requires for any
    /// memory device (4 slots, 4 GiB above the rest, as `guest.sh` writes it).
    pub fn virtio_mem(name: &str, boot: Bytes, vmem_size: Bytes) -> GuestSpec {
        GuestSpec {
            vmem_size,
            dimm_slots: 4,
            max_memory: boot + vmem_size + Bytes::from_gib(4),
            ..GuestSpec::plain(name, boot)
        }
    }

    /// Boot RAM and a balloon, nothing to plug.
    pub fn balloon(name: &str, boot: Bytes) -> GuestSpec {
        GuestSpec::plain(name, boot)
    }

    /// Boot RAM and DIMM slots up to `max` (`<maxMemory>`), with ACPI.
    pub fn dimm(name: &str, boot: Bytes, slots: u32, max: Bytes) -> GuestSpec {
        GuestSpec {
            dimm_slots: slots,
            max_memory: max,
            acpi: true,
            ..GuestSpec::plain(name, boot)
        }
    }

    pub fn demand(self, demand: Bytes) -> GuestSpec {
        GuestSpec { demand, ..self }
    }
    /// Persistent `<currentMemory>` below the boot RAM (`guest.sh --current`).
    pub fn floor(self, current: Bytes) -> GuestSpec {
        GuestSpec {
            current: Some(current),
            ..self
        }
    }
    pub fn numa(self, numa_nodes: u32) -> GuestSpec {
        GuestSpec { numa_nodes, ..self }
    }
    pub fn stats_period(self, stats_period: u32) -> GuestSpec {
        GuestSpec {
            stats_period,
            ..self
        }
    }
    pub fn acpi(self, acpi: bool) -> GuestSpec {
        GuestSpec { acpi, ..self }
    }

    pub fn current_memory(&self) -> Bytes {
        self.current.unwrap_or(self.boot)
    }

    /// Why libvirt would refuse to define this guest, if it would.
    pub(super) fn invalid(&self) -> Option<String> {
        let nodes = self.numa_nodes as u64;
        let devices = self.vmem_size.0 > 0;
        if nodes == 0 {
            return Some("numa_nodes must be at least 1".into());
        }
        if devices
            && (self.vmem_block.0 == 0
                || !self.vmem_size.0.is_multiple_of(self.vmem_block.0 * nodes))
        {
            return Some("vmem_size must split into whole blocks on every node".into());
        }
        if devices && self.dimm_slots == 0 {
            return Some("a memory device needs <maxMemory> (dimm_slots > 0)".into());
        }
        if self.dimm_slots > 0 && self.max_memory < self.boot + self.vmem_size {
            return Some("max_memory is below <memory>".into());
        }
        if self.current_memory() > self.boot {
            return Some("current is above the boot RAM".into());
        }
        None
    }
}
