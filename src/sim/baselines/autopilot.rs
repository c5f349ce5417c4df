//! Google Autopilot's moving-window memory recommender (Rzadca et al., "Autopilot: workload
//! autoscaling at Google", EuroSys 2020, §3.1–3.2): the memory signal is the peak usage of each
//! 5-minute window; the `max` statistic (the variant the paper gives for jobs least tolerant of
//! OOMs, which a VM is) takes the highest peak over the moving window, and a safety margin is
//! added on top. The recommendation is computed from the aggregated signal, so it changes when
//! a 5-minute window closes (a new peak, or an old one leaving the window), not on every
//! sample; an OOM raises the limit at once. The paper does not publish its production window
//! length, margin or OOM reaction: they are parameters here (`Params`), with the values this
//! project uses as defaults, and `docs/simulation.md` shows the results' sensitivity to them.

use crate::sim::{Controller, GuestView, HostView};
use crate::units::{Bytes, Dur, Percent};

/// The memory signal's aggregation: one peak per 5 minutes (the paper's s[t]).
pub const SIGNAL: f64 = 300.0;

/// The constants the paper does not publish. Integers so a baseline stays `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    /// The moving window the peaks are taken over, seconds.
    pub window_s: u64,
    /// Safety margin on top of the statistic, per mille.
    pub margin_pm: u64,
    /// After an OOM the limit is raised by this much of itself at once, per mille.
    pub oom_bump_pm: u64,
}

impl Default for Params {
    /// This project's choice: a day's window, 10% margin, 20% OOM bump.
    fn default() -> Params {
        Params {
            window_s: 24 * 3600,
            margin_pm: 100,
            oom_bump_pm: 200,
        }
    }
}

impl Params {
    /// `window=12h,margin=5%,oom=20%` (any subset, in any order).
    pub fn parse(s: &str) -> Result<Params, String> {
        let mut p = Params::default();
        for kv in s.split(',').filter(|x| !x.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("autopilot parameter {kv:?}: expected NAME=VALUE"))?;
            let pm = |v: &str| -> Result<u64, String> {
                let f = Percent::parse(v)
                    .map_err(|e| format!("autopilot {k}: {e}"))?
                    .fraction();
                Ok((f * 1000.0).round() as u64)
            };
            match k {
                "window" => {
                    let d = Dur::parse(v).map_err(|e| format!("autopilot window: {e}"))?;
                    if d.as_secs_f64() < SIGNAL {
                        return Err("autopilot window: must be at least 5m".into());
                    }
                    p.window_s = d.as_secs_f64() as u64;
                }
                "margin" => p.margin_pm = pm(v)?,
                "oom" => p.oom_bump_pm = pm(v)?,
                _ => {
                    return Err(format!(
                        "autopilot parameter {k:?}: choose from window, margin, oom"
                    ));
                }
            }
        }
        Ok(p)
    }

    pub fn window(&self) -> f64 {
        self.window_s as f64
    }
    pub fn margin(&self) -> f64 {
        self.margin_pm as f64 / 1000.0
    }
    pub fn oom_bump(&self) -> f64 {
        self.oom_bump_pm as f64 / 1000.0
    }

    /// `window=24h,margin=10%,oom=20%`.
    pub fn describe(&self) -> String {
        let w = if self.window_s.is_multiple_of(3600) {
            format!("{}h", self.window_s / 3600)
        } else {
            format!("{}s", self.window_s)
        };
        let pct = |pm: u64| {
            if pm.is_multiple_of(10) {
                format!("{}%", pm / 10)
            } else {
                format!("{}%", pm as f64 / 10.0)
            }
        };
        format!(
            "window={w},margin={},oom={}",
            pct(self.margin_pm),
            pct(self.oom_bump_pm)
        )
    }
}

#[derive(Default)]
struct AutopilotGuest {
    /// (window start, peak) of closed 5-minute windows, oldest first.
    peaks: std::collections::VecDeque<(f64, f64)>,
    window: f64,
    peak: f64,
    started: bool,
    was_pressured: bool,
    /// An OOM's raise, held until a window's peak is above it or it leaves the window.
    oom_floor: Option<(f64, f64)>,
    /// A decision due while a resize was landing: made on the next tick.
    pending: bool,
}

pub struct AutopilotCtl {
    params: Params,
    guests: Vec<AutopilotGuest>,
}

impl AutopilotCtl {
    pub fn new(n: usize, params: Params) -> AutopilotCtl {
        AutopilotCtl {
            params,
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
        let window = self.params.window();
        for (i, v) in guests.iter().enumerate() {
            if !v.present {
                continue;
            }
            let Some(g) = self.guests.get_mut(i) else {
                continue;
            };
            let k = (now / SIGNAL).floor() * SIGNAL;
            let first = !g.started;
            if first {
                g.started = true;
                g.window = k;
            }
            // The signal: the peak of the current 5-minute window, seen by the recommender
            // once the window closes.
            let mut decide = first || g.pending;
            let closed = k > g.window;
            if closed {
                g.peaks.push_back((g.window, g.peak));
                g.window = k;
                g.peak = 0.0;
                decide = true;
            }
            while g.peaks.front().is_some_and(|(t, _)| *t < now - window) {
                g.peaks.pop_front();
            }
            if g.oom_floor.is_some_and(|(t, _)| t < now - window) {
                g.oom_floor = None;
            }
            let usage = v.sample.need().0 as f64;
            g.peak = g.peak.max(usage);
            // An OOM kill when demand first goes above the limit, and again each 5-minute
            // window it stays there (the restarted task dies at the same limit).
            let oom = v.pressured && (!g.was_pressured || closed);
            g.was_pressured = v.pressured;
            if oom {
                // The task died at its limit: the limit goes up at once by the bump, and stays
                // at least there while the OOM is inside the window.
                let raised = v.size.0 as f64 * (1.0 + self.params.oom_bump());
                let f = raised / (1.0 + self.params.margin());
                g.oom_floor = Some((now, g.oom_floor.map_or(f, |(_, o)| o.max(f))));
                decide = true;
            }
            wake = wake.min(k + SIGNAL);
            if v.resizing {
                g.pending |= decide;
                if g.pending {
                    // Look again as soon as it has landed.
                    wake = wake.min(now + 1.0);
                }
                continue;
            }
            g.pending = false;
            if !decide {
                continue;
            }
            let mut s_max = g.peaks.iter().map(|p| p.1).fold(0.0, f64::max);
            if g.peaks.is_empty() {
                // Nothing closed yet, or an OOM: what is known now counts.
                s_max = s_max.max(g.peak);
            }
            if let Some((_, f)) = g.oom_floor {
                s_max = s_max.max(f);
            }
            let limit = s_max * (1.0 + self.params.margin());
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
