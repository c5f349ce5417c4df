//! The two reference points every run is measured against: a static allocation (what a host
//! without memscale gives every guest) and an oracle that knows the recorded future.

use crate::sim::{Controller, GuestView, HostView, Model};
use crate::units::Bytes;

/// Always the ceiling: what a host without memscale gives every guest.
pub struct StaticCtl;

impl Controller for StaticCtl {
    fn tick(
        &mut self,
        _now: f64,
        _guests: &[GuestView],
        _host: Option<&HostView>,
        _out: &mut Vec<(usize, Bytes)>,
    ) -> f64 {
        f64::INFINITY
    }
}

/// Knows the recorded future: sizes each guest to the largest demand until its next resize
/// could land, with the same granularity, delay and speeds as everyone else. The physical
/// limit of reclaiming without pressure.
pub struct OracleCtl {
    interval: f64,
    model: Model,
}

impl OracleCtl {
    pub fn new(model: &Model) -> OracleCtl {
        OracleCtl {
            interval: model.interval,
            model: model.clone(),
        }
    }
}

impl Controller for OracleCtl {
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
            if v.resizing {
                wake = wake.min(now + self.interval);
                continue;
            }
            // A request made now lands within `lag`; the next one is made at most a tick after
            // that and lands within another `lag`: cover the demand until then.
            let lag = self.model.delay
                + v.env.ceiling.saturating_sub(v.env.floor).0 as f64
                    / self.model.grow_speed.min(self.model.shrink_speed).max(1.0);
            let horizon = self.interval + 2.0 * lag;
            let want = v.env.realize_up(v.max_demand(now, now + horizon));
            if want != v.target {
                out.push((i, want));
            }
            // What it wants changes only when a sample enters the horizon (or the current one
            // ends, which wakes every controller anyway).
            let tr = v.trace;
            let k = tr.times.partition_point(|&x| (x as f64) <= now + horizon);
            if let Some(&x) = tr.times.get(k) {
                wake = wake.min(x as f64 - horizon);
            }
        }
        wake
    }
}
