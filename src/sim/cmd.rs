//! `memscale simulate`: read a trace, run policies and baselines over it, print a table or
//! JSON, and write a report.

use super::report::Summary;
use super::{Baseline, GuestKind, HostMode, Model, Options, RunResult, Spec};
use crate::exit::{EXIT_INVALID, EXIT_RUNTIME, EXIT_USAGE};
use crate::policy::{self, Severity};
use crate::trace::{self, ReadOptions, Trace};
use crate::units::{Bytes, Dur, Percent, Rate};
use clap::ValueEnum;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum GuestArg {
    VirtioMem,
    Balloon,
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Trace file (Bitbrains CSV, optionally gzip-compressed).
    #[arg(long)]
    pub trace: PathBuf,
    /// Policy file or directory; every [[policy]] in it is simulated on every VM (default:
    /// the shipped policies/default.toml, as built into this binary).
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Baseline to compare with: static, oracle, mom, proxmox, vpa, autopilot; "all" (the
    /// default) or "none". Autopilot's unpublished constants can be set:
    /// `autopilot:window=12h,margin=5%,oom=20%`.
    #[arg(long = "baseline", value_name = "NAME")]
    pub baselines: Vec<String>,
    /// Time between decisions.
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Each VM's floor, as a share of its ceiling.
    #[arg(long, default_value = "25%")]
    pub floor: String,
    /// How the modelled guest is resized.
    #[arg(long, value_enum, default_value_t = GuestArg::VirtioMem)]
    pub guest: GuestArg,
    /// virtio-mem block size.
    #[arg(long, default_value = "2MiB")]
    pub block: String,
    /// Time from a resize request until memory moves.
    #[arg(long, default_value = "1s")]
    pub delay: String,
    /// Speed of growth (plug, deflate): by default the virtio-mem onlining rate measured on
    /// real guests (docs/benchmarks.md).
    #[arg(long, default_value = "128MiB/s")]
    pub grow_speed: String,
    /// Speed of shrinking (unplug, inflate).
    #[arg(long, default_value = "256MiB/s")]
    pub shrink_speed: String,
    /// Host mode: pack the VMs onto hosts of this much memory.
    #[arg(long, value_name = "SIZE")]
    pub host_memory: Option<String>,
    /// Host mode: sum of the packed VMs' ceilings over host memory.
    #[arg(long, default_value_t = 1.5, requires = "host_memory")]
    pub overcommit: f64,
    /// Skip VMs whose samples span fewer days than this.
    #[arg(long, default_value_t = 7.0)]
    pub min_days: f64,
    /// Simulate only the first N VMs (0: all).
    #[arg(long, default_value_t = 0)]
    pub vms: usize,
    /// Write a report (Markdown and SVG plots) into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Evaluate every tick even when nothing can change (slower; for checking).
    #[arg(long)]
    pub exact: bool,
    /// With --json: each VM's figures and pressure events under each controller (`per_vm`
    /// of each result), to see where a run's events and reclaim come from.
    #[arg(long, requires = "json")]
    pub per_vm: bool,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn usage(what: &str, e: impl std::fmt::Display) -> i32 {
    eprintln!("memscale: simulate: {what}: {e}");
    EXIT_USAGE
}

/// Parse the flags into a model and options.
pub fn options(a: &SimulateArgs) -> Result<Options, i32> {
    let interval = Dur::parse(&a.interval)
        .map_err(|e| usage("--interval", e))?
        .as_secs_f64();
    if !(0.1..=3600.0).contains(&interval) {
        return Err(usage("--interval", "must be between 100ms and 1h"));
    }
    let floor = Percent::parse(&a.floor).map_err(|e| usage("--floor", e))?;
    if floor.fraction() > 1.0 {
        return Err(usage("--floor", "must be at most 100%"));
    }
    let block = Bytes::parse(&a.block).map_err(|e| usage("--block", e))?;
    if block < Bytes::from_mib(1) {
        return Err(usage("--block", "must be at least 1MiB"));
    }
    let delay = Dur::parse(&a.delay)
        .map_err(|e| usage("--delay", e))?
        .as_secs_f64();
    let speed = |flag: &str, v: &str| -> Result<f64, i32> {
        let r = Rate::parse(v).map_err(|e| usage(flag, e))?;
        if r.per_sec() < Bytes::from_mib(1) {
            return Err(usage(flag, "must be at least 1MiB/s"));
        }
        Ok(r.per_sec().0 as f64)
    };
    let host = match &a.host_memory {
        Some(m) => {
            let memory = Bytes::parse(m).map_err(|e| usage("--host-memory", e))?;
            if memory < Bytes::from_gib(1) {
                return Err(usage("--host-memory", "must be at least 1GiB"));
            }
            if !(a.overcommit.is_finite() && a.overcommit >= 0.1 && a.overcommit <= 100.0) {
                return Err(usage("--overcommit", "must be between 0.1 and 100"));
            }
            Some(HostMode {
                memory,
                overcommit: a.overcommit,
            })
        }
        None => None,
    };
    Ok(Options {
        model: Model {
            interval,
            floor_fraction: floor.fraction(),
            guest: match a.guest {
                GuestArg::VirtioMem => GuestKind::VirtioMem,
                GuestArg::Balloon => GuestKind::Balloon,
            },
            block,
            delay,
            grow_speed: speed("--grow-speed", &a.grow_speed)?,
            shrink_speed: speed("--shrink-speed", &a.shrink_speed)?,
            exact: a.exact,
        },
        host,
        per_vm: a.per_vm,
        ..Options::default()
    })
}

pub use crate::policy::shipped_default;

/// The policies and baselines to run, policies first.
pub fn specs(a: &SimulateArgs) -> Result<Vec<Spec>, i32> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    for p in &a.policies {
        if p.is_dir() {
            match policy::parse::policy_files(p) {
                Ok(f) => files.extend(f),
                Err(e) => {
                    eprintln!("memscale: {}: cannot read directory: {e}", p.display());
                    return Err(EXIT_INVALID);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut bad = false;
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("memscale: {}: {e}", f.display());
                return Err(EXIT_INVALID);
            }
        };
        let (ps, diags) = policy::parse_policy_text(&f.display().to_string(), &text);
        for d in &diags {
            eprintln!("{d}");
        }
        bad |= diags.iter().any(|d| d.severity == Severity::Error);
        out.extend(ps.into_iter().map(|p| Spec::Policy(Box::new(p))));
    }
    if bad {
        return Err(EXIT_INVALID);
    }
    if files.is_empty() {
        out.push(Spec::Policy(Box::new(shipped_default())));
    }
    let mut names: Vec<String> = a.baselines.clone();
    if names.is_empty() || names.iter().any(|n| n == "all") {
        // "all" stands for every baseline at its defaults; variants given beside it stay.
        let mut all: Vec<String> = Baseline::ALL.iter().map(|b| b.to_string()).collect();
        all.extend(names.into_iter().filter(|n| n != "all"));
        names = all;
    }
    for n in names.iter().filter(|n| *n != "none") {
        let b: Baseline = n.parse().map_err(|e| usage("--baseline", e))?;
        if !out
            .iter()
            .any(|s| matches!(s, Spec::Baseline(x) if *x == b))
        {
            out.push(Spec::Baseline(b));
        }
    }
    // Oracle percentages need the oracle: run it even when not asked, but say so.
    if !out
        .iter()
        .any(|s| matches!(s, Spec::Baseline(Baseline::Oracle)))
    {
        out.push(Spec::Baseline(Baseline::Oracle));
    }
    Ok(out)
}

#[derive(Serialize)]
struct TraceSummary<'a> {
    name: &'a str,
    vms: usize,
    period_s: f64,
    start: i64,
    end: i64,
    defects: &'a crate::trace::Defects,
    rules: &'a [String],
}

/// Everything `--json` prints.
#[derive(Serialize)]
pub struct Output<'a> {
    trace: TraceSummary<'a>,
    model: &'a Model,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a HostMode>,
    /// Hosts the VMs were packed onto; null outside host mode (each VM is then its own group,
    /// not a host).
    hosts: Option<usize>,
    elapsed_s: f64,
    decisions_per_s: f64,
    results: &'a [RunResult],
}

fn table(results: &[RunResult], host: bool) -> String {
    let mut s = format!(
        "{:<22} {:<8} {:>10} {:>8} {:>10} {:>10} {:>11} {:>8} {:>10}",
        "NAME",
        "KIND",
        "RECLAIMED%",
        "ORACLE%",
        "PRESSURE%",
        "EVENTS/VMD",
        "SHORT GiB·h",
        "P99 EV s",
        "RESIZE/VMD"
    );
    if host {
        s.push_str(&format!(" {:>9} {:>11}", "HOSTPRES%", "OVERFL GiB·h"));
    }
    s.push('\n');
    for r in results {
        s.push_str(&format!(
            "{:<22} {:<8} {:>10.2} {:>8} {:>10.4} {:>10.3} {:>11.1} {:>8.0} {:>10.1}",
            r.name,
            r.kind,
            r.reclaimed_pct,
            r.oracle_pct
                .map(|o| format!("{o:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.pressure_time_pct,
            r.pressure_events_per_vm_day,
            r.shortfall_gib_h,
            r.pressure_event_p99_s,
            r.resizes_per_vm_day,
        ));
        if host {
            s.push_str(&format!(
                " {:>9.3} {:>11.1}",
                r.host_pressure_time_pct.unwrap_or(0.0),
                r.host_overflow_gib_h.unwrap_or(0.0)
            ));
        }
        s.push('\n');
    }
    s
}

fn read_trace(a: &SimulateArgs) -> Result<Trace, i32> {
    trace::read_path(
        &a.trace,
        &ReadOptions {
            min_span: a.min_days.max(0.0) * 86400.0,
            max_vms: a.vms,
        },
    )
    .map_err(|e| {
        eprintln!("memscale: simulate: {e}");
        EXIT_INVALID
    })
}

pub fn simulate(a: &SimulateArgs) -> i32 {
    let mut opts = match options(a) {
        Ok(o) => o,
        Err(c) => return c,
    };
    let specs = match specs(a) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if let Some(n) = a.threads {
        // Only fails if a pool was built before, which this process never does.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let started = Instant::now();
    let trace = match read_trace(a) {
        Ok(t) => t,
        Err(c) => return c,
    };
    if a.report.is_some() {
        opts.timeline_vms = super::report::pick_timeline_vms(&trace, 4);
    }
    let groups = super::groups(&trace, opts.host.as_ref());
    let total = super::total_work(&trace, &groups, specs.len());
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = (!a.no_progress && !a.json && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(total.max(1));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulating [{bar:40}] {percent:>3}% {elapsed} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let (p, s, pb2) = (progress.clone(), stop.clone(), pb.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                pb2.set_position(p.load(Ordering::Relaxed).min(total));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        (pb, h)
    });
    let results = super::run(&trace, &specs, &opts, &progress);
    stop.store(true, Ordering::Relaxed);
    if let Some((pb, h)) = bar {
        let _ = h.join();
        pb.finish_and_clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let decisions: u64 = results.iter().map(|r| r.decisions).sum();
    let out = Output {
        trace: TraceSummary {
            name: &trace.name,
            vms: trace.vms.len(),
            period_s: trace.period,
            start: trace.start(),
            end: trace.end(),
            defects: &trace.defects,
            rules: &trace.rules,
        },
        model: &opts.model,
        host: opts.host.as_ref(),
        hosts: opts.host.as_ref().map(|_| groups.len()),
        elapsed_s: elapsed,
        decisions_per_s: decisions as f64 / elapsed.max(1e-9),
        results: &results,
    };
    if let Some(dir) = &a.report
        && let Err(e) = super::report::write(dir, &out_summary(&out), &results, &trace, &opts)
    {
        eprintln!("memscale: simulate: {}: {e}", dir.display());
        return EXIT_RUNTIME;
    }
    if a.json {
        match serde_json::to_string_pretty(&out) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("memscale: simulate: {e}");
                return EXIT_RUNTIME;
            }
        }
    } else {
        let d = &trace.defects;
        println!(
            "{}: {} VMs, {:.0} VM-days, {} rows ({} malformed, {} out of order, {} duplicate, \
             {} zero capacity, {} above capacity; {} VMs changed capacity, {} too short, {} gaps)",
            trace.name,
            trace.vms.len(),
            results.first().map(|r| r.vm_days).unwrap_or(0.0),
            d.rows,
            d.malformed_rows,
            d.out_of_order_rows,
            d.duplicate_rows,
            d.zero_capacity_rows,
            d.usage_above_capacity_rows,
            d.capacity_changed_vms,
            d.short_vms,
            d.gaps
        );
        if let Some(h) = &opts.host {
            println!(
                "host mode: {} hosts of {} at {:.2}x overcommit",
                groups.len(),
                h.memory,
                h.overcommit
            );
        }
        print!("{}", table(&results, opts.host.is_some()));
        println!(
            "{:.1}s, {:.2}M decisions/s",
            elapsed,
            decisions as f64 / elapsed.max(1e-9) / 1e6
        );
    }
    0
}

fn out_summary(o: &Output) -> Summary {
    Summary {
        json: serde_json::to_string_pretty(o).unwrap_or_default(),
    }
}
