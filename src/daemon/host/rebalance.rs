//! Stage 4, rebalance: when sharing cannot hold the guests' needs (floors and needs beyond
//! capacity minus reserve), one guest moves to the host with the most room
//! (`crate::rebalance::pick`), after its room there is promised (`crate::coord`), by libvirt
//! peer to peer or Nova's `os-migrateLive`; or, in propose-only mode, is proposed.

use crate::planner::EventReason;

use super::{Host, PROPOSAL_GRACE, Shared};
use crate::audit::{Inputs, Record};
use crate::hypervisor::HvError;
use crate::planner::{Kind, Reason};
use crate::units::Bytes;
use std::time::Duration;

/// A live migration under way.
pub(super) struct InFlight {
    pub(super) uuid: String,
    pub(super) m: crate::rebalance::Move,
    /// The proposal it carries out, if an operator approved it.
    proposal: Option<u64>,
    deficit: Bytes,
    needs: Bytes,
    started: f64,
    timeout: f64,
    retry_after: f64,
    /// When the abort was asked (past `timeout`), and whether a stuck abort was reported.
    aborted_at: Option<f64>,
    stuck_reported: bool,
    task: tokio::task::JoinHandle<Result<(), HvError>>,
}

/// Seconds after an abort before a migration still running is reported as stuck.
const ABORT_GRACE: f64 = 60.0;

/// A move's result as its audit record and metric name it.
fn outcome(r: Result<(), String>) -> String {
    match r {
        Ok(()) => "applied".into(),
        Err(e) => format!("failed: {e}"),
    }
}

/// When sharing cannot hold the guests' needs (floors and needs beyond capacity minus
/// reserve), move one guest to the host with the most room: the smallest that covers the
/// deficit (`rebalance::pick`). Rate-limited per host; a failed move leaves the guest where it
/// runs, is reported, and that destination is avoided for `retry_after`. In propose-only mode
/// (or dry run) the move is only proposed, until an operator approves it.
pub(super) async fn rebalance(
    host: &mut Host,
    shared: &Shared,
    needs: Bytes,
    candidates: &[(String, crate::rebalance::Candidate)],
    now: f64,
) {
    if host.moving.is_some() {
        // One move at a time per host, as before; the next is chosen once this one ends.
        follow(host, shared, now).await;
        return;
    }
    let mc = shared.migration_config();
    if !mc.enabled {
        return;
    }
    let Some(cap) = host.capacity else {
        return;
    };
    let propose = mc.propose_only || shared.dry_run;
    let deficit = crate::rebalance::deficit(needs, cap, host.cfg.reserve);
    if deficit.0 == 0 {
        host.no_room_reported = false;
        // A shortage that dips for a tick or two is still a shortage: proposals expire only
        // once the host has held its guests for a while.
        let since = *host.holding_since.get_or_insert(now);
        if now - since >= PROPOSAL_GRACE {
            shared.close_proposals(&host.label, "the host is no longer short of memory");
        }
        return;
    }
    host.holding_since = None;
    host.failed_moves.retain(|f| f.2 > now);
    let approved = if propose {
        shared.approved_proposal(&host.label)
    } else {
        None
    };
    if approved.is_none() && now - host.last_migration < mc.min_interval.as_secs_f64() {
        return;
    }
    let promised = match shared.promises.promised().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(host = %host.label, error = %e, "cannot read promises to destinations; no migration now");
            return;
        }
    };
    // Room on each other host before promises (for the atomic check when reserving), and
    // after them (for the choice).
    let rooms: Vec<(String, Bytes)> = {
        let hosts = shared.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .filter(|v| v.name != host.label && v.connected && v.capacity.0 > 0)
            .map(|v| {
                (
                    v.name.clone(),
                    v.capacity
                        .saturating_sub(v.reserve)
                        .saturating_sub(v.committed),
                )
            })
            .collect()
    };
    if let Some(p) = approved {
        // The operator's choice, as proposed: only checked to be still possible.
        let Some(uuid) = candidates
            .iter()
            .find(|c| c.1.name == p.guest)
            .map(|c| c.0.clone())
        else {
            if !host.guests.values().any(|g| g.name == p.guest) {
                shared.finish_proposal(
                    p.id,
                    "expired",
                    Some("the guest is no longer on this host".into()),
                );
            }
            // Otherwise it is resizing or pinned right now: next tick.
            return;
        };
        let m = crate::rebalance::Move {
            guest: p.guest.clone(),
            to: p.to.clone(),
            size: p.size,
        };
        shared.finish_proposal(p.id, "running", None);
        host.last_migration = now;
        let start = Start {
            m: &m,
            uuid: &uuid,
            proposal: Some(p.id),
            deficit,
            needs,
        };
        launch(host, shared, &mc, start, &rooms, now).await;
        return;
    }
    let dests: Vec<crate::rebalance::Destination> = rooms
        .iter()
        .map(|(name, room)| crate::rebalance::Destination {
            name: name.clone(),
            room: room.saturating_sub(Bytes(
                promised
                    .iter()
                    .filter(|a| &a.to == name)
                    .map(|a| a.size.0)
                    .sum(),
            )),
        })
        .collect();
    let failed = host.failed_moves.clone();
    let usable: Vec<crate::rebalance::Candidate> = candidates.iter().map(|c| c.1.clone()).collect();
    // A destination a move failed to is avoided for every guest until `retry_after`: a
    // failure there (down, unreachable, refusing) says more about it than about the guest
    // (seen: the next proposal sent another guest to the host that was down).
    let ds: Vec<_> = dests
        .iter()
        .filter(|d| !failed.iter().any(|f| f.1 == d.name))
        .cloned()
        .collect();
    let choice = crate::rebalance::pick(deficit, &usable, &ds);
    let Some(m) = choice else {
        if usable.is_empty() {
            tracing::debug!(host = %host.label, deficit = %deficit, "host short of memory; no guest can move now (resizing, pinned or starting)");
        } else if !host.no_room_reported {
            host.no_room_reported = true;
            tracing::warn!(host = %host.label, deficit = %deficit, destinations = dests.len(), "host short of memory and no guest fits on another host (after the room promised to migrations under way)");
        }
        return;
    };
    let Some(uuid) = candidates
        .iter()
        .find(|c| c.1.name == m.guest)
        .map(|c| c.0.clone())
    else {
        return;
    };
    host.no_room_reported = false;
    host.last_migration = now;
    if propose {
        match shared.propose(&host.label, &m, deficit, now) {
            Some(id) => {
                tracing::info!(host = %host.label, guest = %m.guest, to = %m.to, size = %m.size, deficit = %deficit, id, "migration proposed; approve it with `memscale migrations approve {id}`");
                record_migration(
                    host,
                    shared,
                    &m,
                    deficit,
                    needs,
                    now,
                    true,
                    "proposed".into(),
                );
            }
            None => {
                tracing::debug!(host = %host.label, guest = %m.guest, to = %m.to, "the same migration is still proposed")
            }
        }
        return;
    }
    let start = Start {
        m: &m,
        uuid: &uuid,
        proposal: None,
        deficit,
        needs,
    };
    launch(host, shared, &mc, start, &rooms, now).await;
}

/// Start a move; one that cannot start is reported (and its proposal closed) at once.
async fn launch(
    host: &mut Host,
    shared: &Shared,
    mc: &crate::config::MigrationConfig,
    s: Start<'_>,
    rooms: &[(String, Bytes)],
    now: f64,
) {
    let (m, proposal, deficit, needs) = (s.m.clone(), s.proposal, s.deficit, s.needs);
    if let Err(e) = start_move(host, shared, mc, s, rooms, now).await {
        if let Some(id) = proposal {
            shared.finish_proposal(id, "failed", Some(e.clone()));
        }
        record_migration(
            host,
            shared,
            &m,
            deficit,
            needs,
            now,
            false,
            outcome(Err(e)),
        );
    }
}

/// The move to start, and what it is for.
struct Start<'a> {
    m: &'a crate::rebalance::Move,
    uuid: &'a str,
    proposal: Option<u64>,
    deficit: Bytes,
    needs: Bytes,
}

/// Follow the move under way: settle it once its call has returned; abort it through
/// libvirt once past its timeout; report one that an abort has not ended.
pub(super) async fn follow(host: &mut Host, shared: &Shared, now: f64) {
    let Some(f) = host.moving.as_mut() else {
        return;
    };
    if f.task.is_finished() {
        let Some(f) = host.moving.take() else {
            return;
        };
        let r = match f.task.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the migration task ended abnormally: {e}")),
        };
        let r = match (r, f.aborted_at) {
            (Err(e), Some(_)) => Err(format!("aborted after its timeout of {}s ({e})", f.timeout)),
            (r, _) => r,
        };
        settle(
            host,
            shared,
            f.m,
            f.proposal,
            f.deficit,
            f.needs,
            f.retry_after,
            r,
            now,
        )
        .await;
        return;
    }
    let elapsed = now - f.started;
    match f.aborted_at {
        None if elapsed > f.timeout => {
            f.aborted_at = Some(now);
            let (u, guest, to) = (f.uuid.clone(), f.m.guest.clone(), f.m.to.clone());
            tracing::warn!(host = %host.label, guest = %guest, to = %to, elapsed_s = elapsed as u64,
                "migration past its timeout: aborting it; the guest stays here");
            let deadline = shared.config.interval.0.max(Duration::from_secs(2));
            if let Err(e) = host
                .call("abort_job", deadline, move |h| h.abort_job(&u))
                .await
            {
                host.count_error(shared, "abort_job");
                tracing::error!(host = %host.label, guest = %guest, error = %e,
                    "cannot abort the migration; its promise on the destination is kept until it ends");
            }
        }
        Some(at) if now - at > ABORT_GRACE => {
            if !f.stuck_reported {
                f.stuck_reported = true;
                tracing::error!(host = %host.label, guest = %f.m.guest, to = %f.m.to, elapsed_s = elapsed as u64,
                    "migration still running a minute after its abort; its promise on the destination is kept until it ends, and no other move starts from this host");
            }
            // The guest may yet arrive there: its room stays promised while the call runs.
            let (to, guest) = (f.m.to.clone(), f.m.guest.clone());
            let until = now + 3.0 * shared.config.interval.as_secs_f64() + 10.0;
            if let Err(e) = shared.promises.extend(&to, &guest, until).await {
                tracing::warn!(to = %to, guest = %guest, error = %e, "cannot extend the promise");
            }
        }
        _ => {}
    }
}

/// Promise the room on the destination, then start moving the guest (peer to peer, or
/// through Nova) in a task of its own. An error says why it did not start (the guest still
/// runs here).
async fn start_move(
    host: &mut Host,
    shared: &Shared,
    mc: &crate::config::MigrationConfig,
    s: Start<'_>,
    rooms: &[(String, Bytes)],
    now: f64,
) -> Result<(), String> {
    let Start {
        m,
        uuid,
        proposal,
        deficit,
        needs,
    } = s;
    // Every move goes through here: under dry run none may, whatever approved it (the API
    // refuses approvals under dry run; this holds should anything else approve one).
    if shared.dry_run {
        return Err("memscale runs in dry-run mode: nothing is moved".into());
    }
    let dest_cfg = shared.config.hosts.iter().find(|h| h.label() == m.to);
    let dest_uri = dest_cfg
        .map(|h| h.migration_uri.clone().unwrap_or_else(|| h.uri.clone()))
        .unwrap_or_default();
    // Without `migration_address`, the memory goes to the host the destination's URI names:
    // libvirt's own default is the destination's hostname, which the source may not resolve
    // (seen: "Unable to resolve address 'bedhost3'", every move failing).
    let data_uri = dest_cfg.and_then(|h| {
        h.migration_address
            .clone()
            .or_else(|| crate::rebalance::data_uri_from(&dest_uri))
    });
    let room = rooms
        .iter()
        .find(|r| r.0 == m.to)
        .map(|r| r.1)
        .unwrap_or_default();
    let timeout = mc.timeout.as_secs_f64();
    let promise = crate::coord::Arrival {
        to: m.to.clone(),
        guest: m.guest.clone(),
        from: host.label.clone(),
        size: m.size,
        // Past the timeout, the abort and a margin: a move that outlives even that keeps
        // its promise by extension (see `follow`).
        until: now + timeout + ABORT_GRACE + 10.0,
        by: String::new(),
    };
    match shared.promises.reserve(&promise, room).await {
        Ok(true) => {}
        Ok(false) => {
            // Another mover took that room first: choose again next tick.
            tracing::info!(host = %host.label, guest = %m.guest, to = %m.to, "destination's room was promised to another migration; choosing again");
            host.last_migration = f64::NEG_INFINITY;
            return Err("the destination's room was promised to another migration".into());
        }
        Err(e) => {
            tracing::warn!(host = %host.label, guest = %m.guest, to = %m.to, error = %e, "cannot promise room on the destination; no migration now");
            host.last_migration = f64::NEG_INFINITY;
            return Err(format!("cannot promise room on the destination: {e}"));
        }
    }
    let nova = host.cfg.migration_backend == crate::config::MigrationBackend::Nova;
    tracing::info!(host = %host.label, guest = %m.guest, to = %m.to, size = %m.size, deficit = %deficit,
        backend = if nova { "nova" } else { "libvirt" }, "migrating");
    let u = uuid.to_string();
    let task = if nova {
        let Some(api) = shared.nova.clone() else {
            let _ = shared.promises.release(&m.to, &m.guest).await;
            return Err("migration_backend = \"nova\" but no [nova] section".into());
        };
        let dest = dest_cfg
            .map(|h| h.nova_host.clone().unwrap_or_else(|| h.label()))
            .unwrap_or_else(|| m.to.clone());
        let t = mc.timeout.0;
        tokio::task::spawn_blocking(move || {
            api.live_migrate(&u, &dest, t)
                .map_err(|e| HvError::Other(e.to_string()))
        })
    } else {
        let (hv, tls) = (host.hv.clone(), mc.tls);
        tokio::task::spawn_blocking(move || hv.migrate(&u, &dest_uri, data_uri.as_deref(), tls))
    };
    host.moving = Some(InFlight {
        uuid: uuid.to_string(),
        m: m.clone(),
        proposal,
        deficit,
        needs,
        started: now,
        timeout,
        retry_after: mc.retry_after.as_secs_f64(),
        aborted_at: None,
        stuck_reported: false,
        task,
    });
    Ok(())
}

/// A move's call returned: the guest runs in one place. Keep the promise until the
/// destination counts the guest (moved), or release it and avoid that destination for a
/// while (not moved); report and audit either way.
#[allow(clippy::too_many_arguments)]
async fn settle(
    host: &mut Host,
    shared: &Shared,
    m: crate::rebalance::Move,
    proposal: Option<u64>,
    deficit: Bytes,
    needs: Bytes,
    retry_after: f64,
    r: Result<(), String>,
    now: f64,
) {
    match &r {
        Ok(()) => {
            // Keep the promise until the destination's own ticks count the guest.
            let until = shared.now() + 3.0 * shared.config.interval.as_secs_f64() + 2.0;
            if let Err(e) = shared.promises.extend(&m.to, &m.guest, until).await {
                tracing::warn!(to = %m.to, guest = %m.guest, error = %e, "cannot extend the promise");
            }
        }
        Err(_) => {
            host.count_error(shared, "migrate");
            if let Err(e) = shared.promises.release(&m.to, &m.guest).await {
                tracing::warn!(to = %m.to, guest = %m.guest, error = %e, "cannot release the promise; it lapses by itself");
            }
            host.failed_moves
                .push((m.guest.clone(), m.to.clone(), now + retry_after));
            // Try again soon, elsewhere.
            host.last_migration = f64::NEG_INFINITY;
        }
    }
    if let Some(id) = proposal {
        let (state, error) = match &r {
            Err(e) => ("failed", Some(e.clone())),
            Ok(()) => ("applied", None),
        };
        shared.finish_proposal(id, state, error);
    }
    record_migration(host, shared, &m, deficit, needs, now, false, outcome(r));
}

/// The metric, the log line and the audit record of one migration (or proposal).
#[allow(clippy::too_many_arguments)]
fn record_migration(
    host: &Host,
    shared: &Shared,
    m: &crate::rebalance::Move,
    deficit: Bytes,
    needs: Bytes,
    now: f64,
    propose: bool,
    result: String,
) {
    shared
        .metrics
        .migrations
        .with_label_values(&[
            &host.label,
            &m.to,
            result.split([':', ' ']).next().unwrap_or("failed"),
        ])
        .inc();
    if result.starts_with("failed") {
        tracing::error!(host = %host.label, guest = %m.guest, to = %m.to, result = %result, "migration failed; the guest stays here");
    } else if !propose {
        tracing::info!(host = %host.label, guest = %m.guest, to = %m.to, result = %result, "migration");
    }
    let reason = Reason::Event(EventReason::Migrate {
        to: m.to.clone(),
        deficit,
    });
    shared.audit.push(Record {
        time: now,
        host: host.label.clone(),
        guest: m.guest.clone(),
        policy: String::new(),
        generation: shared.policy_set().generation,
        kind: Kind::Hold,
        before: m.size,
        after: m.size,
        floor: Bytes(0),
        ceiling: Bytes(0),
        method: Some("migrate".into()),
        why: reason.to_string(),
        reason,
        inputs: Inputs {
            need: needs,
            predicted: needs,
            ..Inputs::default()
        },
        dry_run: propose,
        result,
        vcpus: None,
    });
}
