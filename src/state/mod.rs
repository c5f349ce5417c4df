//! What survives a restart, even a SIGKILL (issue 7): pins and manual sizes, and each guest's
//! planner memory (recent samples, the peak window, when it was last resized), so the first
//! decisions after a restart are those the daemon would have taken had it not stopped.
//!
//! One JSON file, `STATE_DIR/state.json`, replaced atomically, and the one it replaced kept as
//! `state.json.1` (`file.rs`): a crash leaves a whole generation, never half of one. Pins are
//! written at once when an operator changes them; guest memory every few seconds and at a
//! clean stop. A current file that cannot be read is reported and set aside
//! (`state.json.bad`), and the previous generation restored; with neither, guests keep their
//! sizes and the planner starts afresh. A file from a newer memscale stops the start.

use crate::planner::{History, PeakTracker, Sample};
use crate::units::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod file;
#[cfg(test)]
mod tests;

pub use file::{
    FILE, Generation, Loaded, Newer, PREVIOUS, Unreadable, load, save, save_locked, set_aside,
};

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
