//! End-to-end: a host whose guests together ask for more than its configured capacity is
//! shared: idle headroom is taken before any guest that is short is denied its need.

mod common;

use common::*;

const FAST: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "192MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
shrink_rate = "256MiB/s"
"#;

/// A guest that keeps a large idle headroom and never gives it back by itself.
const ROOMY: &str = r#"
[[policy]]
name = "roomy"
priority = 10
[policy.match]
names = ["roomy"]
[policy.memory]
headroom = "1GiB"
shrink_at = "1000%"
"#;

#[test]
fn idle_headroom_is_squeezed_before_a_growing_guest_is_denied() {
    let h = Host::up("lshare", 33);
    // 2560 MiB for guests minus a 256 MiB reserve: 2304 MiB to share.
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
         [[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"2560MiB\"\nreserve = \"256MiB\"\n",
        h.name, h.uri
    );
    let roomy = h.guest(
        "roomy",
        &["--mem", "512", "--vmem", "1536", "--stats-period", "1"],
    );
    let busy = h.guest(
        "busy",
        &[
            "--mem",
            "512",
            "--vmem",
            "2048",
            "--stats-period",
            "1",
            "--demand",
            "25:1300@20",
        ],
    );
    let d = Daemon::start(
        &[],
        &[("fast.toml", FAST), ("roomy.toml", ROOMY)],
        &config,
        &[],
    );
    roomy.wait_boot();
    busy.wait_boot();
    // Before the climb the host has room: the roomy guest takes its gigabyte of headroom.
    d.wait_until("the roomy guest to take its headroom", 60, || {
        roomy.current_mib() >= 1024
    });
    let before = roomy.current_mib();
    d.wait_until("the busy guest to hold 1300 MiB", 240, || {
        assert!(busy.oom().is_none(), "busy guest OOM: {:?}", busy.oom());
        busy.stat().demand_mib >= 1300
    });
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(busy.stat().oom_kill, 0);
    assert!(
        busy.current_mib() >= 1300,
        "busy: {} MiB",
        busy.current_mib()
    );
    let after = roomy.current_mib();
    assert!(
        after + 128 < before,
        "the idle headroom was squeezed: {before} -> {after} MiB"
    );
    assert!(
        after + busy.current_mib() <= 2304 + 16,
        "the host's share holds: roomy {after} + busy {} MiB",
        busy.current_mib()
    );
    let records = d.audit();
    let squeezed: Vec<_> = records
        .iter()
        .filter(|r| r["guest"] == "roomy" && r["reason"]["reason"] == "host-share")
        .collect();
    assert!(
        squeezed.iter().any(|r| r["kind"] == "shrink"),
        "a host-share shrink of the roomy guest is audited: {:?}",
        records
            .iter()
            .filter(|r| r["guest"] == "roomy")
            .collect::<Vec<_>>()
    );
    assert!(
        squeezed
            .iter()
            .all(|r| bytes(&r["reason"]["granted"]) < bytes(&r["reason"]["wanted"])),
        "{squeezed:?}"
    );
    // Never below the guest's need: it is idle, so its floor holds.
    assert!(after >= 512);
    // The busy guest was never cut below what it needed. (Its headroom may be taken for a
    // tick while the roomy guest's squeeze lands: until the roomy guest's shrink shows, the
    // host books it at what it may still hold.)
    let below_need: Vec<_> = records
        .iter()
        .filter(|r| {
            r["guest"] == "busy"
                && r["kind"] == "shrink"
                && bytes(&r["after"]) < bytes(&r["inputs"]["need"])
        })
        .collect();
    assert!(
        below_need.is_empty(),
        "the short guest is cut below its need: {below_need:#?}"
    );
    assert!(assert_resizes_inside_envelope(&records) >= 2);
    let status = d.get("/v1/guests/roomy").expect("guest status");
    eprintln!(
        "roomy {before} -> {after} MiB; status reason: {}",
        status["last"]["reason"]
    );
}
