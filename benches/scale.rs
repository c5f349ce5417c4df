//! Cost per tick at scale: the real daemon (host loop, planner, actuation, metrics, API, logs)
//! over the in-process host model (`memscale::model`) with 10 to 10,000 guests, each size in
//! a fresh process. Prints a Markdown table; the figures go to docs/benchmarks.md.
//!
//!   cargo bench --bench scale                       # 10, 100, 1000, 10000 guests, 30 s each
//!   cargo bench --bench scale -- --guests 1000 --seconds 60
//!   cargo bench --bench scale -- --hung             # a hung host beside a healthy one
//!   cargo bench --bench scale -- --callgrind --guests 1000 --seconds 20
//!                                                   # instructions per tick (repeatable)
//!   cargo bench --bench scale -- --guests 1000 --warmup 100 --seconds 60
//!                                                   # steady state: measured once the
//!                                                   # planner windows are full
//!
//! With `--callgrind` each size runs under valgrind's callgrind, counting only what the host
//! loop's tick runs on its own thread and the state file's saves (every 5 s, on the blocking
//! pool), `--toggle-collect` on both, zeroed once the guests are adopted (and `--warmup`
//! seconds later): the instruction count per tick is repeatable on this noisy machine where
//! the CPU time is not (the model's work, on the blocking pool, is not counted).
//!
//! CPU is the process's user+system time less the model's own (thread CPU time inside its
//! calls), over a measured window after the guests were adopted; a benchmark, not a test.

use memscale::config::{Config, HostConfig};
use memscale::daemon::{self, Shared};
use memscale::hypervisor::Hypervisor;
use memscale::model::ModelHost;
use memscale::units::{Bytes, Dur};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|x| x == name)
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// VmRSS and VmHWM of this process, MiB.
fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn get(port: u16, path: &str) -> Option<(Duration, usize)> {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some((t0.elapsed(), out.len()))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// One size, in this process: prints one JSON line.
fn one(n: usize, seconds: u64, warmup: u64, interval: f64, hung: bool) {
    memscale::cli::init_logging(memscale::cli::LogFormat::Plain);
    let state = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut config = Config {
        interval: Dur(Duration::from_secs_f64(interval)),
        policies: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(),
        listen: ([127, 0, 0, 1], port).into(),
        state_dir: state.path().to_path_buf(),
        ..Config::default()
    };
    let mut ok_cfg = HostConfig::from_arg("ok=model:///ok");
    // Room for every guest at its ceiling: the host is never short, so nothing is squeezed.
    ok_cfg.capacity = Some(Bytes::from_mib((n as u64 + 16) * 2048));
    config.hosts.push(ok_cfg.clone());
    let model = Arc::new(ModelHost::new("model:///ok", "g", n, 42));
    let mut hosts: Vec<(HostConfig, Arc<dyn Hypervisor>)> =
        vec![(ok_cfg, model.clone() as Arc<dyn Hypervisor>)];
    if hung {
        let mut c = HostConfig::from_arg("hung=model:///hung");
        c.capacity = Some(Bytes::from_mib(1 << 20));
        config.hosts.push(c.clone());
        let h = ModelHost::new("model:///hung", "h", 100, 7).hung(Duration::from_secs(3600));
        hosts.push((c, Arc::new(h) as Arc<dyn Hypervisor>));
    }
    let (set, diags) = memscale::policy::load_dir(&config.policies, 1);
    let set = set.expect("the shipped policies parse");
    let (rss_model, _) = rss_mib();
    let shared = Arc::new(Shared::new(config, set, &diags).expect("shared"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    rt.spawn(memscale::api::serve(
        shared.clone(),
        shared.config.listen,
        stop_rx.clone(),
    ));
    rt.spawn(daemon::run(shared.clone(), hosts, stop_rx));
    // Adopt every guest (definitions read, first samples) and fill the planner windows.
    let t0 = Instant::now();
    while model.stats_calls() < 8 && t0.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let adopt = t0.elapsed().as_secs_f64();
    // Steady state: the planner windows full (85 s at the default policy) before measuring.
    std::thread::sleep(Duration::from_secs(warmup));
    let loop_h = shared.metrics.loop_seconds.with_label_values(&["ok"]);
    let (c0, m0, k0, r0) = (
        process_cpu(),
        model.cpu(),
        model.stats_calls(),
        model.resizes(),
    );
    let (s0, n0) = (loop_h.get_sample_sum(), loop_h.get_sample_count());
    let callgrind = |what: &str| {
        if flag("--callgrind") {
            let _ = Command::new("callgrind_control")
                .args([what, &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status();
        }
    };
    callgrind("-z");
    let k0 = if flag("--callgrind") {
        model.stats_calls()
    } else {
        k0
    };
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = w0.elapsed().as_secs_f64();
    let k_end = model.stats_calls();
    callgrind("-d");
    let daemon_cpu = (process_cpu() - c0).saturating_sub(model.cpu() - m0);
    let ticks = k_end - k0;
    let resizes = model.resizes() - r0;
    let tick_wall = (loop_h.get_sample_sum() - s0) / (loop_h.get_sample_count() - n0).max(1) as f64;
    let (rss, hwm) = rss_mib();
    let (audit_records, audit_bytes) = shared.audit.usage();
    // Exposition, after the window: its CPU is not a tick's.
    let mut ms = Vec::new();
    let mut size = 0;
    for _ in 0..21 {
        if let Some((d, len)) = get(port, "/metrics") {
            ms.push(d.as_secs_f64() * 1000.0);
            size = len;
        }
    }
    let metrics_ms_max = ms.iter().copied().fold(0.0, f64::max);
    let metrics_ms = percentile(&mut ms, 0.5);
    let per_tick = daemon_cpu.as_secs_f64() / ticks.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "guests": n,
            "hung_neighbour": hung,
            "adopt_s": adopt,
            "warmup_s": warmup,
            "audit_records": audit_records,
            "audit_bytes": audit_bytes,
            "window_s": wall,
            "ticks": ticks,
            "ticks_expected": (wall / interval).floor(),
            "resizes": resizes,
            "cpu_per_tick_ms": per_tick * 1000.0,
            "cpu_per_guest_us": per_tick * 1e6 / n as f64,
            "core_pct": 100.0 * daemon_cpu.as_secs_f64() / wall,
            "model_cpu_pct": 100.0 * (model.cpu() - m0).as_secs_f64() / wall,
            "tick_wall_ms": tick_wall * 1000.0,
            "metrics_ms_p50": metrics_ms,
            "metrics_ms_max": metrics_ms_max,
            "metrics_bytes": size,
            "rss_mib": rss,
            "hwm_mib": hwm,
            "rss_before_daemon_mib": rss_model,
        })
    );
    let _ = stop_tx.send(true);
    rt.shutdown_timeout(Duration::from_secs(2));
}

fn main() {
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(30);
    let warmup: u64 = arg("--warmup").and_then(|s| s.parse().ok()).unwrap_or(0);
    let interval: f64 = arg("--interval")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    if let Some(n) = arg("--one").and_then(|s| s.parse().ok()) {
        one(n, seconds, warmup, interval, flag("--hung"));
        return;
    }
    let sizes: Vec<usize> = arg("--guests")
        .unwrap_or_else(|| "10,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let hung = flag("--hung");
    let cg = flag("--callgrind");
    let exe = std::env::current_exe().expect("current exe");
    let logs = tempfile::tempdir().expect("tempdir");
    if cg {
        println!("| guests | ticks counted | instructions per tick | per guest |");
        println!("| ---: | ---: | ---: | ---: |");
    }
    if !cg {
        println!(
            "| guests | hung neighbour | ticks / expected | CPU per tick | per guest | % of one core | tick wall | resizes / s | /metrics p50 (max) | bytes | RSS (before daemon) |"
        );
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for n in sizes {
        let log = std::fs::File::create(logs.path().join(format!("{n}.log"))).expect("log");
        let cg_out = logs.path().join(format!("callgrind.{n}"));
        let mut cmd = if cg {
            let mut c = Command::new("valgrind");
            c.args(["--tool=callgrind", "--collect-atstart=no"])
                .arg("--toggle-collect=*daemon::host::tick*")
                .arg("--toggle-collect=*daemon::Shared::save_state*")
                .arg(format!("--callgrind-out-file={}", cg_out.display()))
                .arg(&exe)
                .arg("--callgrind");
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(["--one", &n.to_string(), "--seconds", &seconds.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(["--interval", &interval.to_string()])
            .args(if hung { &["--hung"][..] } else { &[][..] })
            .stderr(Stdio::from(log))
            .output()
            .expect("run one size");
        let line = String::from_utf8_lossy(&out.stdout);
        let Some(v) = line
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        else {
            eprintln!("{n} guests: no result ({})", out.status);
            continue;
        };
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        if cg {
            // The dump taken at the window's end (the zeroing dumped nothing before it).
            let total = std::fs::read_dir(logs.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("callgrind.{n}"))
                })
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("summary: ").or(l.strip_prefix("totals: ")))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .fold(0.0, f64::max);
            let ticks = f("ticks");
            println!(
                "| {n} | {ticks} | {:.0} | {:.0} |",
                total / ticks,
                total / ticks / n as f64
            );
            eprintln!("{line}");
            continue;
        }
        println!(
            "| {n} | {} | {} / {} | {:.2} ms | {:.1} µs | {:.2}% | {:.1} ms | {:.1} | {:.1} ms ({:.1}) | {} | {:.1} MiB ({:.1}) |",
            if hung { "yes" } else { "no" },
            f("ticks"),
            f("ticks_expected"),
            f("cpu_per_tick_ms"),
            f("cpu_per_guest_us"),
            f("core_pct"),
            f("tick_wall_ms"),
            f("resizes") / f("window_s"),
            f("metrics_ms_p50"),
            f("metrics_ms_max"),
            f("metrics_bytes"),
            f("rss_mib"),
            f("rss_before_daemon_mib"),
        );
        eprintln!("{line}");
    }
}
