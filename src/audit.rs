//! The audit trail: every resize, and every hold whose reason changed, with its inputs and
//! reason. Kept in a bounded ring for the API and appended as JSON lines to a file.

use crate::planner::{Kind, Reason};
use crate::units::Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
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

pub struct Audit {
    ring: Mutex<VecDeque<Record>>,
    cap: usize,
    file: Mutex<Option<std::fs::File>>,
    path: Option<PathBuf>,
}

impl Audit {
    pub fn new(cap: usize, path: Option<PathBuf>) -> std::io::Result<Audit> {
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
            ring: Mutex::new(VecDeque::with_capacity(cap.min(4096))),
            cap: cap.max(1),
            file: Mutex::new(file),
            path,
        })
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
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= self.cap {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The newest records, newest last; for one guest when `guest` is given.
    pub fn recent(&self, guest: Option<&str>, max: usize) -> Vec<Record> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Record> = ring
            .iter()
            .rev()
            .filter(|r| guest.is_none_or(|g| r.guest == g))
            .take(max)
            .cloned()
            .collect();
        v.reverse();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            reason: Reason::NoSamples,
            why: String::new(),
            inputs: Inputs {
                total: None,
                available: None,
                free: None,
                caches: None,
                stats_age_seconds: None,
                need: Bytes(0),
                predicted: Bytes(0),
                headroom: Bytes(0),
            },
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
}
