//! What the actuator did, taken back by the controller: every change the daemon makes to a
//! guest's state after a decision goes through one of these methods.

use super::{Guest, Pending};
use crate::actuator::Op;
use crate::domain::Dimm;
use crate::planner::{Decision, HoldReason, Kind, PlannerReason, Reason};
use crate::units::Bytes;

impl Guest {
    /// The definitions as just read: `inactive` is None when the persistent one was not read
    /// this time (the last one read stands), Some(None) when the guest has none.
    pub fn take_definitions(
        &mut self,
        live: crate::domain::DomainSpec,
        inactive: Option<Option<crate::domain::DomainSpec>>,
        flavors: &crate::envelope::FlavorCatalog,
        now: f64,
    ) {
        let inactive = match inactive {
            Some(i) => {
                self.inactive_read = now;
                i
            }
            None => self.inactive.take(),
        };
        self.set_definition(live, inactive, flavors);
    }

    /// The live definition could not be parsed: no envelope until it can.
    pub fn definition_unreadable(&mut self, why: String) {
        self.envelope = Err(why);
        self.limited = None;
        self.needs_xml = false;
    }

    /// An envelope given outright, not read from a definition (the simulator's guests).
    pub fn set_envelope(&mut self, env: crate::envelope::Envelope) {
        self.envelope = Ok(env);
        self.limited = None;
    }

    /// Reports that came every `interval` seconds up to `now` (excluded) and said what the
    /// last one did, taken as samples: the simulator skips ticks on which nothing changes.
    pub fn repeat_last_sample(&mut self, now: f64, interval: f64) {
        let Some(last) = self.samples.back().copied() else {
            return;
        };
        if self.pending.is_some() || interval <= 0.0 {
            return;
        }
        let k_last = (last.at / interval).round() as i64;
        let k_now = (now / interval).round() as i64;
        for k in (k_last + 1)..k_now {
            self.samples.push_back(crate::planner::Sample {
                at: k as f64 * interval,
                ..last
            });
        }
    }

    /// Whether an operator pinned it (the API's pins, by name).
    pub fn set_pinned(&mut self, pinned: bool) {
        self.pinned = pinned;
    }

    /// Its stats period was asked for once; not again.
    pub fn on_stats_period_asked(&mut self) {
        self.period_set = true;
    }

    /// Its definitions may have changed (a lifecycle event, a reconnect after a libvirtd
    /// restart): read both again before the next decision.
    pub fn forget_definitions(&mut self) {
        self.needs_xml = true;
        self.inactive_read = f64::NEG_INFINITY;
    }

    /// The live definition may no longer say what the guest is (a resize failed, a DIMM hold
    /// ran out): read it again.
    pub fn reread_definition(&mut self) {
        self.needs_xml = true;
    }

    /// One operation of a resize went through: keep the parts (and, for DIMMs, the
    /// definition) in step until the live definition is read again.
    pub fn on_op_applied(&mut self, op: &Op, now: f64) {
        match op {
            Op::Balloon { target } => self.parts.balloon = *target,
            Op::VirtioMem { alias, requested } => {
                let idx = self.envelope.as_ref().ok().and_then(|e| {
                    e.vmem
                        .iter()
                        .position(|s| s.alias.as_deref() == Some(alias))
                });
                if let Some(i) = idx
                    && let Some(p) = self.parts.vmem.get_mut(i)
                {
                    *p = *requested;
                }
            }
            Op::DimmAdd { alias, node, size } => {
                let i = node.unwrap_or(0) as usize;
                if let Some(p) = self.parts.dimm.get_mut(i) {
                    *p = p.saturating_add(*size);
                }
                if let Some(spec) = self.spec.as_mut() {
                    spec.dimms.push(Dimm {
                        alias: Some(alias.clone()),
                        node: *node,
                        size: *size,
                        managed: true,
                    });
                }
            }
            Op::DimmRemove { alias, size } => {
                let Some(spec) = self.spec.as_mut() else {
                    return;
                };
                let node = spec
                    .dimms
                    .iter()
                    .find(|d| d.alias.as_deref() == Some(alias))
                    .and_then(|d| d.node)
                    .unwrap_or(0) as usize;
                spec.dimms.retain(|d| d.alias.as_deref() != Some(alias));
                self.unplugging.insert(alias.clone(), now);
                if let Some(p) = self.parts.dimm.get_mut(node) {
                    *p = p.saturating_sub(*size);
                }
            }
        }
    }

    /// A resize was asked for and every operation went through: it is landing now.
    pub fn on_resize_applied(
        &mut self,
        decision: &Decision,
        before: Bytes,
        method: &str,
        ops: &[Op],
        now: f64,
    ) {
        self.expect_online(ops, now);
        // A growth may be taken at once; a shrink only once it is seen to land (until then,
        // or for good if it never does, the guest may hold what it had).
        self.asked = Some(match decision.kind {
            Kind::Grow => decision.target,
            _ => self.asked.unwrap_or(before).max(decision.target),
        });
        self.asked_reached = false;
        self.pending = Some(Pending {
            kind: decision.kind,
            before,
            target: decision.target,
            since: now,
            method: method.to_string(),
            available: self.stats.as_ref().and_then(|s| s.guest.usable),
        });
        match decision.kind {
            Kind::Grow => self.history.last_grow = Some(now),
            Kind::Shrink => self.history.last_shrink = Some(now),
            Kind::Hold => {}
        }
    }

    /// A resize failed part way: the guest is where it was; its definition is read again
    /// before trying again.
    pub fn on_resize_failed(&mut self) {
        self.needs_xml = true;
    }

    /// What this tick decided, for status: transient holds (a resize landing, waiting for the
    /// first report after it) would hide the decision that matters.
    pub fn on_decided(&mut self, decision: Decision) {
        self.last_reason_label = decision.reason.label();
        let transient = decision.kind == Kind::Hold
            && matches!(
                decision.reason,
                Reason::Hold(HoldReason::ResizeInProgress) | Reason::Plan(PlannerReason::NoSamples)
            )
            && self.last.is_some();
        if !transient {
            self.last = Some(decision);
        }
    }

    /// After a growth applied: DIMMs plugged should come online in the guest within the grace.
    fn expect_online(&mut self, ops: &[Op], now: f64) {
        let plugged: Bytes = ops
            .iter()
            .map(|o| match o {
                Op::DimmAdd { size, .. } => *size,
                _ => Bytes(0),
            })
            .sum();
        if plugged.0 == 0 {
            return;
        }
        let total = self
            .stats
            .as_ref()
            .and_then(|s| s.guest.total)
            .unwrap_or_default();
        self.onlining = Some(match self.onlining {
            Some((since, before, p)) => (since, before, p.saturating_add(plugged)),
            None => (now, total, plugged),
        });
    }

    /// libvirt's removal-failed event for one of memscale's DIMMs: the guest would not offline
    /// it. It is left alone until `until` and counts as boot memory meanwhile, and the shrink
    /// that asked for it is over.
    pub fn on_unplug_refused(&mut self, alias: &str, until: f64, now: f64) {
        self.needs_xml = true;
        self.refused.insert(alias.to_string(), until);
        self.refused_at = now;
        self.unplugging.remove(alias);
        self.pending = None;
        self.settled_at = now;
        self.history.last_shrink = Some(now);
    }

    /// Refused DIMMs whose hold is over become memscale's to unplug again.
    pub fn expire_refusals(&mut self, now: f64) {
        let before = self.refused.len();
        self.refused.retain(|_, until| *until > now);
        if self.refused.len() != before {
            self.needs_xml = true;
        }
    }

    /// Whether plugged memory came online: None while it may still come (or nothing was
    /// plugged), Some((plugged, onlined)) once it is past the grace and still not online
    /// (reported once). Memory seen online clears the watch.
    pub fn check_onlined(&mut self, now: f64, grace: f64) -> Option<(Bytes, Bytes)> {
        let (since, total_before, plugged) = self.onlining?;
        let total = self
            .stats
            .as_ref()
            .and_then(|s| s.guest.total)
            .unwrap_or_default();
        let onlined = total.saturating_sub(total_before);
        if onlined.0 >= plugged.0 / 2 {
            self.onlining = None;
            None
        } else if now - since > grace {
            self.onlining = None;
            Some((plugged, onlined))
        } else {
            None
        }
    }
}

/// vCPUs: what the CPU policy samples and what a live vCPU change did.
impl Guest {
    /// A vCPU count was asked of libvirt (`applied` or not): the definition is read again and
    /// the CPU policy starts its window afresh. vCPUs added are checked for running later; a
    /// change that failed is not asked again by the CPU policy before `hold_until`.
    pub fn on_vcpus_set(&mut self, before: u32, n: u32, applied: bool, now: f64, hold_until: f64) {
        self.needs_xml = true;
        self.cpu_samples.clear();
        self.cpu_last_change = now;
        if applied {
            if n > before {
                self.vcpu_check = Some((now, (before..n).collect()));
            }
            if let Some(s) = self.spec.as_mut() {
                s.vcpus_current = n;
            }
        } else {
            self.cpu_hold_until = hold_until;
        }
    }

    /// The vCPUs plugged whose run time is due to be looked at (after `grace`), taken once.
    pub fn take_vcpu_check(&mut self, now: f64, grace: f64) -> Option<Vec<u32>> {
        match &self.vcpu_check {
            Some((since, _)) if now - since > grace => self.vcpu_check.take().map(|(_, ids)| ids),
            _ => None,
        }
    }

    /// The CPU policy does not look at this guest now: its window starts afresh.
    pub fn forget_cpu_samples(&mut self) {
        self.cpu_samples.clear();
    }

    /// One CPU sample in; a change in the online count starts the window afresh, and samples
    /// older than `keep` seconds go.
    pub fn observe_cpu(&mut self, sample: crate::cpuplan::CpuSample, keep: f64) {
        if self
            .cpu_samples
            .back()
            .is_some_and(|s| s.online != sample.online)
        {
            self.cpu_samples.clear();
        }
        let now = sample.at;
        self.cpu_samples.push_back(sample);
        while self.cpu_samples.front().is_some_and(|s| s.at < now - keep) {
            self.cpu_samples.pop_front();
        }
    }
}
