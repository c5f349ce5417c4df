//! The long-span peak of a guest's need, kept in coarse buckets for `peak_window` policies.

use super::Sample;
use crate::units::Bytes;
use std::collections::VecDeque;

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
