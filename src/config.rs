//! The daemon's configuration file (`/etc/memscale/memscale.toml`): hosts, timing, where
//! policies live, the API address and the flavor catalog. Command-line flags override it.

use crate::envelope::FlavorCatalog;
use crate::policy::{Diag, Severity};
use crate::units::{Bytes, Dur};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// libvirt URI, e.g. `qemu:///system` or `qemu+tcp://10.0.0.2/system`.
    pub uri: String,
    /// A short name for logs and metrics (default: the URI).
    #[serde(default)]
    pub name: Option<String>,
    /// Memory the guests of this host may use in all (default: the host's memory).
    #[serde(default)]
    pub capacity: Option<Bytes>,
    /// Memory never given to guests.
    #[serde(default = "default_reserve")]
    pub reserve: Bytes,
    /// The libvirt URI other hosts' libvirtds reach this one at, for peer-to-peer migration
    /// (default: `uri`).
    #[serde(default)]
    pub migration_uri: Option<String>,
    /// Where migration data is streamed to, e.g. `tcp://10.0.0.2` (default: libvirt's choice).
    #[serde(default)]
    pub migration_address: Option<String>,
    /// `false`: only watched, as a destination for migrations (its committed memory counts);
    /// this daemon neither resizes its guests nor moves them.
    #[serde(default = "yes")]
    pub manage: bool,
    /// How guests leave this host: libvirt peer to peer, or by asking OpenStack Nova (its
    /// records stay true) for hosts whose guests Nova manages.
    #[serde(default)]
    pub migration_backend: MigrationBackend,
    /// This host's name in Nova (`openstack compute service list`), when it is a destination
    /// for Nova migrations (default: `name`).
    #[serde(default)]
    pub nova_host: Option<String>,
    /// The name of this host's compute node resource provider in Placement (its hypervisor
    /// hostname, `openstack hypervisor list`), where memory given beyond flavors is held
    /// (default: `nova_host`, else `name`).
    #[serde(default)]
    pub hypervisor_hostname: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationBackend {
    #[default]
    Libvirt,
    Nova,
}

fn yes() -> bool {
    true
}

/// Moving guests off a host that sharing cannot relieve.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    pub enabled: bool,
    /// Decide and report migrations (`/v1/migrations`, the audit), move nothing.
    pub propose_only: bool,
    /// Least time between two migrations off one host.
    pub min_interval: Dur,
    /// A migration not done after this long is reported failed.
    pub timeout: Dur,
    /// A destination a migration to failed is not tried again for this long.
    pub retry_after: Dur,
    /// Ask libvirt for its TLS transport (`VIR_MIGRATE_TLS`): the guest's memory goes over
    /// TLS, checked against the x509 certificates in the libvirtds' qemu.conf
    /// (`migrate_tls_x509_cert_dir`). Not for Nova's moves: Nova's compute hosts choose.
    pub tls: bool,
}

impl Default for MigrationConfig {
    fn default() -> MigrationConfig {
        MigrationConfig {
            enabled: false,
            propose_only: false,
            min_interval: Dur::secs(60),
            timeout: Dur::secs(300),
            retry_after: Dur::secs(300),
            tls: false,
        }
    }
}

fn default_reserve() -> Bytes {
    Bytes::from_gib(1)
}

impl HostConfig {
    pub fn from_uri(uri: &str) -> HostConfig {
        HostConfig {
            uri: uri.to_string(),
            name: None,
            capacity: None,
            reserve: default_reserve(),
            migration_uri: None,
            migration_address: None,
            manage: true,
            migration_backend: MigrationBackend::Libvirt,
            nova_host: None,
            hypervisor_hostname: None,
        }
    }
    /// `--connect` takes `URI` or `NAME=URI` (a name has no `:` or `/`).
    pub fn from_arg(arg: &str) -> HostConfig {
        match arg.split_once('=') {
            Some((name, uri)) if !name.is_empty() && !name.contains([':', '/']) => HostConfig {
                name: Some(name.to_string()),
                ..HostConfig::from_uri(uri)
            },
            _ => HostConfig::from_uri(arg),
        }
    }

    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uri.clone())
    }
    /// The compute node's resource provider name in Placement.
    pub fn provider_name(&self) -> String {
        self.hypervisor_hostname
            .clone()
            .or_else(|| self.nova_host.clone())
            .unwrap_or_else(|| self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hosts: Vec<HostConfig>,
    /// Time between two decisions for each host.
    pub interval: Dur,
    /// Stats period set on guests that have none (seconds).
    pub stats_period: u32,
    pub policies: PathBuf,
    pub listen: SocketAddr,
    pub dry_run: bool,
    /// Where every decision is appended as one JSON line (none: only the in-memory ring).
    pub audit_log: Option<PathBuf>,
    /// File holding the bearer token mutating API calls must present (none: they are refused).
    pub api_token_file: Option<PathBuf>,
    /// How many decisions the in-memory ring keeps.
    pub audit_ring: usize,
    /// A resize that has not landed after this long is reported and the guest held.
    pub converge_timeout: Dur,
    /// How long a guest whose resize did not converge is held.
    pub unconverged_hold: Dur,
    /// Guests that never report stats are called driverless after this long.
    pub driver_grace: Dur,
    /// Flavors for Nova releases that write only the flavor name.
    pub flavors: FlavorCatalog,
    pub migration: MigrationConfig,
    /// Several daemons: who acts for which host, and promises to destinations, through etcd.
    pub coordination: Option<crate::coord::CoordConfig>,
    /// Where pins, manual sizes and each guest's planner memory are kept across restarts.
    pub state_dir: PathBuf,
    /// OpenStack credentials, for hosts with `migration_backend = "nova"`.
    pub nova: Option<crate::nova::NovaConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hosts: Vec::new(),
            interval: Dur::secs(1),
            stats_period: 2,
            policies: PathBuf::from("/etc/memscale/policies"),
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            dry_run: false,
            audit_log: None,
            api_token_file: None,
            audit_ring: 10_000,
            converge_timeout: Dur::secs(30),
            unconverged_hold: Dur::secs(60),
            driver_grace: Dur::secs(30),
            flavors: FlavorCatalog::new(),
            migration: MigrationConfig::default(),
            coordination: None,
            nova: None,
            state_dir: PathBuf::from("/var/lib/memscale"),
        }
    }
}

impl Config {
    /// Read and check a config file; every problem is a [`Diag`] with its place.
    pub fn load(path: &Path) -> Result<Config, Vec<Diag>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diag {
                path: shown.clone(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Config::parse(&shown, &text)
    }

    pub fn parse(shown: &str, text: &str) -> Result<Config, Vec<Diag>> {
        let c: Config = toml::from_str(text).map_err(|e| {
            let (line, col) =
                crate::policy::parse::line_col(text, e.span().map(|s| s.start).unwrap_or(0));
            vec![Diag {
                path: shown.to_string(),
                line,
                col,
                severity: Severity::Error,
                message: e.message().to_string(),
            }]
        })?;
        let mut diags = Vec::new();
        let mut err = |m: String| {
            diags.push(Diag {
                path: shown.to_string(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: m,
            })
        };
        if c.interval.0 < std::time::Duration::from_millis(100)
            || c.interval.0 > std::time::Duration::from_secs(600)
        {
            err(format!(
                "interval {} is out of range 100ms to 10m",
                c.interval
            ));
        }
        if c.stats_period == 0 || c.stats_period > 300 {
            err(format!(
                "stats_period {} is out of range 1 to 300",
                c.stats_period
            ));
        }
        if c.audit_ring == 0 || c.audit_ring > 1_000_000 {
            err(format!(
                "audit_ring {} is out of range 1 to 1000000",
                c.audit_ring
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &c.hosts {
            if !seen.insert(h.label()) {
                err(format!("host {:?} is listed twice", h.label()));
            }
            if let Some(cap) = h.capacity
                && cap <= h.reserve
            {
                err(format!(
                    "host {:?}: capacity {} is not above its reserve {}",
                    h.label(),
                    cap,
                    h.reserve
                ));
            }
        }
        for h in &c.hosts {
            if h.migration_backend == MigrationBackend::Nova && c.nova.is_none() {
                err(format!(
                    "host {:?}: migration_backend = \"nova\" needs a [nova] section (auth_url, username, password_file, project_name)",
                    h.label()
                ));
            }
        }
        if let Some(co) = &c.coordination {
            if co.etcd.is_empty() {
                err("coordination: etcd lists no endpoint".into());
            }
            if co.ttl.0 < std::time::Duration::from_secs(2)
                || co.ttl.0 > std::time::Duration::from_secs(600)
            {
                err(format!(
                    "coordination: ttl {} is out of range 2s to 10m",
                    co.ttl
                ));
            }
            if !co.prefix.starts_with('/') {
                err(format!(
                    "coordination: prefix {:?} must start with /",
                    co.prefix
                ));
            }
        }
        if diags.is_empty() { Ok(c) } else { Err(diags) }
    }
}

/// Top-level settings a SIGHUP applies to the running daemon: `[migration]`, taken by
/// `Shared::config_changes_needing_restart`. (Policies reload too, but from the directory the
/// daemon started with: `policies` itself is not live.) An edit to anything else, settings
/// added later included, waits for a restart.
pub const LIVE_SETTINGS: &[&str] = &["migration"];

impl Config {
    /// What an edit of the config file from `self` to `new` changed that only a restart
    /// applies, one phrase each: `interval changed`, `nova.auth_url changed`,
    /// `host "a": reserve changed`, `host "b" added`. Read from the serialized settings rather
    /// than field by field, so a setting added to the config needs a restart unless it is
    /// listed in [`LIVE_SETTINGS`]. Hosts are matched by label: their order means nothing.
    pub fn changes_needing_restart(&self, new: &Config) -> Vec<String> {
        let (Ok(old), Ok(new)) = (serde_json::to_value(self), serde_json::to_value(new)) else {
            // Plain data always serializes; were it ever not to, say so rather than nothing.
            return vec!["the config cannot be compared with the running one".into()];
        };
        let mut out = Vec::new();
        for key in keys(Some(&old), Some(&new)) {
            if LIVE_SETTINGS.contains(&key.as_str()) {
                continue;
            }
            if key == "hosts" {
                hosts_changes(old.get("hosts"), new.get("hosts"), &mut out);
            } else {
                for path in changed(&key, old.get(&key), new.get(&key)) {
                    out.push(format!("{path} changed"));
                }
            }
        }
        out
    }
}

/// The keys of two JSON objects together (none for anything else).
fn keys(a: Option<&serde_json::Value>, b: Option<&serde_json::Value>) -> BTreeSet<String> {
    [a, b]
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect()
}

/// The dotted paths under `path` whose values differ: into tables present on both sides, the
/// value itself otherwise.
fn changed(
    path: &str,
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
) -> Vec<String> {
    if a == b {
        return vec![];
    }
    match (a, b) {
        (Some(x), Some(y)) if x.is_object() && y.is_object() => keys(a, b)
            .into_iter()
            .flat_map(|k| changed(&format!("{path}.{k}"), x.get(&k), y.get(&k)))
            .collect(),
        _ => vec![path.to_string()],
    }
}

fn hosts_changes(
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    // Hosts by label: the name if set, else the URI (as `HostConfig::label`).
    let by_label = |v: Option<&serde_json::Value>| -> BTreeMap<String, serde_json::Value> {
        v.and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .map(|h| {
                let label = h["name"].as_str().or(h["uri"].as_str()).unwrap_or("?");
                (label.to_string(), h.clone())
            })
            .collect()
    };
    let (old, new) = (by_label(a), by_label(b));
    let labels: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for l in labels {
        match (old.get(l), new.get(l)) {
            (Some(x), Some(y)) => {
                for k in keys(Some(x), Some(y)) {
                    for path in changed(&k, x.get(&k), y.get(&k)) {
                        out.push(format!("host {l:?}: {path} changed"));
                    }
                }
            }
            (None, Some(_)) => out.push(format!("host {l:?} added")),
            (Some(_), None) => out.push(format!("host {l:?} removed")),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c = Config::parse(
            "c.toml",
            "interval = \"2s\"\n[[hosts]]\nuri = \"qemu:///system\"\ncapacity = \"16GiB\"\n[flavors.\"m1.small\"]\nmemory = \"2GiB\"\nmem_max = \"4GiB\"\n",
        )
        .unwrap();
        assert_eq!(c.interval, Dur::secs(2));
        assert_eq!(c.hosts[0].capacity, Some(Bytes::from_gib(16)));
        assert_eq!(c.flavors["m1.small"].mem_max, Some(Bytes::from_gib(4)));
        let h = HostConfig::from_arg("a=qemu+unix:///system?socket=/x");
        assert_eq!(
            (h.label(), h.uri.as_str()),
            ("a".to_string(), "qemu+unix:///system?socket=/x")
        );
        assert_eq!(
            HostConfig::from_arg("qemu:///system?x=y").label(),
            "qemu:///system?x=y"
        );
        let e = Config::parse("c.toml", "intervall = \"2s\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (1, 1));
        assert!(e[0].message.contains("unknown field"), "{e:?}");
        let e = Config::parse("c.toml", "\n\ninterval = \"2\"\n").unwrap_err();
        assert_eq!(e[0].line, 3, "{e:?}");
        assert!(e[0].message.contains("missing unit"));
    }

    #[test]
    fn coordination_and_nova_are_checked() {
        let c = Config::parse(
            "c.toml",
            "[coordination]\netcd = [\"http://127.0.0.1:2379\"]\n[[hosts]]\nuri = \"qemu:///system\"\nmanage = false\n",
        )
        .unwrap();
        let co = c.coordination.unwrap();
        assert_eq!((co.prefix.as_str(), co.ttl), ("/memscale", Dur::secs(10)));
        assert!(!c.hosts[0].manage);
        assert_eq!(c.hosts[0].migration_backend, MigrationBackend::Libvirt);
        let e = Config::parse(
            "c.toml",
            "[coordination]\netcd = []\nttl = \"1s\"\nprefix = \"x\"\n",
        )
        .unwrap_err();
        let all: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
        assert!(
            all.iter().any(|m| m.contains("lists no endpoint")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|m| m.contains("ttl 1s is out of range")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|m| m.contains("must start with /")),
            "{all:?}"
        );
        let e = Config::parse(
            "c.toml",
            "[[hosts]]\nuri = \"qemu:///system\"\nname = \"k1\"\nmigration_backend = \"nova\"\n",
        )
        .unwrap_err();
        assert!(
            e[0].message
                .contains("host \"k1\": migration_backend = \"nova\" needs a [nova] section"),
            "{e:?}"
        );
        let e = Config::parse(
            "c.toml",
            "[[hosts]]\nuri = \"qemu:///system\"\nmigration_backend = \"xen\"\n",
        )
        .unwrap_err();
        assert_eq!(e[0].line, 3, "{e:?}");
        let c = Config::parse(
            "c.toml",
            "[nova]\nauth_url = \"http://k/v3\"\nusername = \"u\"\npassword_file = \"/p\"\nproject_name = \"p\"\n[[hosts]]\nuri = \"qemu:///system\"\nmigration_backend = \"nova\"\n",
        )
        .unwrap();
        let n = c.nova.unwrap();
        assert_eq!(
            (n.interface.as_str(), n.user_domain_name.as_str()),
            ("public", "Default")
        );
    }
    /// Two hosts, and a config to edit from it.
    fn base() -> Config {
        Config {
            hosts: vec![
                HostConfig::from_arg("a=qemu:///system"),
                HostConfig::from_arg("b=qemu+tcp://b/system"),
            ],
            ..Config::default()
        }
    }

    fn edit(f: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut c = base();
        f(&mut c);
        base().changes_needing_restart(&c)
    }

    fn nova() -> crate::nova::NovaConfig {
        let c = Config::parse(
            "c.toml",
            "[nova]\nauth_url = \"http://k/v3\"\nusername = \"u\"\npassword_file = \"/p\"\nproject_name = \"p\"\n",
        )
        .unwrap();
        c.nova.unwrap()
    }

    #[test]
    fn every_setting_needs_a_restart_but_the_live_ones() {
        assert!(edit(|_| {}).is_empty());
        assert_eq!(
            edit(|c| c.api_token_file = Some("/etc/memscale/token".into())),
            ["api_token_file changed"]
        );
        assert_eq!(
            edit(|c| c.state_dir = "/srv/memscale".into()),
            ["state_dir changed"]
        );
        assert_eq!(edit(|c| c.nova = Some(nova())), ["nova changed"]);
        let with_nova = Config {
            nova: Some(nova()),
            ..base()
        };
        let mut other_password = with_nova.clone();
        if let Some(n) = &mut other_password.nova {
            n.password_file = "/q".into();
        }
        assert_eq!(
            with_nova.changes_needing_restart(&other_password),
            ["nova.password_file changed"]
        );
        assert_eq!(
            edit(|c| c.hosts[1].reserve = Bytes::from_gib(2)),
            ["host \"b\": reserve changed"]
        );
        assert_eq!(
            edit(|c| c.hosts.push(HostConfig::from_arg("c=qemu+tcp://c/system"))),
            ["host \"c\" added"]
        );
        assert_eq!(
            edit(|c| {
                c.hosts.remove(0);
            }),
            ["host \"a\" removed"]
        );
        assert_eq!(
            edit(|c| {
                c.interval = Dur::secs(2);
                c.coordination = Some(crate::coord::CoordConfig::default());
            }),
            ["coordination changed", "interval changed"]
        );
        let mut with_flavor = base();
        with_flavor.flavors.insert(
            "m1.small".into(),
            crate::envelope::Flavor {
                memory: Bytes::from_gib(2),
                mem_max: None,
                numa_nodes: None,
                vcpus: None,
            },
        );
        assert_eq!(
            base().changes_needing_restart(&with_flavor),
            ["flavors.m1.small changed"]
        );
        // [migration] is live, TLS included: a SIGHUP applies it.
        assert!(edit(|c| c.migration.tls = true).is_empty());
        let tls = Config::parse("c.toml", "[migration]\nenabled = true\ntls = true\n").unwrap();
        assert!(tls.migration.tls && !Config::default().migration.tls);
    }

    #[test]
    fn live_settings_and_host_order_need_no_restart() {
        assert!(
            edit(|c| {
                c.migration.enabled = true;
                c.migration.timeout = Dur::secs(30);
                c.hosts.reverse();
            })
            .is_empty()
        );
        // Each live setting is one the config has: a rename would leave it needing a restart.
        let v = serde_json::to_value(base()).unwrap();
        for k in LIVE_SETTINGS {
            assert!(v.get(k).is_some(), "{k} is not a setting");
        }
    }
}
