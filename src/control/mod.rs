//! The guest controller: one guest as memscale tracks it (what the hypervisor said last, its
//! samples and peaks, its envelope, a resize in flight, holds), and every change to that
//! state. The daemon's host loop and the simulator drive the same controller; neither
//! writes a guest's state except through it.
//!
//! - [`Guest::observe`] takes one stats record (`observe.rs`);
//! - [`Guest::decide`] checks health, convergence and still-short, then asks the planner
//!   (`decide.rs`);
//! - the `on_*` methods take what the actuator did (`outcome.rs`);
//! - [`share`] cuts the decisions of one host to what it can give (`share.rs`).
//!
//! Pure: no libvirt, no tokio, no clock (`now` is always an argument).

use crate::domain::DomainSpec;
use crate::envelope::{Envelope, FlavorCatalog, Parts};
use crate::hypervisor::GuestStats;
use crate::planner::{Decision, History, Kind, PeakTracker, Sample};
use crate::policy::Policy;
use crate::units::{Bytes, MIB};
use serde::Serialize;
use std::collections::VecDeque;

/// How close a resize must land to its target to count as converged.
pub const CONVERGE_TOLERANCE: Bytes = Bytes(8 * MIB);
/// Samples kept per guest at most (by count; by time the policy's windows decide).
const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub kind: Kind,
    pub before: Bytes,
    pub target: Bytes,
    pub since: f64,
    pub method: String,
    /// The guest's MemAvailable when the resize was asked for.
    pub available: Option<Bytes>,
}

/// The guest's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Ok,
    /// Waiting for the first stats report.
    Starting,
    NoDriver,
    Stale,
    Held,
    Pinned,
    Resizing,
    NotRunning,
    NoEnvelope,
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Starting => "starting",
            Health::NoDriver => "no_driver",
            Health::Stale => "stale",
            Health::Held => "held",
            Health::Pinned => "pinned",
            Health::Resizing => "resizing",
            Health::NotRunning => "not_running",
            Health::NoEnvelope => "no_envelope",
        }
    }
}

pub struct Guest {
    pub name: String,
    pub uuid: String,
    pub first_seen: f64,
    pub stats: Option<GuestStats>,
    pub spec: Option<DomainSpec>,
    /// Where a Nova guest's envelope came from (nova-api or its domain metadata), when live
    /// flavors are on.
    pub flavor_origin: Option<crate::envelope::Origin>,
    pub envelope: Result<Envelope, String>,
    /// The balloon target and each virtio-mem device's requested size, as last known.
    pub parts: Parts,
    pub samples: VecDeque<Sample>,
    /// The highest need over the policy's `peak_window`.
    pub peaks: PeakTracker,
    /// The newest sample the peak tracker has seen (each is observed once).
    pub peaks_seen: f64,
    pub history: History,
    pub pending: Option<Pending>,
    pub held_until: f64,
    /// Only reports newer than this describe the current size (set when a resize lands).
    pub settled_at: f64,
    pub needs_xml: bool,
    pub period_set: bool,
    pub pinned: bool,
    pub last: Option<Decision>,
    pub last_reason_label: &'static str,
    pub health: Health,
    prev_swap_in: Option<(u64, Bytes)>,
    pub hostile: u64,
    /// The guest claims to use more than its QEMU process holds on the host (RSS): what it
    /// is believed to use is capped at that.
    pub rss_capped: bool,
    /// The most this guest may hold by memscale's leave: the target of a growth asked (it
    /// may take it at once), of a shrink only once its claim showed it landed. Whatever it
    /// claims, it is booked at no less.
    pub asked: Option<Bytes>,
    /// The guest's claim reached `asked` (the resize converged): from then on, a claim
    /// below it is a claim of memory given back that nobody asked for.
    pub asked_reached: bool,
    /// Why its claimed size is not believed, as of the last stats record.
    pub size_dispute: Option<SizeDispute>,
    /// The part of its claimed use the host did not back (claimed use above RSS) when this
    /// host first had its report, lowered whenever less is seen: memory a guest holds in pages
    /// the host never backed (zero pages a live migration skipped, KSM's zero pages) is not a
    /// lie. Only use that grows beyond RSS and this is checked against the host.
    pub unbacked: Option<Bytes>,
    /// The policy chosen for this guest: (policy generation, index in that set). The labels
    /// it was chosen by change only with the definition, which clears it.
    pub policy_ix: Option<(u64, usize)>,
    /// The persistent definition as last read, and when: a live resize does not change it,
    /// so re-reading the live one after a resize lands is enough. It is read again at first
    /// sight, after a reconnect, and when older than [`INACTIVE_MAX_AGE`] (an operator's
    /// `virsh edit` of the floor is seen within that).
    pub inactive: Option<DomainSpec>,
    pub inactive_read: f64,
    /// DIMMs the guest refused to release, and until when they are left alone (they count as
    /// boot memory meanwhile).
    pub refused: std::collections::HashMap<String, f64>,
    /// When the guest last refused to release a DIMM.
    pub refused_at: f64,
    /// DIMMs asked to go and still in the live definition, and since when: the guest is
    /// resizing until each is gone or refused (or `converge_timeout` has passed).
    pub unplugging: std::collections::HashMap<String, f64>,
    /// Memory plugged and not yet seen online: (since, the guest's MemTotal before, plugged).
    pub onlining: Option<(f64, Bytes, Bytes)>,
    /// vCPUs plugged and not yet seen running: (since, their ids).
    pub vcpu_check: Option<(f64, Vec<u32>)>,
    /// The CPU policy's samples, its last change, and a hold after a failed change.
    pub cpu_samples: VecDeque<crate::cpuplan::CpuSample>,
    pub cpu_last_change: f64,
    pub cpu_hold_until: f64,
    /// The envelope as the chosen policy limits it, for that choice (`policy_ix`): computed
    /// once, not three times a tick.
    pub limited: Option<((u64, usize), std::sync::Arc<Envelope>)>,
}

/// Seconds a DIMM the guest refused to release is left alone.
pub const REFUSED_HOLD: f64 = 3600.0;
/// Seconds after a guest refused to release a DIMM before it is shrunk again at all: its
/// other plugged memory likely holds kernel pages too, and each refusal costs the guest a
/// failed offlining pass.
pub const REFUSAL_BACKOFF: f64 = 120.0;
/// Seconds a guest has to bring plugged memory or a vCPU online before it is reported.
pub const ONLINE_GRACE: f64 = 30.0;

/// Seconds of samples a guest under `policy` keeps: its window and trend window, with a
/// margin (a shrink wants a sample older than 0.9 of the window).
pub fn sample_retention(policy: &Policy) -> f64 {
    policy
        .knobs
        .window
        .as_secs_f64()
        .max(policy.knobs.trend_window.as_secs_f64())
        * 1.25
        + 10.0
}

/// Seconds a cached persistent definition is trusted.
pub const INACTIVE_MAX_AGE: f64 = 300.0;

/// How far a guest's claimed use may exceed its host-side RSS (plus the unbacked part it had
/// when first seen, [`Guest::unbacked`]) before it is not believed: the larger of this and a
/// tenth of its memory (RSS undercounts pages the host swapped out).
pub const RSS_SLACK: Bytes = Bytes::from_mib(128);

/// Host memory a guest's QEMU process may hold beyond its guest's size (its own code, device
/// buffers, TCG's translation cache: about 130 MiB for an idle 1 GiB guest on the test bed),
/// the larger of this and an eighth of the guest's maximum. RSS above the claimed size by
/// more than this is memory the guest holds and says it does not.
pub const RSS_OVERHEAD: Bytes = Bytes::from_mib(256);

/// Why memscale does not take a guest's word for its size. The size a guest reports
/// (`balloon.current`) is RAM minus the balloon's `actual`, a field its own balloon driver
/// writes: a hostile kernel writes anything there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeDispute {
    /// Claims more than its definition can hold (an invented or wrapped value).
    AboveMaximum,
    /// Claims less than memscale asked it to keep (or its floor), with no resize landing.
    BelowAsked,
    /// Its QEMU process holds more host memory than the size it claims.
    HoldsMore,
}

impl SizeDispute {
    pub fn label(self) -> &'static str {
        match self {
            SizeDispute::AboveMaximum => "above_maximum",
            SizeDispute::BelowAsked => "below_asked",
            SizeDispute::HoldsMore => "holds_more",
        }
    }
}

/// A guest's size as it claims it and as memscale books it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeReading {
    /// `balloon.current`, the guest's own word, as it came.
    pub claimed: Option<Bytes>,
    /// The claim, cleared of what cannot be (above the maximum): what convergence is
    /// judged on.
    pub plausible: Option<Bytes>,
    /// What the host books: never less than the guest may hold (what memscale last asked it
    /// to keep, or its floor; what its process holds beyond overhead), never more than its
    /// maximum.
    pub believed: Bytes,
    pub dispute: Option<SizeDispute>,
}

/// The daemon's settings the controller needs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A resize not landed after this long is held and reported.
    pub converge_timeout: f64,
    /// How long an unconverged guest is held.
    pub unconverged_hold: f64,
    /// A guest that never reported after this long has no balloon driver.
    pub driver_grace: f64,
    /// The stats period asked of guests whose definition sets none.
    pub stats_period: u32,
}

/// The defaults of the daemon's config (`crate::config::Config`), for the simulator and tests.
impl Default for Timing {
    fn default() -> Timing {
        Timing {
            converge_timeout: 30.0,
            unconverged_hold: 60.0,
            driver_grace: 30.0,
            stats_period: 2,
        }
    }
}

pub fn live_parts(spec: &DomainSpec, current: Option<Bytes>) -> Parts {
    let vmem: Vec<Bytes> = spec.virtio_mem.iter().map(|d| d.requested).collect();
    let plugged: Bytes = spec
        .virtio_mem
        .iter()
        .map(|d| d.current.unwrap_or(d.requested))
        .sum();
    // memscale's DIMMs, per NUMA node (for a guest that could take them).
    let mut dimm = Vec::new();
    if spec.virtio_mem.is_empty() && spec.max_memory_slots > 0 {
        dimm = vec![Bytes(0); spec.numa.len().max(1)];
        for d in spec.dimms.iter().filter(|d| d.managed) {
            let i = (d.node.unwrap_or(0) as usize).min(dimm.len() - 1);
            dimm[i] = dimm[i] + d.size;
        }
    }
    let total = current.unwrap_or(spec.current_memory);
    let plugged = plugged + dimm.iter().copied().sum();
    Parts {
        balloon: total
            .saturating_sub(plugged)
            .align_up(Bytes(MIB))
            .min(spec.base_memory()),
        vmem,
        dimm,
    }
}

impl Guest {
    pub fn new(name: &str, uuid: &str, now: f64) -> Guest {
        Guest {
            name: name.to_string(),
            uuid: uuid.to_string(),
            first_seen: now,
            stats: None,
            spec: None,
            envelope: Err("not read yet".into()),
            parts: Parts {
                balloon: Bytes(0),
                vmem: vec![],
                dimm: Vec::new(),
            },
            samples: VecDeque::new(),
            peaks: PeakTracker::default(),
            peaks_seen: f64::NEG_INFINITY,
            history: History::default(),
            pending: None,
            held_until: 0.0,
            settled_at: 0.0,
            needs_xml: true,
            period_set: false,
            pinned: false,
            last: None,
            last_reason_label: "",
            health: Health::Starting,
            prev_swap_in: None,
            hostile: 0,
            rss_capped: false,
            asked: None,
            asked_reached: false,
            size_dispute: None,
            unbacked: None,
            policy_ix: None,
            inactive: None,
            inactive_read: f64::NEG_INFINITY,
            refused: Default::default(),
            refused_at: f64::NEG_INFINITY,
            unplugging: Default::default(),
            onlining: None,
            vcpu_check: None,
            cpu_samples: VecDeque::new(),
            cpu_last_change: f64::NEG_INFINITY,
            cpu_hold_until: f64::NEG_INFINITY,
            limited: None,
            flavor_origin: None,
        }
    }

    /// The policy this guest gets from `set`, chosen once per generation and definition.
    pub fn policy<'a>(&mut self, set: &'a crate::policy::PolicySet) -> &'a crate::policy::Policy {
        if let Some((generation, i)) = self.policy_ix
            && generation == set.generation
        {
            return set.at(i);
        }
        let no_tags = Vec::new();
        let spec = self.spec.as_ref();
        let nova = spec.and_then(|s| s.nova.as_ref());
        let i = set.select_index(&crate::policy::GuestLabels {
            name: &self.name,
            flavor: nova.and_then(|n| n.flavor_name.as_deref()),
            project: nova.and_then(|n| n.project.as_deref()),
            tags: spec.map(|s| &s.tags).unwrap_or(&no_tags),
        });
        self.policy_ix = Some((set.generation, i));
        set.at(i)
    }

    /// Take back the planner memory saved before a restart. Samples count only if they
    /// describe the size the guest has now (a resize may have landed while memscale was down).
    /// Returns how many samples were kept.
    pub fn restore(&mut self, st: &crate::state::GuestState, current: Option<Bytes>) -> usize {
        self.peaks = st.peaks();
        self.history = st.history();
        self.held_until = st.held_until;
        self.settled_at = st.settled_at;
        self.hostile = st.hostile;
        let samples = st.samples();
        let same_size = match (samples.last(), current) {
            (Some(s), Some(c)) => s.size.delta(c).unsigned_abs() <= CONVERGE_TOLERANCE.0 as u128,
            _ => false,
        };
        if same_size {
            self.samples = samples.into_iter().collect();
        } else {
            // A different size: what the guest reported before is not comparable; start
            // afresh from the next report.
            self.settled_at = self
                .settled_at
                .max(samples.last().map(|s| s.at).unwrap_or(0.0));
        }
        self.samples.len()
    }

    pub fn capture(&self) -> crate::state::GuestState {
        crate::state::GuestState::capture(
            &self.name,
            self.samples.iter().copied(),
            &self.peaks,
            self.history,
            self.held_until,
            self.settled_at,
            self.hostile,
        )
    }

    /// As [`Guest::capture`], into the state captured last time (its vectors reused).
    pub fn capture_into(&self, st: &mut crate::state::GuestState) {
        st.update(
            &self.name,
            self.samples.iter().copied(),
            &self.peaks,
            self.history,
            self.held_until,
            self.settled_at,
            self.hostile,
        );
    }

    /// The size the host books for this guest ([`SizeReading::believed`]).
    pub fn current(&self) -> Bytes {
        self.size_reading().believed
    }

    /// The most this guest can hold, from its definition and libvirt (host-side facts):
    /// its live `<memory>` (boot RAM and every memory device's full size), libvirt's
    /// `balloon.maximum`, and its envelope's ceiling (`<maxMemory>` for DIMMs).
    pub fn size_limit(&self) -> Option<Bytes> {
        self.size_limit_with(self.stats.as_ref())
    }

    fn size_limit_with(&self, stats: Option<&GuestStats>) -> Option<Bytes> {
        let spec = self.spec.as_ref().map(|s| s.memory);
        let stats = stats.and_then(|s| s.maximum);
        let ceiling = self.envelope.as_ref().ok().map(|e| e.ceiling);
        [spec, stats, ceiling].into_iter().flatten().max()
    }

    /// What this guest's size is believed to be, and whether its claim is disputed.
    pub fn size_reading(&self) -> SizeReading {
        self.size_reading_with(self.stats.as_ref())
    }

    /// [`Guest::size_reading`] with `stats` as the newest record (one not taken yet).
    pub(super) fn size_reading_with(&self, stats: Option<&GuestStats>) -> SizeReading {
        let claimed = stats.and_then(|s| s.current);
        let Some(c) = claimed else {
            return SizeReading {
                claimed,
                plausible: None,
                believed: self.parts.total(),
                dispute: None,
            };
        };
        let limit = self.size_limit_with(stats);
        let above = limit.is_some_and(|l| c > l.saturating_add(CONVERGE_TOLERANCE));
        let plausible = (!above).then_some(c);
        // What it may hold: what memscale last asked (or, before that, its floor)...
        let floor = self.envelope.as_ref().ok().map(|e| e.floor);
        let asked = self.asked.or(floor).unwrap_or(Bytes(0));
        // ...and what its process holds on the host beyond a QEMU's own overhead.
        let overhead = RSS_OVERHEAD.max(limit.unwrap_or(Bytes(0)).scale(0.125));
        let held = stats
            .and_then(|s| s.rss)
            .map(|r| r.saturating_sub(overhead))
            .unwrap_or(Bytes(0));
        let claim = plausible.unwrap_or(Bytes(0));
        let mut believed = claim.max(asked).max(held);
        if let Some(l) = limit {
            believed = believed.min(l);
        }
        // A resize on its way (or refused DIMMs) moves the claim legitimately.
        let landing = self.pending.is_some() || !self.unplugging.is_empty();
        // Huge-page backing: the balloon cannot give pages back, so the process keeps them
        // honestly (they are booked all the same).
        let hugepages = self
            .spec
            .as_ref()
            .is_some_and(|s| s.hugepage_size.is_some());
        let dispute = if above {
            Some(SizeDispute::AboveMaximum)
        } else if !landing
            && (claim.saturating_add(CONVERGE_TOLERANCE) < floor.unwrap_or(Bytes(0))
                || (self.asked_reached && claim.saturating_add(CONVERGE_TOLERANCE) < asked))
        {
            Some(SizeDispute::BelowAsked)
        } else if !hugepages && held > claim.max(asked).saturating_add(CONVERGE_TOLERANCE) {
            Some(SizeDispute::HoldsMore)
        } else {
            None
        };
        SizeReading {
            claimed,
            plausible,
            believed,
            dispute,
        }
    }

    /// Take the live and persistent definitions: the persistent `<currentMemory>` is the
    /// operator's floor, the live one only says where memscale (or anyone) last left it.
    pub fn set_definition(
        &mut self,
        mut live: DomainSpec,
        inactive: Option<DomainSpec>,
        flavors: &FlavorCatalog,
    ) {
        self.unplugging
            .retain(|a, _| live.dimms.iter().any(|d| d.alias.as_deref() == Some(a)));
        for d in &mut live.dimms {
            if d.alias
                .as_ref()
                .is_some_and(|a| self.refused.contains_key(a))
            {
                d.managed = false;
            }
        }
        let mut env_spec = live.clone();
        if let Some(i) = &inactive {
            env_spec.current_memory = i.current_memory;
        }
        self.inactive = inactive;
        self.envelope = Envelope::from_spec(&env_spec, flavors).map_err(|e| e.to_string());
        self.limited = None;
        self.parts = live_parts(&live, self.stats.as_ref().and_then(|s| s.current));
        self.spec = Some(live);
        self.needs_xml = false;
        self.policy_ix = None;
    }

    pub fn stats_period(&self, cfg: &Timing) -> u32 {
        self.spec
            .as_ref()
            .and_then(|s| s.stats_period)
            .filter(|p| *p > 0)
            .unwrap_or(cfg.stats_period)
    }

    /// What the guest uses now: MemTotal − MemAvailable of its newest sample (which the
    /// host's RSS cross-check has already bounded).
    pub fn using(&self) -> Option<Bytes> {
        self.samples
            .back()
            .map(|s| s.total.saturating_sub(s.available.min(s.total)))
    }

    pub fn stats_age(&self, now: f64) -> Option<f64> {
        self.stats
            .as_ref()
            .filter(|s| s.last_update > 0)
            .map(|s| (now - s.last_update as f64).max(0.0))
    }

    /// While a growth lands: a report newer than the ask shows less available than when it
    /// was asked, and below the grow threshold: the guest's use climbs faster than its memory
    /// The guest's last report and its age, as an audit record carries them, with the
    /// planner's figures (zero for a record that is not the planner's).
    pub fn audit_inputs(&self, now: f64, d: Option<&Decision>) -> crate::audit::Inputs {
        let st = self.stats.as_ref();
        crate::audit::Inputs {
            total: st.and_then(|s| s.guest.total),
            available: st.and_then(|s| s.guest.usable),
            free: st.and_then(|s| s.guest.unused),
            caches: st.and_then(|s| s.guest.disk_caches),
            stats_age_seconds: self.stats_age(now),
            need: d.map(|d| d.need).unwrap_or_default(),
            predicted: d.map(|d| d.predicted).unwrap_or_default(),
            headroom: d.map(|d| d.headroom).unwrap_or_default(),
        }
    }

    /// The envelope as `policy` (the one `policy()` chose) limits it; None without one.
    pub fn limited_envelope(&mut self, policy: &Policy) -> Option<std::sync::Arc<Envelope>> {
        let env = self.envelope.as_ref().ok()?;
        match (self.policy_ix, &self.limited) {
            (Some(k), Some((key, e))) if *key == k => Some(e.clone()),
            (key, _) => {
                let e = std::sync::Arc::new(env.limited(&policy.knobs.limits()));
                if let Some(k) = key {
                    self.limited = Some((k, e.clone()));
                }
                Some(e)
            }
        }
    }
}

mod decide;
mod observe;
mod outcome;
pub mod share;
#[cfg(test)]
mod tests;
