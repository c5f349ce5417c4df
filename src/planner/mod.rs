//! The planner: a pure function from a guest's recent samples, its envelope, the policy knobs
//! and its resize history to one decision with a reason. No I/O, no clock, no globals (but a
//! per-thread scratch vector the statistics reuse, empty between calls): the daemon feeds it
//! libvirt samples, the simulator feeds it a modelled guest.

use crate::envelope::Envelope;
use crate::policy::Knobs;
use crate::units::Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;

/// One observation of a guest, in allocation terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds on the caller's clock.
    pub at: f64,
    /// The hypervisor-side allocation (balloon plus plugged memory) when sampled.
    pub size: Bytes,
    /// Guest MemTotal.
    pub total: Bytes,
    /// Guest MemAvailable: free memory plus what the kernel can reclaim (page cache), but not
    /// tmpfs/shmem.
    pub available: Bytes,
    /// Guest swap-in rate, bytes per second.
    pub swap_in_rate: f64,
}

impl Sample {
    /// The memory this guest needs, expressed as an allocation: the allocation minus what the
    /// guest reports it could do without. Hostile values are bounded: available above total
    /// counts as total, and a total above the allocation counts as the allocation.
    pub fn need(&self) -> Bytes {
        let total = self.total.min(self.size);
        let avail = self.available.min(total);
        // The allocation the guest cannot see (kernel reservations) belongs to its need, but
        // a guest claiming a tiny MemTotal may not inflate it without bound.
        let hidden = self
            .size
            .saturating_sub(total)
            .min(self.size.scale(0.125) + Bytes::from_mib(32));
        total.saturating_sub(avail) + hidden
    }
}

impl Sample {
    /// The guest had (almost) no memory left: its need is clipped at what it has.
    pub fn saturated(&self) -> bool {
        self.available.min(self.total) < SATURATED
    }
}

/// MemAvailable below this means the guest's report no longer shows its real demand.
const SATURATED: Bytes = Bytes::from_mib(32);

/// When this guest was last resized, as the planner needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct History {
    pub last_grow: Option<f64>,
    pub last_shrink: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Grow,
    Shrink,
    Hold,
}

/// Why a decision was taken. Holds and resizes alike carry one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// Predicted MemAvailable is below the grow threshold.
    Short {
        available: Bytes,
        threshold: Bytes,
    },
    /// The guest is swapping in faster than the policy allows.
    Swapping {
        bytes_per_sec: u64,
    },
    /// MemAvailable stayed above the shrink threshold over the window.
    Idle {
        available: Bytes,
        threshold: Bytes,
    },
    BelowFloor,
    AboveCeiling,
    /// Nothing to do: MemAvailable is between the thresholds.
    InBand {
        available: Bytes,
    },
    /// The guest wants more than its ceiling.
    AtCeiling {
        wanted: Bytes,
    },
    GrowCooldown {
        seconds_left: f64,
    },
    ShrinkCooldown {
        seconds_left: f64,
    },
    /// The change would be smaller than `min_change`.
    SmallChange {
        change: Bytes,
    },
    NoSamples,
    // Holds decided outside the planner, kept here so every decision has one reason type.
    NoDriver,
    Stale {
        age_seconds: f64,
    },
    ResizeInProgress,
    Unconverged {
        target: Bytes,
        actual: Bytes,
    },
    Pinned,
    /// An operator asked for this size through the API.
    Manual {
        requested: Bytes,
    },
    NotRunning {
        state: String,
    },
    NoMethod,
    BadEnvelope {
        message: String,
    },
    HostError {
        message: String,
    },
    /// The host cannot hold its guests' needs: this guest is moved to another host.
    Migrate {
        to: String,
        deficit: Bytes,
    },
    /// A growth was still landing when the guest ran shorter than when it was asked for.
    StillShort {
        available: Bytes,
        asked: Bytes,
        has: Bytes,
    },
    /// The host cannot give every guest what it asks for: this guest gets its fair share.
    HostShare {
        wanted: Bytes,
        granted: Bytes,
    },
    /// The guest refused to release a DIMM (libvirt's removal-failed event): it is not
    /// asked again for `hold_seconds`, and counts as boot memory meanwhile.
    UnplugRefused {
        alias: String,
        hold_seconds: u64,
    },
    /// Memory was plugged but the guest did not bring it online.
    NotOnlined {
        plugged: Bytes,
        onlined: Bytes,
    },
    /// An operator asked for this many vCPUs through the API.
    ManualVcpus {
        requested: u32,
    },
    /// A vCPU was plugged but the guest has not run on it (not brought online).
    VcpuNotOnlined {
        vcpu: u32,
    },
    /// The CPU policy: the guest kept its vCPUs busy over the window.
    CpuBusy {
        busy_pct: f64,
        vcpus: u32,
    },
    /// The CPU policy: the guest left its vCPUs idle over the window.
    CpuIdle {
        busy_pct: f64,
        vcpus: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Short {
                available,
                threshold,
            } => write!(
                f,
                "short: predicted available {available} below {threshold}"
            ),
            Reason::Swapping { bytes_per_sec } => {
                write!(f, "swapping in at {}/s", Bytes(*bytes_per_sec))
            }
            Reason::Idle {
                available,
                threshold,
            } => write!(
                f,
                "idle: available {available} above {threshold} over the window"
            ),
            Reason::BelowFloor => f.write_str("below floor"),
            Reason::AboveCeiling => f.write_str("above ceiling"),
            Reason::InBand { available } => write!(f, "in band: available {available}"),
            Reason::AtCeiling { wanted } => write!(f, "at ceiling: wants {wanted}"),
            Reason::GrowCooldown { seconds_left } => {
                write!(f, "grow cooldown: {seconds_left:.0}s left")
            }
            Reason::ShrinkCooldown { seconds_left } => {
                write!(f, "shrink cooldown: {seconds_left:.0}s left")
            }
            Reason::SmallChange { change } => write!(f, "change of {change} too small"),
            Reason::NoSamples => f.write_str("no stats yet"),
            Reason::NoDriver => f.write_str("no balloon driver: guest never reported stats"),
            Reason::Stale { age_seconds } => {
                write!(f, "stale stats: last update {age_seconds:.0}s ago")
            }
            Reason::ResizeInProgress => f.write_str("resize in progress"),
            Reason::Unconverged { target, actual } => {
                write!(f, "resize did not converge: asked {target}, has {actual}")
            }
            Reason::Pinned => f.write_str("pinned by operator"),
            Reason::Manual { requested } => write!(f, "manual adjust to {requested} by operator"),
            Reason::NotRunning { state } => write!(f, "not running: {state}"),
            Reason::NoMethod => {
                f.write_str("no resize method: no balloon, no virtio-mem and no usable DIMM slots")
            }
            Reason::UnplugRefused {
                alias,
                hold_seconds,
            } => write!(
                f,
                "the guest refused to release DIMM {alias}: not asked again for {}s; it counts as boot memory (the balloon may reclaim it)",
                hold_seconds
            ),
            Reason::NotOnlined { plugged, onlined } => write!(
                f,
                "the guest did not online plugged memory: {plugged} plugged, {onlined} came online (check memhp_default_state / auto_online_blocks)"
            ),
            Reason::CpuBusy { busy_pct, vcpus } => write!(
                f,
                "cpu busy: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            Reason::CpuIdle { busy_pct, vcpus } => write!(
                f,
                "cpu idle: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            Reason::ManualVcpus { requested } => {
                write!(f, "manual adjust to {requested} vCPUs by operator")
            }
            Reason::VcpuNotOnlined { vcpu } => write!(
                f,
                "the guest did not bring vCPU {vcpu} online (no udev rule or CPU hotplug support in the guest)"
            ),
            Reason::BadEnvelope { message } => write!(f, "bad envelope: {message}"),
            Reason::HostError { message } => write!(f, "host error: {message}"),
            Reason::Migrate { to, deficit } => write!(
                f,
                "host short of {deficit} for its guests' needs: moving to {to}"
            ),
            Reason::HostShare { wanted, granted } => write!(
                f,
                "host short of memory: wants {wanted}, its fair share is {granted}"
            ),
            Reason::StillShort {
                available,
                asked,
                has,
            } => write!(
                f,
                "still short while growing: available {available}, has {has} of {asked} asked"
            ),
        }
    }
}

impl Reason {
    /// Whether the planner decided this from the guest's reports (and a host squeeze may
    /// change it), rather than an outside hold (pinned, stale, resizing, manual...).
    pub fn is_planned(&self) -> bool {
        matches!(
            self,
            Reason::Short { .. }
                | Reason::StillShort { .. }
                | Reason::Swapping { .. }
                | Reason::Idle { .. }
                | Reason::BelowFloor
                | Reason::InBand { .. }
                | Reason::AtCeiling { .. }
                | Reason::GrowCooldown { .. }
                | Reason::ShrinkCooldown { .. }
                | Reason::SmallChange { .. }
        )
    }

    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Short { .. } => "short",
            Reason::Swapping { .. } => "swapping",
            Reason::Idle { .. } => "idle",
            Reason::BelowFloor => "below_floor",
            Reason::AboveCeiling => "above_ceiling",
            Reason::InBand { .. } => "in_band",
            Reason::AtCeiling { .. } => "at_ceiling",
            Reason::GrowCooldown { .. } => "grow_cooldown",
            Reason::ShrinkCooldown { .. } => "shrink_cooldown",
            Reason::SmallChange { .. } => "small_change",
            Reason::NoSamples => "no_samples",
            Reason::NoDriver => "no_driver",
            Reason::Stale { .. } => "stale",
            Reason::ResizeInProgress => "in_progress",
            Reason::Unconverged { .. } => "unconverged",
            Reason::Pinned => "pinned",
            Reason::Manual { .. } => "manual",
            Reason::NotRunning { .. } => "not_running",
            Reason::NoMethod => "no_method",
            Reason::BadEnvelope { .. } => "bad_envelope",
            Reason::HostError { .. } => "host_error",
            Reason::HostShare { .. } => "host_share",
            Reason::Migrate { .. } => "migrate",
            Reason::StillShort { .. } => "still_short",
            Reason::UnplugRefused { .. } => "unplug_refused",
            Reason::NotOnlined { .. } => "not_onlined",
            Reason::ManualVcpus { .. } => "manual_vcpus",
            Reason::VcpuNotOnlined { .. } => "vcpu_not_onlined",
            Reason::CpuBusy { .. } => "cpu_busy",
            Reason::CpuIdle { .. } => "cpu_idle",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub kind: Kind,
    /// The size asked for (equal to the current size on a hold).
    pub target: Bytes,
    pub reason: Reason,
    /// Estimated need now, predicted need for growth, and need the shrink must cover.
    pub need: Bytes,
    pub predicted: Bytes,
    pub headroom: Bytes,
}

impl Decision {
    pub fn hold(size: Bytes, reason: Reason) -> Decision {
        Decision {
            kind: Kind::Hold,
            target: size,
            reason,
            need: Bytes(0),
            predicted: Bytes(0),
            headroom: Bytes(0),
        }
    }
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
}

/// The highest need a guest showed over a long span (hours, days), in 32 coarse time buckets
/// plus the latest value: what a shrink must keep room for under a `peak_window` policy, at a
/// fixed small cost per sample however long the span.
#[derive(Debug, Clone, Default)]
pub struct PeakTracker {
    window: f64,
    width: f64,
    buckets: VecDeque<(i64, Bytes)>,
    last: Bytes,
    last_at: f64,
}

impl PeakTracker {
    pub fn new(window: f64) -> PeakTracker {
        PeakTracker {
            window,
            width: window / 32.0,
            buckets: VecDeque::new(),
            last: Bytes(0),
            last_at: f64::NEG_INFINITY,
        }
    }

    pub fn window(&self) -> f64 {
        self.window
    }

    /// Its buckets, oldest first: (index, highest need).
    pub fn buckets(&self) -> impl Iterator<Item = (i64, Bytes)> + '_ {
        self.buckets.iter().copied()
    }

    /// The latest value and its time.
    pub fn last(&self) -> (Bytes, f64) {
        (self.last, self.last_at)
    }

    /// Its whole content, to save: (span, buckets, latest value, its time).
    pub fn parts(&self) -> (f64, Vec<(i64, Bytes)>, Bytes, f64) {
        (
            self.window,
            self.buckets.iter().copied().collect(),
            self.last,
            self.last_at,
        )
    }

    /// Rebuilt from `parts`; nonsense (a non-finite or negative span) gives an empty tracker.
    pub fn from_parts(
        window: f64,
        buckets: Vec<(i64, Bytes)>,
        last: Bytes,
        last_at: f64,
    ) -> PeakTracker {
        if !window.is_finite() || window < 0.0 {
            return PeakTracker::default();
        }
        let mut p = PeakTracker::new(window);
        p.buckets = buckets.into_iter().collect();
        p.last = last;
        p.last_at = if last_at.is_nan() {
            f64::NEG_INFINITY
        } else {
            last_at
        };
        p
    }

    /// Time of the latest sample taken in.
    pub fn last_at(&self) -> f64 {
        self.last_at
    }

    pub fn observe(&mut self, s: &Sample) {
        if self.width <= 0.0 || s.at <= self.last_at {
            return;
        }
        let need = s.need();
        let b = (s.at / self.width).floor() as i64;
        match self.buckets.back_mut() {
            Some((k, m)) if *k == b => *m = (*m).max(need),
            _ => self.buckets.push_back((b, need)),
        }
        self.last = need;
        self.last_at = s.at;
    }

    /// The peak over the window ending at `now`. The latest value counts as current: a guest
    /// that has reported the same since is still there.
    pub fn peak(&mut self, now: f64) -> Bytes {
        if self.width <= 0.0 {
            return Bytes(0);
        }
        while self
            .buckets
            .front()
            .is_some_and(|(k, _)| (*k + 1) as f64 * self.width <= now - self.window)
        {
            self.buckets.pop_front();
        }
        self.buckets
            .iter()
            .map(|(_, m)| *m)
            .fold(self.last, Bytes::max)
    }

    /// When the oldest bucket leaves the window (the peak may fall then).
    pub fn next_expiry(&self) -> f64 {
        self.buckets
            .front()
            .map(|(k, _)| (*k + 1) as f64 * self.width + self.window)
            .unwrap_or(f64::INFINITY)
    }
}

thread_local! {
    /// Room for the statistics below, which run every tick for every guest: reused, so they
    /// allocate nothing once it has grown to the window.
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on an empty vector with room kept between calls (a fresh one if it is in use).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f64>) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            f(&mut v)
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// The value of rank `k` (0-based) in `v`, reordering it; `v[k + 1..]` then holds the values
/// ranked above it.
fn select(v: &mut [f64], k: usize) -> f64 {
    *v.select_nth_unstable_by(k, f64::total_cmp).1
}

/// The least of `v` by `total_cmp`: the next rank after a [`select`] is the least of the rest.
fn least(v: &[f64]) -> f64 {
    v.iter().copied().min_by(f64::total_cmp).unwrap_or(f64::NAN)
}

/// The median, as statrs' `Median` computes it (the mean of the two middle values of an even
/// count).
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let k = n / 2;
    if n.is_multiple_of(2) {
        let a = select(v, k - 1);
        (a + least(&v[k..])) / 2.0
    } else {
        select(v, k)
    }
}

/// The `tau` quantile, as statrs' `OrderStatistics::quantile` computes it (R's type 8).
fn quantile(v: &mut [f64], tau: f64) -> f64 {
    if !(0.0..=1.0).contains(&tau) || v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    let h = (n as f64 + 1.0 / 3.0) * tau + 1.0 / 3.0;
    let hf = h as i64;
    if hf <= 0 || tau == 0.0 {
        return least(v);
    }
    if hf >= n as i64 || tau == 1.0 {
        return v.iter().copied().max_by(f64::total_cmp).unwrap_or(f64::NAN);
    }
    let hf = hf as usize;
    let a = select(v, hf - 1);
    let b = least(&v[hf..]);
    a + (h - hf as f64) * (b - a)
}

/// Slope of need over time in bytes per second, by Theil–Sen (the median of pairwise slopes):
/// a steady climb is extrapolated, a single jump is not (it would otherwise look like a steep
/// trend and overshoot).
fn trend(samples: &[Sample]) -> f64 {
    let n = samples.len();
    if n < 2 {
        return 0.0;
    }
    with_scratch(|slopes| {
        slopes.reserve(n * (n - 1) / 2);
        for (i, a) in samples.iter().enumerate() {
            let na = a.need().0 as f64;
            for b in &samples[i + 1..] {
                let dt = b.at - a.at;
                if dt > 0.0 {
                    slopes.push((b.need().0 as f64 - na) / dt);
                }
            }
        }
        if slopes.is_empty() {
            return 0.0;
        }
        let m = median(slopes);
        if m.is_finite() { m } else { 0.0 }
    })
}

fn percentile(samples: &[Sample], p: f64) -> Bytes {
    let Some(first) = samples.first() else {
        return Bytes(0);
    };
    with_scratch(|v| {
        // A flat window (the common case) needs no selection.
        let n0 = first.need();
        let mut flat = true;
        v.extend(samples.iter().map(|s| {
            let need = s.need();
            flat &= need == n0;
            need.0 as f64
        }));
        if flat {
            return n0;
        }
        let q = quantile(v, p.clamp(0.0, 1.0));
        if q.is_finite() && q > 0.0 {
            Bytes(q as u64)
        } else {
            Bytes(0)
        }
    })
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
        return Decision::hold(size, Reason::NoSamples);
    };
    let need = last.need();
    let headroom = headroom(k, need);
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
        reason: Reason::InBand {
            available: size.saturating_sub(need),
        },
        need,
        predicted,
        headroom,
    };

    // The envelope is the law, before any policy judgement.
    if size > env.ceiling {
        d.kind = Kind::Shrink;
        d.target = env.ceiling;
        d.reason = Reason::AboveCeiling;
        return d;
    }
    if size < env.floor {
        d.kind = Kind::Grow;
        d.target = env.realize_up(env.floor.max(predicted + headroom));
        d.reason = Reason::BelowFloor;
        return d;
    }

    let avail_pred = size.saturating_sub(predicted);
    let grow_threshold = headroom.scale(k.grow_at.fraction());
    let swap = last.swap_in_rate;
    let swapping = k.swap_grow.per_sec().0 > 0 && swap > k.swap_grow.per_sec().0 as f64;
    if avail_pred < grow_threshold || swapping || size < need + k.min_free {
        let mut want = (predicted + headroom).max(need + k.min_free);
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
        let reason = if swapping && avail_pred >= grow_threshold {
            Reason::Swapping {
                bytes_per_sec: swap as u64,
            }
        } else {
            Reason::Short {
                available: avail_pred,
                threshold: grow_threshold,
            }
        };
        if size >= env.ceiling {
            d.reason = Reason::AtCeiling { wanted: want };
            return d;
        }
        let since_grow = since(i.now, i.history.last_grow);
        if since_grow < k.grow_cooldown.as_secs_f64() {
            d.reason = Reason::GrowCooldown {
                seconds_left: k.grow_cooldown.as_secs_f64() - since_grow,
            };
            return d;
        }
        let step = limit_grow_step(k, env, want.saturating_sub(size), since_grow);
        let target = env.realize_up(size + step);
        if target <= size {
            d.reason = Reason::AtCeiling { wanted: want };
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
            d.reason = Reason::ShrinkCooldown {
                seconds_left: cooldown - since_grow,
            };
            return d;
        }
        let since_shrink = since(i.now, i.history.last_shrink);
        if since_shrink < k.shrink_interval.as_secs_f64() {
            d.reason = Reason::ShrinkCooldown {
                seconds_left: k.shrink_interval.as_secs_f64() - since_shrink,
            };
            return d;
        }
        let keep = (need_window.max(i.peak) + headroom).max(need + k.min_free);
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
            d.reason = Reason::SmallChange { change };
            return d;
        }
        d.kind = Kind::Shrink;
        d.target = target;
        d.reason = Reason::Idle {
            available: avail_window,
            threshold: shrink_threshold,
        };
        return d;
    }
    d
}

#[cfg(test)]
mod tests;
