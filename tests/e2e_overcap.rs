//! End-to-end: issue 16's item 8 as a new user met it. Three test-bed hosts; host A is
//! configured with `capacity = "2GiB"` and `reserve = "256MiB"`, and two guests on it climb to
//! 1000 MiB each: together they need more than A may give (1792 MiB), while the machine under
//! the test bed has gigabytes free. Before, sharing cut both below their use when no move
//! could be made, and both kernels panicked.
//!
//! - Every move failing (each destination refuses migrations): both guests are held at what
//!   they use and grown to their demand, nothing dies, A says it is over its configured
//!   capacity (status, metrics, audit) and keeps trying to move a guest.
//! - Moves possible, no `migration_address`: one guest moves (its memory streamed to the host
//!   the destination's URI names), and both demands are met.

mod common;

use common::*;

const POLICY: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "192MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
"#;

fn addr(h: &Host) -> String {
    h.tcp
        .trim_start_matches("qemu+tcp://")
        .trim_end_matches("/system")
        .to_string()
}

/// A `[[hosts]]` block: migrations to it go to `migration_uri`; no `migration_address`.
fn block(h: &Host, capacity: u64, migration_uri: &str) -> String {
    format!(
        "[[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"{capacity}MiB\"\nreserve = \"256MiB\"\n\
         migration_uri = \"{migration_uri}\"\n",
        h.name, h.uri
    )
}

/// The two climbing guests on A, booted.
fn climbers(a: &Host) -> (Guest, Guest) {
    let g = |name: &str| {
        a.guest(
            name,
            &[
                "--mem",
                "512",
                "--vmem",
                "1536",
                "--stats-period",
                "1",
                "--demand",
                "15:1000@10",
            ],
        )
    };
    let (p, q) = (g("p"), g("q"));
    p.wait_boot();
    q.wait_boot();
    (p, q)
}

fn assert_alive(d: &Daemon, gs: &[&Guest]) {
    for g in gs {
        assert!(
            g.oom().is_none(),
            "{} on {}: {:?}\n{}",
            g.name,
            g.host,
            g.oom(),
            tail(&d.log_text(), 40)
        );
    }
}

#[test]
fn every_move_failing_both_guests_are_held_at_their_use_and_the_host_says_it_is_over() {
    let a = Host::up("lova", 181);
    let b = Host::up("lovb", 182);
    let c = Host::up("lovc", 183);
    // B and C have room, but nothing takes migrations where the config sends them.
    let dead = |h: &Host| format!("qemu+tcp://{}:1/system", addr(h));
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
         [migration]\nenabled = true\nmin_interval = \"5s\"\nretry_after = \"20s\"\n{}{}{}",
        block(&a, 2048, &a.tcp),
        block(&b, 4096, &dead(&b)),
        block(&c, 4096, &dead(&c)),
    );
    let (p, q) = climbers(&a);
    let d = Daemon::start(&[], &[("fast.toml", POLICY)], &config, &[]);
    d.wait_until("both guests holding 1000 MiB", 300, || {
        assert_alive(&d, &[&p, &q]);
        p.stat().demand_mib >= 1000 && q.stat().demand_mib >= 1000
    });
    // Held there while the moves keep failing.
    let held = std::time::Instant::now();
    let mut over = 0u64;
    d.wait_until("A over its capacity, and moves tried again", 120, || {
        assert_alive(&d, &[&p, &q]);
        let status = d.get("/v1/status").unwrap_or_default();
        if let Some(h) = status["hosts"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"] == "lova"))
        {
            over = over.max(bytes(&h["over_capacity"]));
        }
        let failed = d
            .audit()
            .iter()
            .filter(|r| {
                r["reason"]["reason"] == "migrate"
                    && r["result"]
                        .as_str()
                        .is_some_and(|x| x.starts_with("failed"))
            })
            .count();
        // B and C each refused, and one was tried again after `retry_after`.
        over > 0 && failed >= 3 && held.elapsed().as_secs() >= 30
    });
    assert_alive(&d, &[&p, &q]);
    for g in [&p, &q] {
        let s = g.stat();
        assert!(s.demand_mib >= 1000, "{}: {s:?}", g.name);
        assert_eq!(s.oom_kill, 0, "{}", g.name);
        assert_eq!(a.domstate(&g.name), "running", "{} still on A", g.name);
    }
    // What they hold past A's 1792 MiB: at least 2 × 1000 MiB of use, less what A may give.
    assert!(over >= (2000 - 1792) << 20, "over capacity by {over}");
    let m = d
        .metric("memscale_host_over_capacity_bytes{host=\"lova\"}")
        .expect("over-capacity metric");
    assert!(m > 0.0, "metric {m}");
    let records = d.audit();
    assert!(
        records
            .iter()
            .any(|r| r["host"] == "lova" && r["reason"]["reason"] == "over-capacity"),
        "audited"
    );
    // Never a guest cut below its use on A.
    for r in records.iter().filter(|r| {
        r["host"] == "lova" && r["kind"] == "shrink" && r["reason"]["reason"] == "host-share"
    }) {
        let used = bytes(&r["inputs"]["total"]).saturating_sub(bytes(&r["inputs"]["available"]));
        assert!(bytes(&r["after"]) >= used, "cut below use: {r}");
    }
    assert!(
        d.log_text().contains("host over its capacity"),
        "said in the log"
    );
}

#[test]
fn with_moves_possible_and_no_migration_address_one_guest_moves_and_both_demands_are_met() {
    let a = Host::up("loma", 184);
    let b = Host::up("lomb", 185);
    let c = Host::up("lomc", 186);
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
         [migration]\nenabled = true\nmin_interval = \"5s\"\n{}{}{}",
        block(&a, 2048, &a.tcp),
        block(&b, 3072, &b.tcp),
        block(&c, 4096, &c.tcp),
    );
    let (p, q) = climbers(&a);
    let d = Daemon::start(&[], &[("fast.toml", POLICY)], &config, &[]);
    d.wait_until("a guest to leave A", 300, || {
        assert_alive(&d, &[&p, &q]);
        d.audit()
            .iter()
            .any(|r| r["reason"]["reason"] == "migrate" && r["result"] == "applied")
    });
    let records = d.audit();
    let m = records
        .iter()
        .find(|r| r["reason"]["reason"] == "migrate" && r["result"] == "applied")
        .expect("an applied move");
    assert_eq!(m["host"], "loma");
    assert_eq!(m["reason"]["to"], "lomc", "the roomiest host: {m}");
    let moved = m["guest"].as_str().unwrap_or("").to_string();
    assert_eq!(c.domstate(&moved), "running", "{moved} runs on C");
    assert_ne!(a.domstate(&moved), "running", "{moved} left A");
    let there = Guest {
        host: c.name.clone(),
        uri: c.uri.clone(),
        name: moved.clone(),
    };
    let (p, q) = if moved == "p" {
        (&there, &q)
    } else {
        (&p, &there)
    };
    d.wait_until("both demands met", 240, || {
        assert_alive(&d, &[p, q]);
        p.stat().demand_mib >= 1000 && q.stat().demand_mib >= 1000
    });
    assert_eq!(p.stat().oom_kill + q.stat().oom_kill, 0);
    // Exactly one guest moved.
    assert_eq!(
        d.audit()
            .iter()
            .filter(|r| r["reason"]["reason"] == "migrate" && r["result"] == "applied")
            .count(),
        1
    );
}
