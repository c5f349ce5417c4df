//! What drives the modelled guests: the daemon's planner under a policy, and the baselines it
//! is measured against. Each baseline follows its published rules; sources and constants are
//! cited in `docs/simulation.md` and beside each implementation.

use super::{Controller, GuestView, HostView, Model};
use crate::control::share::{Ask, share as share_asks};
use crate::control::{Guest, Timing};
use crate::hypervisor::{GuestMem, GuestStats, RunState};
use crate::planner::{Decision, Kind};
use crate::policy::{Policy, PolicySet};
use crate::units::Bytes;
use std::fmt;

pub use super::baselines::{Baseline, OracleCtl, StaticCtl};

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
            Spec::Policy(p) => Box::new(PolicyCtl::new(p, guests, model)),
            Spec::Baseline(b) => b.build(guests, model),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One modelled guest under the daemon's controller, and what the simulator keeps to skip
/// ticks on which nothing can change.
struct PolicyGuest {
    ctl: Guest,
    /// The guest's cumulative swap-in, as its balloon driver would count it.
    swap_in: f64,
    last_seen_at: f64,
    /// The decision of its last evaluated tick (for sharing on ticks it is skipped).
    last: Option<Decision>,
    /// Not asked again before this time unless what it sees changes.
    wake: f64,
    seen: Option<(u64, u64, u64, bool)>,
}

/// The daemon's own guest controller (`crate::control`), driven as the daemon's host loop
/// drives it: each tick a stats record in (`Guest::observe`), a decision out
/// (`Guest::decide`: convergence, still-short, holds, then the planner), the host shared
/// (`control::share`), and a resize asked is a resize pending until it lands. The simulator
/// replaces only the hypervisor (the modelled guest) and the clock.
pub struct PolicyCtl {
    policy: Policy,
    set: PolicySet,
    timing: Timing,
    interval: f64,
    guests: Vec<Option<PolicyGuest>>,
}

fn since(now: f64, t: Option<f64>) -> f64 {
    t.map(|t| now - t).unwrap_or(f64::INFINITY)
}

impl PolicyCtl {
    pub fn new(policy: &Policy, guests: usize, model: &Model) -> PolicyCtl {
        let mut p = policy.clone();
        // Trace VMs have no names, flavors or tags: this policy is every guest's.
        p.selector = crate::policy::Selector::default();
        PolicyCtl {
            set: PolicySet::new(vec![p.clone()], Vec::new(), 1),
            policy: p,
            timing: Timing::default(),
            interval: model.interval,
            guests: (0..guests).map(|_| None).collect(),
        }
    }

    /// After a planner's hold: will every later tick hold the same way as long as what the
    /// guest reports does not change? True when the samples are identical and cover the
    /// planner's windows, nothing is landing or held, and every cooldown the planner consults
    /// has run out. Checked against evaluating every tick by
    /// `sim::tests::skipping_quiet_ticks_changes_nothing`.
    fn steady(&self, g: &Guest, now: f64) -> bool {
        let k = &self.policy.knobs;
        if k.grow_rate.per_sec().0 > 0 || g.pending.is_some() || now < g.held_until {
            return false;
        }
        let (Some(first), Some(last)) = (g.samples.front(), g.samples.back()) else {
            return false;
        };
        let span = k.window.as_secs_f64().max(k.trend_window.as_secs_f64());
        if first.at > now - span {
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
            .all(|d| since(now, g.history.last_grow) >= d.as_secs_f64());
        let shrink_quiet = [k.shrink_interval, k.window]
            .iter()
            .all(|d| since(now, g.history.last_shrink) >= d.as_secs_f64());
        same && grow_quiet && shrink_quiet
    }

    /// The stats record the modelled guest gives this tick, as libvirt's bulk stats would.
    fn report(g: &mut PolicyGuest, v: &GuestView, now: f64) -> GuestStats {
        let s = v.sample;
        // A guest short of memory thrashes: it swaps in its shortfall every interval.
        if g.last_seen_at.is_finite() {
            g.swap_in += s.swap_in_rate * (now - g.last_seen_at).max(0.0);
        }
        g.last_seen_at = now;
        GuestStats {
            name: String::new(),
            uuid: String::new(),
            state: RunState::Running,
            current: Some(v.size),
            maximum: Some(v.env.ceiling),
            guest: GuestMem {
                total: Some(s.total),
                usable: Some(s.available),
                unused: Some(s.available),
                swap_in: Some(Bytes(g.swap_in as u64)),
                ..GuestMem::default()
            },
            last_update: now as u64,
            rss: None,
        }
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
        // (guest, its decision, whether it was evaluated this tick rather than skipped)
        let mut decided: Vec<(usize, Decision, bool)> = Vec::new();
        for (i, v) in guests.iter().enumerate() {
            if !v.present {
                continue;
            }
            let Some(slot) = self.guests.get_mut(i) else {
                continue;
            };
            let g = slot.get_or_insert_with(|| {
                let mut ctl = Guest::new("", "", now);
                ctl.set_envelope(v.env.clone());
                PolicyGuest {
                    ctl,
                    swap_in: 0.0,
                    last_seen_at: f64::NEG_INFINITY,
                    last: None,
                    wake: f64::NEG_INFINITY,
                    seen: None,
                }
            });
            let seen = (
                v.sample.size.0,
                v.sample.available.0,
                v.sample.swap_in_rate.to_bits(),
                v.resizing,
            );
            if now < g.wake && g.seen == Some(seen) {
                wake = wake.min(g.wake);
                if let Some(d) = &g.last {
                    decided.push((i, d.clone(), false));
                }
                continue;
            }
            // Ticks skipped while nothing changed reported what the last one did.
            g.ctl.repeat_last_sample(now, iv);
            let stats = Self::report(g, v, now);
            g.ctl.observe(stats, now);
            g.seen = Some(seen);
            let policy = g.ctl.policy(&self.set);
            let d = g.ctl.decide(now, policy, &self.timing);
            g.last = Some(Decision {
                kind: Kind::Hold,
                target: v.size,
                ..d.clone()
            });
            decided.push((i, d, true));
        }
        let mut contested = false;
        if let Some(h) = host {
            let policy = &self.policy;
            let ctls = &mut self.guests;
            let envs: Vec<Option<std::sync::Arc<crate::envelope::Envelope>>> = decided
                .iter()
                .map(|(i, _, _)| {
                    ctls.get_mut(*i)
                        .and_then(|g| g.as_mut())
                        .and_then(|g| g.ctl.limited_envelope(policy))
                })
                .collect();
            let mut asks: Vec<Ask> = decided
                .iter_mut()
                .zip(&envs)
                .map(|((i, d, _), env)| {
                    let pending = ctls
                        .get(*i)
                        .and_then(|g| g.as_ref())
                        .and_then(|g| g.ctl.pending.as_ref().map(|p| p.target));
                    Ask {
                        decision: d,
                        before: guests[*i].size,
                        env: env.as_deref(),
                        knobs: &policy.knobs,
                        holds_memory: true,
                        pending,
                        using: Some(
                            guests[*i]
                                .sample
                                .total
                                .saturating_sub(guests[*i].sample.available),
                        ),
                    }
                })
                .collect();
            contested = share_asks(&mut asks, h.memory).contested;
        }
        for (i, d, evaluated) in decided {
            let Some(Some(g)) = self.guests.get_mut(i) else {
                continue;
            };
            let v = &guests[i];
            // As the daemon's act stage: a resize is asked even when the guest already holds
            // its target (no operation to run), so the controller sees it land. Skipping it
            // left a guest believed at an unconverged growth's target for good (seen: a
            // 511 GiB VM of July kept at its ceiling for the month, every plan a shrink to
            // the size it held).
            let resize = d.kind != Kind::Hold;
            if resize {
                g.ctl.on_resize_applied(&d, v.size, "virtio-mem", &[], now);
                out.push((i, d.target));
            }
            if !evaluated && !resize {
                continue;
            }
            let steady =
                !resize && d.kind == Kind::Hold && d.reason.is_planned() && self.steady_at(i, now);
            let Some(Some(g)) = self.guests.get_mut(i) else {
                continue;
            };
            g.ctl.on_decided(d);
            // A kept peak falls when its bucket leaves the window: look again then.
            g.wake = if steady {
                let k = &self.policy.knobs;
                let next = g.ctl.peaks.next_change(
                    now,
                    k.recur.as_secs_f64(),
                    k.recur_ahead.as_secs_f64(),
                );
                // A young guest's headroom falls when its history spans the window.
                let grown = g.ctl.peaks.grown_at();
                let next = if k.young_headroom.0 > 0 && grown > now {
                    next.min(grown)
                } else {
                    next
                };
                if k.peak_decay.0.is_zero() {
                    next
                } else {
                    // A decaying cushion falls a step at each bucket boundary.
                    let w = g.ctl.peaks.width();
                    next.min(((now / w).floor() + 1.0) * w)
                }
            } else {
                now + iv
            };
            wake = wake.min(g.wake);
        }
        if contested {
            // While the host is contested every guest is looked at every tick.
            wake = now + iv;
        }
        wake
    }
}

impl PolicyCtl {
    fn steady_at(&self, i: usize, now: f64) -> bool {
        match self.guests.get(i) {
            Some(Some(g)) => self.steady(&g.ctl, now),
            _ => false,
        }
    }
}
