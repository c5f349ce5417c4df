//! One host's loop. Each tick runs the stages in order, each in its own module:
//!
//! 1. [`collect`]: one bulk stats call and libvirt's events in, each guest's controller
//!    updated with what it reported (definitions re-read as needed); never resizes.
//! 2. [`plan`]: a decision per guest from its controller (pure), then the host shared
//!    when the guests ask for more than it has.
//! 3. [`act`]: decisions become balloon, virtio-mem and DIMM operations; their typed
//!    outcomes go back to the controller and the audit (vCPUs and onlining: [`hotplug`]).
//! 4. [`rebalance`]: when sharing cannot hold the guests' needs, one guest is moved.
//! 5. [`publish`]: the views the API and `/metrics` read, and the state file's snapshots.
//!
//! Every libvirt call runs off the executor under a deadline, so a hung host only stalls
//! itself. The loop reads the time from the daemon's clock and the host through the
//! [`Hypervisor`] trait, so it runs in process against `crate::model` in tests.

use super::{GuestView, Shared};
use crate::config::HostConfig;
use crate::control::Guest;
use crate::hypervisor::{HvError, Hypervisor};
use crate::units::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod act;
mod collect;
mod hotplug;
mod plan;
mod publish;
mod rebalance;
#[cfg(test)]
mod tests;

pub(super) struct Host {
    cfg: HostConfig,
    label: String,
    hv: Arc<dyn Hypervisor>,
    busy: Arc<AtomicBool>,
    guests: HashMap<String, Guest>,
    connected: bool,
    last_error: Option<String>,
    capacity: Option<Bytes>,
    /// Ticks to skip while reconnecting (exponential back-off).
    backoff: u32,
    skip: u32,
    /// When a guest last left this host by migration (or was proposed to).
    last_migration: f64,
    /// (guest, destination, until): a move that failed is not retried there before `until`.
    failed_moves: Vec<(String, String, f64)>,
    /// Whether this daemon acts for the host now, and if not, why.
    acting: bool,
    standby: Option<String>,
    /// With etcd: this daemon held the host's key the last time etcd answered.
    held: bool,
    /// The lease is lost but the host was ours: its guests are only grown (see [`Role`]).
    grow_only: bool,
    /// Needs beyond capacity minus reserve at the last tick.
    deficit: Bytes,
    /// What the guests, held at their use, hold beyond capacity minus reserve (sharing).
    over_capacity: Bytes,
    /// The host machine's own memory figures at the last tick (None: not given).
    node: Option<crate::hypervisor::NodeMemory>,
    /// The machine was out of memory by its own figures at the last tick.
    machine_short: bool,
    /// "Cannot read the host's memory statistics" was logged since they last came.
    node_warned: bool,
    /// Whether the machine being out of memory, and the host over capacity, were said.
    machine_short_reported: bool,
    over_reported: bool,
    /// Since when the guests fit again after being over capacity.
    over_fits_since: Option<f64>,
    /// "No guest fits elsewhere" was logged for the current shortage.
    no_room_reported: bool,
    /// When the guests' planner memory was last captured for the state file.
    last_snapshot: f64,
    /// Since when the host has not been short (None: short now).
    holding_since: Option<f64>,
    /// The views published the tick before, to be filled again by the next publish.
    spare_views: Vec<GuestView>,
    /// A live migration running outside the tick, followed each tick until it ends.
    moving: Option<rebalance::InFlight>,
}

/// Seconds a host must hold its guests before its migration proposals expire.
const PROPOSAL_GRACE: f64 = 15.0;

impl Host {
    /// Run one libvirt call off the executor, within `deadline`. A call still running from an
    /// earlier tick makes the host "busy" rather than piling up threads.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        deadline: Duration,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(HvError::Other(format!(
                "{what}: an earlier call to this host has not returned"
            )));
        }
        let hv = self.hv.clone();
        let busy = self.busy.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = f(&*hv);
            busy.store(false, Ordering::SeqCst);
            r
        });
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(HvError::Other(format!("{what}: {e}"))),
            Err(_) => Err(HvError::Other(format!(
                "{what}: no answer within {deadline:?}"
            ))),
        }
    }

    fn count_error(&self, shared: &Shared, call: &str) {
        shared
            .metrics
            .libvirt_errors
            .with_label_values(&[&self.label, call])
            .inc();
    }
}

impl Host {
    pub(super) fn new(cfg: HostConfig, hv: Arc<dyn Hypervisor>) -> Host {
        Host {
            label: cfg.label(),
            cfg,
            hv,
            busy: Arc::new(AtomicBool::new(false)),
            guests: HashMap::new(),
            connected: false,
            last_error: None,
            capacity: None,
            backoff: 0,
            skip: 0,
            last_migration: f64::NEG_INFINITY,
            failed_moves: Vec::new(),
            acting: false,
            standby: None,
            held: false,
            grow_only: false,
            deficit: Bytes(0),
            over_capacity: Bytes(0),
            node: None,
            machine_short: false,
            node_warned: false,
            machine_short_reported: false,
            over_reported: false,
            over_fits_since: None,
            no_room_reported: false,
            last_snapshot: 0.0,
            holding_since: None,
            spare_views: Vec::new(),
            moving: None,
        }
    }
}

pub(super) async fn host_loop(
    shared: Arc<Shared>,
    cfg: HostConfig,
    hv: Arc<dyn Hypervisor>,
    mut shutdown: watch::Receiver<bool>,
    ready: mpsc::Sender<(String, bool)>,
) {
    let label = cfg.label();
    let mut host = Host::new(cfg, hv);
    let interval = shared.config.interval.0;
    let mut next = tokio::time::Instant::now();
    let mut announced = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let t0 = Instant::now();
        let ok = tick(&mut host, &shared).await;
        shared
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.clone(), shared.now());
        let took = t0.elapsed();
        shared
            .metrics
            .loop_seconds
            .with_label_values(&[&label])
            .observe(took.as_secs_f64());
        shared.metrics.up.inc();
        if !announced {
            // The first tick is over, whether the host answered or not: a host that cannot be
            // reached must not keep the daemon from serving the others (it is retried with
            // back-off, and joins when it answers).
            announced = true;
            let _ = ready.send((label.clone(), ok)).await;
        }
        next += interval;
        let now = tokio::time::Instant::now();
        if now > next {
            shared.metrics.overruns.with_label_values(&[&label]).inc();
            tracing::warn!(host = %label, took_ms = took.as_millis() as u64, "tick overran the interval");
            next = now + interval;
        }
    }
    tracing::info!(host = %label, "host loop stopped");
}

/// One tick for one host, its stages in order: collect (stats and events in, observations
/// out), plan (a decision per guest, then the host shared), act (decisions become libvirt
/// operations), rebalance (a guest moved when sharing cannot hold the needs), then publish.
/// Returns whether the host answered.
pub(super) async fn tick(host: &mut Host, shared: &Shared) -> bool {
    if host.skip > 0 {
        host.skip -= 1;
        return false;
    }
    let deadline = shared.config.interval.0.max(Duration::from_secs(2));
    let Some(seen) = collect::collect(host, shared, deadline).await else {
        publish::publish(host, shared, shared.now());
        return false;
    };
    let now = shared.now();
    let role = acting_for(host, shared).await;
    if role == Role::Watch {
        // Watched only: keep every guest's history warm (a standby takes over with it) and
        // publish the host's committed memory for the movers, but change nothing.
        host.deficit = Bytes(0);
        host.over_capacity = Bytes(0);
        // A move this daemon started before it stopped acting is still its to follow (and
        // to abort past its timeout): its call runs in this daemon, whoever acts now.
        rebalance::follow(host, shared, now).await;
        publish::finish(host, shared, &seen, now);
        return true;
    }
    act::set_stats_periods(host, shared, deadline).await;
    let policies = shared.policy_set();
    let mut plans = plan::decide(host, shared, &seen, &policies, now);
    // Decide for every guest first: a host that cannot give them all what they ask for is
    // shared (floors, then needs, then headroom, by shares) before anything moves.
    let needs = plan::share(host, &mut plans);
    plan::report_over(host, shared, now);
    let grow_only = role == Role::GrowOnly;
    if grow_only {
        plan::grow_only(host, shared, &mut plans);
    }
    let migrating = !grow_only && shared.migration_config().enabled;
    let candidates = if migrating {
        plan::movable(host, &plans)
    } else {
        Vec::new()
    };
    for p in plans {
        act::act(host, shared, p, &policies, now, deadline).await;
    }
    if !grow_only {
        hotplug::vcpu_adjusts(host, shared, now).await;
        hotplug::cpu_policy(host, shared, now, deadline).await;
    }
    hotplug::check_online(host, shared, now, deadline).await;
    host.deficit = host
        .capacity
        .map(|cap| crate::rebalance::deficit(needs, cap, host.cfg.reserve))
        .unwrap_or_default();
    if migrating || host.moving.is_some() {
        rebalance::rebalance(host, shared, needs, &candidates, now).await;
    }
    publish::finish(host, shared, &seen, now);
    true
}

/// What this daemon does for a host this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Resize its guests, move them away.
    Act,
    /// The etcd lease is lost (etcd unreachable for longer than `ttl`) and this daemon held
    /// the host last: its guests are grown toward their need into the host's free memory, and
    /// nothing shrinks or moves until the lease is back. A guest must not run out of memory
    /// because a coordination service is down; a shrink or a move could collide with a
    /// daemon that took the host over meanwhile, a growth into free memory cannot take
    /// memory from anyone.
    GrowOnly,
    /// Watch only: collect, publish, change nothing.
    Watch,
}

/// What this daemon does for the host this tick: nothing for a host it only watches
/// (`manage = false`); with `[coordination]`, act only while it holds the host's key in etcd.
/// When etcd cannot be asked but our lease is known to hold, our key holds too: keep acting.
/// When the lease is lost on a host we held last, only grow (see [`Role::GrowOnly`]).
async fn acting_for(host: &mut Host, shared: &Shared) -> Role {
    let (role, standby) = if !host.cfg.manage {
        (
            Role::Watch,
            Some("watched only (manage = false)".to_string()),
        )
    } else if let Some(coord) = &shared.coord {
        match coord.own(&host.label).await {
            Ok(crate::coord::Owner::Me) => {
                host.held = true;
                (Role::Act, None)
            }
            Ok(crate::coord::Owner::Other(o)) => {
                host.held = false;
                (Role::Watch, Some(format!("{o} acts for it")))
            }
            Err(e) if host.acting && coord.live() => {
                tracing::warn!(host = %host.label, error = %e, "cannot confirm ownership; the lease still holds");
                (Role::Act, None)
            }
            Err(e) if host.held => (
                Role::GrowOnly,
                Some(format!(
                    "{e}; held by this daemon last: growing guests into free memory only, no shrink or move until the lease is back"
                )),
            ),
            Err(e) => (Role::Watch, Some(e.to_string())),
        }
    } else {
        (Role::Act, None)
    };
    let acting = role == Role::Act;
    let grow_only = role == Role::GrowOnly;
    let why = standby.as_deref().unwrap_or("");
    if grow_only && !host.grow_only {
        tracing::warn!(host = %host.label, why, "etcd lease lost: growing this host's guests toward their need into free memory only; no shrink or move until the lease is back");
    } else if acting != host.acting
        || grow_only != host.grow_only
        || (standby.is_some() && standby != host.standby && !grow_only)
    {
        if acting {
            tracing::info!(host = %host.label, "acting for this host");
        } else if !grow_only {
            tracing::info!(host = %host.label, why, "not acting for this host");
        }
    }
    host.acting = acting;
    host.grow_only = grow_only;
    host.standby = standby;
    shared
        .metrics
        .host_acting
        .with_label_values(&[&host.label])
        .set(i64::from(acting));
    shared
        .metrics
        .host_grow_only
        .with_label_values(&[&host.label])
        .set(i64::from(grow_only));
    role
}

fn g_name(host: &Host, uuid: &str) -> String {
    host.guests
        .get(uuid)
        .map(|g| g.name.clone())
        .unwrap_or_default()
}
