//! The daemon: one loop per host (so a slow host never delays another), policy reloads, and
//! the shared state the API and metrics read (the views they read live in `view`).

mod host;
pub mod openstack;
mod persist;

use crate::audit::Audit;
use crate::config::{Config, HostConfig};
use crate::hypervisor::Hypervisor;
use crate::metrics::Metrics;
use crate::policy::{self, Diag, PolicySet};
use crate::units::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub use crate::clock::epoch_now;
pub use crate::view::{GuestView, HostView, PolicyStatus, Proposal};

/// How often the planner memory is saved: every 5 s for a few guests, 5 ms more for each
/// guest, at most a minute (10 s at 1,000 guests). Writing the whole file costs about as much
/// as a tick at scale; a SIGKILL loses at most this much of the samples (pins and manual sizes
/// are saved when they change).
pub fn save_interval(guests: usize) -> std::time::Duration {
    std::time::Duration::from_millis((5_000 + 5 * guests as u64).min(60_000))
}

pub struct Shared {
    pub config: Config,
    /// The config file the daemon started from, and its settings as read then (before the
    /// command line's overrides): re-read on SIGHUP, edits to it that need a restart are told.
    pub config_file: Option<(std::path::PathBuf, Config)>,
    pub dry_run: bool,
    pub policies: RwLock<Arc<PolicySet>>,
    pub policy_status: RwLock<PolicyStatus>,
    pub audit: Audit,
    pub metrics: Metrics,
    pub hosts: RwLock<BTreeMap<String, HostView>>,
    pub started: f64,
    /// Operator requests from the API, taken by the host loops: pinned guests (by name) and
    /// manual sizes waiting to be applied.
    pub pins: RwLock<BTreeSet<String>>,
    pub adjusts: std::sync::Mutex<BTreeMap<String, Bytes>>,
    /// vCPU counts asked for through the API, by guest name, until a host loop takes them.
    pub vcpu_adjusts: std::sync::Mutex<BTreeMap<String, u32>>,
    /// Bearer token for mutating API calls (none: they are refused).
    pub api_token: Option<String>,
    /// When each host loop last came round (epoch seconds), for the watchdog.
    pub heartbeat: std::sync::Mutex<BTreeMap<String, f64>>,
    /// Set once every host has finished its first tick successfully.
    pub ready: watch::Sender<bool>,
    /// Memory promised to each host by migrations under way or just done (until its own tick
    /// counts the guest). Two sources never overfill one destination: in process, or through
    /// etcd when several daemons coordinate.
    pub promises: crate::coord::Promises,
    /// Migration settings: `[migration]` is applied again on SIGHUP.
    pub migration: RwLock<crate::config::MigrationConfig>,
    /// Migrations proposed (propose-only mode or dry run), waiting for an operator.
    pub proposals: std::sync::Mutex<Vec<Proposal>>,
    /// Planner memory restored from the state file, taken by the host loops as they meet
    /// each guest (by UUID).
    pub restored: std::sync::Mutex<BTreeMap<String, crate::state::GuestState>>,
    /// Each guest's planner memory as its host loop last captured it (by UUID).
    pub snapshots: std::sync::Mutex<BTreeMap<String, crate::state::GuestState>>,
    /// Sizes set by hand (by guest name), kept with the pins.
    pub manual: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Serialises writes of the state file.
    pub state_lock: std::sync::Mutex<()>,
    /// OpenStack Nova, for hosts that migrate through it.
    pub nova: Option<Arc<crate::nova::Nova>>,
    /// Live flavor envelopes: the flavors the guests name, as nova-api last said (issue 19).
    pub flavors: crate::liveflavor::FlavorCache,
    /// What memscale holds in Placement for each host, for status (by host label).
    pub placement: std::sync::Mutex<BTreeMap<String, crate::placement::HostPlacement>>,
    /// The etcd session when `[coordination]` is set.
    pub coord: Option<Arc<crate::coord::Coord>>,
    /// Where the loops read the time of day (the machine's clock, or a test's).
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl Shared {
    pub fn new(config: Config, policies: PolicySet, diags: &[Diag]) -> std::io::Result<Shared> {
        let audit = Audit::new(config.audit_ring, config.audit_log.clone())?;
        let metrics = Metrics::new();
        metrics.policy_generation.set(policies.generation as i64);
        let status = policy_status(&policies, diags, false);
        let migration = config.migration.clone();
        let flavor_ttl = config
            .nova
            .as_ref()
            .map(|n| n.flavor_ttl_seconds)
            .unwrap_or(0.0);
        let coord = config
            .coordination
            .clone()
            .map(|c| Arc::new(crate::coord::Coord::new(c)));
        Ok(Shared {
            config_file: None,
            dry_run: config.dry_run,
            config,
            policies: RwLock::new(Arc::new(policies)),
            policy_status: RwLock::new(status),
            audit,
            metrics,
            hosts: RwLock::new(BTreeMap::new()),
            started: epoch_now(),
            pins: RwLock::new(Default::default()),
            migration: RwLock::new(migration),
            nova: None,
            flavors: crate::liveflavor::FlavorCache::new(flavor_ttl),
            placement: std::sync::Mutex::new(BTreeMap::new()),
            restored: std::sync::Mutex::new(BTreeMap::new()),
            snapshots: std::sync::Mutex::new(BTreeMap::new()),
            manual: std::sync::Mutex::new(BTreeMap::new()),
            state_lock: std::sync::Mutex::new(()),
            proposals: std::sync::Mutex::new(Vec::new()),
            promises: match &coord {
                Some(c) => crate::coord::Promises::Etcd(c.clone()),
                None => crate::coord::Promises::Local(std::sync::Mutex::new(Vec::new())),
            },
            coord,
            adjusts: std::sync::Mutex::new(BTreeMap::new()),
            vcpu_adjusts: std::sync::Mutex::new(BTreeMap::new()),
            api_token: None,
            heartbeat: std::sync::Mutex::new(BTreeMap::new()),
            ready: watch::channel(false).0,
            clock: Arc::new(crate::clock::SystemClock),
        })
    }

    /// Seconds since the epoch, by the daemon's clock.
    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    /// The settings the guest controller needs, from the config.
    pub fn timing(&self) -> crate::control::Timing {
        crate::control::Timing {
            converge_timeout: self.config.converge_timeout.as_secs_f64(),
            unconverged_hold: self.config.unconverged_hold.as_secs_f64(),
            driver_grace: self.config.driver_grace.as_secs_f64(),
            stats_period: self.config.stats_period,
        }
    }

    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the policy directory; swap only a valid set. Returns whether it was taken.
    pub fn reload_policies(&self) -> bool {
        let current = self.policy_set();
        let (set, diags) = policy::load_dir(&self.config.policies, current.generation + 1);
        for d in &diags {
            tracing::warn!(diag = %d, "policy problem");
        }
        match set {
            Some(set) => {
                let generation = set.generation;
                let names: Vec<String> = set.policies.iter().map(|p| p.name.clone()).collect();
                *self
                    .policy_status
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = policy_status(&set, &diags, true);
                *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.policy_generation.set(generation as i64);
                tracing::info!(generation, policies = ?names, "policies reloaded");
                let guests =
                    crate::view::all_guests(&self.hosts.read().unwrap_or_else(|p| p.into_inner()));
                for p in &self.policy_set().policies {
                    if !guests.is_empty() && !guests.iter().any(|g| p.selector.matches(&g.labels()))
                    {
                        tracing::warn!(policy = %p.name, origin = %p.origin, "policy matches no known guest");
                    }
                }
                true
            }
            None => {
                let mut st = self
                    .policy_status
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                st.errors = diags
                    .iter()
                    .filter(|d| d.severity == policy::Severity::Error)
                    .map(|d| d.to_string())
                    .collect();
                st.last_reload = epoch_now();
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    generation = current.generation,
                    errors = st.errors.len(),
                    "policy reload refused: the previous set stays in force"
                );
                false
            }
        }
    }
}

/// Why an approval or a rejection was refused.
#[derive(Debug)]
pub enum ProposalError {
    Unknown(u64),
    NotOpen(u64, String),
    /// An approval while the daemon runs dry: it moves nothing, so nothing may be approved.
    DryRun(u64),
}

impl Shared {
    pub fn migration_config(&self) -> crate::config::MigrationConfig {
        self.migration
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn proposals_mut(&self) -> std::sync::MutexGuard<'_, Vec<Proposal>> {
        self.proposals.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn proposal_list(&self) -> Vec<Proposal> {
        self.proposals_mut().clone()
    }

    /// Record `m` as the proposed move off `from`. Returns the new proposal's id, or `None`
    /// when the same move is already proposed (it is only refreshed). A different open
    /// proposal from the same host is superseded.
    pub fn propose(
        &self,
        from: &str,
        m: &crate::rebalance::Move,
        deficit: Bytes,
        now: f64,
    ) -> Option<u64> {
        let mut ps = self.proposals_mut();
        for p in ps
            .iter_mut()
            .filter(|p| p.from == from && p.state == "proposed")
        {
            if p.guest == m.guest && p.to == m.to {
                p.last_seen = now;
                p.deficit = deficit;
                p.size = m.size;
                return None;
            }
            p.state = "superseded".into();
        }
        let id = ps.iter().map(|p| p.id).max().unwrap_or(0) + 1;
        ps.push(Proposal {
            id,
            from: from.to_string(),
            guest: m.guest.clone(),
            to: m.to.clone(),
            size: m.size,
            deficit,
            proposed_at: now,
            last_seen: now,
            state: "proposed".into(),
            error: None,
        });
        // Keep the list bounded: drop the oldest closed ones.
        while ps.len() > 200 {
            match ps.iter().position(|p| !p.open()) {
                Some(i) => {
                    ps.remove(i);
                }
                None => break,
            }
        }
        Some(id)
    }

    /// The approved proposal waiting to run off `from`, if any.
    pub fn approved_proposal(&self, from: &str) -> Option<Proposal> {
        self.proposals_mut()
            .iter()
            .find(|p| p.from == from && p.state == "approved")
            .cloned()
    }

    pub fn finish_proposal(&self, id: u64, state: &str, error: Option<String>) {
        if let Some(p) = self.proposals_mut().iter_mut().find(|p| p.id == id) {
            p.state = state.to_string();
            p.error = error;
        }
    }

    /// Every open proposal off `from` expires (the host is no longer short).
    pub fn close_proposals(&self, from: &str, why: &str) {
        for p in self
            .proposals_mut()
            .iter_mut()
            .filter(|p| p.from == from && p.open())
        {
            tracing::info!(id = p.id, host = from, guest = %p.guest, why, "proposal expired");
            p.state = "expired".into();
            p.error = Some(why.to_string());
        }
    }

    /// An operator approves (or rejects) a proposal. Only a proposal still proposed can be,
    /// and none approved under dry run (an approved one would be run: the dry run's proposals
    /// are for reading); it is then left as it was.
    pub fn decide_proposal(&self, id: u64, approve: bool) -> Result<Proposal, ProposalError> {
        let mut ps = self.proposals_mut();
        let p = ps
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(ProposalError::Unknown(id))?;
        if approve && self.dry_run {
            return Err(ProposalError::DryRun(id));
        }
        if p.state != "proposed" {
            return Err(ProposalError::NotOpen(id, p.state.clone()));
        }
        p.state = if approve { "approved" } else { "rejected" }.into();
        tracing::info!(id, host = %p.from, guest = %p.guest, to = %p.to, state = %p.state, "proposal decided by an operator");
        Ok(p.clone())
    }
}

impl Shared {
    /// On SIGHUP: `[migration]` is applied; for the rest of the config file, say which edited
    /// settings wait for a restart, so nobody believes they took effect.
    pub fn config_changes_needing_restart(&self) -> Vec<String> {
        let Some((path, started)) = &self.config_file else {
            return vec![];
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(d) => return d.iter().map(|d| d.to_string()).collect(),
        };
        {
            let mut live = self.migration.write().unwrap_or_else(|p| p.into_inner());
            if *live != new.migration {
                tracing::info!(old = ?*live, new = ?new.migration, "migration settings applied");
                *live = new.migration.clone();
            }
        }
        started
            .changes_needing_restart(&new)
            .into_iter()
            .map(|c| {
                format!(
                    "{}: {c}; it cannot change live: restart memscale to apply it",
                    path.display()
                )
            })
            .collect()
    }
}

fn policy_status(set: &PolicySet, diags: &[Diag], reload: bool) -> PolicyStatus {
    PolicyStatus {
        generation: set.generation,
        files: set.files.iter().map(|f| f.display().to_string()).collect(),
        policies: set.policies.iter().map(|p| p.name.clone()).collect(),
        errors: vec![],
        warnings: diags
            .iter()
            .filter(|d| d.severity == policy::Severity::Warning)
            .map(|d| d.to_string())
            .collect(),
        last_reload: if reload { epoch_now() } else { 0.0 },
        config_refused: Vec::new(),
    }
}

/// Run every host's loop until `shutdown` turns true.
pub async fn run(
    shared: Arc<Shared>,
    hosts: Vec<(HostConfig, Arc<dyn Hypervisor>)>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let n = hosts.len();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<(String, bool)>(n.max(1));
    for (cfg, hv) in hosts {
        let s = shared.clone();
        let sd = shutdown.clone();
        let tx = ready_tx.clone();
        tasks.spawn(async move { host::host_loop(s, cfg, hv, sd, tx).await });
    }
    drop(ready_tx);
    {
        // Save the guests' planner memory every few seconds (pins are saved when changed).
        let s = shared.clone();
        let mut sd = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let guests = s.snapshots.lock().unwrap_or_else(|p| p.into_inner()).len();
                tokio::select! {
                    _ = tokio::time::sleep(save_interval(guests)) => {}
                    _ = sd.changed() => {}
                }
                if *sd.borrow() {
                    break;
                }
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || s2.save_state()).await;
            }
        });
    }
    let s = shared.clone();
    tasks.spawn(async move {
        // Ready once every host has had its first tick: answered, or found unreachable.
        let mut seen = std::collections::BTreeMap::new();
        while let Some((h, ok)) = ready_rx.recv().await {
            seen.insert(h, ok);
            if seen.len() == n {
                let down: Vec<&str> = seen
                    .iter()
                    .filter(|(_, ok)| !**ok)
                    .map(|(h, _)| h.as_str())
                    .collect();
                let _ = s.ready.send(true);
                if down.is_empty() {
                    tracing::info!(hosts = n, "every host has completed a tick: ready");
                } else {
                    tracing::warn!(hosts = n, unreachable = ?down,
                        "ready, serving the hosts that answered; the others are retried with back-off and join when they answer");
                }
            }
        }
    });
    while tasks.join_next().await.is_some() {}
}
