//! The step arithmetic of an envelope: which sizes its methods can give, rounding a wanted size
//! to one, and how a size is split across the balloon, virtio-mem devices and DIMMs.

use super::{BALLOON_STEP, Envelope, Method};
use crate::units::Bytes;
use serde::Serialize;

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

impl Envelope {
    /// Whether the guest can grow from `current`; status shows "no growth room" otherwise.
    pub fn can_grow(&self, current: Bytes) -> bool {
        current < self.ceiling
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
