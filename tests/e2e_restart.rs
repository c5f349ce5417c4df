//! End-to-end: memscale SIGKILLed and started again. It adopts the sizes guests have now
//! (resets nothing), keeps pins and manual sizes (saved atomically when changed), and takes
//! the same decisions it would have taken had it not stopped: a guest held at its recent peak
//! is not shrunk because the new process forgot the peak. An unreadable state file is named,
//! set aside, and costs one save: the generation before it is restored, pins and all.

mod common;

use common::*;

const POLICY: &str = r#"
[[policy]]
name = "peaks"
[policy.memory]
headroom = "128MiB"
peak_window = "1h"
shrink_cooldown = "6s"
window = "10s"
shrink_interval = "2s"
shrink_rate = "256MiB/s"
"#;

fn resizes_since(d: &Daemon, guest: &str, t: f64) -> Vec<serde_json::Value> {
    d.audit()
        .into_iter()
        .filter(|r| {
            r["guest"] == guest
                && r["kind"] != "hold"
                && r["result"] == "applied"
                && r["time"].as_f64().unwrap_or(0.0) > t
        })
        .collect()
}

#[test]
fn a_killed_daemon_comes_back_with_its_pins_and_its_memory() {
    let h = Host::up("lrst", 40);
    let tokdir = tempfile::tempdir().expect("tempdir");
    let token = tokdir.path().join("token");
    std::fs::write(&token, "restart-token\n").expect("token");
    // "peaky" climbs to 600 MiB, then drops to 100: the policy keeps room for the last hour's
    // peak, so it is not shrunk afterwards. The climb is asked once the daemon sees the guest
    // (a climb set on the guest's own boot clock once ran ahead of the daemon on a loaded
    // machine, and its peak was never seen). (At 100 MiB/s a starved TCG guest on a loaded
    // machine could not online plugged memory in time and hung: seen in CI. The climb is
    // not what this test is about.)
    let peaky = h.guest(
        "peaky",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let pinme = h.guest(
        "pinme",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let manual = h.guest(
        "manual",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\napi_token_file = \"{}\"\n",
        token.display()
    );
    let mut d = Daemon::start(&[&h], &[("peaks.toml", POLICY)], &config, &[]);
    for g in [&peaky, &pinme, &manual] {
        g.wait_boot();
    }
    let tok = Some("restart-token");
    d.wait_until("every guest seen", 60, || {
        ["peaky", "pinme", "manual"].iter().all(|g| {
            d.get(&format!("/v1/guests/{g}"))
                .is_some_and(|v| v["state"] == "ok")
        })
    });
    let (code, body) = d
        .request("POST", "/v1/guests/pinme/pin", None, tok)
        .expect("pin");
    assert_eq!(code, 200, "{body}");
    let (code, body) = d
        .request(
            "POST",
            "/v1/guests/manual/adjust",
            Some("{\"memory_mib\": 896}"),
            tok,
        )
        .expect("adjust");
    assert_eq!(code, 202, "{body}");
    d.wait_until("manual at 896 MiB", 60, || manual.current_mib() == 896);
    // peaky's peak, seen and grown for; its drop; and a quiet spell at the size kept for the
    // peak.
    peaky.demand(600, 40);
    d.wait_until("peaky at its peak and grown for it", 120, || {
        peaky.stat().demand_mib >= 600 && peaky.current_mib() >= 600
    });
    peaky.demand(100, 40);
    d.wait_until("peaky's demand down again", 120, || {
        peaky.stat().demand_mib <= 100
    });
    let mut quiet_since = now();
    d.wait_until("peaky steady for 15 s at its peak size", 120, || {
        if !resizes_since(&d, "peaky", quiet_since).is_empty() {
            quiet_since = now();
        }
        now() - quiet_since >= 15.0
    });
    let before: Vec<u64> = [&peaky, &pinme, &manual]
        .iter()
        .map(|g| g.current_mib())
        .collect();
    assert!(
        before[0] >= 600,
        "peaky holds room for its peak: {before:?}"
    );
    // The state file is there, whole, with the pins.
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.dir.path().join("state/state.json")).expect("state file"),
    )
    .expect("state file is JSON");
    assert!(
        st["pins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "pinme") && p.iter().any(|x| x == "manual")),
        "{st}"
    );

    // SIGKILL: nothing is saved on the way out.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let killed = now();
    d.kill_and_restart();
    d.wait_until("the guests known again", 30, || {
        d.get("/v1/guests/peaky")
            .is_some_and(|g| g["state"] == "ok")
    });
    assert!(d.log_text().contains("state restored"));
    assert!(
        d.log_text().contains("planner memory restored"),
        "{}",
        tail(&d.log_text(), 30)
    );
    for g in ["pinme", "manual"] {
        let v = d.get(&format!("/v1/guests/{g}")).expect("guest");
        assert_eq!(v["pinned"], true, "{g} still pinned: {v}");
    }
    // Sizes adopted, nothing reset; and for 25 s the same decisions as before the kill: peaky
    // is kept at its peak size (a daemon that forgot the peak would shrink it within seconds).
    let t = std::time::Instant::now();
    d.wait_until("25 s after the restart", 60, || {
        assert!(
            resizes_since(&d, "peaky", killed).is_empty(),
            "peaky resized after the restart: {:?}",
            resizes_since(&d, "peaky", killed)
        );
        t.elapsed().as_secs() >= 25
    });
    let after: Vec<u64> = [&peaky, &pinme, &manual]
        .iter()
        .map(|g| g.current_mib())
        .collect();
    assert_eq!(after, before, "sizes after the restart");
    for g in ["pinme", "manual"] {
        assert!(resizes_since(&d, g, killed).is_empty(), "{g} untouched");
    }

    // An unreadable state file: named in the log, set aside, and the daemon runs on; guests
    // keep their sizes.
    d.kill();
    std::fs::write(
        d.dir.path().join("state/state.json"),
        "{\"version\": 1, \"pins\": [",
    )
    .expect("write");
    d.restart();
    d.wait_until("the daemon running again", 30, || {
        d.get("/v1/guests/peaky").is_some()
    });
    let log = d.log_text();
    assert!(log.contains("saved state unreadable"), "{}", tail(&log, 20));
    assert!(d.dir.path().join("state/state.json.bad").exists());
    let again: Vec<u64> = [&peaky, &pinme, &manual]
        .iter()
        .map(|g| g.current_mib())
        .collect();
    assert_eq!(again, before);
    for g in [&peaky, &pinme, &manual] {
        assert!(g.oom().is_none(), "{} OOM", g.name);
    }
}

/// Issue 16 item 5: a state file cut short (a failing or full disk) cost every pin, and the
/// pinned guest went back to autoscaling. Each save keeps the file it replaces as
/// `state.json.1`; the restart finds `state.json` broken, says so loudly, sets it aside and
/// restores the generation before: the guest is still pinned.
#[test]
fn a_truncated_state_file_keeps_the_pins_of_the_generation_before() {
    let h = Host::up("lgen", 147);
    let tokdir = tempfile::tempdir().expect("tempdir");
    let token = tokdir.path().join("token");
    std::fs::write(&token, "gen-token\n").expect("token");
    let g = h.guest(
        "pinned",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\napi_token_file = \"{}\"\n",
        token.display()
    );
    let mut d = Daemon::start(&[&h], &[("peaks.toml", POLICY)], &config, &[]);
    g.wait_boot();
    d.wait_until("the guest seen", 60, || {
        d.guest("pinned").is_some_and(|v| v["state"] == "ok")
    });
    let (code, body) = d
        .request("POST", "/v1/guests/pinned/pin", None, Some("gen-token"))
        .expect("pin");
    assert_eq!(code, 200, "{body}");
    // The pin is saved at once in state.json, and by the next save (within 5 s) in the
    // generation kept behind it too.
    let state = d.dir.path().join("state");
    let pinned_in = |f: &str| {
        std::fs::read(state.join(f))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|st| {
                st["pins"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x == "pinned"))
            })
    };
    d.wait_until("the pin in both generations", 30, || {
        pinned_in("state.json") && pinned_in("state.json.1")
    });

    // SIGKILL, and the current file found cut in half at the restart.
    d.kill();
    let size = g.current_mib();
    let path = state.join("state.json");
    let whole = std::fs::read(&path).expect("state file");
    let cut = &whole[..whole.len() / 2];
    std::fs::write(&path, cut).expect("truncate");
    let restarted = now();
    d.restart();
    d.wait_until("the guest decided on again", 30, || {
        d.guest("pinned")
            .is_some_and(|v| v["state"] != "starting" && v["state"].is_string())
    });
    let v = d.guest("pinned").expect("guest");
    assert!(
        v["pinned"] == true && v["state"] == "pinned",
        "still pinned after the restart: {v}\n{}",
        tail(&d.log_text(), 30)
    );
    // Loudly: an error naming both files and what was wrong, and the metrics.
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("saved state unreadable: restored the previous generation"))
        .unwrap_or_else(|| panic!("no error line:\n{}", tail(&log, 30)));
    assert!(
        line.contains("ERROR")
            && line.contains(&format!("{}:", path.display()))
            && line.contains("truncated")
            && line.contains(&state.join("state.json.1").display().to_string()),
        "{line}"
    );
    let (code, metrics) = d.request("GET", "/metrics", None, None).expect("metrics");
    assert_eq!(code, 200);
    for want in [
        "memscale_state_restored_from{generation=\"previous\"} 1",
        "memscale_state_restored_from{generation=\"current\"} 0",
        "memscale_state_unreadable_files 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    // The broken file is kept aside as it was found, and the next saves go on from the
    // generation restored, the pin in both again.
    assert_eq!(
        std::fs::read(state.join("state.json.bad")).expect("set aside"),
        cut
    );
    d.wait_until("the pin saved again in both generations", 30, || {
        pinned_in("state.json") && pinned_in("state.json.1")
    });
    // Held where it was: nothing resized it since the restart.
    d.wait_until("10 s after the restart", 30, || now() - restarted >= 10.0);
    assert!(
        resizes_since(&d, "pinned", restarted).is_empty(),
        "{:?}",
        resizes_since(&d, "pinned", restarted)
    );
    assert_eq!(g.current_mib(), size);
    assert!(g.oom().is_none(), "OOM");
}
