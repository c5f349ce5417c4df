//! The `[policy.memory]` and `[policy.cpu]` tables: every knob read with its range, then the
//! rules that tie knobs together, each reported at the knob it names.

use super::diag::{Ctx, unknown};
use super::value::{boolean, integer, strings, unit};
use crate::envelope::Method;
use crate::policy::{CpuKnobs, Knobs};
use crate::units::{Bytes, Dur, Percent, Rate};
use std::ops::Range;
use toml::de::DeTable;

const KNOBS: &[&str] = &[
    "headroom",
    "headroom_pct",
    "grow_at",
    "shrink_at",
    "min_free",
    "predict",
    "trend_window",
    "window",
    "peak_window",
    "recur",
    "peak_decay",
    "recur_ahead",
    "young_headroom",
    "percentile",
    "grow_rate",
    "shrink_rate",
    "max_grow_step",
    "max_shrink_step",
    "grow_cooldown",
    "shrink_cooldown",
    "shrink_interval",
    "min_change",
    "swap_grow",
    "min",
    "max",
    "floor_below_base",
    "methods",
    "numa_balance",
    "shares",
    "stale_after",
];

pub(super) fn parse_knobs(ctx: &mut Ctx, t: &DeTable, span: Range<usize>) -> Knobs {
    let mut k = Knobs::default();
    let big = Bytes::from_gib(1024);
    let mut spans = std::collections::HashMap::new();
    for (key, v) in t.iter() {
        let name = key.get_ref().as_ref();
        spans.insert(name.to_string(), v.span());
        let b = |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Bytes::parse, (lo, hi));
        let d = |ctx: &mut Ctx, hi| unit(ctx, name, v, Dur::parse, (Dur::secs(0), hi));
        let p =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Percent::parse, (Percent(lo), Percent(hi)));
        let r = |ctx: &mut Ctx| unit(ctx, name, v, Rate::parse, (Rate(Bytes(0)), Rate(big)));
        match name {
            "headroom" => k.headroom = b(ctx, Bytes::from_mib(16), big).unwrap_or(k.headroom),
            "headroom_pct" => k.headroom_pct = p(ctx, 0.0, 1.0).unwrap_or(k.headroom_pct),
            "grow_at" => k.grow_at = p(ctx, 0.01, 0.99).unwrap_or(k.grow_at),
            "shrink_at" => k.shrink_at = p(ctx, 0.01, 10.0).unwrap_or(k.shrink_at),
            "min_free" => k.min_free = b(ctx, Bytes(0), big).unwrap_or(k.min_free),
            "predict" => k.predict = d(ctx, Dur::secs(600)).unwrap_or(k.predict),
            "trend_window" => {
                k.trend_window = unit(ctx, name, v, Dur::parse, (Dur::secs(1), Dur::secs(3600)))
                    .unwrap_or(k.trend_window)
            }
            "peak_window" => k.peak_window = d(ctx, Dur::secs(7 * 86400)).unwrap_or(k.peak_window),
            "peak_decay" => k.peak_decay = d(ctx, Dur::secs(7 * 86400)).unwrap_or(k.peak_decay),
            "recur" => k.recur = d(ctx, Dur::secs(7 * 86400)).unwrap_or(k.recur),
            "recur_ahead" => k.recur_ahead = d(ctx, Dur::secs(86400)).unwrap_or(k.recur_ahead),
            "young_headroom" => {
                k.young_headroom = b(ctx, Bytes(0), big).unwrap_or(k.young_headroom)
            }
            "window" => {
                k.window = unit(ctx, name, v, Dur::parse, (Dur::secs(1), Dur::secs(86400)))
                    .unwrap_or(k.window)
            }
            "percentile" => k.percentile = p(ctx, 0.01, 1.0).unwrap_or(k.percentile),
            "grow_rate" => k.grow_rate = r(ctx).unwrap_or(k.grow_rate),
            "shrink_rate" => k.shrink_rate = r(ctx).unwrap_or(k.shrink_rate),
            "max_grow_step" => k.max_grow_step = b(ctx, Bytes(0), big).unwrap_or(k.max_grow_step),
            "max_shrink_step" => {
                k.max_shrink_step = b(ctx, Bytes(0), big).unwrap_or(k.max_shrink_step)
            }
            "grow_cooldown" => k.grow_cooldown = d(ctx, Dur::secs(3600)).unwrap_or(k.grow_cooldown),
            "shrink_cooldown" => {
                k.shrink_cooldown = d(ctx, Dur::secs(86400)).unwrap_or(k.shrink_cooldown)
            }
            "shrink_interval" => {
                k.shrink_interval = d(ctx, Dur::secs(86400)).unwrap_or(k.shrink_interval)
            }
            "min_change" => {
                k.min_change = b(ctx, Bytes(0), Bytes::from_gib(64)).unwrap_or(k.min_change)
            }
            "swap_grow" => k.swap_grow = r(ctx).unwrap_or(k.swap_grow),
            "min" => k.min = b(ctx, Bytes::from_mib(64), big).or(k.min),
            "max" => k.max = b(ctx, Bytes::from_mib(64), big).or(k.max),
            "floor_below_base" => {
                k.floor_below_base = b(ctx, Bytes::from_mib(128), big).or(k.floor_below_base)
            }
            "methods" => {
                if let Some(list) = strings(ctx, name, v) {
                    let mut ms = Vec::new();
                    for m in list {
                        match m.as_str() {
                            "balloon" => ms.push(Method::Balloon),
                            "virtio-mem" => ms.push(Method::VirtioMem),
                            "dimm" => ms.push(Method::Dimm),
                            other => ctx.err(
                                v.span(),
                                format!("methods: unknown method {other:?}: use \"virtio-mem\", \"balloon\" or \"dimm\""),
                            ),
                        }
                    }
                    let mut dedup = ms.clone();
                    dedup.sort();
                    dedup.dedup();
                    if dedup.len() != ms.len() {
                        ctx.err(v.span(), "methods: a method is listed twice");
                    } else if ms.is_empty() {
                        ctx.err(v.span(), "methods: list at least one method");
                    } else {
                        k.methods = ms;
                    }
                }
            }
            "numa_balance" => k.numa_balance = boolean(ctx, name, v).unwrap_or(k.numa_balance),
            "shares" => {
                if let Some(n) = integer(ctx, name, v) {
                    if (1..=1_000_000).contains(&n) {
                        k.shares = n as u32;
                    } else {
                        ctx.err(
                            v.span(),
                            format!("shares: {n} is out of range 1 to 1000000"),
                        );
                    }
                }
            }
            "stale_after" => k.stale_after = d(ctx, Dur::secs(3600)).unwrap_or(k.stale_after),
            _ => unknown(ctx, key, "[policy.memory]", KNOBS),
        }
    }
    // Cross-knob rules: each names the knob it is reported at.
    let at = |n: &str| spans.get(n).cloned().unwrap_or(span.clone());
    if k.shrink_at.0 <= k.grow_at.0 {
        let s = at("shrink_at");
        ctx.err(
            s,
            format!(
                "shrink threshold {} must be above grow threshold {}",
                k.shrink_at, k.grow_at
            ),
        );
    } else if k.shrink_at.0 <= 1.0 {
        let s = at("shrink_at");
        ctx.err(s, format!("shrink threshold {} must be above 100% of the headroom, or every growth would be undone", k.shrink_at));
    }
    if !k.peak_decay.0.is_zero() && k.peak_window.0.is_zero() {
        let s = at("peak_decay");
        ctx.err(
            s,
            format!(
                "peak_decay {} needs peak_window: it decays that peak",
                k.peak_decay
            ),
        );
    }
    if k.young_headroom.0 > 0 && k.peak_window.0.is_zero() {
        let s = at("young_headroom");
        ctx.err(
            s,
            format!(
                "young_headroom {} needs peak_window: a guest is young until its peaks span it",
                k.young_headroom
            ),
        );
    }
    if !k.recur.0.is_zero() && k.peak_window.0.is_zero() {
        let s = at("recur");
        ctx.err(
            s,
            format!(
                "recur {} needs peak_window: the recurring need is read from the peak's buckets",
                k.recur
            ),
        );
    }
    if k.min_free > k.headroom {
        let s = at("min_free");
        ctx.err(
            s,
            format!("min_free {} is above headroom {}", k.min_free, k.headroom),
        );
    }
    if let (Some(min), Some(max)) = (k.min, k.max)
        && min > max
    {
        let s = at("min");
        ctx.err(s, format!("floor {min} (min) is above ceiling {max} (max)"));
    }
    if let (Some(fb), Some(min)) = (k.floor_below_base, k.min)
        && fb > min
    {
        let s = at("floor_below_base");
        ctx.err(
            s,
            format!("floor_below_base {fb} is above min {min}: it would never apply"),
        );
    }
    if !k.numa_balance {
        let s = at("numa_balance");
        ctx.err(
            s,
            "numa_balance = false is not supported: per-node devices always move together",
        );
    }
    k
}

const CPU_KNOBS: &[&str] = &[
    "enabled",
    "grow_at",
    "shrink_at",
    "window",
    "cooldown",
    "max_delay",
    "min",
    "max",
];

pub(super) fn parse_cpu(ctx: &mut Ctx, t: &DeTable) -> CpuKnobs {
    let mut c = CpuKnobs::default();
    let mut spans = std::collections::HashMap::new();
    for (key, v) in t.iter() {
        let name = key.get_ref().as_ref();
        spans.insert(name, v.span());
        let p =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Percent::parse, (Percent(lo), Percent(hi)));
        let d =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Dur::parse, (Dur::secs(lo), Dur::secs(hi)));
        let count = |ctx: &mut Ctx| match integer(ctx, name, v) {
            Some(n) if (1..=4096).contains(&n) => Some(n as u32),
            Some(n) => {
                ctx.err(
                    v.span(),
                    format!("{name}: {n} is out of range 1 to 4096 vCPUs"),
                );
                None
            }
            None => None,
        };
        match name {
            "enabled" => c.enabled = boolean(ctx, name, v).unwrap_or(c.enabled),
            "grow_at" => c.grow_at = p(ctx, 0.05, 1.0).unwrap_or(c.grow_at),
            "shrink_at" => c.shrink_at = p(ctx, 0.0, 0.95).unwrap_or(c.shrink_at),
            "window" => c.window = d(ctx, 2, 86400).unwrap_or(c.window),
            "cooldown" => c.cooldown = d(ctx, 0, 86400).unwrap_or(c.cooldown),
            "max_delay" => c.max_delay = p(ctx, 0.0, 1.0).unwrap_or(c.max_delay),
            "min" => c.min = count(ctx).or(c.min),
            "max" => c.max = count(ctx).or(c.max),
            _ => unknown(ctx, key, "[policy.cpu]", CPU_KNOBS),
        }
    }
    if c.shrink_at.0 >= c.grow_at.0 {
        let span = spans
            .get("shrink_at")
            .or(spans.get("grow_at"))
            .cloned()
            .unwrap_or(0..0);
        ctx.err(
            span,
            format!(
                "cpu: shrink_at ({}) must be below grow_at ({}), or the vCPU count would swing",
                c.shrink_at, c.grow_at
            ),
        );
    }
    if let (Some(lo), Some(hi)) = (c.min, c.max)
        && lo > hi
    {
        ctx.err(
            spans.get("min").cloned().unwrap_or(0..0),
            format!("cpu: min ({lo}) is above max ({hi})"),
        );
    }
    c
}
