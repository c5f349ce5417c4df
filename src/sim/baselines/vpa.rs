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
/// The updater acts when the allocation leaves [lower, upper], or when the target differs
/// by more than 10% from it and the pod has lived 12 hours.
pub const UPDATE_THRESHOLD: f64 = 0.1;
pub const LIFETIME: f64 = 12.0 * 3600.0;
/// Metrics resolution and recommender loop.
pub const PERIOD: f64 = 60.0;

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
            self.window_end = t + AGGREGATION;
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
                was_pressured: false,
                cached: None,
                next: now,
            });
            // An OOM is seen the moment it happens; the rest runs once a minute.
            let oom = v.pressured && !g.was_pressured;
            g.was_pressured = v.pressured;
            if oom {
                let used = (v.size.0 as f64).max(g.peak);
                let needed = (used + OOM_MIN_MIB * MIB_F).max(used * OOM_RATIO);
                g.add_peak_sample(needed, now);
            }
            if now < g.next && !oom {
                wake = wake.min(g.next);
                continue;
            }
            g.next = now + PERIOD;
            wake = wake.min(g.next);
            // Usage as a container runtime sees it: never above the allocation.
            g.add_peak_sample(v.sample.need().0 as f64, now);
            if v.resizing {
                continue;
            }
            let (lower, target, upper) = g.recommendation(now);
            let alloc = v.size.0 as f64;
            let outside = alloc < lower || alloc > upper;
            let drift = (target - alloc).abs() / alloc.max(1.0) > UPDATE_THRESHOLD
                && now - g.first >= LIFETIME;
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
