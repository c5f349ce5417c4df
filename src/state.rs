//! What survives a restart, even a SIGKILL (issue 7): pins and manual sizes, and each guest's
//! planner memory (recent samples, the peak window, when it was last resized), so the first
//! decisions after a restart are those the daemon would have taken had it not stopped.
//!
//! One JSON file, `STATE_DIR/state.json`, replaced atomically (written beside, synced, renamed,
//! the directory synced): a crash leaves the old file or the new one, never half of one. Pins
//! are written at once when an operator changes them; guest memory every few seconds and at a
//! clean stop. A file that cannot be read is reported and set aside (`state.json.bad`), never
//! fatal: guests then keep their sizes and the planner starts afresh.

use crate::planner::{History, PeakTracker, Sample};
use crate::units::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "state.json";
pub const VERSION: u32 = 1;

/// One guest's planner memory, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestState {
    pub name: String,
    /// (at, size, total, available, swap-in rate), oldest first.
    pub samples: Vec<(f64, u64, u64, u64, f64)>,
    /// The peak window: (span, buckets (index, bytes), latest value, its time).
    pub peaks: (f64, Vec<(i64, u64)>, u64, f64),
    pub last_grow: Option<f64>,
    pub last_shrink: Option<f64>,
    pub held_until: f64,
    pub settled_at: f64,
    pub hostile: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub saved_at: f64,
    /// Pinned guests, by name.
    pub pins: Vec<String>,
    /// Sizes set by hand (by name), for the record: the guest is pinned at that size.
    pub manual: BTreeMap<String, u64>,
    /// By guest UUID.
    pub guests: BTreeMap<String, GuestState>,
}

impl GuestState {
    pub fn capture(
        name: &str,
        samples: impl Iterator<Item = Sample>,
        peaks: &PeakTracker,
        history: History,
        held_until: f64,
        settled_at: f64,
        hostile: u64,
    ) -> GuestState {
        let mut g = GuestState {
            name: String::new(),
            samples: Vec::new(),
            peaks: (0.0, Vec::new(), 0, -1.0),
            last_grow: None,
            last_shrink: None,
            held_until: 0.0,
            settled_at: 0.0,
            hostile: 0,
        };
        g.update(
            name, samples, peaks, history, held_until, settled_at, hostile,
        );
        g
    }

    /// As [`GuestState::capture`], in place: the vectors keep their room, so capturing
    /// every guest every few seconds allocates nothing once they have grown to the window.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        name: &str,
        samples: impl Iterator<Item = Sample>,
        peaks: &PeakTracker,
        history: History,
        held_until: f64,
        settled_at: f64,
        hostile: u64,
    ) {
        if self.name != name {
            self.name = name.to_string();
        }
        self.samples.clear();
        self.samples
            .extend(samples.map(|s| (s.at, s.size.0, s.total.0, s.available.0, s.swap_in_rate)));
        let (last, last_at) = peaks.last();
        self.peaks.0 = peaks.window();
        self.peaks.1.clear();
        self.peaks.1.extend(peaks.buckets().map(|(k, b)| (k, b.0)));
        self.peaks.2 = last.0;
        // JSON has no infinities: "before any sample" is saved as -1.
        self.peaks.3 = if last_at.is_finite() { last_at } else { -1.0 };
        self.last_grow = history.last_grow;
        self.last_shrink = history.last_shrink;
        self.held_until = if held_until.is_finite() {
            held_until
        } else {
            0.0
        };
        self.settled_at = if settled_at.is_finite() {
            settled_at
        } else {
            0.0
        };
        self.hostile = hostile;
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.0.is_finite() && s.4.is_finite() && s.3 <= s.2)
            .map(|&(at, size, total, available, swap_in_rate)| Sample {
                at,
                size: Bytes(size),
                total: Bytes(total),
                available: Bytes(available),
                swap_in_rate,
            })
            .collect()
    }

    pub fn peaks(&self) -> PeakTracker {
        let (span, buckets, last, last_at) = &self.peaks;
        PeakTracker::from_parts(
            *span,
            buckets.iter().map(|&(k, b)| (k, Bytes(b))).collect(),
            Bytes(*last),
            *last_at,
        )
    }

    pub fn history(&self) -> History {
        History {
            last_grow: self.last_grow,
            last_shrink: self.last_shrink,
        }
    }
}

/// Read the state file. `Ok(None)`: there is none (first start).
pub fn load(dir: &Path) -> Result<Option<State>, String> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let bad = |e: serde_json::Error| {
        format!(
            "{}:{}:{}: not a memscale state file: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    };
    // The version first: a newer layout is named as such, not as a broken file.
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(bad)?;
    let version = v["version"].as_u64().unwrap_or(0);
    if version != u64::from(VERSION) {
        return Err(format!(
            "{}: state version {version} (this memscale reads {VERSION})",
            path.display()
        ));
    }
    let st: State = serde_json::from_value(v)
        .map_err(|e| format!("{}: not a memscale state file: {e}", path.display()))?;
    Ok(Some(st))
}

/// Move an unreadable state file aside so it is neither lost nor read again.
pub fn set_aside(dir: &Path) -> Option<PathBuf> {
    let from = dir.join(FILE);
    let to = dir.join(format!("{FILE}.bad"));
    std::fs::rename(&from, &to).ok().map(|_| to)
}

/// Replace the state file atomically.
pub fn save(dir: &Path, st: &State) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec(st).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Guests serialised per taking of the lock by [`save_locked`].
const CHUNK: usize = 64;

/// As [`save`] for `head` with the guests behind `guests` (`head.guests` is not read), taken
/// a few at a time: neither a copy of every guest's memory nor the whole file is ever held
/// (at 1,000 guests that was 3 MiB of copy and an 8 MiB buffer every save), and the lock is
/// held for serialising a chunk, never across a write. The bytes are those of `save`.
pub fn save_locked(
    dir: &Path,
    head: &State,
    guests: &Mutex<BTreeMap<String, GuestState>>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"{\"version\":");
        json(&mut buf, &head.version)?;
        buf.extend_from_slice(b",\"saved_at\":");
        json(&mut buf, &head.saved_at)?;
        buf.extend_from_slice(b",\"pins\":");
        json(&mut buf, &head.pins)?;
        buf.extend_from_slice(b",\"manual\":");
        json(&mut buf, &head.manual)?;
        buf.extend_from_slice(b",\"guests\":{");
        let mut after: Option<String> = None;
        loop {
            let full = {
                let map = guests.lock().unwrap_or_else(|p| p.into_inner());
                let rest: Box<dyn Iterator<Item = (&String, &GuestState)>> = match &after {
                    None => Box::new(map.iter()),
                    Some(k) => Box::new(map.range::<str, _>((
                        std::ops::Bound::Excluded(k.as_str()),
                        std::ops::Bound::Unbounded,
                    ))),
                };
                let mut n = 0;
                for (k, g) in rest.take(CHUNK) {
                    if after.is_some() || n > 0 {
                        buf.push(b',');
                    }
                    json(&mut buf, k)?;
                    buf.push(b':');
                    json(&mut buf, g)?;
                    n += 1;
                    after = Some(k.clone());
                }
                n == CHUNK
            };
            if !full {
                break;
            }
            f.write_all(&buf)?;
            buf.clear();
        }
        buf.extend_from_slice(b"}}");
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// One piece of the state as JSON, onto `buf`.
fn json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(buf, v).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, avail_mib: u64) -> Sample {
        Sample {
            at,
            size: Bytes::from_mib(2048),
            total: Bytes::from_mib(2000),
            available: Bytes::from_mib(avail_mib),
            swap_in_rate: 0.0,
        }
    }

    #[test]
    fn a_guest_round_trips_and_the_file_is_replaced_whole() {
        let mut peaks = PeakTracker::new(3600.0);
        let samples = [sample(100.0, 200), sample(200.0, 1500), sample(300.0, 1400)];
        for s in &samples {
            peaks.observe(s);
        }
        let g = GuestState::capture(
            "web",
            samples.iter().copied(),
            &peaks,
            History {
                last_grow: Some(150.0),
                last_shrink: None,
            },
            0.0,
            120.0,
            2,
        );
        let st = State {
            version: VERSION,
            saved_at: 301.0,
            pins: vec!["db".into()],
            manual: [("db".to_string(), 4 << 30)].into(),
            guests: [("uuid-1".to_string(), g.clone())].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &st).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back, st);
        let g2 = &back.guests["uuid-1"];
        assert_eq!(g2.samples(), samples.to_vec());
        // The restored peak window answers as the original.
        let mut p2 = g2.peaks();
        assert_eq!(p2.peak(310.0), peaks.clone().peak(310.0));
        assert_eq!(
            p2.peak(310.0),
            sample(200.0, 1500).need().max(sample(100.0, 200).need())
        );
        assert_eq!(g2.history().last_grow, Some(150.0));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    /// The file written a chunk of guests at a time is the file `save` writes, byte for byte,
    /// and a guest captured in place is the guest captured afresh.
    #[test]
    fn the_chunked_save_writes_what_save_writes() {
        let mut peaks = PeakTracker::new(3600.0);
        let mut guests = BTreeMap::new();
        for i in 0..(3 * CHUNK + 5) {
            let samples: Vec<Sample> = (0..(i % 7))
                .map(|k| sample(100.0 + k as f64 + 0.25, 100 + k as u64))
                .collect();
            for s in &samples {
                peaks.observe(s);
            }
            let mut g = GuestState::capture(
                "old name",
                (0..20).map(|k| sample(k as f64, 7)),
                &PeakTracker::new(60.0),
                History::default(),
                f64::INFINITY,
                0.0,
                9,
            );
            let fresh = GuestState::capture(
                &format!("guest \"{i}\""),
                samples.iter().copied(),
                &peaks,
                History {
                    last_grow: Some(i as f64),
                    last_shrink: None,
                },
                f64::NAN,
                1.5,
                i as u64,
            );
            g.update(
                &format!("guest \"{i}\""),
                samples.iter().copied(),
                &peaks,
                History {
                    last_grow: Some(i as f64),
                    last_shrink: None,
                },
                f64::NAN,
                1.5,
                i as u64,
            );
            assert_eq!(g, fresh);
            guests.insert(format!("uuid-{i:04}\\"), g);
        }
        for n in [0, 1, CHUNK, 3 * CHUNK + 5] {
            let some: BTreeMap<String, GuestState> = guests
                .iter()
                .take(n)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let st = State {
                version: VERSION,
                saved_at: 301.5,
                pins: vec!["db".into(), "web".into()],
                manual: [("db".to_string(), 4 << 30)].into(),
                guests: some.clone(),
            };
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            save(a.path(), &st).unwrap();
            let head = State {
                guests: BTreeMap::new(),
                ..st.clone()
            };
            save_locked(b.path(), &head, &Mutex::new(some)).unwrap();
            let (x, y) = (
                std::fs::read(a.path().join(FILE)).unwrap(),
                std::fs::read(b.path().join(FILE)).unwrap(),
            );
            assert!(
                x == y,
                "{n} guests:\n{}\n{}",
                String::from_utf8_lossy(&x),
                String::from_utf8_lossy(&y)
            );
            assert_eq!(load(b.path()).unwrap().unwrap(), st);
            assert!(!b.path().join("state.json.tmp").exists());
        }
    }

    #[test]
    fn a_broken_file_is_named_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FILE), "{\"version\": 1, \"pins\": [\n  3").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("state.json:2:") && e.contains("not a memscale state file"),
            "{e}"
        );
        std::fs::write(dir.path().join(FILE), "{\"version\": 1, \"pins\": [3]}").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("not a memscale state file"), "{e}");
        let aside = set_aside(dir.path()).unwrap();
        assert!(aside.ends_with("state.json.bad"));
        assert_eq!(load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FILE), "{\"version\": 9}").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("state version 9"));
        // Samples that could not have come from a guest are dropped on the way in.
        let g = GuestState {
            name: "x".into(),
            samples: vec![
                (1.0, 1, 10, 20, 0.0),
                (f64::NAN, 1, 10, 5, 0.0),
                (2.0, 1, 10, 5, 0.0),
            ],
            peaks: (60.0, vec![], 0, f64::NEG_INFINITY),
            last_grow: None,
            last_shrink: None,
            held_until: 0.0,
            settled_at: 0.0,
            hostile: 0,
        };
        assert_eq!(g.samples().len(), 1);
    }
}
