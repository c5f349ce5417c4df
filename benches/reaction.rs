//! Reaction time and cost on real guests (the test bed: a private libvirtd, real QEMU guests
//! with real virtio-balloon and virtio-mem drivers), with the release daemon. Needs root.
//!
//!   cargo bench --bench reaction                          # steps, periods 1, 2, 5 s; 3 repeats
//!   cargo bench --bench reaction -- --periods 2 --repeats 5
//!   cargo bench --bench reaction -- --real-cost 10        # daemon CPU and RSS over 10 real guests
//!
//! A step: the guest holds 300 MiB and has been sized to it; its demand generator is told to
//! hold `step` MiB more, at once (then +1024 on top of +256). Timed from
//! the command: the first grow decision (audit), the allocation covering what the guest used
//! before plus the step (the hypervisor's `balloon.current`, polled every 200 ms), and the
//! guest holding all of it with its MemAvailable back above the policy's grow threshold (its
//! console, once a second). Two guests are stepped side by side: one grown by the balloon
//! (boots with 2 GiB, defined at 512 MiB), one by virtio-mem (512 MiB plus 2 GiB of virtio-mem).
//! Growth uses the shipped default policy's knobs; shrinking back between repeats is made
//! quick (a short window, fast shrink) so the runs fit in minutes; it does not affect growth.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Daemon, Guest, Host, now};
use std::time::{Duration, Instant};

/// What each guest holds before the first step, MiB.
const BASE: u64 = 300;
/// How fast a step arrives, MiB/s (`--rate`). An instant +1 GiB (as fast as the guest can
/// write) outruns any reactive loop: the guest is out of memory within a second, before its
/// first report (seen: "System is deadlocked on memory").
const RATE: u64 = 128;

const POLICY: &str = r#"
[[policy]]
name = "bench"
[policy.match]
names = ["*"]
[policy.memory]
# growth: the shipped default policy's knobs
headroom = "256MiB"
headroom_pct = "50%"
grow_at = "60%"
min_free = "96MiB"
predict = "5s"
trend_window = "10s"
swap_grow = "1MiB/s"
# shrink back quickly between repeats
shrink_at = "200%"
window = "15s"
percentile = "95%"
shrink_rate = "1GiB/s"
max_shrink_step = "4GiB"
shrink_cooldown = "10s"
shrink_interval = "2s"
min_change = "16MiB"
"#;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn list(name: &str, default: &str) -> Vec<u64> {
    arg(name)
        .unwrap_or_else(|| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Run {
    decide: f64,
    alloc: f64,
    held: f64,
    oom: bool,
}

struct Stepper<'a> {
    g: &'a Guest,
    method: &'static str,
    t0: f64,
    target: u64,
    need_alloc: u64,
    run: Run,
    done: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Wait until the guest holds `base` MiB and has been sized to it: MemAvailable inside the
/// policy's band (between the grow and the shrink thresholds) and no resize in the last 8 s.
fn settle(d: &Daemon, g: &Guest, base: u64) {
    d.wait_until(&format!("{} to settle", g.name), 300, || {
        let t = now();
        let m = g.stat();
        let avail = m.memavail_kib / 1024;
        m.demand_mib == base
            && (160..512).contains(&avail)
            && d.audit()
                .iter()
                .filter(|r| r["guest"] == g.name.as_str() && r["kind"] != "hold")
                .all(|r| r["time"].as_f64().unwrap_or(0.0) < t - 8.0)
    });
}

fn step_pair(
    d: &Daemon,
    guests: &[(&Guest, &'static str)],
    base: u64,
    step: u64,
    rate: u64,
) -> Vec<(&'static str, Run)> {
    let mut st: Vec<Stepper> = guests
        .iter()
        .map(|(g, m)| {
            let s = g.stat();
            let used = g.current_mib().saturating_sub(s.memavail_kib / 1024);
            Stepper {
                g,
                method: m,
                t0: 0.0,
                target: base + step,
                need_alloc: used + step,
                run: Run::default(),
                done: false,
            }
        })
        .collect();
    // The control port answers after ~3 s; the generator starts within 0.25 s of the command:
    // the commands go out on their own threads and the polling starts at once.
    let senders: Vec<_> = st
        .iter_mut()
        .map(|s| {
            s.t0 = now();
            let (host, name, mib) = (s.g.host.clone(), s.g.name.clone(), s.target);
            std::thread::spawn(move || {
                Guest {
                    uri: String::new(),
                    host,
                    name,
                }
                .demand(mib, rate)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while st.iter().any(|s| !s.done) && Instant::now() < deadline {
        for s in st.iter_mut().filter(|s| !s.done) {
            let t = now() - s.t0;
            if s.run.alloc == 0.0 && s.g.current_mib() >= s.need_alloc {
                s.run.alloc = t;
            }
            let m = s.g.stat();
            let need = m.memtotal_kib.saturating_sub(m.memavail_kib) / 1024;
            let threshold = 0.6 * (256f64).max(need as f64 * 0.5);
            if s.run.held == 0.0
                && m.demand_mib >= s.target
                && (m.memavail_kib as f64 / 1024.0) >= threshold
            {
                s.run.held = t;
            }
            s.done = (s.run.alloc > 0.0 && s.run.held > 0.0) || s.g.oom().is_some();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in senders {
        let _ = t.join();
    }
    let audit = d.audit();
    st.iter()
        .map(|s| {
            let mut r = s.run;
            r.decide = audit
                .iter()
                .filter(|a| a["guest"] == s.g.name.as_str() && a["kind"] == "grow")
                .filter_map(|a| a["time"].as_f64())
                .filter(|&t| t >= s.t0)
                .fold(f64::NAN, f64::min)
                - s.t0;
            if !s.done {
                eprintln!("{} ({}): not covered within 120 s", s.g.name, s.method);
                r.alloc = if r.alloc == 0.0 { f64::NAN } else { r.alloc };
                r.held = if r.held == 0.0 { f64::NAN } else { r.held };
            }
            (s.method, r)
        })
        .collect()
}

fn reaction() {
    let periods = list("--periods", "1,2,5");
    let steps = list("--steps", "256,1024");
    let repeats = arg("--repeats")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize);
    let rate = arg("--rate").and_then(|s| s.parse().ok()).unwrap_or(RATE);
    let h = Host::up("lreact", 41);
    let mut rows = Vec::new();
    for &p in &periods {
        let ps = p.to_string();
        let opts = |m: &str| -> Vec<String> {
            let o: &[&str] = if m == "balloon" {
                &["--mem", "3072", "--current", "512", "--vmem", "0"]
            } else {
                &["--mem", "512", "--vmem", "3072"]
            };
            o.iter()
                .map(|s| s.to_string())
                .chain(["--stats-period".to_string(), ps.clone()])
                .collect()
        };
        let boot = |m: &str| {
            let name = format!("r{}{p}", &m[..1]);
            let o = opts(m);
            let g = h.guest(&name, &o.iter().map(String::as_str).collect::<Vec<_>>());
            g.wait_boot();
            g
        };
        let config = format!("interval = \"1s\"\nstats_period = {p}\n");
        let d = Daemon::start(&[&h], &[("bench.toml", POLICY)], &config, &[]);
        for rep in 0..repeats {
            // Fresh guests each repeat: every run starts from the same state, and one that ran
            // out of memory in the last one is gone.
            let (b, v) = (boot("balloon"), boot("virtio-mem"));
            // From a guest sized to what it holds (not one idling at its floor, whose
            // headroom would absorb a small step with no resize at all).
            for g in [&b, &v] {
                g.demand(BASE, 0);
            }
            for g in [&b, &v] {
                settle(&d, g, BASE);
            }
            // Steps in a row: +256 from there, then +1024 on top.
            let mut base = BASE;
            let mut oom = [false, false];
            for &s in &steps {
                let pair = [(&b, "balloon"), (&v, "virtio-mem")];
                let live: Vec<(&Guest, &'static str)> = pair
                    .iter()
                    .zip(oom)
                    .filter(|(_, o)| !o)
                    .map(|(g, _)| *g)
                    .collect();
                for (m, mut r) in step_pair(&d, &live, base, s, rate) {
                    let i = usize::from(m != "balloon");
                    if pair[i].0.oom().is_some() {
                        oom[i] = true;
                        r.oom = true;
                    }
                    eprintln!(
                        "period {p} s, repeat {rep}, +{s} MiB at {rate} MiB/s, {m}: decision {:.1} s, allocation {:.1} s, held with headroom {:.1} s{}",
                        r.decide,
                        r.alloc,
                        r.held,
                        if r.oom { ", OOM" } else { "" }
                    );
                    rows.push((p, s, m, r));
                }
                base += s;
                // Let the growth finish before the next step.
                std::thread::sleep(Duration::from_secs(5));
            }
            for g in [&b, &v] {
                let _ = std::process::Command::new(common::testbed().join("guest.sh"))
                    .args(["destroy", &g.host, &g.name])
                    .output();
            }
        }
        drop(d);
    }
    println!(
        "| stats period | step | method | first decision, median (worst) | allocation covers | held with headroom | beyond the ramp | runs | OOM |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &p in &periods {
        for &s in &steps {
            for m in ["balloon", "virtio-mem"] {
                let all: Vec<Run> = rows
                    .iter()
                    .filter(|r| r.0 == p && r.1 == s && r.2 == m)
                    .map(|r| r.3)
                    .collect();
                let ok: Vec<Run> = all.iter().copied().filter(|r| !r.oom).collect();
                let ramp = s as f64 / rate as f64;
                let col = |f: &dyn Fn(&Run) -> f64| {
                    let mut v: Vec<f64> = ok.iter().map(f).filter(|x| x.is_finite()).collect();
                    if v.is_empty() {
                        return "—".to_string();
                    }
                    let worst = v.iter().copied().fold(f64::MIN, f64::max);
                    format!("{:.1} s ({:.1})", median(&mut v), worst)
                };
                println!(
                    "| {p} s | +{s} MiB | {m} | {} | {} | {} | {} | {} | {} |",
                    col(&|r| r.decide),
                    col(&|r| r.alloc),
                    col(&|r| r.held),
                    col(&|r| (r.held - ramp).max(0.0)),
                    all.len(),
                    all.len() - ok.len()
                );
            }
        }
    }
    println!(
        "\nSteps arrive at {rate} MiB/s (+256 MiB in {:.1} s, +1024 MiB in {:.1} s); \"beyond the ramp\" is the time to held-with-headroom less that; a first decision of \"—\" means the step fitted in the headroom and no resize was needed. Medians and worst cases are over the runs without an OOM.",
        256.0 / rate as f64,
        1024.0 / rate as f64
    );
}

/// CPU seconds (user + system) and RSS (MiB) of a process, from /proc.
fn proc_cost(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, rss)
}

fn real_cost(n: usize) {
    let h = Host::up("lcost", 42);
    let guests: Vec<Guest> = (0..n)
        .map(|i| {
            h.guest(
                &format!("c{i}"),
                &["--mem", "512", "--vmem", "512", "--stats-period", "1"],
            )
        })
        .collect();
    for g in &guests {
        g.wait_boot();
    }
    let d = Daemon::start(&[&h], &[("bench.toml", POLICY)], "interval = \"1s\"\n", &[]);
    d.wait_until("every guest seen", 120, || {
        d.get("/v1/guests")
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0)
            >= n
    });
    // Some of them busy: demand moves while the cost is measured.
    for (i, g) in guests.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        g.demand(100 + 50 * i as u64, 20);
    }
    std::thread::sleep(Duration::from_secs(20));
    let pid = d.child.id();
    let (c0, _) = proc_cost(pid);
    let t0 = Instant::now();
    let secs = arg("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, rss) = proc_cost(pid);
    let wall = t0.elapsed().as_secs_f64();
    let mut ms: Vec<f64> = (0..21)
        .filter_map(|_| {
            let t = Instant::now();
            d.request("GET", "/metrics", None, None)
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        })
        .collect();
    let ticks = wall; // one tick a second
    println!(
        "| real guests | window | daemon CPU per tick | per guest | % of one core | RSS | /metrics p50 |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {n} | {wall:.0} s | {:.2} ms | {:.1} µs | {:.2}% | {rss:.1} MiB | {:.1} ms |",
        (c1 - c0) * 1000.0 / ticks,
        (c1 - c0) * 1e6 / ticks / n as f64,
        100.0 * (c1 - c0) / wall,
        median(&mut ms)
    );
}

fn main() {
    if let Some(n) = arg("--real-cost").and_then(|s| s.parse().ok()) {
        real_cost(n);
    } else {
        reaction();
    }
}
