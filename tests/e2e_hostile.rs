//! End-to-end: a real guest that lies. It claims every free page as used, forever (it keeps
//! its hugepage pool as large as its free memory, pages it never touches). Believed, it would
//! be grown to its ceiling and squeeze its honest neighbour; memscale checks what it claims
//! against what its QEMU process holds on the host (RSS), does not believe it, and the
//! neighbour's demand is met.

mod common;

use common::*;

const POLICY: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "192MiB"
shrink_cooldown = "8s"
window = "10s"
shrink_interval = "2s"
"#;

#[test]
fn a_guest_that_never_reports_free_memory_gains_nothing() {
    let h = Host::up("lhos", 41);
    let liar = h.guest(
        "liar",
        &[
            "--mem",
            "512",
            "--vmem",
            "1536",
            "--stats-period",
            "1",
            "--cmdline",
            "init_on_alloc=0",
        ],
    );
    let honest = h.guest(
        "honest",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\n[[hosts]]\nname = \"lhos\"\nuri = \"{}\"\ncapacity = \"2048MiB\"\nreserve = \"256MiB\"\n",
        h.uri
    );
    let d = Daemon::start(&[], &[("fast.toml", POLICY)], &config, &[]);
    liar.wait_boot();
    honest.wait_boot();
    d.wait_until("both guests reporting", 60, || {
        ["liar", "honest"]
            .iter()
            .all(|g| d.guest(g).is_some_and(|v| v["state"] == "ok"))
    });
    let liar_start = liar.current_mib();
    assert!(liar.liar().contains("ok"), "the liar starts lying");
    honest.demand(750, 60);
    d.wait_until("the lie seen through", 60, || {
        d.guest("liar").is_some_and(|v| v["rss_capped"] == true)
    });
    // Until the lie is plain (the pool first takes pages the guest touched at boot, which the
    // host counts), one grow on its word can happen; none after.
    let seen_through = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let v = d.guest("liar").expect("liar");
    // It does claim (almost) nothing available.
    let avail = bytes(&v["available"]) >> 20;
    assert!(avail < 150, "the liar reports {avail} MiB available: {v}");
    assert!(v["bad_stats"].as_u64().unwrap_or(0) > 0, "{v}");
    d.wait_until("the honest guest's demand met", 120, || {
        assert!(honest.oom().is_none(), "honest OOM: {:?}", honest.oom());
        honest.stat().demand_mib >= 750
    });
    // Keep watching for a while: the liar is not grown on its word.
    std::thread::sleep(std::time::Duration::from_secs(20));
    let grows: Vec<_> = d
        .audit()
        .into_iter()
        .filter(|r| r["guest"] == "liar" && r["kind"] == "grow" && r["result"] == "applied")
        .collect();
    assert!(
        grows.len() <= 1,
        "the liar was grown on its claims: {grows:#?}"
    );
    assert!(
        grows
            .iter()
            .all(|r| r["time"].as_f64().unwrap_or(0.0) < seen_through),
        "the liar was grown after its lie was seen through: {grows:#?}"
    );
    // Believed, it would have been grown again and again towards its 2 GiB ceiling.
    let liar_now = liar.current_mib();
    assert!(
        liar_now <= liar_start + 512,
        "the liar went from {liar_start} to {liar_now} MiB"
    );
    assert!(honest.oom().is_none());
    let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
    let bad: f64 = m
        .lines()
        .filter(|l| l.starts_with("memscale_guest_bad_stats_total") && l.contains("guest=\"liar\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(bad > 0.0, "bad stats counted in the metrics");
}

/// A guest's kernel writes a false balloon `actual` into its own device (the test bed's guest
/// does it through the virtio PCI config window), so libvirt's `balloon.current` says what
/// the guest wants: first 64 MiB (it books memory it still holds as free), then a wrapped
/// 16 EiB (it would squeeze every neighbour and overflow sums). memscale books it at what it
/// may hold, its neighbour keeps growing to its demand, and the lie is reported.
#[test]
fn a_guest_lying_about_its_own_size_books_nothing() {
    const ROOM_MIB: u64 = 2560;
    let h = Host::up("lsize", 71);
    // 1 GiB of RAM, floor 768 MiB, balloon only; it holds 500 MiB.
    let liar = h.guest(
        "sizeliar",
        &[
            "--mem",
            "1024",
            "--current",
            "768",
            "--vmem",
            "0",
            "--stats-period",
            "1",
            "--demand",
            "0:500",
        ],
    );
    let honest = h.guest(
        "neighbour",
        &["--mem", "512", "--vmem", "1536", "--stats-period", "1"],
    );
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\n[[hosts]]\nname = \"lsize\"\nuri = \"{}\"\ncapacity = \"{}MiB\"\nreserve = \"256MiB\"\n",
        h.uri,
        ROOM_MIB + 256
    );
    let d = Daemon::start(&[], &[("fast.toml", POLICY)], &config, &[]);
    liar.wait_boot();
    honest.wait_boot();
    d.wait_until("both guests reporting", 60, || {
        ["sizeliar", "neighbour"]
            .iter()
            .all(|g| d.guest(g).is_some_and(|v| v["state"] == "ok"))
    });
    d.wait_until("the liar holds its demand", 60, || {
        liar.stat().demand_mib >= 500
    });

    // 1: it claims 64 MiB: RAM 1024 MiB minus 960 MiB "given back".
    let reply = liar.control("balloon-actual", &["245760"]);
    assert!(reply.starts_with("ok"), "the guest could not lie: {reply}");
    d.wait_until("libvirt shows the lie", 30, || liar.current_mib() < 100);
    // A claim is not disputed while a resize is landing (a resize moves it legitimately):
    // when the lie comes while a growth is on its way (seen: the guest grown 768 -> 1024 MiB
    // as its demand arrived), the dispute waits for that growth's `converge_timeout` (30 s).
    d.wait_until("the lie reported", 75, || {
        d.guest("sizeliar")
            .is_some_and(|v| v["size_dispute"] == "below_asked")
    });
    honest.demand(1000, 60);
    // While the neighbour grows: the host books the liar at no less than what it really
    // has (its MemTotal, seen from inside), and never hands out more than it has.
    let mut checks = 0;
    d.wait_until("the neighbour's demand met", 120, || {
        assert!(honest.oom().is_none(), "neighbour OOM: {:?}", honest.oom());
        let v = d.guest("sizeliar").expect("liar");
        let real = liar.stat().memtotal_kib >> 10;
        let booked = mib(&v["current"]);
        assert!(
            booked >= real,
            "the liar is booked at {booked} MiB, it has {real} MiB: {v}"
        );
        // (Its driver writes the truth when the balloon moves; the lie returns within 1 s.)
        let neighbour = honest.vmem_requested_mib() + 512;
        assert!(
            real + neighbour <= ROOM_MIB + 16,
            "overfilled: the liar's {real} + the neighbour's {neighbour} MiB > {ROOM_MIB} MiB"
        );
        checks += 1;
        honest.stat().demand_mib >= 1000
    });
    assert!(checks > 0);

    // 2: it claims RAM minus 16 TiB: QEMU's subtraction wraps to about 16 EiB.
    let reply = liar.control("balloon-actual", &["4294967295"]);
    assert!(reply.starts_with("ok"), "the guest could not lie: {reply}");
    d.wait_until("the wrapped lie reported", 75, || {
        d.guest("sizeliar")
            .is_some_and(|v| v["size_dispute"] == "above_maximum")
    });
    assert!(
        liar.current_mib() > 1 << 30,
        "libvirt shows the wrapped size"
    );
    // Believed, the host would be full forever: the neighbour would get nothing more.
    honest.demand(1150, 60);
    d.wait_until("the neighbour grown again", 120, || {
        assert!(honest.oom().is_none(), "neighbour OOM: {:?}", honest.oom());
        let committed = bytes(&d.host_status("lsize")["committed"]) >> 20;
        assert!(
            committed <= ROOM_MIB + 256,
            "committed {committed} MiB: the lie was booked"
        );
        let v = d.guest("sizeliar").expect("liar");
        assert!(mib(&v["current"]) <= 1024, "booked above its maximum: {v}");
        honest.stat().demand_mib >= 1150
    });
    assert!(d.get("/v1/status").is_some(), "the daemon is up");

    // Reported: audit, metrics, the hostile count.
    let disputes: Vec<String> = d
        .audit()
        .into_iter()
        .filter(|r| r["guest"] == "sizeliar" && r["reason"]["reason"] == "size-disputed")
        .map(|r| r["reason"]["dispute"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        disputes.iter().any(|d| d == "below_asked")
            && disputes.iter().any(|d| d == "above_maximum"),
        "audited disputes: {disputes:?}"
    );
    let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
    assert!(
        m.lines()
            .any(|l| l.starts_with("memscale_guest_size_disputed")
                && l.contains("guest=\"sizeliar\"")
                && l.contains("dispute=\"above_maximum\"")
                && l.ends_with(" 1")),
        "no disputed-size metric for the liar"
    );
    let v = d.guest("sizeliar").expect("liar");
    assert!(v["bad_stats"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert!(
        d.guest("neighbour")
            .is_some_and(|v| v["size_dispute"].is_null()),
        "the honest neighbour is not accused"
    );
}
