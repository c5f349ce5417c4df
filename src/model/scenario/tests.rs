use super::*;
use crate::clock::ManualClock;
use crate::domain::{DomainSpec, dimm_xml};
use crate::envelope::{Envelope, FlavorCatalog};

const T0: f64 = 1_800_000_000.0;

fn mib(m: u64) -> Bytes {
    Bytes::from_mib(m)
}

fn host() -> (Arc<ManualClock>, ScenarioHost) {
    let clock = Arc::new(ManualClock::new(T0));
    let h = ScenarioHost::new("scenario:///a", clock.clone(), Bytes::from_gib(16));
    (clock, h)
}

fn spec(h: &ScenarioHost, uuid: &str, inactive: bool) -> DomainSpec {
    DomainSpec::parse(&h.domain_xml(uuid, inactive).expect("xml")).expect("parse")
}

/// The envelope as the daemon computes it: the live definition with the persistent floor.
fn envelope(h: &ScenarioHost, uuid: &str) -> Envelope {
    let mut live = spec(h, uuid, false);
    live.current_memory = spec(h, uuid, true).current_memory;
    Envelope::from_spec(&live, &FlavorCatalog::new()).expect("envelope")
}

fn stats(h: &ScenarioHost, uuid: &str) -> GuestStats {
    let all = h.stats().expect("stats");
    all.into_iter()
        .find(|s| s.uuid == uuid)
        .expect("guest in stats")
}

#[test]
fn a_virtio_mem_guest_round_trips_through_its_xml() {
    let (_, h) = host();
    let u = h.add_guest(GuestSpec::virtio_mem("vm", mib(512), mib(1024)));
    let boot = spec(&h, &u, true);
    assert_eq!((boot.name.as_str(), boot.uuid.as_str()), ("vm", u.as_str()));
    assert_eq!(boot.memory, mib(1536));
    assert_eq!(boot.current_memory, mib(512));
    assert_eq!(boot.virtio_mem[0].alias, None, "auto aliases are live only");
    assert_eq!((boot.stats_period, boot.balloon_device), (Some(2), true));
    let e = Envelope::from_spec(&boot, &FlavorCatalog::new()).expect("envelope");
    assert_eq!(
        (e.floor, e.ceiling, e.base),
        (mib(512), mib(1536), mib(512))
    );

    h.set_virtio_mem(&u, "virtiomem0", mib(256)).expect("plug");
    let live = spec(&h, &u, false);
    assert_eq!(live.current_memory, mib(768));
    let d = &live.virtio_mem[0];
    assert_eq!(d.alias.as_deref(), Some("virtiomem0"));
    assert_eq!(
        (d.size, d.block, d.requested, d.current),
        (mib(1024), mib(2), mib(256), Some(mib(256)))
    );
    assert_eq!(spec(&h, &u, true).virtio_mem[0].requested, Bytes(0));
    let e = envelope(&h, &u);
    assert_eq!((e.floor, e.ceiling, e.vmem.len()), (mib(512), mib(1536), 1));

    // Two nodes: one device per node, half the size each.
    let u2 = h.add_guest(GuestSpec::virtio_mem("vm2", mib(1024), mib(2048)).numa(2));
    let live = spec(&h, &u2, false);
    assert_eq!(live.numa.len(), 2);
    assert_eq!(live.numa.iter().map(|c| c.memory).sum::<Bytes>(), mib(1024));
    let nodes: Vec<_> = live.virtio_mem.iter().map(|d| (d.node, d.size)).collect();
    assert_eq!(nodes, vec![(Some(0), mib(1024)), (Some(1), mib(1024))]);
    let e = envelope(&h, &u2);
    assert_eq!(
        (e.floor, e.ceiling, e.vmem_step, e.numa_nodes),
        (mib(1024), mib(3072), mib(4), 2)
    );

    // What libvirt refuses.
    assert!(h.set_virtio_mem(&u, "virtiomem0", mib(3)).is_err());
    assert!(h.set_virtio_mem(&u, "virtiomem0", mib(2048)).is_err());
    assert!(h.set_virtio_mem(&u, "nope", mib(2)).is_err());
    assert!(
        h.set_balloon(&u, mib(513)).is_err(),
        "target above <memory> minus virtio-mem"
    );
    assert_eq!(h.resizes("vm"), 5);
    assert_eq!(h.counters("vm").vmem_requested["virtiomem0"], mib(256));
}

#[test]
fn a_balloon_guest_round_trips_and_resizes() {
    let (_, h) = host();
    let u = h.add_guest(GuestSpec::balloon("b", mib(1024)).floor(mib(512)));
    let boot = spec(&h, &u, true);
    assert_eq!(
        (boot.memory, boot.current_memory, boot.max_memory),
        (mib(1024), mib(512), None)
    );
    assert!(boot.virtio_mem.is_empty() && boot.dimms.is_empty());
    let e = envelope(&h, &u);
    assert_eq!((e.floor, e.ceiling, e.balloon), (mib(512), mib(1024), true));
    assert!(e.vmem.is_empty() && e.dimm.is_none());
    // It boots at its <currentMemory>.
    assert_eq!(stats(&h, &u).current, Some(mib(512)));
    h.set_balloon(&u, mib(800)).expect("deflate");
    assert_eq!(stats(&h, &u).current, Some(mib(800)));
    assert_eq!(spec(&h, &u, false).current_memory, mib(800));
    assert_eq!(
        spec(&h, &u, true).current_memory,
        mib(512),
        "a live resize is not persistent"
    );
    assert!(h.set_balloon(&u, mib(1025)).is_err());
    assert_eq!(h.counters("b").balloon_target, Some(mib(800)));

    h.fail_resizes("b", true);
    let err = h.set_balloon(&u, mib(600)).expect_err("told to fail");
    assert!(matches!(err, HvError::Guest { .. }) && !err.is_connection());
    assert_eq!(h.current("b"), mib(800));
    assert_eq!(h.resizes("b"), 3);
}

#[test]
fn a_dimm_guest_round_trips_and_plugs() {
    let (_, h) = host();
    let u = h.add_guest(GuestSpec::dimm("d", mib(512), 4, mib(2048)));
    let boot = spec(&h, &u, true);
    assert_eq!(
        (boot.max_memory, boot.max_memory_slots, boot.acpi),
        (Some(mib(2048)), 4, true)
    );
    let e = envelope(&h, &u);
    assert_eq!((e.floor, e.ceiling), (mib(512), mib(1536)));
    assert_eq!(e.dimm.map(|d| d.max), Some(4));

    let alias = "ua-memscale-dimm-0-1";
    h.attach_memory(&u, &dimm_xml(alias, Some(0), mib(256)))
        .expect("attach");
    let live = spec(&h, &u, false);
    assert_eq!(
        (live.memory, live.current_memory, live.base_memory()),
        (mib(768), mib(768), mib(512))
    );
    assert_eq!(live.dimms.len(), 1);
    assert!(live.dimms[0].managed && live.dimms[0].node == Some(0));
    assert!(spec(&h, &u, true).dimms.is_empty(), "hot-plugged live only");
    assert_eq!(envelope(&h, &u).ceiling, mib(1536));
    assert_eq!(stats(&h, &u).current, Some(mib(768)));
    // The balloon target counts the DIMMs plugged: QEMU sizes the balloon against them.
    assert!(h.set_balloon(&u, mib(769)).is_err());
    h.set_balloon(&u, mib(700)).expect("inflate");
    assert_eq!(h.current("d"), mib(700));
    // Refused as QEMU and libvirt refuse: a duplicate alias, no node, past <maxMemory>.
    assert!(
        h.attach_memory(&u, &dimm_xml(alias, Some(0), mib(256)))
            .is_err()
    );
    assert!(
        h.attach_memory(&u, &dimm_xml("ua-memscale-dimm-0-2", None, mib(256)))
            .is_err()
    );
    assert!(
        h.attach_memory(&u, &dimm_xml("ua-memscale-dimm-0-3", Some(0), mib(2048)))
            .is_err()
    );
    let c = h.counters("d");
    assert_eq!((c.attaches, c.resizes), (4, 6));

    let v = h.add_guest(GuestSpec::dimm("noacpi", mib(512), 4, mib(2048)).acpi(false));
    assert!(
        h.attach_memory(&v, &dimm_xml(alias, Some(0), mib(256)))
            .is_err()
    );

    // A guest that never converges: QEMU plugs the DIMM, the guest never onlines it.
    let w = h.add_guest(GuestSpec::dimm("stuck", mib(512), 4, mib(2048)));
    h.never_converge("stuck", true);
    h.attach_memory(&w, &dimm_xml(alias, Some(0), mib(256)))
        .expect("attach");
    assert_eq!(spec(&h, &w, false).dimms.len(), 1);
    let s = stats(&h, &w);
    assert_eq!(s.current, Some(mib(768)));
    assert_eq!(s.guest.total, Some(mib(512).saturating_sub(KERNEL_RESERVE)));
    h.detach_alias(&w, alias).expect("accepted");
    assert_eq!(spec(&h, &w, false).dimms.len(), 1, "and never lets it go");
}

#[test]
fn stats_come_in_libvirt_units_once_per_period() {
    let (clock, h) = host();
    clock.set(T0 + 3.0);
    let u = h.add_guest(GuestSpec::virtio_mem("g", mib(512), mib(1024)).demand(mib(100)));
    let s = stats(&h, &u);
    assert_eq!((s.name.as_str(), s.state), ("g", RunState::Running));
    assert_eq!(s.current, Some(mib(512)));
    assert_eq!(s.maximum, Some(mib(1536)));
    let total = mib(512).saturating_sub(KERNEL_RESERVE);
    assert_eq!(s.guest.total, Some(total));
    assert_eq!(s.guest.usable, Some(total.saturating_sub(mib(100))));
    assert!(s.guest.unused.expect("unused") <= s.guest.usable.expect("usable"));
    assert!(s.guest.disk_caches.is_some());
    assert_eq!(s.last_update, T0 as u64 + 2, "floored to the period of 2 s");
    let rss = s.rss.expect("rss");
    assert!(rss >= mib(100) && rss <= mib(512));
    clock.advance(0.5);
    assert_eq!(stats(&h, &u).last_update, T0 as u64 + 2);
    clock.advance(0.5);
    assert_eq!(stats(&h, &u).last_update, T0 as u64 + 4);

    // Demand beyond MemTotal: nothing usable left, and RSS never above the guest's size.
    h.set_demand("g", mib(4096));
    let s = stats(&h, &u);
    assert_eq!(s.guest.usable, Some(Bytes(0)));
    assert_eq!(s.rss, Some(mib(512)));

    // A guest without a stats period never reports.
    let q = h.add_guest(GuestSpec::balloon("quiet", mib(256)).stats_period(0));
    let s = stats(&h, &q);
    assert_eq!(
        (s.last_update, s.guest.total, s.current),
        (0, None, Some(mib(256)))
    );
    assert!(spec(&h, &q, false).stats_period.is_none());
    clock.advance(2.0);
    h.set_stats_period(&q, 5).expect("period");
    assert_eq!(stats(&h, &q).last_update, T0 as u64 + 5);
}

#[test]
fn virtio_mem_lands_at_the_online_rate() {
    let (clock, h) = host();
    let u = h.add_guest(GuestSpec::virtio_mem("g", mib(512), mib(1024)));
    h.set_online_rate("g", Rate(mib(64)));
    h.set_virtio_mem(&u, "virtiomem0", mib(256)).expect("plug");
    let plugged = |h: &ScenarioHost| spec(h, &u, false).virtio_mem[0].current;
    assert_eq!(
        plugged(&h),
        Some(Bytes(0)),
        "accepted at once, landed not yet"
    );
    assert_eq!(spec(&h, &u, false).virtio_mem[0].requested, mib(256));
    clock.advance(1.0);
    assert_eq!(plugged(&h), Some(mib(64)));
    assert_eq!(stats(&h, &u).current, Some(mib(512 + 64)));
    clock.advance(1.5);
    assert_eq!(plugged(&h), Some(mib(160)));
    clock.advance(10.0);
    assert_eq!(plugged(&h), Some(mib(256)));
    // Unplug moves down at the same rate.
    h.set_virtio_mem(&u, "virtiomem0", mib(0)).expect("unplug");
    clock.advance(2.0);
    assert_eq!(h.current("g"), mib(512 + 128));

    // A guest that never converges: accepted, and nothing moves.
    h.never_converge("g", true);
    h.set_virtio_mem(&u, "virtiomem0", mib(512))
        .expect("accepted");
    clock.advance(60.0);
    assert_eq!(h.current("g"), mib(512 + 128));
    h.never_converge("g", false);
    clock.advance(4.0);
    assert_eq!(h.current("g"), mib(512 + 128 + 256));
}

#[test]
fn frozen_stats_keep_their_last_update() {
    let (clock, h) = host();
    let u = h.add_guest(GuestSpec::balloon("g", mib(512)).demand(mib(100)));
    clock.advance(3.0);
    let before = stats(&h, &u);
    assert_eq!(before.last_update, T0 as u64 + 2);
    h.freeze_stats("g", true);
    h.set_demand("g", mib(300));
    clock.advance(30.0);
    let frozen = stats(&h, &u);
    assert_eq!(frozen.last_update, before.last_update);
    assert_eq!(
        frozen.guest, before.guest,
        "the last report stays as it was"
    );
    h.freeze_stats("g", false);
    let thawed = stats(&h, &u);
    assert_eq!(thawed.last_update, T0 as u64 + 32);
    assert!(thawed.guest.usable < before.guest.usable);

    // A paused guest does not report either.
    h.pause("g", true);
    clock.advance(10.0);
    let s = stats(&h, &u);
    assert_eq!((s.state, s.last_update), (RunState::Paused, T0 as u64 + 32));
}

#[test]
fn a_refused_unplug_keeps_the_dimm_and_says_so() {
    let (_, h) = host();
    let u = h.add_guest(GuestSpec::dimm("d", mib(512), 4, mib(2048)).numa(2));
    let a = "ua-memscale-dimm-1-1";
    h.attach_memory(&u, &dimm_xml(a, Some(1), mib(256)))
        .expect("attach");
    h.take_events();
    h.refuse_unplug("d", true);
    h.detach_alias(&u, a).expect("the call is accepted");
    assert_eq!(
        h.take_events(),
        vec![HvEvent::RemovalFailed {
            uuid: u.clone(),
            alias: a.to_string()
        }]
    );
    let live = spec(&h, &u, false);
    assert_eq!(
        live.dimms
            .iter()
            .map(|d| d.alias.as_deref())
            .collect::<Vec<_>>(),
        vec![Some(a)]
    );
    assert_eq!(h.current("d"), mib(768));
    h.refuse_unplug("d", false);
    h.detach_alias(&u, a).expect("detach");
    assert!(spec(&h, &u, false).dimms.is_empty());
    assert!(h.take_events().is_empty());
    assert!(h.detach_alias(&u, a).is_err(), "gone");
    let c = h.counters("d");
    assert_eq!((c.detaches, c.detaches_by_alias[a]), (3, 3));
}

#[test]
fn migration_moves_a_guest_and_fails_to_a_down_host() {
    let clock = Arc::new(ManualClock::new(T0));
    let fabric = Fabric::new();
    let a = fabric.host("scenario://a/system", clock.clone(), Bytes::from_gib(16));
    let b = fabric.host("scenario://b/system", clock.clone(), Bytes::from_gib(8));
    assert_eq!(b.host_memory(), Ok(Bytes::from_gib(8)));
    let u = a.add_guest(GuestSpec::virtio_mem("g", mib(512), mib(1024)).demand(mib(200)));
    a.set_virtio_mem(&u, "virtiomem0", mib(128)).expect("plug");
    a.take_events();
    a.migrate(&u, b.uri(), Some("tcp://10.0.0.2"), false)
        .expect("migrate");
    assert!(!a.has_guest("g") && b.has_guest("g"));
    assert!(a.stats().expect("stats").is_empty());
    assert!(matches!(a.domain_xml(&u, false), Err(HvError::NoGuest(_))));
    assert_eq!(
        stats(&b, &u).current,
        Some(mib(640)),
        "its state came along"
    );
    assert_eq!(spec(&b, &u, false).virtio_mem[0].requested, mib(128));
    assert_eq!(
        a.migrations()[0].data_uri.as_deref(),
        Some("tcp://10.0.0.2")
    );
    let labels = |h: &ScenarioHost| {
        h.take_events()
            .iter()
            .map(|e| e.label())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&a), vec!["stopped", "undefined"]);
    assert_eq!(labels(&b), vec!["defined", "started"]);

    // Back to a host that is down: refused, and the guest stays where it is.
    a.set_down(true);
    let err = b
        .migrate(&u, a.uri(), None, false)
        .expect_err("destination down");
    assert!(
        !err.is_connection(),
        "the source's own connection is fine: {err}"
    );
    assert!(b.has_guest("g"));
    let err = a.stats().expect_err("down");
    assert!(err.is_connection());
    assert!(a.host_memory().is_err());
    assert!(
        b.migrate(&u, "scenario://nowhere/system", None, false)
            .is_err()
    );
    assert!(b.migrate(&u, b.uri(), None, false).is_err());
    a.set_down(false);
    assert!(a.stats().is_ok());
    assert_eq!(labels(&a), vec!["closed", "registered"]);
    b.migrate(&u, a.uri(), None, false).expect("back");
    assert_eq!(a.current("g"), mib(640));

    // A host on its own cannot migrate.
    let (_, lone) = host();
    let v = lone.add_guest(GuestSpec::balloon("x", mib(256)));
    assert!(lone.migrate(&v, a.uri(), None, false).is_err());
}
