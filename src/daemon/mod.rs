//! The daemon: one loop per host (so a slow host never delays another), policy reloads, and
//! the shared state the API and metrics read.

pub mod guest;
mod host;

use crate::audit::Audit;
use crate::config::{Config, HostConfig};
use crate::envelope::{Envelope, Note};
use crate::hypervisor::Hypervisor;
use crate::metrics::Metrics;
use crate::planner::Decision;
use crate::policy::{self, Diag, PolicySet};
use crate::units::Bytes;
use guest::Health;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A guest as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestView {
    pub name: String,
    pub uuid: String,
    pub host: String,
    pub state: Health,
    pub current: Bytes,
    pub target: Bytes,
    pub envelope: Option<Envelope>,
    pub envelope_error: Option<String>,
    pub can_grow: bool,
    pub notes: Vec<Note>,
    pub policy: String,
    pub total: Option<Bytes>,
    pub available: Option<Bytes>,
    pub free: Option<Bytes>,
    pub caches: Option<Bytes>,
    pub used: Option<Bytes>,
    pub stats_age_seconds: Option<f64>,
    pub rss: Option<Bytes>,
    pub pinned: bool,
    pub last_decision: Option<Decision>,
    pub why: Option<String>,
    pub bad_stats: u64,
    pub flavor: Option<String>,
    pub project: Option<String>,
    pub tags: Vec<String>,
}

impl GuestView {
    pub fn labels(&self) -> policy::GuestLabels<'_> {
        policy::GuestLabels {
            name: &self.name,
            flavor: self.flavor.as_deref(),
            project: self.project.as_deref(),
            tags: &self.tags,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct HostView {
    pub name: String,
    pub uri: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub capacity: Bytes,
    pub reserve: Bytes,
    pub committed: Bytes,
    pub last_tick: f64,
    pub guests: Vec<GuestView>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PolicyStatus {
    pub generation: u64,
    pub files: Vec<String>,
    pub policies: Vec<String>,
    /// The last reload's problems while they are not fixed (the previous set stays in force).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub last_reload: f64,
    /// Config file edits seen on SIGHUP that only a restart applies.
    pub config_refused: Vec<String>,
}

pub struct Shared {
    pub config: Config,
    /// The config file the daemon started from, re-read on SIGHUP to report edits that need
    /// a restart.
    pub config_path: Option<std::path::PathBuf>,
    pub dry_run: bool,
    pub policies: RwLock<Arc<PolicySet>>,
    pub policy_status: RwLock<PolicyStatus>,
    pub audit: Audit,
    pub metrics: Metrics,
    pub hosts: RwLock<BTreeMap<String, HostView>>,
    pub started: f64,
    /// Operator requests from the API, taken by the host loops: pinned guests (by name) and
    /// manual sizes waiting to be applied.
    pub pins: RwLock<std::collections::BTreeSet<String>>,
    pub adjusts: std::sync::Mutex<BTreeMap<String, Bytes>>,
    /// Bearer token for mutating API calls (none: they are refused).
    pub api_token: Option<String>,
    /// When each host loop last came round (epoch seconds), for the watchdog.
    pub heartbeat: std::sync::Mutex<BTreeMap<String, f64>>,
    /// Set once every host has finished its first tick successfully.
    pub ready: watch::Sender<bool>,
    /// Memory promised to each host by migrations under way or just done (until its own tick
    /// counts the guest): (host, bytes, until). Two sources never overfill one destination.
    pub arrivals: std::sync::Mutex<Vec<(String, Bytes, f64)>>,
}

impl Shared {
    pub fn new(config: Config, policies: PolicySet, diags: &[Diag]) -> std::io::Result<Shared> {
        let audit = Audit::new(config.audit_ring, config.audit_log.clone())?;
        let metrics = Metrics::new();
        metrics.policy_generation.set(policies.generation as i64);
        let status = policy_status(&policies, diags, false);
        Ok(Shared {
            config_path: None,
            dry_run: config.dry_run,
            config,
            policies: RwLock::new(Arc::new(policies)),
            policy_status: RwLock::new(status),
            audit,
            metrics,
            hosts: RwLock::new(BTreeMap::new()),
            started: epoch_now(),
            pins: RwLock::new(Default::default()),
            arrivals: std::sync::Mutex::new(Vec::new()),
            adjusts: std::sync::Mutex::new(BTreeMap::new()),
            api_token: None,
            heartbeat: std::sync::Mutex::new(BTreeMap::new()),
            ready: watch::channel(false).0,
        })
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
                let guests = crate::api::all_guests(self);
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

impl Shared {
    /// On SIGHUP: the config file is not reloaded live. Say which edited settings wait for a
    /// restart, so nobody believes they took effect.
    pub fn config_changes_needing_restart(&self) -> Vec<String> {
        let Some(path) = &self.config_path else {
            return vec![];
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(d) => return d.iter().map(|d| d.to_string()).collect(),
        };
        let old = &self.config;
        let mut out = Vec::new();
        let mut diff = |name: &str, changed: bool| {
            if changed {
                out.push(format!(
                    "{}: {name} changed; it cannot change live: restart memscale to apply it",
                    path.display()
                ));
            }
        };
        diff("hosts", new.hosts != old.hosts);
        diff("interval", new.interval != old.interval);
        diff("stats_period", new.stats_period != old.stats_period);
        diff("policies", new.policies != old.policies);
        diff("listen", new.listen != old.listen);
        diff("dry_run", new.dry_run != old.dry_run);
        diff("audit_log", new.audit_log != old.audit_log);
        diff("audit_ring", new.audit_ring != old.audit_ring);
        diff(
            "converge_timeout",
            new.converge_timeout != old.converge_timeout,
        );
        diff(
            "unconverged_hold",
            new.unconverged_hold != old.unconverged_hold,
        );
        diff("driver_grace", new.driver_grace != old.driver_grace);
        diff("flavors", new.flavors != old.flavors);
        out
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
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<String>(n.max(1));
    for (cfg, hv) in hosts {
        let s = shared.clone();
        let sd = shutdown.clone();
        let tx = ready_tx.clone();
        tasks.spawn(async move { host::host_loop(s, cfg, hv, sd, tx).await });
    }
    drop(ready_tx);
    let s = shared.clone();
    tasks.spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some(h) = ready_rx.recv().await {
            seen.insert(h);
            if seen.len() == n {
                let _ = s.ready.send(true);
                tracing::info!(hosts = n, "every host has completed a tick: ready");
            }
        }
    });
    while tasks.join_next().await.is_some() {}
}
