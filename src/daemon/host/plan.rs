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

/// The etcd lease is lost on a host this daemon held last ([`super::Role::GrowOnly`]): a
/// shrink waits for the lease (an operator's manual size is kept for then), and a growth is
/// cut to the host's free memory now (capacity minus reserve minus what its guests hold or
/// are growing to). Sharing counted on shrinks that will not happen, so its grants alone
/// could overfill the host. Growths are served in the plans' order.
pub(super) fn grow_only(host: &Host, shared: &Shared, plans: &mut [Plan]) {
    let mut free = host.capacity.map(|cap| {
        let held = host
            .guests
            .values()
            .filter(|g| {
                g.stats
                    .as_ref()
                    .is_some_and(|s| matches!(s.state, RunState::Running | RunState::Paused))
            })
            .map(|g| {
                let current = g.current();
                g.pending
                    .as_ref()
                    .map_or(current, |p| p.target.max(current))
            })
            .fold(Bytes(0), Bytes::saturating_add);
        cap.saturating_sub(host.cfg.reserve).saturating_sub(held)
    });
    for p in plans.iter_mut() {
        let wanted = p.decision.target;
        let wait = || Decision::hold(p.before, Reason::Hold(HoldReason::NoLease { wanted }));
        match p.decision.kind {
            Kind::Shrink => {
                if let Reason::Hold(HoldReason::Manual { requested }) = p.decision.reason
                    && let Some(g) = host.guests.get(&p.uuid)
                {
                    shared
                        .adjusts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(g.name.clone())
                        .or_insert(requested);
                }
                p.decision = wait();
            }
            Kind::Grow => {
                let Some(f) = free.as_mut() else { continue };
                let room = p.before.saturating_add(*f);
                if room <= p.before {
                    p.decision = wait();
                    continue;
                }
                if p.decision.target > room {
                    // A size the envelope can take, at most the room.
                    let cut = p.env.as_ref().map_or(room, |e| e.realize_down(room));
                    if cut <= p.before {
                        p.decision = wait();
                        continue;
                    }
                    p.decision.target = cut;
                }
                *f = f.saturating_sub(p.decision.target.saturating_sub(p.before));
            }
            Kind::Hold => {}
        }
    }
}
