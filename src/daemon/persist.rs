//! What the daemon keeps across restarts (`state`): restored once at start, from the previous
//! generation when the current file is unreadable, and saved every few seconds, when an
//! operator changes a pin or a size, and at a clean stop.

use super::{Shared, epoch_now};
use crate::state::{Generation, Loaded};
use std::collections::{BTreeMap, BTreeSet};

/// The values of `memscale_state_restored_from`'s `generation` label.
pub const RESTORED_FROM: [&str; 3] = ["current", "previous", "none"];

impl Shared {
    /// Take the state read at start (`state::load`, before anything was started): pins and
    /// manual sizes at once, guests' planner memory for the host loops to take. Files that
    /// could not be read are set aside and named, loudly: when the current one is, the pins of
    /// the previous generation are kept; with neither, pins and planner memory start afresh.
    pub fn restore_state(&self, loaded: Loaded) {
        let dir = &self.config.state_dir;
        let Loaded { state, unreadable } = loaded;
        let aside: Vec<_> = unreadable
            .iter()
            .map(|u| crate::state::set_aside(&u.path))
            .collect();
        let from = state.as_ref().map_or("none", |(g, _)| g.label());
        for g in RESTORED_FROM {
            self.metrics
                .state_restored_from
                .with_label_values(&[g])
                .set(i64::from(g == from));
        }
        self.metrics
            .state_unreadable
            .set(i64::try_from(unreadable.len()).unwrap_or(i64::MAX));
        let previous = dir.join(crate::state::PREVIOUS);
        match (&state, unreadable.first()) {
            (None, None) => {
                tracing::info!(dir = %dir.display(), "no saved state: starting afresh");
            }
            (None, Some(_)) => {
                let errors: Vec<String> = unreadable.iter().map(|u| u.to_string()).collect();
                tracing::error!(errors = %errors.join("; "), set_aside = ?aside,
                    "saved state unreadable, and no readable generation to fall back on: pins and planner memory start afresh; guests keep their sizes");
            }
            (Some((Generation::Previous, _)), Some(bad)) => {
                tracing::error!(error = %bad, set_aside = ?aside.first(), restored_from = %previous.display(),
                    "saved state unreadable: restored the previous generation instead (the save before the last, a few seconds older); guests keep their sizes");
            }
            (Some((Generation::Previous, _)), None) => {
                tracing::warn!(missing = %dir.join(crate::state::FILE).display(), restored_from = %previous.display(),
                    "no current state file but a previous generation: restored from it (memscale stopped between the renames of a save, or the file was removed)");
            }
            (Some((Generation::Current, _)), _) => {}
        }
        let Some((generation, st)) = state else {
            return;
        };
        let age = epoch_now() - st.saved_at;
        tracing::info!(dir = %dir.display(), generation = generation.label(), pins = st.pins.len(),
            guests = st.guests.len(), age_seconds = age as i64, "state restored");
        self.pins
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(st.pins);
        *self.manual.lock().unwrap_or_else(|p| p.into_inner()) = st.manual;
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = st.guests.clone();
        *self.snapshots.lock().unwrap_or_else(|p| p.into_inner()) = st.guests;
    }

    /// Write pins, manual sizes and the guests' planner memory, atomically, the file replaced
    /// kept as the previous generation. The guests are read from the snapshots a chunk at a
    /// time, not copied whole (`state::save_locked`).
    /// Blocking (the file and its directory are synced): run it off the async runtime.
    pub fn save_state(&self) {
        let _one = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Pins and manual sizes are read under the state lock: an operator's change saved
        // meanwhile (`change_pins`) is never overwritten by an older copy.
        let pins = self.pins.read().unwrap_or_else(|p| p.into_inner()).clone();
        let manual = self
            .manual
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = self.write_state(&pins, manual);
    }

    /// An operator's change to the pins and manual sizes, made live only once it is saved: a
    /// success means it survives a restart; a failure (returned, logged and counted) leaves
    /// everything as it was, in memory and on disk. Blocking, as [`Shared::save_state`].
    pub fn change_pins(
        &self,
        change: impl FnOnce(&mut BTreeSet<String>, &mut BTreeMap<String, u64>),
    ) -> std::io::Result<()> {
        let _one = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing else writes these (the state is restored before the API serves), and every
        // writer holds the state lock: the copies stay current until they are put back.
        let mut pins = self.pins.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut manual = self
            .manual
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        change(&mut pins, &mut manual);
        self.write_state(&pins, manual.clone())?;
        *self.pins.write().unwrap_or_else(|p| p.into_inner()) = pins;
        *self.manual.lock().unwrap_or_else(|p| p.into_inner()) = manual;
        Ok(())
    }

    /// The state file with these pins and manual sizes; the caller holds the state lock.
    fn write_state(
        &self,
        pins: &BTreeSet<String>,
        manual: BTreeMap<String, u64>,
    ) -> std::io::Result<()> {
        let st = crate::state::State {
            version: crate::state::VERSION,
            saved_at: epoch_now(),
            pins: pins.iter().cloned().collect(),
            manual,
            guests: BTreeMap::new(),
        };
        crate::state::save_locked(&self.config.state_dir, &st, &self.snapshots).inspect_err(|e| {
            self.metrics.state_errors.inc();
            tracing::error!(dir = %self.config.state_dir.display(), error = %e, "cannot save state (pins and planner memory would not survive a restart)");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FILE, PREVIOUS, State};
    use std::path::Path;

    fn shared(dir: &Path) -> Shared {
        let config = crate::config::Config {
            state_dir: dir.to_path_buf(),
            ..crate::config::Config::default()
        };
        let set = crate::policy::PolicySet::new(vec![], vec![], 1);
        Shared::new(config, set, &[]).expect("shared")
    }

    /// A daemon started on `dir`, as `memscale run` starts it.
    fn restarted(dir: &Path) -> Shared {
        let s = shared(dir);
        s.restore_state(crate::state::load(dir).expect("not newer"));
        s
    }

    fn pins(s: &Shared) -> Vec<String> {
        s.pins.read().unwrap().iter().cloned().collect()
    }

    fn metrics(s: &Shared) -> String {
        s.metrics.render(&BTreeMap::new())
    }

    fn restored_from(s: &Shared) -> (String, String) {
        let m = metrics(s);
        let from = RESTORED_FROM
            .iter()
            .filter(|g| {
                m.contains(&format!(
                    "memscale_state_restored_from{{generation=\"{g}\"}} 1"
                ))
            })
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let unreadable = m
            .lines()
            .find_map(|l| l.strip_prefix("memscale_state_unreadable_files "))
            .unwrap_or("?")
            .to_string();
        (from, unreadable)
    }

    fn in_file(path: &Path) -> State {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_cut_state_file_costs_one_save_not_the_pins() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = shared(d);
        s.pins.write().unwrap().insert("db".into());
        s.manual.lock().unwrap().insert("db".into(), 4 << 30);
        s.save_state();
        s.pins.write().unwrap().insert("web".into());
        s.save_state();
        drop(s);
        // Killed, and the current file found cut short at the restart.
        let body = std::fs::read(d.join(FILE)).unwrap();
        std::fs::write(d.join(FILE), &body[..body.len() / 2]).unwrap();
        let s = restarted(d);
        assert_eq!(pins(&s), ["db"], "the previous generation's pins");
        assert_eq!(s.manual.lock().unwrap().get("db"), Some(&(4 << 30)));
        assert_eq!(restored_from(&s), ("previous".into(), "1".into()));
        assert_eq!(
            std::fs::read(d.join("state.json.bad")).unwrap(),
            &body[..body.len() / 2],
            "set aside as it was"
        );
        // The next save keeps the generation restored from as the previous one.
        s.save_state();
        assert_eq!(in_file(&d.join(PREVIOUS)).pins, ["db"]);
        assert_eq!(in_file(&d.join(FILE)).pins, ["db"]);
        assert_eq!(restored_from(&restarted(d)), ("current".into(), "0".into()));
    }

    #[test]
    fn a_first_start_and_a_total_loss_both_restore_nothing_but_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = restarted(d);
        assert_eq!(restored_from(&s), ("none".into(), "0".into()));
        s.pins.write().unwrap().insert("db".into());
        s.save_state();
        s.save_state();
        std::fs::write(d.join(FILE), "").unwrap();
        std::fs::write(d.join(PREVIOUS), "{\"version\": 1,").unwrap();
        let s = restarted(d);
        assert!(pins(&s).is_empty());
        assert_eq!(restored_from(&s), ("none".into(), "2".into()));
        assert!(d.join("state.json.bad").exists() && d.join("state.json.1.bad").exists());
        assert!(!d.join(FILE).exists() && !d.join(PREVIOUS).exists());
    }

    #[test]
    fn a_failed_save_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let s = shared(&not_a_dir);
        assert!(metrics(&s).contains("memscale_state_save_errors_total 0"));
        s.save_state();
        assert!(metrics(&s).contains("memscale_state_save_errors_total 1"));
    }
}
