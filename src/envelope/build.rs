//! An envelope computed from a guest's domain spec (and the flavor catalog): which methods are
//! usable, their granularity, and the floor and ceiling from libvirt or Nova.

use super::flavor::{nova_page_size, spec_mib};
use super::{DimmRoom, Envelope, EnvelopeError, FlavorCatalog, Note, Source, VmemSlot};
use crate::domain::{DIMM_SIZE, DomainSpec};
use crate::units::Bytes;

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

    pub(super) fn add_room_notes(&mut self) {
        self.notes
            .retain(|n| !matches!(n, Note::NoEnvelope | Note::NoGrowthRoom));
        if self.floor == self.ceiling {
            self.notes.push(Note::NoEnvelope);
        }
    }
}
