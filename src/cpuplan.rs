//! The optional vCPU policy (`[policy.cpu]`, off by default): from the per-vCPU run time
//! libvirt reports, add a step of vCPUs while the guest keeps them busy over a whole window,
//! remove one while it leaves them idle, with a cooldown between changes. A host whose run
//! queue makes the vCPUs wait (libvirt's per-vCPU `delay`) is short of CPU itself: adding
//! vCPUs there would only make them wait longer, so it holds. Pure: the daemon feeds it.

use crate::planner::EventReason;

use crate::envelope::Vcpus;
use crate::planner::Reason;
use crate::policy::CpuKnobs;
use std::collections::VecDeque;

/// The guest's vCPUs at one tick: the sums over its online vCPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    pub at: f64,
    /// Run time, nanoseconds (cumulative).
    pub time_ns: u64,
    /// Time spent waiting on the host's run queue, nanoseconds (cumulative).
    pub delay_ns: u64,
    pub online: u32,
}

/// Busy and delay shares of the vCPUs between two samples (0..1 each, per vCPU).
pub fn shares(a: &CpuSample, b: &CpuSample) -> Option<(f64, f64)> {
    let dt = b.at - a.at;
    if dt <= 0.0 || b.online == 0 || a.online != b.online {
        return None;
    }
    let span = dt * 1e9 * b.online as f64;
    let busy = b.time_ns.saturating_sub(a.time_ns) as f64 / span;
    let delay = b.delay_ns.saturating_sub(a.delay_ns) as f64 / span;
    Some((busy.clamp(0.0, 1.0), delay.clamp(0.0, 1.0)))
}

/// The count to move to, and why; None to hold.
pub fn decide(
    k: &CpuKnobs,
    env: &Vcpus,
    samples: &VecDeque<CpuSample>,
    now: f64,
    last_change: f64,
) -> Option<(u32, Reason)> {
    if !k.enabled || env.pinned || !env.acpi || now - last_change < k.cooldown.as_secs_f64() {
        return None;
    }
    let b = samples.back()?;
    let window = k.window.as_secs_f64();
    // The newest sample at least a window older than the last: the average spans the window.
    let a = samples.iter().rev().find(|s| b.at - s.at >= window)?;
    let (busy, delay) = shares(a, b)?;
    let n = b.online;
    let step = env.step.max(1);
    let ceiling = k.max.map_or(env.ceiling, |m| m.min(env.ceiling));
    let floor = k.min.map_or(env.floor, |m| m.max(env.floor));
    if busy > k.grow_at.0 && n + step <= ceiling {
        if delay > k.max_delay.0 {
            return None;
        }
        return Some((
            n + step,
            Reason::Event(EventReason::CpuBusy {
                busy_pct: (busy * 100.0).round(),
                vcpus: n,
            }),
        ));
    }
    if busy < k.shrink_at.0 && n >= floor + step {
        // After the removal the same work spreads over fewer vCPUs: it must stay below the
        // growth threshold, or the next window would add them back.
        let after = busy * n as f64 / (n - step) as f64;
        if after < k.grow_at.0 {
            return Some((
                n - step,
                Reason::Event(EventReason::CpuIdle {
                    busy_pct: (busy * 100.0).round(),
                    vcpus: n,
                }),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Dur, Percent};

    fn env(floor: u32, ceiling: u32, step: u32) -> Vcpus {
        Vcpus {
            current: floor,
            floor,
            ceiling,
            step,
            threads: 1,
            numa_nodes: step,
            pinned: false,
            acpi: true,
        }
    }

    /// `secs` one-second samples at `busy` of `online` vCPUs, with `delay`.
    fn run(online: u32, busy: f64, delay: f64, secs: u32) -> VecDeque<CpuSample> {
        (0..=secs)
            .map(|i| CpuSample {
                at: i as f64,
                time_ns: (i as f64 * busy * 1e9 * online as f64) as u64,
                delay_ns: (i as f64 * delay * 1e9 * online as f64) as u64,
                online,
            })
            .collect()
    }

    fn knobs() -> CpuKnobs {
        CpuKnobs {
            enabled: true,
            window: Dur::secs(10),
            cooldown: Dur::secs(30),
            ..Default::default()
        }
    }

    #[test]
    fn busy_grows_idle_shrinks_with_hysteresis() {
        let k = knobs();
        let e = env(1, 4, 1);
        let (to, why) = decide(&k, &e, &run(2, 0.95, 0.0, 12), 12.0, -100.0).unwrap();
        assert_eq!(to, 3);
        assert!(matches!(
            why,
            Reason::Event(EventReason::CpuBusy { vcpus: 2, .. })
        ));
        let (to, _) = decide(&k, &e, &run(3, 0.05, 0.0, 12), 12.0, -100.0).unwrap();
        assert_eq!(to, 2);
        // 15% of 2 is 30% of 1: below the growth line, so it may go.
        assert_eq!(
            decide(&k, &e, &run(2, 0.15, 0.0, 12), 12.0, -100.0)
                .unwrap()
                .0,
            1
        );
        // At the floor, in the band, or within the cooldown: hold.
        assert!(decide(&k, &e, &run(1, 0.05, 0.0, 12), 12.0, -100.0).is_none());
        assert!(decide(&k, &e, &run(2, 0.50, 0.0, 12), 12.0, -100.0).is_none());
        assert!(decide(&k, &e, &run(2, 0.95, 0.0, 12), 12.0, 0.0).is_none());
        // Not a full window yet.
        assert!(decide(&k, &e, &run(2, 0.95, 0.0, 5), 5.0, -100.0).is_none());
        // Busy, but the host's run queue is the bottleneck: hold.
        assert!(decide(&k, &e, &run(2, 0.95, 0.5, 12), 12.0, -100.0).is_none());
        // Off by default.
        let off = CpuKnobs::default();
        assert!(decide(&off, &e, &run(2, 0.95, 0.0, 100), 100.0, -1000.0).is_none());
    }

    #[test]
    fn steps_keep_numa_balance_and_respect_policy_limits() {
        let k = CpuKnobs {
            max: Some(4),
            grow_at: Percent(0.8),
            ..knobs()
        };
        let e = env(2, 8, 2);
        assert_eq!(
            decide(&k, &e, &run(2, 0.9, 0.0, 12), 12.0, -100.0)
                .unwrap()
                .0,
            4
        );
        assert!(
            decide(&k, &e, &run(4, 0.9, 0.0, 12), 12.0, -100.0).is_none(),
            "policy max"
        );
        // 30% of 4 would be 60% of 2: allowed; 50% of 4 would be 100% of 2: held.
        let k = CpuKnobs {
            shrink_at: Percent(0.55),
            ..knobs()
        };
        assert_eq!(
            decide(&k, &e, &run(4, 0.30, 0.0, 12), 12.0, -100.0)
                .unwrap()
                .0,
            2
        );
        assert!(decide(&k, &e, &run(4, 0.50, 0.0, 12), 12.0, -100.0).is_none());
    }
}
