//! An exponentially bucketed histogram with exponentially decaying weights, as the
//! Kubernetes VPA recommender and Google's Autopilot keep them: a sample's weight doubles
//! every half-life after a reference time, so older samples count for less.

/// Bucket `i` covers `[start(i), start(i + 1))`, `start(i) = first * (ratio^i - 1) / (ratio - 1)`.
#[derive(Debug, Clone)]
pub struct DecayingHistogram {
    first: f64,
    ratio: f64,
    half_life: f64,
    reference: f64,
    weights: Vec<f64>,
    total: f64,
}

impl DecayingHistogram {
    /// VPA's memory histogram: first bucket 10 MB, 5% growth, up to 1 TB.
    pub fn vpa_memory(half_life: f64) -> DecayingHistogram {
        DecayingHistogram::new(1e7, 1.05, 1e12, half_life)
    }

    pub fn new(first: f64, ratio: f64, max: f64, half_life: f64) -> DecayingHistogram {
        let n = ((max * (ratio - 1.0) / first + 1.0).ln() / ratio.ln()).ceil() as usize + 1;
        DecayingHistogram {
            first,
            ratio,
            half_life,
            reference: f64::NAN,
            weights: vec![0.0; n.max(1)],
            total: 0.0,
        }
    }

    pub fn start(&self, i: usize) -> f64 {
        if i == 0 {
            return 0.0;
        }
        self.first * (self.ratio.powi(i as i32) - 1.0) / (self.ratio - 1.0)
    }

    fn bucket(&self, v: f64) -> usize {
        if v < self.first {
            return 0;
        }
        let i = ((v * (self.ratio - 1.0) / self.first + 1.0).ln() / self.ratio.ln()).floor();
        (i.max(0.0) as usize).min(self.weights.len() - 1)
    }

    fn factor(&mut self, t: f64) -> f64 {
        if self.reference.is_nan() {
            self.reference = t;
        }
        let mut e = (t - self.reference) / self.half_life;
        // Keep the weights in range: move the reference forward and rescale.
        if e > 100.0 {
            let shift = e.floor();
            let s = 2f64.powf(-shift);
            for w in &mut self.weights {
                *w *= s;
            }
            self.total *= s;
            self.reference += shift * self.half_life;
            e -= shift;
        }
        2f64.powf(e)
    }

    pub fn add(&mut self, v: f64, weight: f64, t: f64) {
        let f = self.factor(t);
        let b = self.bucket(v);
        self.weights[b] += weight * f;
        self.total += weight * f;
    }

    pub fn subtract(&mut self, v: f64, weight: f64, t: f64) {
        let f = self.factor(t);
        let b = self.bucket(v);
        let w = (weight * f).min(self.weights[b]);
        self.weights[b] -= w;
        self.total = (self.total - w).max(0.0);
    }

    pub fn is_empty(&self) -> bool {
        self.total <= 0.0
    }

    /// The end of the bucket holding the given percentile (VPA's convention: round up).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let threshold = p.clamp(0.0, 1.0) * self.total;
        let mut sum = 0.0;
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (i, &w) in self.weights.iter().enumerate() {
            sum += w;
            if sum >= threshold || i == last {
                return self.start(i + 1);
            }
        }
        self.start(self.weights.len())
    }

    /// The end of the highest non-empty bucket.
    pub fn max(&self) -> f64 {
        match self.weights.iter().rposition(|&w| w > 0.0) {
            Some(i) => self.start(i + 1),
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_round_up_to_bucket_ends() {
        let mut h = DecayingHistogram::vpa_memory(86400.0);
        for i in 1..=100 {
            h.add(i as f64 * 1e8, 1.0, 0.0);
        }
        let p50 = h.percentile(0.5);
        assert!((50e8..50e8 * 1.06).contains(&p50), "{p50}");
        let p90 = h.percentile(0.9);
        assert!((90e8..90e8 * 1.06).contains(&p90), "{p90}");
        assert!(h.max() >= 100e8 && h.max() < 100e8 * 1.06);
    }

    #[test]
    fn old_samples_fade_with_the_half_life() {
        let mut h = DecayingHistogram::vpa_memory(3600.0);
        // Ten hours ago: large; now: small, with equal raw weight.
        h.add(8e9, 1.0, 0.0);
        h.add(1e9, 1.0, 36_000.0);
        // The old sample weighs 2^-10 of the new one: p50 is the new value.
        assert!(h.percentile(0.5) < 1.1e9);
        assert!(h.percentile(0.9999) > 8e9);
        // Far in the future the reference moves without losing the ordering.
        h.add(2e9, 1.0, 3600.0 * 500.0);
        assert!(h.percentile(0.5) > 1.9e9 && h.percentile(0.5) < 2.2e9);
    }

    #[test]
    fn subtracting_a_sample_takes_it_back() {
        let mut h = DecayingHistogram::vpa_memory(86400.0);
        h.add(1e9, 1.0, 100.0);
        h.add(4e9, 1.0, 200.0);
        assert!(h.max() > 4e9);
        h.subtract(4e9, 1.0, 200.0);
        assert!(h.max() < 1.1e9, "{}", h.max());
        assert!(!h.is_empty());
    }
}
