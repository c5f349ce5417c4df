//! Proxmox VE's automatic ballooning (pvestatd calling `PVE::AutoBalloon::compute_alg1`):
//! every 10 s, aim the host at 80% memory use; the difference is spread over the guests in
//! proportion to their shares, between each guest's balloon minimum and its maximum memory,
//! moving each by at most 100 MiB per round. Growth goes first to guests short of free memory
//! (free below a quarter of their minimum), shrinking first to guests with enough; when that
//! first group makes no progress, a second pass runs over all guests (`PVE/AutoBalloon.pm` in
//! pve-manager, read at commit 138cae8).

use crate::sim::{Controller, GuestView, HostView};
use crate::units::Bytes;

pub const TARGET_HOST_USE: f64 = 0.80;
pub const MAX_CHANGE: f64 = 100.0 * 1024.0 * 1024.0;
pub const DEAD_BAND: f64 = 10.0 * 1024.0 * 1024.0;
pub const INTERVAL: f64 = 10.0;
pub const SHARES: f64 = 1000.0;

pub struct ProxmoxCtl {
    next: f64,
}

impl ProxmoxCtl {
    pub fn new() -> ProxmoxCtl {
        ProxmoxCtl {
            next: f64::NEG_INFINITY,
        }
    }
}

impl Default for ProxmoxCtl {
    fn default() -> ProxmoxCtl {
        ProxmoxCtl::new()
    }
}

/// One guest as `compute_alg1` sees it.
#[derive(Debug, Clone, Copy)]
pub struct PveGuest {
    pub balloon: f64,
    pub balloon_min: f64,
    pub maxmem: f64,
    pub freemem: f64,
    pub shares: f64,
}

/// `compute_alg1`'s inner `change_func`: move `bytes` (positive: grow) across `ids`, returns
/// what could not be placed. `res` holds the new balloon sizes.
fn pve_change(
    vms: &[PveGuest],
    res: &mut [Option<f64>],
    ids: &[usize],
    bytes: f64,
    maxchange: f64,
) -> f64 {
    let mut rest = bytes;
    let mut repeat = true;
    let mut progress = 1.0;
    let mut done = vec![false; vms.len()];
    while rest != 0.0 && repeat && progress > 0.0 {
        repeat = false;
        progress = 0.0;
        let mut shares_total = 0.0;
        let mut alloc_old = 0.0;
        for &id in ids.iter().filter(|&&id| !done[id]) {
            let d = &vms[id];
            let balloon = res[id].unwrap_or(d.balloon);
            alloc_old += balloon - d.balloon_min;
            shares_total += d.shares;
        }
        let mut changes = 0.0;
        let alloc_new = alloc_old + rest;
        for &id in ids {
            if done[id] {
                continue;
            }
            let d = &vms[id];
            let mut desired = d.balloon_min + ((alloc_new / shares_total) * d.shares).trunc();
            if desired > d.maxmem {
                desired = d.maxmem;
                repeat = true;
            } else if desired < d.balloon_min {
                desired = d.balloon_min;
                repeat = true;
            }
            let balloon = if bytes > 0.0 && desired - d.balloon > 0.0 {
                (d.balloon + maxchange).min(desired)
            } else if desired - d.balloon < 0.0 {
                (d.balloon - maxchange).max(desired)
            } else {
                done[id] = true;
                continue;
            };
            let diff = balloon - d.balloon;
            if diff != 0.0 {
                let old = res[id].unwrap_or(d.balloon);
                res[id] = Some(balloon);
                let change = balloon - old;
                if change != 0.0 {
                    changes += change;
                    progress += diff.abs();
                    repeat = true;
                }
            }
        }
        rest -= changes;
    }
    rest
}

/// `compute_alg1`: new balloon sizes for a host whose use is `goal` bytes below target
/// (negative: above).
pub fn pve_compute(vms: &[PveGuest], goal: f64, maxchange: f64) -> Vec<Option<f64>> {
    let mut pressured = Vec::new();
    let mut enough = Vec::new();
    for (i, d) in vms.iter().enumerate() {
        if d.freemem > d.balloon_min * 0.25 && d.balloon >= d.balloon_min {
            enough.push(i);
        } else {
            pressured.push(i);
        }
    }
    let all: Vec<usize> = (0..vms.len()).collect();
    let mut res = vec![None; vms.len()];
    // "no progress ==> consider all VMs": the second pass runs over every VM (`$idlist`), not
    // the other group, with what the first left over.
    if goal > DEAD_BAND {
        let rest = pve_change(vms, &mut res, &pressured, goal, maxchange);
        if rest >= goal {
            pve_change(vms, &mut res, &all, rest, maxchange);
        }
    } else if goal < -DEAD_BAND {
        let rest = pve_change(vms, &mut res, &enough, goal, maxchange);
        if rest <= goal {
            pve_change(vms, &mut res, &all, rest, maxchange);
        }
    }
    res
}

impl Controller for ProxmoxCtl {
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
        let ids: Vec<usize> = (0..guests.len())
            .filter(|&i| guests[i].present && !guests[i].resizing)
            .collect();
        let vms: Vec<PveGuest> = ids
            .iter()
            .map(|&i| {
                let v = &guests[i];
                PveGuest {
                    balloon: v.size.0 as f64,
                    balloon_min: v.env.floor.0 as f64,
                    maxmem: v.env.ceiling.0 as f64,
                    freemem: v.sample.available.0 as f64,
                    shares: SHARES,
                }
            })
            .collect();
        // Without a host model the host is never short: the goal is room for every guest's
        // maximum, so guests are grown back to it.
        let goal = match host {
            Some(h) => h.memory.0 as f64 * TARGET_HOST_USE - h.used.0 as f64,
            None => vms.iter().map(|d| d.maxmem - d.balloon).sum::<f64>() + 2.0 * DEAD_BAND,
        };
        let res = pve_compute(&vms, goal, MAX_CHANGE);
        for (k, r) in res.into_iter().enumerate() {
            let (Some(b), Some(&i)) = (r, ids.get(k)) else {
                continue;
            };
            let v = &guests[i];
            let want = v
                .env
                .realize_up(Bytes(b.max(0.0) as u64).min(v.env.ceiling));
            if want != v.target {
                out.push((i, want));
            }
        }
        self.next
    }
}
