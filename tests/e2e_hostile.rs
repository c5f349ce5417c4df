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
