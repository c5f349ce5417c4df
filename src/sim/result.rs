//! What one run measured: time-weighted sums per VM and host (`Acc`), merged and turned into
//! the figures `--json` and the report print (`RunResult`), and VM timelines for the plots.

use crate::units::GIB;
use serde::Serialize;

/// Time-weighted sums for one run; merged across VMs and hosts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Acc {
    pub vms: u64,
    pub vm_seconds: f64,
    /// ∫ ceiling dt and ∫ allocation dt, byte-seconds.
    pub ceiling_bs: f64,
    pub alloc_bs: f64,
    pub demand_bs: f64,
    pub pressure_seconds: f64,
    pub shortfall_bs: f64,
    pub pressure_events: u64,
    pub resizes: u64,
    /// Requests outside the envelope or not realizable (must stay 0).
    pub envelope_violations: u64,
    /// Lengths of pressure events, seconds.
    #[serde(skip)]
    pub event_lengths: Vec<f32>,
    pub host_seconds: f64,
    pub host_pressure_seconds: f64,
    pub host_pressure_events: u64,
    /// ∫ max(0, used − memory) dt over hosts, byte-seconds.
    pub host_overflow_bs: f64,
}

impl Acc {
    pub(super) fn merge(&mut self, o: Acc) {
        self.vms += o.vms;
        self.vm_seconds += o.vm_seconds;
        self.ceiling_bs += o.ceiling_bs;
        self.alloc_bs += o.alloc_bs;
        self.demand_bs += o.demand_bs;
        self.pressure_seconds += o.pressure_seconds;
        self.shortfall_bs += o.shortfall_bs;
        self.pressure_events += o.pressure_events;
        self.resizes += o.resizes;
        self.envelope_violations += o.envelope_violations;
        self.event_lengths.extend(o.event_lengths);
        self.host_seconds += o.host_seconds;
        self.host_pressure_seconds += o.host_pressure_seconds;
        self.host_pressure_events += o.host_pressure_events;
        self.host_overflow_bs += o.host_overflow_bs;
    }
}

/// One pressure event of one VM, for `--per-vm`: when it began and what made it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EventRec {
    /// Seconds from the VM's first sample to the event's start.
    pub at_s: f64,
    /// Seconds it lasted.
    pub length_s: f64,
    /// Demand at the trace point before the one the event began on (equal to `demand` when
    /// the event began by a shrink landing, not a demand jump).
    pub before: u64,
    /// Demand and allocation when it began.
    pub demand: u64,
    pub alloc: u64,
    /// Its shortfall, byte-seconds.
    pub shortfall_bs: f64,
}

/// One VM's figures under one controller, for `--per-vm`: where a run's events, shortfall
/// and reclaim come from.
#[derive(Debug, Clone, Serialize)]
pub struct VmFigures {
    pub vm: String,
    pub ceiling: u64,
    pub vm_days: f64,
    pub reclaimed_pct: f64,
    pub mean_demand_pct: f64,
    /// ∫(ceiling − allocation) dt in GiB·h: this VM's share of the run's reclaim.
    pub reclaimed_gib_h: f64,
    pub pressure_events: u64,
    pub shortfall_gib_h: f64,
    pub events: Vec<EventRec>,
}

/// One point of a recorded VM timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub demand: u64,
    pub alloc: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub vm: String,
    pub floor: u64,
    pub ceiling: u64,
    pub points: Vec<TimelinePoint>,
}

/// One policy's or baseline's figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub kind: &'static str,
    pub reclaimed_pct: f64,
    pub oracle_pct: Option<f64>,
    pub pressure_time_pct: f64,
    pub pressure_events_per_vm_day: f64,
    pub shortfall_gib_h: f64,
    pub resizes_per_vm_day: f64,
    pub mean_allocation_pct: f64,
    pub mean_demand_pct: f64,
    pub pressure_event_p50_s: f64,
    pub pressure_event_p99_s: f64,
    pub envelope_violations: u64,
    /// Decisions the run stands for: one per guest per interval.
    pub decisions: u64,
    pub vms: u64,
    pub vm_days: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pressure_time_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pressure_events_per_host_day: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_overflow_gib_h: Option<f64>,
    #[serde(skip)]
    pub acc: Acc,
    #[serde(skip)]
    pub timelines: Vec<Timeline>,
    /// Each VM's figures (`--per-vm` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_vm: Vec<VmFigures>,
}

fn quantile(v: &mut [f32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)] as f64
}

impl RunResult {
    pub(super) fn from_acc(
        name: String,
        kind: &'static str,
        mut a: Acc,
        host_mode: bool,
        interval: f64,
    ) -> RunResult {
        let days = a.vm_seconds / 86400.0;
        let pct = |x: f64, of: f64| if of > 0.0 { 100.0 * x / of } else { 0.0 };
        let per_day = |x: f64| if days > 0.0 { x / days } else { 0.0 };
        let host_days = a.host_seconds / 86400.0;
        let mut lens = std::mem::take(&mut a.event_lengths);
        let p50 = quantile(&mut lens, 0.5);
        let p99 = quantile(&mut lens, 0.99);
        a.event_lengths = lens;
        RunResult {
            name,
            kind,
            reclaimed_pct: pct(a.ceiling_bs - a.alloc_bs, a.ceiling_bs),
            oracle_pct: None,
            pressure_time_pct: pct(a.pressure_seconds, a.vm_seconds),
            pressure_events_per_vm_day: per_day(a.pressure_events as f64),
            shortfall_gib_h: a.shortfall_bs / GIB as f64 / 3600.0,
            resizes_per_vm_day: per_day(a.resizes as f64),
            mean_allocation_pct: pct(a.alloc_bs, a.ceiling_bs),
            mean_demand_pct: pct(a.demand_bs, a.ceiling_bs),
            pressure_event_p50_s: p50,
            pressure_event_p99_s: p99,
            envelope_violations: a.envelope_violations,
            decisions: (a.vm_seconds / interval) as u64,
            vms: a.vms,
            vm_days: days,
            host_pressure_time_pct: host_mode.then(|| pct(a.host_pressure_seconds, a.host_seconds)),
            host_pressure_events_per_host_day: host_mode.then(|| {
                if host_days > 0.0 {
                    a.host_pressure_events as f64 / host_days
                } else {
                    0.0
                }
            }),
            host_overflow_gib_h: host_mode.then(|| a.host_overflow_bs / GIB as f64 / 3600.0),
            acc: a,
            timelines: vec![],
            per_vm: vec![],
        }
    }
}
