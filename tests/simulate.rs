//! `memscale simulate` as an operator runs it: on the shared sample trace, JSON output in the
//! documented shape, a report directory with its plots, and clear errors for bad input.

use std::path::PathBuf;
use std::process::Command;

fn memscale(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(args)
        .output()
        .expect("run memscale");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sample20() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces/bitbrains-rnd-2013-07-sample20.csv.gz");
    assert!(
        p.exists(),
        "CANNOT RUN: the shared trace {} is missing; CI keeps ../shared beside the clone",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn json_results_and_report_on_the_sample_trace() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.toml");
    let (code, out, err) = memscale(&[
        "simulate",
        "--trace",
        &sample20(),
        "--vms",
        "6",
        "--policy",
        policy,
        "--json",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let results = v["results"].as_array().expect("results");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    for want in [
        "default",
        "static",
        "oracle",
        "mom",
        "proxmox",
        "vpa",
        "autopilot",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in results {
        for key in [
            "reclaimed_pct",
            "oracle_pct",
            "pressure_time_pct",
            "pressure_events_per_vm_day",
            "shortfall_gib_h",
            "resizes_per_vm_day",
            "pressure_event_p50_s",
            "pressure_event_p99_s",
            "mean_allocation_pct",
            "mean_demand_pct",
            "decisions",
            "vms",
            "vm_days",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        // Host figures only in host mode.
        assert!(r.get("host_pressure_time_pct").is_none(), "{r}");
        let kind = r["kind"].as_str().unwrap_or("");
        assert!(kind == "policy" || kind == "baseline", "{r}");
        assert_eq!(r["envelope_violations"], 0, "{r}");
    }
    let by = |n: &str| {
        results
            .iter()
            .find(|r| r["name"] == n)
            .expect("result present")
    };
    assert_eq!(by("static")["reclaimed_pct"].as_f64(), Some(0.0));
    assert_eq!(by("oracle")["pressure_time_pct"].as_f64(), Some(0.0));
    assert_eq!(by("oracle")["oracle_pct"].as_f64(), Some(100.0));
    assert_eq!(by("default")["kind"], "policy");
    // The trace's defects and the rules applied travel with the results.
    assert_eq!(v["trace"]["vms"], 6);
    // Outside host mode each VM is its own group, not a host: no host count.
    assert!(v["hosts"].is_null(), "hosts: {}", v["hosts"]);
    assert!(v.get("host").is_none());
    assert_eq!(v["trace"]["defects"]["rows"], 161_432);
    assert!(v["trace"]["defects"]["zero_capacity_rows"].is_u64());
    assert!(
        v["trace"]["rules"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );

    let md = std::fs::read_to_string(report.join("report.md")).expect("report.md");
    assert!(md.contains("| default | policy |"), "{md}");
    assert!(md.contains("zero-capacity rows"));
    for svg in [
        "reclaimed-vs-pressure.svg",
        "pressure-events.svg",
        "timeline-1.svg",
    ] {
        let s = std::fs::read_to_string(report.join(svg)).expect(svg);
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(md.contains(svg), "report links {svg}");
    }
    let scatter = std::fs::read_to_string(report.join("reclaimed-vs-pressure.svg")).unwrap();
    assert!(scatter.contains("default") && scatter.contains("autopilot"));
}

#[test]
fn host_mode_reports_host_pressure() {
    let (code, out, err) = memscale(&[
        "simulate",
        "--trace",
        &sample20(),
        "--vms",
        "8",
        "--baseline",
        "mom",
        "--baseline",
        "proxmox",
        "--host-memory",
        "8GiB",
        "--overcommit",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(v["hosts"].as_u64() > Some(1), "{v}");
    for r in v["results"].as_array().expect("results") {
        assert!(r["host_pressure_time_pct"].is_number(), "{r}");
    }
    // Static at 2x overcommit overfills its hosts whenever every guest is present.
    let st = v["results"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "oracle"))
        .expect("oracle always runs");
    assert_eq!(st["pressure_time_pct"].as_f64(), Some(0.0));
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // Not a trace.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "vm,time\n1,2\n").unwrap();
    let (code, _, err) = memscale(&["simulate", "--trace", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{}:1: not a Bitbrains", bad.display())),
        "{err}"
    );
    // A missing file.
    let (code, _, err) = memscale(&["simulate", "--trace", "/nonexistent/t.csv"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/t.csv"), "{err}");
    // Rows that do not parse are skipped and counted, with their line.
    let holes = dir.path().join("holes.csv");
    let mut text = String::from("trace,vm,ts_s,mem_cap_kb,mem_use_kb\n");
    for i in 0..3000 {
        text.push_str(&format!("t,1,{},1048576,{}\n", i * 300, 100_000 + i));
    }
    text.push_str("t,1,notatime,1,1\n");
    std::fs::write(&holes, text).unwrap();
    let (code, out, err) = memscale(&[
        "simulate",
        "--trace",
        holes.to_str().unwrap(),
        "--baseline",
        "none",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["trace"]["defects"]["malformed_rows"], 1);
    let ex = v["trace"]["defects"]["malformed_examples"][0]
        .as_str()
        .unwrap_or("");
    assert!(ex.contains(":3002: ts_s"), "{ex}");
    // An unknown baseline, a bad unit, a broken policy.
    let (code, _, err) = memscale(&["simulate", "--trace", &sample20(), "--baseline", "squeezed"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown baseline \"squeezed\""), "{err}");
    let (code, _, err) = memscale(&["simulate", "--trace", &sample20(), "--interval", "5"]);
    assert_eq!(code, 2);
    assert!(err.contains("--interval"), "{err}");
    let p = dir.path().join("typo.toml");
    std::fs::write(
        &p,
        "[[policy]]\nname = \"x\"\n[policy.memory]\nheadrom = \"1GiB\"\n",
    )
    .unwrap();
    let (code, _, err) = memscale(&[
        "simulate",
        "--trace",
        &sample20(),
        "--policy",
        p.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:4:1: error", p.display())),
        "{err}"
    );
}

/// Issue 18's bar for a policy at floor 0% and 128 MiB/s: more reclaimed than every baseline,
/// and events per VM-day, shortfall and pressure time each no worse than VPA's and
/// Autopilot's. Returns the measures it fails, each with both figures.
fn fails_the_bar(results: &[serde_json::Value], name: &str) -> Vec<String> {
    let by = |n: &str| {
        results
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing from the results"))
    };
    let f = |r: &serde_json::Value, k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} of {} is not a number", r["name"]))
    };
    let c = by(name);
    let mut fails = Vec::new();
    for b in results
        .iter()
        .filter(|r| r["kind"] == "baseline" && r["name"] != "oracle")
    {
        let bn = b["name"].as_str().unwrap_or("?");
        if f(c, "reclaimed_pct") <= f(b, "reclaimed_pct") {
            fails.push(format!(
                "reclaimed_pct vs {bn}: {:.2} <= {:.2}",
                f(c, "reclaimed_pct"),
                f(b, "reclaimed_pct")
            ));
        }
        if bn != "vpa" && bn != "autopilot" {
            continue;
        }
        for k in [
            "pressure_events_per_vm_day",
            "shortfall_gib_h",
            "pressure_time_pct",
        ] {
            if f(c, k) > f(b, k) {
                fails.push(format!("{k} vs {bn}: {:.4} > {:.4}", f(c, k), f(b, k)));
            }
        }
    }
    fails
}

/// `memscale simulate` on the July sample at issue 18's setting (floor 0%, 128 MiB/s) with
/// these policy files and extra flags: its results.
fn at_issue_18s_setting(policies: &[&str], extra: &[&str]) -> Vec<serde_json::Value> {
    at_issue_18s_setting_json(policies, extra)["results"]
        .as_array()
        .expect("results")
        .clone()
}

/// The same run's whole JSON.
fn at_issue_18s_setting_json(policies: &[&str], extra: &[&str]) -> serde_json::Value {
    let trace = sample20();
    let mut args = vec![
        "simulate",
        "--trace",
        &trace,
        "--floor",
        "0%",
        "--grow-speed",
        "128MiB/s",
    ];
    for p in policies {
        args.extend(["--policy", p]);
    }
    args.extend(extra);
    args.extend(["--json", "--no-progress"]);
    let (code, out, err) = memscale(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("JSON on stdout")
}

/// Issue 18's domination claim, checked on the July sample (19 VMs, floor 0%, 128 MiB/s) for
/// the candidates in docs/simulation.md. None meets the whole bar yet: `day-peak` (the peak
/// kept 24 h) is no worse than VPA and Autopilot on every pressure measure and fails only on
/// reclaim against Autopilot (66.5% vs 74.0%); `recur-day-3h` (3 h peak, yesterday's need
/// grown to an hour ahead) reclaims more than the default with fewer events and less pressure
/// time, but has 7-8 times VPA's events; `two-day-young`, the closest (docs/simulation.md,
/// "where the events and the lost reclaim come from"), meets every pressure measure and is
/// 6.3 points of reclaim short of Autopilot. The test pins all three, so a candidate that
/// starts to meet the bar, or stops meeting what it met, shows here.
#[test]
fn candidates_against_issue_18s_bar_on_the_july_sample() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let default = format!("{dir}/default.toml");
    let day_peak = format!("{dir}/candidates/day-peak.toml");
    let recur = format!("{dir}/candidates/recur-day-3h.toml");
    let young = format!("{dir}/candidates/two-day-young.toml");
    let results = &at_issue_18s_setting(&[&default, &day_peak, &recur, &young], &[]);
    // day-peak fails the bar on one measure only: reclaim against Autopilot.
    let fails = fails_the_bar(results, "day-peak");
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert!(
        fails[0].starts_with("reclaimed_pct vs autopilot"),
        "{fails:?}"
    );
    // The recurring rule: more reclaimed than the default, fewer events, less pressure time.
    let by = |n: &str| results.iter().find(|r| r["name"] == n).expect(n);
    let (d, r) = (by("default"), by("recur-day-3h"));
    for (k, more) in [
        ("reclaimed_pct", true),
        ("pressure_events_per_vm_day", false),
        ("pressure_time_pct", false),
    ] {
        let (a, b) = (d[k].as_f64().expect(k), r[k].as_f64().expect(k));
        assert!(
            if more { b > a } else { b < a },
            "{k}: default {a}, recur-day-3h {b}"
        );
    }
    // And it does not meet the bar: events against VPA, and reclaim against Autopilot.
    let fails = fails_the_bar(results, "recur-day-3h");
    assert!(
        fails
            .iter()
            .any(|f| f.starts_with("pressure_events_per_vm_day vs vpa")),
        "{fails:?}"
    );
    // The closest candidate: two-day-young (a 48 h peak, a lean 128 MiB / 25% headroom, 512
    // MiB while a guest's peaks span less than the window) also fails on reclaim against
    // Autopilot only, by 5 to 7.5 points (6.3 when measured), and reclaims more than
    // day-peak.
    let fails = fails_the_bar(results, "two-day-young");
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert!(
        fails[0].starts_with("reclaimed_pct vs autopilot"),
        "{fails:?}"
    );
    let reclaimed = |n: &str| by(n)["reclaimed_pct"].as_f64().expect("reclaimed_pct");
    let gap = reclaimed("autopilot") - reclaimed("two-day-young");
    assert!(
        (5.0..7.5).contains(&gap),
        "two-day-young {gap:.2} points below Autopilot"
    );
    assert!(
        reclaimed("two-day-young") > reclaimed("day-peak"),
        "two-day-young {:.2}, day-peak {:.2}",
        reclaimed("two-day-young"),
        reclaimed("day-peak")
    );
}

/// The July sample at floor 0%, the default policy beside VPA, as JSON (with `extra` flags).
fn vpa_on_the_sample(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--baseline", "vpa"];
    args.extend_from_slice(extra);
    at_issue_18s_setting_json(&[], &args)
}

/// `--per-vm` gives each VM's figures and pressure events under each controller, and they add
/// up to the run's totals: the events listed are the events counted, each one began with
/// demand above the allocation, and the VMs' reclaim integrals give the run's reclaim.
#[test]
fn per_vm_figures_add_up_to_the_run() {
    let v = vpa_on_the_sample(&["--per-vm"]);
    let results = v["results"].as_array().expect("results");
    for r in results {
        let name = r["name"].as_str().expect("name");
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let vms = r["per_vm"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: per_vm"));
        assert_eq!(vms.len() as f64, f("vms"), "{name}");
        let (mut events, mut days, mut ceiling_gib_h, mut reclaimed_gib_h) = (0.0, 0.0, 0.0, 0.0);
        for vm in vms {
            let g = |k: &str| vm[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
            let list = vm["events"].as_array().expect("events");
            assert_eq!(list.len() as f64, g("pressure_events"), "{name} {vm}");
            for e in list {
                let b = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}"));
                assert!(b("demand") > b("alloc"), "{name}: {e}");
                assert!(b("demand") <= g("ceiling") as u64, "{name}: {e}");
            }
            events += g("pressure_events");
            days += g("vm_days");
            reclaimed_gib_h += g("reclaimed_gib_h");
            ceiling_gib_h += g("ceiling") / (1u64 << 30) as f64 * g("vm_days") * 24.0;
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(
            close(days, f("vm_days")),
            "{name}: {days} vs {}",
            f("vm_days")
        );
        assert!(
            close(events, f("pressure_events_per_vm_day") * f("vm_days")),
            "{name}: {events} events listed"
        );
        let pct = 100.0 * reclaimed_gib_h / ceiling_gib_h;
        assert!(
            (pct - f("reclaimed_pct")).abs() < 0.01,
            "{name}: {pct} vs {}",
            f("reclaimed_pct")
        );
    }
    // Without the flag the JSON has no per_vm (its size stays that of the totals).
    let v = vpa_on_the_sample(&[]);
    let results = v["results"].as_array().expect("results");
    assert!(
        results.iter().all(|r| r.get("per_vm").is_none()),
        "per_vm printed without --per-vm"
    );
}

/// Issue 18's bar against everything the planner's rules can reach on the July sample: a grid
/// of policies (the shipped default with its peak window 6 h, 24 h or 48 h, headroom 64 MiB to
/// 2 GiB and headroom share 10% or 50%), the shipped default and every candidate of
/// `policies/candidates/` (recurring demand, a decaying cushion, first-day headroom), each VM
/// then given, in hindsight, the one of them that is best for it (least allocation plus
/// lambda times its events, swept over lambda). No rule made of these policies, however it
/// chose per VM, could do better than that; it still reclaims less than Autopilot at VPA's
/// events per VM-day (docs/simulation.md, "How far the bar is"; `scripts/sim-frontier.sh`
/// runs the full 72-policy grid).
#[test]
fn no_per_vm_choice_of_the_planners_rules_reaches_the_bar_on_the_july_sample() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let default = std::fs::read_to_string(format!("{root}/policies/default.toml")).unwrap();
    let mut grid = String::new();
    for w in ["6h", "24h", "48h"] {
        for h in [64u64, 128, 256, 512, 1024, 2048] {
            for p in [10, 50] {
                for line in default.lines() {
                    let l = line.trim_start();
                    let key = l.split(" = ").next().unwrap_or("");
                    grid.push_str(&match key {
                        "name" => format!("name = \"pw{w}-h{h}-p{p}\""),
                        "peak_window" => format!("peak_window = \"{w}\""),
                        "headroom" => format!("headroom = \"{h}MiB\""),
                        "headroom_pct" => format!("headroom_pct = \"{p}%\""),
                        "min_free" => format!("min_free = \"{}MiB\"", h.min(96)),
                        _ => line.to_string(),
                    });
                    grid.push('\n');
                }
            }
        }
    }
    let grid_file = dir.path().join("grid.toml");
    std::fs::write(&grid_file, grid).unwrap();
    let results = &at_issue_18s_setting(
        &[
            grid_file.to_str().unwrap(),
            &format!("{root}/policies/default.toml"),
            &format!("{root}/policies/candidates"),
        ],
        &["--baseline", "vpa", "--baseline", "autopilot", "--per-vm"],
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let by = |n: &str| results.iter().find(|r| r["name"] == n).expect(n);
    let policies: Vec<&serde_json::Value> =
        results.iter().filter(|r| r["kind"] != "baseline").collect();
    assert_eq!(
        policies.len(),
        36 + 1 + 12,
        "the grid, the default and the candidates"
    );
    let reclaim_bar = f(by("autopilot"), "reclaimed_pct").max(f(by("vpa"), "reclaimed_pct"));
    let events_bar = f(by("vpa"), "pressure_events_per_vm_day")
        .min(f(by("autopilot"), "pressure_events_per_vm_day"));

    // Per VM: its ceiling-time (GiB·h), its days, and (allocation GiB·h, events) under each
    // policy.
    type Vm = (f64, f64, Vec<(f64, f64)>);
    let mut vms: std::collections::BTreeMap<String, Vm> = Default::default();
    for p in &policies {
        for vm in p["per_vm"].as_array().expect("per_vm") {
            let ceil = f(vm, "ceiling") / (1u64 << 30) as f64 * f(vm, "vm_days") * 24.0;
            let e = vms
                .entry(vm["vm"].as_str().expect("vm").to_string())
                .or_insert((ceil, f(vm, "vm_days"), Vec::new()));
            e.2.push((ceil - f(vm, "reclaimed_gib_h"), f(vm, "pressure_events")));
        }
    }
    assert!(vms.len() >= 19 && vms.values().all(|e| e.2.len() == policies.len()));
    let ceil: f64 = vms.values().map(|e| e.0).sum();
    let days: f64 = vms.values().map(|e| e.1).sum();
    // The lower-right hull of what per-VM choices reach: (reclaimed %, events per VM-day).
    let mut hull = Vec::new();
    let mut lam = 1e-3;
    while lam < 1e5 {
        let (mut alloc, mut events) = (0.0, 0.0);
        for e in vms.values() {
            let best =
                e.2.iter()
                    .min_by(|a, b| (a.0 + lam * a.1).total_cmp(&(b.0 + lam * b.1)))
                    .expect("a policy");
            alloc += best.0;
            events += best.1;
        }
        hull.push((100.0 * (1.0 - alloc / ceil), events / days));
        lam *= 1.15;
    }
    // The most reclaim at the bar's events: on the line between the hull's points around it.
    hull.sort_by(|a, b| a.1.total_cmp(&b.1));
    let at = |ev: f64| {
        hull.windows(2)
            .find(|w| w[0].1 <= ev && ev <= w[1].1)
            .map(|w| {
                if w[1].1 == w[0].1 {
                    w[0].0.max(w[1].0)
                } else {
                    w[0].0 + (w[1].0 - w[0].0) * (ev - w[0].1) / (w[1].1 - w[0].1)
                }
            })
            .unwrap_or_else(|| panic!("the hull does not span {ev} events per VM-day: {hull:?}"))
    };
    // Each policy on its own lies on or under the bound (the bound is one).
    for p in &policies {
        let (r, e) = (f(p, "reclaimed_pct"), f(p, "pressure_events_per_vm_day"));
        if e >= hull[0].1 && e <= hull[hull.len() - 1].1 {
            assert!(
                r <= at(e) + 0.05,
                "{} {r:.2}% at {e:.3} above the bound {:.2}",
                p["name"],
                at(e)
            );
        }
    }
    let best = at(events_bar);
    assert!(
        best < reclaim_bar - 2.0,
        "at {events_bar:.3} events per VM-day the best per-VM choice reclaims {best:.2}%, the bar {reclaim_bar:.2}%"
    );
}
