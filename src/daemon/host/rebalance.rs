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
    let mc = shared.migration_config();
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
        let result = migrate_one(host, shared, &mc, &m, &uuid, &rooms, deficit, now).await;
        let (state, error) = match &result {
            Err(e) => ("failed", Some(e.clone())),
            Ok(()) => ("applied", None),
        };
        shared.finish_proposal(p.id, state, error);
        record_migration(
            host,
            shared,
            &m,
            deficit,
            needs,
            now,
            false,
            outcome(result),
        );
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
    let result = migrate_one(host, shared, &mc, &m, &uuid, &rooms, deficit, now).await;
    record_migration(
        host,
        shared,
        &m,
        deficit,
        needs,
        now,
        false,
        outcome(result),
    );
}

/// Promise the room on the destination, then move the guest peer to peer. An error says
/// why it did not move (the guest still runs here).
#[allow(clippy::too_many_arguments)]
async fn migrate_one(
    host: &mut Host,
    shared: &Shared,
    mc: &crate::config::MigrationConfig,
    m: &crate::rebalance::Move,
    uuid: &str,
    rooms: &[(String, Bytes)],
    deficit: Bytes,
    now: f64,
) -> Result<(), String> {
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
    let promise = crate::coord::Arrival {
        to: m.to.clone(),
        guest: m.guest.clone(),
        from: host.label.clone(),
        size: m.size,
        until: now + mc.timeout.as_secs_f64() + 10.0,
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
    let outcome = if nova {
        match shared.nova.clone() {
            Some(api) => {
                let dest = dest_cfg
                    .map(|h| h.nova_host.clone().unwrap_or_else(|| h.label()))
                    .unwrap_or_else(|| m.to.clone());
                let timeout = mc.timeout.0;
                let task =
                    tokio::task::spawn_blocking(move || api.live_migrate(&u, &dest, timeout));
                match tokio::time::timeout(timeout + Duration::from_secs(30), task).await {
                    Ok(Ok(r)) => r.map_err(|e| HvError::Other(e.to_string())),
                    Ok(Err(e)) => Err(HvError::Other(format!("nova: {e}"))),
                    Err(_) => Err(HvError::Other(format!(
                        "nova: no answer within {timeout:?}"
                    ))),
                }
            }
            None => Err(HvError::Other(
                "migration_backend = \"nova\" but no [nova] section".into(),
            )),
        }
    } else {
        let (d, a) = (dest_uri, data_uri);
        host.call("migrate", mc.timeout.0, move |h| {
            h.migrate(&u, &d, a.as_deref())
        })
        .await
    };
    match outcome {
        Ok(()) => {
            // Keep the promise until the destination's own ticks count the guest.
            let until = shared.now() + 3.0 * shared.config.interval.as_secs_f64() + 2.0;
            if let Err(e) = shared.promises.extend(&m.to, &m.guest, until).await {
                tracing::warn!(to = %m.to, guest = %m.guest, error = %e, "cannot extend the promise");
            }
            Ok(())
        }
        Err(e) => {
            host.count_error(shared, "migrate");
            if let Err(e) = shared.promises.release(&m.to, &m.guest).await {
                tracing::warn!(to = %m.to, guest = %m.guest, error = %e, "cannot release the promise; it lapses by itself");
            }
            host.failed_moves.push((
                m.guest.clone(),
                m.to.clone(),
                now + mc.retry_after.as_secs_f64(),
            ));
            // Try again soon, elsewhere.
            host.last_migration = f64::NEG_INFINITY;
            Err(e.to_string())
        }
    }
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
            total: None,
            available: None,
            free: None,
            caches: None,
            stats_age_seconds: None,
            need: needs,
            predicted: needs,
            headroom: Bytes(0),
        },
        dry_run: propose,
        result,
        vcpus: None,
    });
}
