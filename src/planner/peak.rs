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
    /// How long buckets are kept: at least `window`, longer for a recurring need.
    keep: f64,
    buckets: VecDeque<(i64, Bytes)>,
    last: Bytes,
    last_at: f64,
    /// When it first took a sample in (restored: its oldest bucket's start); infinite before.
    since: f64,
}

impl PeakTracker {
    pub fn new(window: f64) -> PeakTracker {
        PeakTracker {
            window,
            width: window / 32.0,
            keep: window,
            buckets: VecDeque::new(),
            last: Bytes(0),
            last_at: f64::NEG_INFINITY,
            since: f64::INFINITY,
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
        p.since = p
            .buckets
            .front()
            .map(|(k, _)| *k as f64 * p.width)
            .unwrap_or(f64::INFINITY);
        p.last = last;
        p.last_at = if last_at.is_nan() {
            f64::NEG_INFINITY
        } else {
            last_at
        };
        p
    }

    /// Keep buckets for `keep` seconds (never less than the window), so that a need one
    /// recurrence period ago can be read back ([`PeakTracker::recurring`]).
    pub fn set_keep(&mut self, keep: f64) {
        self.keep = if keep.is_finite() {
            keep.max(self.window)
        } else {
            self.window
        };
    }

    /// The highest need seen one `period` ago, from then until `ahead` later: what demand that
    /// recurs with that period (the same hour yesterday) is expected to ask for soon. Zero when
    /// `period` is zero or nothing that old is kept.
    pub fn recurring(&self, now: f64, period: f64, ahead: f64) -> Bytes {
        if self.width <= 0.0 || period <= 0.0 {
            return Bytes(0);
        }
        let (from, to) = (now - period, now - period + ahead.max(0.0));
        self.buckets
            .iter()
            .filter(|(k, _)| (*k + 1) as f64 * self.width > from && *k as f64 * self.width <= to)
            .map(|(_, m)| *m)
            .fold(Bytes(0), Bytes::max)
    }

    /// Whether it took its first sample in less than a window before `now`: a guest first
    /// seen less than a window ago, whose peak does not yet know its daily (weekly...) high.
    /// True before any sample. Restored from saved parts, its history starts at its oldest
    /// bucket's start; a new span (a policy reload) starts it over.
    pub fn young(&self, now: f64) -> bool {
        now < self.grown_at()
    }

    /// When it stops being young: its first sample's time plus the window (infinite before
    /// any sample).
    pub fn grown_at(&self) -> f64 {
        self.since + self.window
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
        self.since = self.since.min(s.at);
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
        let keep = self.keep.max(self.window);
        while self
            .buckets
            .front()
            .is_some_and(|(k, _)| (*k + 1) as f64 * self.width <= now - keep)
        {
            self.buckets.pop_front();
        }
        self.buckets
            .iter()
            .filter(|(k, _)| (*k + 1) as f64 * self.width > now - self.window)
            .map(|(_, m)| *m)
            .fold(self.last, Bytes::max)
    }

    /// The peak with its cushion decaying: each bucket's excess over the latest need counts
    /// for half as much every `half_life` seconds of its age (from the bucket's end to the
    /// start of the current bucket),
    /// so a spike an hour ago keeps most of its room and one a day ago little. `half_life` 0
    /// gives [`PeakTracker::peak`].
    pub fn decayed(&mut self, now: f64, half_life: f64) -> Bytes {
        let peak = self.peak(now);
        if half_life <= 0.0 || !half_life.is_finite() {
            return peak;
        }
        let base = self.last;
        // Ages in whole buckets: the cushion falls a step at each bucket boundary, so it can
        // only change when `next_change` says.
        let now = (now / self.width).floor() * self.width;
        self.buckets
            .iter()
            .filter(|(k, _)| (*k + 1) as f64 * self.width > now - self.window)
            .map(|(k, m)| {
                let age = (now - (*k + 1) as f64 * self.width).max(0.0);
                let excess = m.saturating_sub(base).0 as f64 * 0.5f64.powf(age / half_life);
                base + Bytes(excess as u64)
            })
            .fold(base, Bytes::max)
    }

    /// The width of one bucket, in seconds.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// After `now`, the first time the peak or the recurring need (for `period` and `ahead`)
    /// may change while no new sample comes: a bucket leaving the window, or a bucket boundary
    /// crossing either edge of the recurring span.
    pub fn next_change(&self, now: f64, period: f64, ahead: f64) -> f64 {
        let mut t = self
            .buckets
            .iter()
            .map(|(k, _)| (*k + 1) as f64 * self.width + self.window)
            .find(|t| *t > now)
            .unwrap_or(f64::INFINITY);
        if self.width > 0.0 && period > 0.0 {
            for edge in [period, period - ahead.max(0.0)] {
                let next = (((now - edge) / self.width).floor() + 1.0) * self.width + edge;
                t = t.min(next);
            }
        }
        t
    }

    /// When the oldest bucket leaves the window (the peak may fall then).
    pub fn next_expiry(&self) -> f64 {
        self.buckets
            .front()
            .map(|(k, _)| (*k + 1) as f64 * self.width + self.window)
            .unwrap_or(f64::INFINITY)
    }
}
