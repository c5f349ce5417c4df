//! The controller's own tests: hostile reports, still-short, DIMMs being released, sample
//! retention.

use crate::planner::HoldReason;

use super::*;
use crate::hypervisor::{GuestStats, RunState};
use crate::planner::{Kind, Reason};

mod rss_tests {
    use super::*;
    use crate::hypervisor::GuestMem;

    fn stats(t: u64, avail_mib: u64, rss_mib: Option<u64>) -> GuestStats {
        GuestStats {
            name: "liar".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(2048)),
            maximum: Some(Bytes::from_mib(4096)),
            guest: GuestMem {
                total: Some(Bytes::from_mib(2000)),
                usable: Some(Bytes::from_mib(avail_mib)),
                ..Default::default()
            },
            last_update: t,
            rss: rss_mib.map(Bytes::from_mib),
        }
    }

    #[test]
    fn a_guest_claiming_more_than_it_holds_on_the_host_is_not_believed() {
        let mut g = Guest::new("liar", "u", 0.0);
        // Honest: uses 1500 MiB, and QEMU holds 1600 MiB.
        g.observe(stats(10, 500, Some(1600)), 10.0);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(500))
        );
        assert!(!g.rss_capped);
        assert_eq!(g.hostile, 0);
        // Claims 1990 MiB used (10 MiB free) but holds only 700 MiB on the host: believed to
        // use 700 MiB plus slack (200 MiB: a tenth of its 2000), so 1100 MiB available.
        g.observe(stats(11, 10, Some(700)), 11.0);
        assert!(g.rss_capped);
        assert_eq!(g.hostile, 1);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(1100))
        );
        // Within the slack, a claim stands.
        g.observe(stats(12, 1150, Some(700)), 12.0);
        assert!(!g.rss_capped);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(1150))
        );
        // No RSS reported (old libvirt): the guest's word is all there is.
        g.observe(stats(13, 10, None), 13.0);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(10))
        );
    }

    /// A guest that arrives by live migration holds its zero pages unbacked: its use far
    /// above its new process's RSS at first sight is believed; use that grows with RSS is
    /// believed; use that grows without it is not.
    #[test]
    fn the_unbacked_use_seen_at_arrival_is_not_a_lie() {
        let mut g = Guest::new("moved", "u", 0.0);
        // Uses 1500 MiB; the new process holds 300 MiB of it.
        g.observe(stats(10, 500, Some(300)), 10.0);
        assert!(!g.rss_capped);
        assert_eq!(g.hostile, 0);
        assert_eq!(g.unbacked, Some(Bytes::from_mib(1200)));
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(500))
        );
        // It writes 300 MiB more, which the host backs: believed.
        g.observe(stats(11, 200, Some(600)), 11.0);
        assert!(!g.rss_capped);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(200))
        );
        // Then claims 190 MiB more without the host holding any more of it: within the slack
        // (200 MiB) it stands, beyond it the host is believed.
        g.observe(stats(12, 10, Some(600)), 12.0);
        assert!(!g.rss_capped);
        let mut g2 = Guest::new("moved", "u", 0.0);
        g2.observe(stats(10, 500, Some(300)), 10.0);
        // Claims 490 MiB more, the host holds 100 MiB more: 1500 + 490 = 1990 used claimed,
        // 400 + 200 (slack) + 1200 (unbacked at arrival) = 1800 believed.
        g2.observe(stats(11, 10, Some(400)), 11.0);
        assert!(g2.rss_capped);
        assert_eq!(g2.hostile, 1);
        assert_eq!(
            g2.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(200))
        );
    }

    /// The unbacked part only shrinks: a guest that first gives its unbacked memory back and
    /// then claims it again without the host backing it is not believed.
    #[test]
    fn the_unbacked_part_only_shrinks() {
        let mut g = Guest::new("moved", "u", 0.0);
        g.observe(stats(10, 500, Some(300)), 10.0);
        // Frees 1000 MiB: 500 used, RSS unchanged. Nothing unbacked left.
        g.observe(stats(11, 1500, Some(300)), 11.0);
        assert_eq!(g.unbacked, Some(Bytes::from_mib(200)));
        assert!(!g.rss_capped);
        // Claims the 1000 MiB again, untouched on the host.
        g.observe(stats(12, 500, Some(300)), 12.0);
        assert!(g.rss_capped);
    }

    /// A record without the guest's statistics after the guest reported (libvirt leaves them
    /// out while a job holds the domain) keeps the last report: the guest is not taken for one
    /// without a balloon driver, and its report ages.
    #[test]
    fn a_record_without_guest_statistics_keeps_the_last_report() {
        let mut g = Guest::new("moved", "u", 0.0);
        assert!(g.observe(stats(10, 500, Some(1600)), 10.0));
        let mut bare = stats(0, 0, None);
        bare.guest = GuestMem::default();
        assert!(!g.observe(bare, 11.0));
        let st = g.stats.as_ref().expect("stats");
        assert_eq!(st.last_update, 10);
        assert_eq!(st.guest.usable, Some(Bytes::from_mib(500)));
        assert_eq!(g.stats_age(13.0), Some(3.0));
        // The next report is fresh again.
        assert!(g.observe(stats(12, 400, Some(1600)), 12.0));
    }
}

mod hostile_tests {
    use super::*;
    use crate::hypervisor::GuestMem;
    use proptest::prelude::*;

    fn envelope() -> (crate::domain::DomainSpec, Envelope) {
        let spec = crate::domain::DomainSpec {
            name: "h".into(),
            memory: Bytes::from_mib(512 + 1536),
            current_memory: Bytes::from_mib(512),
            balloon_device: true,
            virtio_mem: vec![crate::domain::VirtioMem {
                alias: Some("vm0".into()),
                node: Some(0),
                size: Bytes::from_mib(1536),
                block: Bytes::from_mib(2),
                ..Default::default()
            }],
            ..Default::default()
        };
        let env =
            Envelope::from_spec(&spec, &crate::envelope::FlavorCatalog::new()).expect("envelope");
        (spec, env)
    }

    /// A guest with that envelope and its definition, as the daemon holds it.
    fn managed() -> (Guest, Envelope) {
        let (spec, env) = envelope();
        let mut g = Guest::new("h", "u", 0.0);
        g.envelope = Ok(env.clone());
        g.spec = Some(spec);
        (g, env)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever a guest reports (free above total, totals beyond its size, counters going
        /// backwards, absurd values, timestamps from the future or the past, no free memory
        /// ever), every decision stays inside its envelope and is never a grow beyond the
        /// ceiling; nonsense is counted.
        #[test]
        fn hostile_reports_never_leave_the_envelope(
            reports in proptest::collection::vec(
                (0u64..u64::MAX / 2, 0u64..u64::MAX / 2, any::<Option<u64>>(), 0u64..40, any::<Option<u64>>(), any::<bool>()),
                1..60,
            )
        ) {
            let (mut g, env) = managed();
            let policy = crate::policy::Policy::builtin();
            let cfg = Timing::default();
            let mut size = Bytes::from_mib(1024);
            let mut t = 1_000u64;
            for (total, avail, swap, dt, rss, absurd) in reports {
                t += dt;
                let (total, avail) = if absurd {
                    (Bytes(total), Bytes(avail))
                } else {
                    (Bytes(total % (size.0 + 1)), Bytes(avail % (size.0 + 1)))
                };
                g.observe(GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(size),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(total),
                        usable: Some(avail),
                        swap_in: swap.map(Bytes),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: rss.map(Bytes),
                }, t as f64);
                let d = g.decide(t as f64, &policy, &cfg);
                prop_assert!(d.target <= env.ceiling, "{d:?} beyond {}", env.ceiling);
                prop_assert!(d.target >= env.floor || d.kind == crate::planner::Kind::Hold, "{d:?} below {}", env.floor);
                if d.kind != crate::planner::Kind::Hold {
                    // As if it landed at once.
                    size = d.target;
                    g.pending = None;
                    g.settled_at = t as f64;
                }
            }
        }
    }

    /// A DIMM asked to go holds the guest (resizing) until the live definition no longer
    /// lists it, even after another DIMM of the same step was refused; not past the
    /// convergence timeout.
    #[test]
    fn a_dimm_still_being_released_holds_the_guest() {
        let (mut g, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Timing::default();
        for t in [10u64, 11] {
            g.observe(
                GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(Bytes::from_mib(512)),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(Bytes::from_mib(500)),
                        usable: Some(Bytes::from_mib(300)),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: None,
                },
                t as f64,
            );
        }
        g.unplugging.insert("ua-memscale-dimm-0-1".into(), 11.0);
        let d = g.decide(12.0, &policy, &cfg);
        assert_eq!(d.reason, Reason::Hold(HoldReason::ResizeInProgress));
        assert_eq!(g.health, Health::Resizing);
        // The live definition without that DIMM: it is gone, the guest is planned again.
        let mut live = g.spec.clone().expect("spec");
        live.dimms.clear();
        g.set_definition(live, None, &crate::envelope::FlavorCatalog::new());
        assert!(g.unplugging.is_empty());
        assert_ne!(
            g.decide(12.0, &policy, &cfg).reason,
            Reason::Hold(HoldReason::ResizeInProgress)
        );
        // One the guest never answers for is waited for no longer than the timeout.
        g.unplugging.insert("ua-memscale-dimm-0-2".into(), 11.0);
        let late = 12.0 + cfg.converge_timeout;
        assert_ne!(
            g.decide(late, &policy, &cfg).reason,
            Reason::Hold(HoldReason::ResizeInProgress)
        );
        assert!(g.unplugging.is_empty());
    }

    /// A growth still landing while the guest runs shorter than when it was asked for is
    /// followed by another at once; not when the guest is holding its own, not for a pinned
    /// guest, and never beyond the ceiling.
    #[test]
    fn a_guest_running_short_while_memory_lands_is_grown_again() {
        let (_, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Timing::default();
        let report = |t: u64, size: u64, total: u64, avail: u64| GuestStats {
            name: "h".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(size)),
            maximum: Some(env.ceiling),
            guest: GuestMem {
                total: Some(Bytes::from_mib(total)),
                usable: Some(Bytes::from_mib(avail)),
                ..Default::default()
            },
            last_update: t,
            rss: None,
        };
        let fresh = |pinned: bool| {
            let (mut g, _) = managed();
            g.pinned = pinned;
            // Asked 600 -> 900 MiB at t=100, when 150 MiB was available.
            g.pending = Some(Pending {
                kind: Kind::Grow,
                before: Bytes::from_mib(600),
                target: Bytes::from_mib(900),
                since: 100.0,
                method: "virtio-mem".into(),
                available: Some(Bytes::from_mib(150)),
            });
            g.history.last_grow = Some(100.0);
            g
        };
        // 700 of 900 landed, and only 40 MiB available now: grow again, by the last step.
        let mut g = fresh(false);
        g.observe(report(102, 700, 660, 40), 102.0);
        let d = g.decide(102.0, &policy, &cfg);
        assert_eq!(d.kind, Kind::Grow, "{d:?}");
        assert_eq!(d.reason.label(), "still_short");
        assert!(
            d.target >= Bytes::from_mib(1200) && d.target <= env.ceiling,
            "{d:?}"
        );
        assert!(env.is_realizable(d.target));
        // Holding its own (more available than when asked): wait for the landing.
        let mut g = fresh(false);
        g.observe(report(102, 700, 660, 200), 102.0);
        assert_eq!(
            g.decide(102.0, &policy, &cfg).reason,
            Reason::Hold(HoldReason::ResizeInProgress)
        );
        // No report since the ask: nothing new to go on.
        let mut g = fresh(false);
        g.observe(report(99, 700, 660, 40), 102.0);
        assert_eq!(
            g.decide(102.0, &policy, &cfg).reason,
            Reason::Hold(HoldReason::ResizeInProgress)
        );
        // Pinned (an operator's size): never.
        let mut g = fresh(true);
        g.observe(report(102, 700, 660, 40), 102.0);
        assert_eq!(g.decide(102.0, &policy, &cfg).kind, Kind::Hold);
        // Near the ceiling: capped there.
        let mut g = fresh(false);
        if let Some(p) = g.pending.as_mut() {
            p.before = Bytes::from_mib(1200);
            p.target = env.ceiling.saturating_sub(Bytes::from_mib(100));
        }
        g.observe(report(102, 1900, 1860, 30), 102.0);
        let d = g.decide(102.0, &policy, &cfg);
        assert_eq!((d.kind, d.target), (Kind::Grow, env.ceiling), "{d:?}");
    }

    /// A guest reporting every second for ten minutes keeps about its policy's window of
    /// samples, not an hour of them: ticks and state saves stay the same size.
    #[test]
    fn samples_are_kept_for_the_window_only() {
        let (mut g, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Timing::default();
        let keep = sample_retention(&policy);
        for t in 1_000u64..1_600 {
            g.observe(
                GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(Bytes::from_mib(1024)),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(Bytes::from_mib(980)),
                        usable: Some(Bytes::from_mib(400 + (t % 7))),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: None,
                },
                t as f64,
            );
            let _ = g.decide(t as f64, &policy, &cfg);
            g.pending = None;
        }
        assert!(
            g.samples.len() as f64 <= keep + 2.0,
            "{} samples",
            g.samples.len()
        );
        assert!(
            g.samples.len() as f64 >= policy.knobs.window.as_secs_f64(),
            "{}",
            g.samples.len()
        );
    }

    #[test]
    fn nonsense_is_counted() {
        let (spec, env) = envelope();
        let mut g = Guest::new("h", "u", 0.0);
        g.envelope = Ok(env);
        g.spec = Some(spec);
        let st = |t: u64, total: u64, avail: u64, swap: u64| GuestStats {
            name: "h".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(1024)),
            maximum: None,
            guest: GuestMem {
                total: Some(Bytes::from_mib(total)),
                usable: Some(Bytes::from_mib(avail)),
                swap_in: Some(Bytes::from_mib(swap)),
                ..Default::default()
            },
            last_update: t,
            rss: None,
        };
        g.observe(st(10, 1000, 500, 10), 10.0);
        assert_eq!(g.hostile, 0);
        g.observe(st(11, 1000, 1500, 10), 11.0); // free above total
        assert_eq!(g.hostile, 1);
        g.observe(st(12, 9000, 500, 10), 12.0); // total beyond its size
        assert_eq!(g.hostile, 2);
        g.observe(st(13, 1000, 500, 5), 13.0); // a counter going backwards
        assert_eq!(g.hostile, 3);
    }
}

/// The size a guest claims (`balloon.current`, from its own balloon driver) against what the
/// host knows: its definition's maximum, what memscale asked, what its process holds.
mod size_tests {
    use super::*;
    use crate::hypervisor::GuestMem;

    /// A balloon-only guest: 2 GiB `<memory>`, floor 1 GiB.
    fn guest() -> Guest {
        let spec = crate::domain::DomainSpec {
            name: "g".into(),
            memory: Bytes::from_mib(2048),
            current_memory: Bytes::from_mib(1024),
            balloon_device: true,
            ..Default::default()
        };
        let env =
            Envelope::from_spec(&spec, &crate::envelope::FlavorCatalog::new()).expect("envelope");
        let mut g = Guest::new("g", "u", 0.0);
        g.envelope = Ok(env);
        g.spec = Some(spec);
        g
    }

    fn stats(t: u64, current: u64, rss_mib: u64) -> GuestStats {
        GuestStats {
            name: "g".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes(current)),
            maximum: Some(Bytes::from_mib(2048)),
            guest: GuestMem {
                total: Some(Bytes::from_mib(1000)),
                usable: Some(Bytes::from_mib(500)),
                ..Default::default()
            },
            last_update: t,
            rss: Some(Bytes::from_mib(rss_mib)),
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn an_honest_claim_is_believed() {
        let mut g = guest();
        g.observe(stats(1, 1536 * MIB, 700), 1.0);
        let r = g.size_reading();
        assert_eq!(r.believed, Bytes::from_mib(1536));
        assert_eq!(r.dispute, None);
        assert_eq!(g.hostile, 0);
    }

    #[test]
    fn a_claim_above_the_maximum_is_not_believed_and_cannot_overflow() {
        let mut g = guest();
        // QEMU computes RAM minus the guest's `actual`: a huge `actual` wraps.
        g.observe(stats(1, u64::MAX - 4095, 700), 1.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, Some(SizeDispute::AboveMaximum));
        assert_eq!(r.plausible, None);
        assert!(r.believed <= Bytes::from_mib(2048), "{}", r.believed);
        assert!(r.believed >= Bytes::from_mib(1024), "{}", r.believed);
        assert_eq!(g.size_dispute, Some(SizeDispute::AboveMaximum));
        assert_eq!(g.hostile, 1);
        // Reported once, not every record.
        g.observe(stats(2, u64::MAX - 4095, 700), 2.0);
        assert_eq!(g.hostile, 1);
        // The sample is booked at the believed size, not the claim.
        assert_eq!(g.samples.back().map(|s| s.size), Some(r.believed));
    }

    #[test]
    fn a_claim_below_the_floor_is_booked_at_the_floor() {
        let mut g = guest();
        g.observe(stats(1, 64 * MIB, 300), 1.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, Some(SizeDispute::BelowAsked));
        assert_eq!(r.believed, Bytes::from_mib(1024));
        // Honest again: believed, and reported as such.
        g.observe(stats(2, 1100 * MIB, 300), 2.0);
        assert_eq!(g.size_reading().dispute, None);
        assert_eq!(g.size_dispute, None);
    }

    /// Asked to grow to 1800 MiB: while it lands the claim lags and is no lie; the host books
    /// what was asked; landing is judged on the claim. Once landed, a claim of less is a lie.
    #[test]
    fn a_claim_below_what_was_asked_is_a_lie_only_once_it_landed() {
        let mut g = guest();
        let policy = crate::policy::Policy::builtin();
        let cfg = Timing::default();
        g.observe(stats(1, 1024 * MIB, 300), 1.0);
        let grow = Decision {
            kind: Kind::Grow,
            target: Bytes::from_mib(1800),
            reason: Reason::Plan(crate::planner::PlannerReason::BelowFloor),
            need: Bytes(0),
            predicted: Bytes(0),
            headroom: Bytes(0),
        };
        g.on_resize_applied(&grow, Bytes::from_mib(1024), "balloon", &[], 2.0);
        g.observe(stats(3, 1200 * MIB, 300), 3.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, None, "a growth landing");
        assert_eq!(r.believed, Bytes::from_mib(1800));
        g.decide(3.0, &policy, &cfg);
        assert!(g.pending.is_some(), "not landed: the claim is 1200 MiB");
        g.observe(stats(4, 1800 * MIB, 300), 4.0);
        g.decide(4.0, &policy, &cfg);
        assert!(g.pending.is_none(), "landed");
        g.observe(stats(5, 1100 * MIB, 300), 5.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, Some(SizeDispute::BelowAsked));
        assert_eq!(r.believed, Bytes::from_mib(1800));
    }

    #[test]
    fn a_process_holding_more_than_the_claim_is_booked_at_what_it_holds() {
        let mut g = guest();
        // Claims 1100 MiB; its process holds 1900 MiB (the overhead allowed is 256 MiB).
        g.observe(stats(1, 1100 * MIB, 1900), 1.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, Some(SizeDispute::HoldsMore));
        assert_eq!(r.believed, Bytes::from_mib(1900 - 256));
        // Never more than its maximum, whatever RSS says.
        g.observe(stats(2, 1100 * MIB, 9000), 2.0);
        assert_eq!(g.size_reading().believed, Bytes::from_mib(2048));
        // Within QEMU's overhead: no dispute.
        g.observe(stats(3, 1100 * MIB, 1300), 3.0);
        assert_eq!(g.size_reading().dispute, None);
        assert_eq!(g.size_reading().believed, Bytes::from_mib(1100));
    }

    #[test]
    fn huge_page_backing_keeps_pages_honestly() {
        let mut g = guest();
        if let Some(s) = g.spec.as_mut() {
            s.hugepage_size = Some(Bytes::from_mib(2));
        }
        g.observe(stats(1, 1100 * MIB, 1900), 1.0);
        let r = g.size_reading();
        assert_eq!(r.dispute, None);
        assert_eq!(r.believed, Bytes::from_mib(1900 - 256), "still booked");
    }
}

mod asked_tests {
    use super::*;
    use crate::hypervisor::GuestMem;

    /// A shrink the guest's claim never shows landing (a liar, or a guest that ignores its
    /// balloon): it may still hold what it had, and is booked at that.
    #[test]
    fn a_shrink_counts_only_once_it_landed() {
        let spec = crate::domain::DomainSpec {
            name: "g".into(),
            memory: Bytes::from_mib(2048),
            current_memory: Bytes::from_mib(512),
            balloon_device: true,
            ..Default::default()
        };
        let env =
            Envelope::from_spec(&spec, &crate::envelope::FlavorCatalog::new()).expect("envelope");
        let mut g = Guest::new("g", "u", 0.0);
        g.envelope = Ok(env);
        g.spec = Some(spec);
        let st = |t: u64, mib: u64| GuestStats {
            name: "g".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(mib)),
            maximum: Some(Bytes::from_mib(2048)),
            guest: GuestMem::default(),
            last_update: t,
            rss: None,
        };
        g.observe(st(1, 1500), 1.0);
        let shrink = Decision {
            kind: Kind::Shrink,
            target: Bytes::from_mib(1000),
            reason: Reason::Plan(crate::planner::PlannerReason::AboveCeiling),
            need: Bytes(0),
            predicted: Bytes(0),
            headroom: Bytes(0),
        };
        g.on_resize_applied(&shrink, Bytes::from_mib(1500), "balloon", &[], 2.0);
        // It claims 64 MiB: not a landing of 1000 MiB; it may still hold 1500 MiB.
        g.observe(st(3, 64), 3.0);
        assert_eq!(g.size_reading().believed, Bytes::from_mib(1500));
        let policy = crate::policy::Policy::builtin();
        let cfg = Timing::default();
        g.decide(3.0, &policy, &cfg);
        g.decide(3.0 + cfg.converge_timeout + 1.0, &policy, &cfg);
        assert!(g.pending.is_none(), "unconverged");
        assert_eq!(g.size_reading().believed, Bytes::from_mib(1500));
        // An honest landing next time counts.
        g.on_resize_applied(&shrink, Bytes::from_mib(1500), "balloon", &[], 100.0);
        g.observe(st(101, 1000), 101.0);
        g.decide(101.0, &policy, &cfg);
        assert!(g.pending.is_none(), "landed");
        g.observe(st(102, 1000), 102.0);
        assert_eq!(g.size_reading().believed, Bytes::from_mib(1000));
    }
}
