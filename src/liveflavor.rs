//! Live flavor envelopes (issue 19): with `[nova]` configured, a Nova guest's envelope comes
//! from its flavor as nova-api has it now, not from the copy Nova wrote into the domain's
//! metadata at boot. An operator who raises `hw:mem_max_mb` on a flavor sees every running
//! instance of it get the new ceiling within `flavor_ttl_seconds`, without a restart.
//!
//! The control loop never waits on HTTP: it reads this cache (one short lock) when it reads a
//! guest's definition, and re-reads the definition when the cache's generation for that
//! flavor moves. A task of its own ([`run`]) fetches the flavors the guests name: by id when
//! the metadata carries one (`<nova:flavor id=…>`, Nova 32 and later), else by name through
//! `GET /flavors/detail` (Zed writes only the name). When nova-api cannot be reached, the
//! flavor is gone or one of its specs is malformed, the domain metadata is used and status
//! says so (with the named error), with one warning per episode.

use crate::domain::NovaMeta;
use crate::nova::{Nova, NovaError, Service, path_segment};
use crate::units::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Compute API microversion for flavor reads: 2.61 shows a flavor's extra specs inline.
pub const FLAVOR_MICROVERSION: &str = "compute 2.61";

/// Extra specs whose values must be whole numbers for the envelope to use them.
pub const NUMERIC_SPECS: [&str; 5] = [
    "hw:mem_max_mb",
    "hw:cpu_max_sockets",
    "hw:cpu_max_cores",
    "hw:cpu_max_threads",
    "hw:numa_nodes",
];

/// A flavor as nova-api has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFlavor {
    pub id: String,
    pub name: String,
    pub ram: Bytes,
    pub vcpus: u32,
    pub extra_specs: BTreeMap<String, String>,
}

/// Why a guest's envelope comes from its domain metadata rather than nova-api.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlavorError {
    #[error("nova-api cannot be reached: {0}")]
    Unreachable(String),
    #[error("flavor {0} is not in nova-api (deleted, or not visible to memscale's user)")]
    Gone(String),
    #[error("flavor {flavor}: extra spec {key} = {value:?} is not a whole number")]
    BadSpec {
        flavor: String,
        key: String,
        value: String,
    },
    #[error("flavor {flavor}: nova-api's answer cannot be read: {why}")]
    BadAnswer { flavor: String, why: String },
}

impl FlavorError {
    /// The error's name in status, logs, metrics and the docs' troubleshooting.
    pub fn name(&self) -> &'static str {
        match self {
            FlavorError::Unreachable(_) => "nova_unreachable",
            FlavorError::Gone(_) => "flavor_gone",
            FlavorError::BadSpec { .. } => "bad_flavor_spec",
            FlavorError::BadAnswer { .. } => "bad_flavor_answer",
        }
    }
}

pub use crate::envelope::{DOMAIN_METADATA, NOVA_API, Origin as EnvelopeOrigin};

/// The cache key of the flavor a guest's metadata names: its id if it carries one.
pub fn key_of(nova: &NovaMeta) -> Option<String> {
    match (&nova.flavor_id, &nova.flavor_name) {
        (Some(id), _) if !id.is_empty() => Some(format!("id:{id}")),
        (_, Some(n)) if !n.is_empty() => Some(format!("name:{n}")),
        _ => None,
    }
}

#[derive(Debug)]
struct Entry {
    state: Option<Result<LiveFlavor, FlavorError>>,
    fetched_at: f64,
    /// When the source last changed (or the entry was made).
    since: f64,
    used_at: f64,
    generation: u64,
}

/// What a fetch changed, for the log: one line per change of source or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Back to (or first on) nova-api.
    Live,
    /// The spec values changed while on nova-api.
    Changed,
    /// To the domain metadata, or a different reason for it.
    Fallback(FlavorError),
    Unchanged,
}

/// The flavors the guests name and what nova-api last said of each.
pub struct FlavorCache {
    ttl: f64,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl FlavorCache {
    /// `ttl` seconds (0 or less: live flavors are off and nothing is ever fetched).
    pub fn new(ttl: f64) -> FlavorCache {
        FlavorCache {
            ttl,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.ttl > 0.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the control loop (never waits on HTTP): put the live flavor over the metadata of a
    /// guest, when nova-api has answered for it, and say where the envelope comes from.
    /// None: live flavors are off, or the metadata names no flavor.
    pub fn apply(&self, nova: &mut NovaMeta, now: f64) -> Option<EnvelopeOrigin> {
        if !self.enabled() {
            return None;
        }
        let key = key_of(nova)?;
        let mut entries = self.lock();
        let e = entries.entry(key.clone()).or_insert(Entry {
            state: None,
            fetched_at: f64::NEG_INFINITY,
            since: now,
            used_at: now,
            generation: 0,
        });
        e.used_at = now;
        let pending = e.state.is_none() && now - e.since < crate::envelope::FLAVOR_WAIT;
        let (source, error) = match &e.state {
            Some(Ok(f)) => {
                nova.memory = Some(f.ram);
                nova.vcpus = Some(f.vcpus);
                nova.extra_specs.clone_from(&f.extra_specs);
                (NOVA_API, None)
            }
            Some(Err(err)) => (DOMAIN_METADATA, Some(err.clone())),
            None => (DOMAIN_METADATA, None),
        };
        Some(EnvelopeOrigin {
            source,
            since: e.since,
            flavor: key,
            error_name: error.as_ref().map(FlavorError::name),
            error: error.map(|e| e.to_string()),
            generation: e.generation,
            pending,
        })
    }

    /// The generation of a flavor's entry (0 when not known), for a guest's tick: the flavor
    /// counts as in use (a guest whose definition is not read again for long keeps its
    /// flavor, and its envelope, rather than falling back while it is fetched afresh).
    pub fn generation(&self, key: &str, now: f64) -> u64 {
        let mut entries = self.lock();
        match entries.get_mut(key) {
            Some(e) => {
                e.used_at = now;
                e.generation
            }
            None => 0,
        }
    }

    /// The flavors to fetch now: never fetched, or older than the TTL (a failure is tried
    /// again after at most 10 s). Entries no guest has looked at for ten TTLs (at least ten
    /// minutes) are dropped.
    pub fn due(&self, now: f64) -> Vec<String> {
        let ttl = self.ttl;
        let mut entries = self.lock();
        entries.retain(|_, e| now - e.used_at <= (10.0 * ttl).max(600.0));
        entries
            .iter()
            .filter(|(_, e)| {
                let age = now - e.fetched_at;
                match &e.state {
                    Some(Err(_)) => age >= ttl.min(10.0),
                    _ => age >= ttl,
                }
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Take a fetch's result; the generation moves (and the guests naming the flavor get a new
    /// envelope) when the source, the error or the flavor's values change.
    pub fn store(
        &self,
        key: &str,
        result: Result<LiveFlavor, FlavorError>,
        now: f64,
    ) -> Transition {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(key) else {
            return Transition::Unchanged;
        };
        e.fetched_at = now;
        let t = match (&e.state, &result) {
            (Some(Ok(a)), Ok(b)) if a == b => Transition::Unchanged,
            (Some(Ok(_)), Ok(_)) => Transition::Changed,
            (_, Ok(_)) => Transition::Live,
            (Some(Err(a)), Err(b)) if a.name() == b.name() => Transition::Unchanged,
            (_, Err(b)) => Transition::Fallback(b.clone()),
        };
        let source_moved = e.state.as_ref().map(|s| s.is_ok()) != Some(result.is_ok());
        if source_moved && (result.is_ok() || e.state.is_some()) {
            e.since = now;
        }
        if t != Transition::Unchanged || (e.state.is_none() && result.is_err()) {
            e.generation += 1;
        }
        if t == Transition::Unchanged && e.state.as_ref().is_some_and(|s| s.is_err()) {
            // The same error again: keep the first message, so status and logs stay still.
            return t;
        }
        e.state = Some(result);
        t
    }
}

/// A flavor in nova-api's JSON (`GET /flavors/{id}` or one of `/flavors/detail`), with its
/// extra specs checked: a malformed numeric spec is a named error naming flavor and key.
pub fn parse_flavor(v: &Value) -> Result<LiveFlavor, FlavorError> {
    let label = v["name"]
        .as_str()
        .or(v["id"].as_str())
        .unwrap_or("?")
        .to_string();
    let bad = |why: &str| FlavorError::BadAnswer {
        flavor: label.clone(),
        why: why.to_string(),
    };
    let id = v["id"].as_str().ok_or_else(|| bad("no id"))?.to_string();
    let name = v["name"]
        .as_str()
        .ok_or_else(|| bad("no name"))?
        .to_string();
    let ram = v["ram"].as_u64().ok_or_else(|| bad("no ram"))?;
    let vcpus = v["vcpus"].as_u64().ok_or_else(|| bad("no vcpus"))?;
    let extra_specs = match &v["extra_specs"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        _ => return Err(bad("extra_specs is not an object")),
    };
    let f = LiveFlavor {
        id,
        name,
        ram: Bytes::from_mib(ram),
        vcpus: u32::try_from(vcpus).map_err(|_| bad("vcpus out of range"))?,
        extra_specs,
    };
    check_specs(&f)?;
    Ok(f)
}

/// The numeric specs the envelope reads must be whole numbers.
pub fn check_specs(f: &LiveFlavor) -> Result<(), FlavorError> {
    for key in NUMERIC_SPECS {
        if let Some(v) = f.extra_specs.get(key)
            && v.trim().parse::<u64>().is_err()
        {
            return Err(FlavorError::BadSpec {
                flavor: format!("{} ({})", f.name, f.id),
                key: key.to_string(),
                value: v.clone(),
            });
        }
    }
    Ok(())
}

/// Ask nova-api for the flavor `key` names. Blocking.
pub fn fetch(nova: &Nova, key: &str) -> Result<LiveFlavor, FlavorError> {
    let unreachable = |e: NovaError| FlavorError::Unreachable(e.to_string());
    let call = |path: &str| {
        nova.request(Service::Compute, FLAVOR_MICROVERSION, "GET", path, None)
            .map_err(unreachable)
    };
    if let Some(id) = key.strip_prefix("id:") {
        let path = format!("/flavors/{}", path_segment(id));
        let mut flavor = match call(&path)? {
            (200, v) => v["flavor"].clone(),
            (404, _) => return Err(FlavorError::Gone(id.to_string())),
            (s, v) => {
                return Err(FlavorError::Unreachable(format!(
                    "GET {path}: HTTP {s}: {}",
                    short(&v)
                )));
            }
        };
        if flavor["extra_specs"].is_null() {
            // Before 2.61, or a policy that hides them inline: the extra specs' own resource.
            match call(&format!("{path}/os-extra_specs"))? {
                (200, v) => flavor["extra_specs"] = v["extra_specs"].clone(),
                (s, v) => {
                    return Err(FlavorError::Unreachable(format!(
                        "GET {path}/os-extra_specs: HTTP {s}: {}",
                        short(&v)
                    )));
                }
            }
        }
        return parse_flavor(&flavor);
    }
    let name = key.strip_prefix("name:").unwrap_or(key);
    // is_public=None: private flavors too (memscale's user is an admin).
    let path = "/flavors/detail?is_public=None";
    match call(path)? {
        (200, v) => {
            let found = v["flavors"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["name"].as_str() == Some(name));
            match found {
                Some(f) => parse_flavor(f),
                None => Err(FlavorError::Gone(name.to_string())),
            }
        }
        (s, v) => Err(FlavorError::Unreachable(format!(
            "GET {path}: HTTP {s}: {}",
            short(&v)
        ))),
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests;
