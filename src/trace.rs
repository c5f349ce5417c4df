//! Reading recorded memory demand for the simulator. One reader for now: the CSV of the
//! Bitbrains GWA-T-12 "Rnd" trace as shipped in `../shared/traces/` (header
//! `trace,vm,ts_s,mem_cap_kb,mem_use_kb`, one sample per VM every 300 s). Readers for other
//! formats belong beside it and produce the same [`Trace`].
//!
//! Real traces are dirty. Every defect is handled by a stated rule and counted in
//! [`Defects`], so a report can say what was done to the data:
//! - rows that do not parse are skipped and counted, the first few with their line number;
//! - out-of-order rows are sorted, duplicate timestamps keep the first row;
//! - the ceiling of a VM is its largest capacity in the trace; rows with capacity 0 keep their
//!   usage; usage above the ceiling is clamped to it;
//! - a VM with no non-zero capacity, or whose samples span less than `min_span`, is skipped;
//! - gaps longer than three sample periods are counted; demand is held across them, as between
//!   any two samples.

use crate::units::{Bytes, KIB};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}:1: not a Bitbrains memory trace: header is {found:?}, expected \"trace,vm,ts_s,mem_cap_kb,mem_use_kb\""
    )]
    Header { path: String, found: String },
    #[error("{path}: no usable VM in the trace ({reason})")]
    Empty { path: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// VMs whose samples span less than this many seconds are skipped.
    pub min_span: f64,
    /// Keep only the first N VMs (by trace and number), 0 for all.
    pub max_vms: usize,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            min_span: 7.0 * 86400.0,
            max_vms: 0,
        }
    }
}

/// One VM's demand over time: a step function, `demand[i]` from `times[i]` until `times[i+1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmTrace {
    /// "trace/vm", e.g. "rnd-2013-8/17".
    pub key: String,
    pub ceiling: Bytes,
    /// Unix seconds, strictly increasing.
    pub times: Vec<i64>,
    /// Bytes, at most `ceiling`.
    pub demand: Vec<u64>,
}

impl VmTrace {
    pub fn start(&self) -> i64 {
        self.times.first().copied().unwrap_or(0)
    }
    pub fn end(&self) -> i64 {
        self.times.last().copied().unwrap_or(0)
    }
}

/// What was wrong with the data, and how much of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Defects {
    pub rows: u64,
    pub malformed_rows: u64,
    /// The first few malformed rows, as "LINE: problem".
    pub malformed_examples: Vec<String>,
    pub out_of_order_rows: u64,
    pub duplicate_rows: u64,
    pub zero_capacity_rows: u64,
    pub usage_above_capacity_rows: u64,
    /// VMs whose (non-zero) capacity changed within the trace.
    pub capacity_changed_vms: u64,
    /// VMs skipped because their samples span less than the minimum.
    pub short_vms: u64,
    /// VMs skipped because no row gave them a capacity.
    pub no_capacity_vms: u64,
    /// Intervals between samples longer than three periods, and their total length.
    pub gaps: u64,
    pub gap_hours: f64,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    pub vms: Vec<VmTrace>,
    pub defects: Defects,
    /// Median interval between samples, seconds.
    pub period: f64,
    /// The rules applied to the data, for the report.
    pub rules: Vec<String>,
}

impl Trace {
    pub fn start(&self) -> i64 {
        self.vms.iter().map(VmTrace::start).min().unwrap_or(0)
    }
    pub fn end(&self) -> i64 {
        self.vms.iter().map(VmTrace::end).max().unwrap_or(0)
    }
}

const HEADER: &str = "trace,vm,ts_s,mem_cap_kb,mem_use_kb";
const EXAMPLES: usize = 5;

/// Read a trace file, gzip-compressed or not (told apart by its first bytes).
pub fn read_path(path: &Path, opts: &ReadOptions) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let io = |source| TraceError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let gz = r.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    if gz {
        let d = flate2::read::MultiGzDecoder::new(r);
        read_bitbrains(BufReader::with_capacity(1 << 20, d), &name, opts)
    } else {
        read_bitbrains(r, &name, opts)
    }
}

struct Row {
    ts: i64,
    cap_kb: u64,
    use_kb: u64,
}

fn parse_row(line: &str) -> Result<(&str, u32, Row), String> {
    let mut f = line.split(',');
    let mut next = |what: &str| {
        f.next()
            .map(str::trim)
            .ok_or_else(|| format!("missing field {what}"))
    };
    let trace = next("trace")?;
    let vm = next("vm")?;
    let ts = next("ts_s")?;
    let cap = next("mem_cap_kb")?;
    let usage = next("mem_use_kb")?;
    if f.next().is_some() {
        return Err("more than 5 fields".into());
    }
    let num = |what: &str, v: &str| -> Result<u64, String> {
        // Some exports write integral values as floats ("8218624.0").
        if let Ok(n) = v.parse::<u64>() {
            return Ok(n);
        }
        match v.parse::<f64>() {
            Ok(x) if (0.0..1e18).contains(&x) => Ok(x.round() as u64),
            _ => Err(format!("{what} is not a non-negative number: {v:?}")),
        }
    };
    let vm = u32::try_from(num("vm", vm)?).map_err(|_| format!("vm {vm} is out of range"))?;
    let ts = i64::try_from(num("ts_s", ts)?).map_err(|_| format!("ts_s {ts} is out of range"))?;
    Ok((
        trace,
        vm,
        Row {
            ts,
            cap_kb: num("mem_cap_kb", cap)?,
            use_kb: num("mem_use_kb", usage)?,
        },
    ))
}

/// Read the Bitbrains CSV format from any reader. `name` is used in messages.
pub fn read_bitbrains<R: Read>(
    r: BufReader<R>,
    name: &str,
    opts: &ReadOptions,
) -> Result<Trace, TraceError> {
    let io = |source| TraceError::Io {
        path: name.to_string(),
        source,
    };
    let mut d = Defects::default();
    let mut per_vm: BTreeMap<(String, u32), Vec<Row>> = BTreeMap::new();
    let mut line = String::new();
    let mut r = r;
    let mut lineno = 0u64;
    if r.read_line(&mut line).map_err(io)? == 0 {
        return Err(TraceError::Header {
            path: name.into(),
            found: String::new(),
        });
    }
    lineno += 1;
    let header = line.trim_start_matches('\u{feff}').trim();
    if header != HEADER {
        return Err(TraceError::Header {
            path: name.into(),
            found: header.chars().take(80).collect(),
        });
    }
    let mut last_key: Option<(String, u32)> = None;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        lineno += 1;
        let l = line.trim_end_matches(['\n', '\r']);
        if l.trim().is_empty() {
            continue;
        }
        d.rows += 1;
        match parse_row(l) {
            Ok((trace, vm, row)) => {
                // Rows come grouped by VM: avoid allocating a key per row.
                let same = last_key
                    .as_ref()
                    .is_some_and(|(t, v)| *v == vm && t == trace);
                if !same {
                    last_key = Some((trace.to_string(), vm));
                }
                if let Some(k) = &last_key {
                    match per_vm.get_mut(k) {
                        Some(v) => v.push(row),
                        None => {
                            per_vm.insert(k.clone(), vec![row]);
                        }
                    }
                }
            }
            Err(e) => {
                d.malformed_rows += 1;
                if d.malformed_examples.len() < EXAMPLES {
                    d.malformed_examples.push(format!("{name}:{lineno}: {e}"));
                }
            }
        }
    }

    let mut vms = Vec::new();
    let mut periods = Vec::new();
    for ((trace, vm), mut rows) in per_vm {
        d.out_of_order_rows += rows.windows(2).filter(|w| w[1].ts < w[0].ts).count() as u64;
        rows.sort_by_key(|r| r.ts);
        let before = rows.len();
        rows.dedup_by_key(|r| r.ts);
        d.duplicate_rows += (before - rows.len()) as u64;
        let caps: Vec<u64> = rows.iter().map(|r| r.cap_kb).filter(|&c| c > 0).collect();
        d.zero_capacity_rows += (rows.len() - caps.len()) as u64;
        let Some(&max_cap) = caps.iter().max() else {
            d.no_capacity_vms += 1;
            continue;
        };
        if caps.iter().any(|&c| c != max_cap) {
            d.capacity_changed_vms += 1;
        }
        d.usage_above_capacity_rows += rows
            .iter()
            .filter(|r| r.cap_kb > 0 && r.use_kb > r.cap_kb)
            .count() as u64;
        let span = (rows[rows.len() - 1].ts - rows[0].ts) as f64;
        if span < opts.min_span {
            d.short_vms += 1;
            continue;
        }
        let mut deltas: Vec<i64> = rows.windows(2).map(|w| w[1].ts - w[0].ts).collect();
        deltas.sort_unstable();
        let period = deltas.get(deltas.len() / 2).copied().unwrap_or(300).max(1);
        periods.push(period);
        for w in rows.windows(2) {
            let dt = w[1].ts - w[0].ts;
            if dt > 3 * period {
                d.gaps += 1;
                d.gap_hours += dt as f64 / 3600.0;
            }
        }
        let ceiling = Bytes(max_cap.saturating_mul(KIB));
        vms.push(VmTrace {
            key: format!("{trace}/{vm}"),
            ceiling,
            times: rows.iter().map(|r| r.ts).collect(),
            demand: rows
                .iter()
                .map(|r| r.use_kb.saturating_mul(KIB).min(ceiling.0))
                .collect(),
        });
        if opts.max_vms > 0 && vms.len() >= opts.max_vms {
            break;
        }
    }
    if vms.is_empty() {
        return Err(TraceError::Empty {
            path: name.into(),
            reason: format!(
                "{} rows, {} malformed, {} VMs too short, {} without capacity",
                d.rows, d.malformed_rows, d.short_vms, d.no_capacity_vms
            ),
        });
    }
    periods.sort_unstable();
    let period = periods[periods.len() / 2] as f64;
    let rules = vec![
        "ceiling = the VM's largest capacity in the trace; usage clamped to it".to_string(),
        "rows with capacity 0 keep their usage (the VM's ceiling still applies)".to_string(),
        "out-of-order rows sorted; of duplicate timestamps the first row is kept".to_string(),
        format!(
            "VMs spanning less than {:.1} days skipped",
            opts.min_span / 86400.0
        ),
        "demand held constant between samples, across gaps too".to_string(),
        "malformed rows skipped and counted".to_string(),
    ];
    Ok(Trace {
        name: name.to_string(),
        vms,
        defects: d,
        period,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, min_span: f64) -> Result<Trace, TraceError> {
        read_bitbrains(
            BufReader::new(text.as_bytes()),
            "t.csv",
            &ReadOptions {
                min_span,
                max_vms: 0,
            },
        )
    }

    #[test]
    fn defects_are_counted_and_repaired() {
        let text = "trace,vm,ts_s,mem_cap_kb,mem_use_kb\n\
            x,1,600,1048576,1000\n\
            x,1,300,1048576,2000\n\
            x,1,300,1048576,9999\n\
            x,1,900,0,3000\n\
            x,1,1200,2097152,4194304\n\
            x,1,oops,1,1\n\
            x,1,1500\n\
            x,2,0,0,10\n\
            x,2,300,0,10\n\
            x,3,0,1024,10\n\
            x,1,9000,1048576,5000\n";
        let t = read(text, 600.0).expect("trace");
        let d = &t.defects;
        assert_eq!(d.rows, 11);
        assert_eq!(d.malformed_rows, 2);
        assert!(
            d.malformed_examples[0].starts_with("t.csv:7: ts_s"),
            "{d:?}"
        );
        assert!(d.malformed_examples[1].starts_with("t.csv:8: missing field mem_cap_kb"));
        assert_eq!(d.out_of_order_rows, 1);
        assert_eq!(d.duplicate_rows, 1);
        assert_eq!(d.zero_capacity_rows, 3);
        assert_eq!(d.usage_above_capacity_rows, 1);
        assert_eq!(d.capacity_changed_vms, 1);
        assert_eq!(d.no_capacity_vms, 1);
        assert_eq!(d.short_vms, 1);
        assert_eq!(d.gaps, 1);
        assert_eq!(t.vms.len(), 1);
        let vm = &t.vms[0];
        assert_eq!(vm.key, "x/1");
        assert_eq!(vm.ceiling, Bytes::from_gib(2));
        assert_eq!(vm.times, vec![300, 600, 900, 1200, 9000]);
        // The first of two duplicate rows is kept; usage above the ceiling is clamped.
        assert_eq!(vm.demand[0], 2000 * KIB);
        assert_eq!(vm.demand[3], Bytes::from_gib(2).0);
        assert_eq!(t.period, 300.0);
    }

    #[test]
    fn bad_header_and_empty_trace_are_named() {
        let e = read("vm,ts\n1,2\n", 0.0).expect_err("error");
        assert!(e.to_string().contains("t.csv:1: not a Bitbrains"), "{e}");
        let e = read("trace,vm,ts_s,mem_cap_kb,mem_use_kb\nx,1,0,5,1\n", 600.0).expect_err("error");
        assert!(e.to_string().contains("1 VMs too short"), "{e}");
    }
}
