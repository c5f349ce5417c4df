//! The `--report DIR` output: `report.md` with the results table, the trace's defects and the
//! rules applied, and SVG plots: reclaimed against pressure (one point per policy or
//! baseline), a few VM timelines (demand, allocation, floor, ceiling) and the distribution of
//! pressure-event lengths.

use super::{Options, RunResult};
use crate::trace::Trace;
use crate::units::GIB;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// The parts of the `--json` output the report repeats (`results.json`), rendered by the
/// command before it hands them over.
pub struct Summary {
    pub json: String,
}

/// The VMs whose timelines the report shows: the most variable ones (by the spread of their
/// demand relative to their ceiling), so the plots show decisions being made.
pub fn pick_timeline_vms(trace: &Trace, n: usize) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = trace
        .vms
        .iter()
        .map(|vm| {
            let c = vm.ceiling.0.max(1) as f64;
            let k = vm.demand.len().max(1) as f64;
            let mean = vm.demand.iter().map(|&d| d as f64 / c).sum::<f64>() / k;
            let var = vm
                .demand
                .iter()
                .map(|&d| (d as f64 / c - mean).powi(2))
                .sum::<f64>()
                / k;
            (var, vm.key.as_str())
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(n)
        .map(|(_, k)| k.to_string())
        .collect()
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn scatter(path: &Path, results: &[RunResult]) -> Res<()> {
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = results
        .iter()
        .map(|r| r.pressure_time_pct)
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.2;
    let ymax = results
        .iter()
        .map(|r| r.reclaimed_pct)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut c = ChartBuilder::on(&root)
        .caption(
            "Memory reclaimed vs time under pressure",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    c.configure_mesh()
        .x_desc("pressure_time_pct (% of VM-time with demand above allocation)")
        .y_desc("reclaimed_pct (% of static)")
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        let p = (r.pressure_time_pct, r.reclaimed_pct);
        c.draw_series(std::iter::once(Circle::new(p, 5, col.filled())))?;
        c.draw_series(std::iter::once(Text::new(
            format!(" {}", r.name),
            p,
            ("sans-serif", 13).into_font().color(&col),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn timeline(path: &Path, vm: &str, results: &[RunResult], show: &[&str]) -> Res<bool> {
    let tls: Vec<(&str, &super::Timeline)> = results
        .iter()
        .filter(|r| show.contains(&r.name.as_str()))
        .filter_map(|r| {
            r.timelines
                .iter()
                .find(|t| t.vm == vm)
                .map(|t| (r.name.as_str(), t))
        })
        .collect();
    let Some((_, first)) = tls.first() else {
        return Ok(false);
    };
    let gib = |b: u64| b as f64 / GIB as f64;
    let tmax = tls
        .iter()
        .flat_map(|(_, t)| t.points.last().map(|p| p.t))
        .fold(1.0, f64::max)
        / 3600.0;
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(format!("VM {vm}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, 0f64..gib(first.ceiling) * 1.08)?;
    c.configure_mesh()
        .x_desc("hours from the VM's first sample")
        .y_desc("GiB")
        .draw()?;
    let step = |pts: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(pts.len() * 2);
        for (i, p) in pts.iter().enumerate() {
            if i > 0 {
                out.push((p.0, pts[i - 1].1));
            }
            out.push(*p);
        }
        out
    };
    let flat = |y: f64| vec![(0.0, y), (tmax, y)];
    c.draw_series(LineSeries::new(
        flat(gib(first.ceiling)),
        BLACK.stroke_width(1),
    ))?
    .label("ceiling")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
    let grey = RGBColor(150, 150, 150);
    c.draw_series(LineSeries::new(
        flat(gib(first.floor)),
        grey.stroke_width(1),
    ))?
    .label("floor")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], grey));
    let demand: Vec<(f64, f64)> = first
        .points
        .iter()
        .map(|p| (p.t / 3600.0, gib(p.demand)))
        .collect();
    let red = RGBColor(214, 39, 40);
    c.draw_series(LineSeries::new(step(demand), red.stroke_width(1)))?
        .label("demand")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], red));
    for (i, (name, t)) in tls.iter().enumerate() {
        let col = COLORS[(i * 2) % COLORS.len()];
        let alloc: Vec<(f64, f64)> = t
            .points
            .iter()
            .map(|p| (p.t / 3600.0, gib(p.alloc)))
            .collect();
        c.draw_series(LineSeries::new(step(alloc), col.stroke_width(2)))?
            .label(format!("allocation: {name}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], col));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(true)
}

/// Pressure-event lengths in power-of-two bins of seconds: bin k holds [2^k, 2^(k+1)).
pub fn length_bins(lengths: &[f32]) -> Vec<u64> {
    let mut bins = vec![0u64; 24];
    for &l in lengths {
        let k = if l < 1.0 {
            0
        } else {
            (l as f64).log2().floor() as usize
        };
        let last = bins.len() - 1;
        bins[k.min(last)] += 1;
    }
    bins
}

fn histogram(path: &Path, results: &[RunResult]) -> Res<()> {
    let with: Vec<(&RunResult, Vec<u64>)> = results
        .iter()
        .filter(|r| !r.acc.event_lengths.is_empty())
        .map(|r| (r, length_bins(&r.acc.event_lengths)))
        .collect();
    let top = with
        .iter()
        .flat_map(|(_, b)| b.iter().rposition(|&c| c > 0))
        .max()
        .unwrap_or(8)
        + 1;
    let ymax = with
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption("Length of pressure events", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..top as f64, (0.8f64..ymax * 2.0).log_scale())?;
    c.configure_mesh()
        .x_desc("event length, log2 seconds (bin k holds 2^k ≤ length < 2^(k+1))")
        .y_desc("events")
        .draw()?;
    for (i, (r, bins)) in with.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = bins
            .iter()
            .take(top)
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(k, c)| (k as f64 + 0.5, *c as f64))
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], col));
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, col.filled())))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Write the report into `dir` (created if missing).
pub fn write(
    dir: &Path,
    summary: &Summary,
    results: &[RunResult],
    trace: &Trace,
    opts: &Options,
) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    scatter(&dir.join("reclaimed-vs-pressure.svg"), results)?;
    histogram(&dir.join("pressure-events.svg"), results)?;
    let policies: Vec<&str> = results
        .iter()
        .filter(|r| r.kind == "policy")
        .map(|r| r.name.as_str())
        .take(2)
        .collect();
    let mut show = policies.clone();
    show.push("oracle");
    let mut timelines = Vec::new();
    for (i, vm) in opts.timeline_vms.iter().enumerate() {
        let name = format!("timeline-{}.svg", i + 1);
        if timeline(&dir.join(&name), vm, results, &show)? {
            timelines.push((vm.clone(), name));
        }
    }
    let m = &opts.model;
    let mut md = String::new();
    writeln!(md, "# memscale simulate: {}\n", trace.name)?;
    writeln!(
        md,
        "{} VMs; decision every {} s; floor {:.0}% of the ceiling; {:?} guest (block {}); \
         resizes land after {} s plus size over {:.0} MiB/s (grow) or {:.0} MiB/s (shrink).\n",
        trace.vms.len(),
        m.interval,
        m.floor_fraction * 100.0,
        m.guest,
        m.block,
        m.delay,
        m.grow_speed / (1024.0 * 1024.0),
        m.shrink_speed / (1024.0 * 1024.0)
    )?;
    if let Some(h) = &opts.host {
        writeln!(
            md,
            "Host mode: VMs packed in trace order onto hosts of {} at {:.2}x overcommit \
             (sum of ceilings over host memory).\n",
            h.memory, h.overcommit
        )?;
    }
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "| name | kind | reclaimed % | % of oracle | pressure time % | events / VM-day | shortfall GiB·h | resizes / VM-day | event p50 s | event p99 s |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in results {
        writeln!(
            md,
            "| {} | {} | {:.2} | {} | {:.4} | {:.3} | {:.1} | {:.1} | {:.0} | {:.0} |",
            r.name,
            r.kind,
            r.reclaimed_pct,
            r.oracle_pct
                .map(|o| format!("{o:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.pressure_time_pct,
            r.pressure_events_per_vm_day,
            r.shortfall_gib_h,
            r.resizes_per_vm_day,
            r.pressure_event_p50_s,
            r.pressure_event_p99_s
        )?;
    }
    if opts.host.is_some() {
        writeln!(
            md,
            "\n| name | host pressure time % | host pressure events / host-day | host overflow GiB·h |\n|---|---:|---:|---:|"
        )?;
        for r in results {
            writeln!(
                md,
                "| {} | {:.3} | {:.2} | {:.1} |",
                r.name,
                r.host_pressure_time_pct.unwrap_or(0.0),
                r.host_pressure_events_per_host_day.unwrap_or(0.0),
                r.host_overflow_gib_h.unwrap_or(0.0)
            )?;
        }
    }
    writeln!(
        md,
        "\nDefinitions: `docs/simulation.md`.\n\n![reclaimed vs pressure](reclaimed-vs-pressure.svg)\n\n![pressure events](pressure-events.svg)\n"
    )?;
    writeln!(md, "## VM timelines\n")?;
    for (vm, f) in &timelines {
        writeln!(md, "VM {vm} (first two days):\n\n![{vm}]({f})\n")?;
    }
    let d = &trace.defects;
    writeln!(md, "## The trace\n")?;
    writeln!(
        md,
        "| defect | count |\n|---|---:|\n| rows | {} |\n| malformed rows | {} |\n| out-of-order rows | {} |\n| duplicate rows | {} |\n| zero-capacity rows | {} |\n| usage above capacity | {} |\n| VMs whose capacity changed | {} |\n| VMs too short (skipped) | {} |\n| VMs without capacity (skipped) | {} |\n| gaps over three periods | {} ({:.1} h) |\n",
        d.rows,
        d.malformed_rows,
        d.out_of_order_rows,
        d.duplicate_rows,
        d.zero_capacity_rows,
        d.usage_above_capacity_rows,
        d.capacity_changed_vms,
        d.short_vms,
        d.no_capacity_vms,
        d.gaps,
        d.gap_hours
    )?;
    for e in &d.malformed_examples {
        writeln!(md, "- malformed: `{e}`")?;
    }
    writeln!(md, "\nRules applied:\n")?;
    for r in &trace.rules {
        writeln!(md, "- {r}")?;
    }
    std::fs::write(dir.join("report.md"), md)?;
    std::fs::write(dir.join("results.json"), &summary.json)?;
    Ok(())
}
