//! OpenStack Nova as the migration backend for hosts whose guests Nova manages (issue 6).
//!
//! Moving a Nova instance behind Nova's back (libvirt peer to peer) would leave Nova's records
//! saying it runs where it no longer does. For such hosts (`migration_backend = "nova"`),
//! memscale asks Nova instead: a Keystone v3 password token, then the server action
//! `os-migrateLive` (compute API microversion 2.34: pre-checks after the 202, `block_migration: "auto"`, no `force`, so
//! Nova's scheduler checks the destination), then polls the server until it is `ACTIVE` with
//! no task on the destination host, or reports why not. A Nova instance's UUID is its libvirt
//! domain's UUID, so the daemon names servers by the domains it sees.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NovaConfig {
    /// Keystone v3, e.g. `https://keystone.example:5000/v3`.
    pub auth_url: String,
    pub username: String,
    /// File holding the password (not the password itself: the config is world-readable).
    pub password_file: PathBuf,
    pub project_name: String,
    #[serde(default = "default_domain")]
    pub user_domain_name: String,
    #[serde(default = "default_domain")]
    pub project_domain_name: String,
    /// Catalog region (default: the first compute endpoint of the interface).
    #[serde(default)]
    pub region: Option<String>,
    /// Catalog interface: public, internal or admin.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// The compute endpoint, when the catalog is not to be used.
    #[serde(default)]
    pub compute_url: Option<String>,
    /// Seconds between two looks at a migrating server.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// Seconds an HTTP call to Keystone, Nova or Placement may take before memscale stops
    /// waiting for its answer.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_seconds: f64,
    /// Live flavor envelopes: how long a flavor read from nova-api is believed before it is
    /// read again (0: envelopes come from the domain metadata only).
    #[serde(default = "default_flavor_ttl")]
    pub flavor_ttl_seconds: f64,
    /// The Placement endpoint, when the catalog is not to be used.
    #[serde(default)]
    pub placement_url: Option<String>,
    /// Memory given beyond flavors, held in Placement (absent: Placement is not written).
    #[serde(default)]
    pub placement: Option<PlacementConfig>,
}

fn default_http_timeout() -> f64 {
    30.0
}

impl NovaConfig {
    /// `http_timeout_seconds`, kept within 1 s to 10 min.
    fn http_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_timeout_seconds.clamp(1.0, 600.0))
    }
}

fn default_flavor_ttl() -> f64 {
    60.0
}

fn default_domain() -> String {
    "Default".into()
}
fn default_interface() -> String {
    "public".into()
}
fn default_poll() -> f64 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[nova.placement]`: memory given beyond flavors, held in Placement (`placement.rs`).
pub struct PlacementConfig {
    /// The project and user Placement records memscale's consumers under (ids, not names).
    pub project_id: String,
    pub user_id: String,
    /// At most one write per host this often.
    #[serde(default = "default_interval")]
    pub interval_seconds: f64,
    /// A write only when what is held would change by at least this much (a return to zero
    /// is always written).
    #[serde(default = "default_min_change")]
    pub min_change_mib: u64,
}

fn default_interval() -> f64 {
    10.0
}
fn default_min_change() -> u64 {
    64
}

/// Percent-encode a path segment (flavor ids are free text).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum NovaError {
    #[error("keystone: {0}")]
    Auth(String),
    #[error("nova: {0}")]
    Api(String),
    #[error("nova: the migration of {server} to {dest} did not finish within {secs} s")]
    Timeout {
        server: String,
        dest: String,
        secs: u64,
    },
    #[error("nova: {0}")]
    Failed(String),
}

/// A Keystone token and the endpoints memscale calls with it.
#[derive(Debug, Clone)]
struct Session {
    token: String,
    compute: String,
    placement: Option<String>,
}

/// The OpenStack services memscale calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Compute,
    Placement,
}

/// Microversion: 2.25 made `block_migration: "auto"` possible; 2.30 added `force` (left out);
/// 2.34 runs `os-migrateLive`'s pre-checks after answering 202 (at 2.30 the answer waited for
/// them: seen on the test bed's real nova-compute taking longer than the 30 s HTTP timeout,
/// so memscale called a move failed that Nova carried on with). A failed pre-check then
/// leaves the server ACTIVE on its source, which the polling below reports.
pub const MICROVERSION: &str = "compute 2.34";

pub struct Nova {
    cfg: NovaConfig,
    password: String,
    agent: ureq::Agent,
    /// Token and endpoints, until a service refuses the token.
    session: Mutex<Option<Session>>,
    /// Callers' tokens Keystone was asked about lately, and what it said.
    tokens: Mutex<std::collections::HashMap<String, (Instant, Option<Caller>)>>,
}

impl Nova {
    /// Read the password file; fails with a message naming the file.
    pub fn new(cfg: NovaConfig) -> Result<Nova, String> {
        let password = std::fs::read_to_string(&cfg.password_file)
            .map_err(|e| {
                format!(
                    "{}: cannot read the Nova password: {e}",
                    cfg.password_file.display()
                )
            })?
            .trim()
            .to_string();
        if password.is_empty() {
            return Err(format!(
                "{}: the Nova password file is empty",
                cfg.password_file.display()
            ));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.http_timeout()))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Nova {
            cfg,
            password,
            agent,
            session: Mutex::new(None),
            tokens: Mutex::new(Default::default()),
        })
    }

    fn login(&self) -> Result<Session, NovaError> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.cfg.username,
                "domain": {"name": self.cfg.user_domain_name},
                "password": self.password,
            }}},
            "scope": {"project": {
                "name": self.cfg.project_name,
                "domain": {"name": self.cfg.project_domain_name},
            }},
        }});
        let url = format!("{}/auth/tokens", self.cfg.auth_url.trim_end_matches('/'));
        let mut r = self
            .agent
            .post(&url)
            .send_json(&body)
            .map_err(|e| NovaError::Auth(format!("{url}: {e}")))?;
        let status = r.status().as_u16();
        if status != 201 {
            let text = r.body_mut().read_to_string().unwrap_or_default();
            return Err(NovaError::Auth(format!(
                "{url}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        let token = r
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| NovaError::Auth(format!("{url}: no X-Subject-Token in the answer")))?
            .to_string();
        let v: Value = r
            .body_mut()
            .read_json()
            .map_err(|e| NovaError::Auth(format!("{url}: {e}")))?;
        let compute = match &self.cfg.compute_url {
            Some(u) => u.clone(),
            None => compute_endpoint(&v, &self.cfg.interface, self.cfg.region.as_deref())
                .ok_or_else(|| {
                    NovaError::Auth(format!(
                        "{url}: no compute endpoint with interface {:?}{} in the catalog",
                        self.cfg.interface,
                        self.cfg
                            .region
                            .as_ref()
                            .map(|r| format!(" in region {r:?}"))
                            .unwrap_or_default()
                    ))
                })?,
        };
        let placement = self
            .cfg
            .placement_url
            .clone()
            .or_else(|| {
                endpoint_of(
                    &v,
                    "placement",
                    &self.cfg.interface,
                    self.cfg.region.as_deref(),
                )
            })
            .map(|u| u.trim_end_matches('/').to_string());
        Ok(Session {
            token,
            compute: compute.trim_end_matches('/').to_string(),
            placement,
        })
    }

    fn session(&self) -> Result<Session, NovaError> {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(x) = s.as_ref() {
            return Ok(x.clone());
        }
        let x = self.login()?;
        *s = Some(x.clone());
        Ok(x)
    }

    /// One compute API call; a refused token is renewed once.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), NovaError> {
        self.request(Service::Compute, MICROVERSION, method, path, body)
    }

    /// One call to an OpenStack service at `microversion` (e.g. `compute 2.61`,
    /// `placement 1.28`): a refused token is renewed once, a kept-alive connection the server
    /// closed meanwhile is tried once more on a new one. The answer's status and JSON body
    /// (a body that is not JSON comes back as a string).
    pub fn request(
        &self,
        service: Service,
        microversion: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), NovaError> {
        let mut renewed = false;
        let mut retried = false;
        loop {
            let s = self.session()?;
            let base = match service {
                Service::Compute => s.compute.clone(),
                Service::Placement => s.placement.clone().ok_or_else(|| {
                    NovaError::Auth(
                        "no placement endpoint in the catalog (set placement_url in [nova])".into(),
                    )
                })?,
            };
            let url = format!("{base}{path}");
            let a = &self.agent;
            let r = match (method, body) {
                ("POST", Some(b)) => a
                    .post(&url)
                    .header("X-Auth-Token", &s.token)
                    .header("OpenStack-API-Version", microversion)
                    .send_json(b),
                ("PUT", Some(b)) => a
                    .put(&url)
                    .header("X-Auth-Token", &s.token)
                    .header("OpenStack-API-Version", microversion)
                    .send_json(b),
                ("DELETE", _) => a
                    .delete(&url)
                    .header("X-Auth-Token", &s.token)
                    .header("OpenStack-API-Version", microversion)
                    .call(),
                _ => a
                    .get(&url)
                    .header("X-Auth-Token", &s.token)
                    .header("OpenStack-API-Version", microversion)
                    .call(),
            };
            let mut r = match r {
                Ok(r) => r,
                Err(ureq::Error::Io(_)) if !retried => {
                    retried = true;
                    continue;
                }
                Err(e) => return Err(NovaError::Api(format!("{method} {url}: {e}"))),
            };
            let status = r.status().as_u16();
            if status == 401 && !renewed {
                renewed = true;
                *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            }
            let text = r.body_mut().read_to_string().unwrap_or_default();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok((status, v));
        }
    }

    fn server(&self, id: &str) -> Result<Value, NovaError> {
        match self.call("GET", &format!("/servers/{id}"), None)? {
            (200, v) => Ok(v["server"].clone()),
            (s, v) => Err(NovaError::Api(format!(
                "GET /servers/{id}: HTTP {s}: {}",
                brief(&v)
            ))),
        }
    }

    /// Live-migrate server `id` to compute host `dest` and wait until it runs there.
    pub fn live_migrate(&self, id: &str, dest: &str, timeout: Duration) -> Result<(), NovaError> {
        let t0 = Instant::now();
        let before = self.server(id)?;
        let source = host_of(&before);
        if source.as_deref() == Some(dest) {
            return Ok(());
        }
        let body = json!({"os-migrateLive": {"host": dest, "block_migration": "auto"}});
        // A POST that got no answer (Nova's API slower than the HTTP timeout, seen on a loaded
        // test bed) may still have been taken: Nova then migrates all the same. It is followed
        // like an answered one, and called not taken only if no migration shows (a task on the
        // server, or the server on the destination) within twice the HTTP timeout.
        let grace = 2 * self.cfg.http_timeout();
        let mut unanswered: Option<(String, Instant)> = None;
        match self.call("POST", &format!("/servers/{id}/action"), Some(&body)) {
            Ok((202, _)) => {}
            Ok((s, v)) => {
                return Err(NovaError::Failed(format!(
                    "os-migrateLive of {id} to {dest} refused: HTTP {s}: {}",
                    brief(&v)
                )));
            }
            Err(NovaError::Api(e)) => {
                tracing::warn!(
                    server = id,
                    dest,
                    "os-migrateLive got no answer ({e}); following the server in case Nova took it"
                );
                unanswered = Some((e, Instant::now()));
            }
            Err(e) => return Err(e),
        }
        let mut seen_task = false;
        loop {
            std::thread::sleep(Duration::from_secs_f64(
                self.cfg.poll_seconds.clamp(0.05, 60.0),
            ));
            let s = self.server(id)?;
            let status = s["status"].as_str().unwrap_or("");
            let task = s["OS-EXT-STS:task_state"].as_str();
            let host = host_of(&s);
            if task.is_some() {
                seen_task = true;
            }
            if status == "ERROR" {
                return Err(NovaError::Failed(format!(
                    "server {id} went to ERROR while migrating to {dest}: {}",
                    brief(&s["fault"])
                )));
            }
            if task.is_none() && status == "ACTIVE" {
                if host.as_deref() == Some(dest) {
                    return Ok(());
                }
                let left = match &unanswered {
                    // No answer and no sign of a migration yet: Nova may still be on it.
                    Some((e, since)) if !seen_task => {
                        if since.elapsed() > grace {
                            return Err(NovaError::Failed(format!(
                                "os-migrateLive of {id} to {dest} got no answer ({e}) and Nova shows no migration of it {} s later; the server is still on {}",
                                grace.as_secs(),
                                host.unwrap_or_default()
                            )));
                        }
                        false
                    }
                    _ => seen_task || t0.elapsed() > Duration::from_secs(30),
                };
                if left {
                    return Err(NovaError::Failed(format!(
                        "Nova left server {id} on {} (the migration to {dest} did not happen; see `openstack server migration list --server {id}`)",
                        host.unwrap_or_default()
                    )));
                }
            }
            if t0.elapsed() > timeout {
                return Err(NovaError::Timeout {
                    server: id.into(),
                    dest: dest.into(),
                    secs: timeout.as_secs(),
                });
            }
        }
    }
}

/// Who a Keystone token speaks for, as memscale's service user was told by
/// `GET /v3/auth/tokens` (the token's own scope and roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// The project the token is scoped to (none: unscoped or domain-scoped).
    pub project_id: Option<String>,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
    /// Admin, or a member (any role) of `project_id`.
    pub fn may_act_on(&self, project_id: Option<&str>) -> bool {
        self.is_admin() || (project_id.is_some() && self.project_id.as_deref() == project_id)
    }
}

/// How long a validated token is believed before Keystone is asked again (a revoked token
/// keeps working at most this long).
pub const TOKEN_CACHE: Duration = Duration::from_secs(30);

impl Nova {
    /// Validate a caller's token with Keystone, as the service user: `Ok(None)` when Keystone
    /// says the token is not valid (401 or 404), an error when Keystone cannot be asked.
    /// Blocking: call it off the async runtime.
    pub fn validate_token(&self, subject: &str) -> Result<Option<Caller>, NovaError> {
        {
            let cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, c)) = cache.get(subject)
                && at.elapsed() < TOKEN_CACHE
            {
                return Ok(c.clone());
            }
        }
        let url = format!("{}/auth/tokens", self.cfg.auth_url.trim_end_matches('/'));
        for attempt in 0..2 {
            let token = self.session()?.token;
            let mut r = match self
                .agent
                .get(&url)
                .header("X-Auth-Token", &token)
                .header("X-Subject-Token", subject)
                .call()
            {
                Ok(r) => r,
                // A kept-alive connection the server has closed meanwhile (uwsgi's HTTP
                // socket closes after each answer): once more on a new one.
                Err(ureq::Error::Io(_)) if attempt == 0 => continue,
                Err(e) => return Err(NovaError::Auth(format!("GET {url}: {e}"))),
            };
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            let caller = match status {
                200 => {
                    let v: Value = serde_json::from_str(&text).map_err(|e| {
                        NovaError::Auth(format!("GET {url}: the token's description: {e}"))
                    })?;
                    Some(caller_of(&v).ok_or_else(|| {
                        NovaError::Auth(format!("GET {url}: no user in the token's description"))
                    })?)
                }
                // 401 for the service's own token (renewed once), else the subject's.
                401 if attempt == 0 => {
                    *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    continue;
                }
                401 | 404 => None,
                s => {
                    return Err(NovaError::Auth(format!(
                        "GET {url}: HTTP {s}: {}",
                        text.chars().take(300).collect::<String>()
                    )));
                }
            };
            let mut cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(subject.to_string(), (Instant::now(), caller.clone()));
            return Ok(caller);
        }
        Ok(None)
    }
}

/// The caller in a Keystone v3 token description.
pub fn caller_of(v: &Value) -> Option<Caller> {
    let t = &v["token"];
    Some(Caller {
        user: t["user"]["id"].as_str()?.to_string(),
        project_id: t["project"]["id"].as_str().map(str::to_string),
        roles: t["roles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn host_of(server: &Value) -> Option<String> {
    server["OS-EXT-SRV-ATTR:host"].as_str().map(str::to_string)
}

fn brief(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars().take(300).collect()
}

/// The compute endpoint in a Keystone v3 token's catalog.
pub fn compute_endpoint(token: &Value, interface: &str, region: Option<&str>) -> Option<String> {
    endpoint_of(token, "compute", interface, region)
}

/// The endpoint of a service type in a Keystone v3 token's catalog.
pub fn endpoint_of(
    token: &Value,
    kind: &str,
    interface: &str,
    region: Option<&str>,
) -> Option<String> {
    token["token"]["catalog"]
        .as_array()?
        .iter()
        .filter(|s| s["type"] == kind)
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .find(|e| {
            e["interface"] == interface
                && region.is_none_or(|r| e["region"] == r || e["region_id"] == r)
        })
        .and_then(|e| e["url"].as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_may_act_on_its_own_project_or_as_admin() {
        let t = |project: Option<&str>, roles: &[&str]| {
            caller_of(&json!({"token": {
                "user": {"id": "u1"},
                "project": project.map(|p| json!({"id": p})),
                "roles": roles.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
            }}))
            .expect("a caller")
        };
        let member = t(Some("p1"), &["member", "reader"]);
        assert!(member.may_act_on(Some("p1")));
        assert!(!member.may_act_on(Some("p2")));
        assert!(
            !member.may_act_on(None),
            "a server with no project is admin's only"
        );
        let unscoped = t(None, &[]);
        assert!(!unscoped.may_act_on(None));
        assert!(t(Some("p9"), &["admin"]).may_act_on(Some("p1")));
        assert!(caller_of(&json!({"token": {}})).is_none());
    }

    #[test]
    fn finds_the_compute_endpoint_by_interface_and_region() {
        let t = json!({"token": {"catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "region": "R1", "url": "http://k"}]},
            {"type": "compute", "endpoints": [
                {"interface": "internal", "region": "R1", "url": "http://n-int-r1/v2.1"},
                {"interface": "public", "region": "R1", "url": "http://n-pub-r1/v2.1"},
                {"interface": "public", "region": "R2", "url": "http://n-pub-r2/v2.1"},
            ]},
        ]}});
        assert_eq!(
            compute_endpoint(&t, "public", None).as_deref(),
            Some("http://n-pub-r1/v2.1")
        );
        assert_eq!(
            compute_endpoint(&t, "public", Some("R2")).as_deref(),
            Some("http://n-pub-r2/v2.1")
        );
        assert_eq!(
            compute_endpoint(&t, "internal", None).as_deref(),
            Some("http://n-int-r1/v2.1")
        );
        assert_eq!(compute_endpoint(&t, "admin", None), None);
        assert_eq!(compute_endpoint(&t, "public", Some("R3")), None);
    }
}
