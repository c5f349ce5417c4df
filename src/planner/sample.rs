//! One observation of a guest, and the need the planner reads from it.

use crate::units::Bytes;
use serde::Serialize;

/// One observation of a guest, in allocation terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds on the caller's clock.
    pub at: f64,
    /// The hypervisor-side allocation (balloon plus plugged memory) when sampled.
    pub size: Bytes,
    /// Guest MemTotal.
    pub total: Bytes,
    /// Guest MemAvailable: free memory plus what the kernel can reclaim (page cache), but not
    /// tmpfs/shmem.
    pub available: Bytes,
    /// Guest swap-in rate, bytes per second.
    pub swap_in_rate: f64,
}

impl Sample {
    /// The memory this guest needs, expressed as an allocation: the allocation minus what the
    /// guest reports it could do without. Hostile values are bounded: available above total
    /// counts as total, and a total above the allocation counts as the allocation.
    pub fn need(&self) -> Bytes {
        let total = self.total.min(self.size);
        let avail = self.available.min(total);
        // The allocation the guest cannot see (kernel reservations) belongs to its need, but
        // a guest claiming a tiny MemTotal may not inflate it without bound.
        let hidden = self
            .size
            .saturating_sub(total)
            .min(self.size.scale(0.125) + Bytes::from_mib(32));
        total.saturating_sub(avail) + hidden
    }
}

impl Sample {
    /// The guest had (almost) no memory left: its need is clipped at what it has.
    pub fn saturated(&self) -> bool {
        self.available.min(self.total) < SATURATED
    }
}

/// MemAvailable below this means the guest's report no longer shows its real demand.
const SATURATED: Bytes = Bytes::from_mib(32);
