//! DIMM and vCPU hotplug beside the memory loop: DIMMs the guest refused to release (libvirt's
//! removal-failed event), memory or vCPUs plugged that the guest never brought online, and the
//! vCPU counts operators ask for through the API. Every one is logged and audited.

use crate::planner::EventReason;

use super::{Host, Shared};
use crate::audit::{Record, VcpuChange};
use crate::control::{Guest, ONLINE_GRACE, REFUSED_HOLD};
use crate::cpuplan::CpuSample;
use crate::domain::DIMM_ALIAS_PREFIX;
use crate::envelope::Vcpus;
use crate::planner::{Kind, Reason};
use std::time::Duration;

/// Seconds after a vCPU was plugged before its run time is looked at.
const VCPU_GRACE: f64 = 10.0;
/// libvirt waits up to 5 s for the guest to release a vCPU; a little more for the call.
const VCPU_DEADLINE: Duration = Duration::from_secs(15);

/// The audit record (and log line) of something memscale did or saw outside the planner.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    host: &str,
    shared: &Shared,
    g: &mut Guest,
    kind: Kind,
    reason: Reason,
    method: &str,
    result: String,
    now: f64,
    vcpus: Option<VcpuChange>,
) {
    let set = shared.policy_set();
    let policy = g.policy(&set).name.clone();
    let size = g.current();
    let (floor, ceiling) = g
        .envelope
        .as_ref()
        .map(|e| (e.floor, e.ceiling))
        .unwrap_or_default();
    let why = reason.to_string();
    if result.starts_with("failed") || kind == Kind::Hold {
        tracing::warn!(host, guest = %g.name, reason = %why, result = %result, "{method}");
    } else {
        tracing::info!(host, guest = %g.name, reason = %why, result = %result, ?vcpus, "{method}");
    }
    shared.audit.push(Record {
        time: now,
        host: host.to_string(),
        guest: g.name.clone(),
        policy,
        generation: set.generation,
        kind,
        before: size,
        after: size,
        floor,
        ceiling,
        method: Some(method.to_string()),
        reason,
        why,
        inputs: g.audit_inputs(now, None),
        dry_run: false,
        result,
        vcpus,
    });
}

/// libvirt's removal-failed event: the guest would not offline the memory (kernel pages in
/// it, or onlined as ZONE_NORMAL). The DIMM is left alone for `REFUSED_HOLD` and counts as
/// boot memory meanwhile, so the planner does not ask again in a loop (the balloon may still
/// reclaim what the guest does not use).
pub(super) fn removal_failed(host: &mut Host, shared: &Shared, uuid: &str, alias: &str, now: f64) {
    let label = host.label.clone();
    let Some(g) = host.guests.get_mut(uuid) else {
        tracing::warn!(host = %label, uuid, device = %alias, "a guest memscale does not know refused to release a device");
        return;
    };
    g.reread_definition();
    if !alias.starts_with(DIMM_ALIAS_PREFIX) {
        tracing::warn!(host = %label, guest = %g.name, device = %alias, "the guest refused to release a device memscale did not plug");
        return;
    }
    // The shrink that asked for it will not land: stop waiting for it.
    g.on_unplug_refused(alias, now + REFUSED_HOLD, now);
    shared
        .metrics
        .resizes
        .with_label_values(&["shrink", "dimm", "refused"])
        .inc();
    let reason = Reason::Event(EventReason::UnplugRefused {
        alias: alias.to_string(),
        hold_seconds: REFUSED_HOLD as u64,
    });
    record(
        &label,
        shared,
        g,
        Kind::Hold,
        reason,
        "dimm",
        "refused".into(),
        now,
        None,
    );
}

/// Plugged memory and vCPUs the guest has not brought online, reported once each; refused
/// DIMMs whose hold is over become memscale's to unplug again.
pub(super) async fn check_online(host: &mut Host, shared: &Shared, now: f64, deadline: Duration) {
    let label = host.label.clone();
    let mut vcpu_checks = Vec::new();
    for (uuid, g) in host.guests.iter_mut() {
        g.expire_refusals(now);
        if let Some((plugged, onlined)) = g.check_onlined(now, ONLINE_GRACE) {
            let reason = Reason::Event(EventReason::NotOnlined { plugged, onlined });
            record(
                &label,
                shared,
                g,
                Kind::Hold,
                reason,
                "dimm",
                "not onlined".into(),
                now,
                None,
            );
        }
        if let Some(ids) = g.take_vcpu_check(now, VCPU_GRACE) {
            vcpu_checks.push((uuid.clone(), ids));
        }
    }
    for (uuid, ids) in vcpu_checks {
        let u = uuid.clone();
        let times = host
            .call("vcpu_stats", deadline, move |h| h.vcpu_stats(&u))
            .await;
        let Some(g) = host.guests.get_mut(&uuid) else {
            continue;
        };
        match times {
            Ok(times) => {
                for id in ids {
                    // A vCPU the guest never onlined never ran: its thread has no time.
                    let ran = times.iter().any(|v| v.id == id && v.time > 0);
                    if !ran {
                        let reason = Reason::Event(EventReason::VcpuNotOnlined { vcpu: id });
                        record(
                            &label,
                            shared,
                            g,
                            Kind::Hold,
                            reason,
                            "vcpu",
                            "not onlined".into(),
                            now,
                            None,
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(host = %label, guest = %g.name, error = %e, "cannot read vCPU statistics")
            }
        }
    }
}

/// Run the vCPU counts operators asked for on this host's guests.
pub(super) async fn vcpu_adjusts(host: &mut Host, shared: &Shared, now: f64) {
    let asked: Vec<(String, u32)> = {
        let mut q = shared
            .vcpu_adjusts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return;
        }
        host.guests
            .iter()
            .filter_map(|(uuid, g)| q.remove(&g.name).map(|n| (uuid.clone(), n)))
            .collect()
    };
    for (uuid, n) in asked {
        set_vcpus(
            host,
            shared,
            &uuid,
            n,
            Reason::Event(EventReason::ManualVcpus { requested: n }),
            now,
        )
        .await;
    }
}

/// Set a guest's vCPU count live, audited; returns whether it was applied.
async fn set_vcpus(
    host: &mut Host,
    shared: &Shared,
    uuid: &str,
    n: u32,
    reason: Reason,
    now: f64,
) -> bool {
    let label = host.label.clone();
    let Some(g) = host.guests.get_mut(uuid) else {
        return false;
    };
    let Some(spec) = g.spec.as_ref() else {
        return false;
    };
    let env = Vcpus::from_spec(spec, g.inactive.as_ref());
    let before = env.current;
    let change = Some(VcpuChange { before, after: n });
    if let Err(e) = env.check(n) {
        // The API checked; the definition may have changed since.
        record(
            &label,
            shared,
            g,
            Kind::Hold,
            reason,
            "vcpu",
            format!("failed: {e}"),
            now,
            change,
        );
        return false;
    }
    if n == before {
        return false;
    }
    let kind = if n > before { Kind::Grow } else { Kind::Shrink };
    let u = uuid.to_string();
    let r = host
        .call("set_vcpus", VCPU_DEADLINE, move |h| h.set_vcpus(&u, n))
        .await;
    if r.is_err() {
        host.count_error(shared, "set_vcpus");
    }
    let Some(g) = host.guests.get_mut(uuid) else {
        return false;
    };
    let applied = r.is_ok();
    g.on_vcpus_set(before, n, applied, now, now + REFUSED_HOLD);
    let result = match r {
        Ok(()) => "applied".to_string(),
        // A removal that failed is not asked again by the CPU policy for a while.
        Err(e) if n < before && e.to_string().contains("timed out") => format!(
            "failed: {e} (libvirt saw no DEVICE_DELETED for the vCPU in time: the guest may have released it all the same; libvirt keeps counting it until it does)"
        ),
        Err(e) => format!("failed: {e}"),
    };
    let dir = if kind == Kind::Grow { "grow" } else { "shrink" };
    shared
        .metrics
        .resizes
        .with_label_values(&[dir, "vcpu", result.split(':').next().unwrap_or("failed")])
        .inc();
    record(&label, shared, g, kind, reason, "vcpu", result, now, change);
    applied
}

/// The optional CPU policy: for guests whose policy enables it, sample their vCPUs and add or
/// remove a step when `cpuplan` says so.
pub(super) async fn cpu_policy(host: &mut Host, shared: &Shared, now: f64, deadline: Duration) {
    let set = shared.policy_set();
    let mut todo = Vec::new();
    for (uuid, g) in host.guests.iter_mut() {
        let running = g
            .stats
            .as_ref()
            .is_some_and(|s| s.state == crate::hypervisor::RunState::Running);
        let k = &g.policy(&set).cpu;
        if k.enabled && running && !g.pinned && g.spec.is_some() && now >= g.cpu_hold_until {
            todo.push(uuid.clone());
        } else if !g.cpu_samples.is_empty() {
            g.forget_cpu_samples();
        }
    }
    for uuid in todo {
        let u = uuid.clone();
        let stats = host
            .call("vcpu_stats", deadline, move |h| h.vcpu_stats(&u))
            .await;
        let Some(g) = host.guests.get_mut(&uuid) else {
            continue;
        };
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(host = %host.label, guest = %g.name, error = %e, "cannot read vCPU statistics");
                g.forget_cpu_samples();
                continue;
            }
        };
        let sample = CpuSample {
            at: now,
            time_ns: stats.iter().map(|v| v.time).sum(),
            delay_ns: stats.iter().map(|v| v.delay).sum(),
            online: stats.len() as u32,
        };
        let k = g.policy(&set).cpu.clone();
        g.observe_cpu(sample, k.window.as_secs_f64() * 1.5 + 5.0);
        let Some(spec) = g.spec.as_ref() else {
            continue;
        };
        let env = Vcpus::from_spec(spec, g.inactive.as_ref());
        if let Some((n, reason)) =
            crate::cpuplan::decide(&k, &env, &g.cpu_samples, now, g.cpu_last_change)
        {
            set_vcpus(host, shared, &uuid, n, reason, now).await;
        }
    }
}
