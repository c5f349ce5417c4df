//! The planner: a pure function from a guest's recent samples, its envelope, the policy knobs
//! and its resize history to one decision with a reason. No I/O, no clock, no globals (but a
//! per-thread scratch vector the statistics reuse, empty between calls): the daemon feeds it
//! libvirt samples, the simulator feeds it a modelled guest.
//!
//! `plan` and its inputs live here; `sample` reads what a guest needs from one report,
//! `decision` holds what the planner answers and why, `stats` the statistics on the scratch
//! (percentile, Theil–Sen trend, median), and `peak` the long-span peak tracker.

mod decision;
mod peak;
mod sample;
mod stats;

pub use decision::{Decision, EventReason, HoldReason, Kind, PlannerReason, Reason, Squeeze};
pub use peak::PeakTracker;
pub use sample::Sample;

use crate::envelope::Envelope;
use crate::policy::Knobs;
use crate::units::Bytes;
use serde::Serialize;
use stats::{percentile, trend};

/// When this guest was last resized, as the planner needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct History {
    pub last_grow: Option<f64>,
    pub last_shrink: Option<f64>,
}

pub struct Input<'a> {
    pub now: f64,
    /// The envelope as the policy limits it.
    pub envelope: &'a Envelope,
    pub knobs: &'a Knobs,
    /// The current allocation.
    pub size: Bytes,
    /// Fresh samples, oldest first (sorted by `at`; the caller drops stale ones).
    pub samples: &'a [Sample],
    pub history: History,
    /// The highest need over the policy's `peak_window` (see [`PeakTracker`]); zero when the
    /// policy keeps no peak.
    pub peak: Bytes,
    /// The need expected soon from demand that recurs (the policy's `recur`: the highest
    /// need one period ago, up to `recur_ahead` later; see [`PeakTracker::recurring`]); zero
    /// when the policy expects none.
    pub recurring: Bytes,
    /// The guest's peak history spans less than the policy's `peak_window` (see
    /// [`PeakTracker::young`]): its headroom is at least the policy's `young_headroom`.
    pub young: bool,
}

fn since(now: f64, t: Option<f64>) -> f64 {
    t.map(|t| (now - t).max(0.0)).unwrap_or(f64::INFINITY)
}

/// The free memory a guest needing `need` is kept with: `headroom`, or `headroom_pct` of
/// its need when that is more.
pub fn headroom(k: &Knobs, need: Bytes) -> Bytes {
    k.headroom.max(need.scale(k.headroom_pct.fraction()))
}

/// A growth step cut to the policy's per-step (`max_grow_step`) and per-second
/// (`grow_rate`) limits, `since_grow` seconds after the last growth.
pub fn limit_grow_step(k: &Knobs, env: &Envelope, step: Bytes, since_grow: f64) -> Bytes {
    let mut step = step;
    if k.max_grow_step.0 > 0 {
        step = step.min(k.max_grow_step);
    }
    if k.grow_rate.per_sec().0 > 0 && since_grow.is_finite() {
        step = step.min(k.grow_rate.over(since_grow).max(env.vmem_step));
    }
    step
}

/// Decide for one guest.
pub fn plan(i: &Input) -> Decision {
    let env = i.envelope;
    let k = i.knobs;
    let size = i.size;
    let Some(last) = i.samples.last() else {
        return Decision::hold(size, Reason::Plan(PlannerReason::NoSamples));
    };
    let need = last.need();
    let mut headroom = headroom(k, need);
    if i.young {
        // No window of peaks yet: the peak kept does not know the guest's daily high.
        headroom = headroom.max(k.young_headroom);
    }
    // A starved guest reports need clipped at its allocation, so its "trend" would only echo
    // our own growth: fit the trend to samples that still had memory to spare.
    // Only the latest unbroken run counts: a jump across a starved spell is a step, not a trend.
    let trend_from = i.now - k.trend_window.as_secs_f64();
    let run = i
        .samples
        .iter()
        .rev()
        .take_while(|s| s.at >= trend_from && !s.saturated())
        .count();
    let recent = &i.samples[i.samples.len() - run..];
    // A climb must show in most steps between reports: a jump followed by a plateau is a step,
    // and extrapolating it would overshoot.
    let rising = recent
        .windows(2)
        .filter(|w| w[1].need() > w[0].need())
        .count();
    let slope = if recent.len() >= 3 && rising * 5 >= (recent.len() - 1) * 3 {
        trend(recent).max(0.0)
    } else {
        0.0
    };
    // The trend buys lead time, not a new size: a burst that stops must not leave the guest
    // with more than twice its headroom on top of what it uses.
    let ahead = Bytes((slope * k.predict.as_secs_f64()).clamp(0.0, 1e15) as u64);
    let predicted = need + ahead.min(headroom.scale(2.0));
    let window_from = i.now - k.window.as_secs_f64();
    let window = &i.samples[i.samples.partition_point(|s| s.at < window_from)..];
    // A shrink must leave room for whatever growth would ask for right now.
    let need_window = || {
        percentile(window, k.percentile.fraction())
            .max(need)
            .max(predicted)
    };
    let mut d = Decision {
        kind: Kind::Hold,
        target: size,
        reason: Reason::Plan(PlannerReason::InBand {
            available: size.saturating_sub(need),
        }),
        need,
        predicted,
        headroom,
    };

    // The envelope is the law, before any policy judgement.
    if size > env.ceiling {
        d.kind = Kind::Shrink;
        d.target = env.ceiling;
        d.reason = Reason::Plan(PlannerReason::AboveCeiling);
        return d;
    }
    if size < env.floor {
        d.kind = Kind::Grow;
        d.target = env.realize_up(env.floor.max(predicted + headroom));
        d.reason = Reason::Plan(PlannerReason::BelowFloor);
        return d;
    }

    let avail_pred = size.saturating_sub(predicted);
    let grow_threshold = headroom.scale(k.grow_at.fraction());
    let swap = last.swap_in_rate;
    let swapping = k.swap_grow.per_sec().0 > 0 && swap > k.swap_grow.per_sec().0 as f64;
    // Demand that came at this time one period ago is grown to before it comes again, with the
    // headroom it would have then; a guest already that large keeps it (the shrink below).
    let expected = i.recurring;
    let recurs = expected > predicted
        && size.saturating_sub(expected) < self::headroom(k, expected).scale(k.grow_at.fraction());
    if avail_pred < grow_threshold || swapping || size < need + k.min_free || recurs {
        let mut want = (predicted + headroom).max(need + k.min_free);
        if recurs {
            want = want.max(expected + self::headroom(k, expected));
        }
        if swapping {
            want = want.max(size + headroom);
        }
        // A starved guest hides how much it lacks: each report in a row that finds it starved
        // doubles the step, as a slow-starting sender probes for bandwidth. Overshoot is given
        // back by the normal shrink path once the guest shows free memory again.
        let starved = i.samples.iter().rev().take_while(|s| s.saturated()).count();
        if starved > 1 {
            let factor = 1u64 << (starved - 1).min(6);
            want = want.max(size + Bytes(headroom.0.saturating_mul(factor)));
        }
        let reason = if recurs && avail_pred >= grow_threshold && !swapping {
            Reason::Plan(PlannerReason::Recurring { expected })
        } else if swapping && avail_pred >= grow_threshold {
            Reason::Plan(PlannerReason::Swapping {
                bytes_per_sec: swap as u64,
            })
        } else {
            Reason::Plan(PlannerReason::Short {
                available: avail_pred,
                threshold: grow_threshold,
            })
        };
        if size >= env.ceiling {
            d.reason = Reason::Plan(PlannerReason::AtCeiling { wanted: want });
            return d;
        }
        let since_grow = since(i.now, i.history.last_grow);
        if since_grow < k.grow_cooldown.as_secs_f64() {
            d.reason = Reason::Plan(PlannerReason::GrowCooldown {
                seconds_left: k.grow_cooldown.as_secs_f64() - since_grow,
            });
            return d;
        }
        let step = limit_grow_step(k, env, want.saturating_sub(size), since_grow);
        let target = env.realize_up(size + step);
        if target <= size {
            d.reason = Reason::Plan(PlannerReason::AtCeiling { wanted: want });
            return d;
        }
        d.kind = Kind::Grow;
        d.target = target;
        d.reason = reason;
        return d;
    }

    let shrink_threshold = headroom.scale(k.shrink_at.fraction());
    // Idle means idle over the whole window: a guest seen for less than that (just booted, or
    // just adopted) is not shrunk yet.
    let covered = i
        .samples
        .first()
        .is_some_and(|s| s.at <= i.now - k.window.as_secs_f64() * 0.9);
    // The window's percentile is the costliest figure of a plan, and the need it gives is at
    // least `need` and `predicted`: when those already leave no more than the threshold free
    // (a guest in band), or the guest cannot shrink anyway, it could not make a shrink.
    let at_least = need.max(predicted);
    let need_window =
        if size.saturating_sub(at_least) > shrink_threshold && size > env.floor && covered {
            need_window()
        } else {
            at_least
        };
    let avail_window = size.saturating_sub(need_window);
    if avail_window > shrink_threshold && size > env.floor && covered {
        // A growth made on a predicted trend is only proven wrong once the trend window has
        // passed: shrinking earlier would undo it on the very data that caused it.
        let cooldown = k
            .shrink_cooldown
            .as_secs_f64()
            .max(k.trend_window.as_secs_f64());
        let since_grow = since(i.now, i.history.last_grow);
        if since_grow < cooldown {
            d.reason = Reason::Plan(PlannerReason::ShrinkCooldown {
                seconds_left: cooldown - since_grow,
            });
            return d;
        }
        let since_shrink = since(i.now, i.history.last_shrink);
        if since_shrink < k.shrink_interval.as_secs_f64() {
            d.reason = Reason::Plan(PlannerReason::ShrinkCooldown {
                seconds_left: k.shrink_interval.as_secs_f64() - since_shrink,
            });
            return d;
        }
        let kept = need_window.max(i.peak);
        let keep = (kept + headroom)
            .max(need + k.min_free)
            .max(i.recurring + self::headroom(k, i.recurring));
        let mut step = size.saturating_sub(keep);
        if k.max_shrink_step.0 > 0 {
            step = step.min(k.max_shrink_step);
        }
        if k.shrink_rate.per_sec().0 > 0 {
            let dt = since_shrink
                .min(k.window.as_secs_f64())
                .max(k.shrink_interval.as_secs_f64());
            step = step.min(k.shrink_rate.over(dt));
        }
        // Round up: the granularity never takes a guest below its need plus headroom.
        let target = env.realize_up(size.saturating_sub(step).max(keep.min(size)));
        let change = size.saturating_sub(target);
        if target >= size || (change < k.min_change && target > env.floor) {
            d.reason = Reason::Plan(PlannerReason::SmallChange { change });
            return d;
        }
        d.kind = Kind::Shrink;
        d.target = target;
        d.reason = Reason::Plan(PlannerReason::Idle {
            available: avail_window,
            threshold: shrink_threshold,
        });
        return d;
    }
    d
}

#[cfg(test)]
mod tests;
