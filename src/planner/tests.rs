use super::*;
use crate::envelope::{Envelope, FlavorCatalog, Limits};
use crate::planner::PlannerReason;
use crate::policy::Knobs;
use crate::units::{Bytes, MIB};
use proptest::prelude::*;

fn env(floor_mib: u64, base_mib: u64, vmem_mib: u64, block_mib: u64, nodes: u64) -> Envelope {
    let per = vmem_mib / nodes;
    let spec = crate::domain::DomainSpec {
        name: "g".into(),
        memory: Bytes::from_mib(base_mib + per * nodes),
        current_memory: Bytes::from_mib(floor_mib),
        balloon_device: true,
        virtio_mem: (0..nodes)
            .filter(|_| per > 0)
            .map(|i| crate::domain::VirtioMem {
                alias: Some(format!("vm{i}")),
                node: Some(i as u32),
                size: Bytes::from_mib(per),
                block: Bytes::from_mib(block_mib),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Envelope::from_spec(&spec, &FlavorCatalog::new()).unwrap()
}

/// A guest whose need is set by the test; its report follows its allocation at once.
struct Model {
    size: Bytes,
    hidden: Bytes,
    samples: Vec<Sample>,
    history: History,
}

impl Model {
    fn new(size: Bytes) -> Model {
        Model {
            size,
            hidden: Bytes::from_mib(30),
            samples: vec![],
            history: History::default(),
        }
    }
    /// One tick: observe, plan, apply. Returns the decision.
    fn tick(&mut self, now: f64, need: Bytes, env: &Envelope, k: &Knobs) -> Decision {
        let total = self.size.saturating_sub(self.hidden);
        let used = need.saturating_sub(self.hidden);
        self.samples.push(Sample {
            at: now,
            size: self.size,
            total,
            available: total.saturating_sub(used),
            swap_in_rate: 0.0,
        });
        let keep = (k.window.as_secs_f64().max(k.trend_window.as_secs_f64())) as usize + 2;
        if self.samples.len() > keep {
            self.samples.remove(0);
        }
        let d = plan(&Input {
            now,
            envelope: env,
            knobs: k,
            size: self.size,
            samples: &self.samples,
            history: self.history,
            peak: Bytes(0),
            recurring: Bytes(0),
            young: false,
        });
        match d.kind {
            Kind::Grow => self.history.last_grow = Some(now),
            Kind::Shrink => self.history.last_shrink = Some(now),
            Kind::Hold => {}
        }
        if d.kind != Kind::Hold {
            self.size = d.target;
        }
        d
    }
}

#[test]
fn grows_when_short_and_shrinks_when_idle() {
    let e = env(512, 512, 2048, 2, 1);
    let k = Knobs::default();
    let mut m = Model::new(Bytes::from_mib(512));
    let d = m.tick(0.0, Bytes::from_mib(450), &e, &k);
    assert_eq!(d.kind, Kind::Grow, "{d:?}");
    assert!(d.target >= Bytes::from_mib(450) + k.headroom);
    assert!(matches!(
        d.reason,
        Reason::Plan(PlannerReason::Short { .. })
    ));
    // idle for a long time: back to the floor, step by step
    let mut t = 1.0;
    while t < 400.0 {
        m.tick(t, Bytes::from_mib(100), &e, &k);
        t += 1.0;
    }
    assert_eq!(m.size, e.floor, "idle guest shrinks to its floor");
}

#[test]
fn never_shrinks_below_need_plus_min_free() {
    let e = env(256, 2048, 0, 2, 1);
    let k = Knobs {
        headroom: Bytes::from_mib(64),
        min_free: Bytes::from_mib(64),
        ..Knobs::default()
    };
    let mut m = Model::new(Bytes::from_mib(2048));
    for t in 0..500 {
        let d = m.tick(t as f64, Bytes::from_mib(700), &e, &k);
        if d.kind == Kind::Shrink {
            assert!(d.target >= Bytes::from_mib(700) + k.min_free);
        }
    }
    assert!(m.size < Bytes::from_mib(1000));
}

#[test]
fn at_ceiling_is_a_hold_with_a_reason() {
    let e = env(512, 512, 512, 2, 1);
    let k = Knobs::default();
    let mut m = Model::new(Bytes::from_mib(1024));
    let d = m.tick(0.0, Bytes::from_mib(1500), &e, &k);
    assert_eq!(d.kind, Kind::Hold);
    assert!(
        matches!(d.reason, Reason::Plan(PlannerReason::AtCeiling { .. })),
        "{d:?}"
    );
}

#[test]
fn trend_grows_ahead_of_demand() {
    let e = env(512, 512, 2048, 2, 1);
    let k = Knobs::default();
    let mut m = Model::new(Bytes::from_mib(1024));
    // need climbs 50 MiB/s: growth must fire while availability is still above the threshold
    let mut first_grow = None;
    for t in 0..10 {
        let need = Bytes::from_mib(400 + 50 * t);
        let d = m.tick(t as f64, need, &e, &k);
        if d.kind == Kind::Grow && first_grow.is_none() {
            first_grow = Some((t, d));
        }
    }
    let (t, d) = first_grow.expect("grows");
    assert!(d.predicted > d.need, "prediction uses the trend: {d:?}");
    assert!(t <= 8, "grew at {t}");
}

#[test]
fn hostile_samples_are_bounded() {
    let s = Sample {
        at: 0.0,
        size: Bytes::from_mib(1024),
        total: Bytes::from_gib(1000),
        available: Bytes::from_gib(2000),
        swap_in_rate: f64::NAN,
    };
    // available above total and total above size: need is zero plus nothing hidden
    assert_eq!(s.need(), Bytes(0));
    let s = Sample {
        total: Bytes(0),
        available: Bytes(0),
        ..s
    };
    // a guest claiming no MemTotal may not make its need exceed the bounded hidden part
    assert!(s.need() <= Bytes::from_mib(1024 / 8 + 32));
}

#[test]
fn swapping_guest_grows() {
    let e = env(512, 512, 1024, 2, 1);
    let k = Knobs::default();
    let size = Bytes::from_mib(1024);
    let s = Sample {
        at: 0.0,
        size,
        total: size,
        available: Bytes::from_mib(500),
        swap_in_rate: 20.0 * MIB as f64,
    };
    let d = plan(&Input {
        now: 0.0,
        envelope: &e,
        knobs: &k,
        size,
        samples: &[s],
        history: History::default(),
        peak: Bytes(0),
        recurring: Bytes(0),
        young: false,
    });
    assert_eq!(d.kind, Kind::Grow);
    assert!(matches!(
        d.reason,
        Reason::Plan(PlannerReason::Swapping { .. })
    ));
}

fn arb_env() -> impl Strategy<Value = Envelope> {
    (
        128u64..2048,
        0u64..2048,
        0u64..4096,
        prop::sample::select(vec![2u64, 4, 128]),
        1u64..3,
    )
        .prop_map(|(floor, extra, vmem, block, nodes)| {
            let base = floor + extra;
            env(
                floor,
                base,
                vmem / (block * nodes) * block * nodes,
                block,
                nodes,
            )
        })
}

fn arb_knobs() -> impl Strategy<Value = Knobs> {
    (
        32u64..1024,
        0u64..30,
        10u64..90,
        150u64..400,
        0u64..64,
        0u64..60,
        0u64..120,
        0u64..2,
    )
        .prop_map(
            |(head, pct, grow, shrink, minfree, cool, rate, max)| Knobs {
                headroom: Bytes::from_mib(head),
                headroom_pct: crate::units::Percent(pct as f64 / 100.0),
                grow_at: crate::units::Percent(grow as f64 / 100.0),
                shrink_at: crate::units::Percent(shrink as f64 / 100.0),
                min_free: Bytes::from_mib(minfree.min(head)),
                shrink_cooldown: crate::units::Dur::secs(cool),
                shrink_rate: crate::units::Rate(Bytes::from_mib(rate)),
                max: if max == 1 {
                    Some(Bytes::from_mib(1500))
                } else {
                    None
                },
                ..Knobs::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the demand, no decision leaves the envelope, every resize is to a realizable
    /// size, and no shrink goes below need plus the reserve.
    #[test]
    fn never_outside_envelope(e in arb_env(), k in arb_knobs(), needs in prop::collection::vec(0u64..6000, 1..120), start in 0u64..6000) {
        let e = e.limited(&k.limits());
        let mut m = Model::new(Bytes::from_mib(start));
        for (t, n) in needs.iter().enumerate() {
            let need = Bytes::from_mib(*n);
            let before = m.size;
            let d = m.tick(t as f64 * 2.0, need, &e, &k);
            if d.kind != Kind::Hold {
                prop_assert!(d.target >= e.floor && d.target <= e.ceiling, "{d:?} outside {}..{}", e.floor, e.ceiling);
                prop_assert!(e.is_realizable(d.target), "{} not realizable in {e:?}", d.target);
            }
            if d.kind == Kind::Shrink && d.reason != Reason::Plan(PlannerReason::AboveCeiling) {
                prop_assert!(d.target >= e.floor.max(d.need + k.min_free).min(before), "{d:?}");
            }
        }
    }

    /// Under flat demand the guest settles, then is never resized again.
    #[test]
    fn flat_demand_settles(e in arb_env(), k in arb_knobs(), n in 0u64..4000, start in 0u64..4000) {
        let e = e.limited(&k.limits());
        let mut m = Model::new(Bytes::from_mib(start));
        let need = Bytes::from_mib(n);
        // settle: until a long quiet spell (slow shrink rates take a while)
        let (mut t, mut quiet) = (0, 0);
        while quiet < 200 && t < 50_000 {
            quiet = if m.tick(t as f64, need, &e, &k).kind == Kind::Hold { quiet + 1 } else { 0 };
            t += 1;
        }
        prop_assert!(quiet >= 200, "never settled");
        for t in t..t + 600 {
            let d = m.tick(t as f64, need, &e, &k);
            prop_assert_eq!(d.kind, Kind::Hold, "resized after settling at t={}: {:?}", t, d);
        }
    }

    /// A square wave slower than the cooldown: inside each level, resizes go one way only.
    /// Growth while the guest reports itself starved is a probe (its demand is hidden, steps
    /// double) and its overshoot may be given back; every other resize goes one way.
    #[test]
    fn no_oscillation_under_square_wave(e in arb_env(), k in arb_knobs(), lo in 0u64..1500, hi in 1500u64..4000) {
        let e = e.limited(&k.limits());
        let half = (k.shrink_cooldown.as_secs_f64() as usize + k.window.as_secs_f64() as usize) * 3 + 60;
        let mut m = Model::new(e.floor);
        let mut t = 0.0;
        for level in 0..6 {
            let need = Bytes::from_mib(if level % 2 == 0 { hi } else { lo });
            let mut dirs = vec![];
            let mut log = vec![];
            for _ in 0..half {
                let before = m.size;
                let d = m.tick(t, need, &e, &k);
                let probe = d.kind == Kind::Grow && m.samples.last().is_some_and(|s| s.saturated());
                if d.kind != Kind::Hold && !probe && d.reason != Reason::Plan(PlannerReason::AboveCeiling) && d.reason != Reason::Plan(PlannerReason::BelowFloor) {
                    dirs.push(d.kind);
                    log.push(format!("t={t} {before}->{} need={} pred={} H={} {} samples={:?}", d.target, d.need, d.predicted, d.headroom, d.reason, m.samples.iter().rev().take(12).map(|s| (s.at, s.need().mib(), s.available.mib(), s.saturated())).collect::<Vec<_>>()));
                }
                t += 1.0;
            }
            dirs.dedup();
            prop_assert!(dirs.len() <= 1, "level {} went both ways: {:#?} lo={} hi={} samples={:?}", level, log, lo, hi, m.samples.iter().rev().take(14).map(|s| (s.at, s.need().mib(), s.available.mib())).collect::<Vec<_>>());
        }
    }
}

#[test]
fn limits_are_respected_by_plan() {
    let e = env(512, 512, 4096, 2, 2).limited(&Limits {
        max: Some(Bytes::from_mib(1024)),
        ..Limits::all()
    });
    let mut m = Model::new(Bytes::from_mib(2048));
    let d = m.tick(0.0, Bytes::from_mib(100), &e, &Knobs::default());
    assert_eq!(d.kind, Kind::Shrink);
    assert_eq!(d.reason, Reason::Plan(PlannerReason::AboveCeiling));
    assert_eq!(d.target, Bytes::from_mib(1024));
}

#[test]
fn a_starved_guest_gets_doubling_steps() {
    // A guest whose demand jumped far past its size reports no free memory, whatever it lacks:
    // each starved report in a row doubles the step.
    let e = env(1024, 1024, 8192, 2, 1);
    let k = Knobs::default();
    let mut m = Model::new(Bytes::from_mib(1024));
    let mut steps = vec![];
    for t in 0..4 {
        let before = m.size;
        let d = m.tick(t as f64, Bytes::from_mib(6000), &e, &k);
        assert_eq!(d.kind, Kind::Grow, "tick {t}: {d:?}");
        steps.push(m.size.saturating_sub(before).mib());
    }
    assert!(steps[0] >= 256 && steps[0] < 512, "{steps:?}");
    for w in steps.windows(2) {
        assert!(w[1] >= 2 * w[0] - 2, "each step doubles: {steps:?}");
    }
    // Once the guest shows free memory again, growth is back to demand plus headroom.
    let d = m.tick(10.0, Bytes::from_mib(600), &e, &k);
    assert_ne!(d.kind, Kind::Grow, "{d:?}");
}

/// The statistics as they were computed with statrs, allocating, before the planner reused
/// its scratch: the reference the faster ones must match bit for bit.
mod reference {
    use super::super::Sample;
    use crate::units::Bytes;
    use statrs::statistics::{Data, Median, OrderStatistics};

    pub fn trend(samples: &[Sample]) -> f64 {
        if samples.len() < 2 {
            return 0.0;
        }
        let mut slopes = Vec::with_capacity(samples.len() * (samples.len() - 1) / 2);
        for (i, a) in samples.iter().enumerate() {
            for b in &samples[i + 1..] {
                let dt = b.at - a.at;
                if dt > 0.0 {
                    slopes.push((b.need().0 as f64 - a.need().0 as f64) / dt);
                }
            }
        }
        if slopes.is_empty() {
            return 0.0;
        }
        let d = Data::new(slopes);
        let m = d.median();
        if m.is_finite() { m } else { 0.0 }
    }

    pub fn percentile(samples: &[Sample], p: f64) -> Bytes {
        let Some(first) = samples.first() else {
            return Bytes(0);
        };
        let n0 = first.need();
        if samples.iter().all(|s| s.need() == n0) {
            return n0;
        }
        let v: Vec<f64> = samples.iter().map(|s| s.need().0 as f64).collect();
        let mut d = Data::new(v);
        let q = d.quantile(p.clamp(0.0, 1.0));
        if q.is_finite() && q > 0.0 {
            Bytes(q as u64)
        } else {
            Bytes(0)
        }
    }
}

/// Windows of samples with ties, repeated times, flat runs and starved reports.
fn arb_window(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(
        (0u8..3, 0u64..5, 1900u64..2100, 0u64..2100, 0u64..4),
        0..max,
    )
    .prop_map(|v| {
        let mut at = 1000.0;
        v.into_iter()
            .map(|(dt, coarse, total, avail, fine)| {
                at += f64::from(dt) * 0.5;
                Sample {
                    at,
                    size: Bytes::from_mib(2048),
                    total: Bytes::from_mib(total),
                    // Coarse steps make ties and flat windows common; fine ones make odd
                    // byte counts.
                    available: Bytes::from_mib(avail - avail % (coarse * 100 + 1)) + Bytes(fine),
                    swap_in_rate: 0.0,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The statistics on the reused scratch give the statrs figures exactly.
    #[test]
    fn statistics_match_the_statrs_reference(
        w in arb_window(700),
        p in prop_oneof![Just(0.0), Just(0.5), Just(0.9), Just(0.95), Just(1.0), 0.0f64..=1.0],
    ) {
        prop_assert_eq!(super::percentile(&w, p), reference::percentile(&w, p));
        let t = &w[..w.len().min(40)];
        prop_assert_eq!(super::trend(t).to_bits(), reference::trend(t).to_bits());
    }
}

/// A long trend window (1,770 pairwise slopes) and a scratch already in use.
#[test]
fn long_trend_windows_match_the_reference() {
    let w: Vec<Sample> = (0..60u32)
        .map(|i| Sample {
            at: f64::from(i),
            size: Bytes::from_mib(4096),
            total: Bytes::from_mib(4000),
            available: Bytes::from_mib(3000 - u64::from(i * i) % 700),
            swap_in_rate: 0.0,
        })
        .collect();
    super::stats::with_scratch(|_| {
        assert_eq!(super::trend(&w).to_bits(), reference::trend(&w).to_bits());
    });
    assert_eq!(super::trend(&w).to_bits(), reference::trend(&w).to_bits());
    assert_eq!(super::percentile(&w, 0.95), reference::percentile(&w, 0.95));
}

/// `plan` as it was before the percentile was skipped out of a shrink's reach and the
/// statistics moved off statrs: every figure computed, every time.
fn reference_plan(i: &Input) -> Decision {
    let env = i.envelope;
    let k = i.knobs;
    let size = i.size;
    let Some(last) = i.samples.last() else {
        return Decision::hold(size, Reason::Plan(PlannerReason::NoSamples));
    };
    let need = last.need();
    let headroom = if i.young {
        headroom(k, need).max(k.young_headroom)
    } else {
        headroom(k, need)
    };
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
        reference::trend(recent).max(0.0)
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
    let need_window = reference::percentile(window, k.percentile.fraction())
        .max(need)
        .max(predicted);
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

    let avail_window = size.saturating_sub(need_window);
    let shrink_threshold = headroom.scale(k.shrink_at.fraction());
    // Idle means idle over the whole window: a guest seen for less than that (just booted, or
    // just adopted) is not shrunk yet.
    let covered = i
        .samples
        .first()
        .is_some_and(|s| s.at <= i.now - k.window.as_secs_f64() * 0.9);
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The planner decides exactly what the straightforward computation decides: the same
    /// kind, target, reason and figures, over envelopes, knobs, windows, sizes and histories.
    #[test]
    fn plan_matches_the_straightforward_computation(
        e in arb_env(),
        k in arb_knobs(),
        w in arb_window(120),
        size_mib in 256u64..6000,
        since_grow in prop::option::of(0.0f64..200.0),
        since_shrink in prop::option::of(0.0f64..200.0),
        peak_mib in 0u64..3000,
        late in 0.0f64..30.0,
        pct in 0.5f64..=1.0,
        young in any::<bool>(),
        young_mib in prop::sample::select(vec![0u64, 128, 512, 2048]),
    ) {
        let k = Knobs {
            percentile: crate::units::Percent(pct),
            young_headroom: Bytes::from_mib(young_mib),
            ..k
        };
        let now = w.last().map_or(1000.0, |s| s.at) + late;
        let i = Input {
            now,
            envelope: &e,
            knobs: &k,
            size: Bytes::from_mib(size_mib),
            samples: &w,
            history: History {
                last_grow: since_grow.map(|s| now - s),
                last_shrink: since_shrink.map(|s| now - s),
            },
            peak: Bytes::from_mib(peak_mib),
            recurring: Bytes(0),
            young,
        };
        prop_assert_eq!(plan(&i), reference_plan(&i));
    }
}

/// One report of a guest of `size` MiB needing `need` MiB (no hidden memory), at `at`.
fn report(at: f64, size_mib: u64, need_mib: u64) -> Sample {
    let size = Bytes::from_mib(size_mib);
    Sample {
        at,
        size,
        total: size,
        available: size.saturating_sub(Bytes::from_mib(need_mib)),
        swap_in_rate: 0.0,
    }
}

/// A guest needing 300 MiB in 1 GiB for the last two minutes, told that 2 GiB came at this
/// time one period ago.
fn quiet_guest(recurring: Bytes, e: &Envelope, k: &Knobs) -> Decision {
    let samples: Vec<Sample> = (0..=24)
        .map(|t| report(t as f64 * 5.0, 1024, 300))
        .collect();
    plan(&Input {
        now: 120.0,
        envelope: e,
        knobs: k,
        size: Bytes::from_mib(1024),
        samples: &samples,
        history: History::default(),
        peak: Bytes(0),
        recurring,
        young: false,
    })
}

/// Demand that came one period ago is grown to before it comes again, to the size it needed
/// then plus the headroom it would have; none expected, the same guest is only shrunk.
#[test]
fn recurring_need_is_grown_to_ahead_of_time() {
    let e = env(512, 512, 4096, 2, 1);
    let k = Knobs {
        recur: crate::units::Dur::secs(86400),
        ..Knobs::default()
    };
    let expected = Bytes::from_mib(2048);
    let d = quiet_guest(expected, &e, &k);
    assert_eq!(d.kind, Kind::Grow, "{d:?}");
    assert_eq!(
        d.reason,
        Reason::Plan(PlannerReason::Recurring { expected }),
        "{d:?}"
    );
    assert!(d.target >= expected + headroom(&k, expected), "{d:?}");
    assert_eq!(d.reason.label(), "recurring");
    // Nothing recurring: the same guest is idle and shrinks.
    let d = quiet_guest(Bytes(0), &e, &k);
    assert_eq!(d.kind, Kind::Shrink, "{d:?}");
    // A recurring need the guest already has room for asks for nothing.
    let d = quiet_guest(Bytes::from_mib(400), &e, &k);
    assert_ne!(d.kind, Kind::Grow, "{d:?}");
}

/// A guest sized for a recurring need keeps it: a shrink stops at the recurring need plus its
/// headroom, where without it the guest goes down to its own need plus headroom.
#[test]
fn shrink_keeps_room_for_the_recurring_need() {
    let e = env(512, 512, 4096, 2, 1);
    let k = Knobs {
        max_shrink_step: Bytes(0),
        shrink_rate: crate::units::Rate(Bytes(0)),
        ..Knobs::default()
    };
    let samples: Vec<Sample> = (0..=24)
        .map(|t| report(t as f64 * 5.0, 4096, 300))
        .collect();
    let at = |recurring| {
        plan(&Input {
            now: 120.0,
            envelope: &e,
            knobs: &k,
            size: Bytes::from_mib(4096),
            samples: &samples,
            history: History::default(),
            peak: Bytes(0),
            recurring,
            young: false,
        })
    };
    let free = at(Bytes(0));
    assert_eq!(free.kind, Kind::Shrink, "{free:?}");
    assert!(free.target < Bytes::from_mib(1024), "{free:?}");
    let expected = Bytes::from_mib(2048);
    let kept = at(expected);
    assert_eq!(kept.kind, Kind::Shrink, "{kept:?}");
    assert!(kept.target >= expected + headroom(&k, expected), "{kept:?}");
}

/// The tracker reads back the need of one period ago, up to `ahead` later, once it keeps
/// its buckets that long; and it says when that reading can change.
#[test]
fn peak_tracker_reads_the_need_one_period_ago() {
    let (day, hour) = (86400.0, 3600.0);
    let mut p = PeakTracker::new(6.0 * hour);
    p.set_keep(day + hour);
    // Day one: 300 MiB, but 2 GiB from 14:00 to 14:30. Then 300 MiB until day two, 12:00.
    let need = |t: f64| {
        if (14.0 * hour..14.5 * hour).contains(&t) {
            2048
        } else {
            300
        }
    };
    let mut t = 0.0;
    while t <= day + 12.0 * hour {
        p.observe(&report(t, 4096, need(t)));
        let _ = p.peak(t);
        t += 300.0;
    }
    let now = day + 12.0 * hour;
    // The 6 h peak has forgotten the spike; the recurring reading has not.
    assert_eq!(p.peak(now), Bytes::from_mib(300));
    assert_eq!(p.recurring(now, day, hour), Bytes::from_mib(300));
    assert_eq!(p.recurring(now, day, 2.5 * hour), Bytes::from_mib(2048));
    assert_eq!(
        p.recurring(now + 1.5 * hour, day, hour),
        Bytes::from_mib(2048)
    );
    assert_eq!(p.recurring(now, 0.0, hour), Bytes(0));
    // The next change lies ahead, within one bucket (6 h / 32).
    let next = p.next_change(now, day, hour);
    assert!(next > now && next <= now + 6.0 * hour / 32.0, "{next}");
    // Kept only for its window, the tracker has nothing of yesterday.
    let mut short = PeakTracker::new(6.0 * hour);
    let mut t = 0.0;
    while t <= day + 12.0 * hour {
        short.observe(&report(t, 4096, need(t)));
        let _ = short.peak(t);
        t += 300.0;
    }
    assert_eq!(short.recurring(now, day, 2.5 * hour), Bytes(0));
}

/// A decaying cushion: a spike's excess over the current need halves every half-life after
/// its bucket ends, while the undecayed peak keeps all of it for the whole window.
#[test]
fn peak_cushion_decays_with_the_time_since_the_peak() {
    let hour = 3600.0;
    let mut p = PeakTracker::new(24.0 * hour);
    // 2300 MiB for the first 45 min bucket (24 h / 32), then 300 MiB.
    let width = 24.0 * hour / 32.0;
    let mut t = 0.0;
    while t <= 5.0 * hour {
        p.observe(&report(t, 4096, if t < width { 2300 } else { 300 }));
        t += 300.0;
    }
    let end = width; // the spike's bucket ends here
    let half = 2.0 * width;
    let now = end + 4.0 * width;
    assert_eq!(p.peak(now), Bytes::from_mib(2300));
    assert_eq!(p.decayed(now, 0.0), Bytes::from_mib(2300));
    // Two half-lives after: a quarter of the 2000 MiB excess is left.
    assert_eq!(p.decayed(now, half), Bytes::from_mib(300 + 500));
    // One half-life: half; and the same until the next bucket boundary.
    assert_eq!(p.decayed(end + half, half), Bytes::from_mib(300 + 1000));
    assert_eq!(
        p.decayed(end + half + width * 0.9, half),
        Bytes::from_mib(300 + 1000)
    );
    // Never below the latest need.
    assert!(p.decayed(end + 100.0 * hour, hour) >= Bytes::from_mib(300));
}

/// A guest first seen less than a peak window ago keeps at least `young_headroom` free: its
/// peak does not know its daily high yet. Once its history spans the window (and with the
/// knob off) the same guest shrinks to its need plus its usual headroom.
#[test]
fn a_young_guest_keeps_the_young_headroom() {
    let e = env(512, 512, 4096, 2, 1);
    let k = Knobs {
        max_shrink_step: Bytes(0),
        shrink_rate: crate::units::Rate(Bytes(0)),
        peak_window: crate::units::Dur::secs(86400),
        young_headroom: Bytes::from_mib(1024),
        ..Knobs::default()
    };
    let samples: Vec<Sample> = (0..=24)
        .map(|t| report(t as f64 * 5.0, 4096, 300))
        .collect();
    let at = |young, k: &Knobs| {
        plan(&Input {
            now: 120.0,
            envelope: &e,
            knobs: k,
            size: Bytes::from_mib(4096),
            samples: &samples,
            history: History::default(),
            peak: Bytes::from_mib(300),
            recurring: Bytes(0),
            young,
        })
    };
    let need = Bytes::from_mib(300);
    let young = at(true, &k);
    assert_eq!(young.kind, Kind::Shrink, "{young:?}");
    assert_eq!(young.headroom, Bytes::from_mib(1024), "{young:?}");
    assert!(young.target >= need + Bytes::from_mib(1024), "{young:?}");
    let grown = at(false, &k);
    assert_eq!(grown.kind, Kind::Shrink, "{grown:?}");
    assert_eq!(grown.headroom, headroom(&k, need), "{grown:?}");
    assert!(grown.target < need + Bytes::from_mib(1024), "{grown:?}");
    // The knob off: being young changes nothing.
    let off = Knobs {
        young_headroom: Bytes(0),
        ..k.clone()
    };
    assert_eq!(at(true, &off), grown);
    // A young guest short of its young headroom grows to it.
    let small: Vec<Sample> = (0..=24).map(|t| report(t as f64 * 5.0, 800, 300)).collect();
    let d = plan(&Input {
        now: 120.0,
        envelope: &e,
        knobs: &k,
        size: Bytes::from_mib(800),
        samples: &small,
        history: History::default(),
        peak: Bytes::from_mib(300),
        recurring: Bytes(0),
        young: true,
    });
    assert_eq!(d.kind, Kind::Grow, "{d:?}");
    assert!(d.target >= need + Bytes::from_mib(1024), "{d:?}");
}

/// The tracker is young for one window from its first sample, however its samples come (a
/// gap longer than the window does not make it young again); restored from its parts, its
/// history starts at its oldest bucket.
#[test]
fn peak_tracker_is_young_for_one_window() {
    let mut p = PeakTracker::new(3200.0); // buckets of 100 s
    assert!(p.young(0.0), "no history is young");
    assert_eq!(p.grown_at(), f64::INFINITY);
    let mut t = 50.0;
    while t < 10_000.0 {
        p.observe(&report(t, 1024, 300));
        p.peak(t);
        assert_eq!(p.young(t), t < 3250.0, "at {t}");
        // Silent from 4000 s to 9000 s: every bucket expires, and it stays grown up.
        t += if t == 4000.0 { 5000.0 } else { 50.0 };
    }
    assert_eq!(p.grown_at(), 3250.0);
    let (w, b, l, la) = p.parts();
    let first = b[0].0 as f64 * 100.0;
    let q = PeakTracker::from_parts(w, b, l, la);
    assert_eq!(q.grown_at(), first + 3200.0);
    // What it kept starts after the silence: restored, it knows less than a window of peaks.
    assert!(q.young(10_000.0));
}
