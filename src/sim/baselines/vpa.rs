//! The Kubernetes Vertical Pod Autoscaler, memory only: the recommender's decaying
//! histogram of per-interval usage peaks, its percentiles, safety margin, confidence-scaled
//! bounds and OOM bump, and the updater's rule for when a new recommendation is applied.
//! Constants are the recommender's and updater's defaults (kubernetes/autoscaler,
//! vertical-pod-autoscaler: pkg/recommender/logic/recommender.go, estimator.go,
//! model/aggregate_container_state.go, model/container.go, pkg/updater/priority/).

use crate::sim::histogram::DecayingHistogram;
use crate::sim::{Controller, GuestView, HostView};
use crate::units::Bytes;

const MIB_F: f64 = 1024.0 * 1024.0;

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
/// The updater (`pkg/updater/priority/update_priority_calculator.go`, `AddPod`) acts when the
/// allocation leaves [lower, upper]; or when the pod has lived
/// `--in-recommendation-bounds-eviction-lifetime-threshold` (12 h) and the target differs by
/// `--pod-update-threshold` (10%) or more; or after a quick OOM: a container OOM-killed less
/// than `--evict-after-oom-threshold` (10 min) after it started. An update evicts the pod: the
/// new pod's lifetime starts again at zero.
pub const UPDATE_THRESHOLD: f64 = 0.1;
pub const LIFETIME: f64 = 12.0 * 3600.0;
pub const EVICT_AFTER_OOM: f64 = 600.0;
/// Metrics resolution, recommender loop and `--updater-interval` (1 min).
pub const PERIOD: f64 = 60.0;

struct VpaGuest {
    hist: DecayingHistogram,
    first: f64,
    window_start: f64,
    window_end: f64,
    peak: f64,
    /// The interval's usage peak (OOM samples left out: `memoryPeak`).
    usage_peak: f64,
    was_pressured: bool,
    /// The pod's start: its creation, or the last update (an eviction recreates it).
    pod_start: f64,
    /// The container's start: the pod's, or its restart after the last OOM kill.
    container_start: f64,
    /// An OOM kill the updater has not looked at yet: was it quick?
    oom_seen: Option<bool>,
    /// p50, p90, p95 of the histogram; None when it changed since.
    cached: Option<(f64, f64, f64)>,
    next: f64,
}

pub struct VpaCtl {
    guests: Vec<Option<VpaGuest>>,
    /// The rule before issue 18, for its test: the 12 h counted from the first sample, never
    /// reset by an update.
    never_reset: bool,
}

impl VpaCtl {
    pub fn new(n: usize) -> VpaCtl {
        VpaCtl {
            guests: (0..n).map(|_| None).collect(),
            never_reset: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn never_resetting(n: usize) -> VpaCtl {
        VpaCtl {
            never_reset: true,
            ..VpaCtl::new(n)
        }
    }
}

impl VpaGuest {
    /// `ContainerState.addMemorySample`: one peak per aggregation interval, the larger of the
    /// usage peak and the OOM peak.
    fn add_peak_sample(&mut self, v: f64, t: f64, oom: bool) {
        if t >= self.window_end {
            self.window_start = t;
            self.window_end = t + AGGREGATION;
            self.peak = 0.0;
            self.usage_peak = 0.0;
        }
        if !oom {
            self.usage_peak = self.usage_peak.max(v);
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
                    self.hist.percentile(LOWER),
                    self.hist.percentile(TARGET),
                    self.hist.percentile(UPPER),
                );
                self.cached = Some(c);
                c
            }
        };
        let min = MIN_MIB * MIB_F;
        let est = |p: f64| (p * (1.0 + MARGIN)).max(min);
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
                hist: DecayingHistogram::vpa_memory(HALF_LIFE),
                first: now,
                window_start: now,
                window_end: f64::NEG_INFINITY,
                peak: 0.0,
                usage_peak: 0.0,
                was_pressured: false,
                pod_start: now,
                container_start: now,
                oom_seen: None,
                cached: None,
                next: now,
            });
            // An OOM kill is recorded the moment it happens (the recommender's OOM observer):
            // when demand first goes above the allocation, and again once an updater period
            // while it stays there (the restarted container is killed at the same limit).
            let periodic = now >= g.next;
            let oom = v.pressured && (!g.was_pressured || periodic);
            g.was_pressured = v.pressured;
            if oom {
                // `RecordOOM`: the larger of the request and the usage peak ("omitting oomPeak
                // here to protect against recommendation running too high on subsequent
                // OOMs"), bumped.
                let used = (v.size.0 as f64).max(g.usage_peak);
                let needed = (used + OOM_MIN_MIB * MIB_F).max(used * OOM_RATIO);
                g.add_peak_sample(needed, now, true);
                let quick = now - g.container_start < EVICT_AFTER_OOM;
                g.oom_seen = Some(g.oom_seen.unwrap_or(false) || quick);
                g.container_start = now;
            }
            // The rest (metrics, recommender, updater) runs once a minute.
            if !periodic {
                wake = wake.min(g.next);
                continue;
            }
            g.next = now + PERIOD;
            wake = wake.min(g.next);
            // Usage as a container runtime sees it: never above the allocation.
            g.add_peak_sample(v.sample.need().0 as f64, now, false);
            if v.resizing {
                continue;
            }
            let (lower, target, upper) = g.recommendation(now);
            let alloc = v.size.0 as f64;
            let outside = alloc < lower || alloc > upper;
            let diff = (target - alloc).abs() / alloc.max(1.0);
            let drift = diff >= UPDATE_THRESHOLD && now - g.pod_start >= LIFETIME;
            let quick_oom = g.oom_seen.take() == Some(true) && diff > 0.0;
            if outside || drift || quick_oom {
                let want = v
                    .env
                    .realize_up(Bytes(target.min(v.env.ceiling.0 as f64) as u64));
                if want != v.target {
                    out.push((i, want));
                    // Evicted and recreated with the new request.
                    if !self.never_reset {
                        g.pod_start = now;
                    }
                    g.container_start = now;
                }
            }
        }
        wake
    }
}
