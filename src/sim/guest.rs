//! One modelled guest: its trace, its envelope, its allocation and a resize landing, with
//! demand and allocation integrated over time into the run's sums.

use super::Model;
use super::result::{Acc, EventRec, Timeline, TimelinePoint, VmFigures};
use crate::envelope::Envelope;
use crate::planner::Sample;
use crate::trace::VmTrace;
use crate::units::Bytes;
use crate::units::GIB;

/// Seconds of memory one landing step moves (see [`Guest::retarget`]).
const STEP_SECONDS: f64 = 1.0;

/// The live state of one modelled guest.
pub(super) struct Guest<'a> {
    pub(super) tr: &'a VmTrace,
    pub(super) env: Envelope,
    /// Index of the current trace point.
    pub(super) i: usize,
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) alloc: u64,
    pub(super) target: u64,
    /// When the next step of the resize under way lands (infinite: none under way).
    pub(super) land: f64,
    /// Growth and shrink speeds, bytes per second (the model's).
    speeds: (f64, f64),
    /// Integrated up to here.
    pub(super) t: f64,
    pub(super) in_pressure: bool,
    pub(super) pressure_since: f64,
    pub(super) timeline: Option<Timeline>,
    pub(super) timeline_end: f64,
    /// This VM's own sums and events, kept for `--per-vm` only.
    pub(super) own: Option<Own>,
}

/// One VM's sums and pressure events (`--per-vm`).
#[derive(Default)]
pub(super) struct Own {
    acc: Acc,
    events: Vec<EventRec>,
}

impl<'a> Guest<'a> {
    pub(super) fn new(tr: &'a VmTrace, model: &Model, record: bool, span: f64) -> Guest<'a> {
        let env = model.envelope(tr.ceiling);
        let start = tr.start() as f64;
        let ceiling = env.ceiling.0;
        Guest {
            tr,
            i: 0,
            start,
            end: tr.end() as f64,
            alloc: ceiling,
            target: ceiling,
            land: f64::INFINITY,
            speeds: (model.grow_speed.max(1.0), model.shrink_speed.max(1.0)),
            t: start,
            in_pressure: false,
            pressure_since: 0.0,
            timeline: record.then(|| Timeline {
                vm: tr.key.clone(),
                floor: env.floor.0,
                ceiling: env.ceiling.0,
                points: vec![],
            }),
            timeline_end: start + span,
            own: None,
            env,
        }
    }

    /// Keep this VM's own figures (`--per-vm`).
    pub(super) fn keep_own(&mut self) {
        self.own = Some(Own::default());
    }

    /// This VM's figures, when kept.
    pub(super) fn figures(&self) -> Option<VmFigures> {
        let o = self.own.as_ref()?;
        let a = &o.acc;
        let pct = |x: f64| {
            if a.ceiling_bs > 0.0 {
                100.0 * x / a.ceiling_bs
            } else {
                0.0
            }
        };
        let gib_h = |x: f64| x / GIB as f64 / 3600.0;
        Some(VmFigures {
            vm: self.tr.key.clone(),
            ceiling: self.env.ceiling.0,
            vm_days: a.vm_seconds / 86400.0,
            reclaimed_pct: pct(a.ceiling_bs - a.alloc_bs),
            mean_demand_pct: pct(a.demand_bs),
            reclaimed_gib_h: gib_h(a.ceiling_bs - a.alloc_bs),
            pressure_events: a.pressure_events,
            shortfall_gib_h: gib_h(a.shortfall_bs),
            events: o.events.clone(),
        })
    }

    /// Demand now, never above the modelled ceiling (which is the trace's, rounded down to
    /// what the methods can reach).
    pub(super) fn demand(&self) -> u64 {
        self.tr.demand[self.i].min(self.env.ceiling.0)
    }

    pub(super) fn record(&mut self, at: f64) {
        let (demand, alloc) = (self.demand(), self.alloc);
        if let Some(tl) = &mut self.timeline
            && at <= self.timeline_end
        {
            tl.points.push(TimelinePoint {
                t: at - self.start,
                demand,
                alloc,
            });
        }
    }

    /// Account `[self.t, b)` at the current demand and allocation.
    pub(super) fn integrate(&mut self, b: f64, acc: &mut Acc) {
        let b = b.min(self.end);
        if b <= self.t {
            return;
        }
        let dt = b - self.t;
        let (d, a) = (self.demand(), self.alloc);
        let ceiling = self.env.ceiling.0 as f64;
        acc.vm_seconds += dt;
        acc.ceiling_bs += ceiling * dt;
        acc.alloc_bs += a as f64 * dt;
        acc.demand_bs += d as f64 * dt;
        let starts = d > a && !self.in_pressure;
        if let Some(o) = &mut self.own {
            let own = &mut o.acc;
            own.vm_seconds += dt;
            own.ceiling_bs += ceiling * dt;
            own.alloc_bs += a as f64 * dt;
            own.demand_bs += d as f64 * dt;
            if d > a {
                if starts {
                    own.pressure_events += 1;
                    // Began on a new trace point (a demand jump), or by a shrink landing.
                    let jumped = self.i > 0 && self.tr.times[self.i] as f64 == self.t;
                    let before = if jumped {
                        self.tr.demand[self.i - 1].min(self.env.ceiling.0)
                    } else {
                        d
                    };
                    o.events.push(EventRec {
                        at_s: self.t - self.start,
                        length_s: 0.0,
                        before,
                        demand: d,
                        alloc: a,
                        shortfall_bs: 0.0,
                    });
                }
                own.shortfall_bs += (d - a) as f64 * dt;
                if let Some(e) = o.events.last_mut() {
                    e.shortfall_bs += (d - a) as f64 * dt;
                    e.length_s += dt;
                }
            }
        }
        if d > a {
            if starts {
                self.in_pressure = true;
                self.pressure_since = self.t;
                acc.pressure_events += 1;
            }
            acc.pressure_seconds += dt;
            acc.shortfall_bs += (d - a) as f64 * dt;
        } else if self.in_pressure {
            self.in_pressure = false;
            acc.event_lengths
                .push((self.t - self.pressure_since) as f32);
        }
        self.t = b;
    }

    /// Apply every demand change and landing up to `t`, accounting as we go.
    pub(super) fn advance(&mut self, t: f64, acc: &mut Acc) {
        loop {
            let next_point = self
                .tr
                .times
                .get(self.i + 1)
                .map(|&x| x as f64)
                .unwrap_or(f64::INFINITY);
            let next = next_point.min(self.land);
            if next > t {
                break;
            }
            self.integrate(next, acc);
            if self.land <= next_point {
                self.land_step(next);
            } else {
                self.i += 1;
            }
            self.record(next);
        }
        self.integrate(t, acc);
    }

    /// The speed and the size of one landing step toward `target` from the allocation now.
    fn step(&self, target: u64) -> (f64, u64) {
        let speed = if target > self.alloc {
            self.speeds.0
        } else {
            self.speeds.1
        };
        let chunk = (speed * STEP_SECONDS) as u64;
        (speed, self.alloc.abs_diff(target).min(chunk.max(1)))
    }

    /// A new target at `t`, the request's `delay` before memory starts to move. A resize goes
    /// a step at a time (a second's worth of memory, as virtio-mem plugs and the guest onlines
    /// block by block): the guest holds what has landed so far. A new target in the same
    /// direction as a move under way goes on from where that move is, without a new delay
    /// (before, every re-ask restarted the whole landing and a guest climbing faster than one
    /// tick's growth got nothing until the asks stopped).
    pub(super) fn retarget(&mut self, t: f64, target: u64, delay: f64) {
        let under_way = self.land.is_finite()
            && (self.target > self.alloc) == (target > self.alloc)
            && self.target != self.alloc;
        self.target = target;
        if target == self.alloc {
            self.land = f64::INFINITY;
        } else if !under_way {
            let (speed, size) = self.step(target);
            self.land = t + delay + size as f64 / speed;
        }
    }

    /// One step of the resize under way lands at `at`.
    fn land_step(&mut self, at: f64) {
        let (speed, size) = self.step(self.target);
        if self.target > self.alloc {
            self.alloc += size;
        } else {
            self.alloc -= size;
        }
        self.land = if self.alloc == self.target {
            f64::INFINITY
        } else {
            let (_, next) = self.step(self.target);
            at + next as f64 / speed
        };
    }

    pub(super) fn finish(&mut self, acc: &mut Acc) {
        self.advance(self.end, acc);
        if self.in_pressure {
            self.in_pressure = false;
            acc.event_lengths
                .push((self.end - self.pressure_since) as f32);
        }
    }

    /// The next time this guest's demand or allocation changes.
    pub(super) fn next_change(&self) -> f64 {
        let p = self
            .tr
            .times
            .get(self.i + 1)
            .map(|&x| x as f64)
            .unwrap_or(f64::INFINITY);
        p.min(self.land)
    }

    pub(super) fn sample(&self, now: f64, interval: f64) -> Sample {
        let (d, a) = (self.demand(), self.alloc);
        Sample {
            at: now,
            size: Bytes(a),
            total: Bytes(a),
            available: Bytes(a.saturating_sub(d)),
            // A guest short of memory thrashes: it swaps in its shortfall every interval.
            swap_in_rate: d.saturating_sub(a) as f64 / interval,
        }
    }
}
