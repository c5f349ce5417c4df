//! Stage 2, plan: each guest's controller decides (health checks, then the pure planner),
//! an operator's manual size stands in for the planner's, and the host is shared when the
//! guests together ask for more than it can give. Nothing here calls libvirt.

use crate::planner::{EventReason, HoldReason};

use super::{Host, Shared};
use crate::audit::{Inputs, Record};
use crate::control::share::{Ask, Floor, share_with as share_asks};
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

/// Share the host among the plans (`control::share`). Returns the guests' needs. Guests are
/// never cut below their use unless the machine itself is out of memory by its own figures
/// (libvirt's node statistics: free, buffers and cache below the reserve): never on the
/// configured capacity alone.
pub(super) fn share(host: &mut Host, plans: &mut [Plan]) -> Bytes {
    let Some(cap) = host.capacity else {
        host.over_capacity = Bytes(0);
        host.machine_short = false;
        return Bytes(0);
    };
    // By the machine's own figures: below the reserve it is out of memory; at twice the
    // reserve or more it has room for needs past the configured capacity (the gap keeps a
    // growth from tipping it straight into cutting).
    let reserve = host.cfg.reserve;
    let floor = match host.node.map(|n| n.available()) {
        Some(a) if a < reserve => Floor::Envelope,
        Some(a) if a >= reserve.saturating_add(reserve) => Floor::Need,
        _ => Floor::Use,
    };
    let machine_short = floor == Floor::Envelope;
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
    let shared = share_asks(&mut asks, available, floor);
    host.over_capacity = shared.over;
    host.machine_short = machine_short;
    shared.needs
}

/// Say loudly when the host's guests, held at their use, do not fit its capacity minus
/// reserve (log, audit; status and metrics are published), and when the machine itself is
/// out of memory and sharing may cut below use. Once when it starts, once when it ends: the
/// rebalancer keeps looking for a move meanwhile.
pub(super) fn report_over(host: &mut Host, shared: &Shared, now: f64) {
    let available = host
        .capacity
        .unwrap_or_default()
        .saturating_sub(host.cfg.reserve);
    if host.machine_short != host.machine_short_reported {
        host.machine_short_reported = host.machine_short;
        let node = host.node.map(|n| n.available()).unwrap_or_default();
        if host.machine_short {
            tracing::error!(host = %host.label, available = %node, reserve = %host.cfg.reserve,
                "the host machine is out of memory by its own statistics: sharing may cut guests below their use");
        } else {
            tracing::info!(host = %host.label, available = %node, "the host machine has memory again: sharing never cuts a guest below its use");
        }
    }
    let over = host.over_capacity;
    let was = host.over_reported;
    if over.0 > 0 && !was {
        host.over_reported = true;
        let moves = if shared.migration_config().enabled {
            "looking for a move"
        } else {
            "migration is off: only the guests shrinking by themselves can relieve it"
        };
        tracing::warn!(host = %host.label, over = %over, available = %available,
            "host over its capacity: its guests, held at their use, do not fit; none is cut below its use; {moves}");
        let reason = Reason::Event(EventReason::OverCapacity { over, available });
        shared.audit.push(Record {
            time: now,
            host: host.label.clone(),
            guest: String::new(),
            policy: String::new(),
            generation: shared.policy_set().generation,
            kind: Kind::Hold,
            before: available.saturating_add(over),
            after: available.saturating_add(over),
            floor: Bytes(0),
            ceiling: available,
            method: None,
            why: reason.to_string(),
            reason,
            inputs: Inputs::default(),
            dry_run: false,
            result: "held".into(),
            vcpus: None,
        });
    } else if over.0 > 0 {
        host.over_fits_since = None;
    } else if was {
        // Ended once it has stayed ended a while: guests climbing near the capacity cross
        // it back and forth tick by tick, which is one episode, not many.
        let since = *host.over_fits_since.get_or_insert(now);
        if now - since >= OVER_QUIET {
            host.over_reported = false;
            host.over_fits_since = None;
            tracing::info!(host = %host.label, "host within its capacity again");
        }
    }
}

/// Seconds a host must fit its capacity before being over it again counts as a new episode.
const OVER_QUIET: f64 = 30.0;

/// A guest whose trend takes its need up by more than this is climbing (moved last).
const CLIMB: Bytes = Bytes::from_mib(16);

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
                    climbing: p.decision.predicted > p.decision.need.saturating_add(CLIMB),
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
