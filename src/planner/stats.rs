//! The statistics `plan` runs every tick for every guest (the window's percentile of need and
//! the Theil–Sen trend), on a per-thread scratch vector so they allocate nothing once warm.

use super::Sample;
use crate::units::Bytes;

thread_local! {
    /// Room for the statistics below, which run every tick for every guest: reused, so they
    /// allocate nothing once it has grown to the window.
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on an empty vector with room kept between calls (a fresh one if it is in use).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f64>) -> R) -> R {
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
pub(super) fn trend(samples: &[Sample]) -> f64 {
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

pub(super) fn percentile(samples: &[Sample], p: f64) -> Bytes {
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
