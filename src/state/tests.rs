//! The state file's round trips, its chunked writing, and files that cannot be read.

use super::file::CHUNK;
use super::*;
use crate::planner::{History, PeakTracker, Sample};
use crate::units::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;

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
