//! The state files on disk, two generations: `state.json`, and `state.json.1`, the file the
//! last save replaced. A save writes the new generation beside them and syncs it, renames
//! the current file to `.1`, renames the new one into place, and syncs the directory: at every
//! instant a complete generation is on disk (between the two renames `state.json` is missing
//! and `.1` holds the last one, which `load` then reads). At start, an unreadable current file
//! costs one save, not the pins: the previous generation is read instead. A file written by a
//! newer memscale is never read nor moved: the operator who downgraded decides.

use super::{GuestState, State, VERSION};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "state.json";
/// The generation the last save replaced.
pub const PREVIOUS: &str = "state.json.1";
const TMP: &str = "state.json.tmp";

/// Which file the state was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    Current,
    Previous,
}

impl Generation {
    pub fn file(self) -> &'static str {
        match self {
            Generation::Current => FILE,
            Generation::Previous => PREVIOUS,
        }
    }

    /// As the `generation` label of `memscale_state_restored_from`.
    pub fn label(self) -> &'static str {
        match self {
            Generation::Current => "current",
            Generation::Previous => "previous",
        }
    }
}

/// A state file that is there but cannot be read: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub path: PathBuf,
    /// Line and column of a JSON error.
    pub at: Option<(usize, usize)>,
    pub why: String,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// A state file written by a newer memscale: reading it would drop what this one does not
/// know, and setting it aside would lose it for the newer one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: state version {found} is newer than this memscale reads ({reads})", path.display())]
pub struct Newer {
    pub path: PathBuf,
    pub found: u64,
    pub reads: u32,
}

/// What [`load`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Loaded {
    /// The state to restore and the file it came from; none on a first start, or when no
    /// generation could be read.
    pub state: Option<(Generation, State)>,
    /// The files there that could not be read (the current one first), to be set aside.
    pub unreadable: Vec<Unreadable>,
}

enum Read {
    Missing,
    Good(State),
    Bad(Unreadable),
    Newer(Newer),
}

fn read(path: &Path) -> Read {
    let bad = |at, why: String| {
        Read::Bad(Unreadable {
            path: path.to_path_buf(),
            at,
            why,
        })
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => return bad(None, format!("cannot read: {e}")),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return bad(None, "empty".into());
    }
    // The version first: a newer layout is named as such, not as a broken file.
    let v: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            // The place is told once, as `:LINE:COL` after the path.
            let shown = e.to_string();
            let place = format!(" at line {} column {}", e.line(), e.column());
            let what = shown.strip_suffix(&place).unwrap_or(&shown);
            let why = if e.is_eof() {
                format!("truncated: {what}")
            } else {
                format!("not a memscale state file: {what}")
            };
            return bad(Some((e.line(), e.column())), why);
        }
    };
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(n) if n > u64::from(VERSION) => Read::Newer(Newer {
            path: path.to_path_buf(),
            found: n,
            reads: VERSION,
        }),
        Some(n) if n == u64::from(VERSION) => match serde_json::from_value(v) {
            Ok(st) => Read::Good(st),
            Err(e) => bad(None, format!("not a memscale state file: {e}")),
        },
        Some(n) => bad(
            None,
            format!("state version {n} (this memscale reads {VERSION})"),
        ),
        None => bad(None, "not a memscale state file: no version".into()),
    }
}

/// Read the state: the current generation, or the previous one when the current file is
/// missing (a stop between the renames of a save) or unreadable. Nothing is written or moved.
/// `Err`: a file this memscale must not read, from a newer one.
pub fn load(dir: &Path) -> Result<Loaded, Newer> {
    let mut unreadable = Vec::new();
    for generation in [Generation::Current, Generation::Previous] {
        match read(&dir.join(generation.file())) {
            Read::Good(st) => {
                return Ok(Loaded {
                    state: Some((generation, st)),
                    unreadable,
                });
            }
            Read::Newer(n) => return Err(n),
            Read::Missing => {}
            Read::Bad(u) => unreadable.push(u),
        }
    }
    Ok(Loaded {
        state: None,
        unreadable,
    })
}

/// Move an unreadable state file aside (`….bad`), so it is neither lost nor read again, nor
/// rotated over the good previous generation by the next save.
pub fn set_aside(path: &Path) -> Option<PathBuf> {
    let mut to = path.as_os_str().to_owned();
    to.push(".bad");
    let to = PathBuf::from(to);
    std::fs::rename(path, &to).ok().map(|_| to)
}

/// Put the synced new generation `tmp` in place, keeping the one it replaces as `.1`.
fn commit(dir: &Path, tmp: &Path) -> std::io::Result<()> {
    match std::fs::rename(dir.join(FILE), dir.join(PREVIOUS)) {
        // None yet, or set aside at start, or a stop between these renames last time: the
        // previous generation stays as it is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        r => r?,
    }
    std::fs::rename(tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Replace the state file atomically, keeping the one it replaces as the previous generation.
pub fn save(dir: &Path, st: &State) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(TMP);
    let body = serde_json::to_vec(st).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    commit(dir, &tmp)
}

/// Guests serialised per taking of the lock by [`save_locked`].
pub(super) const CHUNK: usize = 64;

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
    let tmp = dir.join(TMP);
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
    commit(dir, &tmp)
}

/// One piece of the state as JSON, onto `buf`.
fn json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(buf, v).map_err(std::io::Error::other)
}
