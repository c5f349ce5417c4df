//! oVirt MoM's shipped ballooning rules (`doc/balloon.rules` in github.com/oVirt/mom, read at
//! commit 3de1c8e): nothing moves until host free memory falls below the pressure threshold;
//! then every guest gives up at most 5% per round down to what it uses plus a free share of
//! its current size scaled by the host's pressure (negative when critical: the guest is made
//! to swap); otherwise every ballooned guest grows by 5% per round, at least to its use plus
//! 20% of its current balloon size (`min_guest_free_percent * guest.balloon_cur`), up to its
//! maximum. Evaluated every 10 s (`policy-engine-interval` in `doc/mom-balloon.conf`).

use crate::sim::{Controller, GuestView, HostView};
use crate::units::Bytes;

pub const PRESSURE_THRESHOLD: f64 = 0.20;
pub const PRESSURE_CRITICAL: f64 = 0.05;
pub const MIN_GUEST_FREE_PERCENT: f64 = 0.20;
pub const MAX_BALLOON_CHANGE_PERCENT: f64 = 0.05;
pub const MIN_BALLOON_CHANGE_PERCENT: f64 = 0.0025;
pub const INTERVAL: f64 = 10.0;

pub struct MomCtl {
    next: f64,
}

impl MomCtl {
    pub fn new() -> MomCtl {
        MomCtl {
            next: f64::NEG_INFINITY,
        }
    }
}

impl Default for MomCtl {
    fn default() -> MomCtl {
        MomCtl::new()
    }
}

impl Controller for MomCtl {
    fn tick(
        &mut self,
        now: f64,
        guests: &[GuestView],
        host: Option<&HostView>,
        out: &mut Vec<(usize, Bytes)>,
    ) -> f64 {
        if now < self.next {
            return self.next;
        }
        self.next = now + INTERVAL;
        // Without a host model the host is never short: MoM only ever grows guests.
        let host_free = host
            .map(|h| (h.memory.0 as f64 - h.used.0 as f64) / (h.memory.0 as f64).max(1.0))
            .unwrap_or(1.0);
        let pressure = host_free < PRESSURE_THRESHOLD;
        for (i, v) in guests.iter().enumerate() {
            if !v.present || v.resizing {
                continue;
            }
            let cur = v.size.0 as f64;
            let change_big_enough = |new: f64| (new - cur).abs() > MIN_BALLOON_CHANGE_PERCENT * cur;
            let new = if pressure {
                let guest_free_percent = if host_free <= PRESSURE_CRITICAL {
                    -0.05 + host_free
                } else {
                    MIN_GUEST_FREE_PERCENT * (host_free / PRESSURE_THRESHOLD)
                };
                // balloon_cur - mem_unused
                let used = v.sample.size.0.saturating_sub(v.sample.available.0) as f64;
                let balloon_min = (used + guest_free_percent * cur).max(v.env.floor.0 as f64);
                let size = (cur * (1.0 - MAX_BALLOON_CHANGE_PERCENT)).max(balloon_min);
                if size <= cur && change_big_enough(size) {
                    Some(size)
                } else {
                    None
                }
            } else if v.size < v.env.ceiling {
                // grow_guest: 5%, but at least so the guest has its desired free memory, a share
                // of its current balloon size (`guest.balloon_cur`), not of its maximum.
                let max = v.env.ceiling.0 as f64;
                let used = v.sample.size.0.saturating_sub(v.sample.available.0) as f64;
                let balloon_min = (used + MIN_GUEST_FREE_PERCENT * cur).max(v.env.floor.0 as f64);
                let size = (cur * (1.0 + MAX_BALLOON_CHANGE_PERCENT))
                    .min(max)
                    .max(balloon_min);
                change_big_enough(size).then_some(size)
            } else {
                None
            };
            if let Some(n) = new {
                let want = v
                    .env
                    .realize_up(Bytes(n.max(0.0) as u64).min(v.env.ceiling));
                if want != v.target {
                    out.push((i, want));
                }
            }
        }
        self.next
    }
}
