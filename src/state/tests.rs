//! The state file's round trips, its chunked writing, its two generations (kept by every save,
//! the previous read when the current is broken or missing), and files that cannot be read.

use super::file::CHUNK;
use super::*;
use crate::planner::{History, PeakTracker, Sample};
use crate::units::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// The state `load` reads, which must be the current generation's.
fn current(dir: &Path) -> State {
    match load(dir).unwrap() {
        Loaded {
            state: Some((Generation::Current, st)),
            unreadable,
        } if unreadable.is_empty() => st,
        other => panic!("not the current generation: {other:?}"),
    }
}

/// A state with these pins, told apart by them.
fn pins(pins: &[&str]) -> State {
    State {
        version: VERSION,
        saved_at: 1.0,
        pins: pins.iter().map(|p| p.to_string()).collect(),
        ..State::default()
    }
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The state in one file, read as `load` would read it if it were the only one.
fn in_file(path: &Path) -> State {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

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
    let back = current(dir.path());
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
        assert_eq!(current(b.path()), st);
        assert!(!b.path().join("state.json.tmp").exists());
    }
}

#[test]
fn a_broken_file_is_named_and_load_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = load(dir.path()).unwrap();
    assert_eq!(
        l,
        Loaded::default(),
        "a first start: nothing, and nothing wrong"
    );
    let path = dir.path().join(FILE);
    for (text, want) in [
        (
            "{\"version\": 1, \"pins\": [\n  3",
            "state.json:2:3: truncated: EOF",
        ),
        (
            "{\"version\": 1, \"pins\": [3]}",
            "state.json: not a memscale state file: invalid type: integer `3`",
        ),
        (
            "{\"version\": 0, \"pins\": []}",
            "state.json: state version 0 (this memscale reads 1)",
        ),
        (
            "[1, 2]",
            "state.json: not a memscale state file: no version",
        ),
        ("\n \n", "state.json: empty"),
        (
            "{\"version\": 1} x",
            "state.json:1:16: not a memscale state file",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let l = load(dir.path()).unwrap();
        assert_eq!(l.state, None, "{text}");
        assert_eq!(l.unreadable.len(), 1, "{text}");
        assert_eq!(l.unreadable[0].path, path);
        let e = l.unreadable[0].to_string();
        assert!(e.contains(want), "{text:?}: {e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "load wrote");
    }
    let aside = set_aside(&path).unwrap();
    assert!(aside.ends_with("state.json.bad"));
    assert_eq!(files(dir.path()), ["state.json.bad"]);
    assert_eq!(load(dir.path()).unwrap(), Loaded::default());
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

#[test]
fn each_save_keeps_the_file_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save(d, &pins(&["a"])).unwrap();
    assert_eq!(files(d), ["state.json"]);
    save(d, &pins(&["b"])).unwrap();
    assert_eq!(files(d), ["state.json", "state.json.1"]);
    assert_eq!(in_file(&d.join(PREVIOUS)), pins(&["a"]));
    assert_eq!(current(d), pins(&["b"]));
    // The chunked save rotates alike.
    let head = pins(&["c"]);
    save_locked(d, &head, &Mutex::new(BTreeMap::new())).unwrap();
    assert_eq!(files(d), ["state.json", "state.json.1"]);
    assert_eq!(in_file(&d.join(PREVIOUS)), pins(&["b"]));
    assert_eq!(current(d), pins(&["c"]));
}

/// A way a file is found broken: its bytes, spoilt.
type Spoil = fn(&[u8]) -> Vec<u8>;

#[test]
fn a_broken_current_file_falls_back_to_the_previous_generation() {
    let cases: [(&str, Spoil, &str); 6] = [
        ("cut in half", |b| b[..b.len() / 2].to_vec(), "truncated"),
        ("cut to one byte", |b| b[..1].to_vec(), "truncated"),
        ("empty", |_| Vec::new(), "empty"),
        // A block the disk never wrote.
        (
            "zeros",
            |b| vec![0; b.len()],
            "not a memscale state file: expected value",
        ),
        (
            "garbage after it",
            |b| [b, b"\x00\x17"].concat(),
            "not a memscale state file: trailing characters",
        ),
        (
            "the wrong layout",
            |_| b"{\"version\": 1, \"pins\": \"db\"}".to_vec(),
            "not a memscale state file: invalid type",
        ),
    ];
    for (what, spoil, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        save(d, &pins(&["a"])).unwrap();
        save(d, &pins(&["a", "b"])).unwrap();
        let path = d.join(FILE);
        let bad = spoil(&std::fs::read(&path).unwrap());
        std::fs::write(&path, &bad).unwrap();
        let l = load(d).unwrap();
        assert_eq!(
            l.state,
            Some((Generation::Previous, pins(&["a"]))),
            "{what}"
        );
        assert_eq!(l.unreadable.len(), 1, "{what}");
        assert_eq!(l.unreadable[0].path, path, "{what}");
        assert!(
            l.unreadable[0].why.contains(why),
            "{what}: {}",
            l.unreadable[0]
        );
        // Set aside as the daemon does; its next save keeps the good previous generation
        // (the broken file is not rotated over it) and the broken one as it was.
        set_aside(&path).unwrap();
        save(d, &pins(&["a", "c"])).unwrap();
        assert_eq!(files(d), ["state.json", "state.json.1", "state.json.bad"]);
        assert_eq!(in_file(&d.join(PREVIOUS)), pins(&["a"]), "{what}");
        assert_eq!(current(d), pins(&["a", "c"]), "{what}");
        assert_eq!(std::fs::read(d.join("state.json.bad")).unwrap(), bad);
    }
}

/// Every point a save can stop at (a crash, a SIGKILL, power lost), as it leaves the
/// directory: what `load` reads is a whole generation, and the next save goes on from there.
#[test]
fn a_save_stopped_anywhere_leaves_a_whole_generation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save(d, &pins(&["a"])).unwrap();
    save(d, &pins(&["b"])).unwrap();
    let next = serde_json::to_vec(&pins(&["c"])).unwrap();
    let tmp = d.join("state.json.tmp");
    // Stopped while writing the new generation: half of it beside the others.
    std::fs::write(&tmp, &next[..next.len() / 2]).unwrap();
    assert_eq!(current(d), pins(&["b"]));
    // Stopped between the renames: the new generation synced, the current one already
    // renamed to `.1`, nothing yet in its place.
    std::fs::write(&tmp, &next).unwrap();
    std::fs::rename(d.join(FILE), d.join(PREVIOUS)).unwrap();
    assert_eq!(files(d), ["state.json.1", "state.json.tmp"]);
    let l = load(d).unwrap();
    assert_eq!(l.state, Some((Generation::Previous, pins(&["b"]))));
    assert!(
        l.unreadable.is_empty(),
        "a missing file is not a broken one"
    );
    // The next save finds no current file: the previous generation stays, the new one is
    // put in place, and the leftover is gone.
    save(d, &pins(&["d"])).unwrap();
    assert_eq!(files(d), ["state.json", "state.json.1"]);
    assert_eq!(in_file(&d.join(PREVIOUS)), pins(&["b"]));
    assert_eq!(current(d), pins(&["d"]));
    // Stopped after both renames, before the directory was synced: the new generation.
    save(d, &pins(&["e"])).unwrap();
    assert_eq!(current(d), pins(&["e"]));
}

#[test]
fn neither_generation_readable_leaves_nothing_to_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save(d, &pins(&["a"])).unwrap();
    save(d, &pins(&["b"])).unwrap();
    std::fs::write(d.join(FILE), "").unwrap();
    std::fs::write(d.join(PREVIOUS), "{\"version\": 1, \"pin").unwrap();
    let l = load(d).unwrap();
    assert_eq!(l.state, None);
    let paths: Vec<_> = l.unreadable.iter().map(|u| u.path.clone()).collect();
    assert_eq!(paths, [d.join(FILE), d.join(PREVIOUS)]);
    // A broken current file with no previous generation at all.
    std::fs::remove_file(d.join(PREVIOUS)).unwrap();
    let l = load(d).unwrap();
    assert_eq!((l.state, l.unreadable.len()), (None, 1));
}

#[test]
fn a_state_file_from_a_newer_memscale_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save(d, &pins(&["a"])).unwrap();
    save(d, &pins(&["b"])).unwrap();
    let newer = "{\"version\": 2, \"pins\": {\"db\": \"forever\"}, \"new\": []}";
    std::fs::write(d.join(FILE), newer).unwrap();
    let e = load(d).unwrap_err();
    assert_eq!(
        e,
        Newer {
            path: d.join(FILE),
            found: 2,
            reads: VERSION,
        }
    );
    let shown = e.to_string();
    assert!(
        shown.ends_with("/state.json: state version 2 is newer than this memscale reads (1)"),
        "{shown}"
    );
    assert_eq!(std::fs::read_to_string(d.join(FILE)).unwrap(), newer);
    assert_eq!(files(d), ["state.json", "state.json.1"]);
    // A broken current file in front of a previous one from a newer memscale: refused, and
    // that one named.
    std::fs::write(d.join(FILE), "{\"vers").unwrap();
    std::fs::write(d.join(PREVIOUS), "{\"version\": 7}").unwrap();
    assert_eq!(load(d).unwrap_err().path, d.join(PREVIOUS));
    assert_eq!(load(d).unwrap_err().found, 7);
    // A good current file is read; the previous one, newer or not, is not looked at.
    save(d, &pins(&["c"])).unwrap();
    std::fs::write(d.join(PREVIOUS), "{\"version\": 7}").unwrap();
    assert_eq!(current(d), pins(&["c"]));
}
