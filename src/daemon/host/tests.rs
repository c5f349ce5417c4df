//! The host loop in process: the daemon's own stages (collect, plan, act, rebalance, publish)
//! against `model::scenario` hosts on a clock the test moves, so the scenarios the end-to-end
//! suite shows on real guests run here in seconds, without root. They add to the end-to-end
//! tests and never replace them.

use crate::planner::{EventReason, HoldReason};

use super::{Host, tick};
use crate::clock::ManualClock;
use crate::config::{Config, HostConfig};
use crate::control::Health;
use crate::daemon::Shared;
use crate::model::scenario::{Fabric, GuestSpec, ScenarioHost};
use crate::planner::Reason;
use crate::policy::PolicySet;
use crate::units::{Bytes, Rate};
use std::sync::Arc;

const START: f64 = 1_800_000_000.0;

/// Hosts on one fabric, their loops, and one daemon's shared state, on a manual clock.
struct Bed {
    clock: Arc<ManualClock>,
    shared: Arc<Shared>,
    loops: Vec<Host>,
    hosts: Vec<Arc<ScenarioHost>>,
}

/// The shipped default policy, as the daemon runs it from `policies/`.
fn default_policies() -> PolicySet {
    let (ps, diags) = crate::policy::parse_policy_text(
        "policies/default.toml",
        include_str!("../../../policies/default.toml"),
    );
    assert!(diags.is_empty(), "{diags:?}");
    PolicySet::new(ps, Vec::new(), 1)
}

impl Bed {
    /// One host per `(name, capacity, reserve)`, each with `memory` of its own.
    fn new(hosts: &[(&str, Bytes, Bytes)], migration: bool) -> Bed {
        Bed::with_config(hosts, migration, |_| {})
    }

    /// As [`Bed::new`], with `edit` applied to the daemon's config.
    fn with_config(
        hosts: &[(&str, Bytes, Bytes)],
        migration: bool,
        edit: impl FnOnce(&mut Config),
    ) -> Bed {
        let clock = Arc::new(ManualClock::new(START));
        let fabric = Fabric::new();
        let mut config = Config::default();
        edit(&mut config);
        config.migration.enabled = migration;
        config.migration.min_interval = crate::units::Dur::secs(5);
        let mut scenario = Vec::new();
        for (name, capacity, reserve) in hosts {
            let uri = format!("scenario://{name}");
            scenario.push(fabric.host(&uri, clock.clone(), *capacity));
            let mut h = HostConfig::from_uri(&uri);
            h.name = Some(name.to_string());
            h.capacity = Some(*capacity);
            h.reserve = *reserve;
            config.hosts.push(h);
        }
        let mut shared = Shared::new(config, default_policies(), &[]).expect("shared");
        shared.clock = clock.clone();
        let loops = shared
            .config
            .hosts
            .iter()
            .zip(&scenario)
            .map(|(cfg, hv)| {
                let hv: Arc<dyn crate::hypervisor::Hypervisor> = hv.clone();
                Host::new(cfg.clone(), hv)
            })
            .collect();
        Bed {
            clock,
            shared: Arc::new(shared),
            loops,
            hosts: scenario,
        }
    }

    /// `seconds` ticks of every host, one a second, as the daemon's loops run them.
    async fn run(&mut self, seconds: u32) {
        for _ in 0..seconds {
            self.clock.advance(1.0);
            for h in &mut self.loops {
                tick(h, &self.shared).await;
            }
        }
    }

    /// Run until `done` holds (checked after each second), at most `limit` seconds; returns
    /// the seconds it took.
    async fn run_until(&mut self, limit: u32, mut done: impl FnMut(&Bed) -> bool) -> Option<u32> {
        for s in 1..=limit {
            self.run(1).await;
            if done(self) {
                return Some(s);
            }
        }
        None
    }

    fn reasons(&self, guest: &str) -> Vec<(Reason, String)> {
        self.shared
            .audit
            .recent(Some(guest), 10_000)
            .into_iter()
            .map(|r| (r.reason, r.result))
            .collect()
    }

    fn state(&self, host: usize, guest: &str) -> Option<Health> {
        let hosts = self.shared.hosts.read().unwrap_or_else(|p| p.into_inner());
        let label = self.loops[host].label.clone();
        hosts
            .get(&label)?
            .guests
            .iter()
            .find(|g| g.name == guest)
            .map(|g| g.state)
    }
}

fn mib(m: u64) -> Bytes {
    Bytes::from_mib(m)
}

/// A growth still landing (virtio-mem onlining at 48 MiB/s, as slow test-bed guests do) while
/// the guest's use climbs faster (100 MiB/s):
/// the guest is grown again before the first growth has landed (`still-short`), and its
/// demand is met in the end.
#[tokio::test]
async fn a_guest_still_short_while_its_growth_lands_is_grown_again() {
    let mut bed = Bed::new(&[("a", Bytes::from_gib(16), mib(512))], false);
    let h = bed.hosts[0].clone();
    h.add_guest(GuestSpec::virtio_mem("g", mib(512), mib(2048)).demand(mib(200)));
    h.set_online_rate("g", Rate(mib(48)));
    bed.run(20).await;
    let before = h.resizes("g");
    // Climb 100 MiB a second to 1.4 GiB.
    let mut demand = 200;
    while demand < 1400 {
        demand += 100;
        h.set_demand("g", mib(demand));
        bed.run(1).await;
    }
    let met = bed
        .run_until(120, |b| {
            let total = b.hosts[0].current("g");
            total.saturating_sub(crate::model::scenario::KERNEL_RESERVE) > mib(1400)
        })
        .await;
    let reasons = bed.reasons("g");
    let still_short = reasons
        .iter()
        .filter(|(r, res)| {
            matches!(r, Reason::Hold(HoldReason::StillShort { .. })) && res == "applied"
        })
        .count();
    assert!(
        still_short >= 1,
        "no still-short growth while memory landed: {reasons:?}"
    );
    assert!(h.resizes("g") > before + 1, "{}", h.resizes("g"));
    assert!(met.is_some(), "demand never met: {reasons:?}");
}

/// A DIMM the guest refuses to release: the refusal is audited and that DIMM is not asked
/// for again (the hold lasts an hour), while the guest stays managed.
#[tokio::test]
async fn a_refused_dimm_unplug_is_not_retried() {
    let mut bed = Bed::new(&[("a", Bytes::from_gib(16), mib(512))], false);
    let h = bed.hosts[0].clone();
    h.add_guest(GuestSpec::dimm("d", mib(512), 4, mib(1536)).demand(mib(100)));
    bed.run(10).await;
    h.set_demand("d", mib(700));
    let grown = bed
        .run_until(60, |b| b.hosts[0].counters("d").attaches > 0)
        .await;
    assert!(grown.is_some(), "no DIMM plugged: {:?}", bed.reasons("d"));
    bed.run(10).await;
    h.refuse_unplug("d", true);
    h.set_demand("d", mib(60));
    let asked = bed
        .run_until(300, |b| b.hosts[0].counters("d").detaches > 0)
        .await;
    assert!(asked.is_some(), "no unplug asked: {:?}", bed.reasons("d"));
    bed.run(5).await;
    let refused: Vec<String> = bed
        .reasons("d")
        .into_iter()
        .filter_map(|(r, _)| match r {
            Reason::Event(EventReason::UnplugRefused { alias, .. }) => Some(alias),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty(), "{:?}", bed.reasons("d"));
    // Still idle: no unplug at all for a while (the guest's other DIMMs likely hold kernel
    // memory too), and each refused DIMM is asked to go once, and only once.
    let detaches = h.counters("d").detaches;
    bed.run(crate::control::REFUSAL_BACKOFF as u32 - 10).await;
    assert_eq!(
        h.counters("d").detaches,
        detaches,
        "an unplug soon after a refusal"
    );
    bed.run(120).await;
    let after = h.counters("d").detaches_by_alias;
    for alias in &refused {
        assert_eq!(
            after.get(alias),
            Some(&1),
            "{alias} asked again after its refusal: {after:?}"
        );
    }
    assert_ne!(bed.state(0, "d"), Some(Health::Stale));
}

/// Stats that stop coming (a driver unloaded, a guest hung): the guest is held as stale and
/// nothing is resized on its word, whatever it last said; fresh stats bring it back.
#[tokio::test]
async fn stale_stats_hold_the_guest() {
    let mut bed = Bed::new(&[("a", Bytes::from_gib(16), mib(512))], false);
    let h = bed.hosts[0].clone();
    h.add_guest(GuestSpec::virtio_mem("s", mib(512), mib(1024)).demand(mib(300)));
    bed.run(15).await;
    assert_eq!(bed.state(0, "s"), Some(Health::Ok));
    // Short of memory, and then silent.
    h.set_demand("s", mib(460));
    h.freeze_stats("s", true);
    let before = h.resizes("s");
    let stale = bed
        .run_until(30, |b| b.state(0, "s") == Some(Health::Stale))
        .await;
    assert!(stale.is_some(), "never stale: {:?}", bed.reasons("s"));
    bed.run(30).await;
    assert_eq!(h.resizes("s"), before, "resized on stale stats");
    assert!(
        bed.reasons("s")
            .iter()
            .any(|(r, _)| matches!(r, Reason::Hold(HoldReason::Stale { .. })))
    );
    h.freeze_stats("s", false);
    let grown = bed
        .run_until(20, |b| b.hosts[0].resizes("s") > before)
        .await;
    assert!(grown.is_some(), "not grown once its stats came back");
}

/// A resize that never lands: the guest is held and reported after the convergence timeout,
/// not asked again during the hold, and planned again after it.
#[tokio::test]
async fn a_resize_that_does_not_converge_is_held_and_reported() {
    let mut bed = Bed::new(&[("a", Bytes::from_gib(16), mib(512))], false);
    let timeout = bed.shared.config.converge_timeout.as_secs_f64() as u32;
    let hold = bed.shared.config.unconverged_hold.as_secs_f64() as u32;
    let h = bed.hosts[0].clone();
    h.add_guest(GuestSpec::virtio_mem("n", mib(512), mib(1024)).demand(mib(200)));
    bed.run(15).await;
    h.never_converge("n", true);
    h.set_demand("n", mib(450));
    let asked = bed.run_until(10, |b| b.hosts[0].resizes("n") > 0).await;
    assert!(asked.is_some());
    let first = h.resizes("n");
    let held = bed
        .run_until(timeout + 5, |b| b.state(0, "n") == Some(Health::Held))
        .await;
    assert!(held.is_some(), "never held: {:?}", bed.reasons("n"));
    assert!(
        bed.reasons("n")
            .iter()
            .any(|(r, _)| matches!(r, Reason::Hold(HoldReason::Unconverged { .. })))
    );
    bed.run(hold - 5).await;
    assert_eq!(h.resizes("n"), first, "asked again during the hold");
    assert_eq!(bed.state(0, "n"), Some(Health::Held));
    // Still short once the hold is over: asked again.
    let again = bed.run_until(30, |b| b.hosts[0].resizes("n") > first).await;
    assert!(again.is_some(), "never planned again after the hold");
}

/// Two guests outgrow a small host: it is shared first (each held at its fair share, never
/// the host overfilled), then the smallest guest that covers the deficit moves to the host
/// with room, and its demand is met there.
#[tokio::test]
async fn a_short_host_is_shared_then_a_guest_moves() {
    let mut bed = Bed::new(
        &[
            ("small", Bytes::from_gib(2), mib(256)),
            ("roomy", Bytes::from_gib(8), mib(256)),
        ],
        true,
    );
    let a = bed.hosts[0].clone();
    a.add_guest(GuestSpec::virtio_mem("p", mib(512), mib(1536)).demand(mib(100)));
    a.add_guest(GuestSpec::virtio_mem("q", mib(512), mib(1536)).demand(mib(100)));
    bed.run(15).await;
    for d in [300u64, 500, 700, 850, 950] {
        for g in ["p", "q"] {
            // Wherever it runs now: one of them may have moved already.
            let h = if bed.hosts[1].has_guest(g) { 1 } else { 0 };
            bed.hosts[h].set_demand(g, mib(d));
        }
        bed.run(4).await;
        let committed: Bytes = ["p", "q"]
            .iter()
            .filter(|g| a.has_guest(g))
            .map(|g| a.current(g))
            .sum();
        assert!(
            committed <= Bytes::from_gib(2),
            "host overfilled: {committed}"
        );
    }
    let moved = bed
        .run_until(90, |b| !b.hosts[0].migrations().is_empty())
        .await;
    let shared: Vec<_> = ["p", "q"]
        .iter()
        .flat_map(|g| bed.reasons(g))
        .filter(|(r, _)| matches!(r, Reason::Hold(HoldReason::HostShare { .. })))
        .collect();
    assert!(!shared.is_empty(), "never shared: {:?}", bed.reasons("p"));
    assert!(moved.is_some(), "no move: {:?}", bed.reasons("p"));
    let m = &a.migrations()[0];
    assert_eq!(m.dest_uri, "scenario://roomy");
    let migrated = bed.reasons(&m.name).into_iter().any(|(r, res)| {
        matches!(r, Reason::Event(EventReason::Migrate { .. })) && res == "applied"
    });
    assert!(migrated, "{:?}", bed.reasons(&m.name));
    assert!(bed.hosts[1].has_guest(&m.name));
    // Both demands met: the mover on its new host, the other at home.
    let met = bed
        .run_until(60, |b| {
            ["p", "q"].iter().all(|g| {
                let h = if b.hosts[1].has_guest(g) { 1 } else { 0 };
                b.hosts[h]
                    .current(g)
                    .saturating_sub(crate::model::scenario::KERNEL_RESERVE)
                    > mib(950)
            })
        })
        .await;
    assert!(
        met.is_some(),
        "{:?} / {:?}",
        bed.reasons("p"),
        bed.reasons("q")
    );
}

/// Under dry run a short host's move is only proposed; an approval is refused and the
/// proposal left as it was; and should a proposal be approved anyway (by anything but the
/// API), no guest moves: the proposal fails with the reason.
#[tokio::test]
async fn under_dry_run_nothing_moves_even_when_approved() {
    let mut bed = Bed::with_config(
        &[
            // Guests that are not grown need less: a small host, to be short at all.
            ("small", mib(1280), mib(256)),
            ("roomy", Bytes::from_gib(8), mib(256)),
        ],
        true,
        |c| c.dry_run = true,
    );
    let a = bed.hosts[0].clone();
    a.add_guest(GuestSpec::virtio_mem("p", mib(512), mib(1536)).demand(mib(900)));
    a.add_guest(GuestSpec::virtio_mem("q", mib(512), mib(1536)).demand(mib(900)));
    let proposed = bed
        .run_until(90, |b| !b.shared.proposal_list().is_empty())
        .await;
    assert!(proposed.is_some(), "no proposal: {:?}", bed.reasons("p"));
    let id = bed.shared.proposal_list()[0].id;
    match bed.shared.decide_proposal(id, true) {
        Err(crate::daemon::ProposalError::DryRun(n)) => assert_eq!(n, id),
        other => panic!("approved under dry run: {other:?}"),
    }
    let p = bed.shared.proposal_list();
    assert_eq!(p[0].state, "proposed", "{p:?}");
    // Approved behind the API's back: still nothing moves.
    bed.shared.proposals.lock().expect("proposals")[0].state = "approved".into();
    bed.run(20).await;
    assert!(a.migrations().is_empty(), "{:?}", a.migrations());
    assert!(bed.hosts[1].migrations().is_empty());
    let p = bed.shared.proposal_list();
    let it = p.iter().find(|p| p.id == id).expect("the proposal");
    assert_eq!(it.state, "failed", "{p:?}");
    assert!(
        it.error.as_deref().is_some_and(|e| e.contains("dry-run")),
        "{p:?}"
    );
    assert!(a.has_guest("p") && a.has_guest("q"));
    // A rejection needs no resizing or moving: allowed under dry run.
    let again = bed
        .run_until(60, |b| {
            b.shared
                .proposal_list()
                .iter()
                .any(|p| p.state == "proposed")
        })
        .await;
    assert!(again.is_some(), "{:?}", bed.shared.proposal_list());
    let open = bed
        .shared
        .proposal_list()
        .into_iter()
        .find(|p| p.state == "proposed")
        .expect("open");
    let r = bed
        .shared
        .decide_proposal(open.id, false)
        .expect("rejected");
    assert_eq!(r.state, "rejected");
    assert!(a.migrations().is_empty(), "{:?}", a.migrations());
}
