//! Wall-clock time as the daemon reads it, behind a seam: the daemon's loops ask a [`Clock`]
//! for "now", so the host loop can run in process against a modelled host with time that a
//! test moves by hand ([`ManualClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as guests' `last-update` counts them.
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where the daemon reads the time of day from.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        epoch_now()
    }
}

/// A clock that moves only when told to: for in-process tests of the host loop.
#[derive(Debug, Default)]
pub struct ManualClock {
    bits: AtomicU64,
}

impl ManualClock {
    pub fn new(start: f64) -> ManualClock {
        ManualClock {
            bits: AtomicU64::new(start.to_bits()),
        }
    }

    pub fn set(&self, t: f64) {
        self.bits.store(t.to_bits(), Ordering::SeqCst);
    }

    pub fn advance(&self, seconds: f64) {
        self.set(self.now() + seconds);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000.0);
        assert_eq!(c.now(), 1000.0);
        c.advance(2.5);
        assert_eq!(c.now(), 1002.5);
        c.set(7.0);
        assert_eq!(c.now(), 7.0);
        assert!(SystemClock.now() > 1.6e9);
    }
}
