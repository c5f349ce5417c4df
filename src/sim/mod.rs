//! The replay simulator: recorded demand through the daemon's own planner, and through
//! re-implementations of the policies memscale is measured against, side by side in one run.
//!
//! Each VM of the trace becomes a modelled guest: demand is the trace's (held constant between
//! samples), the envelope runs from a floor (a fraction of the VM's capacity) to its ceiling
//! (its largest capacity), resizes are realized at the method's granularity and land whole
//! after a delay plus their size over the actuation speed. A controller (the planner with a
//! policy, or a baseline) decides on a grid of ticks. Nothing here touches libvirt, the clock
//! or the network.
//!
//! In host mode the VMs are packed onto hosts of a given size and overcommit; controllers that
//! react to host memory (MoM, Proxmox) see the host, and host pressure is measured.
//!
//! Definitions of every metric are in `docs/simulation.md`.

pub mod baselines;
pub mod cmd;
pub mod controllers;
mod guest;
pub mod histogram;
pub mod report;
mod result;

use guest::Guest;
pub use result::{Acc, EventRec, RunResult, Timeline, TimelinePoint, VmFigures};

use crate::envelope::{Envelope, Source, VmemSlot};
use crate::planner::Sample;
use crate::trace::{Trace, VmTrace};
use crate::units::{Bytes, MIB};
use rayon::prelude::*;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

pub use controllers::{Baseline, Spec};

/// How the guest is resized in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    /// Boots at the floor; virtio-mem plugs blocks above it, the balloon below.
    VirtioMem,
    /// Boots at the ceiling; the balloon alone takes memory away (1 MiB steps).
    Balloon,
}

/// The modelled guest and the decision grid.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    /// Seconds between decisions.
    pub interval: f64,
    /// Floor as a fraction of the ceiling.
    pub floor_fraction: f64,
    pub guest: GuestKind,
    /// virtio-mem block size.
    pub block: Bytes,
    /// Seconds from a request until memory starts moving.
    pub delay: f64,
    /// Bytes per second a growth moves (virtio-mem plug, balloon deflate). The default,
    /// 128 MiB/s, is the top of the virtio-mem onlining rates measured on real guests
    /// (50 to 130 MiB/s, `docs/benchmarks.md`, "Reaction time, real guests").
    pub grow_speed: f64,
    /// Bytes per second a shrink moves (unplug, balloon inflate).
    pub shrink_speed: f64,
    /// Evaluate every controller on every tick, even when nothing can change (for checking
    /// that skipping quiet ticks changes no result).
    pub exact: bool,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            interval: 5.0,
            floor_fraction: 0.25,
            guest: GuestKind::VirtioMem,
            block: Bytes::from_mib(2),
            delay: 1.0,
            grow_speed: 128.0 * MIB as f64,
            shrink_speed: 256.0 * MIB as f64,
            exact: false,
        }
    }
}

impl Model {
    /// The envelope a trace VM gets.
    pub fn envelope(&self, ceiling: Bytes) -> Envelope {
        let ceiling = ceiling.align_down(Bytes(MIB)).max(Bytes(MIB));
        let floor = ceiling
            .scale(self.floor_fraction.clamp(0.0, 1.0))
            .align_down(Bytes(MIB))
            .max(Bytes(MIB));
        match self.guest {
            GuestKind::VirtioMem => {
                let block = self.block.max(Bytes(MIB));
                let room = ceiling.saturating_sub(floor).align_down(block);
                Envelope {
                    floor,
                    ceiling: floor + room,
                    base: floor,
                    balloon: true,
                    vmem: if room.0 > 0 {
                        vec![VmemSlot {
                            alias: None,
                            node: None,
                            size: room,
                            block,
                        }]
                    } else {
                        vec![]
                    },
                    dimm: None,
                    vmem_step: if room.0 > 0 { block } else { Bytes(0) },
                    numa_nodes: 1,
                    source: Source::Libvirt,
                    notes: vec![],
                }
            }
            GuestKind::Balloon => Envelope {
                floor,
                ceiling,
                base: ceiling,
                balloon: true,
                vmem: vec![],
                dimm: None,
                vmem_step: Bytes(0),
                numa_nodes: 1,
                source: Source::Libvirt,
                notes: vec![],
            },
        }
    }

    fn tick_ceil(&self, t: f64) -> f64 {
        (t / self.interval - 1e-9).ceil() * self.interval
    }
}

/// Packing of the trace's VMs onto hosts.
#[derive(Debug, Clone, Serialize)]
pub struct HostMode {
    /// Memory of each host.
    pub memory: Bytes,
    /// Sum of the packed VMs' ceilings over host memory.
    pub overcommit: f64,
}

/// What a controller sees of one guest on a tick.
pub struct GuestView<'a> {
    pub present: bool,
    pub env: &'a Envelope,
    /// The allocation now (landed).
    pub size: Bytes,
    /// What was last asked for (equal to `size` when nothing is under way).
    pub target: Bytes,
    pub resizing: bool,
    /// The guest's statistics as the daemon would read them.
    pub sample: Sample,
    /// The guest's demand is above its allocation (what an OOM or thrashing would reveal).
    pub pressured: bool,
    /// The recorded future, for the oracle only.
    pub trace: &'a VmTrace,
}

impl GuestView<'_> {
    /// Largest demand over `[t0, t1]`: for the oracle, which knows the future.
    pub fn max_demand(&self, t0: f64, t1: f64) -> Bytes {
        let tr = self.trace;
        let i = tr.times.partition_point(|&x| (x as f64) <= t0).max(1) - 1;
        let mut m = 0u64;
        for j in i..tr.times.len() {
            if j > i && tr.times[j] as f64 > t1 {
                break;
            }
            m = m.max(tr.demand[j]);
        }
        Bytes(m).min(self.env.ceiling)
    }
}

/// What a controller sees of the host in host mode.
#[derive(Debug, Clone, Copy)]
pub struct HostView {
    pub memory: Bytes,
    /// Sum of the present guests' allocations.
    pub used: Bytes,
    pub guests: usize,
}

/// A policy or baseline driving one group of guests (a host, or one VM).
pub trait Controller: Send {
    /// Decide on this tick: push `(guest index, new target)` for each resize. Returns the
    /// earliest time the controller must be asked again if no guest's demand or allocation
    /// changes before then (`f64::INFINITY`: not until something changes).
    fn tick(
        &mut self,
        now: f64,
        guests: &[GuestView],
        host: Option<&HostView>,
        out: &mut Vec<(usize, Bytes)>,
    ) -> f64;
}

/// Everything one `simulate` run needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: Model,
    pub host: Option<HostMode>,
    /// VMs (by trace key) whose timelines are recorded for the report.
    pub timeline_vms: Vec<String>,
    /// Recorded span of each timeline, seconds from the VM's start.
    pub timeline_span: f64,
    /// Keep each VM's figures and pressure events (`--per-vm`).
    pub per_vm: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            model: Model::default(),
            host: None,
            timeline_vms: vec![],
            timeline_span: 2.0 * 86400.0,
            per_vm: false,
        }
    }
}

/// Groups of VM indexes simulated together: one per host in host mode, else one per VM.
pub fn groups(trace: &Trace, host: Option<&HostMode>) -> Vec<Vec<usize>> {
    let Some(h) = host else {
        return (0..trace.vms.len()).map(|i| vec![i]).collect();
    };
    let budget = h.memory.0 as f64 * h.overcommit.max(0.01);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut sum = 0f64;
    for (i, vm) in trace.vms.iter().enumerate() {
        let c = vm.ceiling.0 as f64;
        match out.last_mut() {
            Some(g) if sum + c <= budget => {
                g.push(i);
                sum += c;
            }
            _ => {
                out.push(vec![i]);
                sum = c;
            }
        }
    }
    out
}

/// An empty vector of views reusing `v`'s allocation (in-place collection keeps the buffer
/// when the element type's size and alignment do not change): one allocation per group, not
/// one per tick.
fn recycle<'a, 'b>(mut v: Vec<GuestView<'a>>) -> Vec<GuestView<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

/// Simulate one group of VMs under one controller.
fn run_group(
    trace: &Trace,
    idx: &[usize],
    ctl: &mut dyn Controller,
    opts: &Options,
    progress: &AtomicU64,
) -> (Acc, Vec<Timeline>, Vec<VmFigures>) {
    let m = &opts.model;
    let mut acc = Acc::default();
    let mut gs: Vec<Guest> = idx
        .iter()
        .map(|&i| {
            let tr = &trace.vms[i];
            let rec = opts.timeline_vms.contains(&tr.key);
            let mut g = Guest::new(tr, m, rec, opts.timeline_span);
            if opts.per_vm {
                g.keep_own();
            }
            g
        })
        .collect();
    acc.vms = gs.len() as u64;
    let first = gs.iter().map(|g| g.start).fold(f64::INFINITY, f64::min);
    let last = gs.iter().map(|g| g.end).fold(f64::NEG_INFINITY, f64::max);
    let mut out = Vec::new();
    let mut spare: Vec<GuestView<'static>> = Vec::new();
    let mut t = m.tick_ceil(first);
    let mut host_in_pressure = false;
    let mut reported = first;
    for g in &mut gs {
        g.record(g.start);
    }
    while t <= last {
        for g in gs.iter_mut() {
            if g.start <= t && g.t < g.end {
                g.advance(t, &mut acc);
            }
        }
        let mut views: Vec<GuestView> = recycle(std::mem::take(&mut spare));
        views.extend(gs.iter().map(|g| {
            let present = g.start <= t && t < g.end;
            GuestView {
                present,
                env: &g.env,
                size: Bytes(g.alloc),
                target: Bytes(g.target),
                resizing: g.land.is_finite(),
                sample: g.sample(t, m.interval),
                pressured: g.demand() > g.alloc,
                trace: g.tr,
            }
        }));
        let host = opts.host.as_ref().map(|h| HostView {
            memory: h.memory,
            used: Bytes(
                views
                    .iter()
                    .filter(|v| v.present)
                    .map(|v| v.size.0)
                    .sum::<u64>(),
            ),
            guests: views.iter().filter(|v| v.present).count(),
        });
        out.clear();
        let wake = ctl.tick(t, &views, host.as_ref(), &mut out);
        spare = recycle(views);
        for &(i, target) in &out {
            let Some(g) = gs.get_mut(i) else { continue };
            let mut target = target;
            if !g.env.is_realizable(target) {
                acc.envelope_violations += 1;
                target = g.env.realize_up(target.min(g.env.ceiling));
            }
            if target.0 == g.target {
                continue;
            }
            acc.resizes += 1;
            g.retarget(t, target.0, m.delay);
        }
        // Host accounting at tick resolution: the sum of allocations now, held to the next tick.
        let next = if m.exact {
            t + m.interval
        } else {
            let mut n = wake;
            for g in &gs {
                if g.t < g.end {
                    n = n.min(g.next_change()).min(g.end);
                    if g.start > t {
                        n = n.min(g.start);
                    }
                }
            }
            m.tick_ceil(n.min(last)).max(t + m.interval)
        };
        if let (Some(h), Some(hv)) = (&opts.host, host) {
            let dt = next.min(last) - t;
            if dt > 0.0 {
                acc.host_seconds += dt;
                if hv.used > h.memory {
                    if !host_in_pressure {
                        acc.host_pressure_events += 1;
                    }
                    host_in_pressure = true;
                    acc.host_pressure_seconds += dt;
                    acc.host_overflow_bs += (hv.used.0 - h.memory.0) as f64 * dt;
                } else {
                    host_in_pressure = false;
                }
            }
        }
        if t - reported > 86400.0 {
            progress.fetch_add(
                idx.len() as u64 * ((t - reported) as u64),
                Ordering::Relaxed,
            );
            reported = t;
        }
        t = next;
    }
    for g in &mut gs {
        g.finish(&mut acc);
    }
    progress.fetch_add(
        idx.len() as u64 * ((last - reported).max(0.0) as u64),
        Ordering::Relaxed,
    );
    let figures = gs.iter().filter_map(|g| g.figures()).collect();
    let tls = gs.into_iter().filter_map(|g| g.timeline).collect();
    (acc, tls, figures)
}

/// The work a whole run will do, in VM-seconds, for a progress bar.
pub fn total_work(trace: &Trace, groups: &[Vec<usize>], runs: usize) -> u64 {
    let per: u64 = groups
        .iter()
        .map(|g| {
            let s = g.iter().map(|&i| trace.vms[i].start()).min().unwrap_or(0);
            let e = g.iter().map(|&i| trace.vms[i].end()).max().unwrap_or(0);
            g.len() as u64 * (e - s).max(0) as u64
        })
        .sum();
    per * runs as u64
}

/// Run every spec over the trace, in parallel over (spec, group). `progress` counts
/// VM-seconds simulated.
pub fn run(trace: &Trace, specs: &[Spec], opts: &Options, progress: &AtomicU64) -> Vec<RunResult> {
    let gs = groups(trace, opts.host.as_ref());
    let jobs: Vec<(usize, usize)> = (0..specs.len())
        .flat_map(|s| (0..gs.len()).map(move |g| (s, g)))
        .collect();
    type Done = (usize, Acc, Vec<Timeline>, Vec<VmFigures>);
    let done: Vec<Done> = jobs
        .par_iter()
        .map(|&(s, g)| {
            let mut ctl = specs[s].build(gs[g].len(), &opts.model);
            let (acc, tl, vf) = run_group(trace, &gs[g], ctl.as_mut(), opts, progress);
            (s, acc, tl, vf)
        })
        .collect();
    let mut accs: Vec<Acc> = vec![Acc::default(); specs.len()];
    let mut tls: Vec<Vec<Timeline>> = vec![vec![]; specs.len()];
    let mut vfs: Vec<Vec<VmFigures>> = vec![vec![]; specs.len()];
    for (s, a, tl, vf) in done {
        accs[s].merge(a);
        tls[s].extend(tl);
        vfs[s].extend(vf);
    }
    let mut results: Vec<RunResult> = specs
        .iter()
        .zip(accs)
        .zip(tls)
        .zip(vfs)
        .map(|(((s, a), tl), vf)| {
            let mut r = RunResult::from_acc(
                s.name(),
                s.kind(),
                a,
                opts.host.is_some(),
                opts.model.interval,
            );
            r.timelines = tl;
            r.per_vm = vf;
            r
        })
        .collect();
    let oracle = results
        .iter()
        .find(|r| r.name == "oracle")
        .map(|r| r.reclaimed_pct);
    if let Some(o) = oracle.filter(|o| *o > 0.0) {
        for r in &mut results {
            r.oracle_pct = Some(100.0 * r.reclaimed_pct / o);
        }
    }
    results
}

#[cfg(test)]
mod tests;
