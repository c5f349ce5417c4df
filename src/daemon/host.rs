//! One host's loop: one bulk stats call per tick, then a decision per guest, then actuation,
//! every libvirt call off the executor under a deadline so a hung host only stalls itself.

use super::guest::{Guest, Pending};
use super::{GuestView, HostView, Shared, epoch_now};
use crate::actuator::{self, Op};
use crate::audit::{Inputs, Record};
use crate::config::HostConfig;
use crate::domain::DomainSpec;
use crate::hypervisor::{GuestStats, HvError, HvEvent, Hypervisor};
use crate::planner::{Kind, Reason};
use crate::units::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod hotplug;

struct Host {
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
    /// Needs beyond capacity minus reserve at the last tick.
    deficit: Bytes,
    /// "No guest fits elsewhere" was logged for the current shortage.
    no_room_reported: bool,
    /// When the guests' planner memory was last captured for the state file.
    last_snapshot: f64,
    /// Since when the host has not been short (None: short now).
    holding_since: Option<f64>,
    /// The views published the tick before, to be filled again by the next publish.
    spare_views: Vec<GuestView>,
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

pub(super) async fn host_loop(
    shared: Arc<Shared>,
    cfg: HostConfig,
    hv: Arc<dyn Hypervisor>,
    mut shutdown: watch::Receiver<bool>,
    ready: mpsc::Sender<String>,
) {
    let label = cfg.label();
    let mut host = Host {
        label: label.clone(),
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
        deficit: Bytes(0),
        no_room_reported: false,
        last_snapshot: 0.0,
        holding_since: None,
        spare_views: Vec::new(),
    };
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
            .insert(label.clone(), epoch_now());
        let took = t0.elapsed();
        shared
            .metrics
            .loop_seconds
            .with_label_values(&[&label])
            .observe(took.as_secs_f64());
        shared.metrics.up.inc();
        if ok && !announced {
            announced = true;
            let _ = ready.send(label.clone()).await;
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

/// One tick for one host. Returns whether the host answered.
async fn tick(host: &mut Host, shared: &Shared) -> bool {
    if host.skip > 0 {
        host.skip -= 1;
        return false;
    }
    let deadline = shared.config.interval.0.max(Duration::from_secs(2));
    let stats = host.call("stats", deadline, |h| h.stats()).await;
    // After the stats call: a reconnect it made has registered its handlers already.
    take_events(host, shared);
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            host.count_error(shared, "stats");
            if host.connected || host.last_error.as_deref() != Some(&e.to_string()) {
                tracing::error!(host = %host.label, error = %e, "cannot read stats; holding this host's guests");
            }
            host.connected = false;
            host.last_error = Some(e.to_string());
            if e.is_connection() {
                host.backoff = (host.backoff * 2).clamp(1, 30);
                host.skip = host.backoff;
            }
            publish(host, shared, epoch_now());
            return false;
        }
    };
    if !host.connected {
        tracing::info!(host = %host.label, guests = stats.len(), "connected");
        // A reconnect may follow a libvirtd restart: re-read every definition.
        for g in host.guests.values_mut() {
            g.needs_xml = true;
            g.inactive_read = f64::NEG_INFINITY;
        }
    }
    host.connected = true;
    host.last_error = None;
    host.backoff = 0;
    if host.capacity.is_none() {
        host.capacity = match host.cfg.capacity {
            Some(c) => Some(c),
            None => host
                .call("node_info", deadline, |h| h.host_memory())
                .await
                .ok(),
        };
    }
    let now = epoch_now();
    let acting = acting_for(host, shared).await;
    let policies = shared.policy_set();
    let mut seen = Vec::with_capacity(stats.len());
    let mut todo = Vec::with_capacity(stats.len());
    for s in stats {
        seen.push(s.uuid.clone());
        let uuid = s.uuid.clone();
        let g = host.guests.entry(uuid.clone()).or_insert_with(|| {
            let mut g = Guest::new(&s.name, &uuid, now);
            let saved = shared
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uuid);
            match saved {
                Some(st) => {
                    let kept = g.restore(&st, s.current);
                    tracing::info!(host = %host.label, guest = %s.name, samples = kept, "guest known from saved state: planner memory restored");
                }
                None => tracing::info!(host = %host.label, guest = %s.name, "new guest"),
            }
            g
        });
        g.observe(s, now);
        let running = g
            .stats
            .as_ref()
            .is_some_and(|s| s.state == crate::hypervisor::RunState::Running);
        if g.needs_xml && running {
            refresh_definition(host, shared, &uuid, deadline).await;
        }
        let Some(g) = host.guests.get_mut(&uuid) else {
            continue;
        };
        let period_missing = g
            .spec
            .as_ref()
            .is_some_and(|s| s.balloon_device && s.stats_period.unwrap_or(0) == 0);
        if acting && running && period_missing && !g.period_set {
            g.period_set = true;
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
        todo.push(uuid);
    }
    // Decide for every guest first: a host that cannot give them all what they ask for is
    // shared (floors, then needs, then headroom, by shares) before anything moves.
    if !acting {
        // Watched only: keep every guest's history warm (a standby takes over with it) and
        // publish the host's committed memory for the movers, but change nothing.
        host.deficit = Bytes(0);
        forget_gone(host, shared, &seen);
        snapshot(host, shared, now);
        publish(host, shared, now);
        return true;
    }
    let mut plans = Vec::with_capacity(todo.len());
    for uuid in &todo {
        if let Some(p) = decide(host, shared, uuid, &policies, now) {
            plans.push(p);
        }
    }
    let needs = share_host(host, &mut plans);
    // Only a host that may migrate needs its movable guests named (a name clone a guest).
    let migrating = shared.migration_config().enabled;
    let candidates: Vec<(String, crate::rebalance::Candidate)> = plans
        .iter()
        .filter(|_| migrating)
        .filter(|p| {
            (p.decision.reason.is_planned()
                || matches!(p.decision.reason, Reason::HostShare { .. }))
                && host.guests.get(&p.uuid).is_some_and(|g| {
                    g.pending.is_none()
                        && !g.pinned
                        && g.stats
                            .as_ref()
                            .is_some_and(|s| s.state == crate::hypervisor::RunState::Running)
                })
        })
        .map(|p| {
            let name = g_name(host, &p.uuid);
            (
                p.uuid.clone(),
                crate::rebalance::Candidate {
                    name,
                    size: p.before,
                },
            )
        })
        .collect();
    for p in plans {
        act(host, shared, p, &policies, now, deadline).await;
    }
    hotplug::vcpu_adjusts(host, shared, now).await;
    hotplug::cpu_policy(host, shared, now, deadline).await;
    hotplug::check_online(host, shared, now, deadline).await;
    host.deficit = host
        .capacity
        .map(|cap| crate::rebalance::deficit(needs, cap, host.cfg.reserve))
        .unwrap_or_default();
    if migrating {
        rebalance(host, shared, needs, &candidates, now).await;
    }
    forget_gone(host, shared, &seen);
    snapshot(host, shared, now);
    publish(host, shared, now);
    true
}

/// What libvirt said since the last tick: a changed definition is re-read now rather than at
/// the next resize or after `INACTIVE_MAX_AGE`; a closed connection and the handlers'
/// registration (again after a reconnect) are logged.
fn take_events(host: &mut Host, shared: &Shared) {
    for e in host.hv.take_events() {
        shared
            .metrics
            .events
            .with_label_values(&[&host.label, e.label()])
            .inc();
        match e {
            HvEvent::Registered => {
                tracing::info!(host = %host.label, "registered for libvirt events")
            }
            HvEvent::Closed { reason } => {
                tracing::warn!(host = %host.label, reason, "libvirtd closed the connection")
            }
            HvEvent::Lifecycle { uuid, event } => {
                if let Some(g) = host.guests.get_mut(&uuid) {
                    tracing::debug!(host = %host.label, guest = %g.name, event, "lifecycle event");
                    if !matches!(event, "suspended" | "resumed") {
                        g.needs_xml = true;
                        g.inactive_read = f64::NEG_INFINITY;
                    }
                }
            }
            HvEvent::RemovalFailed { uuid, alias } => {
                hotplug::removal_failed(host, shared, &uuid, &alias, epoch_now());
            }
        }
    }
}

/// Capture each guest's planner memory for the state file, every few seconds.
fn snapshot(host: &mut Host, shared: &Shared, now: f64) {
    if now - host.last_snapshot < 4.0 {
        return;
    }
    host.last_snapshot = now;
    let mut snaps = shared.snapshots.lock().unwrap_or_else(|p| p.into_inner());
    for (uuid, g) in &host.guests {
        match snaps.get_mut(uuid) {
            Some(st) => g.capture_into(st),
            None => {
                snaps.insert(uuid.clone(), g.capture());
            }
        }
    }
}

fn forget_gone(host: &mut Host, shared: &Shared, seen: &[String]) {
    if seen.len() == host.guests.len() {
        // Every guest known was seen (the map is keyed by what was seen): nothing is gone.
        return;
    }
    let seen: std::collections::HashSet<&str> = seen.iter().map(String::as_str).collect();
    let gone: Vec<String> = host
        .guests
        .keys()
        .filter(|u| !seen.contains(u.as_str()))
        .cloned()
        .collect();
    for u in gone {
        if let Some(g) = host.guests.remove(&u) {
            tracing::info!(host = %host.label, guest = %g.name, "guest gone");
            shared
                .snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&u);
        }
    }
}

/// Whether this daemon acts for the host this tick: not for a host it only watches
/// (`manage = false`); with `[coordination]`, only while it holds the host's key in etcd. When
/// etcd cannot be asked but our lease is known to hold, our key holds too: keep acting.
async fn acting_for(host: &mut Host, shared: &Shared) -> bool {
    let (acting, standby) = if !host.cfg.manage {
        (false, Some("watched only (manage = false)".to_string()))
    } else if let Some(coord) = &shared.coord {
        match coord.own(&host.label).await {
            Ok(crate::coord::Owner::Me) => (true, None),
            Ok(crate::coord::Owner::Other(o)) => (false, Some(format!("{o} acts for it"))),
            Err(e) if host.acting && coord.live() => {
                tracing::warn!(host = %host.label, error = %e, "cannot confirm ownership; the lease still holds");
                (true, None)
            }
            Err(e) => (false, Some(e.to_string())),
        }
    } else {
        (true, None)
    };
    if acting != host.acting || (standby.is_some() && standby != host.standby) {
        if acting {
            tracing::info!(host = %host.label, "acting for this host");
        } else {
            tracing::info!(host = %host.label, why = standby.as_deref().unwrap_or(""), "not acting for this host");
        }
    }
    host.acting = acting;
    host.standby = standby;
    shared
        .metrics
        .host_acting
        .with_label_values(&[&host.label])
        .set(i64::from(acting));
    acting
}

fn g_name(host: &Host, uuid: &str) -> String {
    host.guests
        .get(uuid)
        .map(|g| g.name.clone())
        .unwrap_or_default()
}

async fn refresh_definition(host: &mut Host, shared: &Shared, uuid: &str, deadline: Duration) {
    let u = uuid.to_string();
    let now = epoch_now();
    let read_inactive = host
        .guests
        .get(uuid)
        .is_none_or(|g| now - g.inactive_read > super::guest::INACTIVE_MAX_AGE);
    let xmls = host
        .call("domain_xml", deadline, move |h| {
            let live = h.domain_xml(&u, false)?;
            // A transient guest has no persistent definition: its live one stands in.
            let inactive = if read_inactive {
                h.domain_xml(&u, true).ok()
            } else {
                None
            };
            Ok((live, inactive))
        })
        .await;
    let Some(g) = host.guests.get_mut(uuid) else {
        return;
    };
    match xmls {
        Ok((live, inactive)) => match DomainSpec::parse(&live) {
            Ok(spec) => {
                let inactive = if read_inactive {
                    g.inactive_read = now;
                    inactive.and_then(|x| DomainSpec::parse(&x).ok())
                } else {
                    g.inactive.take()
                };
                g.set_definition(spec, inactive, &shared.config.flavors);
                if let Ok(e) = &g.envelope {
                    tracing::debug!(host = %host.label, guest = %g.name, floor = %e.floor, ceiling = %e.ceiling, "envelope");
                }
            }
            Err(e) => {
                g.envelope = Err(e.to_string());
                g.limited = None;
                g.needs_xml = false;
            }
        },
        Err(e) => {
            shared
                .metrics
                .libvirt_errors
                .with_label_values(&[&host.label, "domain_xml"])
                .inc();
            tracing::warn!(host = %host.label, guest = %g.name, error = %e, "cannot read definition");
        }
    }
}

/// One guest's decision for this tick, before the host's share is applied.
struct Plan<'p> {
    uuid: String,
    policy: &'p crate::policy::Policy,
    decision: crate::planner::Decision,
    before: Bytes,
    env: Option<std::sync::Arc<crate::envelope::Envelope>>,
}

fn decide<'p>(
    host: &mut Host,
    shared: &Shared,
    uuid: &str,
    policies: &'p crate::policy::PolicySet,
    now: f64,
) -> Option<Plan<'p>> {
    let g = host.guests.get_mut(uuid)?;
    let policy = g.policy(policies);
    let before = g.current();
    g.pinned = shared
        .pins
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&g.name);
    let manual = shared
        .adjusts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&g.name);
    let mut decision = g.decide(now, policy, &shared.config);
    if let Some(requested) = manual {
        // The API checked the request against the envelope; the actuator checks it again.
        if g.pending.is_none() && requested != before {
            decision = crate::planner::Decision {
                kind: if requested > before {
                    Kind::Grow
                } else {
                    Kind::Shrink
                },
                target: requested,
                reason: Reason::Manual { requested },
                ..crate::planner::Decision::hold(before, Reason::Manual { requested })
            };
        }
    }
    let env = g.limited_envelope(policy);
    Some(Plan {
        uuid: uuid.to_string(),
        policy,
        decision,
        before,
        env,
    })
}

/// When what the running guests ask for does not fit the host's capacity minus its reserve,
/// cut the planned decisions to each guest's fair share (`fairshare::share`). Guests held for
/// other reasons (pinned, stale, resizing, manual) keep their size and count as fixed.
fn share_host(host: &Host, plans: &mut [Plan]) -> Bytes {
    let Some(cap) = host.capacity else {
        return Bytes(0);
    };
    let available = cap.saturating_sub(host.cfg.reserve);
    let mut claims = Vec::with_capacity(plans.len());
    let mut index = Vec::with_capacity(plans.len());
    for (k, p) in plans.iter().enumerate() {
        let Some(g) = host.guests.get(&p.uuid) else {
            continue;
        };
        let holds_memory = g.stats.as_ref().is_some_and(|s| {
            matches!(
                s.state,
                crate::hypervisor::RunState::Running | crate::hypervisor::RunState::Paused
            )
        });
        if !holds_memory {
            continue;
        }
        match &p.env {
            Some(env) if p.decision.reason.is_planned() && g.pending.is_none() => {
                let want = if p.decision.kind == Kind::Hold {
                    p.before
                } else {
                    p.decision.target
                };
                claims.push(crate::fairshare::Claim {
                    floor: env.floor,
                    need: p.decision.need + p.policy.knobs.min_free,
                    want,
                    shares: p.policy.knobs.shares,
                });
                index.push(Some(k));
            }
            _ => {
                let size = g
                    .pending
                    .as_ref()
                    .map(|x| x.target.max(p.before))
                    .unwrap_or(p.before);
                claims.push(crate::fairshare::Claim {
                    floor: size,
                    need: size,
                    want: size,
                    shares: 1,
                });
                index.push(None);
            }
        }
    }
    let needs = Bytes(
        claims
            .iter()
            .map(|c| c.need.max(c.floor).min(c.want.max(c.floor)).0)
            .sum(),
    );
    let wants: u64 = claims.iter().map(|c| c.want.max(c.floor).0).sum();
    if wants <= available.0 {
        return needs;
    }
    let grants = crate::fairshare::share(&claims, available);
    for ((c, granted), ix) in claims.iter().zip(grants).zip(index) {
        let Some(k) = ix else { continue };
        if granted >= c.want.max(c.floor) {
            continue;
        }
        let p = &mut plans[k];
        let Some(env) = &p.env else { continue };
        let t = env.realize_down(granted);
        p.decision.reason = Reason::HostShare {
            wanted: c.want,
            granted,
        };
        p.decision.target = t;
        p.decision.kind = if t > p.before {
            Kind::Grow
        } else if t < p.before {
            Kind::Shrink
        } else {
            Kind::Hold
        };
    }
    needs
}

/// When sharing cannot hold the guests' needs (floors and needs beyond capacity minus
/// reserve), move one guest to the host with the most room: the smallest that covers the
/// deficit (`rebalance::pick`). Rate-limited per host; a failed move leaves the guest where it
/// runs, is reported, and that destination is avoided for `retry_after`. In propose-only mode
/// (or dry run) the move is only proposed, until an operator approves it.
async fn rebalance(
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
        let (state, error) = match result.strip_prefix("failed: ") {
            Some(e) => ("failed", Some(e.to_string())),
            None => ("applied", None),
        };
        shared.finish_proposal(p.id, state, error);
        record_migration(host, shared, &m, deficit, needs, now, false, result);
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
    record_migration(host, shared, &m, deficit, needs, now, false, result);
}

/// Promise the room on the destination, then move the guest peer to peer. Returns the
/// result: "applied", or "failed: why" (the guest still runs here).
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
) -> String {
    let dest_cfg = shared.config.hosts.iter().find(|h| h.label() == m.to);
    let dest_uri = dest_cfg
        .map(|h| h.migration_uri.clone().unwrap_or_else(|| h.uri.clone()))
        .unwrap_or_default();
    let data_uri = dest_cfg.and_then(|h| h.migration_address.clone());
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
            return "failed: the destination's room was promised to another migration".into();
        }
        Err(e) => {
            tracing::warn!(host = %host.label, guest = %m.guest, to = %m.to, error = %e, "cannot promise room on the destination; no migration now");
            host.last_migration = f64::NEG_INFINITY;
            return format!("failed: cannot promise room on the destination: {e}");
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
            let until = epoch_now() + 3.0 * shared.config.interval.as_secs_f64() + 2.0;
            if let Err(e) = shared.promises.extend(&m.to, &m.guest, until).await {
                tracing::warn!(to = %m.to, guest = %m.guest, error = %e, "cannot extend the promise");
            }
            "applied".to_string()
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
            format!("failed: {e}")
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
    let reason = Reason::Migrate {
        to: m.to.clone(),
        deficit,
    };
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

async fn act(
    host: &mut Host,
    shared: &Shared,
    plan: Plan<'_>,
    policies: &crate::policy::PolicySet,
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
    let mut result = "held".to_string();
    let mut method = None;
    let Some(g) = host.guests.get(uuid) else {
        return;
    };
    if decision.kind != Kind::Hold {
        let parts = g.parts.clone();
        let dimms = g.spec.as_ref().map(|s| s.dimms.clone()).unwrap_or_default();
        if let Some(e) = &env {
            decision.target = actuator::step_target(e, &parts, decision.target);
        }
        match env
            .as_ref()
            .map(|e| actuator::ops(e, &parts, decision.target, &dimms))
        {
            Some(Ok(ops)) => {
                let m = actuator::method_label(&ops);
                method = Some(m.clone());
                if dry {
                    result = "dry-run".into();
                } else {
                    result = execute(host, shared, uuid, &ops, deadline, now).await;
                }
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
                    .with_label_values(&[dir, &m, result.split(':').next().unwrap_or("failed")])
                    .inc();
                if result == "applied" {
                    hotplug::expect_online(g, &ops, now);
                    shared
                        .metrics
                        .bytes_moved
                        .with_label_values(&[dir])
                        .inc_by(decision.target.delta(before).unsigned_abs() as u64);
                    g.pending = Some(Pending {
                        kind: decision.kind,
                        before,
                        target: decision.target,
                        since: now,
                        method: m,
                        available: g.stats.as_ref().and_then(|s| s.guest.usable),
                    });
                    match decision.kind {
                        Kind::Grow => g.history.last_grow = Some(now),
                        Kind::Shrink => g.history.last_shrink = Some(now),
                        Kind::Hold => {}
                    }
                } else if result != "dry-run" {
                    // The guest is where it was; re-read its definition before trying again.
                    g.needs_xml = true;
                }
            }
            Some(Err(e)) => {
                result = format!("failed: {e}");
                shared
                    .metrics
                    .resizes
                    .with_label_values(&["plan", "none", "failed"])
                    .inc();
            }
            None => result = "failed: no envelope".into(),
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
        let rec = Record {
            time: now,
            host: label.clone(),
            guest: g.name.clone(),
            policy: policy.name.clone(),
            generation: policies.generation,
            kind: decision.kind,
            before,
            after: decision.target,
            floor: env.as_ref().map(|e| e.floor).unwrap_or_default(),
            ceiling: env.as_ref().map(|e| e.ceiling).unwrap_or_default(),
            method: method.clone(),
            reason: decision.reason.clone(),
            why: why.clone(),
            inputs: g.audit_inputs(now, Some(&decision)),
            dry_run: dry,
            result: result.clone(),
            vcpus: None,
        };
        if decision.kind == Kind::Hold {
            tracing::info!(host = %label, guest = %g.name, size = %before, reason = %why, "hold");
        } else {
            tracing::info!(host = %label, guest = %g.name, before = %before, after = %decision.target,
                method = method.as_deref().unwrap_or("-"), reason = %why, result = %result, policy = %policy.name,
                "{}", if decision.kind == Kind::Grow { "grow" } else { "shrink" });
        }
        shared.audit.push(rec);
    }
    g.last_reason_label = decision.reason.label();
    // Transient holds (a resize landing, waiting for the first report after it) would hide
    // the decision that matters from status.
    let transient = decision.kind == Kind::Hold
        && matches!(
            decision.reason,
            Reason::ResizeInProgress | Reason::NoSamples
        )
        && g.last.is_some();
    if !transient {
        g.last = Some(decision);
    }
}

/// Run the operations in order; stop at the first failure.
async fn execute(
    host: &mut Host,
    shared: &Shared,
    uuid: &str,
    ops: &[Op],
    deadline: Duration,
    now: f64,
) -> String {
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
                    match op {
                        Op::Balloon { target } => g.parts.balloon = *target,
                        Op::VirtioMem { alias, requested } => {
                            let idx = g.envelope.as_ref().ok().and_then(|e| {
                                e.vmem
                                    .iter()
                                    .position(|s| s.alias.as_deref() == Some(alias))
                            });
                            if let Some(i) = idx
                                && let Some(p) = g.parts.vmem.get_mut(i)
                            {
                                *p = *requested;
                            }
                        }
                        Op::DimmAdd { .. } | Op::DimmRemove { .. } => {
                            hotplug::dimm_done(g, op, now)
                        }
                    }
                }
            }
            Err(e) => {
                host.count_error(shared, "resize");
                tracing::warn!(host = %host.label, guest = %g_name(host, uuid), op = ?op, error = %e, "resize failed; guest left where it is");
                return format!("failed: {e}");
            }
        }
    }
    "applied".into()
}

/// `to` becomes a copy of `from`, in the string it holds if it holds one.
fn set_text(to: &mut Option<String>, from: Option<&String>) {
    match (to, from) {
        (Some(t), Some(f)) => t.clone_from(f),
        (to, f) => *to = f.cloned(),
    }
}

/// Publish the host's view for the API and `/metrics`. The views are written into those of
/// the tick before last (`spare_views`), so their strings and vectors are reused rather than
/// allocated afresh for every guest every tick, and built in name order rather than sorted.
fn publish(host: &mut Host, shared: &Shared, now: f64) {
    let m = &shared.metrics;
    let policies = shared.policy_set();
    let mut spare = std::mem::take(&mut host.spare_views);
    let mut guests = Vec::with_capacity(host.guests.len());
    let mut committed = Bytes(0);
    let mut order: Vec<&mut super::guest::Guest> = host.guests.values_mut().collect();
    order.sort_unstable_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    for g in order {
        let pol = g.policy(&policies);
        let env = g.limited_envelope(pol).map(|e| (*e).clone());
        let st: Option<&GuestStats> = g.stats.as_ref();
        let nova = g.spec.as_ref().and_then(|s| s.nova.as_ref());
        let current = g.current();
        committed = committed
            + g.pending
                .as_ref()
                .map(|p| p.target.max(current))
                .unwrap_or(current);
        let target = g
            .pending
            .as_ref()
            .map(|p| p.target)
            .or(g.last.as_ref().map(|d| d.target))
            .unwrap_or(current);
        let total = st.and_then(|s| s.guest.total);
        let avail = st.and_then(|s| s.guest.usable);
        let used = match (total, avail) {
            (Some(t), Some(a)) => Some(t.saturating_sub(a.min(t))),
            _ => None,
        };
        let mut view = spare.pop().unwrap_or_else(GuestView::blank);
        view.name.clone_from(&g.name);
        view.uuid.clone_from(&g.uuid);
        view.host.clone_from(&host.label);
        view.state = g.health;
        view.current = current;
        view.target = target;
        view.can_grow = env.as_ref().is_some_and(|e| e.can_grow(current));
        match &env {
            Some(e) => view.notes.clone_from(&e.notes),
            None => view.notes.clear(),
        }
        view.envelope = env;
        set_text(&mut view.envelope_error, g.envelope.as_ref().err());
        view.policy.clone_from(&pol.name);
        view.total = total;
        view.available = avail;
        view.free = st.and_then(|s| s.guest.unused);
        view.caches = st.and_then(|s| s.guest.disk_caches);
        view.used = used;
        view.stats_age_seconds = g.stats_age(now);
        view.rss = st.and_then(|s| s.rss);
        view.pinned = g.pinned;
        match (&mut view.why, &g.last) {
            (Some(w), Some(d)) => {
                use std::fmt::Write;
                w.clear();
                let _ = write!(w, "{}", d.reason);
            }
            (w, d) => *w = d.as_ref().map(|d| d.reason.to_string()),
        }
        view.last_decision.clone_from(&g.last);
        view.bad_stats = g.hostile;
        view.rss_capped = g.rss_capped;
        set_text(&mut view.flavor, nova.and_then(|n| n.flavor_name.as_ref()));
        set_text(&mut view.project, nova.and_then(|n| n.project.as_ref()));
        match g.spec.as_ref() {
            Some(s) => view.tags.clone_from(&s.tags),
            None => view.tags.clear(),
        }
        view.vcpus = g
            .spec
            .as_ref()
            .map(|s| crate::envelope::Vcpus::from_spec(s, g.inactive.as_ref()));
        guests.push(view);
    }
    let capacity = host.capacity.unwrap_or_default();
    let hb = |k: &str, v: Bytes| {
        m.host_bytes
            .with_label_values(&[&host.label, k])
            .set(v.0 as f64)
    };
    hb("capacity", capacity);
    hb("reserve", host.cfg.reserve);
    hb("committed", committed);
    hb("deficit", host.deficit);
    hb(
        "free",
        capacity
            .saturating_sub(host.cfg.reserve)
            .saturating_sub(committed),
    );
    let view = HostView {
        name: host.label.clone(),
        uri: host.cfg.uri.clone(),
        connected: host.connected,
        last_error: host.last_error.clone(),
        capacity,
        reserve: host.cfg.reserve,
        committed,
        deficit: host.deficit,
        acting: host.acting,
        standby: host.standby.clone(),
        last_tick: now,
        guests,
    };
    let previous = shared
        .hosts
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(host.label.clone(), view);
    // Dropped outside the lock; its views are the next publish's to fill.
    host.spare_views = previous.map(|v| v.guests).unwrap_or_default();
}
