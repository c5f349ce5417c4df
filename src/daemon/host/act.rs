//! Stage 3, act: a decision becomes libvirt operations (balloon, virtio-mem, DIMMs, in the
//! order `actuator::ops` gives), run under the tick's deadline; the typed [`Outcome`] goes
//! back to the guest's controller, the metrics and the audit.

use super::{Host, Shared, g_name};
use crate::actuator::{self, Op};
use crate::audit::Record;
use crate::planner::Kind;
use crate::policy::PolicySet;
use std::fmt;
use std::time::Duration;

use super::plan::Plan;

/// What became of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A hold: nothing to do.
    Held,
    /// Decided, not done (`--dry-run` or a dry-run policy).
    DryRun,
    /// Every operation went through; the resize is landing.
    Applied,
    /// An operation (or the plan for them) failed; the guest is where it was.
    Failed(String),
}

impl Outcome {
    /// The label metrics count it under.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::DryRun => "dry-run",
            Outcome::Applied => "applied",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// As the audit records and the log have always written it.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            o => f.write_str(o.label()),
        }
    }
}

/// Ask a stats period of running guests that have a balloon and report none (once each).
pub(super) async fn set_stats_periods(host: &mut Host, shared: &Shared, deadline: Duration) {
    let want: Vec<String> = host
        .guests
        .iter()
        .filter(|(_, g)| {
            !g.period_set
                && g.stats
                    .as_ref()
                    .is_some_and(|s| s.state == crate::hypervisor::RunState::Running)
                && g.spec
                    .as_ref()
                    .is_some_and(|s| s.balloon_device && s.stats_period.unwrap_or(0) == 0)
        })
        .map(|(u, _)| u.clone())
        .collect();
    for uuid in want {
        if let Some(g) = host.guests.get_mut(&uuid) {
            g.on_stats_period_asked();
        }
        let period = shared.config.stats_period;
        let u = uuid.clone();
        match host
            .call("set_stats_period", deadline, move |h| {
                h.set_stats_period(&u, period)
            })
            .await
        {
            Ok(()) => {
                tracing::info!(host = %host.label, guest = %g_name(host, &uuid), period, "stats period set")
            }
            Err(e) => {
                host.count_error(shared, "set_stats_period");
                tracing::warn!(host = %host.label, guest = %g_name(host, &uuid), error = %e, "cannot set stats period");
            }
        }
    }
}

/// Carry out one guest's decision, then record it (a hold only when its reason changed).
pub(super) async fn act(
    host: &mut Host,
    shared: &Shared,
    plan: Plan<'_>,
    policies: &PolicySet,
    now: f64,
    deadline: Duration,
) {
    let Plan {
        uuid,
        policy,
        mut decision,
        before,
        env,
    } = plan;
    let uuid = uuid.as_str();
    let label = host.label.clone();
    let dry = shared.dry_run || policy.dry_run;
    let mut outcome = Outcome::Held;
    let mut method = None;
    let Some(g) = host.guests.get(uuid) else {
        return;
    };
    if decision.kind != Kind::Hold {
        let ops = env.as_ref().map(|e| {
            decision.target = actuator::step_target(e, &g.parts, decision.target);
            let dimms = g.spec.as_ref().map(|s| s.dimms.as_slice()).unwrap_or(&[]);
            actuator::ops(e, &g.parts, decision.target, dimms)
        });
        match ops {
            Some(Ok(ops)) => {
                let m = actuator::method_label(&ops);
                outcome = if dry {
                    Outcome::DryRun
                } else {
                    execute(host, shared, uuid, &ops, deadline, now).await
                };
                let Some(g) = host.guests.get_mut(uuid) else {
                    return;
                };
                let dir = if decision.kind == Kind::Grow {
                    "grow"
                } else {
                    "shrink"
                };
                shared
                    .metrics
                    .resizes
                    .with_label_values(&[dir, &m, outcome.label()])
                    .inc();
                match &outcome {
                    Outcome::Applied => {
                        shared
                            .metrics
                            .bytes_moved
                            .with_label_values(&[dir])
                            .inc_by(decision.target.delta(before).unsigned_abs() as u64);
                        g.on_resize_applied(&decision, before, &m, &ops, now);
                    }
                    Outcome::Failed(_) => g.on_resize_failed(),
                    Outcome::DryRun | Outcome::Held => {}
                }
                method = Some(m);
            }
            Some(Err(e)) => {
                outcome = Outcome::Failed(e.to_string());
                shared
                    .metrics
                    .resizes
                    .with_label_values(&["plan", "none", "failed"])
                    .inc();
            }
            None => outcome = Outcome::Failed("no envelope".into()),
        }
    }
    let Some(g) = host.guests.get_mut(uuid) else {
        return;
    };
    let label_changed = g.last_reason_label != decision.reason.label();
    if decision.kind == Kind::Hold && label_changed {
        shared
            .metrics
            .holds
            .with_label_values(&[decision.reason.label()])
            .inc();
    }
    if decision.kind != Kind::Hold || label_changed {
        let why = decision.reason.to_string();
        let result = outcome.to_string();
        if decision.kind == Kind::Hold {
            tracing::info!(host = %label, guest = %g.name, size = %before, reason = %why, "hold");
        } else {
            tracing::info!(host = %label, guest = %g.name, before = %before, after = %decision.target,
                method = method.as_deref().unwrap_or("-"), reason = %why, result = %result, policy = %policy.name,
                "{}", if decision.kind == Kind::Grow { "grow" } else { "shrink" });
        }
        shared.audit.push(Record {
            time: now,
            host: label,
            guest: g.name.clone(),
            policy: policy.name.clone(),
            generation: policies.generation,
            kind: decision.kind,
            before,
            after: decision.target,
            floor: env.as_ref().map(|e| e.floor).unwrap_or_default(),
            ceiling: env.as_ref().map(|e| e.ceiling).unwrap_or_default(),
            method,
            reason: decision.reason.clone(),
            why,
            inputs: g.audit_inputs(now, Some(&decision)),
            dry_run: dry,
            result,
            vcpus: None,
        });
    }
    g.on_decided(decision);
}

/// Run the operations in order; stop at the first failure.
async fn execute(
    host: &mut Host,
    shared: &Shared,
    uuid: &str,
    ops: &[Op],
    deadline: Duration,
    now: f64,
) -> Outcome {
    for op in ops {
        let u = uuid.to_string();
        let o = op.clone();
        let r = host
            .call("resize", deadline, move |h| match &o {
                Op::Balloon { target } => h.set_balloon(&u, *target),
                Op::VirtioMem { alias, requested } => h.set_virtio_mem(&u, alias, *requested),
                Op::DimmAdd { alias, node, size } => {
                    h.attach_memory(&u, &crate::domain::dimm_xml(alias, *node, *size))
                }
                Op::DimmRemove { alias, .. } => h.detach_alias(&u, alias),
            })
            .await;
        match r {
            Ok(()) => {
                if let Some(g) = host.guests.get_mut(uuid) {
                    g.on_op_applied(op, now);
                }
            }
            Err(e) => {
                host.count_error(shared, "resize");
                tracing::warn!(host = %host.label, guest = %g_name(host, uuid), op = ?op, error = %e, "resize failed; guest left where it is");
                return Outcome::Failed(e.to_string());
            }
        }
    }
    Outcome::Applied
}
