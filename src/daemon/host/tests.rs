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
/// Each scenario host's machine: more than any host's configured capacity, as on the test bed
/// (its hosts share one machine's 24 GiB, and their capacity comes from configuration).
const MACHINE: Bytes = Bytes::from_gib(24);

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
        Bed::build(hosts, migration, |_| {}, |h| h)
    }

    /// As [`Bed::new`], with `edit` applied to the daemon's config.
    fn with_config(
        hosts: &[(&str, Bytes, Bytes)],
        migration: bool,
        edit: impl FnOnce(&mut Config),
    ) -> Bed {
        Bed::build(hosts, migration, edit, |h| h)
    }

    /// As [`Bed::new`], the daemon reaching each host through `wrap` (a host whose guests
    /// report what a test makes up).
    fn wrapped(
        hosts: &[(&str, Bytes, Bytes)],
        migration: bool,
        wrap: impl Fn(Arc<dyn crate::hypervisor::Hypervisor>) -> Arc<dyn crate::hypervisor::Hypervisor>,
    ) -> Bed {
        Bed::build(hosts, migration, |_| {}, wrap)
    }

    fn build(
        hosts: &[(&str, Bytes, Bytes)],
        migration: bool,
        edit: impl FnOnce(&mut Config),
        wrap: impl Fn(Arc<dyn crate::hypervisor::Hypervisor>) -> Arc<dyn crate::hypervisor::Hypervisor>,
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
            scenario.push(fabric.host(&uri, clock.clone(), MACHINE));
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
                Host::new(cfg.clone(), wrap(hv))
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
    // No `migration_address` configured: the memory goes to the host the URI names, not to
    // whatever libvirt would make of the destination's own hostname.
    assert_eq!(m.data_uri.as_deref(), Some("tcp://roomy"));
    assert!(!m.tls, "TLS asked without [migration] tls");
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

/// What a hostile or broken guest may report, field by field (KiB as libvirt gives them):
/// nothing, zero, the largest values, values that wrap when turned into bytes, plausible ones.
#[derive(Debug, Clone)]
struct WildReport {
    current: Option<u64>,
    maximum: Option<u64>,
    total: Option<u64>,
    usable: Option<u64>,
    unused: Option<u64>,
    caches: Option<u64>,
    swap_in: Option<u64>,
    last_update: Option<u64>,
    rss: Option<u64>,
}

/// A scenario host whose guests' statistics are replaced by made-up ones; definitions and
/// resizes are the scenario host's.
struct Wild {
    inner: Arc<dyn crate::hypervisor::Hypervisor>,
    reports: std::sync::Mutex<Vec<WildReport>>,
}

impl crate::hypervisor::Hypervisor for Wild {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn take_events(&self) -> Vec<crate::hypervisor::HvEvent> {
        self.inner.take_events()
    }
    fn stats(&self) -> Result<Vec<crate::hypervisor::GuestStats>, crate::hypervisor::HvError> {
        let mut stats = self.inner.stats()?;
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        for s in stats.iter_mut() {
            let Some(w) = reports.pop() else { break };
            let kib = |v: Option<u64>| v.map(Bytes::from_kib);
            s.current = kib(w.current);
            s.maximum = kib(w.maximum);
            s.guest.total = kib(w.total);
            s.guest.usable = kib(w.usable);
            s.guest.unused = kib(w.unused);
            s.guest.disk_caches = kib(w.caches);
            s.guest.swap_in = kib(w.swap_in);
            s.last_update = w.last_update.unwrap_or(s.last_update);
            s.rss = kib(w.rss);
        }
        Ok(stats)
    }
    fn domain_xml(&self, uuid: &str, inactive: bool) -> Result<String, crate::hypervisor::HvError> {
        self.inner.domain_xml(uuid, inactive)
    }
    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), crate::hypervisor::HvError> {
        self.inner.set_balloon(uuid, target)
    }
    fn set_virtio_mem(
        &self,
        uuid: &str,
        alias: &str,
        requested: Bytes,
    ) -> Result<(), crate::hypervisor::HvError> {
        self.inner.set_virtio_mem(uuid, alias, requested)
    }
    fn attach_memory(&self, uuid: &str, xml: &str) -> Result<(), crate::hypervisor::HvError> {
        self.inner.attach_memory(uuid, xml)
    }
    fn detach_alias(&self, uuid: &str, alias: &str) -> Result<(), crate::hypervisor::HvError> {
        self.inner.detach_alias(uuid, alias)
    }
    fn set_stats_period(&self, uuid: &str, seconds: u32) -> Result<(), crate::hypervisor::HvError> {
        self.inner.set_stats_period(uuid, seconds)
    }
    fn host_memory(&self) -> Result<Bytes, crate::hypervisor::HvError> {
        self.inner.host_memory()
    }
    fn migrate(
        &self,
        uuid: &str,
        dest_uri: &str,
        data_uri: Option<&str>,
        tls: bool,
    ) -> Result<(), crate::hypervisor::HvError> {
        self.inner.migrate(uuid, dest_uri, data_uri, tls)
    }
}

mod wild {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(1)),
            Just(Some(u64::MAX)),
            Just(Some(u64::MAX / 1024 + 1)),
            Just(Some(u64::MAX / 2)),
            (0u64..8 << 20).prop_map(Some),
        ]
    }

    fn stamp() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(u64::MAX)),
            Just(Some(1)),
            (0u64..200).prop_map(|d| Some(START as u64 + d)),
            (0u64..1_000_000).prop_map(|d| Some(START as u64 - d)),
        ]
    }

    fn report() -> impl Strategy<Value = WildReport> {
        (
            field(),
            field(),
            field(),
            field(),
            field(),
            field(),
            field(),
            stamp(),
            field(),
        )
            .prop_map(
                |(current, maximum, total, usable, unused, caches, swap_in, last_update, rss)| {
                    WildReport {
                        current,
                        maximum,
                        total,
                        usable,
                        unused,
                        caches,
                        swap_in,
                        last_update,
                        rss,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whole ticks of a host whose three guests (virtio-mem, balloon, DIMMs) report
        /// anything at all: no panic (debug builds check every overflow), every resize the
        /// daemon asks is one the definition allows (the host refuses the rest and counts
        /// them), and the host's published view stays within what its guests can hold.
        #[test]
        fn a_tick_survives_any_report(ticks in proptest::collection::vec(proptest::collection::vec(report(), 3), 1..25)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let wilds: Arc<std::sync::Mutex<Vec<Arc<Wild>>>> = Default::default();
            let w2 = wilds.clone();
            let mut bed = Bed::wrapped(&[("a", Bytes::from_gib(4), mib(256))], false, move |inner| {
                let w = Arc::new(Wild { inner, reports: Default::default() });
                w2.lock().unwrap_or_else(|p| p.into_inner()).push(w.clone());
                w
            });
            let h = bed.hosts[0].clone();
            h.add_guest(GuestSpec::virtio_mem("v", mib(512), mib(1024)).demand(mib(200)));
            h.add_guest(GuestSpec::balloon("b", mib(1024)).floor(mib(512)).demand(mib(200)));
            h.add_guest(GuestSpec::dimm("d", mib(512), 4, mib(1536)).demand(mib(200)));
            let wild = wilds.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
            rt.block_on(async {
                bed.run(5).await;
                for reports in ticks {
                    *wild.reports.lock().unwrap_or_else(|p| p.into_inner()) = reports;
                    bed.run(1).await;
                }
            });
            // The largest each definition allows: the balloon (with plugged DIMMs, for the
            // DIMM guest) and the virtio-mem device.
            for (g, balloon_max) in [("v", mib(512)), ("b", mib(1024)), ("d", mib(1536))] {
                let c = h.counters(g);
                prop_assert!(c.balloon_target.is_none_or(|t| t <= balloon_max), "{g}: {c:?}");
                prop_assert!(c.vmem_requested.values().all(|r| *r <= mib(1024)), "{g}: {c:?}");
            }
            let hosts = bed.shared.hosts.read().unwrap_or_else(|p| p.into_inner());
            let view = hosts.get("a").expect("host view");
            prop_assert_eq!(view.guests.len(), 3);
        }
    }
}

/// The daemon started with one of its two hosts unreachable: ready within seconds, serving the
/// host that answers; the other is reported (status, metric) and joins when it answers.
/// Real time (the daemon's own loops and back-off), a few seconds.
#[tokio::test]
async fn an_unreachable_host_does_not_hold_back_readiness_and_joins_later() {
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let fabric = Fabric::new();
    let up = fabric.host("scenario://up", clock.clone(), Bytes::from_gib(8));
    let down = fabric.host("scenario://down", clock.clone(), Bytes::from_gib(8));
    up.add_guest(GuestSpec::virtio_mem("u", mib(512), mib(1024)));
    down.add_guest(GuestSpec::virtio_mem("w", mib(512), mib(1024)));
    down.set_down(true);
    let mut config = Config::default();
    let mut hosts: Vec<(HostConfig, Arc<dyn crate::hypervisor::Hypervisor>)> = Vec::new();
    for (name, hv) in [("up", up.clone()), ("down", down.clone())] {
        let mut h = HostConfig::from_uri(&format!("scenario://{name}"));
        h.name = Some(name.to_string());
        h.capacity = Some(Bytes::from_gib(8));
        config.hosts.push(h.clone());
        hosts.push((h, hv));
    }
    let shared = Arc::new(Shared::new(config, default_policies(), &[]).expect("shared"));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(crate::daemon::run(shared.clone(), hosts, shutdown));
    let mut ready = shared.ready.subscribe();
    let became_ready = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !*ready.borrow_and_update() {
            if ready.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(became_ready, Ok(true), "not ready with one host down");
    let view = |name: &str| {
        shared
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|v| (v.connected, v.last_error.clone(), v.guests.len()))
    };
    let (connected, error, _) = view("down").expect("the down host is reported");
    assert!(!connected);
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert_eq!(view("up").map(|v| (v.0, v.2)), Some((true, 1)));
    let metric = |name: &str| {
        shared
            .metrics
            .host_connected
            .with_label_values(&[name])
            .get()
    };
    assert_eq!((metric("up"), metric("down")), (1, 0));
    // Its libvirtd comes up: it joins within its back-off.
    down.set_down(false);
    let joined = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if view("down").is_some_and(|v| v.0 && v.2 == 1) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(joined.is_ok(), "the host never joined: {:?}", view("down"));
    assert_eq!(metric("down"), 1);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), daemon).await;
}

/// Issue 16's item 8 on one host: two guests climb to 1000 MiB each on a host configured
/// with 2 GiB and a 256 MiB reserve, and no move is possible (migration off). p grows to its
/// use while the host has room; then q climbs as high, and the two do not fit (1.75 GiB for
/// 2 × 1000 MiB of use plus their kernels).
async fn two_guests_outgrow_their_host(bed: &mut Bed) {
    let a = bed.hosts[0].clone();
    a.add_guest(GuestSpec::virtio_mem("p", mib(512), mib(1536)).demand(mib(100)));
    a.add_guest(GuestSpec::virtio_mem("q", mib(512), mib(1536)).demand(mib(100)));
    bed.run(15).await;
    for d in [300u64, 500, 700, 850, 1000] {
        a.set_demand("p", mib(d));
        bed.run(6).await;
    }
    bed.run(20).await;
    for d in [300u64, 500, 700, 850, 1000] {
        a.set_demand("q", mib(d));
        bed.run(6).await;
    }
    bed.run(60).await;
}

/// The host-share records that took a guest below what its report said it used.
fn cuts_below_use(bed: &Bed) -> Vec<crate::audit::Record> {
    ["p", "q"]
        .iter()
        .flat_map(|g| bed.shared.audit.recent(Some(g), 10_000))
        .filter(|r| matches!(r.reason, Reason::Hold(HoldReason::HostShare { .. })))
        .filter(|r| {
            let used = r
                .inputs
                .total
                .zip(r.inputs.available)
                .map(|(t, a)| t.saturating_sub(a))
                .unwrap_or_default();
            r.after < used.min(r.before)
        })
        .collect()
}

/// Two guests outgrow a host and no move is possible (migration off) while the machine has
/// memory to spare by its own statistics: sharing never cuts either below its use, each keeps
/// its need (both demands are met), and the host reports the shortfall as its deficit and
/// says it is over its configured capacity (status, metric, one audit record).
#[tokio::test]
async fn sharing_never_takes_a_guest_below_its_use() {
    let mut bed = Bed::new(&[("small", Bytes::from_gib(2), mib(256))], false);
    two_guests_outgrow_their_host(&mut bed).await;
    let a = bed.hosts[0].clone();
    // Both demands met: the machine has the memory, whatever the configuration says.
    for g in ["p", "q"] {
        let total = a
            .current(g)
            .saturating_sub(crate::model::scenario::KERNEL_RESERVE);
        assert!(total >= mib(1000), "{g} below its demand: {total}");
    }
    let mut shares = 0;
    for g in ["p", "q"] {
        for r in bed.shared.audit.recent(Some(g), 10_000) {
            if !matches!(
                r.reason,
                Reason::Hold(crate::planner::HoldReason::HostShare { .. })
            ) {
                continue;
            }
            shares += 1;
            let used = r
                .inputs
                .total
                .zip(r.inputs.available)
                .map(|(t, a)| t.saturating_sub(a))
                .unwrap_or_default();
            assert!(
                r.after >= used.min(r.before),
                "{g} shared below its use: {} < {used} ({r:?})",
                r.after
            );
        }
    }
    assert!(shares > 0, "the host was never shared");
    assert!(cuts_below_use(&bed).is_empty());
    let view = bed
        .shared
        .hosts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get("small")
        .cloned()
        .unwrap_or_default();
    assert!(view.deficit > Bytes(0), "no deficit reported");
    // Over its configured capacity, said in status and metrics: what its guests are held at
    // beyond 1.75 GiB. The machine itself has room (it is not short by its own figures).
    assert!(view.over_capacity > Bytes(0), "over capacity not reported");
    assert!(view.node_available.is_some_and(|n| n > Bytes::from_gib(16)));
    let sizes = a.current("p").saturating_add(a.current("q"));
    assert!(
        view.over_capacity <= sizes.saturating_sub(mib(2048 - 256)),
        "{} over, the guests hold {sizes}",
        view.over_capacity
    );
    let text = bed
        .shared
        .metrics
        .render(&bed.shared.hosts.read().expect("hosts"));
    let line = text
        .lines()
        .find(|l| l.starts_with("memscale_host_over_capacity_bytes{host=\"small\"}"))
        .expect("over-capacity metric");
    assert_eq!(
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        Some(view.over_capacity.0 as f64)
    );
    let said: Vec<_> = bed
        .shared
        .audit
        .recent(None, 10_000)
        .into_iter()
        .filter(|r| matches!(r.reason, Reason::Event(EventReason::OverCapacity { .. })))
        .collect();
    assert_eq!(said.len(), 1, "said once, when it began: {said:?}");
    assert_eq!(said[0].host, "small");
}

/// What `peak_window` means for an operator (issue 18), on the daemon's own loop with the
/// shipped default policy (a six-hour window): a guest idle after a spike keeps its cushion
/// (its size near the peak plus headroom) while the host has room; when another guest's
/// climb makes the host short, the cushion is given back first, all of it before the
/// climber's headroom, never below the idle guest's use, and the audit says why.
#[tokio::test]
async fn an_idle_guest_keeps_its_cushion_until_the_host_needs_it() {
    // 3 GiB less a 256 MiB reserve: 2816 MiB for the guests.
    let mut bed = Bed::new(&[("a", Bytes::from_gib(3), mib(256))], false);
    let h = bed.hosts[0].clone();
    h.add_guest(GuestSpec::virtio_mem("spiky", mib(512), mib(2048)).demand(mib(100)));
    h.add_guest(GuestSpec::virtio_mem("late", mib(512), mib(2048)).demand(mib(100)));
    bed.run(20).await;
    h.set_demand("spiky", mib(1400));
    let grown = bed
        .run_until(60, |b| b.hosts[0].current("spiky") >= mib(1400 + 42 + 256))
        .await;
    assert!(grown.is_some(), "never grown: {:?}", bed.reasons("spiky"));
    bed.run(30).await;
    h.set_demand("spiky", mib(100));
    // Ten idle minutes with room on the host: the shrink stops at the peak plus headroom.
    let mut low = h.current("spiky");
    for _ in 0..600 {
        bed.run(1).await;
        low = low.min(h.current("spiky"));
    }
    assert!(
        low >= mib(1400 + 42),
        "the cushion was given back with room on the host: {low}"
    );
    let cushion = h.current("spiky");
    // The late guest climbs to 1800 MiB: with the cushion the two no longer fit.
    h.set_demand("late", mib(1800));
    let met = bed
        .run_until(180, |b| {
            let (s, l) = (b.hosts[0].current("spiky"), b.hosts[0].current("late"));
            s < mib(1024) && l >= mib(1800 + 42 + 96)
        })
        .await;
    assert!(
        met.is_some(),
        "spiky {} late {}: {:?}",
        h.current("spiky"),
        h.current("late"),
        bed.reasons("spiky")
    );
    bed.run(30).await;
    let (spiky, late) = (h.current("spiky"), h.current("late"));
    // All the cushion went before the climber's headroom: spiky keeps its floor (512 MiB,
    // above its use plus headroom), late everything else the host has. Shared evenly, as
    // before cushions came last, spiky would still hold about 700 MiB of it.
    assert!(spiky <= mib(512 + 64), "spiky kept {spiky} of {cushion}");
    assert!(
        late >= mib(2816 - 512 - 64) && spiky.saturating_add(late) <= mib(2816 + 16),
        "late {late}, spiky {spiky}"
    );
    let records = bed.shared.audit.recent(Some("spiky"), 10_000);
    let given: Vec<_> = records
        .iter()
        .filter(|r| {
            matches!(
                r.reason,
                Reason::Hold(HoldReason::HostShare {
                    took: crate::planner::Squeeze::Cushion,
                    ..
                })
            ) && r.kind == crate::planner::Kind::Shrink
        })
        .collect();
    assert!(
        given
            .iter()
            .any(|r| r.why.starts_with("cushion given back for the host")),
        "no record says the cushion went to the host: {records:?}"
    );
    // Never below its use.
    for r in &records {
        let used = r
            .inputs
            .total
            .zip(r.inputs.available)
            .map(|(t, a)| t.saturating_sub(a))
            .unwrap_or_default();
        assert!(r.after >= used.min(r.before), "below its use: {r:?}");
    }
}

/// The one exception: when the machine itself is out of memory by its own statistics (free,
/// buffers and cache below the reserve: here something else holds all of it), sharing may cut
/// a guest below its use, as the fair share says.
#[tokio::test]
async fn sharing_cuts_below_use_only_when_the_machine_is_out_of_memory() {
    let mut bed = Bed::new(&[("small", Bytes::from_gib(2), mib(256))], false);
    bed.hosts[0].set_other_use(MACHINE);
    two_guests_outgrow_their_host(&mut bed).await;
    let view = bed
        .shared
        .hosts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get("small")
        .cloned()
        .unwrap_or_default();
    assert_eq!(view.node_available, Some(Bytes(0)));
    assert!(
        !cuts_below_use(&bed).is_empty(),
        "never cut below use: {:?}",
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

/// The controller's default timing (what the simulator runs with) is the daemon's default
/// config's, kept apart only because the pure controller may not import the config.
#[test]
fn the_controllers_default_timing_is_the_daemons() {
    let shared = Shared::new(Config::default(), PolicySet::default(), &[]).expect("shared");
    assert_eq!(shared.timing(), crate::control::Timing::default());
}

/// etcd unreachable for longer than the lease (the lease is lost): on the host this daemon
/// held last, a guest whose demand climbs is still grown, into the memory free now (the idle
/// guest beside it keeps what it has: nothing shrinks), and nothing moves although the host is
/// short; a host it never held is left alone. Reported in status and metrics.
#[tokio::test]
async fn with_the_etcd_lease_lost_guests_are_grown_into_free_memory_and_nothing_shrinks_or_moves() {
    let mut bed = Bed::with_config(
        &[
            ("small", Bytes::from_gib(2), mib(256)),
            ("other", Bytes::from_gib(8), mib(256)),
        ],
        true,
        |c| {
            // Nothing listens there: no lease is ever granted.
            c.coordination = Some(crate::coord::CoordConfig {
                etcd: vec!["http://127.0.0.1:9".into()],
                ..Default::default()
            });
        },
    );
    // "small" was this daemon's when etcd went; "other" never was.
    bed.loops[0].held = true;
    let (small, other) = (bed.hosts[0].clone(), bed.hosts[1].clone());
    // A guest that needs a lot and then little (its shrink comes within two minutes of the
    // drop when the daemon acts), and one that will climb.
    small.add_guest(GuestSpec::virtio_mem("idle", mib(512), mib(1536)).demand(mib(700)));
    small.add_guest(GuestSpec::virtio_mem("g", mib(512), mib(1536)).demand(mib(100)));
    other.add_guest(GuestSpec::virtio_mem("o", mib(512), mib(1536)).demand(mib(100)));
    // Growth goes on without the lease.
    let grown = bed
        .run_until(60, |b| b.hosts[0].current("idle") > mib(1000))
        .await;
    assert!(grown.is_some(), "not grown: {:?}", bed.reasons("idle"));
    bed.run(10).await;
    let (idle_size, idle_resizes) = (small.current("idle"), small.resizes("idle"));
    small.set_demand("idle", mib(40));
    small.set_demand("g", mib(1200));
    other.set_demand("o", mib(700));
    for _ in 0..150 {
        bed.run(1).await;
        let held = small.current("idle") + small.current("g");
        assert!(held <= mib(1792), "host overfilled: {held}");
    }
    assert_eq!(
        (small.current("idle"), small.resizes("idle")),
        (idle_size, idle_resizes),
        "{:?}",
        bed.reasons("idle")
    );
    assert!(
        bed.reasons("idle")
            .iter()
            .any(|(r, _)| matches!(r, Reason::Hold(HoldReason::NoLease { .. }))),
        "{:?}",
        bed.reasons("idle")
    );
    // Grown into the memory free, short of its 1.2 GiB demand: the rest waits for the lease.
    let free = mib(1792).saturating_sub(idle_size);
    assert!(
        small.current("g") + mib(32) >= free,
        "not grown: {} {:?}",
        small.current("g"),
        bed.reasons("g")
    );
    assert!(small.migrations().is_empty(), "{:?}", small.migrations());
    assert_eq!(other.resizes("o"), 0, "{:?}", bed.reasons("o"));
    let view = |name: &str| {
        bed.shared
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|v| (v.acting, v.grow_only, v.standby.clone().unwrap_or_default()))
    };
    let (acting, grow_only, why) = view("small").expect("small published");
    assert!(!acting && grow_only, "{why}");
    assert!(why.contains("no shrink or move"), "{why}");
    assert_eq!(view("other").map(|v| (v.0, v.1)), Some((false, false)));
    let gauge = |name: &str| {
        bed.shared
            .metrics
            .host_grow_only
            .with_label_values(&[name])
            .get()
    };
    assert_eq!((gauge("small"), gauge("other")), (1, 0));
}

/// `[migration] tls = true`: the move is asked of the hypervisor over libvirt's TLS
/// transport (the real one is shown by `tests/e2e_migrate_tls.rs`).
#[tokio::test]
async fn with_migration_tls_the_move_asks_for_tls() {
    let mut bed = Bed::with_config(
        &[
            ("small", Bytes::from_gib(2), mib(256)),
            ("roomy", Bytes::from_gib(8), mib(256)),
        ],
        true,
        |c| c.migration.tls = true,
    );
    let a = bed.hosts[0].clone();
    a.add_guest(GuestSpec::virtio_mem("p", mib(512), mib(1536)).demand(mib(900)));
    a.add_guest(GuestSpec::virtio_mem("q", mib(512), mib(1536)).demand(mib(900)));
    let moved = bed
        .run_until(120, |b| !b.hosts[0].migrations().is_empty())
        .await;
    assert!(moved.is_some(), "no move: {:?}", bed.reasons("p"));
    assert!(a.migrations()[0].tls, "{:?}", a.migrations());
}
