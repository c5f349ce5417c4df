//! Deciding for one guest: health first (no stats, not running, no envelope, a resize
//! landing or unconverged, pinned, stale), then the planner on its samples and peaks.

use crate::planner::{HoldReason, PlannerReason};

use super::{CONVERGE_TOLERANCE, Guest, Health, REFUSAL_BACKOFF, Timing, sample_retention};
use crate::envelope::{Envelope, Note};
use crate::hypervisor::RunState;
use crate::planner::{self, Decision, Kind, PeakTracker, Reason, Sample};
use crate::policy::Policy;
use crate::units::Bytes;

impl Guest {
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
            reason: Reason::Hold(HoldReason::StillShort {
                available: usable,
                asked: p.target,
                has: size,
            }),
            need,
            predicted: need,
            headroom,
        })
    }

    /// Check health, then plan. The envelope is the policy-limited one.
    pub fn decide(&mut self, now: f64, policy: &Policy, cfg: &Timing) -> Decision {
        let reading = self.size_reading();
        let size = reading.believed;
        // Landing is judged on the guest's own (plausible) word: the size believed is at
        // least the target asked, so it would always look landed.
        let claimed = reading.plausible.unwrap_or(size);
        let hold = |h: Health, r: Reason, me: &mut Guest| {
            me.health = h;
            Decision::hold(size, r)
        };
        let limited = self.limited_envelope(policy);
        let Some(stats) = &self.stats else {
            return hold(
                Health::Starting,
                Reason::Plan(PlannerReason::NoSamples),
                self,
            );
        };
        if stats.state != RunState::Running {
            let state = format!("{:?}", stats.state).to_lowercase();
            return hold(
                Health::NotRunning,
                Reason::Hold(HoldReason::NotRunning { state }),
                self,
            );
        }
        let env = match &self.envelope {
            Ok(_) => match limited {
                Some(e) => e,
                None => return hold(Health::NoEnvelope, Reason::Hold(HoldReason::NoMethod), self),
            },
            Err(m) => {
                let message = m.clone();
                return hold(
                    Health::NoEnvelope,
                    Reason::Hold(HoldReason::BadEnvelope { message }),
                    self,
                );
            }
        };
        if env.notes.contains(&Note::NoMethod) {
            return hold(Health::NoEnvelope, Reason::Hold(HoldReason::NoMethod), self);
        }
        if let Some(p) = &self.pending {
            let (target, since) = (p.target, p.since);
            if claimed.delta(target).unsigned_abs() <= CONVERGE_TOLERANCE.0 as u128 {
                // Landed: later reports describe the new size.
                self.pending = None;
                self.asked = Some(target);
                self.asked_reached = true;
                self.settled_at = now;
                self.needs_xml = true;
            } else if now - since > cfg.converge_timeout {
                self.pending = None;
                self.held_until = now + cfg.unconverged_hold;
                self.settled_at = now;
                self.needs_xml = true;
                return hold(
                    Health::Held,
                    Reason::Hold(HoldReason::Unconverged {
                        target,
                        actual: claimed,
                    }),
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
                return hold(
                    Health::Resizing,
                    Reason::Hold(HoldReason::ResizeInProgress),
                    self,
                );
            }
        }
        if !self.unplugging.is_empty() {
            // One DIMM refused does not end the others' unplug: wait for them too, or the
            // planner asks again for a DIMM the guest is still releasing.
            let limit = cfg.converge_timeout;
            self.unplugging.retain(|_, since| now - *since <= limit);
            if !self.unplugging.is_empty() {
                return hold(
                    Health::Resizing,
                    Reason::Hold(HoldReason::ResizeInProgress),
                    self,
                );
            }
        }
        if self.pinned {
            return hold(Health::Pinned, Reason::Hold(HoldReason::Pinned), self);
        }
        if now < self.held_until {
            let target = self.last.as_ref().map(|d| d.target).unwrap_or(size);
            return hold(
                Health::Held,
                Reason::Hold(HoldReason::Unconverged {
                    target,
                    actual: size,
                }),
                self,
            );
        }
        if stats.last_update == 0 {
            if now - self.first_seen > cfg.driver_grace {
                return hold(Health::NoDriver, Reason::Hold(HoldReason::NoDriver), self);
            }
            return hold(
                Health::Starting,
                Reason::Plan(PlannerReason::NoSamples),
                self,
            );
        }
        let period = self.stats_period(cfg) as f64;
        let stale_after = if policy.knobs.stale_after.0.is_zero() {
            3.0 * period + 1.0
        } else {
            policy.knobs.stale_after.as_secs_f64()
        };
        let age = self.stats_age(now).unwrap_or(f64::INFINITY);
        if age > stale_after {
            return hold(
                Health::Stale,
                Reason::Hold(HoldReason::Stale { age_seconds: age }),
                self,
            );
        }
        // The latest report must postdate the last resize: older ones describe the old size.
        if !self.samples.back().is_some_and(|s| s.at > self.settled_at) {
            self.health = Health::Ok;
            return Decision::hold(size, Reason::Plan(PlannerReason::NoSamples));
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
        let (recur, ahead) = (
            policy.knobs.recur.as_secs_f64(),
            policy.knobs.recur_ahead.as_secs_f64(),
        );
        if recur > 0.0 {
            self.peaks.set_keep(recur + span / 32.0);
        }
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
            peak: self
                .peaks
                .decayed(now, policy.knobs.peak_decay.as_secs_f64()),
            recurring: self.peaks.recurring(now, recur, ahead),
            young: policy.knobs.young_headroom.0 > 0 && self.peaks.young(now),
        });
        self.health = Health::Ok;
        let backoff = self.refused_at + REFUSAL_BACKOFF - now;
        if d.kind == Kind::Shrink && backoff > 0.0 {
            // The guest just refused to release memory: the next unplug would most likely be
            // refused too (its plugged memory holds kernel pages). No shrink for a while.
            return Decision {
                kind: Kind::Hold,
                target: size,
                reason: Reason::Plan(PlannerReason::ShrinkCooldown {
                    seconds_left: backoff,
                }),
                ..d
            };
        }
        d
    }
}
