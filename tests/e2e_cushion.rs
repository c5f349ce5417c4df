//! End-to-end: what the shipped default policy's `peak_window` means for an operator, on real
//! guests, and the daemon doing what `memscale simulate` predicts for the same policy (issue
//! 18). The policy is `policies/default.toml` as shipped, with its peak window cut from 6 h to
//! 3 minutes and its idle window from 60 s to 20 s, so that a run takes minutes.
//!
//! - An idle guest after a spike keeps its cushion (its size near its peak plus headroom)
//!   while the host has room; when another guest's climb makes the host short, the cushion is
//!   given back first (before the climber's headroom), never below the idle guest's use, and
//!   the audit and the API say why.
//! - A step, then the same step again inside the peak window: the replay of that demand
//!   (`memscale simulate --json`, and the library for its timeline) predicts a growth on the
//!   first step, the size kept in between and the repeat met with no growth; the daemon on a
//!   real guest shows the same.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// MemAvailable the policy keeps at the least (`min_free` of the shipped default).
const MIN_FREE_MIB: u64 = 96;

/// The shipped default policy, named `cushion`, with a 3-minute peak window and shorter idle
/// waits: every other knob as shipped.
fn policy() -> String {
    let shipped = include_str!("../policies/default.toml");
    let edits = [
        ("name", "\"cushion\""),
        ("window", "\"20s\""),
        ("peak_window", "\"180s\""),
        ("shrink_cooldown", "\"10s\""),
    ];
    let mut done = vec![false; edits.len()];
    let mut out = String::new();
    for line in shipped.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match edits.iter().position(|(k, _)| Some(*k) == key) {
            Some(i) => {
                done[i] = true;
                out.push_str(&format!("{} = {}\n", edits[i].0, edits[i].1));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (k, _)) in edits.iter().enumerate() {
        assert!(
            done[i],
            "policies/default.toml has no `{k} = ...` line to edit"
        );
    }
    out
}

fn config(h: &Host, capacity_mib: u64) -> String {
    format!(
        "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
         [[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"{capacity_mib}MiB\"\nreserve = \"256MiB\"\n",
        h.name, h.uri
    )
}

fn guest(h: &Host, name: &str) -> Guest {
    h.guest(
        name,
        &["--mem", "512", "--vmem", "1536", "--stats-period", "1"],
    )
}

/// What the planner reads as the guest's need now: its size less its MemAvailable.
fn need_mib(g: &Guest) -> u64 {
    g.current_mib().saturating_sub(g.stat().memavail_kib / 1024)
}

fn assert_alive(d: &Daemon, gs: &[&Guest]) {
    for g in gs {
        assert!(
            g.oom().is_none(),
            "{}: {:?}\n{}",
            g.name,
            g.oom(),
            tail(&d.log_text(), 40)
        );
    }
}

fn wait_planned(d: &Daemon, names: &[&str]) {
    d.wait_until("the guests planned", 90, || {
        names
            .iter()
            .all(|n| d.guest(n).is_some_and(|v| v["state"] == "ok"))
    });
}

/// What the policy's 3-minute peak window means on a host: spiky climbs to 900 MiB and goes
/// idle; it keeps room for that peak while the host has room, well past the time the idle
/// window alone would have given it back. Then late climbs as high on a host whose 1900 MiB
/// cannot hold both late's need plus headroom and spiky's cushion: the cushion goes, all of
/// it, before any of late's headroom would (spiky back at its 512 MiB floor, above its use).
#[test]
fn an_idle_guest_keeps_its_cushion_while_the_host_has_room_and_gives_it_back_first() {
    let started = Instant::now();
    let h = Host::up("lcush", 191);
    let spiky = guest(&h, "spiky");
    let late = guest(&h, "late");
    // 2156 MiB less a 256 MiB reserve: 1900 MiB for the guests.
    let d = Daemon::start(&[], &[("cushion.toml", &policy())], &config(&h, 2156), &[]);
    spiky.wait_boot();
    late.wait_boot();
    wait_planned(&d, &["spiky", "late"]);
    let idle_use = need_mib(&spiky);
    spiky.demand(900, 60);
    d.wait_until("spiky to hold 900 MiB", 120, || {
        assert_alive(&d, &[&spiky]);
        spiky.stat().demand_mib >= 900
    });
    std::thread::sleep(Duration::from_secs(4));
    let grown = spiky.current_mib();
    spiky.demand(0, 0);
    let idle = Instant::now();
    // Past the 20 s idle window and its shrink (the idle window alone takes spiky to its
    // floor by then): the size holds at the peak plus headroom, tick after tick.
    std::thread::sleep(Duration::from_secs(30));
    let mut kept = Vec::new();
    while idle.elapsed() < Duration::from_secs(45) {
        kept.push(spiky.current_mib());
        std::thread::sleep(Duration::from_secs(1));
    }
    let peak_need = 900 + idle_use;
    assert!(
        kept.len() >= 8 && kept.iter().all(|&k| k >= peak_need),
        "spiky (grown to {grown} MiB for a need of {peak_need}) did not keep its cushion: {kept:?}"
    );
    assert_eq!(spiky.stat().demand_mib, 0, "spiky is idle");
    let cushion = *kept.last().unwrap_or(&0);
    // Late climbs: the host is short.
    late.demand(900, 60);
    d.wait_until(
        "late to hold 900 MiB and spiky's cushion given back",
        150,
        || {
            assert_alive(&d, &[&spiky, &late]);
            late.stat().demand_mib >= 900 && spiky.current_mib() <= 512 + 16
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let (s, l) = (spiky.current_mib(), late.current_mib());
    eprintln!(
        "spiky {grown} -> {cushion} -> {s} MiB; late {l} MiB; test {} s",
        started.elapsed().as_secs()
    );
    assert!((512..=512 + 16).contains(&s), "spiky {s} MiB");
    assert!(s + l <= 1900 + 16, "the host's share holds: {s} + {l} MiB");
    // Late has its need (use plus min_free) and all the host had left.
    let late_need = 900 + idle_use + MIN_FREE_MIB;
    assert!(l >= late_need, "late {l} MiB, below its need {late_need}");
    // Shared as equals with late's headroom, the cushion went over many ticks and not all
    // of it (seen: spiky 540 MiB, late 1310 MiB).
    assert!(
        l + 512 + 24 >= 1900,
        "late {l} MiB: not all the cushion went to it"
    );
    assert!(late.stat().memavail_kib / 1024 >= MIN_FREE_MIB);
    assert_eq!(late.stat().oom_kill + spiky.stat().oom_kill, 0);
    let records = d.audit();
    let given: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["guest"] == "spiky"
                && r["kind"] == "shrink"
                && r["reason"]["reason"] == "host-share"
                && r["reason"]["took"] == "cushion"
        })
        .collect();
    assert!(
        given.iter().any(|r| r["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("cushion given back for the host"))),
        "no audit record says spiky's cushion went to the host: {:#?}",
        records
            .iter()
            .filter(|r| r["guest"] == "spiky")
            .collect::<Vec<_>>()
    );
    // Only once late climbed: none while the host had room.
    let first = given
        .iter()
        .filter_map(|r| r["time"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let climb = now() - idle.elapsed().as_secs_f64() + 45.0;
    assert!(
        first >= climb - 2.0,
        "cushion given back before late climbed"
    );
    // Never below its use, whatever the reason.
    for r in records.iter().filter(|r| r["guest"] == "spiky") {
        let used = bytes(&r["inputs"]["total"]).saturating_sub(bytes(&r["inputs"]["available"]));
        assert!(
            bytes(&r["after"]) >= used.min(bytes(&r["before"])),
            "spiky cut below its use: {r}"
        );
    }
    // The API says it too (the guest's recent decisions).
    let status = d.guest("spiky").expect("spiky's status");
    assert!(
        status["decisions"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|r| r["reason"]["took"] == "cushion")),
        "{status}"
    );
    assert!(assert_resizes_inside_envelope(&records) >= 3);
}

/// One VM of a Bitbrains-format trace: (seconds, need MiB) points every second, 2 GiB ceiling.
fn write_trace(path: &std::path::Path, points: &[(u64, u64)]) {
    let mut s = String::from("trace,vm,ts_s,mem_cap_kb,mem_use_kb\n");
    for (t, mib) in points {
        s.push_str(&format!(
            "cushion,1,{},{},{}\n",
            1_700_000_000 + t,
            2048 * 1024,
            mib * 1024
        ));
    }
    std::fs::write(path, s).expect("write trace");
}

/// What the replay predicts for one phase of the demand.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    growths: usize,
    /// Lowest allocation, and lowest allocation less demand (MemAvailable), MiB.
    min_alloc: u64,
    min_available: u64,
}

/// The simulator's timeline cut into phases at `bounds` (seconds from the trace's start).
fn phases(points: &[memscale::sim::TimelinePoint], bounds: &[(u64, u64)]) -> Vec<Phase> {
    let mib = |b: u64| b / (1024 * 1024);
    bounds
        .iter()
        .map(|&(a, b)| {
            let mut p = Phase {
                min_alloc: u64::MAX,
                min_available: u64::MAX,
                ..Phase::default()
            };
            // The state in force at `a`, then every change up to `b`.
            let from = points.partition_point(|x| x.t <= a as f64).max(1) - 1;
            let mut prev = points[from].alloc;
            for x in points[from..].iter().take_while(|x| x.t < b as f64) {
                if x.alloc > prev {
                    p.growths += 1;
                }
                prev = x.alloc;
                p.min_alloc = p.min_alloc.min(mib(x.alloc));
                p.min_available = p.min_available.min(mib(x.alloc.saturating_sub(x.demand)));
            }
            p
        })
        .collect()
}

/// The replay of `trace` under `policy` through the library (`memscale simulate`'s own run),
/// with the VM's timeline, at the daemon's one-second tick and the shipped model otherwise.
fn replay(trace: &std::path::Path, policy: &memscale::policy::Policy) -> memscale::sim::RunResult {
    use memscale::sim::{Model, Options, Spec};
    let t = memscale::trace::read_path(
        trace,
        &memscale::trace::ReadOptions {
            min_span: 0.0,
            max_vms: 0,
        },
    )
    .expect("the trace reads");
    let opts = Options {
        model: Model {
            interval: 1.0,
            ..Model::default()
        },
        timeline_vms: t.vms.iter().map(|v| v.key.clone()).collect(),
        timeline_span: f64::INFINITY,
        ..Options::default()
    };
    let progress = std::sync::atomic::AtomicU64::new(0);
    let mut r = memscale::sim::run(
        &t,
        &[Spec::Policy(Box::new(policy.clone()))],
        &opts,
        &progress,
    );
    r.remove(0)
}

/// The daemon runs the policy the replay predicts: a step to a 440 MiB need, idle for 40 s
/// (twice the idle window: without the peak window the guest would shrink), then the same
/// step again, inside the peak window. The replay predicts a growth on the first step, the
/// size kept in between, and the repeat met from the kept room with no growth (MemAvailable
/// never below the grow threshold). The daemon on a real guest, with the same policy file
/// and the same demand: grown on the first step, the size kept, no growth while idle, and
/// on the repeat MemAvailable never below the grow threshold and no growth for a shortage.
///
/// Not bytes but shapes are compared: the trace's demand is the guest's need (its size less
/// MemAvailable), and the trace's step is instant where the guest fills its memory over a few
/// seconds; the daemon may grow a guest climbing that way ahead of its climb (the planner's
/// trend), which an instant step never shows. A ramp in the trace is no closer: the modelled
/// guest's memory lands whole at the end of a resize, so a guest climbing while its growth
/// lands is asked again and again (`still-short`) and overshoots, where a real guest's
/// memory comes online block by block.
#[test]
fn the_daemon_meets_a_repeated_step_as_the_replay_predicts() {
    let started = Instant::now();
    let h = Host::up("lcushr", 192);
    let g = guest(&h, "rep");
    g.wait_boot();
    // The need a step reaches: the headroom stays the policy's 256 MiB (half of a need up to
    // 512 MiB is less), so the guest is grown on the first step (at its 512 MiB floor it
    // would have less than 60% of that free) and, kept at the peak plus 256 MiB after it, is
    // not on the repeat. 60% of the headroom: the grow threshold.
    const STEP: u64 = 440;
    const THRESHOLD: u64 = 256 * 6 / 10;
    std::thread::sleep(Duration::from_secs(3));
    let idle_use = need_mib(&g);
    assert!(
        idle_use < STEP - 200,
        "the idle guest already needs {idle_use} MiB"
    );
    let eat = STEP - idle_use;
    let (hold, gap) = (22u64, 40u64);
    let text = policy();
    // The daemon warms up (first reports, its windows) while the replay runs.
    let d = Daemon::start(&[], &[("cushion.toml", &text)], &config(&h, 8192), &[]);
    let booted = started.elapsed().as_secs();

    // The replay. Demand in the trace is the guest's need (the simulator's guest reports
    // MemAvailable = allocation − demand): idle, STEP for `hold` seconds, idle for `gap`,
    // STEP again. 2 GiB ceiling and a 25% floor, as the guest's 512 MiB of boot memory and
    // 1.5 GiB of virtio-mem. The modelled guest starts at its ceiling: two idle minutes take
    // it to its floor first, where the real one is.
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("repeat.csv");
    let lead = 120u64;
    let (t1, t2) = (lead, lead + hold + gap);
    let end = t2 + hold + 20;
    let busy = |t: u64| (t1..t1 + hold).contains(&t) || (t2..t2 + hold).contains(&t);
    let points: Vec<(u64, u64)> = (0..=end)
        .map(|t| (t, if busy(t) { STEP } else { idle_use }))
        .collect();
    write_trace(&trace, &points);
    let pfile = dir.path().join("cushion.toml");
    std::fs::write(&pfile, &text).expect("write policy");
    // The operator's command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(["simulate", "--trace"])
        .arg(&trace)
        .arg("--policy")
        .arg(&pfile)
        .args([
            "--baseline",
            "none",
            "--min-days",
            "0",
            "--interval",
            "1s",
            "--json",
            "--no-progress",
        ])
        .output()
        .expect("memscale simulate");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("simulate --json");
    let ours = json["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "cushion"))
        .cloned()
        .unwrap_or_else(|| panic!("no result for the policy: {json}"));
    let days = ours["vm_days"].as_f64().unwrap_or(0.0);
    let events = (ours["pressure_events_per_vm_day"].as_f64().unwrap_or(0.0) * days).round();
    assert_eq!(
        events, 0.0,
        "the replay predicts demand above allocation: {ours}"
    );
    assert_eq!(ours["envelope_violations"], 0);
    // Its timeline, phase by phase (the same run, through the library).
    let (ps, diags) = memscale::policy::parse_policy_text("cushion.toml", &text);
    assert!(diags.is_empty(), "{diags:?}");
    let r = replay(&trace, &ps[0]);
    assert_eq!(
        r.resizes_per_vm_day,
        ours["resizes_per_vm_day"].as_f64().unwrap_or(-1.0),
        "the library and the command disagree"
    );
    let bounds = [(t1, t1 + hold), (t1 + hold, t2), (t2, t2 + hold)];
    let sim = phases(&r.timelines[0].points, &bounds);
    eprintln!("replay: {sim:?}");
    assert!(
        sim[0].growths >= 1,
        "the replay grows on the first step: {sim:?}"
    );
    assert!(
        sim[1].min_alloc >= STEP + 128,
        "the replay keeps the size: {sim:?}"
    );
    assert_eq!(sim[1].growths + sim[2].growths, 0, "{sim:?}");
    assert!(sim[2].min_available >= THRESHOLD, "{sim:?}");
    // Without the peak window the same replay gives the room back in between and grows on
    // the repeat, short: what the daemon is compared with is the window's doing.
    let mut plain = ps[0].clone();
    plain.knobs.peak_window = memscale::units::Dur::secs(0);
    let p = phases(&replay(&trace, &plain).timelines[0].points, &bounds);
    assert!(
        p[1].min_alloc < STEP + 128 && p[2].growths >= 1 && p[2].min_available < THRESHOLD,
        "without a peak window: {p:?}"
    );

    // The daemon, on the real guest, with the same policy file and demand.
    wait_planned(&d, &["rep"]);
    std::thread::sleep(Duration::from_secs(3));
    // Each phase: (lowest size, lowest MemAvailable), MiB, polled twice a second.
    let watch = |secs: u64| {
        let t0 = Instant::now();
        let (mut size, mut avail) = (u64::MAX, u64::MAX);
        while t0.elapsed() < Duration::from_secs(secs) {
            assert_alive(&d, &[&g]);
            size = size.min(g.current_mib());
            avail = avail.min(g.stat().memavail_kib / 1024);
            std::thread::sleep(Duration::from_millis(500));
        }
        (size, avail)
    };
    let s1 = now();
    g.demand(eat, 0);
    let first = watch(hold);
    let s2 = now();
    g.demand(0, 0);
    let between = watch(gap);
    let s3 = now();
    g.demand(eat, 0);
    let repeat = watch(hold);
    let s4 = now();
    let records = d.audit();
    let grows = |a: f64, b: f64| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| {
                r["guest"] == "rep"
                    && r["kind"] == "grow"
                    && r["result"] == "applied"
                    && r["time"].as_f64().is_some_and(|t| t >= a && t < b)
            })
            .collect()
    };
    let grown = [grows(s1, s2), grows(s2, s3), grows(s3, s4)];
    let show = |rs: &[&Value]| -> Vec<String> {
        rs.iter()
            .map(|r| {
                format!(
                    "{} MiB at MemAvailable {} MiB: {}",
                    mib(&r["after"]),
                    mib(&r["inputs"]["available"]),
                    r["why"]
                )
            })
            .collect()
    };
    eprintln!(
        "daemon: booted in {booted} s; first step {first:?}, between {between:?}, repeat \
         {repeat:?} (lowest size, MemAvailable MiB); growths {:?} / {:?} / {:?}; test {} s",
        show(&grown[0]),
        show(&grown[1]),
        show(&grown[2]),
        started.elapsed().as_secs()
    );
    // As predicted: grown on the first step...
    assert!(!grown[0].is_empty(), "not grown on the first step");
    // ...the size kept in between (a shrink gives back at most what a growth on the trend
    // put past the peak plus headroom), no growth...
    assert!(
        between.0 >= STEP + 128,
        "kept {} MiB, replay {} MiB",
        between.0,
        sim[1].min_alloc
    );
    assert!(
        grown[1].is_empty(),
        "grown while idle: {:?}",
        show(&grown[1])
    );
    // ...and the repeat met from the kept room: MemAvailable never below the grow threshold,
    // and no growth for a shortage (one ahead of the guest's climb, on its trend, may come).
    assert!(
        repeat.1 >= THRESHOLD,
        "MemAvailable fell to {} MiB on the repeat",
        repeat.1
    );
    let short: Vec<&Value> = grown[2]
        .iter()
        .copied()
        .filter(|r| mib(&r["inputs"]["available"]) < THRESHOLD)
        .collect();
    assert!(
        short.is_empty(),
        "grown short on the repeat: {:?}",
        show(&short)
    );
    assert_eq!(g.stat().oom_kill, 0);
    assert!(assert_resizes_inside_envelope(&records) >= 1);
}
