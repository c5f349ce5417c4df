//! What drives the modelled guests: the daemon's planner under a policy, and the baselines it
//! is measured against. Each baseline follows its published rules; sources and constants are
//! cited in `docs/simulation.md` and beside each implementation.

use super::{Controller, GuestView, HostView, Model};
use crate::envelope::Envelope;
use crate::fairshare::{Claim, share};
use crate::planner::{self, History, Input, Kind, PeakTracker, Sample};
use crate::policy::{Knobs, Policy};
use crate::units::Bytes;
use std::collections::VecDeque;
use std::fmt;

pub use super::baselines::Baseline;

/// One thing to simulate.
#[derive(Debug, Clone)]
pub enum Spec {
    Policy(Box<Policy>),
    Baseline(Baseline),
}

impl Spec {
    pub fn name(&self) -> String {
        match self {
            Spec::Policy(p) => p.name.clone(),
            Spec::Baseline(b) => b.to_string(),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Policy(_) => "policy",
            Spec::Baseline(_) => "baseline",
        }
    }
    pub fn build(&self, guests: usize, model: &Model) -> Box<dyn Controller> {
        match self {
            Spec::Policy(p) => Box::new(PolicyCtl::new(&p.knobs, guests, model)),
            Spec::Baseline(b) => b.build(guests, model),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The planner's view of one guest, kept across ticks as the daemon keeps it.
#[derive(Default)]
struct PolicyGuest {
    env: Option<Envelope>,
    samples: VecDeque<Sample>,
    peaks: PeakTracker,
    hist: History,
    /// What the planner last asked for, and the need behind it (for host squeezing).
    want: Bytes,
    need: Bytes,
    /// Not asked again before this time unless what it sees changes.
    wake: f64,
    seen: Option<(u64, u64, u64, bool)>,
}

/// The daemon's planner, exactly as the daemon calls it: one sample per guest per tick, the
/// policy's envelope limits, history of its own resizes, holds while a resize is under way.
pub struct PolicyCtl {
    knobs: Knobs,
    interval: f64,
    /// Span of samples kept: what the planner's windows can look at, plus one tick.
    keep: f64,
    guests: Vec<PolicyGuest>,
    last_now: f64,
}

fn since(now: f64, t: Option<f64>) -> f64 {
    t.map(|t| now - t).unwrap_or(f64::INFINITY)
}

impl PolicyCtl {
    pub fn new(knobs: &Knobs, guests: usize, model: &Model) -> PolicyCtl {
        let keep = knobs
            .window
            .as_secs_f64()
            .max(knobs.trend_window.as_secs_f64())
            + model.interval;
        PolicyCtl {
            knobs: knobs.clone(),
            interval: model.interval,
            keep,
            last_now: 0.0,
            guests: (0..guests)
                .map(|_| PolicyGuest {
                    peaks: PeakTracker::new(knobs.peak_window.as_secs_f64()),
                    ..PolicyGuest::default()
                })
                .collect(),
        }
    }

    /// After a hold: will every later tick hold the same way as long as what the guest
    /// reports does not change? True when the sample window is full of identical samples and
    /// every cooldown the planner consults has run out. Checked against evaluating every tick
    /// by `sim::tests::skipping_quiet_ticks_changes_nothing`.
    fn steady(&self, g: &PolicyGuest, now: f64) -> bool {
        let k = &self.knobs;
        if k.grow_rate.per_sec().0 > 0 {
            return false;
        }
        let (Some(first), Some(last)) = (g.samples.front(), g.samples.back()) else {
            return false;
        };
        if first.at > now - self.keep + self.interval * 0.5 {
            return false;
        }
        let same = g.samples.iter().all(|s| {
            s.size == last.size
                && s.total == last.total
                && s.available == last.available
                && s.swap_in_rate == last.swap_in_rate
        });
        let grow_quiet = [k.grow_cooldown, k.shrink_cooldown, k.trend_window, k.window]
            .iter()
            .all(|d| since(now, g.hist.last_grow) >= d.as_secs_f64());
        let shrink_quiet = [k.shrink_interval, k.window]
            .iter()
            .all(|d| since(now, g.hist.last_shrink) >= d.as_secs_f64());
        same && grow_quiet && shrink_quiet
    }
}

impl Controller for PolicyCtl {
    fn tick(
        &mut self,
        now: f64,
        guests: &[GuestView],
        host: Option<&HostView>,
        out: &mut Vec<(usize, Bytes)>,
    ) -> f64 {
        let mut wake = f64::INFINITY;
        let iv = self.interval;
        self.last_now = now;
        for (i, v) in guests.iter().enumerate() {
            if !v.present {
                continue;
            }
            let Some(g) = self.guests.get_mut(i) else {
                continue;
            };
            let seen = (
                v.sample.size.0,
                v.sample.available.0,
                v.sample.swap_in_rate.to_bits(),
                v.resizing,
            );
            if now < g.wake && g.seen == Some(seen) {
                wake = wake.min(g.wake);
                continue;
            }
            // Ticks skipped while nothing changed reported what the last one did.
            if let Some(last) = g.samples.back().copied() {
                let k_last = (last.at / iv).round() as i64;
                let k_now = (now / iv).round() as i64;
                let k_keep = ((now - self.keep) / iv).ceil() as i64;
                for k in (k_last + 1).max(k_keep)..k_now {
                    g.samples.push_back(Sample {
                        at: k as f64 * iv,
                        ..last
                    });
                }
            }
            g.samples.push_back(v.sample);
            g.peaks.observe(&v.sample);
            while g
                .samples
                .front()
                .is_some_and(|s| s.at < now - self.keep - 1e-6)
            {
                g.samples.pop_front();
            }
            g.seen = Some(seen);
            if v.resizing {
                // The daemon holds a guest while its resize is under way.
                g.wake = now + iv;
                wake = wake.min(g.wake);
                continue;
            }
            let knobs = &self.knobs;
            let env = g.env.get_or_insert_with(|| v.env.limited(&knobs.limits()));
            let d = planner::plan(&Input {
                now,
                envelope: env,
                knobs,
                size: v.size,
                samples: g.samples.make_contiguous(),
                history: g.hist,
                peak: g.peaks.peak(now),
            });
            g.want = d.target;
            g.need = (d.need + knobs.min_free).min(d.target.max(v.size));
            match d.kind {
                Kind::Grow => {
                    g.hist.last_grow = Some(now);
                    out.push((i, d.target));
                }
                Kind::Shrink => {
                    g.hist.last_shrink = Some(now);
                    out.push((i, d.target));
                }
                Kind::Hold => {}
            }
            let steady = d.kind == Kind::Hold && self.steady(&self.guests[i], now);
            let g = &mut self.guests[i];
            // A kept peak falls when its bucket leaves the window: look again then.
            g.wake = if steady {
                g.peaks.next_expiry()
            } else {
                now + iv
            };
            wake = wake.min(g.wake);
        }
        if let Some(h) = host
            && self.squeeze(guests, h, out)
        {
            // While the host is contested every guest is looked at every tick.
            wake = now + iv;
        }
        wake
    }
}

impl PolicyCtl {
    /// Host mode: when what the guests ask for does not fit the host, share it
    /// (`fairshare::share`: floors, then needs, then headroom, by shares) and cut the guests
    /// that asked for more than their grant. Returns whether the host was contested.
    fn squeeze(
        &mut self,
        guests: &[GuestView],
        h: &HostView,
        out: &mut Vec<(usize, Bytes)>,
    ) -> bool {
        let mut asked: Vec<Option<Bytes>> = vec![None; guests.len()];
        for &(i, t) in out.iter() {
            if let Some(a) = asked.get_mut(i) {
                *a = Some(t);
            }
        }
        let present: Vec<usize> = (0..guests.len()).filter(|&i| guests[i].present).collect();
        let claims: Vec<Claim> = present
            .iter()
            .map(|&i| {
                let v = &guests[i];
                let g = &self.guests[i];
                let env = g.env.as_ref().unwrap_or(v.env);
                let want = if v.resizing {
                    v.target
                } else {
                    asked[i].unwrap_or(if g.want.0 > 0 { g.want } else { v.target })
                };
                Claim {
                    floor: env.floor,
                    need: g.need.max(env.floor),
                    want,
                    shares: self.knobs.shares,
                }
            })
            .collect();
        let wants: u64 = claims.iter().map(|c| c.want.0).sum();
        if wants <= h.memory.0 {
            return false;
        }
        let grants = share(&claims, h.memory);
        for (k, &i) in present.iter().enumerate() {
            let v = &guests[i];
            let env = self.guests[i].env.as_ref().unwrap_or(v.env);
            if grants[k] >= claims[k].want {
                continue;
            }
            let t = env.realize_down(grants[k]);
            if t == v.target {
                out.retain(|(j, _)| *j != i);
                continue;
            }
            if t < v.size {
                self.guests[i].hist.last_shrink = Some(self.last_now);
            }
            out.retain(|(j, _)| *j != i);
            out.push((i, t));
        }
        true
    }
}

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
