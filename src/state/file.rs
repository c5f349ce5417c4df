//! The state file on disk: written beside, synced, renamed over the old one, the directory
//! synced; read back at start.

use super::{GuestState, State, VERSION};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "state.json";

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
