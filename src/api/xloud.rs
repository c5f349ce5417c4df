//! The live-scaling guide's Compute API extension, served beside `/v1`:
//! `POST /compute/v2.1/os-xloud-adjust/{server-id}` with
//! `{"xloud_adjust": {"current_vcpus": N, "current_memory_mb": M}}` (either may be left out) and
//! `GET /compute/v2.1/servers/{server-id}/xloud-status`. The caller is who Keystone says its
//! `X-Auth-Token` belongs to (asked by memscale's `[nova]` service user); admin, or a member of
//! the server's project (the domain's `<nova:project uuid=…>`), may adjust. A refusal is a
//! named error, as Nova answers faults: `{"<fault>": {"code": N, "name": ..., "message": ...,
//! "fix": ...}}`. What is accepted goes through the same checks and queue as `/v1` adjust.

use super::{Resp, find_guest, json_resp};
use crate::control::Health;
use crate::daemon::Shared;
use crate::envelope::VcpuError;
use crate::view::GuestView;
use hyper::StatusCode;
use serde_json::json;
use std::sync::Arc;

/// One of the guide's named errors.
fn named(code: StatusCode, name: &str, message: &str, fix: &str) -> Resp {
    let fault = match code {
        StatusCode::BAD_REQUEST => "badRequest",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "itemNotFound",
        StatusCode::CONFLICT => "conflictingRequest",
        _ => "computeFault",
    };
    json_resp(
        code,
        &json!({ fault: { "code": code.as_u16(), "name": name, "message": message, "fix": fix } }),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustReq {
    xloud_adjust: AdjustFields,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustFields {
    #[serde(default)]
    current_vcpus: Option<u32>,
    #[serde(default)]
    current_memory_mb: Option<u64>,
}

/// The caller behind `X-Auth-Token` and the server it names, or the refusal.
async fn authorize(
    s: &Arc<Shared>,
    headers: &hyper::HeaderMap,
    server: &str,
) -> Result<GuestView, Resp> {
    let Some(nova) = s.nova.clone() else {
        return Err(named(
            StatusCode::SERVICE_UNAVAILABLE,
            "keystone_not_configured",
            "memscale has no [nova] section: it cannot check Keystone tokens",
            "configure [nova] (auth_url, username, password_file, project_name) with a service user allowed to validate tokens",
        ));
    };
    let Some(token) = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    else {
        return Err(named(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "the request carries no X-Auth-Token",
            "get a token (openstack token issue) and send it as X-Auth-Token",
        ));
    };
    let caller = match tokio::task::spawn_blocking(move || nova.validate_token(&token)).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => {
            return Err(named(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "Keystone does not know this X-Auth-Token (wrong, expired or revoked)",
                "get a new token (openstack token issue)",
            ));
        }
        Ok(Err(e)) => {
            return Err(named(
                StatusCode::SERVICE_UNAVAILABLE,
                "keystone_unreachable",
                &format!("the token could not be checked: {e}"),
                "check that Keystone answers at [nova] auth_url and that memscale's service user may validate tokens",
            ));
        }
        Err(e) => {
            return Err(named(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the token check did not finish: {e}"),
                "retry",
            ));
        }
    };
    let Some(g) = find_guest(s, server) else {
        return Err(named(
            StatusCode::NOT_FOUND,
            "server_not_found",
            &format!("no server {server:?} on the hosts this memscale manages"),
            "use the server's id (openstack server show -c id) and ask the memscale of its host",
        ));
    };
    if !caller.may_act_on(g.project_id.as_deref()) {
        return Err(named(
            StatusCode::FORBIDDEN,
            "not_your_server",
            &format!(
                "server {server} belongs to project {}; the token is scoped to {} without the admin role",
                g.project_id.as_deref().unwrap_or("(none recorded)"),
                caller.project_id.as_deref().unwrap_or("no project")
            ),
            "use a token scoped to the server's project, or an admin's",
        ));
    }
    Ok(g)
}

pub(super) async fn status(s: &Arc<Shared>, headers: &hyper::HeaderMap, server: &str) -> Resp {
    let g = match authorize(s, headers, server).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let env = g.envelope.as_ref();
    let v = g.vcpus.as_ref();
    json_resp(
        StatusCode::OK,
        &json!({ "xloud_status": {
            "server_id": g.uuid,
            "name": g.name,
            "host": g.host,
            "state": g.state,
            "current_memory_mb": g.current.mib(),
            "target_memory_mb": g.target.mib(),
            "min_memory_mb": env.map(|e| e.floor.mib()),
            "max_memory_mb": env.map(|e| e.ceiling.mib()),
            "numa_nodes": env.map(|e| e.numa_nodes.max(1)),
            "live_scalable": env.is_some(),
            "why_not": g.envelope_error,
            "current_vcpus": v.map(|v| v.current),
            "min_vcpus": v.map(|v| v.floor),
            "max_vcpus": v.map(|v| v.ceiling),
            "cpu_pinned": v.map(|v| v.pinned),
            "flavor": g.flavor,
            "envelope_source": g.envelope_source.as_ref().map(|o| o.source),
            "envelope_source_since": g.envelope_source.as_ref().map(|o| o.since),
            "envelope_source_error": g.envelope_source.as_ref().and_then(|o| o.error_name),
            "project_id": g.project_id,
            "pinned_by_operator": g.pinned,
        }}),
    )
}

pub(super) async fn adjust(
    s: &Arc<Shared>,
    headers: &hyper::HeaderMap,
    server: &str,
    body: &[u8],
) -> Resp {
    let g = match authorize(s, headers, server).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let req: AdjustReq = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return named(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("bad request body: {e}"),
                "send {\"xloud_adjust\": {\"current_vcpus\": N, \"current_memory_mb\": M}} (either or both)",
            );
        }
    };
    let f = req.xloud_adjust;
    if f.current_vcpus.is_none() && f.current_memory_mb.is_none() {
        return named(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "xloud_adjust names neither current_vcpus nor current_memory_mb",
            "give one or both",
        );
    }
    if let Some(n) = f.current_vcpus
        && let Some(r) = vcpu_refusal(&g, n)
    {
        return r;
    }
    if let Some(mb) = f.current_memory_mb
        && let Some(r) = memory_refusal(&g, mb)
    {
        return r;
    }
    // The same checks and queue as /v1 adjust (which checks again: one set of rules).
    let body = json!({ "memory_mib": f.current_memory_mb, "vcpus": f.current_vcpus });
    let inner = super::change::adjust(s, &g, body.to_string().as_bytes()).await;
    if inner.status() != StatusCode::ACCEPTED {
        return inner;
    }
    json_resp(
        StatusCode::ACCEPTED,
        &json!({ "xloud_adjust": {
            "server_id": g.uuid,
            "current_vcpus": f.current_vcpus,
            "current_memory_mb": f.current_memory_mb,
            "queued": true,
        }}),
    )
}

const NO_SPECS_FIX: &str = "add hw:mem_max_mb and/or hw:cpu_max_sockets to the flavor (openstack flavor set FLAVOR --property hw:mem_max_mb=MB): instances on it become live-scalable without a reboot";

fn vcpu_refusal(g: &GuestView, n: u32) -> Option<Resp> {
    let Some(v) = &g.vcpus else {
        return Some(named(
            StatusCode::CONFLICT,
            "not_ready",
            "the server's definition has not been read yet",
            "retry in a few seconds",
        ));
    };
    if v.pinned {
        return Some(named(
            StatusCode::CONFLICT,
            "cpu_pinned",
            &VcpuError::Pinned.to_string(),
            "use hw:cpu_policy=shared for instances that scale live; pinned ones need a flavor resize",
        ));
    }
    if v.ceiling <= v.floor && n != v.current {
        return Some(named(
            StatusCode::CONFLICT,
            "no_hot_add_specs",
            &format!(
                "the server's flavor sets no vCPU ceiling above its {} vCPUs (no hw:cpu_max_* specs)",
                v.floor
            ),
            NO_SPECS_FIX,
        ));
    }
    let e = v.check(n).err()?;
    let (code, name, fix) = match e {
        VcpuError::Pinned => (
            StatusCode::CONFLICT,
            "cpu_pinned",
            "use hw:cpu_policy=shared",
        ),
        VcpuError::NoAcpi => (
            StatusCode::CONFLICT,
            "no_cpu_hotplug",
            "the instance needs ACPI to hot-plug vCPUs",
        ),
        VcpuError::BeyondCeiling { .. } => (
            StatusCode::BAD_REQUEST,
            "beyond_flavor_maximum",
            "ask for less, or raise the flavor's ceiling (openstack flavor set FLAVOR --property hw:cpu_max_sockets=N)",
        ),
        VcpuError::BelowFloor { .. } => (
            StatusCode::BAD_REQUEST,
            "below_flavor_base",
            "live scaling stops at the flavor's base; a flavor resize goes below it",
        ),
        VcpuError::Uneven { .. } => (
            StatusCode::BAD_REQUEST,
            "vcpus_not_numa_even",
            "choose a vCPU count that divides evenly across the instance's NUMA nodes",
        ),
    };
    Some(named(code, name, &e.to_string(), fix))
}

fn memory_refusal(g: &GuestView, mb: u64) -> Option<Resp> {
    match g.state {
        Health::NoDriver => {
            return Some(named(
                StatusCode::CONFLICT,
                "no_balloon_driver",
                "the guest has no balloon driver loaded: its memory cannot be resized",
                "inside the guest: modprobe virtio_balloon (and add it to /etc/modules)",
            ));
        }
        Health::NoEnvelope => {
            return Some(named(
                StatusCode::CONFLICT,
                "no_hot_add_specs",
                &format!(
                    "the server's flavor has no memory envelope: {}",
                    g.envelope_error.as_deref().unwrap_or("no hw:mem_max_mb")
                ),
                NO_SPECS_FIX,
            ));
        }
        Health::Stale | Health::NotRunning | Health::Starting => {
            return Some(named(
                StatusCode::CONFLICT,
                "not_ready",
                &format!(
                    "the guest is {:?}: its memory cannot be resized now",
                    g.state
                ),
                "retry once the guest runs and reports",
            ));
        }
        _ => {}
    }
    let Some(env) = &g.envelope else {
        return Some(named(
            StatusCode::CONFLICT,
            "no_hot_add_specs",
            "the server's flavor has no memory envelope",
            NO_SPECS_FIX,
        ));
    };
    if env.ceiling <= env.floor {
        return Some(named(
            StatusCode::CONFLICT,
            "no_hot_add_specs",
            &format!(
                "the server's memory cannot grow past its {} MB: its flavor has no hw:mem_max_mb above its RAM",
                env.floor.mib()
            ),
            NO_SPECS_FIX,
        ));
    }
    let want = crate::units::Bytes::from_mib(mb);
    if mb > env.ceiling.mib() {
        return Some(named(
            StatusCode::BAD_REQUEST,
            "beyond_flavor_maximum",
            &format!(
                "{mb} MB is beyond the flavor's maximum of {} MB",
                env.ceiling.mib()
            ),
            "ask for less, or raise the flavor's hw:mem_max_mb (openstack flavor set FLAVOR --property hw:mem_max_mb=MB)",
        ));
    }
    if want < env.floor {
        return Some(named(
            StatusCode::BAD_REQUEST,
            "below_flavor_base",
            &format!(
                "{mb} MB is below the server's floor of {} MB",
                env.floor.mib()
            ),
            "live scaling stops at the flavor's base; a flavor resize goes below it",
        ));
    }
    if !env.is_realizable(want) {
        return Some(named(
            StatusCode::BAD_REQUEST,
            "memory_not_numa_even",
            &format!(
                "{mb} MB cannot be split evenly across the server's {} NUMA node(s) at {} MB steps: nearest are {} and {} MB",
                env.numa_nodes.max(1),
                env.hot_step().mib(),
                env.realize_down(want).mib(),
                env.realize_up(want).mib()
            ),
            "choose a size from the nearest valid ones",
        ));
    }
    None
}
