//! One guest as the daemon tracks it: what the hypervisor said last, its samples, its
//! envelope, a resize in flight, and the health checks that decide whether the planner may
//! act on it at all.

use crate::config::Config;
use crate::domain::DomainSpec;
use crate::envelope::{Envelope, FlavorCatalog, Note, Parts};
use crate::hypervisor::{GuestStats, RunState};
use crate::planner::{self, Decision, History, Kind, PeakTracker, Reason, Sample};
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

/// How far a guest's claimed use may exceed its host-side RSS before it is not believed:
/// the larger of this and a tenth of its memory (RSS undercounts pages the host swapped out).
pub const RSS_SLACK: Bytes = Bytes::from_mib(128);

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
            policy_ix: None,
            inactive: None,
            inactive_read: f64::NEG_INFINITY,
            refused: Default::default(),
            unplugging: Default::default(),
            onlining: None,
            vcpu_check: None,
            cpu_samples: VecDeque::new(),
            cpu_last_change: f64::NEG_INFINITY,
            cpu_hold_until: f64::NEG_INFINITY,
            limited: None,
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

    pub fn current(&self) -> Bytes {
        self.stats
            .as_ref()
            .and_then(|s| s.current)
            .unwrap_or(self.parts.total())
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

    /// Take one bulk-stats record. Returns true when it carried a fresh guest report.
    pub fn observe(&mut self, s: GuestStats, now: f64) -> bool {
        let prev_update = self.stats.as_ref().map(|p| p.last_update).unwrap_or(0);
        let fresh = s.last_update > prev_update && s.last_update > 0;
        if fresh && (s.last_update as f64) > self.settled_at && self.pending.is_none() {
            let g = &s.guest;
            let swap_rate = match (self.prev_swap_in, g.swap_in) {
                (Some((t0, v0)), Some(v1)) if s.last_update > t0 => {
                    if v1 < v0 {
                        // A counter going backwards: a guest reboot or a lie. Count, use zero.
                        self.hostile += 1;
                        0.0
                    } else {
                        (v1.0 - v0.0) as f64 / (s.last_update - t0) as f64
                    }
                }
                _ => 0.0,
            };
            if let (Some(total), Some(avail), Some(size)) = (g.total, g.usable, s.current) {
                if avail > total || total > size + Bytes::from_mib(64) {
                    self.hostile += 1;
                }
                // A guest cannot use memory it never touched: a claim above what its QEMU
                // process holds on the host (plus slack) is a lie or a broken driver. Believe
                // the host: such a guest gains nothing by reporting no free memory.
                let mut avail = avail;
                let claimed = total.saturating_sub(avail.min(total));
                let capped = match s.rss {
                    Some(rss) => {
                        let limit = rss + RSS_SLACK.max(total.scale(0.1));
                        if claimed > limit {
                            avail = total.saturating_sub(limit);
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                if capped {
                    self.hostile += 1;
                    if !self.rss_capped {
                        tracing::warn!(guest = %s.name, claimed = %claimed, rss = %s.rss.unwrap_or_default(),
                            "guest claims to use more memory than its process holds on the host; believing the host");
                    }
                } else if self.rss_capped {
                    tracing::info!(guest = %s.name, "guest's reports agree with the host again");
                }
                self.rss_capped = capped;
                self.samples.push_back(Sample {
                    at: s.last_update as f64,
                    size,
                    total,
                    available: avail,
                    swap_in_rate: swap_rate,
                });
                while self.samples.len() > MAX_SAMPLES
                    || self.samples.front().is_some_and(|f| f.at < now - 3600.0)
                {
                    self.samples.pop_front();
                }
            }
        }
        if fresh && let Some(v) = s.guest.swap_in {
            self.prev_swap_in = Some((s.last_update, v));
        }
        self.name = s.name.clone();
        self.stats = Some(s);
        fresh
    }

    pub fn stats_period(&self, cfg: &Config) -> u32 {
        self.spec
            .as_ref()
            .and_then(|s| s.stats_period)
            .filter(|p| *p > 0)
            .unwrap_or(cfg.stats_period)
    }

    pub fn stats_age(&self, now: f64) -> Option<f64> {
        self.stats
            .as_ref()
            .filter(|s| s.last_update > 0)
            .map(|s| (now - s.last_update as f64).max(0.0))
    }

    /// While a growth lands: a report newer than the ask shows less available than when it
    /// was asked, and below the grow threshold: the guest's use climbs faster than its memory
    /// arrives. Then grow again from the target asked, by at least the last step.
    fn still_short(&self, size: Bytes, env: &Envelope, policy: &Policy) -> Option<Decision> {
        let p = self.pending.as_ref()?;
        let st = self.stats.as_ref()?;
        // Not for a size an operator set, nor on the word of a guest the host contradicts.
        if p.kind != Kind::Grow || self.pinned || self.rss_capped {
            return None;
        }
        if (st.last_update as f64) <= p.since {
            return None;
        }
        let (total, usable) = (st.guest.total?, st.guest.usable?);
        let k = &policy.knobs;
        let need = total.saturating_sub(usable.min(total));
        let headroom = planner::headroom(k, need);
        let threshold = headroom.scale(k.grow_at.fraction()).max(k.min_free);
        if usable >= threshold || usable >= p.available.unwrap_or(Bytes(u64::MAX)) {
            return None;
        }
        let since_grow = self
            .history
            .last_grow
            .map(|t| (st.last_update as f64 - t).max(0.0))
            .unwrap_or(f64::INFINITY);
        if since_grow < k.grow_cooldown.as_secs_f64() {
            return None;
        }
        let step = planner::limit_grow_step(
            k,
            env,
            p.target.saturating_sub(p.before).max(headroom),
            since_grow,
        );
        let target = env.realize_up((p.target.max(size) + step).min(env.ceiling));
        if target <= p.target.max(size) {
            return None;
        }
        Some(Decision {
            kind: Kind::Grow,
            target,
            reason: Reason::StillShort {
                available: usable,
                asked: p.target,
                has: size,
            },
            need,
            predicted: need,
            headroom,
        })
    }

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

    /// Check health, then plan. The envelope is the policy-limited one.
    pub fn decide(&mut self, now: f64, policy: &Policy, cfg: &Config) -> Decision {
        let size = self.current();
        let hold = |h: Health, r: Reason, me: &mut Guest| {
            me.health = h;
            Decision::hold(size, r)
        };
        let limited = self.limited_envelope(policy);
        let Some(stats) = &self.stats else {
            return hold(Health::Starting, Reason::NoSamples, self);
        };
        if stats.state != RunState::Running {
            let state = format!("{:?}", stats.state).to_lowercase();
            return hold(Health::NotRunning, Reason::NotRunning { state }, self);
        }
        let env = match &self.envelope {
            Ok(_) => match limited {
                Some(e) => e,
                None => return hold(Health::NoEnvelope, Reason::NoMethod, self),
            },
            Err(m) => {
                let message = m.clone();
                return hold(Health::NoEnvelope, Reason::BadEnvelope { message }, self);
            }
        };
        if env.notes.contains(&Note::NoMethod) {
            return hold(Health::NoEnvelope, Reason::NoMethod, self);
        }
        if let Some(p) = &self.pending {
            let (target, since) = (p.target, p.since);
            if size.delta(target).unsigned_abs() <= CONVERGE_TOLERANCE.0 as u128 {
                // Landed: later reports describe the new size.
                self.pending = None;
                self.settled_at = now;
                self.needs_xml = true;
            } else if now - since > cfg.converge_timeout.as_secs_f64() {
                self.pending = None;
                self.held_until = now + cfg.unconverged_hold.as_secs_f64();
                self.settled_at = now;
                self.needs_xml = true;
                return hold(
                    Health::Held,
                    Reason::Unconverged {
                        target,
                        actual: size,
                    },
                    self,
                );
            } else if let Some(d) = self.still_short(size, &env, policy) {
                // Demand outruns the memory landing: ask for more now, on top of what is
                // asked, rather than wait for it to land (virtio-mem under load lands over
                // seconds, and a guest climbing at 100 MiB/s is out of memory by then).
                self.pending = None;
                self.health = Health::Ok;
                return d;
            } else {
                return hold(Health::Resizing, Reason::ResizeInProgress, self);
            }
        }
        if !self.unplugging.is_empty() {
            // One DIMM refused does not end the others' unplug: wait for them too, or the
            // planner asks again for a DIMM the guest is still releasing.
            let limit = cfg.converge_timeout.as_secs_f64();
            self.unplugging.retain(|_, since| now - *since <= limit);
            if !self.unplugging.is_empty() {
                return hold(Health::Resizing, Reason::ResizeInProgress, self);
            }
        }
        if self.pinned {
            return hold(Health::Pinned, Reason::Pinned, self);
        }
        if now < self.held_until {
            let target = self.last.as_ref().map(|d| d.target).unwrap_or(size);
            return hold(
                Health::Held,
                Reason::Unconverged {
                    target,
                    actual: size,
                },
                self,
            );
        }
        if stats.last_update == 0 {
            if now - self.first_seen > cfg.driver_grace.as_secs_f64() {
                return hold(Health::NoDriver, Reason::NoDriver, self);
            }
            return hold(Health::Starting, Reason::NoSamples, self);
        }
        let period = self.stats_period(cfg) as f64;
        let stale_after = if policy.knobs.stale_after.0.is_zero() {
            3.0 * period + 1.0
        } else {
            policy.knobs.stale_after.as_secs_f64()
        };
        let age = self.stats_age(now).unwrap_or(f64::INFINITY);
        if age > stale_after {
            return hold(Health::Stale, Reason::Stale { age_seconds: age }, self);
        }
        // The latest report must postdate the last resize: older ones describe the old size.
        if !self.samples.back().is_some_and(|s| s.at > self.settled_at) {
            self.health = Health::Ok;
            return Decision::hold(size, Reason::NoSamples);
        }
        // Keep only what the planner looks at: the window and the trend window, with a margin
        // (a shrink wants a sample older than 0.9 of the window). Keeping an hour of them made
        // every tick re-read and every state save write up to 3,600 samples a guest.
        let keep = sample_retention(policy);
        while self.samples.len() > 1 && self.samples.front().is_some_and(|f| f.at < now - keep) {
            self.samples.pop_front();
        }
        let span = policy.knobs.peak_window.as_secs_f64();
        if self.peaks.window() != span {
            // A new span (policy reload): start over rather than mix bucket sizes.
            self.peaks = PeakTracker::new(span);
            self.peaks_seen = f64::NEG_INFINITY;
        }
        // Window statistics may use older samples; the latest must postdate the last resize.
        let all: &[Sample] = self.samples.make_contiguous();
        // Samples are in time order: only the newest few are new to the tracker.
        let seen = self.peaks_seen;
        for s in all[all.partition_point(|s| s.at <= seen)..].iter() {
            self.peaks.observe(s);
        }
        self.peaks_seen = all.last().map(|s| s.at).unwrap_or(self.peaks_seen);
        let d = planner::plan(&planner::Input {
            now,
            envelope: &env,
            knobs: &policy.knobs,
            size,
            samples: all,
            history: self.history,
            peak: self.peaks.peak(now),
        });
        self.health = Health::Ok;
        d
    }
}

#[cfg(test)]
mod rss_tests {
    use super::*;
    use crate::hypervisor::GuestMem;

    fn stats(t: u64, avail_mib: u64, rss_mib: Option<u64>) -> GuestStats {
        GuestStats {
            name: "liar".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(2048)),
            maximum: Some(Bytes::from_mib(4096)),
            guest: GuestMem {
                total: Some(Bytes::from_mib(2000)),
                usable: Some(Bytes::from_mib(avail_mib)),
                ..Default::default()
            },
            last_update: t,
            rss: rss_mib.map(Bytes::from_mib),
        }
    }

    #[test]
    fn a_guest_claiming_more_than_it_holds_on_the_host_is_not_believed() {
        let mut g = Guest::new("liar", "u", 0.0);
        // Honest: uses 1500 MiB, and QEMU holds 1600 MiB.
        g.observe(stats(10, 500, Some(1600)), 10.0);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(500))
        );
        assert!(!g.rss_capped);
        assert_eq!(g.hostile, 0);
        // Claims 1990 MiB used (10 MiB free) but holds only 700 MiB on the host: believed to
        // use 700 MiB plus slack (200 MiB: a tenth of its 2000), so 1100 MiB available.
        g.observe(stats(11, 10, Some(700)), 11.0);
        assert!(g.rss_capped);
        assert_eq!(g.hostile, 1);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(1100))
        );
        // Within the slack, a claim stands.
        g.observe(stats(12, 1150, Some(700)), 12.0);
        assert!(!g.rss_capped);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(1150))
        );
        // No RSS reported (old libvirt): the guest's word is all there is.
        g.observe(stats(13, 10, None), 13.0);
        assert_eq!(
            g.samples.back().map(|s| s.available),
            Some(Bytes::from_mib(10))
        );
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::hypervisor::GuestMem;
    use proptest::prelude::*;

    fn envelope() -> (crate::domain::DomainSpec, Envelope) {
        let spec = crate::domain::DomainSpec {
            name: "h".into(),
            memory: Bytes::from_mib(512 + 1536),
            current_memory: Bytes::from_mib(512),
            balloon_device: true,
            virtio_mem: vec![crate::domain::VirtioMem {
                alias: Some("vm0".into()),
                node: Some(0),
                size: Bytes::from_mib(1536),
                block: Bytes::from_mib(2),
                ..Default::default()
            }],
            ..Default::default()
        };
        let env =
            Envelope::from_spec(&spec, &crate::envelope::FlavorCatalog::new()).expect("envelope");
        (spec, env)
    }

    /// A guest with that envelope and its definition, as the daemon holds it.
    fn managed() -> (Guest, Envelope) {
        let (spec, env) = envelope();
        let mut g = Guest::new("h", "u", 0.0);
        g.envelope = Ok(env.clone());
        g.spec = Some(spec);
        (g, env)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever a guest reports (free above total, totals beyond its size, counters going
        /// backwards, absurd values, timestamps from the future or the past, no free memory
        /// ever), every decision stays inside its envelope and is never a grow beyond the
        /// ceiling; nonsense is counted.
        #[test]
        fn hostile_reports_never_leave_the_envelope(
            reports in proptest::collection::vec(
                (0u64..u64::MAX / 2, 0u64..u64::MAX / 2, any::<Option<u64>>(), 0u64..40, any::<Option<u64>>(), any::<bool>()),
                1..60,
            )
        ) {
            let (mut g, env) = managed();
            let policy = crate::policy::Policy::builtin();
            let cfg = Config::default();
            let mut size = Bytes::from_mib(1024);
            let mut t = 1_000u64;
            for (total, avail, swap, dt, rss, absurd) in reports {
                t += dt;
                let (total, avail) = if absurd {
                    (Bytes(total), Bytes(avail))
                } else {
                    (Bytes(total % (size.0 + 1)), Bytes(avail % (size.0 + 1)))
                };
                g.observe(GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(size),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(total),
                        usable: Some(avail),
                        swap_in: swap.map(Bytes),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: rss.map(Bytes),
                }, t as f64);
                let d = g.decide(t as f64, &policy, &cfg);
                prop_assert!(d.target <= env.ceiling, "{d:?} beyond {}", env.ceiling);
                prop_assert!(d.target >= env.floor || d.kind == crate::planner::Kind::Hold, "{d:?} below {}", env.floor);
                if d.kind != crate::planner::Kind::Hold {
                    // As if it landed at once.
                    size = d.target;
                    g.pending = None;
                    g.settled_at = t as f64;
                }
            }
        }
    }

    /// A DIMM asked to go holds the guest (resizing) until the live definition no longer
    /// lists it, even after another DIMM of the same step was refused; not past the
    /// convergence timeout.
    #[test]
    fn a_dimm_still_being_released_holds_the_guest() {
        let (mut g, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Config::default();
        for t in [10u64, 11] {
            g.observe(
                GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(Bytes::from_mib(512)),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(Bytes::from_mib(500)),
                        usable: Some(Bytes::from_mib(300)),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: None,
                },
                t as f64,
            );
        }
        g.unplugging.insert("ua-memscale-dimm-0-1".into(), 11.0);
        let d = g.decide(12.0, &policy, &cfg);
        assert_eq!(d.reason, Reason::ResizeInProgress);
        assert_eq!(g.health, Health::Resizing);
        // The live definition without that DIMM: it is gone, the guest is planned again.
        let mut live = g.spec.clone().expect("spec");
        live.dimms.clear();
        g.set_definition(live, None, &crate::envelope::FlavorCatalog::new());
        assert!(g.unplugging.is_empty());
        assert_ne!(
            g.decide(12.0, &policy, &cfg).reason,
            Reason::ResizeInProgress
        );
        // One the guest never answers for is waited for no longer than the timeout.
        g.unplugging.insert("ua-memscale-dimm-0-2".into(), 11.0);
        let late = 12.0 + cfg.converge_timeout.as_secs_f64();
        assert_ne!(
            g.decide(late, &policy, &cfg).reason,
            Reason::ResizeInProgress
        );
        assert!(g.unplugging.is_empty());
    }

    /// A growth still landing while the guest runs shorter than when it was asked for is
    /// followed by another at once; not when the guest is holding its own, not for a pinned
    /// guest, and never beyond the ceiling.
    #[test]
    fn a_guest_running_short_while_memory_lands_is_grown_again() {
        let (_, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Config::default();
        let report = |t: u64, size: u64, total: u64, avail: u64| GuestStats {
            name: "h".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(size)),
            maximum: Some(env.ceiling),
            guest: GuestMem {
                total: Some(Bytes::from_mib(total)),
                usable: Some(Bytes::from_mib(avail)),
                ..Default::default()
            },
            last_update: t,
            rss: None,
        };
        let fresh = |pinned: bool| {
            let (mut g, _) = managed();
            g.pinned = pinned;
            // Asked 600 -> 900 MiB at t=100, when 150 MiB was available.
            g.pending = Some(Pending {
                kind: Kind::Grow,
                before: Bytes::from_mib(600),
                target: Bytes::from_mib(900),
                since: 100.0,
                method: "virtio-mem".into(),
                available: Some(Bytes::from_mib(150)),
            });
            g.history.last_grow = Some(100.0);
            g
        };
        // 700 of 900 landed, and only 40 MiB available now: grow again, by the last step.
        let mut g = fresh(false);
        g.observe(report(102, 700, 660, 40), 102.0);
        let d = g.decide(102.0, &policy, &cfg);
        assert_eq!(d.kind, Kind::Grow, "{d:?}");
        assert_eq!(d.reason.label(), "still_short");
        assert!(
            d.target >= Bytes::from_mib(1200) && d.target <= env.ceiling,
            "{d:?}"
        );
        assert!(env.is_realizable(d.target));
        // Holding its own (more available than when asked): wait for the landing.
        let mut g = fresh(false);
        g.observe(report(102, 700, 660, 200), 102.0);
        assert_eq!(
            g.decide(102.0, &policy, &cfg).reason,
            Reason::ResizeInProgress
        );
        // No report since the ask: nothing new to go on.
        let mut g = fresh(false);
        g.observe(report(99, 700, 660, 40), 102.0);
        assert_eq!(
            g.decide(102.0, &policy, &cfg).reason,
            Reason::ResizeInProgress
        );
        // Pinned (an operator's size): never.
        let mut g = fresh(true);
        g.observe(report(102, 700, 660, 40), 102.0);
        assert_eq!(g.decide(102.0, &policy, &cfg).kind, Kind::Hold);
        // Near the ceiling: capped there.
        let mut g = fresh(false);
        if let Some(p) = g.pending.as_mut() {
            p.before = Bytes::from_mib(1200);
            p.target = env.ceiling.saturating_sub(Bytes::from_mib(100));
        }
        g.observe(report(102, 1900, 1860, 30), 102.0);
        let d = g.decide(102.0, &policy, &cfg);
        assert_eq!((d.kind, d.target), (Kind::Grow, env.ceiling), "{d:?}");
    }

    /// A guest reporting every second for ten minutes keeps about its policy's window of
    /// samples, not an hour of them: ticks and state saves stay the same size.
    #[test]
    fn samples_are_kept_for_the_window_only() {
        let (mut g, env) = managed();
        let policy = crate::policy::Policy::builtin();
        let cfg = Config::default();
        let keep = sample_retention(&policy);
        for t in 1_000u64..1_600 {
            g.observe(
                GuestStats {
                    name: "h".into(),
                    uuid: "u".into(),
                    state: RunState::Running,
                    current: Some(Bytes::from_mib(1024)),
                    maximum: Some(env.ceiling),
                    guest: GuestMem {
                        total: Some(Bytes::from_mib(980)),
                        usable: Some(Bytes::from_mib(400 + (t % 7))),
                        ..Default::default()
                    },
                    last_update: t,
                    rss: None,
                },
                t as f64,
            );
            let _ = g.decide(t as f64, &policy, &cfg);
            g.pending = None;
        }
        assert!(
            g.samples.len() as f64 <= keep + 2.0,
            "{} samples",
            g.samples.len()
        );
        assert!(
            g.samples.len() as f64 >= policy.knobs.window.as_secs_f64(),
            "{}",
            g.samples.len()
        );
    }

    #[test]
    fn nonsense_is_counted() {
        let (spec, env) = envelope();
        let mut g = Guest::new("h", "u", 0.0);
        g.envelope = Ok(env);
        g.spec = Some(spec);
        let st = |t: u64, total: u64, avail: u64, swap: u64| GuestStats {
            name: "h".into(),
            uuid: "u".into(),
            state: RunState::Running,
            current: Some(Bytes::from_mib(1024)),
            maximum: None,
            guest: GuestMem {
                total: Some(Bytes::from_mib(total)),
                usable: Some(Bytes::from_mib(avail)),
                swap_in: Some(Bytes::from_mib(swap)),
                ..Default::default()
            },
            last_update: t,
            rss: None,
        };
        g.observe(st(10, 1000, 500, 10), 10.0);
        assert_eq!(g.hostile, 0);
        g.observe(st(11, 1000, 1500, 10), 11.0); // free above total
        assert_eq!(g.hostile, 1);
        g.observe(st(12, 9000, 500, 10), 12.0); // total beyond its size
        assert_eq!(g.hostile, 2);
        g.observe(st(13, 1000, 500, 5), 13.0); // a counter going backwards
        assert_eq!(g.hostile, 3);
    }
}
