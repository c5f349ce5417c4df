//! The audit trail: every resize, and every hold whose reason changed, with its inputs and
//! reason. Kept in a bounded ring for the API and appended as JSON lines to a file.

use crate::planner::{EventReason, HoldReason};

use crate::planner::{Kind, Reason};
use crate::units::Bytes;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A guest's figures behind a decision; all empty (`Default`) for a host-wide record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inputs {
    pub total: Option<Bytes>,
    pub available: Option<Bytes>,
    pub free: Option<Bytes>,
    pub caches: Option<Bytes>,
    pub stats_age_seconds: Option<f64>,
    pub need: Bytes,
    pub predicted: Bytes,
    pub headroom: Bytes,
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Unix time, seconds.
    pub time: f64,
    pub host: String,
    pub guest: String,
    pub policy: String,
    pub generation: u64,
    pub kind: Kind,
    pub before: Bytes,
    pub after: Bytes,
    pub floor: Bytes,
    pub ceiling: Bytes,
    pub method: Option<String>,
    pub reason: Reason,
    /// The reason as a sentence.
    pub why: String,
    pub inputs: Inputs,
    pub dry_run: bool,
    /// `applied`, `dry-run`, `held`, `failed: …`, `converged`, `unconverged`.
    pub result: String,
    /// A vCPU change: the counts before and after (memory fields then give the size held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<VcpuChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VcpuChange {
    pub before: u32,
    pub after: u32,
}

/// What the ring may hold per record of `audit_ring`, on average: a typical record takes
/// about a third of this (see [`Kept::cost`]), so only long messages (host errors, failed
/// moves) ever make the byte budget bind before the record count does.
pub const BYTES_PER_RECORD: usize = 1024;

/// A record as the ring keeps it: the same fields, with the names (host, guest, policy,
/// method, result) shared between records, and the sentence left out when it is the
/// reason's own (`why` is rendered again from `reason` when served, as it was made).
struct Kept {
    time: f64,
    host: Arc<str>,
    guest: Arc<str>,
    policy: Arc<str>,
    generation: u64,
    kind: Kind,
    before: Bytes,
    after: Bytes,
    floor: Bytes,
    ceiling: Bytes,
    method: Option<Arc<str>>,
    reason: Reason,
    /// `None`: the reason as a sentence.
    why: Option<Box<str>>,
    inputs: Inputs,
    dry_run: bool,
    result: Arc<str>,
    vcpus: Option<VcpuChange>,
    /// What it counts against the byte budget.
    cost: usize,
}

impl Kept {
    /// An upper bound of the memory a record holds: its own size, and every string's bytes
    /// as if none were shared.
    fn cost(r: &Record) -> usize {
        let reason = match &r.reason {
            Reason::Hold(HoldReason::NotRunning { state }) => state.len(),
            Reason::Hold(HoldReason::BadEnvelope { message })
            | Reason::Hold(HoldReason::HostError { message }) => message.len(),
            Reason::Event(EventReason::Migrate { to, .. }) => to.len(),
            Reason::Event(EventReason::UnplugRefused { alias, .. }) => alias.len(),
            _ => 0,
        };
        std::mem::size_of::<Kept>()
            + r.host.len()
            + r.guest.len()
            + r.policy.len()
            + r.method.as_ref().map_or(0, String::len)
            + r.why.len()
            + reason
            + r.result.len()
    }

    fn record(&self) -> Record {
        Record {
            time: self.time,
            host: self.host.to_string(),
            guest: self.guest.to_string(),
            policy: self.policy.to_string(),
            generation: self.generation,
            kind: self.kind,
            before: self.before,
            after: self.after,
            floor: self.floor,
            ceiling: self.ceiling,
            method: self.method.as_deref().map(str::to_string),
            reason: self.reason.clone(),
            why: match &self.why {
                Some(w) => w.to_string(),
                None => self.reason.to_string(),
            },
            inputs: self.inputs.clone(),
            dry_run: self.dry_run,
            result: self.result.to_string(),
            vcpus: self.vcpus,
        }
    }
}

/// Strings shared between the ring's records. Names no record holds any more are dropped
/// whenever the table has doubled since the last sweep.
#[derive(Default)]
struct Names {
    set: HashSet<Arc<str>>,
    sweep_at: usize,
}

impl Names {
    fn get(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.set.get(s.as_str()) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        if self.set.len() > self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(64);
        }
        a
    }
}

#[derive(Default)]
struct Ring {
    records: VecDeque<Kept>,
    bytes: usize,
    names: Names,
}

pub struct Audit {
    ring: Mutex<Ring>,
    cap: usize,
    budget: usize,
    file: Mutex<Option<std::fs::File>>,
    path: Option<PathBuf>,
}

impl Audit {
    /// A ring of at most `cap` records and `cap` × [`BYTES_PER_RECORD`] bytes, appending to
    /// the file at `path` if given.
    pub fn new(cap: usize, path: Option<PathBuf>) -> std::io::Result<Audit> {
        let cap = cap.max(1);
        Audit::with_budget(cap, cap.saturating_mul(BYTES_PER_RECORD), path)
    }

    /// As [`Audit::new`], with a byte budget of its own.
    pub fn with_budget(cap: usize, budget: usize, path: Option<PathBuf>) -> std::io::Result<Audit> {
        let file = match &path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Audit {
            ring: Mutex::new(Ring {
                records: VecDeque::with_capacity(cap.min(4096)),
                ..Ring::default()
            }),
            cap: cap.max(1),
            budget: budget.max(1),
            file: Mutex::new(file),
            path,
        })
    }

    /// Opens the file at its path again (after log rotation renamed it): lines written
    /// until now went to the renamed file, the next go to the path. On failure the old file
    /// is kept and written to, and the error returned.
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(p) = &self.path else { return Ok(()) };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Ok(())
    }

    pub fn push(&self, r: Record) {
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            match serde_json::to_string(&r) {
                Ok(line) => {
                    if let Err(e) = writeln!(f, "{line}") {
                        tracing::warn!(error = %e, path = ?self.path, "cannot append to the audit log");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot serialise an audit record"),
            }
        }
        let cost = Kept::cost(&r);
        let why = (r.why != r.reason.to_string()).then(|| r.why.into_boxed_str());
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest go first, until the newest fits both bounds (it is kept even alone).
        while !ring.records.is_empty()
            && (ring.records.len() >= self.cap || ring.bytes + cost > self.budget)
        {
            if let Some(old) = ring.records.pop_front() {
                ring.bytes -= old.cost;
            }
        }
        let n = &mut ring.names;
        let kept = Kept {
            time: r.time,
            host: n.get(r.host),
            guest: n.get(r.guest),
            policy: n.get(r.policy),
            generation: r.generation,
            kind: r.kind,
            before: r.before,
            after: r.after,
            floor: r.floor,
            ceiling: r.ceiling,
            method: r.method.map(|m| n.get(m)),
            reason: r.reason,
            why,
            inputs: r.inputs,
            dry_run: r.dry_run,
            result: n.get(r.result),
            vcpus: r.vcpus,
            cost,
        };
        ring.bytes += cost;
        ring.records.push_back(kept);
    }

    /// The newest records, newest last; for one guest when `guest` is given.
    pub fn recent(&self, guest: Option<&str>, max: usize) -> Vec<Record> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Record> = ring
            .records
            .iter()
            .rev()
            .filter(|r| guest.is_none_or(|g| &*r.guest == g))
            .take(max)
            .map(Kept::record)
            .collect();
        v.reverse();
        v
    }

    /// Records held and the bytes they count against the budget.
    pub fn usage(&self) -> (usize, usize) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (ring.records.len(), ring.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::PlannerReason;

    fn rec(g: &str) -> Record {
        Record {
            time: 0.0,
            host: "h".into(),
            guest: g.into(),
            policy: "p".into(),
            generation: 1,
            kind: Kind::Hold,
            before: Bytes(1),
            after: Bytes(1),
            floor: Bytes(0),
            ceiling: Bytes(2),
            method: None,
            reason: Reason::Plan(PlannerReason::NoSamples),
            why: String::new(),
            inputs: Inputs::default(),
            dry_run: false,
            result: "held".into(),
            vcpus: None,
        }
    }

    #[test]
    fn ring_is_bounded_and_file_gets_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let a = Audit::new(3, Some(p.clone())).unwrap();
        for g in ["a", "b", "a", "c", "a"] {
            a.push(rec(g));
        }
        assert_eq!(a.recent(None, 10).len(), 3);
        assert_eq!(a.recent(Some("a"), 10).len(), 2);
        let text = std::fs::read_to_string(p).unwrap();
        assert_eq!(text.lines().count(), 5);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["reason"]["reason"], "no-samples");
    }

    fn resize(g: &str, i: u64) -> Record {
        let reason = Reason::Plan(PlannerReason::Short {
            available: Bytes(i),
            threshold: Bytes(2 * i),
        });
        Record {
            kind: Kind::Grow,
            method: Some("balloon".into()),
            why: reason.to_string(),
            reason,
            result: "applied".into(),
            ..rec(g)
        }
    }

    /// The API serves what the file got: the same JSON, field for field, whether the names
    /// are shared and the sentence rendered again or not.
    #[test]
    fn records_are_served_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let a = Audit::new(100, Some(p.clone())).unwrap();
        let mut own_why = resize("b", 3);
        own_why.why = "a sentence of its own".into();
        let failed = Record {
            reason: Reason::Hold(HoldReason::HostError {
                message: "connection reset".into(),
            }),
            why: "host error: connection reset".into(),
            result: "failed: connection reset".into(),
            method: None,
            ..rec("c")
        };
        let migrate = Record {
            reason: Reason::Event(EventReason::Migrate {
                to: "h2".into(),
                deficit: Bytes(7),
            }),
            policy: String::new(),
            dry_run: true,
            ..resize("a", 9)
        };
        for r in [
            resize("a", 1),
            own_why,
            rec("a"),
            failed,
            migrate,
            resize("b", 2),
        ] {
            a.push(r);
        }
        let served: Vec<serde_json::Value> = a
            .recent(None, 100)
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        let written: Vec<serde_json::Value> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(served, written);
        assert_eq!(served[1]["why"], "a sentence of its own");
        assert_eq!(served[0]["why"], "short: predicted available 1B below 2B");
        let b = a.recent(Some("b"), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].inputs.need, Bytes(0));
        assert_eq!(
            b[0].reason,
            Reason::Plan(PlannerReason::Short {
                available: Bytes(2),
                threshold: Bytes(4)
            })
        );
        assert_eq!(a.recent(Some("b"), 10)[0].why, "a sentence of its own");
    }

    /// A rotation renames the file; after `reopen` the next lines go to a new file at the
    /// path, and none is lost: the renamed file has every line up to the reopen.
    #[test]
    fn reopen_after_rotation_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let a = Audit::new(10, Some(p.clone())).unwrap();
        a.push(rec("a"));
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&p, &rotated).unwrap();
        a.push(rec("b"));
        a.reopen().unwrap();
        a.push(rec("c"));
        let lines = |f: &std::path::Path| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["guest"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&rotated), ["a", "b"]);
        assert_eq!(lines(&p), ["c"]);
    }

    /// Long messages cannot make the ring outgrow its byte budget: the oldest records go
    /// first, the newest stay, and what is left is the newest that fit.
    #[test]
    fn the_ring_keeps_to_its_byte_budget_and_drops_the_oldest() {
        let budget = 20 * Kept::cost(&rec("g0"));
        let a = Audit::with_budget(1000, budget, None).unwrap();
        for i in 0..200u64 {
            let mut r = resize(&format!("g{i}"), i);
            if i % 3 == 0 {
                r.reason = Reason::Hold(HoldReason::HostError {
                    message: "x".repeat(i as usize * 10),
                });
                r.why = r.reason.to_string();
            }
            a.push(r);
            let (n, bytes) = a.usage();
            assert!(bytes <= budget || n == 1, "{bytes} bytes in {n} records");
            let all = a.recent(None, usize::MAX);
            assert_eq!(all.len(), n);
            // The newest is always there, and the ring is a run of the newest.
            assert_eq!(all.last().unwrap().guest, format!("g{i}"));
            for (k, r) in all.iter().rev().enumerate() {
                assert_eq!(r.guest, format!("g{}", i - k as u64));
            }
        }
        // A record larger than the whole budget is still kept, alone.
        let mut huge = resize("huge", 1);
        huge.why = "y".repeat(budget * 2);
        a.push(huge);
        assert_eq!(a.usage().0, 1);
        assert_eq!(a.recent(None, 10)[0].guest, "huge");
        a.push(resize("after", 1));
        assert_eq!(a.recent(None, 10).len(), 1);
        assert_eq!(a.recent(None, 10)[0].guest, "after");
    }

    /// A typical record costs well under its share of the default budget, so the record
    /// count binds first, as it did before the budget.
    #[test]
    fn the_count_binds_first_for_ordinary_records() {
        let r = resize("instance-0000a1b2-with-a-longer-name", 1);
        assert!(
            Kept::cost(&r) * 2 < BYTES_PER_RECORD,
            "{} bytes a record",
            Kept::cost(&r)
        );
        let a = Audit::new(50, None).unwrap();
        for i in 0..200 {
            a.push(resize(&format!("instance-{i:08}"), i));
        }
        assert_eq!(a.usage().0, 50);
    }

    /// Names no record holds any more are not kept for ever: the table stays near the
    /// number of distinct names in the ring.
    #[test]
    fn shared_names_of_evicted_records_are_dropped() {
        let a = Audit::new(10, None).unwrap();
        for i in 0..10_000 {
            a.push(resize(&format!("g{i}"), i));
        }
        let names = a.ring.lock().unwrap().names.set.len();
        assert!(names <= 2 * (10 + 4) + 64, "{names} names kept");
    }
}
