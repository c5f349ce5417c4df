//! Stage 2, plan: each guest's controller decides (health checks, then the pure planner),
//! an operator's manual size stands in for the planner's, and the host is shared when the
//! guests together ask for more than it can give. Nothing here calls libvirt.

use crate::planner::HoldReason;

use super::{Host, Shared};
use crate::control::share::{Ask, share as share_asks};
use crate::envelope::Envelope;
use crate::hypervisor::RunState;
use crate::planner::{Decision, Kind, Reason};
use crate::policy::{Policy, PolicySet};
use crate::rebalance::Candidate;
use crate::units::Bytes;
use std::sync::Arc;

/// One guest's decision for this tick, before the host's share is applied.
pub(super) struct Plan<'p> {
    pub(super) uuid: String,
    pub(super) policy: &'p Policy,
    pub(super) decision: Decision,
    pub(super) before: Bytes,
    pub(super) env: Option<Arc<Envelope>>,
}

/// A decision for each guest in `uuids` (those the host reported this tick).
pub(super) fn decide<'p>(
    host: &mut Host,
    shared: &Shared,
    uuids: &[String],
    policies: &'p PolicySet,
    now: f64,
) -> Vec<Plan<'p>> {
    let timing = shared.timing();
    let moving = host
        .moving
        .as_ref()
        .map(|f| (f.uuid.clone(), f.m.to.clone()));
    let mut plans = Vec::with_capacity(uuids.len());
    for uuid in uuids {
        let Some(g) = host.guests.get_mut(uuid) else {
            continue;
        };
        let policy = g.policy(policies);
        let before = g.current();
        g.set_pinned(
            shared
                .pins
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&g.name),
        );
        let manual = shared
            .adjusts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&g.name);
        let mut decision = g.decide(now, policy, &timing);
        if let Some(requested) = manual {
            // The API checked the request against the envelope; the actuator checks it again.
            if g.pending.is_none() && requested != before {
                decision = Decision {
                    kind: if requested > before {
                        Kind::Grow
                    } else {
                        Kind::Shrink
                    },
                    target: requested,
                    reason: Reason::Hold(HoldReason::Manual { requested }),
                    ..Decision::hold(before, Reason::Hold(HoldReason::Manual { requested }))
                };
            }
        }
        if let Some((_, to)) = moving.as_ref().filter(|(u, _)| u == uuid) {
            // Mid-migration: nothing is resized (QEMU refuses virtio-mem changes then, and a
            // balloon moving under the copy only slows it).
            let to = to.clone();
            decision = Decision::hold(before, Reason::Hold(HoldReason::Migrating { to }));
        }
        let env = g.limited_envelope(policy);
        plans.push(Plan {
            uuid: uuid.clone(),
            policy,
            decision,
            before,
            env,
        });
    }
    plans
}

/// Share the host among the plans (`control::share`). Returns the guests' needs.
pub(super) fn share(host: &Host, plans: &mut [Plan]) -> Bytes {
    let Some(cap) = host.capacity else {
        return Bytes(0);
    };
    let available = cap.saturating_sub(host.cfg.reserve);
    let mut asks: Vec<Ask> = plans
        .iter_mut()
        .filter_map(|p| {
            let g = host.guests.get(&p.uuid)?;
            Some(Ask {
                decision: &mut p.decision,
                before: p.before,
                env: p.env.as_deref(),
                knobs: &p.policy.knobs,
                holds_memory: g
                    .stats
                    .as_ref()
                    .is_some_and(|s| matches!(s.state, RunState::Running | RunState::Paused)),
                pending: g.pending.as_ref().map(|x| x.target),
                using: g.using(),
            })
        })
        .collect();
    share_asks(&mut asks, available).needs
}

/// The guests that could move to another host now: planned (or shared) this tick, running,
/// not resizing, not pinned. By UUID, with the name and size the rebalancer weighs.
pub(super) fn movable(host: &Host, plans: &[Plan]) -> Vec<(String, Candidate)> {
    plans
        .iter()
        .filter(|p| {
            (p.decision.reason.is_planned()
                || matches!(
                    p.decision.reason,
                    Reason::Hold(HoldReason::HostShare { .. })
                ))
                && host.guests.get(&p.uuid).is_some_and(|g| {
                    g.pending.is_none()
                        && !g.pinned
                        && g.stats
                            .as_ref()
                            .is_some_and(|s| s.state == RunState::Running)
                })
        })
        .filter_map(|p| {
            let g = host.guests.get(&p.uuid)?;
            Some((
                p.uuid.clone(),
                Candidate {
                    name: g.name.clone(),
                    size: p.before,
                },
            ))
        })
        .collect()
}
