//! The baselines: what memscale is measured against, each from its published rules.

use super::controllers::{OracleCtl, StaticCtl};
use super::histogram::DecayingHistogram;
use super::{Controller, GuestView, HostView, Model};
use crate::units::Bytes;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Static,
    Oracle,
    Mom,
    Proxmox,
    Vpa,
    Autopilot,
}

impl Baseline {
    pub const ALL: [Baseline; 6] = [
        Baseline::Static,
        Baseline::Oracle,
        Baseline::Mom,
        Baseline::Proxmox,
        Baseline::Vpa,
        Baseline::Autopilot,
    ];

    pub fn build(&self, guests: usize, model: &Model) -> Box<dyn Controller> {
        match self {
            Baseline::Vpa => Box::new(VpaCtl::new(guests)),
            Baseline::Mom => Box::new(MomCtl::new()),
            Baseline::Autopilot => Box::new(AutopilotCtl::new(guests)),
            Baseline::Proxmox => Box::new(ProxmoxCtl::new()),
            Baseline::Static => Box::new(StaticCtl),
            Baseline::Oracle => Box::new(OracleCtl::new(model)),
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Baseline::Static => "static",
            Baseline::Oracle => "oracle",
            Baseline::Vpa => "vpa",
            Baseline::Mom => "mom",
            Baseline::Autopilot => "autopilot",
            Baseline::Proxmox => "proxmox",
        })
    }
}

impl FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Baseline, String> {
        Baseline::ALL
            .iter()
            .copied()
            .find(|b| b.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Baseline::ALL.iter().map(|b| b.to_string()).collect();
                format!("unknown baseline {s:?}: choose from {}", names.join(", "))
            })
    }
}

const MIB_F: f64 = 1024.0 * 1024.0;

/// The Kubernetes Vertical Pod Autoscaler, memory only: the recommender's decaying
/// histogram of per-interval usage peaks, its percentiles, safety margin, confidence-scaled
/// bounds and OOM bump, and the updater's rule for when a new recommendation is applied.
/// Constants are the recommender's and updater's defaults (kubernetes/autoscaler,
/// vertical-pod-autoscaler: pkg/recommender/logic/recommender.go, estimator.go,
/// model/aggregate_container_state.go, model/container.go, pkg/updater/priority/).
pub mod vpa {
    /// `--memory-histogram-decay-half-life`.
    pub const HALF_LIFE: f64 = 24.0 * 3600.0;
    /// `--memory-aggregation-interval`: one peak per interval enters the histogram.
    pub const AGGREGATION: f64 = 24.0 * 3600.0;
    /// `--target-memory-percentile`, and the lower and upper bound percentiles.
    pub const TARGET: f64 = 0.9;
    pub const LOWER: f64 = 0.5;
    pub const UPPER: f64 = 0.95;
    /// `--recommendation-margin-fraction`.
    pub const MARGIN: f64 = 0.15;
    /// `--pod-recommendation-min-memory-mb`.
    pub const MIN_MIB: f64 = 250.0;
    /// OOM handling: the next peak is the larger of used × 1.2 and used + 100 MiB.
    pub const OOM_RATIO: f64 = 1.2;
    pub const OOM_MIN_MIB: f64 = 100.0;
    /// The updater acts when the allocation leaves [lower, upper], or when the target differs
    /// by more than 10% from it and the pod has lived 12 hours.
    pub const UPDATE_THRESHOLD: f64 = 0.1;
    pub const LIFETIME: f64 = 12.0 * 3600.0;
    /// Metrics resolution and recommender loop.
    pub const PERIOD: f64 = 60.0;
}

struct VpaGuest {
    hist: DecayingHistogram,
    first: f64,
    window_start: f64,
    window_end: f64,
    peak: f64,
    was_pressured: bool,
    /// p50, p90, p95 of the histogram; None when it changed since.
    cached: Option<(f64, f64, f64)>,
    next: f64,
}

pub struct VpaCtl {
    guests: Vec<Option<VpaGuest>>,
}

impl VpaCtl {
    pub fn new(n: usize) -> VpaCtl {
        VpaCtl {
            guests: (0..n).map(|_| None).collect(),
        }
    }
}

impl VpaGuest {
    fn add_peak_sample(&mut self, v: f64, t: f64) {
        if t >= self.window_end {
            self.window_start = t;
            self.window_end = t + vpa::AGGREGATION;
            self.peak = 0.0;
        }
        if v > self.peak {
            if self.peak > 0.0 {
                self.hist.subtract(self.peak, 1.0, self.window_start);
            }
            self.hist.add(v, 1.0, self.window_start);
            self.peak = v;
            self.cached = None;
        }
    }

    /// (lower, target, upper) in bytes at time `now`.
    fn recommendation(&mut self, now: f64) -> (f64, f64, f64) {
        let (p50, p90, p95) = match self.cached {
            Some(c) => c,
            None => {
                let c = (
                    self.hist.percentile(vpa::LOWER),
                    self.hist.percentile(vpa::TARGET),
                    self.hist.percentile(vpa::UPPER),
                );
                self.cached = Some(c);
                c
            }
        };
        let min = vpa::MIN_MIB * MIB_F;
        let est = |p: f64| (p * (1.0 + vpa::MARGIN)).max(min);
        // Confidence in days: the lifespan of the history, and the samples seen (one a minute)
        // over a day's worth, whichever is smaller; they agree here.
        let conf = ((now - self.first) / 86400.0).max(0.0);
        let upper = if conf > 0.0 {
            est(p95) * (1.0 + 1.0 / conf)
        } else {
            f64::INFINITY
        };
        let lower = if conf > 0.0 {
            est(p50) * (1.0 + 0.001 / conf).powf(-2.0)
        } else {
            0.0
        };
        (lower, est(p90), upper)
    }
}

impl Controller for VpaCtl {
    fn tick(
        &mut self,
        now: f64,
        guests: &[GuestView],
        _host: Option<&HostView>,
        out: &mut Vec<(usize, Bytes)>,
    ) -> f64 {
        let mut wake = f64::INFINITY;
        for (i, v) in guests.iter().enumerate() {
            if !v.present {
                continue;
            }
            let Some(slot) = self.guests.get_mut(i) else {
                continue;
            };
            let g = slot.get_or_insert_with(|| VpaGuest {
                hist: DecayingHistogram::vpa_memory(vpa::HALF_LIFE),
                first: now,
                window_start: now,
                window_end: f64::NEG_INFINITY,
                peak: 0.0,
                was_pressured: false,
                cached: None,
                next: now,
            });
            // An OOM is seen the moment it happens; the rest runs once a minute.
            let oom = v.pressured && !g.was_pressured;
            g.was_pressured = v.pressured;
            if oom {
                let used = (v.size.0 as f64).max(g.peak);
                let needed = (used + vpa::OOM_MIN_MIB * MIB_F).max(used * vpa::OOM_RATIO);
                g.add_peak_sample(needed, now);
            }
            if now < g.next && !oom {
                wake = wake.min(g.next);
                continue;
            }
            g.next = now + vpa::PERIOD;
            wake = wake.min(g.next);
            // Usage as a container runtime sees it: never above the allocation.
            g.add_peak_sample(v.sample.need().0 as f64, now);
            if v.resizing {
                continue;
            }
            let (lower, target, upper) = g.recommendation(now);
            let alloc = v.size.0 as f64;
            let outside = alloc < lower || alloc > upper;
            let drift = (target - alloc).abs() / alloc.max(1.0) > vpa::UPDATE_THRESHOLD
                && now - g.first >= vpa::LIFETIME;
            if outside || drift || oom {
                let want = v
                    .env
                    .realize_up(Bytes(target.min(v.env.ceiling.0 as f64) as u64));
                if want != v.target {
                    out.push((i, want));
                }
            }
        }
        wake
    }
}

/// oVirt MoM's shipped ballooning rules (`doc/balloon.rules` in github.com/oVirt/mom):
/// nothing moves until host free memory falls below the pressure threshold; then every guest
/// gives up at most 5% per round down to what it uses plus a free share scaled by the host's
/// pressure (negative when critical: the guest is made to swap); otherwise every ballooned
/// guest grows by 5% per round (at least to its use plus 20% of its maximum), up to its
/// maximum. Evaluated every 10 s (MoM's policy engine interval).
pub mod mom {
    pub const PRESSURE_THRESHOLD: f64 = 0.20;
    pub const PRESSURE_CRITICAL: f64 = 0.05;
    pub const MIN_GUEST_FREE_PERCENT: f64 = 0.20;
    pub const MAX_BALLOON_CHANGE_PERCENT: f64 = 0.05;
    pub const MIN_BALLOON_CHANGE_PERCENT: f64 = 0.0025;
    pub const INTERVAL: f64 = 10.0;
}

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
        self.next = now + mom::INTERVAL;
        // Without a host model the host is never short: MoM only ever grows guests.
        let host_free = host
            .map(|h| (h.memory.0 as f64 - h.used.0 as f64) / (h.memory.0 as f64).max(1.0))
            .unwrap_or(1.0);
        let pressure = host_free < mom::PRESSURE_THRESHOLD;
        for (i, v) in guests.iter().enumerate() {
            if !v.present || v.resizing {
                continue;
            }
            let cur = v.size.0 as f64;
            let change_big_enough =
                |new: f64| (new - cur).abs() > mom::MIN_BALLOON_CHANGE_PERCENT * cur;
            let new = if pressure {
                let guest_free_percent = if host_free <= mom::PRESSURE_CRITICAL {
                    -0.05 + host_free
                } else {
                    mom::MIN_GUEST_FREE_PERCENT * (host_free / mom::PRESSURE_THRESHOLD)
                };
                // balloon_cur - mem_unused
                let used = v.sample.size.0.saturating_sub(v.sample.available.0) as f64;
                let balloon_min = (used + guest_free_percent * cur).max(v.env.floor.0 as f64);
                let size = (cur * (1.0 - mom::MAX_BALLOON_CHANGE_PERCENT)).max(balloon_min);
                if size <= cur && change_big_enough(size) {
                    Some(size)
                } else {
                    None
                }
            } else if v.size < v.env.ceiling {
                // Grow by 5%, but at least so the guest has its desired free memory.
                let max = v.env.ceiling.0 as f64;
                let used = v.sample.size.0.saturating_sub(v.sample.available.0) as f64;
                let balloon_min = used + mom::MIN_GUEST_FREE_PERCENT * max;
                let size = (cur * (1.0 + mom::MAX_BALLOON_CHANGE_PERCENT))
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

/// Proxmox VE's automatic ballooning (pvestatd calling `PVE::AutoBalloon::compute_alg1`):
/// every 10 s, aim the host at 80% memory use; the difference is spread over the guests in
/// proportion to their shares, between each guest's balloon minimum and its maximum memory,
/// moving each by at most 100 MiB per round. Growth goes first to guests short of free memory
/// (free below a quarter of their minimum), shrinking first to guests with enough.
pub mod proxmox {
    pub const TARGET_HOST_USE: f64 = 0.80;
    pub const MAX_CHANGE: f64 = 100.0 * 1024.0 * 1024.0;
    pub const DEAD_BAND: f64 = 10.0 * 1024.0 * 1024.0;
    pub const INTERVAL: f64 = 10.0;
    pub const SHARES: f64 = 1000.0;
}

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
    let mut res = vec![None; vms.len()];
    if goal > proxmox::DEAD_BAND {
        let rest = pve_change(vms, &mut res, &pressured, goal, maxchange);
        if rest >= goal {
            pve_change(vms, &mut res, &enough, goal, maxchange);
        }
    } else if goal < -proxmox::DEAD_BAND {
        let rest = pve_change(vms, &mut res, &enough, goal, maxchange);
        if rest <= goal {
            pve_change(vms, &mut res, &pressured, goal, maxchange);
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
        self.next = now + proxmox::INTERVAL;
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
                    shares: proxmox::SHARES,
                }
            })
            .collect();
        // Without a host model the host is never short: the goal is room for every guest's
        // maximum, so guests are grown back to it.
        let goal = match host {
            Some(h) => h.memory.0 as f64 * proxmox::TARGET_HOST_USE - h.used.0 as f64,
            None => {
                vms.iter().map(|d| d.maxmem - d.balloon).sum::<f64>() + 2.0 * proxmox::DEAD_BAND
            }
        };
        let res = pve_compute(&vms, goal, proxmox::MAX_CHANGE);
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

/// Google Autopilot's moving-window memory recommender (Rzadca et al., EuroSys 2020, §3.1):
/// the memory signal is the peak usage of each 5-minute window; the `max` statistic (the
/// variant the paper gives for jobs least tolerant of OOMs, which a VM is) takes the highest
/// peak over the moving window, and a safety margin is added on top. Limits rise at once and
/// fall only as peaks leave the window. The paper does not publish its production window
/// length or margin: `docs/simulation.md` states the values used here.
pub mod autopilot {
    /// The memory signal's aggregation: one peak per 5 minutes.
    pub const SIGNAL: f64 = 300.0;
    /// The moving window the peaks are taken over.
    pub const WINDOW: f64 = 24.0 * 3600.0;
    /// Safety margin on top of the statistic.
    pub const MARGIN: f64 = 0.10;
    /// After an OOM the limit is raised by this much of itself at once.
    pub const OOM_BUMP: f64 = 0.20;
}

#[derive(Default)]
struct AutopilotGuest {
    /// (window start, peak) of closed 5-minute windows, oldest first.
    peaks: std::collections::VecDeque<(f64, f64)>,
    window: f64,
    peak: f64,
    started: bool,
    was_pressured: bool,
}

pub struct AutopilotCtl {
    guests: Vec<AutopilotGuest>,
}

impl AutopilotCtl {
    pub fn new(n: usize) -> AutopilotCtl {
        AutopilotCtl {
            guests: (0..n).map(|_| AutopilotGuest::default()).collect(),
        }
    }
}

impl Controller for AutopilotCtl {
    fn tick(
        &mut self,
        now: f64,
        guests: &[GuestView],
        _host: Option<&HostView>,
        out: &mut Vec<(usize, Bytes)>,
    ) -> f64 {
        let mut wake = f64::INFINITY;
        for (i, v) in guests.iter().enumerate() {
            if !v.present {
                continue;
            }
            let Some(g) = self.guests.get_mut(i) else {
                continue;
            };
            let k = (now / autopilot::SIGNAL).floor() * autopilot::SIGNAL;
            if !g.started {
                g.started = true;
                g.window = k;
            }
            let mut changed = false;
            if k > g.window {
                g.peaks.push_back((g.window, g.peak));
                g.window = k;
                g.peak = 0.0;
                changed = true;
            }
            while g
                .peaks
                .front()
                .is_some_and(|(t, _)| *t < now - autopilot::WINDOW)
            {
                g.peaks.pop_front();
                changed = true;
            }
            let usage = v.sample.need().0 as f64;
            if usage > g.peak {
                g.peak = usage;
                changed = true;
            }
            let oom = v.pressured && !g.was_pressured;
            g.was_pressured = v.pressured;
            if oom {
                // The task died at its limit: the peak it needed is above the limit.
                g.peak = g.peak.max(v.size.0 as f64 * (1.0 + autopilot::OOM_BUMP));
                changed = true;
            }
            wake = wake.min(k + autopilot::SIGNAL);
            if !changed || v.resizing {
                continue;
            }
            let s_max = g.peaks.iter().map(|p| p.1).fold(g.peak, f64::max);
            let limit = s_max * (1.0 + autopilot::MARGIN);
            let want = v
                .env
                .realize_up(Bytes(limit.min(v.env.ceiling.0 as f64) as u64));
            if want != v.target {
                out.push((i, want));
            }
        }
        wake
    }
}
