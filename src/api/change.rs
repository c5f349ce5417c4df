//! The API's changes: pin, unpin and adjust a guest, approve or reject a proposed migration.
//! Each is refused before anything changes unless the request carries the token (`auth`).

use super::{Resp, auth, error, find_guest, json_resp};
use crate::daemon::Shared;
use crate::view::GuestView;
use hyper::StatusCode;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    #[serde(default)]
    memory_mib: Option<u64>,
    #[serde(default)]
    vcpus: Option<u32>,
}

/// Approve or reject a proposed migration (propose-only mode). An approved one runs on the
/// source host's next tick.
pub(super) fn decide(s: &Shared, headers: &hyper::HeaderMap, id: &str, approve: bool) -> Resp {
    if let Some(r) = auth::refusal(s, headers) {
        return r;
    }
    let Ok(n) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("proposal id {id:?} is not a number"),
        );
    };
    match s.decide_proposal(n, approve) {
        Ok(p) => json_resp(StatusCode::OK, &json!(p)),
        Err(crate::daemon::ProposalError::Unknown(n)) => {
            error(StatusCode::NOT_FOUND, &format!("no proposal {n}"))
        }
        Err(crate::daemon::ProposalError::NotOpen(n, st)) => error(
            StatusCode::CONFLICT,
            &format!(
                "proposal {n} is {st}: only a proposal still proposed can be approved or rejected"
            ),
        ),
        Err(crate::daemon::ProposalError::DryRun(n)) => error(
            StatusCode::CONFLICT,
            &format!(
                "memscale runs in dry-run mode: nothing is moved, so proposal {n} cannot be approved and is left as it is (restart without dry run to let approved migrations run)"
            ),
        ),
    }
}

/// Pin, unpin or adjust a guest. What must survive a restart (pins, manual sizes) is saved
/// before it takes effect, off the async runtime (the save syncs the file): a save that fails
/// answers 500 and leaves everything as it was.
pub(super) async fn mutate(
    s: &Arc<Shared>,
    headers: &hyper::HeaderMap,
    name: &str,
    action: &str,
    body: &[u8],
) -> Resp {
    if let Some(r) = auth::refusal(s, headers) {
        return r;
    }
    let Some(g) = find_guest(s, name) else {
        return error(StatusCode::NOT_FOUND, &format!("no guest named {name:?}"));
    };
    match action {
        "pin" => {
            let guest = g.name.clone();
            if let Err(r) = saved(s, "the pin is not kept", move |pins, _| {
                pins.insert(guest);
            })
            .await
            {
                return r;
            }
            tracing::info!(guest = %g.name, "pinned by operator");
            json_resp(StatusCode::OK, &json!({ "guest": g.name, "pinned": true }))
        }
        "unpin" => {
            let guest = g.name.clone();
            if let Err(r) = saved(s, "the unpin is not kept", move |pins, manual| {
                pins.remove(&guest);
                manual.remove(&guest);
            })
            .await
            {
                return r;
            }
            tracing::info!(guest = %g.name, "unpinned by operator");
            json_resp(StatusCode::OK, &json!({ "guest": g.name, "pinned": false }))
        }
        _ => adjust(s, &g, body).await,
    }
}

/// Save an operator's change to the pins and manual sizes, then make it live
/// ([`Shared::change_pins`]), on a blocking thread. The refusal says `unchanged` when the
/// save failed.
async fn saved(
    s: &Arc<Shared>,
    unchanged: &str,
    change: impl FnOnce(&mut BTreeSet<String>, &mut BTreeMap<String, u64>) + Send + 'static,
) -> Result<(), Resp> {
    let s2 = s.clone();
    let dir = s.config.state_dir.join(crate::state::FILE);
    match tokio::task::spawn_blocking(move || s2.change_pins(change)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "cannot save the state file {}: {e}; nothing changed: {unchanged}",
                dir.display()
            ),
        )),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the state save did not finish: {e}; nothing changed: {unchanged}"),
        )),
    }
}

/// A manual size (the guest is then pinned at it) and/or a vCPU count, both checked before
/// either is queued, the size saved before anything is queued.
pub(super) async fn adjust(s: &Arc<Shared>, g: &GuestView, body: &[u8]) -> Resp {
    let req: AdjustBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "bad request body: {e}; expected {{\"memory_mib\": N, \"vcpus\": N}} (either or both)"
                ),
            );
        }
    };
    if req.memory_mib.is_none() && req.vcpus.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad request body: give memory_mib, vcpus or both",
        );
    }
    if s.dry_run {
        return error(
            StatusCode::CONFLICT,
            "memscale runs in dry-run mode: it resizes nothing",
        );
    }
    // Check both before queueing either: a request is taken whole or not at all.
    let vcpus = match req.vcpus {
        None => None,
        Some(n) => {
            if g.state == crate::control::Health::NotRunning {
                return error(StatusCode::CONFLICT, "the guest is not running");
            }
            let Some(v) = &g.vcpus else {
                return error(
                    StatusCode::CONFLICT,
                    "the guest's definition has not been read yet",
                );
            };
            if let Err(e) = v.check(n) {
                let status = if matches!(
                    e,
                    crate::envelope::VcpuError::Pinned | crate::envelope::VcpuError::NoAcpi
                ) {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                return error(status, &e.to_string());
            }
            Some(n)
        }
    };
    let memory = match req.memory_mib {
        None => None,
        Some(mib) => match check_memory(g, mib) {
            Ok(b) => Some(b),
            Err((status, message)) => return error(status, &message),
        },
    };
    if let Some(want) = memory {
        // A manual size holds until the operator unpins the guest: saved first, so a size
        // that would not survive a restart is never applied.
        let guest = g.name.clone();
        if let Err(r) = saved(
            s,
            "nothing was queued and no pin is kept",
            move |pins, manual| {
                pins.insert(guest.clone());
                manual.insert(guest, want.0);
            },
        )
        .await
        {
            return r;
        }
    }
    let mut out = json!({ "guest": g.name, "queued": true });
    if let Some(n) = vcpus {
        s.vcpu_adjusts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g.name.clone(), n);
        tracing::info!(guest = %g.name, vcpus = n, "manual vCPU adjust queued");
        out["vcpus"] = json!(n);
    }
    if let Some(want) = memory {
        s.adjusts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g.name.clone(), want);
        tracing::info!(guest = %g.name, memory_mib = want.mib(), "manual adjust queued; guest pinned");
        out["memory_mib"] = json!(want.mib());
        out["pinned"] = json!(true);
    }
    json_resp(StatusCode::ACCEPTED, &out)
}

/// A manual memory size, checked against the guest's state and envelope.
fn check_memory(g: &GuestView, mib: u64) -> Result<crate::units::Bytes, (StatusCode, String)> {
    let blocked = match g.state {
        crate::control::Health::NoDriver => {
            Some("the guest has no balloon driver: its memory cannot be managed")
        }
        crate::control::Health::Stale => Some("the guest's statistics are stale"),
        crate::control::Health::NotRunning => Some("the guest is not running"),
        crate::control::Health::NoEnvelope => {
            Some("the guest has no envelope (no resize method or hot-add specs)")
        }
        crate::control::Health::Starting => Some("the guest has not reported yet"),
        _ => None,
    };
    if let Some(why) = blocked {
        return Err((StatusCode::CONFLICT, why.to_string()));
    }
    let Some(env) = &g.envelope else {
        return Err((StatusCode::CONFLICT, "the guest has no envelope".into()));
    };
    let Some(want) = mib.checked_mul(1 << 20).map(crate::units::Bytes) else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "memory_mib is too large".into(),
        ));
    };
    if want > env.ceiling {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} MiB is beyond the guest's ceiling of {} MiB",
                mib,
                env.ceiling.mib()
            ),
        ));
    }
    if want < env.floor {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} MiB is below the guest's floor of {} MiB",
                mib,
                env.floor.mib()
            ),
        ));
    }
    if !env.is_realizable(want) {
        let (lo, hi) = (env.realize_down(want), env.realize_up(want));
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} MiB cannot be split evenly across the guest's {} NUMA node(s) at {} MiB steps: nearest valid sizes are {} MiB and {} MiB",
                mib,
                env.numa_nodes.max(1),
                env.hot_step().mib(),
                lo.mib(),
                hi.mib()
            ),
        ));
    }
    Ok(want)
}
