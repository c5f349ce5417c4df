//! Google Autopilot's moving-window memory recommender (Rzadca et al., EuroSys 2020, §3.1):
//! the memory signal is the peak usage of each 5-minute window; the `max` statistic (the
//! variant the paper gives for jobs least tolerant of OOMs, which a VM is) takes the highest
//! peak over the moving window, and a safety margin is added on top. Limits rise at once and
//! fall only as peaks leave the window. The paper does not publish its production window
//! length or margin: `docs/simulation.md` states the values used here.

use crate::sim::{Controller, GuestView, HostView};
use crate::units::Bytes;

/// The memory signal's aggregation: one peak per 5 minutes.
pub const SIGNAL: f64 = 300.0;
/// The moving window the peaks are taken over.
pub const WINDOW: f64 = 24.0 * 3600.0;
/// Safety margin on top of the statistic.
pub const MARGIN: f64 = 0.10;
/// After an OOM the limit is raised by this much of itself at once.
pub const OOM_BUMP: f64 = 0.20;

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
            let k = (now / SIGNAL).floor() * SIGNAL;
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
            while g.peaks.front().is_some_and(|(t, _)| *t < now - WINDOW) {
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
                g.peak = g.peak.max(v.size.0 as f64 * (1.0 + OOM_BUMP));
                changed = true;
            }
            wake = wake.min(k + SIGNAL);
            if !changed || v.resizing {
                continue;
            }
            let s_max = g.peaks.iter().map(|p| p.1).fold(g.peak, f64::max);
            let limit = s_max * (1.0 + MARGIN);
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
