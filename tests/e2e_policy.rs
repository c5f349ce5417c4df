//! End-to-end: policies reload live in a running daemon on the real test bed, on save and on
//! SIGHUP; a broken save keeps the previous set in force (and the daemon resizing), and fixing
//! it recovers.

mod common;

use common::*;

fn policy(max: Option<&str>, headroom: &str, typo: bool) -> String {
    let key = if typo { "headrom" } else { "headroom" };
    let max = max.map(|m| format!("max = \"{m}\"\n")).unwrap_or_default();
    format!(
        "[[policy]]\nname = \"live\"\n[policy.match]\nnames = [\"*\"]\n[policy.memory]\n{key} = \"{headroom}\"\n{max}shrink_cooldown = \"8s\"\nwindow = \"12s\"\n"
    )
}

fn generation(d: &Daemon) -> u64 {
    d.get("/v1/status")
        .and_then(|s| s["policies"]["generation"].as_u64())
        .unwrap_or(0)
}

fn save(d: &Daemon, text: &str) {
    // Write then rename, as editors do: the watcher must see a whole file.
    let p = d.policy_dir().join("live.toml");
    let tmp = d.policy_dir().join(".live.toml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &p).expect("rename");
}

#[test]
fn policies_reload_live_and_bad_edits_keep_the_old_set() {
    let h = Host::up("lpol", 26);
    let g = h.guest(
        "rl",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    g.wait_boot();
    let d = Daemon::start(
        &[&h],
        &[("live.toml", &policy(Some("640MiB"), "192MiB", false))],
        "interval = \"1s\"\n",
        &[],
    );
    assert_eq!(generation(&d), 1);
    g.demand(420, 40);
    d.wait_until("growth capped at the policy's max", 90, || {
        d.guest("rl").is_some_and(|v| {
            mib(&v["envelope"]["ceiling"]) == 640
                && v["why"].as_str().unwrap_or("").contains("at ceiling")
        })
    });
    assert!(g.current_mib() <= 640);

    // a saved edit lifts the cap
    save(&d, &policy(Some("1GiB"), "192MiB", false));
    d.wait_until("reload on save", 10, || generation(&d) == 2);
    d.wait_until("growth past the old cap", 60, || g.current_mib() > 640);

    // a broken edit: refused, reported, the previous set stays and keeps resizing
    save(&d, &policy(Some("1GiB"), "256MiB", true));
    d.wait_until("the broken edit to be reported", 10, || {
        d.get("/v1/status").is_some_and(|s| {
            s["policies"]["errors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|x| x.as_str().unwrap_or("").contains("unknown key \"headrom\""))
            })
        })
    });
    assert_eq!(generation(&d), 2, "previous set still in force");
    let metrics = d.request("GET", "/metrics", None, None).expect("metrics").1;
    assert!(
        metrics.contains("memscale_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let before = g.current_mib();
    g.demand(650, 40);
    d.wait_until("still resizing under the old set", 90, || {
        g.current_mib() > before + 100
    });
    assert!(d.guest("rl").is_some_and(|v| v["policy"] == "live"));

    // fixing it recovers
    save(&d, &policy(Some("1GiB"), "256MiB", false));
    d.wait_until("reload of the fixed file", 10, || generation(&d) == 3);
    let st = d.get("/v1/status").expect("status");
    assert!(
        st["policies"]["errors"]
            .as_array()
            .is_some_and(|e| e.is_empty()),
        "{st}"
    );

    // SIGHUP reloads too
    d.signal(libc::SIGHUP);
    d.wait_until("reload on SIGHUP", 10, || generation(&d) == 4);
    assert!(
        d.log_text().contains("trigger=\"SIGHUP\"") || d.log_text().contains("trigger=SIGHUP"),
        "{}",
        tail(&d.log_text(), 20)
    );
    // a config edit cannot change live: SIGHUP says so instead of pretending
    std::fs::write(d.dir.path().join("memscale.toml"), "interval = \"2s\"\n")
        .expect("write config");
    d.signal(libc::SIGHUP);
    d.wait_until("the config edit refused with a message", 10, || {
        d.get("/v1/status").is_some_and(|s| {
            s["policies"]["config_refused"].as_array().is_some_and(|e| {
                e.iter().any(|x| {
                    x.as_str()
                        .unwrap_or("")
                        .contains("interval changed; it cannot change live")
                })
            })
        })
    });
    assert!(g.oom().is_none());
    assert!(assert_resizes_inside_envelope(&d.audit()) >= 2);
}

/// `--dry-run`, and `dry_run = true` in a policy, decide and audit but never resize.
#[test]
fn dry_run_decides_but_never_resizes() {
    let h = Host::up("ldry", 27);
    let a = h.guest(
        "dry1",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let b = h.guest(
        "dry2",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    a.wait_boot();
    b.wait_boot();
    // dry2 only by its policy; the daemon itself is live
    let pol = "[[policy]]\nname = \"watch-only\"\npriority = 5\ndry_run = true\n[policy.match]\nnames = [\"dry2\"]\n[policy.memory]\nheadroom = \"192MiB\"\n";
    let live = Daemon::start(&[&h], &[("w.toml", pol)], "interval = \"1s\"\n", &[]);
    a.demand(380, 40);
    b.demand(380, 40);
    live.wait_until("dry1 grown for real", 90, || a.current_mib() > 600);
    live.wait_until("dry2's growth decided", 60, || {
        live.audit()
            .iter()
            .any(|r| r["guest"] == "dry2" && r["kind"] == "grow" && r["result"] == "dry-run")
    });
    assert_eq!(b.current_mib(), 512, "a dry-run policy never resizes");
    assert_eq!(b.vmem_requested_mib(), 0);
    live.wait_until("dry1 settled", 60, || {
        live.guest("dry1")
            .is_some_and(|v| v["state"] == "ok" && v["current"] == v["target"])
    });
    drop(live);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // the whole daemon in dry-run: nothing moves, decisions are still made and audited
    let before = a.current_mib();
    a.demand(700, 40);
    let dry = Daemon::start(&[&h], &[], "interval = \"1s\"\n", &["--dry-run"]);
    dry.wait_until("a dry-run growth decision", 90, || {
        dry.audit()
            .iter()
            .any(|r| r["guest"] == "dry1" && r["kind"] == "grow" && r["dry_run"] == true)
    });
    assert!(dry.get("/v1/status").is_some_and(|s| s["dry_run"] == true));
    assert_eq!(a.current_mib(), before, "nothing resized");
    assert!(dry.audit().iter().all(|r| r["result"] != "applied"));
}
