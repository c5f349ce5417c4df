//! End-to-end: etcd goes away for longer than the lease while a guest's demand climbs. The
//! daemon that held the host keeps growing its guests (a guest must not run out of memory
//! because a coordination service is down), shrinks nothing and moves nothing until the lease
//! is back, says so (status, metric, log, audit), and resumes everything when etcd returns.
//! Before (issue 16, item 6), all resizing stopped, growth included.

mod common;

use common::*;

const POLICY: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "192MiB"
min_free = "96MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
shrink_rate = "256MiB/s"
"#;

/// Applied resizes of `guest` of this kind (`grow`, `shrink`) recorded after `since`.
fn applied(d: &Daemon, guest: &str, kind: &str, since: f64) -> Vec<serde_json::Value> {
    d.audit()
        .into_iter()
        .filter(|r| {
            r["guest"] == guest
                && r["kind"] == kind
                && r["result"] == "applied"
                && r["time"].as_f64().unwrap_or(0.0) > since
        })
        .collect()
}

#[test]
fn with_etcd_down_longer_than_the_lease_growth_goes_on_and_nothing_shrinks_until_it_returns() {
    let mut etcd = Etcd::start();
    let h = Host::up("letcd", 163);
    let opts = ["--mem", "512", "--vmem", "1024", "--stats-period", "1"];
    let grower = h.guest("eg", &opts);
    let idler = h.guest("ei", &opts);
    grower.wait_boot();
    idler.wait_boot();
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\n\
         [coordination]\netcd = [\"{}\"]\nprefix = \"/outage\"\nttl = \"4s\"\nname = \"d1\"\n\
         [[hosts]]\nname = \"letcd\"\nuri = \"{}\"\ncapacity = \"4GiB\"\nreserve = \"256MiB\"\n",
        etcd.url, h.uri
    );
    let d = Daemon::start(&[], &[("fast.toml", POLICY)], &config, &[]);
    d.wait_until("the daemon to act for the host", 60, || {
        d.host_status("letcd")["acting"] == true
    });
    // The idler needs a lot for a while: grown, with the lease.
    idler.demand(600, 100);
    d.wait_until("the idler grown", 120, || idler.current_mib() > 900);
    d.wait_until("the idler's growth landed", 60, || {
        d.guest("ei").is_some_and(|g| g["state"] == "ok")
    });

    // etcd goes; once the lease has run out, the idler's demand drops (a shrink is due about
    // 20 s later) and the grower's climbs.
    etcd.stop();
    let stopped = now();
    d.wait_until("the lease lost: grow-only", 60, || {
        d.host_status("letcd")["grow_only"] == true
    });
    let lost = now();
    let idle_size = idler.current_mib();
    idler.demand(40, 200);
    grower.demand(500, 25);
    let no_shrink = |d: &Daemon| {
        let shrinks = applied(d, "ei", "shrink", stopped);
        assert!(shrinks.is_empty(), "shrunk without the lease: {shrinks:?}");
        assert!(
            idler.current_mib() + 8 >= idle_size,
            "the idler lost memory without the lease: {} of {idle_size} MiB",
            idler.current_mib()
        );
    };
    d.wait_until("the grower grown without the lease", 120, || {
        no_shrink(&d);
        assert!(grower.oom().is_none(), "grower OOM: {:?}", grower.oom());
        !applied(&d, "eg", "grow", lost).is_empty() && grower.stat().demand_mib >= 500
    });
    // Long past the time the idler's shrink was due: still nothing taken.
    d.wait_until("40 s of outage after the lease ran out", 120, || {
        no_shrink(&d);
        now() > lost + 40.0
    });
    let st = d.host_status("letcd");
    assert_eq!(
        (st["acting"].clone(), st["grow_only"].clone()),
        (false.into(), true.into()),
        "{st}"
    );
    assert!(
        st["standby"]
            .as_str()
            .is_some_and(|s| s.contains("no shrink or move")),
        "{st}"
    );
    let session = d
        .get("/v1/status")
        .map(|s| s["coordination"]["session"].clone());
    assert_eq!(session, Some(false.into()));
    assert_eq!(
        d.metric("memscale_host_grow_only{host=\"letcd\"}"),
        Some(1.0)
    );
    assert_eq!(d.metric("memscale_host_acting{host=\"letcd\"}"), Some(0.0));
    assert!(
        d.log_text()
            .contains("etcd lease lost: growing this host's guests"),
        "{}",
        tail(&d.log_text(), 30)
    );
    assert!(
        d.audit()
            .iter()
            .any(|r| r["guest"] == "ei" && r["reason"]["reason"] == "no-lease"),
        "the held shrink is audited"
    );
    let grown_to = grower.current_mib();
    assert!(grown_to > 700, "grower at {grown_to} MiB");
    assert!(grower.oom().is_none(), "grower OOM: {:?}", grower.oom());

    // etcd returns: the daemon acts again and the idler's memory comes back.
    etcd.start_again();
    let back = now();
    d.wait_until("acting again with etcd back", 60, || {
        d.host_status("letcd")["acting"] == true
    });
    assert_eq!(
        d.metric("memscale_host_grow_only{host=\"letcd\"}"),
        Some(0.0)
    );
    d.wait_until("the idler shrunk once the lease is back", 120, || {
        !applied(&d, "ei", "shrink", back).is_empty()
    });
    assert!(idler.oom().is_none() && grower.oom().is_none());
}
